"""This machine's arithmetic peaks, measured by a small native probe (bench/native/peak_probe.c): the fp32 FMA rate
and the int8 dot-product rate of the widest vector instructions the CPU has, on 1..N threads.

These are the references for the bench's "% of peak": an fp32 (or fp16) artifact's achieved GFLOP/s against the
fp32 FMA peak, an int8 artifact's against the int8 peak. torch's sgemm, the reference before, is a library's
achievement rather than the machine's ceiling (MKL reaches ~40% of the FMA peak on AMD EPYC), which made the
runtimes look faster than the machine.

The probe is C, compiled on first use with the system's C compiler and ``-march=native`` (the instruction set is
picked at compile time, so the binary describes this CPU). Like the native kernels of squeezed_attention/native.py
it is cached per user under ``$SQUEEZE_NATIVE_CACHE`` (default ``~/.cache/squeeze-mobile/native``), keyed by the
source, the compiler, the flags and the CPU's feature flags. It is not built with torch's extension builder: it is
a standalone executable that runs in its own process (as every runtime does in the bench), needs no torch, ninja
or Python headers, and only a C compiler. Without one the bench still runs and says why the percentages are
missing (:func:`machine_peaks` returns ``status: unavailable`` and a one-line note).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from squeeze_mobile.errors import SqueezeError

SOURCE = Path(__file__).with_name("native") / "peak_probe.c"
SCHEMA = "squeeze-mobile/peak-probe/1"
COMPILERS = ("cc", "gcc", "clang")
# tried in order: -march=native (gcc, clang on x86 and Linux arm64), -mcpu=native (older clang on arm64), baseline
FLAG_SETS = (["-O2", "-march=native"], ["-O2", "-mcpu=native"], ["-O2"])
COMPILE_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300
KINDS = {"fp32": "fp32 FMA", "int8": "int8 dot product", "int8_amx": "int8 AMX tiles",
         "read_bw": "memory read bandwidth (GB/s)"}


class ProbeUnavailable(SqueezeError):
    """The probe cannot be built or run here (no C compiler, a compiler error, a crash); the message says why."""


def cache_root() -> Path:
    # the same place and override as squeezed_attention.native: one cache of native builds per user
    return Path(os.environ.get("SQUEEZE_NATIVE_CACHE", Path.home() / ".cache" / "squeeze-mobile" / "native"))


def cpu_signature() -> str:
    """The CPU's identity for the cache key: -march=native code must not run on another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    return platform.machine() + " " + flags


def find_compiler() -> Optional[str]:
    """$CC when set, else the first of cc, gcc, clang on PATH; None when there is none."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if Path(cc).is_file() else None)
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _compiler_version(cc: str) -> str:
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return (proc.stdout.strip().splitlines() or [Path(cc).name])[0]
    except (OSError, subprocess.SubprocessError):
        return Path(cc).name


def build(compiler: Optional[str] = None, flag_sets: Sequence[Sequence[str]] = FLAG_SETS,
          cache: Optional[Path] = None) -> Dict:
    """The probe's executable, compiled now or found in the cache: {"path", "compiler", "flags", "cached"}.
    Raises ProbeUnavailable (one line) when no compiler exists or none of the flag sets compiles."""
    cc = compiler or find_compiler()
    if not cc:
        tried = f"$CC={os.environ['CC']}" if os.environ.get("CC") else ", ".join(COMPILERS)
        raise ProbeUnavailable(f"no C compiler found (tried {tried}); install gcc (or set CC) to measure this "
                               "machine's fp32 FMA and int8 dot-product peaks")
    try:
        source = SOURCE.read_bytes()
    except OSError:
        raise ProbeUnavailable(f"the probe's source {SOURCE} is missing from this installation") from None
    version = _compiler_version(cc)
    root = Path(cache) if cache else cache_root()
    errors: List[str] = []
    for flags in flag_sets:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), version.encode(), " ".join(flags).encode(),
                                         cpu_signature().encode()])).hexdigest()[:16]
        exe = root / f"peak_probe-{key}" / "peak_probe"
        if exe.is_file() and os.access(exe, os.X_OK):
            return {"path": str(exe), "compiler": version, "flags": list(flags), "cached": True}
        try:
            exe.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProbeUnavailable(f"cannot create the probe's build folder {exe.parent}: {exc.strerror}; set "
                                   "SQUEEZE_NATIVE_CACHE to a writable folder") from None
        # compiled under a temporary name and renamed: a concurrent bench never runs a half-written binary
        fd, tmp = tempfile.mkstemp(prefix=".peak_probe.", dir=exe.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, "-pthread", "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S)
            if proc.returncode == 0:
                os.replace(tmp, exe)
                return {"path": str(exe), "compiler": version, "flags": list(flags), "cached": False}
            first = next((l for l in proc.stderr.splitlines() if "error" in l), None) or \
                (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]
            errors.append(f"{' '.join(flags)}: {first.strip()[:200]}")
        except subprocess.TimeoutExpired:
            errors.append(f"{' '.join(flags)}: timed out after {COMPILE_TIMEOUT_S}s")
        except OSError as exc:
            errors.append(f"{' '.join(flags)}: {exc.strerror or exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise ProbeUnavailable(f"the peak probe did not compile with {version} ({'; '.join(errors)})")


def run(threads: Sequence[int] = (1,), seconds: float = 0.1, reps: int = 5, binary: Optional[Dict] = None) -> Dict:
    """One probe run: the probe's JSON plus the build it came from. ``seconds``: the length of one timed pass on one
    thread; each thread count is timed ``reps`` times and the best pass kept (others' load only slows a pass)."""
    binary = binary or build()
    counts = ",".join(str(int(t)) for t in threads)
    try:
        proc = subprocess.run([binary["path"], "--threads", counts, "--seconds", str(seconds), "--reps", str(reps)],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ProbeUnavailable(f"the peak probe timed out after {RUN_TIMEOUT_S}s") from None
    except OSError as exc:
        raise ProbeUnavailable(f"the peak probe could not start: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ProbeUnavailable(f"the peak probe failed: {tail[:200]}")
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise ProbeUnavailable("the peak probe printed no JSON") from None
    if out.get("schema") != SCHEMA:
        raise ProbeUnavailable(f"the peak probe printed schema {out.get('schema')!r}, expected {SCHEMA}")
    for kind in KINDS:
        for res in (out.get(kind) or {}).get("results", []):
            if not (math.isfinite(res["gops"]) and res["gops"] > 0):
                raise ProbeUnavailable(f"the peak probe measured no {KINDS[kind]} rate at {res['threads']} thread(s)")
    out["build"] = {k: binary[k] for k in ("compiler", "flags")}
    return out


def rates(out: Dict, kind: str) -> Dict[str, float]:
    """{threads (str): GOP/s} of one kind from a probe run; empty when the kind was not measured."""
    return {str(r["threads"]): r["gops"] for r in (out.get(kind) or {}).get("results", [])}


def peak_at(peaks: Dict, kind: str, threads: int) -> Optional[float]:
    """The machine's measured rate of ``kind`` (a KINDS key) at ``threads`` threads from machine_peaks' section, or
    None where it was not measured (no compiler, another thread count)."""
    if not peaks or peaks.get("status") != "ok":
        return None
    return ((peaks.get(kind) or {}).get("gops") or {}).get(str(threads))


def machine_peaks(threads: Sequence[int], probes: Sequence[Dict]) -> Dict:
    """The machine section's peaks from one or more probe runs (e.g. before and after the runtimes): per kind and
    thread count the best rate (a run that coincided with other load understates the machine), plus every run's
    numbers so the spread stays visible."""
    first = probes[0]
    peaks: Dict = {"status": "ok", "probe": "bench/native/peak_probe.c", "compiler": first["build"]["compiler"],
                   "flags": first["build"]["flags"], "threads": [int(t) for t in threads],
                   "unit": "GOP/s (multiply and add each count 1: an FMA or a MAC is 2)"}
    for kind in KINDS:
        if not first.get(kind):
            continue
        per_run = [rates(p, kind) for p in probes]
        peaks[kind] = {"isa": first[kind]["isa"], "chains": first[kind]["chains"],
                       "gops": {t: max(r[t] for r in per_run if t in r) for t in per_run[0]},
                       "runs_gops": {t: [r.get(t) for r in per_run] for t in per_run[0]}}
    if first.get("int8_amx_note"):
        peaks["int8_amx_note"] = first["int8_amx_note"]
    return peaks


class Probes:
    """Probe runs around a benchmark's runtimes: :meth:`probe` before and after them, :meth:`peaks` the machine's
    (the better rate per thread count: a probe that coincided with other load would understate the machine and
    flatter every percentage). After one failure (no compiler, ...) no more runs are tried; the peaks say why."""

    def __init__(self, threads: Sequence[int], seconds: float = 0.1, say=None):
        self.threads, self.seconds, self.say = list(threads), seconds, say or (lambda a, b: None)
        self.runs: List[Dict] = []
        self.note: Optional[str] = None

    def probe(self, when: str, what: str = "fp32 FMA and int8 dot-product peaks") -> None:
        if self.note:
            return
        self.say("peaks", f"{what} at {', '.join(map(str, self.threads))} thread(s) ({when})")
        try:
            self.runs.append(run(self.threads, seconds=self.seconds, reps=5))
        except ProbeUnavailable as exc:
            self.note = str(exc)
            self.say("peaks", f"not measured: {self.note}")

    def peaks(self) -> Dict:
        return machine_peaks(self.threads, self.runs) if self.runs else unavailable(self.note or "not measured")


def measure_machine_peaks(threads: Sequence[int], seconds: float = 0.1, reps: int = 5) -> Dict:
    """Build (once) and run the probe; ``status: unavailable`` with a one-line ``note`` when it cannot run here."""
    try:
        return machine_peaks(threads, [run(threads, seconds, reps)])
    except ProbeUnavailable as exc:
        return unavailable(str(exc))


def unavailable(note: str) -> Dict:
    return {"status": "unavailable", "note": note}


def reference_kind(precision: Optional[str]) -> str:
    """Which peak an artifact of this precision is compared with: int8 -> the int8 dot-product peak; fp32 and
    fp16 -> the fp32 FMA peak (CPU runtimes compute fp16 graphs with fp32 arithmetic)."""
    return "int8" if precision == "int8" else "fp32"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """python -m bench.peak_probe [--threads 1,2]: print this machine's peaks (JSON)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.peak_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--seconds", type=float, default=0.1, help="one timed pass on one thread, seconds (default 0.1)")
    p.add_argument("--reps", type=int, default=5, help="passes per thread count, the best kept (default 5)")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    print(json.dumps(measure_machine_peaks(threads, args.seconds, args.reps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
