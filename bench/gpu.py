"""GPU throughput (clips/s) of SqueezeTime and its peers: fp32 and bf16, channels-last, eager and torch.compile.

Batch: the largest of 256, 128, 64, ... that fits (the official throughput script uses 256 on a V100).
Timing: CUDA events around each batch after warm-up; the median batch time gives clips/s.
Without CUDA the benchmark is skipped (status "skipped"), so it is safe to call anywhere.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

from squeeze_mobile.atomic import atomic_path

Progress = Callable[[str, str], None]
GPU_REPORT_FILES = ("gpu_report.json", "gpu_report.md")
BATCHES = (256, 128, 64, 32, 16, 8)


def _models(include_peers: bool):
    """(name, builder, frames, size, paper V100 clips/s) for SqueezeTime and the peers bench/peers.py defines."""
    import squeezetime

    out = [("SqueezeTime", lambda: squeezetime.build_model("k400"), 16, 224, 903.0)]
    if include_peers:
        try:
            from bench import peers
        except ImportError:
            return out
        for name, meta in peers.PEERS.items():
            out.append((name, (lambda n=name: peers.build_peer(n)), meta.frames, meta.size, getattr(meta, "paper_v100_clips_s", None)))
    return out


def _throughput(model, frames, size, dtype, compiled, runs, warmup, say, name) -> Dict:
    import torch

    dev = torch.device("cuda")
    model = model.to(dev).eval()
    model = model.to(memory_format=torch.channels_last)  # 4-D conv weights NHWC (5-D inputs stay NCDHW)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    fn = torch.compile(model) if compiled else model
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    last_error = None
    for batch in BATCHES:
        try:
            x = torch.randn(batch, 3, frames, size, size, device=dev, dtype=tdtype)
            with torch.inference_mode():
                for _ in range(warmup):
                    fn(x)
                torch.cuda.synchronize()
                times = []
                for _ in range(runs):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn(x)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end) / 1e3)
            med = statistics.median(times)
            return {"batch": batch, "median_batch_s": med, "clips_per_s": batch / med,
                    "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
        except torch.OutOfMemoryError as exc:
            last_error = exc
            torch.cuda.empty_cache()
            say(name, f"batch {batch} does not fit, trying {batch // 2}")
    return {"error": f"out of memory down to batch {BATCHES[-1]}: {str(last_error)[:120]}"}


def run_gpu_benchmark(out_dir="bench_out/gpu", runs: int = 20, warmup: int = 5, include_peers: bool = True,
                      compile_modes=(False, True), progress: Optional[Progress] = None) -> Dict:
    """Clips/s of SqueezeTime (and with ``include_peers`` its peers) on the CUDA GPU, fp32 and bf16, channels-last,
    eager and torch.compile (``compile_modes``), at the largest batch that fits; writes gpu_report.json and
    gpu_report.md into ``out_dir`` and returns the report. Without CUDA it writes and returns a report with
    status "skipped" (the `squeeze bench --gpu` command refuses instead)."""
    import torch

    from .report import check_report_dir

    say = progress or (lambda a, b: None)
    out_dir = check_report_dir(out_dir, GPU_REPORT_FILES)
    report: Dict = {"schema": "squeeze-mobile/bench-gpu/1", "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not torch.cuda.is_available():
        report.update({"status": "skipped", "reason": "no CUDA device", "rows": []})
        report["markdown"] = "GPU benchmark skipped: no CUDA device on this machine.\n"
        say("gpu", "skipped: no CUDA device")
    else:
        torch.backends.cudnn.benchmark = True
        rows: List[Dict] = []
        for name, build, frames, size, paper in _models(include_peers):
            for dtype in ("fp32", "bf16"):
                for compiled in compile_modes:
                    say(name, f"{dtype} channels-last {'torch.compile' if compiled else 'eager'}")
                    torch.cuda.reset_peak_memory_stats()
                    try:
                        res = _throughput(build(), frames, size, dtype, compiled, runs, warmup, say, name)
                    except Exception as exc:  # noqa: BLE001 - one model failing (e.g. compile) is a row, not a crash
                        res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
                    rows.append({"model": name, "frames": frames, "size": size, "dtype": dtype, "compiled": compiled,
                                 "paper_v100_clips_s": paper, **res})
                    if "clips_per_s" in res:
                        say(name, f"{res['clips_per_s']:.0f} clips/s at batch {res['batch']}")
        report.update({"status": "ok", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "runs": runs, "warmup": warmup, "rows": rows})
        report["markdown"] = gpu_markdown(report)
    with atomic_path(out_dir / "gpu_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out_dir / "gpu_report.md") as tmp:
        tmp.write_text(report["markdown"])
    return report


def gpu_markdown(report: Dict) -> str:
    lines = [f"GPU throughput on {report['device']} (torch {report['torch']}, CUDA {report['cuda']}), clips/s, "
             f"median of {report['runs']} batches; channels-last; fp32 convs may use TF32 (PyTorch default).", "",
             "| model | frames x size | dtype | mode | batch | clips/s | peak GiB | paper V100 clips/s |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        mode = "torch.compile" if r["compiled"] else "eager"
        if "error" in r:
            from .report import one_line

            lines.append(f"| {r['model']} | {r['frames']}x{r['size']} | {r['dtype']} | {mode} | - | error: {one_line(r['error'])} | | |")
            continue
        paper = f"{r['paper_v100_clips_s']:.0f}" if r.get("paper_v100_clips_s") else "-"
        lines.append(f"| {r['model']} | {r['frames']}x{r['size']} | {r['dtype']} | {mode} | {r['batch']} | "
                     f"{r['clips_per_s']:.0f} | {r['peak_mem_gib']:.1f} | {paper} |")
    return "\n".join(lines) + "\n"
