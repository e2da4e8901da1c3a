"""Host (this machine) benchmark of every artifact in an export manifest, each runtime in its own process.

For each artifact (every precision of every format) and thread count: load time, p50/p90/p99/min latency, clips/s,
peak resident memory, model size, achieved GFLOP/s and its share of this machine's peak for the artifact's
precision (fp32 FMA peak for fp32/fp16, int8 dot-product peak for int8; bench/peak_probe.py measures both in the
same run), the speed-up over PyTorch eager (the original model, same thread count, same run) and, where a runtime
has both, the int8/fp32 latency ratio.
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


PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def row_name(art: Dict) -> str:
    """The row's name: the format, with the precision when it is not fp32 (onnx, onnx-int8, onnx-fp16)."""
    precision = art.get("precision", "fp32")
    return art["format"] if precision == "fp32" else f"{art['format']}-{precision}"


def select_artifacts(manifest: Dict, art_dir: Path, formats: Optional[Sequence[str]] = None) -> List[Dict]:
    """The manifest's artifact records to benchmark (only ``formats``' when given); one-line SqueezeError when the
    manifest lists none, or holds none of a requested format."""
    arts = [a for a in manifest["artifacts"] if a.get("file")]
    if not arts:
        raise SqueezeError(f"{Path(art_dir) / 'manifest.json'} lists no artifacts to benchmark; run `squeeze export` "
                           "first")
    return only_formats(arts, formats, art_dir)


def only_formats(arts: List[Dict], formats: Optional[Sequence[str]], art_dir, where: str = "") -> List[Dict]:
    """``arts`` of ``formats`` (all when not given); one-line SqueezeError naming a requested format it lacks."""
    if not formats:
        return arts
    have = sorted({a["format"] for a in arts})
    missing = [f for f in formats if f not in have]
    if missing:
        raise SqueezeError(f"{art_dir} holds no {', '.join(missing)} artifact{where} (it has: {', '.join(have)}); pass "
                           "--formats with those")
    return [a for a in arts if a["format"] in formats]


def artifact_jobs(manifest: Dict, art_dir: Path, include_eager: bool, artifacts: Optional[List[Dict]] = None,
                  source: Optional[Dict] = None) -> List[tuple]:
    """(name, artifact, worker job) for PyTorch eager and every artifact of the manifest (or ``artifacts``). A format's
    precisions run back to back (fp32, fp16, int8), so the int8/fp32 ratio compares processes timed minutes apart at
    most. ``source``: the model source of the eager rows (default: the manifest's)."""
    jobs = []
    if include_eager:
        src = source or manifest["model"].get("source") or {"kind": "unspecified"}
        jobs.append(("pytorch-eager", None, {"kind": "eager", "source": src, "config": manifest["model"]["config"]}))
        jobs.append(("pytorch-eager-rewritten", None, {"kind": "eager", "rewritten": True, "source": src,
                                                        "config": manifest["model"]["config"]}))
    arts = list(artifacts) if artifacts is not None else [a for a in manifest["artifacts"] if a.get("file")]
    first_seen = {}
    for i, art in enumerate(arts):
        first_seen.setdefault(art["format"], i)
    arts.sort(key=lambda a: (first_seen[a["format"]], PRECISION_ORDER.get(a.get("precision"), 9)))  # stable
    for art in arts:
        job = {"kind": "artifact", "dir": str(art_dir), "file": art["file"], "format": art["format"]}
        if art["format"] == "coreml" and platform.system() == "Darwin":
            # Core ML picks the hardware per compute-unit setting: time each one
            for cu in COREML_COMPUTE_UNITS:
                jobs.append((f"{row_name(art)}-{cu}", art, {**job, "compute_units": cu}))
        else:
            jobs.append((row_name(art), art, job))
    return jobs


def add_peak_shares(rows: List[Dict], peaks: Dict) -> None:
    """Each ok row's achieved rate as a share of the peak that matches its precision at its thread count."""
    from .peak_probe import KINDS, peak_at, reference_kind

    for row in rows:
        if row.get("status") != "ok":
            continue
        kind = reference_kind(row.get("precision"))
        peak = peak_at(peaks, kind, row["threads"])
        row["peak_reference"] = KINDS[kind]
        if peak:
            row["peak_gops"] = peak
            row["pct_of_peak"] = 100.0 * row["achieved_gflops"] / peak


def precision_pairs(rows: List[Dict]) -> List[Dict]:
    """int8 vs fp32 of the same runtime at the same thread count, same run: the ratio of p50 latencies (medians).
    Sets ``int8_fp32_latency_ratio`` on the int8 row; returns one record per pair."""
    pairs = []
    ok = [r for r in rows if r.get("status") == "ok"]
    for row in ok:
        if row.get("precision") != "int8":
            continue
        partners = [r for r in ok if r.get("precision") == "fp32" and r["format"] == row["format"]
                    and r["runtime"] == row["runtime"] and r["threads"] == row["threads"]]
        if len(partners) > 1:  # e.g. two fp32 .pte files: the one named like the int8 file
            partners = [r for r in partners if r["file"] == (row["file"] or "").replace("int8", "fp32")]
        if len(partners) != 1:
            continue
        fp32 = partners[0]
        ratio = row["p50_ms"] / fp32["p50_ms"]
        row["int8_fp32_latency_ratio"] = ratio
        pairs.append({"runtime": row["runtime"], "format": row["format"], "threads": row["threads"],
                      "fp32_file": fp32["file"], "int8_file": row["file"], "fp32_p50_ms": fp32["p50_ms"],
                      "int8_p50_ms": row["p50_ms"], "int8_fp32_latency_ratio": ratio,
                      "int8_speedup": 1.0 / ratio})
    return pairs


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
    from squeeze_mobile.cli_types import MAX_THREADS

    if max(values) > MAX_THREADS:  # thousands of runtime threads on a few cores ran for many minutes
        raise SqueezeError(f"--threads {max(values)} is too many; use positive integers up to {MAX_THREADS}, e.g. 1,2")
    return list(dict.fromkeys(values))  # each count measured once


def eager_source(manifest: Dict, checkpoint=None):
    """(source, None) for the PyTorch eager rows, or (None, why they cannot run). ``checkpoint``: where the export's
    checkpoint is now (--checkpoint); a wrong one is a one-line SqueezeError, not a failed row."""
    from export.pipeline import check_source_file, resolve_source

    source = manifest["model"].get("source") or {"kind": "unspecified"}
    resolved = resolve_source(source, manifest["model"]["config"], checkpoint) if checkpoint is not None else None
    try:
        resolved = resolved or resolve_source(source, manifest["model"]["config"])
        check_source_file(resolved)
    except SqueezeError as exc:
        return None, str(exc)
    return resolved, None


def run_host_benchmark(art_dir, threads: Sequence[int] = (1, 2), runs: int = 20, warmup: int = 3,
                       out_dir=None, include_eager: bool = True, progress: Optional[Progress] = None,
                       probe_seconds: float = 0.1, formats: Optional[Sequence[str]] = None,
                       checkpoint=None) -> Dict:
    """Time every artifact of ``art_dir``'s manifest (every precision: fp32, fp16, int8 side by side; only
    ``formats``' when given) and PyTorch eager at each thread count, each in its own process; ``probe_seconds``: one
    timed pass of the peak probe. Every artifact is checked against its manifest record first (present, same
    sha256): one that is not fails its rows with one line. ``checkpoint``: where the export's checkpoint is now, if
    it moved (for the eager rows; checked against the manifest)."""
    from export.backends import get_backend
    from export.pipeline import artifact_problem, read_manifest

    from . import peak_probe
    from .report import check_report_dir

    say = progress or (lambda a, b: None)
    if runs < 1 or warmup < 0:
        raise SqueezeError("--runs must be >= 1 and --warmup >= 0")
    # absolute: every runtime row runs in a worker process with another working directory
    art_dir = Path(art_dir).resolve()
    manifest = read_manifest(art_dir)
    arts = select_artifacts(manifest, art_dir, formats)
    # before any measurement; created only when the reports are written (a failed run leaves no empty folder)
    out_dir = check_report_dir(Path(out_dir) if out_dir else art_dir / "bench", create=False)
    source, eager_problem = eager_source(manifest, checkpoint) if include_eager or checkpoint else (None, None)
    problems = {a["file"]: artifact_problem(a, art_dir) for a in arts}  # like `squeeze verify`: missing, or changed
    spec = spec_from_manifest(manifest)
    flops = flops_per_clip(manifest)
    base = {"spec": spec, "runs": runs, "warmup": warmup}
    rows: List[Dict] = []
    probe_threads = sorted({1, *threads})  # 1 thread: the per-core peak, reported even when not benchmarked
    # probed before and after the runtimes; the better rate per thread count is the machine's
    probes = peak_probe.Probes(probe_threads, probe_seconds, say)
    probes.probe("before the runtimes")
    jobs = artifact_jobs(manifest, art_dir, include_eager, arts, source)
    for t in threads:
        for name, art, job in jobs:
            row = {"name": name, "threads": t, "file": art["file"] if art else None,
                   "format": art["format"] if art else "pytorch", "bytes": art.get("bytes") if art else None,
                   "precision": art.get("precision", "fp32") if art else "fp32"}
            problem = problems.get(art["file"]) if art else eager_problem
            if problem:
                row.update({"status": "error", "detail": problem})
                rows.append(row)
                say(name, f"error: {problem}")
                continue
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
    probes.probe("after the runtimes")
    peaks = probes.peaks()
    add_peak_shares(rows, peaks)
    for row in rows:  # speed-up over the original PyTorch model, same run, same threads
        eager = next((r for r in rows if r["name"] == "pytorch-eager" and r["threads"] == row["threads"] and r["status"] == "ok"), None)
        if eager and row.get("status") == "ok":
            row["speedup_vs_eager"] = eager["p50_ms"] / row["p50_ms"]
    pairs = precision_pairs(rows)
    report = {
        "schema": "squeeze-mobile/bench-host/2",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts_dir": str(art_dir),
        "machine": {**machine_info(), "peaks": peaks},
        # a --batch N export's call classifies N clips: its operations per call and per clip differ by N
        "model": {"config": manifest["model"]["config"]["name"], "input": manifest["input"], "gflop_per_call": flops / 1e9,
                  "gflop_per_clip": flops / 1e9 / max(1, int(manifest["input"].get("batch") or 1))},
        "int8_vs_fp32": pairs,
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
