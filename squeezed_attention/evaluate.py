"""Accuracy of Squeezed Attention against full attention on the real model.

* Passkey / needle retrieval: a fact hidden at several depths in real prose of ~2k/4k/8k tokens; the
  instruct model is asked for it (chat framing, greedy); correct = the answer contains the fact.
* Continuations: teacher-forced real prose after the fixed context, decoded token by token (per-token
  lookup, as in generation); top-1 agreement and KL(full || squeezed) of the next-token distributions.
Configurations: full attention, then for each KV budget (paper accounting: kept keys + centroid bytes / KV bytes)
top-k selection with flat and hierarchical lookup, the paper's threshold mode, and per-query-head selection.
"""

from __future__ import annotations

import math
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from squeeze_mobile.atomic import check_creatable_dir, check_destination

from .atomic import atomic_file, write_text_atomic
from .corpus import prose_of_tokens
from .errors import SqueezeError
from .generation import AttentionChoice, Generator, centroid_cost
from .pack import THRESHOLD_KEEP_RANGE, BuildSettings, build_context_pack

NEEDLES = [
    ("The secret name of the lighthouse keeper's cat is Marmalade.", "What is the secret name of the lighthouse keeper's cat?", "Marmalade"),
    ("The password for the old archive room is Heliotrope.", "What is the password for the old archive room?", "Heliotrope"),
    ("The special ingredient in grandmother's soup is cardamom.", "What is the special ingredient in grandmother's soup?", "cardamom"),
]
PASSKEY_QUESTION = "What is the pass key? Answer with the number only."


@dataclass
class EvalCase:
    kind: str          # "passkey" | "needle"
    length: int        # target context tokens
    depth: float       # where the fact sits (0 = start, 1 = end)
    fact: str
    question: str
    answer: str


def make_case(tokenizer, kind: str, length: int, depth: float, seed: int, rotate: int):
    """A fact hidden at ``depth`` in real prose of at most ``length`` tokens (fact included)."""
    rng = random.Random(seed)
    if kind == "passkey":
        key = str(rng.randint(10000, 99999))
        fact, question, answer = f"The pass key is {key}. Remember it. {key} is the pass key.", PASSKEY_QUESTION, key
    else:
        fact, question, answer = NEEDLES[rng.randrange(len(NEEDLES))]
    paras = prose_of_tokens(tokenizer, length, rotate)
    while True:  # whole paragraphs overshoot: drop trailing ones until the text fits the length
        at = min(len(paras), max(0, round(depth * len(paras))))
        text = "\n\n".join(paras[:at] + [fact] + paras[at:])
        if len(tokenizer.encode(text)) <= length or len(paras) == 1:
            break
        paras = paras[:-1]
    return EvalCase(kind, length, depth, fact, question, answer), text


def choices_for_budgets(kv_budgets, centroid_fraction: float = 0.10, variants: bool = True):
    """Full attention, then per KV budget: top-k flat + hierarchical; with ``variants`` also the paper's
    threshold mode and per-query-head (GQA) selection. (``centroid_fraction`` is kept for callers; the
    keep fraction each KV budget leaves is computed from the pack's own centroids.)"""
    out = [("full", None, AttentionChoice("full"))]
    for b in kv_budgets:
        out += [
            ("top-k flat", b, AttentionChoice("top-k", kv_budget=b)),
            ("top-k hierarchical", b, AttentionChoice("top-k", kv_budget=b, hierarchical=True)),
        ]
        if variants:
            out += [
                ("threshold flat", b, AttentionChoice("threshold", kv_budget=b)),
                ("top-k flat per-query-head", b, AttentionChoice("top-k", kv_budget=b, per_query_head=True)),
            ]
    return out


KINDS = ("passkey", "needle")
ANSWER_RESERVE = 96      # tokens of the model window left for the question and the answer
MIN_LENGTH = 256         # shortest context that leaves room for sinks, the observation window and clusters
CONTEXT_AFTER_CONTINUATION = 160  # context tokens a continuation case keeps before its continuation
OUTPUT_FILES = ("context_eval.json", "context_eval.md", "context_eval.png")


def eval_length_range(model_window: int) -> tuple[int, int]:
    return MIN_LENGTH, model_window - ANSWER_RESERVE


def kv_budget_range(centroid_fraction: float, head_dim: int = 64) -> tuple[float, float]:
    """KV budgets every evaluated configuration can serve: threshold mode's calibrated keep range plus the
    centroid storage."""
    lo, hi = THRESHOLD_KEEP_RANGE
    cost = centroid_cost(centroid_fraction, head_dim)
    return round(lo + cost, 3), min(1.0, round(hi + cost, 3))


def check_evaluation(model_window, lengths, depths, kv_budgets, kinds, continuation_tokens, needle_depths,
                     centroid_fraction=0.10, head_dim=64) -> None:
    """Refuse, before any work, settings the evaluation cannot run (each message names the CLI option)."""
    lo, hi = eval_length_range(model_window)
    if not lengths:
        raise SqueezeError("--lengths needs at least one context length")
    for n in lengths:
        if type(n) is not int or not lo <= n <= hi:
            raise SqueezeError(f"--lengths {n} is outside [{lo}, {hi}] tokens: the model's window is {model_window} "
                               f"tokens and {ANSWER_RESERVE} are kept for the question and answer")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise SqueezeError(f"--kinds {','.join(unknown) or '(empty)'}: use one or more of {', '.join(KINDS)}")
    for flag, values, needed in (("--depths", depths, "passkey" in kinds), ("--needle-depths", needle_depths,
                                                                              "needle" in kinds)):
        if needed and not values:
            raise SqueezeError(f"{flag} needs at least one depth in [0, 1]")
        for d in values:
            if type(d) not in (int, float) or not 0 <= d <= 1:
                raise SqueezeError(f"{flag} {d} is outside [0, 1] (0 = start of the context, 1 = end)")
    b_lo, b_hi = kv_budget_range(centroid_fraction, head_dim)
    if not kv_budgets:
        raise SqueezeError(f"--kv-budgets needs at least one KV budget in [{b_lo}, {b_hi}]")
    for b in kv_budgets:
        if type(b) not in (int, float) or not b_lo <= b <= b_hi:
            raise SqueezeError(f"--kv-budgets {b} is outside [{b_lo}, {b_hi}]: a KV budget (kept keys + centroid bytes, "
                               f"as a fraction of the KV cache) must pay for the {centroid_fraction:g} centroids and "
                               "stay in threshold mode's calibrated range")
    c_hi = min(lengths) - CONTEXT_AFTER_CONTINUATION
    if type(continuation_tokens) is not int or not 2 <= continuation_tokens <= c_hi:
        raise SqueezeError(f"--continuation-tokens {continuation_tokens} is outside [2, {c_hi}] (at most the "
                           f"shortest --lengths minus {CONTEXT_AFTER_CONTINUATION} context tokens)")


def check_output_dir(out_dir) -> Path:
    """Refuse, before any work, an output folder the results could not be written to."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SqueezeError(f"--out {out_dir} is a file; give a folder for {', '.join(OUTPUT_FILES)}")
    check_creatable_dir(out_dir)  # made when the first results are written: a run stopped before leaves no folder
    if out_dir.is_dir():
        for name in OUTPUT_FILES:
            check_destination(out_dir / name, "file")
    return out_dir


@torch.no_grad()
def continuation_metrics(gen: Generator, choice: AttentionChoice, continuation_ids, reference=None):
    """Teacher-forced next-token log-probs [T-1, V] over ``continuation_ids`` (one step per token). With a
    reference, also the metrics of the steps that select (``selecting_*``: after the ones that attend exactly under
    ``choice``'s rule -- the first call per layer within the exact head or tail, then the answer's opening of exact_decode
    steps), which the opening would otherwise dilute."""
    from .generation import decode_step

    context = gen.context(choice)
    cache = gen.model.new_cache(len(continuation_ids))
    logps = []
    opening = (1 if choice.exact_tail or choice.exact_head else 0) + (choice.exact_decode if choice.decode_selection == "step" else 0)
    rerun = 0
    for i, token in enumerate(continuation_ids[:-1]):
        # the first call is the prompt's (its exact tail); then the answer's opening, then selecting steps that an
        # unsure top token runs again exactly (choice.exact_below), as Generator.generate does
        logits, again = decode_step(gen.model, token, cache, gen.pack.num_tokens, context, choice,
                                    selecting=i >= opening)
        rerun += again
        logps.append(torch.log_softmax(logits.double(), -1))
    logps = torch.stack(logps)
    if reference is None:
        return logps, {}
    from squeeze_mobile.metrics import next_token_agreement

    m = next_token_agreement(reference.numpy(), logps.numpy())
    out = {k: m[k] for k in ("kl_mean", "kl_max", "top1_agreement", "scored_tokens")}
    if choice.mode != "full":
        exact = (1 if choice.exact_tail or choice.exact_head else 0) + (choice.exact_decode if choice.decode_selection == "step" else 0)
        kl, top1 = m["kl"][exact:], m["top1"][exact:]
        out.update({"selecting_from_step": exact, "selecting_tokens": int(top1.size), "rerun_steps": rerun,
                    "selecting_top1_agreement": float(top1.mean()) if top1.size else None,
                    "selecting_kl_mean": float(kl.mean()) if kl.size else None})
    return logps, out


def run_evaluation(model, checkpoint, lengths=(2048, 4096, 8096), depths=(0.1, 0.5, 0.9),
                   kv_budgets=(0.325, 0.225, 0.125), kinds=("passkey", "needle"), continuation_tokens=64,
                   centroid_fraction=0.10, out_dir=None, log=print, max_new_tokens=16, needle_depths=(0.5,),
                   retrieval_variants=False):
    """Retrieval (passkey at ``depths``, needle at ``needle_depths``) and continuation metrics per length.

    Retrieval runs full + top-k flat/hierarchical (``retrieval_variants`` adds threshold and per-query-head);
    continuations always run every variant (they are what the GQA/threshold comparison is measured on).
    """
    tok = checkpoint.tokenizer
    window = model.config.max_positions
    lengths, depths, kv_budgets, kinds, needle_depths = map(tuple, (lengths, depths, kv_budgets, kinds, needle_depths))
    check_evaluation(window, lengths, depths, kv_budgets, kinds, continuation_tokens, needle_depths,
                     centroid_fraction, model.config.head_dim)
    if out_dir is not None:
        check_output_dir(out_dir)
    configs = choices_for_budgets(kv_budgets, centroid_fraction)
    retrieval_configs = choices_for_budgets(kv_budgets, centroid_fraction, variants=retrieval_variants)
    retrieval, continuation = [], []
    started = time.perf_counter()
    for li, length in enumerate(lengths):
        target = length
        # Retrieval cases (chat framing: the context opens the user's turn, the question closes it).
        for ki, kind in enumerate(kinds):
            for di, depth in enumerate(depths if kind == "passkey" else needle_depths):
                case, text = make_case(tok, kind, target - 40, depth, seed=1000 * li + 10 * ki + di, rotate=li + ki)
                pack = build_context_pack(model, checkpoint, text, BuildSettings(
                    centroid_fraction=centroid_fraction, hierarchical=True, framing="chat"))
                gen = Generator(model, tok, pack)
                for name, budget, choice in retrieval_configs:
                    r = gen.generate(case.question, choice, max_new_tokens=max_new_tokens,
                                     stop_when=lambda text, a=case.answer.lower(): a in text.lower())
                    ok = case.answer.lower() in r.text.lower()
                    retrieval.append({**asdict(case), "tokens": pack.num_tokens, "config": name, "kv_budget": budget,
                                      "correct": ok, "answer_text": r.text, "kept_fraction": r.kept_fraction})
                log(f"[{time.perf_counter() - started:6.0f}s] {kind} {pack.num_tokens} tokens depth {depth}: "
                    + " ".join(f"{'Y' if row['correct'] else '.'}" for row in retrieval[-len(retrieval_configs):]))
        # Continuation case (raw framing: plain prose, the next tokens are the prose that follows).
        paras = prose_of_tokens(tok, target + continuation_tokens + 64, rotate=li + 3)
        ids = tok.encode("\n\n".join(paras))
        ctx_ids_len = target - continuation_tokens
        context_text = tok.decode(ids[:ctx_ids_len], skip_special=False)
        pack = build_context_pack(model, checkpoint, context_text, BuildSettings(
            centroid_fraction=centroid_fraction, hierarchical=True, framing="raw"))
        cont = tok.encode(tok.decode(ids[ctx_ids_len:ctx_ids_len + continuation_tokens + 8]))[:continuation_tokens]
        gen = Generator(model, tok, pack)
        reference, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
        for name, budget, choice in configs[1:]:
            _, m = continuation_metrics(gen, choice, cont, reference)
            continuation.append({"length": length, "tokens": pack.num_tokens, "config": name, "kv_budget": budget, **m})
        if out_dir is not None:  # partial results survive an interrupted long run
            partial = {"retrieval": retrieval, "continuation": continuation, "kv_budgets": list(kv_budgets),
                       "lengths": list(lengths[:li + 1]), "depths": list(depths), "model": checkpoint.source,
                       "seconds": time.perf_counter() - started, "centroid_fraction": centroid_fraction}
            partial["summary"] = summarize(partial)
            save_results(partial, out_dir, final=False)
        log(f"[{time.perf_counter() - started:6.0f}s] continuation {pack.num_tokens} tokens: "
            + " ".join(f"{row['config']}@{row['kv_budget']}: top1 {row['top1_agreement']:.3f} KL {row['kl_mean']:.4f}"
                       for row in continuation[-(len(configs) - 1):] if row["config"] == "top-k flat"))
    results = {"retrieval": retrieval, "continuation": continuation, "kv_budgets": list(kv_budgets),
               "lengths": list(lengths), "depths": list(depths), "seconds": time.perf_counter() - started,
               "model": checkpoint.source, "centroid_fraction": centroid_fraction}
    results["summary"] = summarize(results)
    if out_dir is not None:
        save_results(results, out_dir)
    return results


def summarize(results):
    """Per (config, budget): retrieval accuracy, accuracy on cases full attention solves, top-1, KL."""
    full_ok = {(r["kind"], r["tokens"], r["depth"]) for r in results["retrieval"] if r["config"] == "full" and r["correct"]}
    rows = {}
    for r in results["retrieval"]:
        key = (r["config"], r["kv_budget"])
        row = rows.setdefault(key, {"config": r["config"], "kv_budget": r["kv_budget"], "cases": 0, "correct": 0,
                                    "full_solved": 0, "solved_of_full": 0})
        row["cases"] += 1
        row["correct"] += int(r["correct"])
        if (r["kind"], r["tokens"], r["depth"]) in full_ok:
            row["full_solved"] += 1
            row["solved_of_full"] += int(r["correct"])
    for r in results["continuation"]:
        row = rows.setdefault((r["config"], r["kv_budget"]), {"config": r["config"], "kv_budget": r["kv_budget"],
                                                               "cases": 0, "correct": 0, "full_solved": 0,
                                                               "solved_of_full": 0})
        row.setdefault("_top1", []).append(r["top1_agreement"])
        row.setdefault("_kl", []).append(r["kl_mean"])
    out = []
    for row in rows.values():
        top1, kl = row.pop("_top1", None), row.pop("_kl", None)
        row["top1_agreement"] = None if not top1 else sum(top1) / len(top1)
        row["kl_mean"] = None if not kl else sum(kl) / len(kl)
        out.append(row)
    return out


def markdown_table(results) -> str:
    lines = ["| attention | KV budget | retrieval correct | solved of full's | top-1 agreement | mean KL |",
             "|---|---|---|---|---|---|"]
    for r in results["summary"]:
        budget = "1.0" if r["kv_budget"] is None else f"{r['kv_budget']:.3f}"
        top1 = "-" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        kl = "-" if r["kl_mean"] is None else f"{r['kl_mean']:.4f}"
        solved = f"{r['correct']}/{r['cases']}" if r["cases"] else "-"
        of_full = f"{r['solved_of_full']}/{r['full_solved']}" if r["cases"] else "-"
        lines.append(f"| {r['config']} | {budget} | {solved} | {of_full} "
                     f"| {top1} | {kl} |")
    per_len = ["", "| context tokens | config | KV budget | top-1 | mean KL | max KL |", "|---|---|---|---|---|---|"]
    for r in results["continuation"]:
        per_len.append(f"| {r['tokens']} | {r['config']} | {r['kv_budget']:.3f} | {100 * r['top1_agreement']:.1f}% "
                       f"| {r['kl_mean']:.4f} | {r['kl_max']:.3f} |")
    return "\n".join(lines + per_len) + "\n"


def write_results(out_dir, stem: str, texts: dict, final: bool) -> None:
    """An evaluation's files: while it runs, ``<stem>.partial.<ext>`` after every case (what an interrupted run
    leaves, marked partial; a previous run's complete ``<stem>.<ext>`` files stay as they were); at the end the
    complete files, and the partial ones are removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext, text in texts.items():
        write_text_atomic(out_dir / f"{stem}{'' if final else '.partial'}{ext}", text)
    if final:
        for ext in texts:
            (out_dir / f"{stem}.partial{ext}").unlink(missing_ok=True)


def partial_note(out_dir, stem: str) -> str:
    """What an interrupted evaluation says about its files (the CLI's interrupt line)."""
    partial = Path(out_dir) / f"{stem}.partial.json"
    return (f"the results so far are in {partial} (marked partial)" if partial.exists() else "nothing was written") \
        + f"; complete results already in {out_dir} were kept"


def save_results(results, out_dir, final: bool = True):
    results = {"partial": not final, **results}
    write_results(out_dir, "context_eval", {".json": json.dumps(results, indent=2), ".md": markdown_table(results)},
                  final)
    if final:
        plot_results(results, Path(out_dir) / "context_eval.png")


def plot_results(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    configs = sorted({r["config"] for r in results["continuation"]})
    for i, name in enumerate(configs):
        color = f"C{i}"  # one colour per configuration across the three panels
        rows = [r for r in results["summary"] if r["config"] == name and r["kv_budget"] is not None]
        rows.sort(key=lambda r: r["kv_budget"])
        xs = [r["kv_budget"] for r in rows]
        if all(r["cases"] for r in rows):
            axes[0].plot(xs, [r["correct"] / r["cases"] for r in rows], marker="o", label=name, color=color)
        if all(r["top1_agreement"] is not None for r in rows):
            axes[1].plot(xs, [100 * r["top1_agreement"] for r in rows], marker="o", label=name, color=color)
            axes[2].plot(xs, [r["kl_mean"] for r in rows], marker="o", label=name, color=color)
    full = [r for r in results["summary"] if r["config"] == "full"]
    if full:
        axes[0].axhline(full[0]["correct"] / full[0]["cases"], color="k", ls="--", label="full attention")
    axes[0].set_title("retrieval accuracy (passkey + needle)")
    axes[1].set_title("top-1 agreement with full attention (%)")
    axes[2].set_title("mean KL(full || squeezed)")
    for ax in axes:
        ax.set_xlabel("KV budget (kept keys + centroid bytes / KV bytes)")
        ax.grid(alpha=0.3)
    axes[1].axhline(95, color="r", ls=":")
    axes[2].axhline(0.05, color="r", ls=":")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@torch.no_grad()
def attention_recall(gen: Generator, prompt_ids, choices: dict) -> dict:
    """How much of full attention's weight the kept keys carry, on the question tokens (one prefill; each selection
    chunk of the configuration's prompt, settings.prefill_chunks, measured over its own rows, weighted by them).

    For every layer and KV head, over the question's query rows: ``context`` = the share of full attention's
    softmax weight over the fixed context that falls on the keys a configuration attends (sinks + selected +
    window), ``clustered`` = the same share restricted to the clustered keys (selected / all clustered: the
    part the lookup decides). The selection is the configuration's own (``SqueezedContext.select`` on the
    question's queries, as its prefill does). ``ceiling`` = the clustered share the best possible set of as many
    clustered keys would carry (the keys with the largest mean share over the rows, per selecting head): what
    any selection rule could reach at this budget, so a low ``clustered`` with a low ``ceiling`` means diffuse
    attention, not a bad rule. This measures the SELECTION RULE: every question token is measured as selecting,
    including the prompt's exact head and tail (``exact_head``, ``exact_tail``), which in generation attends every key (recall 1 by
    construction there); decode steps select as measured here. Returns {name: {"context": [L][Hkv], "clustered": [L][Hkv], "ceiling": [L][Hkv]}}.
    """
    from .context_attention import DenseContext
    from .settings import prefill_chunks

    pack = gen.pack
    cfg = gen.model.config
    queries: list = []
    cache = gen.model.new_cache(len(prompt_ids))
    gen.model.step(torch.tensor(prompt_ids), cache, position_offset=pack.num_tokens,
                   context=DenseContext(pack.keys, pack.values), logits="none", query_sink=queries)
    contexts = {name: gen.context(choice) for name, choice in choices.items()}
    Hkv, N, D = cfg.num_kv_heads, pack.num_tokens, cfg.head_dim
    first, Nc = pack.settings.sink_tokens, pack.num_clustered
    out = {name: {"context": [], "clustered": [], "ceiling": []} for name in choices}
    for layer, q_all in enumerate(queries):
        q_all = q_all.float()
        sums = {name: {"context": 0.0, "clustered": 0.0, "ceiling": 0.0} for name in choices}
        for name, ctx in contexts.items():
            # the configuration's own selection chunks (settings.prefill_chunks): each selects for its own rows
            spec = getattr(ctx, "spec", None)
            chunks = prefill_chunks(q_all.shape[1], spec.prefill_rows, spec.prefill_tail) if spec else [(0, q_all.shape[1])]
            for a, b in chunks:
                q = q_all[:, a:b]
                rows = q.reshape(Hkv, -1, D)
                probs = torch.softmax(torch.matmul(rows, pack.keys[layer].float().transpose(1, 2)) / math.sqrt(D), -1)
                clustered_mass = probs[..., first:first + Nc].sum(-1)                       # [Hkv, R]
                idx, valid = ctx.select(layer, q)                                       # [Hs, B] context positions
                Hs = idx.shape[0]
                keep = torch.zeros(Hs, N, dtype=torch.bool)
                keep[:, :first] = True
                keep[:, first + Nc:] = True
                sel = idx if valid is None else torch.where(valid, idx, torch.zeros_like(idx))
                keep.scatter_(1, sel, True if valid is None else valid)
                if valid is not None:
                    keep[:, :first] = True  # position 0 (a padding target) is a sink anyway
                p = probs.reshape(Hs, -1, N)                                            # rows of each selecting head
                kept = (p * keep[:, None, :]).sum(-1).reshape(Hkv, -1)                  # [Hkv, R]
                kept_clustered = (p[..., first:first + Nc] * keep[:, None, first:first + Nc]).sum(-1).reshape(Hkv, -1)
                share = p[..., first:first + Nc] / clustered_mass.reshape(Hs, -1, 1).clamp(min=1e-30)  # [Hs, R, Nc]
                count = keep[:, first:first + Nc].sum(-1)                                  # clustered keys kept per head
                ranked = torch.sort(share.mean(1), dim=-1, descending=True).values.cumsum(-1)  # best k keys' mean share
                best = ranked.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0] * (count > 0)
                weight = (b - a) / q_all.shape[1]                                          # the chunk's share of the rows
                sums[name]["context"] += kept.mean(-1) * weight
                sums[name]["clustered"] += (kept_clustered / clustered_mass.clamp(min=1e-30)).mean(-1) * weight
                sums[name]["ceiling"] += best.reshape(Hkv, -1).mean(-1) * weight
            for key, value in sums[name].items():
                out[name][key].append(value.tolist())
    return out
