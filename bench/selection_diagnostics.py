"""Why does Squeezed Attention miss keys? Recall of full attention's mass under other selection rules and
clusterings, against the best any selection of as many keys could do (issue: accuracy on unseen text).

For suite cases (real prose, generated needles) it runs full attention once over question + full attention's
own answer (teacher forcing, one pass: the rows are exactly decode's rows) and measures, per layer and KV
head, the share of the clustered keys' attention mass that a selection keeps at the same key count as the
product's top-k at ``--kv-budget``:
  question rows: one selection for all question tokens (as a prefill chunk selects),
  answer rows:   one selection per row (as decode selects per step).
Rules, on the pack's own clusters: ``centroid`` (the product: mean over queries of the normalised centroid
score), ``max-query`` (max over queries instead of mean), ``variance`` (log-normal correction: score + 1/2
q^T diag(var) q), ``radius`` (upper bound q.c + |q| r, Quest-like), ``true-cluster-mass`` (clusters ranked by
their real mass: the best a cluster-level rule can do), ``best-keys`` (the keys with the most mass: the best
any selection can do). Clusterings: the product's (k-means on normalised keys, 10%), raw-key k-means at 10%,
normalised at 20% (finer: costs twice the centroid bytes).

    python -m bench.selection_diagnostics --split dev --lengths 2048 --cases 4 --out DIR

``--answers`` instead generates the answers (full attention, then top-k at each of ``--kv-budgets`` with each
``--prefill-rows`` x ``--prefill-tails`` x ``--exact-tails`` setting, only on the cases full attention answers) and counts the squeezed
answers:

    python -m bench.selection_diagnostics --answers --split dev --lengths 2048 --cases 12 --prefill-rows 0 \
        --prefill-tails 0,16 --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch


def _fill(scores, counts, budget: int):
    """Fraction of each cluster kept when clusters are taken best first until ``budget`` keys ([..., K])."""
    order = torch.argsort(-scores, dim=-1, stable=True)
    c = counts.gather(-1, order)
    before = torch.cumsum(c, -1) - c
    take = torch.minimum((budget - before).clamp(min=0), c).double()
    return torch.zeros_like(scores, dtype=torch.float64).scatter_(-1, order, take / c.clamp(min=1).double())


def _cluster_stats(keys, labels, K: int):
    """counts [H, K], centroids [H, K, D], per-dim variance [H, K, D], radius [H, K] of keys [H, N, D]."""
    H, _, D = keys.shape
    idx = labels.unsqueeze(-1).expand(-1, -1, D)
    counts = torch.zeros(H, K, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))
    cent = torch.zeros(H, K, D, dtype=torch.float64).scatter_add_(1, idx, keys) / counts.clamp(min=1)[..., None]
    resid = keys - cent.gather(1, idx)
    var = torch.zeros(H, K, D, dtype=torch.float64).scatter_add_(1, idx, resid ** 2) / counts.clamp(min=1)[..., None]
    radius = torch.zeros(H, K, dtype=torch.float64).scatter_reduce_(1, labels, resid.norm(dim=-1), "amax")
    return counts, cent, var, radius


def _rule_scores(name, qs, cent, counts, var, radius, mass):
    """Per-row, per-key scores S [H, G, R, K] (or true per-key mass for the oracle)."""
    if name == "true-cluster-mass":
        return mass / counts.clamp(min=1).double()[:, None, None, :]
    logits = torch.einsum("hgrd,hkd->hgrk", qs, cent)
    if name == "variance":
        logits = logits + 0.5 * torch.einsum("hgrd,hkd->hgrk", qs ** 2, var)
    elif name == "radius":
        logits = logits + qs.norm(dim=-1, keepdim=True) * radius[:, None, None, :]
    log_n = torch.where(counts > 0, counts.double().clamp(min=1).log(), torch.tensor(-math.inf, dtype=torch.float64))
    lg = logits + log_n[:, None, None, :]
    return torch.exp(lg - torch.logsumexp(lg, -1, keepdim=True)) / counts.clamp(min=1).double()[:, None, None, :]


def _recall(share, keep):
    """share [H, G, R, X] of the clustered mass, keep [H, R, X] fraction kept -> per head mean over rows."""
    return (share * keep[:, None]).sum(-1).mean((1, 2))


@torch.no_grad()
def diagnose_case(model, checkpoint, case, kv_budget: float, rng_seed: int = 0) -> dict:
    from squeezed_attention.context_attention import DenseContext
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.kmeans import kmeans
    from squeezed_attention.pack import BuildSettings, build_context_pack

    tok = checkpoint.tokenizer
    pack = build_context_pack(model, checkpoint, case.text, BuildSettings(framing=case.framing))
    gen = Generator(model, tok, pack)
    raw = case.framing == "raw"
    prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
    answer = gen.generate(prompt, AttentionChoice("full"), max_new_tokens=32, raw=raw, stop_when=case.correct)
    prompt_ids = gen.prompt_ids(prompt, raw)
    ids = prompt_ids + list(answer.token_ids)
    budget = gen.context(AttentionChoice("top-k", kv_budget=kv_budget)).spec.budget_keys
    queries: list = []
    cache = model.new_cache(len(ids))
    model.step(torch.tensor(ids), cache, position_offset=pack.num_tokens,
               context=DenseContext(pack.keys, pack.values), logits="none", query_sink=queries)
    cfg = model.config
    Hkv, D, G = cfg.num_kv_heads, cfg.head_dim, gen.tables.group_size
    first, Nc, L = pack.settings.sink_tokens, pack.num_clustered, cfg.num_layers
    clustered = pack.keys[:, :, first:first + Nc].float().reshape(L * Hkv, Nc, D)
    clusterings = {"product (normalised, 10%)": gen.tables.labels.reshape(L * Hkv, Nc).long(),
                   "raw keys, 10%": kmeans(clustered, max(1, round(0.10 * Nc)), 12, rng_seed).labels.long(),
                   "normalised, 20%": kmeans(torch.nn.functional.normalize(clustered, dim=-1),
                                             max(1, round(0.20 * Nc)), 12, rng_seed).labels.long()}
    rules = ("centroid", "max-query", "variance", "radius", "true-cluster-mass")
    out: dict = {}
    n_q = len(prompt_ids)
    for layer, q in enumerate(queries):
        T = q.shape[1]
        keys = pack.keys[layer].double()
        qs = q.double().reshape(Hkv, G, T, D) / math.sqrt(D)
        p = torch.softmax(torch.einsum("hgtd,hnd->hgtn", qs, keys), -1)[..., first:first + Nc]
        share = p / p.sum(-1, keepdim=True)                                     # [H, G, T, Nc]
        for part, rows in (("question", slice(0, n_q)), ("answer", slice(n_q - 1, T))):
            sh = share[:, :, rows]
            R = sh.shape[2]
            per_key = sh.mean(1) if part == "answer" else sh.mean((1, 2))[:, None, :].expand(-1, R, -1)
            best = torch.zeros_like(per_key).scatter_(-1, torch.topk(per_key, budget, -1).indices, 1.0)
            out.setdefault((part, "best-keys", "-"), []).extend(_recall(sh, best).tolist())
            for cname, labels in clusterings.items():
                lab = labels.reshape(L, Hkv, Nc)[layer]
                K = int(lab.max()) + 1
                counts, cent, var, radius = _cluster_stats(keys[:, first:first + Nc], lab, K)
                mass = torch.zeros(Hkv, G, R, K, dtype=torch.float64).scatter_add_(
                    3, lab[:, None, None, :].expand(-1, G, R, -1), sh)
                for rule in (rules if cname.startswith("product") else ("centroid", "true-cluster-mass")):
                    s = _rule_scores(rule, qs[:, :, rows], cent, counts, var, radius, mass)
                    if rule == "max-query":
                        s = s.amax(1) if part == "answer" else s.amax((1, 2))[:, None, :].expand(-1, R, -1)
                    else:
                        s = s.mean(1) if part == "answer" else s.mean((1, 2))[:, None, :].expand(-1, R, -1)
                    keep = _fill(s, counts[:, None, :].expand(-1, R, -1), budget)
                    out.setdefault((part, rule, cname), []).extend(_recall(mass, keep).tolist())
    return {"case_id": case.case_id, "tokens": pack.num_tokens, "budget_keys": budget, "clustered": Nc,
            "full_correct": case.correct(answer.text),
            "recall": [{"rows": k[0], "rule": k[1], "clustering": k[2], "values": v} for k, v in out.items()]}


def _case_pack(model, checkpoint, case, cache_dir):
    """The case's context pack, built once and kept in ``cache_dir`` (None: not kept)."""
    from squeezed_attention.pack import BuildSettings, build_context_pack, read_context_pack, save_context_pack

    path = None if cache_dir is None else Path(cache_dir) / f"{case.case_id}.pack"
    if path is not None and path.exists():
        return read_context_pack(path)
    pack = build_context_pack(model, checkpoint, case.text, BuildSettings(framing=case.framing))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_context_pack(pack, path)
    return pack


@torch.no_grad()
def answer_case(model, checkpoint, case, kv_budgets, prefill_rows, cache_dir=None, selections=("step",),
                prefill_tails=(0,), exact_tails=(0,)) -> dict:
    """Does the squeezed decoder answer the case, per KV budget and prompt tokens per prefill selection
    (``prefill_rows``: 0 = one selection for the whole prompt, the product's default)? Squeezed runs only where
    full attention answers."""
    from squeezed_attention.generation import AttentionChoice, Generator

    pack = _case_pack(model, checkpoint, case, cache_dir)
    gen = Generator(model, checkpoint.tokenizer, pack)
    raw = case.framing == "raw"
    prompt = ("\n\nQuestion: " + case.question + "\nAnswer:") if raw else case.question
    new = 48 if len(case.answers) == 1 else 64
    stop = case.correct
    full = gen.generate(prompt, AttentionChoice("full"), max_new_tokens=new, raw=raw, stop_when=stop)
    out = {"case_id": case.case_id, "kind": case.kind, "depths": case.depths, "framing": case.framing,
           "tokens": pack.num_tokens, "prompt_tokens": len(gen.prompt_ids(prompt, raw)),
           "full": case.correct(full.text), "full_text": full.text, "squeezed": []}
    base_context = gen.context
    for budget in (kv_budgets if out["full"] else ()):  # only the cases full attention answers are compared
        for rows, tail, exact in [(r, t, e) for r in prefill_rows for t in prefill_tails for e in exact_tails]:
            for selection in selections:
                def context(choice, rows=rows, tail=tail, exact=exact):
                    ctx = base_context(choice)
                    if hasattr(ctx, "spec"):
                        ctx.spec.prefill_rows, ctx.spec.prefill_tail, ctx.spec.exact_tail = rows, tail, exact
                    return ctx
                gen.context = context
                r = gen.generate(prompt, AttentionChoice("top-k", kv_budget=budget, decode_selection=selection),
                                 max_new_tokens=new, raw=raw, stop_when=stop)
                out["squeezed"].append({"kv_budget": budget, "prefill_rows": rows, "prefill_tail": tail,
                                        "exact_tail": exact, "decode_selection": selection,
                                        "correct": case.correct(r.text), "text": r.text,
                                        "prefill_seconds": r.prefill_seconds})
    gen.context = base_context
    return out


def summarize_answers(cases) -> list:
    """Per (KV budget, prefill rows): squeezed answers among the cases full attention answers."""
    rows = {}
    for c in cases:
        for s in c["squeezed"]:
            r = rows.setdefault((s["kv_budget"], s["prefill_rows"], s.get("prefill_tail", 0), s.get("exact_tail", 0),
                                 s.get("decode_selection", "step")), {"answered": 0, "of_full": 0, "any": 0})
            r["any"] += s["correct"]
            if c["full"]:
                r["of_full"] += 1
                r["answered"] += s["correct"]
    return [{"kv_budget": k[0], "prefill_rows": k[1], "prefill_tail": k[2], "exact_tail": k[3], "decode_selection": k[4], **v}
            for k, v in sorted(rows.items())]


def answers_main(args, model, checkpoint, cases) -> int:
    budgets = [float(x) for x in args.kv_budgets.split(",")]
    rows = [int(x) for x in args.prefill_rows.split(",")]
    selections = [x.strip() for x in args.decode_selections.split(",") if x.strip()]
    results, t0 = [], time.perf_counter()
    for case in cases:
        results.append(answer_case(model, checkpoint, case, budgets, rows, args.pack_cache, selections,
                                   [int(x) for x in args.prefill_tails.split(",")],
                                   [int(x) for x in args.exact_tails.split(",")]))
        r = results[-1]
        print(f"[{time.perf_counter() - t0:5.0f}s] {case.case_id} ({r['kind']}, {r['framing']}, depths {r['depths']}, "
              f"prompt {r['prompt_tokens']} tokens): full={'Y' if r['full'] else '.'} " + " ".join(
                  f"{s['kv_budget']:g}/{s['prefill_rows']}/{s['prefill_tail']}/{s['exact_tail']}/{s['decode_selection']}="
                  f"{'Y' if s['correct'] else '.'}"
                  for s in r["squeezed"]),
              flush=True)
        summary = summarize_answers(results)
        lines = [f"# Answers by prefill selection chunk: split {args.split}, lengths {args.lengths}, {len(results)} cases", "",
                 "prefill rows = prompt tokens per selection before the tail (0: one selection); prefill tail = the "
                 "prompt's last tokens (before the exact tail) that select per token; exact tail = the prompt's last "
                 "tokens that attend every context key; decode selection = per step, or the prompt's selection "
                 "held for the whole answer (question).", "",
                 "| KV budget | prefill rows | prefill tail | exact tail | decode selection | answered of full's | answered (all cases) |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['kv_budget']:g} | {s['prefill_rows']} | {s['prefill_tail']} | {s['exact_tail']} | {s['decode_selection']} | "
                  f"{s['answered']}/{s['of_full']} "
                  f"| {s['any']}/{len(results)} |" for s in summary]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "answers.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out), "pack_cache": str(args.pack_cache)},
                                                           "cases": results, "summary": summary}, indent=1))
        (args.out / "answers.md").write_text("\n".join(lines) + "\n")
    print((args.out / "answers.md").read_text())
    return 0


def summarize(cases) -> list:
    pooled: dict = {}
    for c in cases:
        for r in c["recall"]:
            pooled.setdefault((r["rows"], r["rule"], r["clustering"]), []).extend(r["values"])
    return [{"rows": k[0], "rule": k[1], "clustering": k[2], "median": statistics.median(v), "n": len(v)}
            for k, v in pooled.items()]


def main(argv=None) -> int:
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.suite import suite_cases
    from squeezed_attention.weights import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="dev", choices=("dev", "heldout"))
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--cases", type=int, default=4, help="cases per length")
    ap.add_argument("--kv-budget", type=float, default=0.125)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--answers", action="store_true", help="generate answers instead of measuring recall: per KV budget "
                    "(--kv-budgets) and prompt tokens per prefill selection (--prefill-rows)")
    ap.add_argument("--kv-budgets", default="0.125,0.225")
    ap.add_argument("--prefill-rows", default="0")
    ap.add_argument("--prefill-tails", default="0,16", help="comma-separated: the prompt's last tokens that select per token")
    ap.add_argument("--exact-tails", default="0", help="comma-separated: the prompt's last tokens that attend every "
                    "context key (the product's default is 32)")
    ap.add_argument("--decode-selections", default="step", help="comma-separated: step, question")
    ap.add_argument("--first-case", type=int, default=0, help="skip the first cases of each run")
    ap.add_argument("--pack-cache", type=Path, default=None, help="keep the cases' packs here (re-runs skip the build)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(None)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    cases = suite_cases(checkpoint.tokenizer, args.split, [int(x) for x in args.lengths.split(",")], args.cases, 0)
    cases = cases[args.first_case:]
    if args.answers:
        return answers_main(args, model, checkpoint, cases)
    args.out.mkdir(parents=True, exist_ok=True)
    results, t0 = [], time.perf_counter()
    for case in cases:
        results.append(diagnose_case(model, checkpoint, case, args.kv_budget))
        print(f"[{time.perf_counter() - t0:5.0f}s] {case.case_id}: {results[-1]['budget_keys']} of "
              f"{results[-1]['clustered']} clustered keys", flush=True)
    summary = summarize(results)
    title = (f"# Selection diagnostics: split {args.split}, lengths {args.lengths}, {len(results)} cases, "
             f"KV budget {args.kv_budget}")
    lines = [title, "",
             "Median over layers x KV heads x cases of the share of the clustered keys' attention mass kept.", "",
             "| rows | rule | clustering | recall |", "|---|---|---|---|"]
    lines += [f"| {s['rows']} | {s['rule']} | {s['clustering']} | {s['median']:.3f} |" for s in summary]
    text = "\n".join(lines) + "\n"
    (args.out / "selection_diagnostics.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                                     "cases": results, "summary": summary}, indent=1))
    (args.out / "selection_diagnostics.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
