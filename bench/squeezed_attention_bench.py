"""Speed of Squeezed Attention vs full attention on the real SmolLM2-135M decoder (PyTorch eager, fp32).

Same code path for every configuration: the decoder's context partial is either DenseContext (full
attention over the fixed context) or SqueezedContext (centroid lookup + attention over the kept keys); the
rest of the decoder (including its native decode GEMV where the kernels build) is shared.
Measures, in ONE run so the ratios compare like with like:
  * offline build of the context pack (prefill + K-means + calibration) and the pack size,
  * prefill of a user input (default 128 tokens) after the fixed context: median over repeats,
  * decode tokens/s (teacher-forced, so every configuration does the same steps): median step time.
Configurations are interleaved within each repeat, so load drift on a shared machine hits all alike.

    python bench/squeezed_attention_bench.py --context-tokens 8000 --threads 2 --out bench_out/sa
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from squeezed_attention import native
from squeezed_attention.corpus import prose_of_tokens
from squeezed_attention.generation import AttentionChoice, Generator, keep_for_budget
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.settings import DEFAULT_EXACT_DECODE, DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL
from squeezed_attention.pack import BuildSettings, build_context_pack, load_context_pack, save_context_pack
from squeezed_attention.weights import load_checkpoint


CONFIG_KEYS = ("full", "native", "native-exact-decode", "native-select-decode", "native-head16", "native-no-head", "native-no-follow", "native-select-tail", "native-one-selection", "native-per-token", "torch", "numpy",
               "hierarchical", "threshold")


def configurations(kv_budget: float, centroid_fraction: float, keys=CONFIG_KEYS, exact_decode: int = 16):
    table = {
        "full": ("full", AttentionChoice("full")),
        "native": (f"top-k flat, native kernels (default: the prompt's first {DEFAULT_EXACT_HEAD} and last "
                   f"{DEFAULT_EXACT_TAIL} tokens and the answer's "
                   f"first {DEFAULT_EXACT_DECODE} attend exactly, 4 followed keys per selecting decode step)",
                   AttentionChoice("top-k", kv_budget=kv_budget, backend="native")),
        "native-exact-decode": (f"top-k flat, native kernels, the default with the answer's first {exact_decode} tokens "
                                f"attending exactly (--exact-decode {exact_decode})",
                                AttentionChoice("top-k", kv_budget=kv_budget, backend="native", exact_decode=exact_decode)),
        "native-select-decode": ("top-k flat, native kernels, the default with every decode step selecting "
                                 "(--exact-decode 0)",
                                 AttentionChoice("top-k", kv_budget=kv_budget, backend="native", exact_decode=0)),
        "native-head16": (f"top-k flat, native kernels, the default with a 16-token exact prompt head (--exact-head 16: "
                          f"the prompt's first 16 and last {DEFAULT_EXACT_TAIL} tokens attend exactly, the rows between "
                          "select once)",
                          AttentionChoice("top-k", kv_budget=kv_budget, backend="native", exact_head=16)),
        "native-no-head": (f"top-k flat, native kernels, the default without the exact prompt head (--exact-head 0: only "
                           f"the last {DEFAULT_EXACT_TAIL} prompt tokens attend exactly)",
                           AttentionChoice("top-k", kv_budget=kv_budget, backend="native", exact_head=0)),
        "native-no-follow": ("top-k flat, native kernels, no followed keys (every decode step's keys selected)",
                             AttentionChoice("top-k", kv_budget=kv_budget, backend="native", follow_keys=0)),
        "native-select-tail": ("top-k flat, native kernels, the last 16 prompt tokens select per token (no exact head or tail)",
                               AttentionChoice("top-k", kv_budget=kv_budget, backend="native", prefill_tail=16,
                                               exact_tail=0, exact_head=0)),
        "native-one-selection": ("top-k flat, native kernels, one prefill selection per prompt (no exact head or tail)",
                                 AttentionChoice("top-k", kv_budget=kv_budget, backend="native", prefill_tail=0,
                                                 exact_tail=0, exact_head=0)),
        "native-per-token": ("top-k flat, native kernels, per-token prefill selection",
                             AttentionChoice("top-k", kv_budget=kv_budget, backend="native", prefill_rows=1,
                                             exact_tail=0, exact_head=0)),
        "torch": ("top-k flat, torch lookup", AttentionChoice("top-k", kv_budget=kv_budget, backend="torch")),
        "numpy": ("top-k flat, numpy lookup", AttentionChoice("top-k", kv_budget=kv_budget, backend="numpy")),
        "hierarchical": ("top-k hierarchical (torch)",
                         AttentionChoice("top-k", kv_budget=kv_budget, hierarchical=True, backend="torch")),
        "threshold": ("threshold flat (torch)", AttentionChoice("threshold", kv_budget=kv_budget, backend="torch")),
    }
    return [table[k] for k in CONFIG_KEYS if k in keys or k == "full"]   # full attention: the ratios' baseline


@torch.no_grad()
def time_repeat(gen: Generator, configs, prompt_ids, decode_ids):
    """One repeat for every configuration, INTERLEAVED: each prefill, then decode step i of every
    configuration before step i+1 (teacher-forced, so all do the same work). Drift on a shared machine
    then hits all configurations alike. Every repeat is a new question: a new context object per configuration
    (its first call per layer is the prompt's prefill: exact tail, follow pointers; the pack's tables and row
    layout are Generator's, built once). Returns {name: (prefill seconds, [decode step seconds])}."""
    offset = gen.pack.num_tokens
    contexts = {name: gen.context(choice) for name, choice in configs}
    caches, out = {}, {}
    for name, context in contexts.items():
        caches[name] = gen.model.new_cache(len(prompt_ids) + len(decode_ids))
        t = time.perf_counter()
        gen.model.step(torch.tensor(prompt_ids), caches[name], position_offset=offset, context=context)
        out[name] = (time.perf_counter() - t, [])
    for token in decode_ids:
        for name, context in contexts.items():
            t = time.perf_counter()
            gen.model.step(torch.tensor([token]), caches[name], position_offset=offset, context=context)
            out[name][1].append(time.perf_counter() - t)
    return out


def matmul_gflops(threads: int) -> float:
    """fp32 matmul rate (the host benchmark's probe, bench.worker): evidence of how many cores were free."""
    from bench.worker import measure

    return statistics.median(measure({"kind": "matmul", "threads": threads, "runs": 5, "warmup": 1, "n": 2048})["gflops"])


def run(args):
    machine_before = {f"matmul_gflops_{t}_threads": matmul_gflops(t) for t in (1, args.threads)}
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    tok = checkpoint.tokenizer
    ids = tok.encode("\n\n".join(prose_of_tokens(tok, args.context_tokens + args.prompt_tokens + args.decode_tokens + 64)))
    context_text = tok.decode(ids[:args.context_tokens])
    follow = tok.encode(tok.decode(ids[args.context_tokens:]))
    prompt_ids, decode_ids = follow[:args.prompt_tokens], follow[args.prompt_tokens:args.prompt_tokens + args.decode_tokens]

    if args.pack and Path(args.pack).is_file():  # reuse: timing runs need not rebuild the pack
        pack = load_context_pack(args.pack, checkpoint, context_text)
        build_seconds = pack.build_seconds
    else:
        print(f"building a {args.context_tokens}-token context pack (threads={args.threads}) ...", file=sys.stderr)
        t = time.perf_counter()
        pack = build_context_pack(model, checkpoint, context_text, BuildSettings(
            hierarchical=True, framing="raw", centroid_fraction=args.centroids))
        build_seconds = time.perf_counter() - t
        if args.pack:
            save_context_pack(pack, args.pack)
    gen = Generator(model, tok, pack)
    configs = configurations(args.kv_budget, args.centroids, args.configs, args.exact_decode)
    prefill = {name: [] for name, _ in configs}
    decode = {name: [] for name, _ in configs}
    by_step = {name: [] for name, _ in configs}   # per repeat, the answer's step times in order
    kept = {}
    time_repeat(gen, configs, prompt_ids[:8], decode_ids[:2])  # warm-up: first-call allocations, kernel build
    for r in range(args.repeats):
        for name, (p, steps) in time_repeat(gen, configs, prompt_ids, decode_ids).items():
            prefill[name].append(p)
            decode[name] += steps
            by_step[name].append(list(steps))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
            f"{n}: prefill {1000 * statistics.median(prefill[n]):.0f} ms, decode {1000 * statistics.median(decode[n]):.1f} ms/token"
            for n, _ in configs), file=sys.stderr)
    for name, choice in configs:  # lookup statistics of one prefill + one decode step (untimed)
        if choice.mode != "full":
            ctx = gen.context(choice)
            cache = model.new_cache(len(prompt_ids) + 1)
            model.step(torch.tensor(prompt_ids), cache, position_offset=pack.num_tokens, context=ctx)
            model.step(torch.tensor(decode_ids[:1]), cache, position_offset=pack.num_tokens, context=ctx)
            kept[name] = {"kept_fraction_of_clustered": ctx.stats.mean_kept() / pack.num_clustered,
                          "centroids_scored_per_head": ctx.stats.mean_scored()}
    full_prefill = statistics.median(prefill["full"])
    full_decode = statistics.median(decode["full"])
    def answer_ms(name):
        """ms per token over the whole answer: the median of each step position over the repeats, averaged over
        the positions (robust to one slow repeat, and it counts steps that cost differently, e.g. --exact-decode's)"""
        return statistics.fmean(statistics.median(col) for col in zip(*by_step[name]))

    full_mean = answer_ms("full")
    rows = []
    for name, choice in configs:
        p, d = statistics.median(prefill[name]), statistics.median(decode[name])
        mean = answer_ms(name)
        rows.append({"config": name, "prefill_ms_median": 1000 * p, "decode_ms_per_token_median": 1000 * d,
                     "decode_tokens_per_second": 1.0 / d, "prefill_speedup_vs_full": full_prefill / p,
                     "decode_speedup_vs_full": full_decode / d, "decode_ms_per_token_mean": 1000 * mean,
                     "decode_speedup_vs_full_mean": full_mean / mean, **kept.get(name, {})})
    size = pack.size_report()
    machine_after = {f"matmul_gflops_{t}_threads": matmul_gflops(t) for t in (1, args.threads)}
    return {
        "context_tokens": pack.num_tokens, "prompt_tokens": len(prompt_ids), "decode_tokens": len(decode_ids),
        "repeats": args.repeats, "threads": args.threads, "kv_budget": args.kv_budget,
        "keep_fraction": keep_for_budget(args.kv_budget, args.centroids), "centroid_fraction": args.centroids,
        "pack_build_seconds": build_seconds, "pack_size": size,
        "level1_clusters": int(pack.l1_centroids.shape[2]), "rows": rows,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                    "native_kernels": native.available(), "before": machine_before, "after": machine_after},
    }


def markdown(result) -> str:
    s = result["pack_size"]
    lines = [
        f"Context {result['context_tokens']} tokens, user input {result['prompt_tokens']} tokens, "
        f"{result['decode_tokens']} decode steps x {result['repeats']} repeats, {result['threads']} threads, "
        f"KV budget {result['kv_budget']} (keep {result['keep_fraction']:.3f} of clustered keys + centroid bytes / KV bytes).",
        "",
        f"Pack build: {result['pack_build_seconds']:.1f} s. Pack size per context token: KV cache "
        f"{s['kv_bytes_per_token']:.0f} B, lookup metadata {s['metadata_bytes_per_token']:.0f} B "
        f"({s['metadata_bytes_per_layer_head_token']:.2f} B per (layer, KV head, token), with the hierarchical level).",
        "",
        "fp32 matmul GFLOP/s before / after the run: " + ", ".join(
            f"{k.split('_')[2]} thread(s) {result['machine']['before'][k]:.0f} / {result['machine']['after'][k]:.0f}"
            for k in result["machine"]["before"]) + ".",
        "",
        "| attention | prefill (median) | prefill speed-up | decode ms/token (median) | decode tokens/s | decode speed-up "
        "| decode ms/token over the answer (per-step medians) | its speed-up | keys kept | centroids scored/head |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        kept = r.get("kept_fraction_of_clustered")
        lines.append(f"| {r['config']} | {r['prefill_ms_median']:.0f} ms | {r['prefill_speedup_vs_full']:.2f}x "
                     f"| {r['decode_ms_per_token_median']:.1f} | {r['decode_tokens_per_second']:.1f} "
                     f"| {r['decode_speedup_vs_full']:.2f}x | {r['decode_ms_per_token_mean']:.1f} "
                     f"| {r['decode_speedup_vs_full_mean']:.2f}x | {'-' if kept is None else f'{100 * kept:.1f}%'} "
                     f"| {r.get('centroids_scored_per_head', '-') if kept is None else round(r['centroids_scored_per_head'])} |")
    return "\n".join(lines) + "\n"


def _config_keys(text: str):
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONFIG_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown configuration(s) {unknown}; choose from {','.join(CONFIG_KEYS)}")
    return keys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context-tokens", type=int, default=8000, help="fixed-context length (default 8000)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="user-input length for the prefill timing")
    p.add_argument("--decode-tokens", type=int, default=32, help="decode steps per repeat")
    p.add_argument("--exact-decode", type=int, default=16,
                   help="the native-exact-decode configuration's exact answer tokens (default 16)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-budget", type=float, default=0.125, help="paper accounting (keep + centroid bytes / KV bytes)")
    p.add_argument("--centroids", type=float, default=0.10)
    p.add_argument("--model", default=None, help=".gguf or HF folder (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--configs", default=",".join(CONFIG_KEYS), type=_config_keys,
                   help=f"comma-separated configurations to time (default all: {','.join(CONFIG_KEYS)}; full always runs)")
    p.add_argument("--out", default="bench_out/squeezed_attention", help="folder for bench.json and bench.md")
    p.add_argument("--pack", default=None, help="reuse this context pack if it exists (built for the same "
                   "context), else build it and save it here; the reported build time is the pack's own")
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from squeezed_attention.atomic import write_text_atomic

    write_text_atomic(out / "squeezed_attention_bench.json", json.dumps(result, indent=2))
    write_text_atomic(out / "squeezed_attention_bench.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
