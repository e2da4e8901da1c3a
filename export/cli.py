"""The ``squeeze`` command line: a thin layer over the Python API.

    squeeze predict VIDEO [--checkpoint PATH] [--config k400] [--top 5] [--json]
    squeeze export squeezetime --formats onnx,tflite,pte,coreml --out DIR [...]
    squeeze verify DIR

Errors a user can cause print one line (``error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from squeeze_mobile.errors import SqueezeError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _model_from_args(args, frames: Optional[int] = None):
    """The PyTorch model a command works on: a user checkpoint, or a seeded random model (and say so)."""
    import squeezetime

    if args.checkpoint:
        model = squeezetime.load_checkpoint(args.checkpoint, config=args.config, allow_missing_head=False,
                                           skip_unsafe_metadata=getattr(args, "skip_unsafe_metadata", False))
        if frames and frames != model.config.frames:
            raise SqueezeError(f"--frames {frames} does not match the checkpoint, which was trained with {model.config.frames} frames")
        _note(model.load_report.summary())
        return model, False
    overrides = {"frames": frames} if frames else {}
    from squeezetime.model import seeded_model

    model = seeded_model(args.config or "k400", **overrides)
    _note(f"no --checkpoint given: using a randomly initialised (seeded) {model.config.name} model; predictions are meaningless")
    return model, True


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    import torch

    import squeezetime

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = _model_from_args(args)
    preds = squeezetime.predict_video(model, args.video, top=args.top, views=args.views)
    if args.json:
        print(json.dumps({"video": str(args.video), "config": model.config.name, "views": args.views,
                          "top": [p.__dict__ for p in preds]}, indent=2))
    else:
        width = max(len(p.label) for p in preds)
        for rank, p in enumerate(preds, 1):
            print(f"{rank:>2}. {p.label:<{width}}  {p.probability:7.2%}  (class {p.index})")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from squeezetime.config import CONFIGS

    parser = argparse.ArgumentParser(
        prog="squeeze",
        description="squeeze-mobile: put SqueezeTime (and Squeezed Attention) on phones. "
        "Export to ONNX, TFLite/LiteRT, ExecuTorch and Core ML, verified on real video.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("predict", help="top-k action labels for a video file",
                       description="Decode VIDEO with the official test pipeline (16 frames, interval 4, short side "
                       "256, centre crop 224; or 10 clips x 3 crops with --views multi) and print the top-k labels.")
    p.add_argument("video", help="path to a video file (anything FFmpeg decodes)")
    p.add_argument("--checkpoint", help="SqueezeTime weights: official mmaction2 .pth, bare state dict or .safetensors")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="named config (default: picked from the checkpoint's number of classes, else k400)")
    p.add_argument("--top", type=int, default=5, help="how many labels to print (default 5)")
    p.add_argument("--views", choices=["single", "multi"], default="single",
                   help="single centre clip (default) or the multi-clip x three-crop protocol")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_predict)

    # Each part of the product registers its own subcommands (export/verify, bench, context/generate).
    import importlib

    for module in ("export.cli_export", "bench.cli_bench", "squeezed_attention.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not exc.name or not module.startswith(exc.name):  # a missing dependency inside it: surface it
                raise
            continue
        mod.add_subcommands(sub)
    return parser


def _print_squeeze_warnings() -> None:
    """Show the API's SqueezeWarnings as one `warning:` line each (other warnings keep Python's format)."""
    import warnings

    from squeeze_mobile.errors import SqueezeWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SqueezeWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("default", SqueezeWarning)  # each distinct message once


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _print_squeeze_warnings()
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except SqueezeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted; no partial artifacts were left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `squeeze predict ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
