"""The ``squeeze`` command line: a thin layer over the Python API.

    squeeze predict VIDEO [--checkpoint PATH] [--config k400] [--top 5] [--json]
    squeeze export squeezetime --formats onnx,tflite,pte,coreml --out DIR [...]
    squeeze verify DIR

Errors a user can cause print one line (``error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import List, Optional

from squeeze_mobile import cli_types
from squeeze_mobile.atomic import NO_ROOM
from squeeze_mobile.errors import SqueezeError
from squeeze_mobile.signals import EXIT_SIGINT, exit_code, signal_name, sigterm_raises

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = EXIT_SIGINT  # 130; SIGTERM exits 143


def _model_from_args(args, frames: Optional[int] = None):
    """The PyTorch model a command works on: a user checkpoint, or a seeded random model (and say so)."""
    import squeezetime

    if args.checkpoint:
        model = squeezetime.load_checkpoint(args.checkpoint, config=args.config, allow_missing_head=False,
                                           skip_unsafe_metadata=getattr(args, "skip_unsafe_metadata", False))
        if frames is not None and frames != model.config.frames:
            raise SqueezeError(f"--frames {frames} does not match the checkpoint, which was trained with {model.config.frames} frames")
        _note(model.load_report.summary())
        return model, False
    overrides = {"frames": frames} if frames is not None else {}
    from squeezetime.model import seeded_model

    model = seeded_model(args.config or "k400", **overrides)
    _note(f"no --checkpoint given: using a randomly initialised (seeded) {model.config.name} model; predictions are meaningless")
    return model, True


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    import torch

    from squeezetime.predict import classify_video

    if args.threads:
        torch.set_num_threads(args.threads)
    labels = None
    if args.labels is not None:  # a missing or unreadable file is refused before the model loads
        from squeezetime.video import read_label_file

        labels = read_label_file(args.labels)   # read once: a pipe (`--labels <(cmd)`) cannot be read twice
    model, _ = _model_from_args(args)
    if args.labels is not None:
        from squeezetime.video import check_label_count

        labels = check_label_count(labels, model.config.num_classes, args.labels)
    else:
        from .pipeline import matching_labels

        if matching_labels(model.config) is None:  # as the export says it: class_N was printed without a word
            cfg = model.config
            _note(f"the {cfg.labels} label file does not have one line per class of this {cfg.num_classes}-class "
                  f"model: classes are shown as class_N (--labels FILE names them)")
    result = classify_video(model, args.video, top=args.top, views=args.views, labels=labels)
    preds = result.top
    if args.json:
        print(json.dumps({"video": str(args.video), "config": model.config.name, "views": args.views,
                          "video_frames": result.video.frame_counts(),
                          "video_rotation": result.video.rotation, "video_pixel_aspect": result.video.pixel_aspect,
                          "top": [p.__dict__ for p in preds]}, indent=2))
    else:
        shown = [_printable(p.label) for p in preds]   # a label file's escape codes are shown, not obeyed
        width = max(len(label) for label in shown)
        for rank, (p, label) in enumerate(zip(preds, shown), 1):
            print(f"{rank:>2}. {label:<{width}}  {p.probability:7.2%}  (class {p.index})")
    return 0


def _printable(text: str) -> str:
    """``text`` with control characters (ESC of a terminal escape sequence, ...) written as escapes."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from squeezetime.config import CONFIGS

    parser = SqueezeArgumentParser(
        prog="squeeze",
        description="squeeze-mobile: put SqueezeTime (and Squeezed Attention) on phones. "
        "Export to ONNX, TFLite/LiteRT, ExecuTorch and Core ML, verified on real video.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("predict", help="top-k action labels for a video file",
                       description="Decode VIDEO with the official test pipeline (16 frames, interval 4, short side "
                       "256, centre crop 224; with --views multi 10 clips x 3 crops at short side 224, HMDB51: 2 clips "
                       "x 3 crops at 286) and print the top-k labels.")
    p.add_argument("video", type=cli_types.path, help="path to a video file (anything FFmpeg decodes)")
    p.add_argument("--checkpoint", type=cli_types.path,
                   help="SqueezeTime weights: official mmaction2 .pth, bare state dict or .safetensors (the format is "
                   "read from the file's bytes) "
                   "(default: none, a seeded random model whose predictions are meaningless, and the command says so)")
    p.add_argument("--skip-unsafe-metadata", action="store_true",
                   help="load only the tensors of a checkpoint whose pickle references other Python objects "
                   "(they become inert placeholders; nothing is executed) (default: off, such files are refused)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="named config (default: picked from the checkpoint's number of classes, else k400)")
    p.add_argument("--top", type=cli_types.positive_int, default=5, help="how many labels to print, >= 1 (default 5)")
    p.add_argument("--labels", type=cli_types.path, default=None, metavar="FILE",
                   help="class names for the checkpoint's head: UTF-8 text, one label per line in the classifier's "
                   "order, exactly one line per class (default: the config's label file when it has one line per "
                   "class, else class_N)")
    p.add_argument("--views", choices=["single", "multi"], default="single",
                   help="single centre clip (default) or the multi-clip x three-crop protocol")
    p.add_argument("--threads", type=cli_types.threads, default=None,
                   help=f"PyTorch CPU threads, 1..{cli_types.MAX_THREADS} (default: PyTorch's choice)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
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
    _add_debug_everywhere(parser)
    return parser


DEBUG_HELP = "show Python tracebacks for errors (default: off; accepted before or after the subcommand)"


class SqueezeArgumentParser(argparse.ArgumentParser):
    """argparse with the house error format: one ``error:`` line (no usage block), exit status 2."""

    def error(self, message):  # noqa: D102 - argparse API
        message = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--debug` after the subcommand too (`squeeze export ... --debug`), for every subcommand at every depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                if "--debug" not in subparser._option_string_actions:
                    # SUPPRESS: absent after the subcommand, the value given (or not) before it stands
                    subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_everywhere(subparser)


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


def _printable_output() -> None:
    """Text the output's encoding cannot hold (an answer in Arabic or CJK on a console set to ASCII or Latin-1,
    PYTHONIOENCODING=ascii) is printed as backslash escapes, as Python prints it to stderr, instead of ending the
    command in a UnicodeEncodeError traceback mid-answer."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):   # a closed or detached stream: nothing will be printed there anyway
                pass


def _closed_streams_to_devnull() -> None:
    """A standard stream the caller closed (`squeeze ... >&-`: Python then has None there) writes to /dev/null, as
    `>/dev/null` would, instead of ending the command in an AttributeError traceback when the first line is printed."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))


def main(argv: Optional[List[str]] = None) -> int:
    _closed_streams_to_devnull()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, one `error:` line already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _print_squeeze_warnings()
    _printable_output()
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_ERROR
    debug = bool(getattr(args, "debug", False))
    try:
        # SIGTERM (kill, a CI timeout, a container stop) unwinds like Ctrl-C: temporaries are removed
        with sigterm_raises():
            return int(args.func(args) or 0)
    except SqueezeError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        if debug:
            raise
        note = getattr(exc, "note", None)  # a command that keeps what it did say so (e.g. an evaluation's results)
        if note is None:   # commands that write no files have no partial files to speak of
            reads_only = getattr(args, "command", None) in ("predict", "generate", "verify")
            note = "nothing was written" if reads_only else "no partial artifacts were left behind"
        print(f"error: interrupted; {note} ({signal_name(exc)})", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:  # e.g. `squeeze predict ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # a disk that fills (or a quota, ulimit -f, a folder made read-only) while a report or artifact is written:
        # the atomic writes already removed their temporaries; say it in one line
        if not debug and exc.errno in PATH_ERRNOS:   # a path no file can have, whichever option named it
            print(f"error: {exc.filename or 'a path'}: {PATH_ERRNOS[exc.errno]}", file=sys.stderr)
            return EXIT_ERROR
        if debug or exc.errno not in WRITE_ERRNOS:
            raise
        if not exc.filename and not _stdout_writable():  # `squeeze generate ... > /dev/full`: not an --out file
            print(f"error: cannot write to standard output ({exc.strerror or exc})", file=sys.stderr)
            return EXIT_ERROR
        where = f" {exc.filename}" if exc.filename else " a file"
        print(f"error: cannot write{where} ({exc.strerror or exc}); free some space or choose another --out "
              f"(no partial file was left)", file=sys.stderr)
        return EXIT_ERROR


def _stdout_writable() -> bool:
    """False when standard output takes no more bytes (probed with one newline: the command has failed anyway, and a
    failed print leaves no error state to ask); then it is pointed at /dev/null, so exit adds no second error."""
    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"\n")
        return True
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        except OSError:
            pass
        return False


WRITE_ERRNOS = NO_ROOM + (errno.EROFS,)  # no room, or a folder that became read-only
PATH_ERRNOS = {errno.ENAMETOOLONG: "the name is too long (a file or folder name takes at most 255 bytes); use a "
                                   "shorter one",
               errno.ELOOP: "too many levels of symbolic links (a link that points back at itself?); fix the link"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
