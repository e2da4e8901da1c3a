"""Host (this machine) benchmark of every artifact in an export manifest, each runtime in its own process.

For each artifact and thread count: load time, p50/p90/p99/min latency, clips/s, peak resident memory,
model size, achieved GFLOP/s and its share of this machine's fp32 matmul rate measured in the same run,
and the speed-up over PyTorch eager (the original model, same thread count, same run).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from squeeze_mobile.errors import SqueezeError

from .stats import summarize

Progress = Callable[[str, str], None]
WORKER_TIMEOUT_S = 900
COREML_COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def run_worker(job: Dict, timeout: int = WORKER_TIMEOUT_S) -> Dict:
    """Run bench.worker in a fresh interpreter and return its JSON result (errors come back as data)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job.get("threads") or 1), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s"}
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"ok": False, "error": f"worker exited {proc.returncode}: {tail[0][:300]}"}
    result = json.loads(proc.stdout[marker + len("@@RESULT@@"):].strip().splitlines()[0])
    if not result.get("ok"):  # shown in a table cell: one line
        result["error"] = " ".join(str(result.get("error")).split())
    return result


def flops_per_clip(manifest: Dict) -> float:
    """FLOPs (2 x MACs) of one forward pass of the export-ready graph, counted from the module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from squeezetime.model import seeded_model
    from squeezetime.rewrite import InputSpec, export_ready

    from export.pipeline import config_overrides

    cfg = manifest["model"]["config"]
    model = seeded_model(cfg["name"], **config_overrides(cfg))
    spec = spec_from_manifest(manifest)
    ready = export_ready(model, InputSpec(frames=spec["frames"], size=spec["size"], input_format=spec["input_format"]))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ready(ready.spec.example())
    return float(counter.get_total_flops()) * spec["batch"]


def spec_from_manifest(manifest: Dict) -> Dict:
    from export.pipeline import config_overrides
    from squeezetime.config import get_config

    inp = manifest["input"]
    shape = inp["shape"]
    size = shape[2] if inp["format"] == "frames_uint8" else shape[-1]
    cfg = manifest["model"]["config"]
    frames = get_config(cfg["name"], **config_overrides(cfg)).frames
    return {"frames": frames, "size": size, "input_format": inp["format"], "batch": inp.get("batch", 1)}


def parse_threads(text) -> List[int]:
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        try:
            values = [int(t) for t in str(text).split(",") if t.strip()]
        except ValueError:
            raise SqueezeError(f"--threads takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SqueezeError("--threads needs one or more positive integers, e.g. 1,2")
    return values


def run_host_benchmark(art_dir, threads: Sequence[int] = (1, 2), runs: int = 20, warmup: int = 3,
                       out_dir=None, include_eager: bool = True, progress: Optional[Progress] = None) -> Dict:
    from export.backends import get_backend
    from export.pipeline import read_manifest

    say = progress or (lambda a, b: None)
    from .report import check_report_dir

    if runs < 1 or warmup < 0:
        raise SqueezeError("--runs must be >= 1 and --warmup >= 0")
    # absolute: every runtime row runs in a worker process with another working directory
    art_dir = Path(art_dir).resolve()
    manifest = read_manifest(art_dir)
    out_dir = check_report_dir(Path(out_dir) if out_dir else art_dir / "bench")  # before any measurement
    spec = spec_from_manifest(manifest)
    flops = flops_per_clip(manifest)
    base = {"spec": spec, "runs": runs, "warmup": warmup}
    rows: List[Dict] = []
    matmul: Dict[int, float] = {}
    probes: Dict[int, List[float]] = {}
    def probe_matmul(t: int) -> float:
        res = run_worker({"kind": "matmul", "threads": t, "runs": max(5, runs // 2), "warmup": 2})
        if not res.get("ok"):
            raise SqueezeError(f"matmul probe failed: {res.get('error')}")
        gf = sorted(res["gflops"])
        return gf[len(gf) // 2]

    for t in threads:
        say("matmul", f"fp32 4096^3 matmul rate at {t} thread(s)")
        # probed before and after the runtimes of this thread count; the better median is the machine's rate
        # (a probe that coincided with other load would understate it and flatter every percentage)
        matmul_probes = [probe_matmul(t)]
        matmul[t] = matmul_probes[0]

        jobs = []
        if include_eager:
            src = manifest["model"].get("source") or {"kind": "unspecified"}
            jobs.append(("pytorch-eager", None, {"kind": "eager", "source": src, "config": manifest["model"]["config"]}))
            jobs.append(("pytorch-eager-rewritten", None, {"kind": "eager", "rewritten": True, "source": src,
                                                            "config": manifest["model"]["config"]}))
        for art in manifest["artifacts"]:
            if not art.get("file"):
                continue
            job = {"kind": "artifact", "dir": str(art_dir), "file": art["file"], "format": art["format"]}
            if art["format"] == "coreml" and platform.system() == "Darwin":
                # Core ML picks the hardware per compute-unit setting: time each one
                for cu in COREML_COMPUTE_UNITS:
                    jobs.append((f"coreml-{cu}", art, {**job, "compute_units": cu}))
            else:
                jobs.append((art["format"], art, job))
        for name, art, job in jobs:
            row = {"name": name, "threads": t, "file": art["file"] if art else None,
                   "format": art["format"] if art else "pytorch", "bytes": art["bytes"] if art else None,
                   "precision": art["precision"] if art else "fp32"}
            reason = get_backend(art["format"]).cannot_time_here(art) if art else None
            if reason:
                row.update({"status": "not available on this OS", "detail": reason})
                rows.append(row)
                continue
            say(name, f"{row['file'] or 'PyTorch eager'} at {t} thread(s)")
            res = run_worker({**base, **job, "threads": t})
            if not res.get("ok"):
                row.update({"status": "error", "detail": res.get("error")})
                rows.append(row)
                say(name, f"error: {res.get('error')}")
                continue
            stats = summarize(res["latencies_s"], spec["batch"])
            gflops = flops / (stats["p50_ms"] / 1e3) / 1e9
            row.update({"status": "ok", "runtime": res["runtime"], "load_s": res["load_s"], **stats,
                        "peak_rss_mb": res["peak_rss_mb"], "rss_before_load_mb": res["rss_before_mb"],
                        "achieved_gflops": gflops})
            rows.append(row)
            say(name, f"p50 {stats['p50_ms']:.1f} ms, {gflops:.0f} GFLOP/s")
        matmul_probes.append(probe_matmul(t))
        matmul[t] = max(matmul_probes)
        probes[t] = matmul_probes
        for row in rows:
            if row["threads"] == t and row.get("status") == "ok":
                row["pct_of_matmul"] = 100.0 * row["achieved_gflops"] / matmul[t]
    for row in rows:  # speed-up over the original PyTorch model, same run, same threads
        eager = next((r for r in rows if r["name"] == "pytorch-eager" and r["threads"] == row["threads"] and r["status"] == "ok"), None)
        if eager and row.get("status") == "ok":
            row["speedup_vs_eager"] = eager["p50_ms"] / row["p50_ms"]
    report = {
        "schema": "squeeze-mobile/bench-host/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts_dir": str(art_dir),
        "machine": machine_info(),
        "model": {"config": manifest["model"]["config"]["name"], "input": manifest["input"], "gflop_per_clip": flops / 1e9},
        "matmul_gflops": {str(k): v for k, v in matmul.items()},
        "matmul_probes_gflops": {str(k): v for k, v in probes.items()},
        "runs": runs,
        "warmup": warmup,
        "rows": rows,
    }
    from .report import write_reports

    report["files"] = write_reports(report, out_dir)
    return report


def machine_info() -> Dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
