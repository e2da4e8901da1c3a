"""Shared driver for the atheris harnesses in bench/fuzz/ (a benchmark-style script, not part of CI).

    python -m bench.fuzz.fuzz_NAME --seconds N --out DIR

runs the fuzzer for about N seconds and writes DIR/NAME.json:
    {"target", "executions", "seconds", "findings": [...], "corpus", "seeds"}
A finding is any exception other than SqueezeError (the project's one user-facing error), or a crash, timeout
or out-of-memory of the process; each distinct one is listed once with its count, and the input that first
triggered it is saved under DIR/crashes/.

How: the parent process writes the seeds, then runs the fuzzer in a child process (atheris/libFuzzer with a
time limit). The child catches every exception itself (so one finding does not end the run), records it, and
writes its counters to a stats file every second. A child killed by libFuzzer (timeout, memory, a native
crash) is recorded from the input libFuzzer saved and restarted for the time that is left.

A harness module defines NAME, ``seeds() -> {name: bytes}``, ``instrument()`` (imports the code under test,
inside atheris' instrumentation), ``target(data: bytes) -> None``, optionally INSTRUMENT (module-name prefixes
to instrument) and PRELOAD (heavy modules imported first, uninstrumented, e.g. torch), and calls
``main(sys.modules[__name__])``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Dict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATS_EVERY_S = 1.0


def scratch_dir(name: str) -> Path:
    """A folder for a harness's temporary files. Under the driver it is DIR/.scratch-NAME (the fuzzing child ends
    through libFuzzer's exit, which skips atexit; the driver removes the folder); otherwise a temporary folder
    removed at exit."""
    import atexit
    import shutil

    given = os.environ.get("SQUEEZE_FUZZ_SCRATCH")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix=f"squeeze-fuzz-{name}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _finding_key(exc: BaseException) -> Dict:
    """Where an exception comes from: its type and the innermost frame inside this project (else the last)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if str(PROJECT_ROOT) in f.filename and "/.venv/" not in f.filename
            and "/bench/fuzz/" not in f.filename]
    frame = (ours or frames or [None])[-1]
    where = f"{os.path.relpath(frame.filename, PROJECT_ROOT)}:{frame.lineno}" if frame else "?"
    return {"type": type(exc).__name__, "where": where,
            "message": " ".join(str(exc).split())[:200]}


class _Recorder:
    def __init__(self, name: str, out: Path):
        self.name, self.out = name, out
        self.stats_path = out / f".{name}.stats.json"
        self.crashes = out / "crashes"
        self.executions = 0
        self.findings: Dict[str, Dict] = {}
        self._last = 0.0
        if self.stats_path.exists():  # a restarted child continues the counts
            old = json.loads(self.stats_path.read_text())
            self.executions, self.findings = old["executions"], old["findings"]

    def record(self, exc: BaseException, data: bytes) -> None:
        info = _finding_key(exc)
        key = f"{info['type']} at {info['where']}"
        if key not in self.findings:
            self.crashes.mkdir(parents=True, exist_ok=True)
            path = self.crashes / f"{self.name}-{hashlib.sha1(data).hexdigest()[:16]}"
            path.write_bytes(data)
            self.findings[key] = {**info, "count": 0, "input": str(path)}
            self.flush(force=True)
        self.findings[key]["count"] += 1

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= STATS_EVERY_S:
            self._last = now
            tmp = self.stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"executions": self.executions, "findings": self.findings}))
            os.replace(tmp, self.stats_path)


def _child(module, out: Path, seconds: float, corpus: Path, max_len: int) -> None:
    import atheris

    from squeeze_mobile.errors import SqueezeError

    for heavy in getattr(module, "PRELOAD", ()):  # imported uninstrumented: instrumenting torch takes minutes
        __import__(heavy)
    with atheris.instrument_imports(include=list(getattr(module, "INSTRUMENT", ())) or None):
        module.instrument()
    (out / "crashes").mkdir(parents=True, exist_ok=True)
    rec = _Recorder(module.NAME, out)
    warnings.simplefilter("ignore")

    def one_input(data: bytes) -> None:
        rec.executions += 1
        try:
            module.target(data)
        except SqueezeError:
            pass
        except Exception as exc:  # noqa: BLE001 - every other exception is what we are looking for
            rec.record(exc, data)
        rec.flush()

    import atexit

    atexit.register(lambda: rec.flush(force=True))
    args = [sys.argv[0], f"-max_total_time={max(1, int(seconds))}", f"-max_len={max_len}", "-timeout=60",
            "-rss_limit_mb=6144", f"-artifact_prefix={out / 'crashes'}/{module.NAME}-libfuzzer-",
            "-print_final_stats=1", str(corpus)]
    atheris.Setup(args, one_input)
    try:
        atheris.Fuzz()
    finally:
        rec.flush(force=True)


def replay(module, paths) -> int:
    """Run saved inputs once (e.g. DIR/crashes/*) through ``module.target`` and print what each raises."""
    from squeeze_mobile.errors import SqueezeError

    for p in paths:
        try:
            module.target(Path(p).read_bytes())
            print(f"{p}: ok")
        except SqueezeError as exc:
            print(f"{p}: SqueezeError: {exc}")
        except Exception as exc:  # noqa: BLE001 - reporting what a saved input raises is the point
            print(f"{p}: {type(exc).__name__}: {exc}")
    return 0


def main(module) -> int:
    """`python -m bench.fuzz.fuzz_X --seconds N --out DIR`, or `--replay FILE...` to re-run saved inputs."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if len(sys.argv) > 2 and sys.argv[1] == "--replay":
        return replay(module, sys.argv[2:])
    modname = module.__spec__.name if getattr(module, "__spec__", None) else module.__name__  # "__main__" under -m
    p = argparse.ArgumentParser(prog=f"python -m {modname}",
                                description=f"atheris fuzzing of {module.NAME} for a bounded time")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    p.add_argument("--out", default="bench_out/fuzz", help="report folder (default bench_out/fuzz)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out).resolve()
    corpus = out / "corpus" / module.NAME
    if args.child:
        _child(module, out, args.seconds, corpus, int(os.environ["SQUEEZE_FUZZ_MAX_LEN"]))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = module.seeds()
    for name, data in seeds.items():
        (corpus / f"seed-{name}").write_bytes(data)
    max_len = max(len(d) for d in seeds.values()) * 2 + 64
    stats_path = out / f".{module.NAME}.stats.json"
    stats_path.unlink(missing_ok=True)
    scratch = out / f".scratch-{module.NAME}"
    env = dict(os.environ, SQUEEZE_FUZZ_MAX_LEN=str(max_len), PYTHONPATH=str(PROJECT_ROOT),
               SQUEEZE_FUZZ_SCRATCH=str(scratch))
    start = time.monotonic()
    process_findings: Dict[str, Dict] = {}
    restarts = 0
    while True:
        left = args.seconds - (time.monotonic() - start)
        if left < 1:
            break
        before = set(Path(out / "crashes").glob(f"{module.NAME}-libfuzzer-*")) if (out / "crashes").exists() else set()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.run([sys.executable, "-m", modname, "--child", "--seconds", str(left),
                                   "--out", str(out)], cwd=str(PROJECT_ROOT), env=env, stdout=log, stderr=log,
                                  timeout=left + 300)
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-4000:]
        if proc.returncode == 0:
            break
        # the child died: libFuzzer saved the input (crash-/timeout-/oom-) unless the interpreter itself failed
        after = set(Path(out / "crashes").glob(f"{module.NAME}-libfuzzer-*")) if (out / "crashes").exists() else set()
        new = sorted(after - before)
        kind = new[0].name.split("libfuzzer-")[1].split("-")[0] if new else f"exit {proc.returncode}"
        key = f"process {kind}"
        entry = process_findings.setdefault(key, {"type": f"process {kind}", "where": "-", "count": 0,
                                                  "message": " ".join(tail.strip().splitlines()[-3:])[:300],
                                                  "input": str(new[0]) if new else None})
        entry["count"] += 1
        restarts += 1
        if not new or restarts > 50:  # not an input's fault (or hopeless): stop instead of looping
            break
    seconds = time.monotonic() - start
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"executions": 0, "findings": {}}
    findings = [{"key": k, **v} for k, v in {**stats["findings"], **process_findings}.items()]
    report = {"target": module.NAME, "executions": stats["executions"], "seconds": round(seconds, 1),
              "findings": findings, "seeds": len(seeds), "corpus": len(list(corpus.iterdir())),
              "description": (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""}
    path = out / f"{module.NAME}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    stats_path.unlink(missing_ok=True)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    print(f"{module.NAME}: {report['executions']} executions in {report['seconds']:.0f}s, "
          f"{len(findings)} finding(s) -> {path}")
    for f in findings:
        print(f"  {f['key']}: {f['count']}x {f['message'][:120]} (input {f['input']})")
    return 0
