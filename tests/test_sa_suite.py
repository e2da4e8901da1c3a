"""The evaluation suite (case generation, splits) and the attention-mass recall measurement."""

from __future__ import annotations

import math

import pytest
import torch

from squeezed_attention import suite, testing
from squeezed_attention.evaluate import attention_recall, make_case
from squeezed_attention.generation import AttentionChoice, Generator
from squeezed_attention.settings import DEFAULT_KV_BUDGET


def test_splits_share_no_document_or_wording():
    docs = suite.documents()
    dev, held = (set(suite.split_items(sorted(docs), s)) for s in suite.SPLITS)
    assert dev and held and not dev & held and dev | held == set(docs)
    assert any(d.startswith("license:") for d in docs) and any(d.startswith("pydoc:") for d in docs)
    for kind, templates in suite.FACTS.items():
        d, h = (suite.split_items(templates, s, key=lambda t: t[0]) for s in suite.SPLITS)
        assert d and h and not {t[0] for t in d} & {t[0] for t in h}, kind


def test_cases_hold_their_facts_at_their_lengths():
    tok = testing.real_checkpoint().tokenizer
    cases = suite.suite_cases(tok, "heldout", [1024], cases_per_length=len(suite.KINDS), seed=3)
    assert [c.kind for c in cases] == list(suite.KINDS)
    docs = suite.documents()
    for c in cases:
        assert c.split == "heldout" and all(suite._split_of(s) == "heldout" for s in c.sources)
        assert 700 < len(tok.encode(c.text)) <= 1024
        assert all(f in c.text for f in c.facts) and all(a in " ".join(c.facts) for a in c.answers)
        assert all(0.05 <= d <= 0.95 for d in c.depths) and c.framing in ("chat", "raw")
        assert not c.correct("I do not know") and c.correct(" and ".join(c.answers).upper())
        assert set(c.sources) <= set(docs)
    again = suite.suite_cases(tok, "heldout", [1024], cases_per_length=len(suite.KINDS), seed=3)
    assert [c.text for c in again] == [c.text for c in cases]  # reproducible from the seed
    other = suite.suite_cases(tok, "heldout", [1024], cases_per_length=len(suite.KINDS), seed=4)
    assert [c.text for c in other] != [c.text for c in cases]


def _brute_recall(gen, ids, choice, layer):
    """Reference: full attention weights of every question query over the context, summed over the kept keys
    one head and one row at a time."""
    pack, cfg = gen.pack, gen.model.config
    queries = []
    cache = gen.model.new_cache(len(ids))
    from squeezed_attention.context_attention import DenseContext

    gen.model.step(torch.tensor(ids), cache, position_offset=pack.num_tokens,
                   context=DenseContext(pack.keys, pack.values), logits="none", query_sink=queries)
    q = queries[layer].float()
    ctx = gen.context(choice)
    idx, valid = ctx.select(layer, q)
    first, nc, G = pack.settings.sink_tokens, pack.num_clustered, cfg.group_size
    out, ceiling = [], []
    for h in range(cfg.num_kv_heads):
        chosen = {int(i) for j, i in enumerate(idx[h]) if valid is None or bool(valid[h, j])}
        values, shares = [], [0.0] * nc
        for g in range(G):
            for t in range(q.shape[1]):
                logits = [float(q[h * G + g, t] @ pack.keys[layer, h, n].float()) / math.sqrt(cfg.head_dim)
                          for n in range(pack.num_tokens)]
                top = max(logits)
                w = [math.exp(x - top) for x in logits]
                clustered = sum(w[first:first + nc])
                values.append(sum(w[n] for n in chosen) / clustered)
                shares = [a + w[first + i] / clustered for i, a in enumerate(shares)]
        out.append(sum(values) / len(values))
        # the best len(chosen) clustered keys for these rows: the largest summed shares
        ceiling.append(sum(sorted(shares, reverse=True)[:len(chosen)]) / len(values))
    return out, ceiling


def test_recall_matches_a_brute_force_reference():
    gen = testing.small_generator(hierarchical=False)
    ids = gen.prompt_ids("What is the pass key?")
    choice = AttentionChoice("top-k", keep_keys=40, backend="torch", prefill_tail=0, exact_tail=0, exact_head=0)  # one selection (the reference's)
    rec = attention_recall(gen, ids, {"k": choice, "all": AttentionChoice("top-k", keep_keys=gen.pack.num_clustered,
                                                                          backend="torch")})
    layer = 7
    brute, brute_ceiling = _brute_recall(gen, ids, choice, layer)
    assert rec["k"]["clustered"][layer] == pytest.approx(brute, abs=1e-4)
    assert rec["k"]["ceiling"][layer] == pytest.approx(brute_ceiling, abs=1e-4)
    # no selection of as many keys carries more than the ceiling; keeping everything reaches 1
    assert all(r <= c + 1e-6 for rr, cc in zip(rec["k"]["clustered"], rec["k"]["ceiling"]) for r, c in zip(rr, cc))
    assert any(r < c - 1e-3 for rr, cc in zip(rec["k"]["clustered"], rec["k"]["ceiling"]) for r, c in zip(rr, cc))
    assert all(x == pytest.approx(1.0) for row in rec["all"]["ceiling"] for x in row)
    assert all(x == pytest.approx(1.0) for row in rec["all"]["clustered"] for x in row)
    assert all(x == pytest.approx(1.0, abs=1e-5) for row in rec["all"]["context"] for x in row)
    # more kept keys never carry less weight (the ranked fill keeps a prefix of one ranking)
    small = attention_recall(gen, ids, {"k": AttentionChoice("top-k", keep_keys=10, backend="torch", prefill_tail=0, exact_tail=0, exact_head=0)})
    assert all(a <= b + 1e-6 for ra, rb in zip(small["k"]["clustered"], rec["k"]["clustered"]) for a, b in zip(ra, rb))


def test_shallow_pass_key_is_answered_at_the_default_budget():
    """A pass key in the first 10% of a ~2k-token real-prose context, default KV budget."""
    from squeezed_attention.pack import BuildSettings, build_context_pack

    ck = testing.real_checkpoint()
    case, text = make_case(ck.tokenizer, "passkey", 2000, 0.06, seed=23, rotate=3)
    pack = build_context_pack(testing.real_model(), ck, text, BuildSettings())
    gen = Generator(testing.real_model(), ck.tokenizer, pack)
    full = gen.generate(case.question, AttentionChoice("full"), max_new_tokens=12)
    squeezed = gen.generate(case.question, AttentionChoice("top-k", kv_budget=DEFAULT_KV_BUDGET), max_new_tokens=12)
    assert case.answer in full.text
    assert case.answer in squeezed.text, squeezed.text


def test_continuations_are_pooled_over_their_tokens():
    """Top-1 agreement and KL of several continuation cases: pooled over the scored tokens, per configuration."""
    cont = [{"config": "top-k@0.125", "scored_tokens": 63, "top1_agreement": 1.0, "kl_mean": 0.01},
            {"config": "top-k@0.125", "scored_tokens": 21, "top1_agreement": 0.0, "kl_mean": 0.05},
            {"config": "top-k@0.225", "scored_tokens": 63, "top1_agreement": 0.5, "kl_mean": 0.0}]
    rows = [{"case_id": "c", "config": c, "correct": True, "kind": "number", "depths": [0.5]}
            for c in ("full", "top-k@0.125", "top-k@0.225")]
    summary = {e["config"]: e for e in suite.summarize_suite(rows, [], cont, (0.125, 0.225))}
    assert summary["top-k@0.125"]["top1_agreement"] == pytest.approx(63 / 84)
    assert summary["top-k@0.125"]["kl_mean"] == pytest.approx((63 * 0.01 + 21 * 0.05) / 84)
    assert summary["top-k@0.125"]["continuation_tokens"] == 84
    assert summary["top-k@0.225"]["top1_agreement"] == pytest.approx(0.5)
    assert summary["full"]["top1_agreement"] is None
    assert "75.0% (84 tokens)" in suite.suite_markdown({"split": "dev", "seed": 0, "lengths": [2048],
                                                       "summary": list(summary.values())})


def test_continuations_also_score_the_selecting_steps_alone():
    """A continuation's first steps attend exactly under the default rule (the first call per layer is within the
    exact tail, then the answer's opening of exact_decode steps): they equal full attention's bit for bit, and the
    selecting_* metrics score the steps after them only, so the opening cannot dilute what selection costs."""
    from squeezed_attention.evaluate import continuation_metrics
    from squeeze_mobile.metrics import next_token_agreement

    gen = testing.small_generator(hierarchical=False)
    cont = gen.tokenizer.encode(" The licence grants every user the right to copy the work, to change it and to pass it on.")
    reference, _ = continuation_metrics(gen, AttentionChoice("full"), cont)
    choice = AttentionChoice("top-k", keep_keys=8, backend="torch", exact_decode=3)
    logps, m = continuation_metrics(gen, choice, cont, reference)
    assert m["selecting_from_step"] == 4 and m["selecting_tokens"] == len(cont) - 1 - 4
    assert torch.equal(logps[:4], reference[:4]) and not torch.equal(logps[4], reference[4])
    tail = next_token_agreement(reference[4:].numpy(), logps[4:].numpy())
    assert m["selecting_top1_agreement"] == pytest.approx(tail["top1_agreement"])
    assert m["selecting_kl_mean"] == pytest.approx(tail["kl_mean"]) and m["kl_mean"] < m["selecting_kl_mean"]
    _, none = continuation_metrics(gen, AttentionChoice("top-k", keep_keys=8, backend="torch", exact_decode=0,
                                                        exact_tail=0, exact_head=0), cont, reference)
    assert none["selecting_from_step"] == 0 and none["selecting_kl_mean"] == pytest.approx(none["kl_mean"])


def test_results_in_progress_never_replace_complete_ones(tmp_path):
    """An evaluation writes <stem>.partial.* while it runs (what an interrupted run leaves) and the complete files
    only at its end; a previous run's complete files stay until then."""
    from squeezed_attention.evaluate import partial_note, write_results

    (tmp_path / "suite.json").write_text("complete")
    assert "nothing was written" in partial_note(tmp_path, "suite")
    write_results(tmp_path, "suite", {".json": "so far", ".md": "so far"}, final=False)
    assert (tmp_path / "suite.json").read_text() == "complete"
    assert (tmp_path / "suite.partial.json").read_text() == "so far"
    assert "suite.partial.json (marked partial)" in partial_note(tmp_path, "suite")
    write_results(tmp_path, "suite", {".json": "new", ".md": "new"}, final=True)
    assert (tmp_path / "suite.json").read_text() == "new"
    assert not list(tmp_path.glob("*.partial.*"))
