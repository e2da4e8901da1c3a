"""Accuracy of every artifact of an export on the camera-motion held-out clips, next to the fp32 PyTorch model.

    python -m bench.motion_accuracy EXPORT_DIR [--clips-per-photo 4] [--threads 2] [--out DIR] [--formats F,F]

EXPORT_DIR is what `squeeze export squeezetime --checkpoint squeezetime/checkpoints/camera_motion_w050.safetensors
--out EXPORT_DIR` wrote (any formats, any precision its manifest records: fp32, fp16, int8, ...). The held-out
clips (squeezetime.motion_task.heldout_clips: photographs never seen in training, every class on each) are rendered
once at the export's frames and input size; the PyTorch model is rebuilt from the manifest's recorded source (as
`squeeze verify` does), and every artifact runs through its backend's runner (export.backends: the one
load-and-run that verification and `squeeze bench` use), its input made by the export's InputSpec and batched as
verification batches it. Per artifact: top-1, the difference to the fp32 model's top-1 on the same clips with a
paired bootstrap 95% confidence interval (clips resampled with replacement, both models' results kept together),
top-1 agreement with the fp32 model, mean negative log-likelihood of the true class and its paired difference
(moves before top-1 does on an easy task), logits SQNR against the fp32 model, per-class top-1. Clips of one
photograph are not independent, so the interval is about these clips, not about new photographs.

Writes motion_accuracy.json and motion_accuracy.md (default EXPORT_DIR/motion_accuracy/) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from squeeze_mobile.errors import SqueezeError
from squeeze_mobile.metrics import sqnr_db

REPORT_FILES = ("motion_accuracy.json", "motion_accuracy.md")
CHUNK = 16  # clips normalised and fed at a time (inputs of every batch are built per chunk, not all at once)
Progress = Callable[[str, str], None]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10000, seed: int = 0, level: float = 0.95) -> Dict:
    """Mean of a - b over the clips and its percentile interval from resampling clip indices (paired)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # blocks keep the index matrix small
        idx = rng.integers(0, len(diff), size=(min(1000, resamples - start), len(diff)))
        means[start:start + len(idx)] = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return {"mean": float(diff.mean()), "ci_low": float(np.percentile(means, tail)),
            "ci_high": float(np.percentile(means, 100 - tail)), "level": level, "resamples": resamples, "seed": seed}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def score(logits: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-clip prediction, correctness and negative log-likelihood of the true class."""
    pred = logits.argmax(axis=1)
    nll = -_log_softmax(logits)[np.arange(len(labels)), labels]
    return {"pred": pred, "correct": (pred == labels).astype(np.float64), "nll": nll}


def _per_class(pred: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    return {n: float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan") for c, n in enumerate(names)}


def _run_runner(runner, clips, spec, reference: np.ndarray) -> np.ndarray:
    """Every clip through one loaded runner, in chunks; inputs and batching as export.verify makes them."""
    from export.verify import VerificationSet, run_artifact

    out = []
    for start in range(0, len(clips), CHUNK):
        stop = min(len(clips), start + CHUNK)
        vset = VerificationSet(clips.names[start:stop], clips.normalized(start, stop), clips.frames_uint8[start:stop],
                               reference[start:stop], None, None)
        out.append(run_artifact(runner, vset.inputs_for(spec), stop - start))
    return np.concatenate(out).astype(np.float32)


def evaluate_export(export_dir, clips_per_photo: int = 4, threads: int = 2, formats: Optional[Sequence[str]] = None,
                    resamples: int = 10000, seed: int = 0, photos_dir=None, progress: Optional[Progress] = None,
                    heldout_photos: Optional[int] = None) -> Dict:
    """The report (a dict) for every artifact in ``export_dir``'s manifest; see the module docstring."""
    import torch

    from bench.host import spec_from_manifest
    from export.backends import get_backend
    from export.pipeline import manifest_path, model_from_source, read_manifest
    from export.quiet import quiet
    from export.verify import sha256_file
    from squeezetime import motion_task
    from squeezetime.rewrite import InputSpec

    say = progress or (lambda what, msg: None)
    torch.set_num_threads(threads)
    mpath = manifest_path(export_dir)
    manifest = read_manifest(mpath)
    out_dir = mpath.parent
    spec = InputSpec(**spec_from_manifest(manifest))
    say("model", "rebuilding the PyTorch model from the manifest's source")
    model = model_from_source(manifest["model"].get("source"), manifest["model"]["config"]).eval()
    if model.config.num_classes != motion_task.NUM_CLASSES:
        raise SqueezeError(f"{mpath} describes a {model.config.num_classes}-class model, not the {motion_task.NUM_CLASSES}-class "
                           "camera-motion model; export squeezetime/checkpoints/camera_motion_w050.safetensors "
                           "(squeeze export squeezetime --checkpoint ...) and give that directory")
    photo_ids = motion_task.heldout_photo_ids()[:heldout_photos]
    say("clips", f"rendering the held-out clips ({clips_per_photo} per photograph and class, {len(photo_ids)} photographs, "
                 f"{spec.frames}x{spec.size})")
    t0 = time.perf_counter()
    clips = motion_task.heldout_clips(clips_per_photo, frames=spec.frames, size=spec.size, config=model.config,
                                      photos_dir=photos_dir, photo_ids=photo_ids)
    render_s = time.perf_counter() - t0
    labels = clips.labels
    say("pytorch", f"fp32 reference on {len(clips)} clips")
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = np.concatenate([model(clips.normalized(s, s + 8)).numpy() for s in range(0, len(clips), 8)])
    ref = score(reference, labels)
    names = list(motion_task.LABELS)
    rows: List[Dict] = [{
        "name": "PyTorch fp32 (reference)", "format": "pytorch", "file": None, "precision": "fp32",
        "runtime": f"PyTorch {torch.__version__} eager", "status": "ok", "seconds": round(time.perf_counter() - t0, 1),
        "top1": float(ref["correct"].mean()), "per_class_top1": _per_class(ref["pred"], labels, names),
        "mean_nll": float(ref["nll"].mean()),
    }]
    wanted = set(formats) if formats else None
    for art in manifest["artifacts"]:
        if wanted is not None and art.get("format") not in wanted:
            continue
        row = {"name": art.get("file") or f"({art.get('format')} .{art.get('container')})", "format": art.get("format"),
               "file": art.get("file"), "precision": art.get("precision", "?")}
        for key in ("quantizer", "quantization", "pte_backend", "deployment_target"):
            if key in art:
                row[key] = art[key]
        rows.append(row)
        if not art.get("file"):
            row["status"] = f"not produced: {art.get('reason') or art.get('status') or 'no file'}"
            continue
        backend = get_backend(art["format"])
        row["runtime"] = backend.runtime
        path = out_dir / art["file"]
        reason = backend.cannot_run_here(art)
        if not path.exists():
            row["status"] = "artifact missing"
        elif art.get("sha256") and sha256_file(path) != art["sha256"]:
            row["status"] = "sha256 differs from the manifest (not run)"
        elif reason:
            row["status"] = reason
        if "status" in row:
            say(art["format"], f"{art['file']}: {row['status']}")
            continue
        say(art["format"], f"running {art['file']} ({row['precision']}) on {len(clips)} clips")
        t0 = time.perf_counter()
        try:
            with quiet():  # runtimes log delegate creation and CPU probing to fd 2
                runner = backend.load(path, threads=threads)
                try:
                    logits = _run_runner(runner, clips, spec, reference)
                finally:
                    runner.close()
        except Exception as exc:  # noqa: BLE001 - a runtime failure is this artifact's result, named; others go on
            row["status"] = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            say(art["format"], row["status"])
            continue
        if getattr(runner, "evaluator", None):
            row["runtime"] = f"{runner.runtime} (not Apple's runtime)"
        got = score(logits, labels)
        row.update({
            "status": "ok" if np.isfinite(logits).all() else "non-finite outputs", "seconds": round(time.perf_counter() - t0, 1),
            "top1": float(got["correct"].mean()),
            "top1_minus_fp32": paired_bootstrap(got["correct"], ref["correct"], resamples, seed),
            "agreement_with_fp32": float((got["pred"] == ref["pred"]).mean()),
            "mean_nll": float(got["nll"].mean()),
            "nll_minus_fp32": paired_bootstrap(got["nll"], ref["nll"], resamples, seed),
            "logits_sqnr_db": min(sqnr_db(reference, logits), 999.0),
            "per_class_top1": _per_class(got["pred"], labels, names),
            "wrong_clips": [clips.names[i] for i in np.flatnonzero(got["correct"] == 0)][:50],
        })
    rows[0]["wrong_clips"] = [clips.names[i] for i in np.flatnonzero(ref["correct"] == 0)][:50]
    return {
        "schema": "squeeze-mobile/motion-accuracy/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_dir": str(out_dir.resolve()),
        "model": {"config": manifest["model"]["config"], "source": manifest["model"].get("source")},
        "input": manifest["input"],
        "clips": {"count": len(clips), "clips_per_photo_and_class": clips_per_photo, "frames": spec.frames, "size": spec.size,
                  "photos": photo_ids, "labels": names, "render_seconds": round(render_s, 1),
                  "how": "squeezetime.motion_task.heldout_clips: held-out photographs only, official preprocessing"},
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "unit": "clip (paired)"},
        "threads": threads,
        "rows": rows,
    }


def _ci(d: Optional[Dict], scale: float = 100.0, digits: int = 1) -> str:
    if not d:
        return "-"
    f = f"{{:+.{digits}f}}"
    return f"{f.format(d['mean'] * scale)} [{f.format(d['ci_low'] * scale)}, {f.format(d['ci_high'] * scale)}]"


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def table_rows(report: Dict) -> List[List[str]]:
    from bench.report import one_line

    out = []
    for r in report["rows"]:
        out.append([one_line(r["name"]), one_line(r.get("precision", "-")), one_line(r.get("runtime", "-")), _pct(r.get("top1")),
                    _ci(r.get("top1_minus_fp32")), _pct(r.get("agreement_with_fp32")),
                    "-" if r.get("mean_nll") is None else f"{r['mean_nll']:.4f}", _ci(r.get("nll_minus_fp32"), 1.0, 4),
                    "-" if r.get("logits_sqnr_db") is None else f"{r['logits_sqnr_db']:.1f}", one_line(r.get("status", "-"))])
    return out


HEADER = ["artifact", "precision", "runtime", "top-1", "top-1 - fp32, points [95% CI]", "agrees with fp32",
          "NLL", "NLL - fp32 [95% CI]", "logits SQNR dB", "status"]


def markdown(report: Dict) -> str:
    c = report["clips"]
    cfg = report["model"]["config"]
    lines = [f"# Camera-motion held-out accuracy: {Path(report['export_dir']).name}", "",
             f"SqueezeTime width {cfg.get('width')} ({cfg.get('num_classes')} classes), {report['input']['format']} input "
             f"{report['input']['shape']}. {c['count']} held-out clips ({c['clips_per_photo_and_class']} per photograph "
             f"and class, {len(c['photos'])} photographs never seen in training, {c['frames']} frames at {c['size']} px, "
             f"official preprocessing). Differences are against the fp32 PyTorch model on the same clips; "
             f"95% CI from a paired bootstrap over clips ({report['bootstrap']['resamples']} resamples, seed "
             f"{report['bootstrap']['seed']}). {report['threads']} thread(s).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    lines += ["", "Per class top-1:", "", "| artifact | " + " | ".join(c["labels"]) + " |",
              "|" + "---|" * (len(c["labels"]) + 1)]
    for r in report["rows"]:
        if r.get("per_class_top1"):
            lines.append(f"| {r['name']} | " + " | ".join(_pct(r['per_class_top1'][n]) for n in c["labels"]) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: Dict, out_dir) -> List[Path]:
    from squeeze_mobile.atomic import write_text_atomic

    out_dir = Path(out_dir)
    paths = [out_dir / REPORT_FILES[0], out_dir / REPORT_FILES[1]]
    write_text_atomic(paths[0], json.dumps(report, indent=1) + "\n")
    write_text_atomic(paths[1], markdown(report))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.motion_accuracy", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2].strip())
    p.add_argument("dir", help="export directory (its manifest.json, as written by `squeeze export squeezetime`)")
    p.add_argument("--clips-per-photo", type=int, default=4,
                   help="held-out clips per (photograph, class), >= 1 (default 4: 288 clips)")
    p.add_argument("--heldout-photos", type=int, default=None,
                   help="use only the first N of the 8 held-out photographs, >= 1 (default: all; fewer for a quick check)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and every runtime, >= 1 (default 2)")
    p.add_argument("--formats", default=None, help="only these formats' artifacts, comma-separated (default: all)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples, >= 100 (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--photos", default=None, help="photo bundle folder (default: $SQUEEZE_MOTION_PHOTOS, else the "
                   "installed packages)")
    p.add_argument("--out", default=None, help="report folder (default DIR/motion_accuracy)")
    args = p.parse_args(argv)
    if args.clips_per_photo < 1 or args.threads < 1 or args.bootstrap < 100 or (args.heldout_photos or 1) < 1:
        p.error("--clips-per-photo, --heldout-photos and --threads must be >= 1, --bootstrap >= 100")
    from rich.console import Console
    from rich.table import Table

    err = Console(stderr=True, highlight=False)
    start = time.perf_counter()

    def say(what, msg):
        err.print(f"[dim]{time.perf_counter() - start:6.1f}s[/dim] [bold]{what:>8}[/bold]  {msg}", markup=True)

    try:
        from bench.report import check_report_dir
        from export.pipeline import manifest_path

        out = Path(args.out) if args.out else manifest_path(args.dir).parent / "motion_accuracy"
        check_report_dir(out, REPORT_FILES)  # refused before any work
        formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
        report = evaluate_export(args.dir, args.clips_per_photo, args.threads, formats, args.bootstrap, args.seed,
                                 args.photos, say, args.heldout_photos)
        paths = write_report(report, out)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = Table(title=None)
    for col in HEADER:
        table.add_column(col, overflow="fold")
    for cells in table_rows(report):
        table.add_row(*cells)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(f"camera-motion held-out accuracy, {report['clips']['count']} clips", markup=False)
    console.print(table)
    console.print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)
    return 0 if all(r.get("status") == "ok" or "not run" in str(r.get("status")) or "needs macOS" in str(r.get("status"))
                    or str(r.get("status")).startswith("not produced") for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
