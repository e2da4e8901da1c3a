"""Android phones over adb: push artifacts and the user's benchmark binaries, run them pinned to big cores,
parse their output into the host report schema.

Binaries (built by the user for android_arm64):
- LiteRT ``benchmark_model`` (tensorflow/lite/tools/benchmark), run with XNNPACK and ``--num_threads``;
- ExecuTorch ``executor_runner`` (examples/portable/executor_runner, built with the XNNPACK backend),
  run with ``--num_executions`` and ``--cpu_threads``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from squeeze_mobile.errors import SqueezeError

DEVICE_DIR = "/data/local/tmp/squeeze"
Progress = Callable[[str, str], None]


# --------------------------------------------------------------------------------------------- parsers
def parse_benchmark_model(text: str) -> Dict:
    """Parse LiteRT benchmark_model output (microseconds) into milliseconds.

    Uses the timing line of the measured runs, not the warm-up line; reads init time and the peak memory footprint when printed.
    """
    result: Dict = {}
    # benchmark_model prints a "Running benchmark for at least N iterations" block twice: first the warm-up
    # runs, then the measured runs; the measured timing line is the last count= line after such a header.
    measured = None
    after_header = False
    for line in text.splitlines():
        if "Running benchmark for at least" in line:
            after_header = True
        elif after_header and re.search(r"\bcount=\d+", line):
            measured = line
            after_header = False
    if measured is None:
        raise SqueezeError("benchmark_model output has no timing line for the measured runs (did it crash?)")
    fields = dict(re.findall(r"(\w+)=([-\d.e+]+)", measured))
    us = lambda k: float(fields[k]) / 1e3 if k in fields else None  # noqa: E731
    result.update({
        "runs": int(fields["count"]),
        "avg_ms": us("avg"),
        "min_ms": us("min"),
        "max_ms": us("max"),
        "std_ms": us("std"),
        "p50_ms": us("median") if "median" in fields else us("p50"),
        "p90_ms": us("p90"),
        "p99_ms": us("p99"),
        "first_ms": us("first"),
    })
    m = re.search(r"Inference timings in us: Init: ([\d.]+)", text)
    if m:
        result["load_s"] = float(m.group(1)) / 1e6
    m = re.search(r"Peak memory footprint \(MB\): init=([\d.]+) overall=([\d.]+)", text)
    if m:
        result["peak_rss_mb"] = float(m.group(2))
    m = re.search(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)", text)
    if m:
        result["memory_delta_mb"] = float(m.group(2))
    return result


def parse_executor_runner(text: str) -> Dict:
    """Parse ExecuTorch executor_runner output: total time of N executions -> average ms per run."""
    m = re.search(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms", text)
    if not m:
        err = next((l.strip() for l in text.splitlines() if re.search(r"\bE \d|error|Error", l)), "no success line")
        raise SqueezeError(f"executor_runner did not report a successful run: {err[:200]}")
    runs, total = int(m.group(1)), float(m.group(2))
    result = {"runs": runs, "avg_ms": total / runs, "p50_ms": None}
    m = re.search(r"Model loaded in ([\d.]+) ms|Load(?:ed)? .*? in ([\d.]+) ms", text)
    if m:
        result["load_s"] = float(m.group(1) or m.group(2)) / 1e3
    return result


# ----------------------------------------------------------------------------------- command building
def adb_path() -> str:
    adb = os.environ.get("ADB") or shutil.which("adb")
    if not adb:
        raise SqueezeError("adb not found: install Android platform-tools and put adb on PATH (or set ADB=/path/to/adb)")
    return adb


def adb_base(adb: str, serial: Optional[str]) -> List[str]:
    return [adb] + (["-s", serial] if serial else [])


def benchmark_model_command(binary: str, model: str, threads: int, runs: int, warmup: int, cpu_mask: Optional[str]) -> str:
    cmd = [binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}",
           f"--warmup_runs={warmup}", "--min_secs=0", "--warmup_min_secs=0", "--use_xnnpack=true",
           "--report_peak_memory_footprint=true"]
    return _pinned(cmd, cpu_mask)


def executor_runner_command(binary: str, model: str, threads: int, runs: int, cpu_mask: Optional[str]) -> str:
    cmd = [binary, f"--model_path={model}", f"--num_executions={runs}", f"--cpu_threads={threads}"]
    return _pinned(cmd, cpu_mask)


def _pinned(cmd: List[str], cpu_mask: Optional[str]) -> str:
    # taskset pins to the big cores (e.g. mask f0 = cpus 4-7 on a 4+4 SoC); toybox ships taskset on Android 7+
    prefix = ["taskset", cpu_mask] if cpu_mask else []
    return " ".join(shlex.quote(c) for c in prefix + cmd)


def _run(cmd: List[str], what: str, timeout: int = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SqueezeError(f"cannot run {cmd[0]} ({what})") from None
    except subprocess.TimeoutExpired:
        raise SqueezeError(f"{what} timed out after {timeout}s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise SqueezeError(f"{what} failed: {tail[0][:200]}")
    return proc.stdout + proc.stderr


def pick_device(adb: str, serial: Optional[str]) -> str:
    out = _run([adb, "devices"], "adb devices", timeout=60)
    devices = [l.split()[0] for l in out.splitlines()[1:] if l.strip() and l.split()[-1] == "device"]
    if serial:
        if serial not in devices:
            raise SqueezeError(f"Android device {serial} is not attached (adb devices lists: {', '.join(devices) or 'none'})")
        return serial
    if not devices:
        raise SqueezeError("no Android device attached: connect a phone with USB debugging enabled (adb devices lists none)")
    if len(devices) > 1:
        raise SqueezeError(f"several Android devices attached ({', '.join(devices)}); choose one with --adb SERIAL")
    return devices[0]


def run_android_benchmark(art_dir, serial: Optional[str] = None, tflite_benchmark: Optional[str] = None,
                          pte_runner: Optional[str] = None, threads: Sequence[int] = (4,), runs: int = 20, warmup: int = 3,
                          cpu_mask: Optional[str] = None, out_dir=None, progress: Optional[Progress] = None,
                          formats: Optional[Sequence[str]] = None) -> Dict:
    from export.pipeline import artifact_problem, read_manifest

    from .host import only_formats
    from .report import write_reports

    say = progress or (lambda a, b: None)
    art_dir = Path(art_dir)
    manifest = read_manifest(art_dir)
    artifacts = [a for a in manifest["artifacts"] if a.get("file") and a["format"] in ("tflite", "pte")]
    if not artifacts:
        raise SqueezeError(f"{art_dir} has no .tflite or .pte artifacts to run on a phone")
    artifacts = only_formats(artifacts, formats, art_dir, " to run on a phone")
    needs = {"tflite": tflite_benchmark, "pte": pte_runner}
    flag = {"tflite": "--tflite-benchmark", "pte": "--pte-runner"}
    for fmt in sorted({a["format"] for a in artifacts}):
        binary = needs[fmt]
        if not binary:
            raise SqueezeError(f"{fmt} artifacts need {flag[fmt]} PATH (the phone build of "
                               f"{'LiteRT benchmark_model' if fmt == 'tflite' else 'ExecuTorch executor_runner'})")
        if not Path(binary).is_file():
            raise SqueezeError(f"{flag[fmt]} {binary} does not exist")
    for art in artifacts:  # like `squeeze verify`: what is pushed is what the manifest describes
        problem = artifact_problem(art, art_dir)
        if problem:
            raise SqueezeError(f"{problem} (nothing was run)")
    adb = adb_path()
    serial = pick_device(adb, serial)
    base = adb_base(adb, serial)
    say("adb", f"device {serial}: pushing binaries and {len(artifacts)} artifact(s) to {DEVICE_DIR}")
    _run(base + ["shell", "mkdir", "-p", DEVICE_DIR], "adb shell mkdir")
    remote_bin = {}
    for fmt in sorted({a["format"] for a in artifacts}):
        local = Path(needs[fmt])
        remote_bin[fmt] = f"{DEVICE_DIR}/{local.name}"
        _run(base + ["push", str(local), remote_bin[fmt]], f"adb push {local.name}")
        _run(base + ["shell", "chmod", "755", remote_bin[fmt]], "adb shell chmod")
    model_name = _run(base + ["shell", "getprop", "ro.product.model"], "adb getprop").strip() or serial
    rows = []
    for art in artifacts:
        remote = f"{DEVICE_DIR}/{art['file']}"
        _run(base + ["push", str(art_dir / art["file"]), remote], f"adb push {art['file']}")
        for t in threads:
            if art["format"] == "tflite":
                cmd = benchmark_model_command(remote_bin["tflite"], remote, t, runs, warmup, cpu_mask)
                parse, runtime = parse_benchmark_model, "LiteRT benchmark_model (XNNPACK, phone)"
            else:
                cmd = executor_runner_command(remote_bin["pte"], remote, t, runs, cpu_mask)
                parse, runtime = parse_executor_runner, "ExecuTorch executor_runner (XNNPACK, phone)"
            say(art["format"], f"{art['file']} at {t} thread(s): {cmd}")
            stats = parse(_run(base + ["shell", cmd], f"{art['format']} benchmark on {serial}"))
            p50 = stats.get("p50_ms") or stats["avg_ms"]
            rows.append({"name": art["format"], "runtime": runtime, "file": art["file"], "format": art["format"],
                         "threads": t, "bytes": art["bytes"], "precision": art["precision"], "status": "ok",
                         "command": cmd, **stats, "p50_ms": p50, "p50_is_average": stats.get("p50_ms") is None,
                         "clips_per_s": 1e3 / p50})
    report = {
        "schema": "squeeze-mobile/bench-android/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts_dir": str(art_dir),
        "machine": {"device": model_name, "serial": serial, "cpu_mask": cpu_mask},
        "model": {"config": manifest["model"]["config"]["name"], "input": manifest["input"]},
        "runs": runs, "warmup": warmup, "rows": rows,
    }
    report["files"] = write_reports(report, Path(out_dir) if out_dir else art_dir / "bench_android")
    return report
