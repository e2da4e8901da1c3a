"""Centroid lookup on a real context pack: stable scores, torch == numpy fallback, hierarchical lookup,
GQA granularity, and squeezed attention with everything kept == full attention."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from squeezed_attention.context_attention import DenseContext, grouped_queries
from squeezed_attention.generation import AttentionChoice, make_context
from squeezed_attention.lookup import LookupTables, SelectionSpec, cluster_scores, score_layer, select_keys
from squeezed_attention.lookup_numpy import NumpyTables
from squeezed_attention.lookup_numpy import select_keys as select_keys_numpy
from squeezed_attention.pack import calibrate_thresholds
from squeezed_attention.generation import Generator
from squeezed_attention.testing import passkey_case, real_checkpoint, real_model, small_generator, small_pack


def user_queries(gen, prompt="What is the pass key? Answer with the number only."):
    """Real post-RoPE queries of a user prompt, per layer ([L][Hq, T, D]), with full attention."""
    sink = []
    ids = torch.tensor(gen.prompt_ids(prompt))
    gen.model.step(ids, gen.model.new_cache(len(ids)), position_offset=gen.pack.num_tokens,
                   context=gen.context(AttentionChoice("full")), query_sink=sink)
    return sink


def test_scores_are_stable_with_adversarially_large_key_norms():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 64, generator=g, dtype=torch.float64) * 30
    c = torch.randn(3, 50, 64, generator=g, dtype=torch.float64) * 1e4  # q.c ~ 1e6: exp() overflows
    counts = torch.randint(0, 20, (3, 50), generator=g)
    counts[:, 0] = 0  # an empty cluster too
    naive = torch.exp(q @ c.transpose(-1, -2))
    assert not torch.isfinite(naive).all()  # what the official code does
    scores, log_den = cluster_scores(q, c, counts)
    assert torch.isfinite(scores).all() and torch.isfinite(log_den).all()
    assert ((scores >= 0) & (scores <= 1)).all() and (scores[:, 0] == 0).all()  # empty cluster: 0
    # Same values as the two-exp log-space formula S = exp(A - logsumexp(A + log N)) where that one is finite.
    logits = q @ c.transpose(-1, -2)
    reference = torch.exp(logits - torch.logsumexp(logits + counts.double().log().unsqueeze(1), -1, keepdim=True)).mean(1)
    assert torch.allclose(scores[:, 1:], reference[:, 1:], rtol=1e-9, atol=1e-300)
    # Normalization: sum_j N_j S_ij = 1 per query, so the count-weighted mean over queries is 1 too.
    assert torch.allclose((scores * counts).sum(-1), torch.ones(3, dtype=torch.float64))
    # Thresholds calibrated on such keys stay finite and ordered.
    order = torch.sort(torch.randint(0, 50, (1, 3, 400), generator=g), -1).values
    tables = LookupTables.build(c.unsqueeze(0), torch.bincount(order[0, 0], minlength=50).expand(1, 3, 50).contiguous(),
                                order, group_size=1)
    th = calibrate_thresholds(tables, q.unsqueeze(0).float(), per_query_head=False)
    assert torch.isfinite(th).all() and (th[:-1] >= th[1:]).all()


@pytest.mark.parametrize("hierarchical", [False, True])
@pytest.mark.parametrize("per_query_head", [False, True])
@pytest.mark.parametrize("mode", ["top-k", "threshold"])
def test_torch_lookup_equals_numpy_fallback(mode, per_query_head, hierarchical):
    gen = small_generator()
    pack, tables = gen.pack, gen.tables
    np_tables = NumpyTables.from_torch(tables)
    queries = user_queries(gen)
    ctx = make_context(pack, AttentionChoice(mode, keep_fraction=0.1, per_query_head=per_query_head, hierarchical=hierarchical), tables)
    spec = ctx.spec
    for layer in range(0, pack.config.num_layers, 3):
        for q in (queries[layer], queries[layer][:, -1:]):  # prefill (mean over queries) and one decode token
            sel = select_keys(tables, layer, q, spec)
            idx, valid, scored = select_keys_numpy(np_tables, layer, q.numpy(), spec)
            assert np.array_equal(sel.indices.numpy(), idx)
            assert (sel.valid is None and valid is None) or np.array_equal(sel.valid.numpy(), valid)
            if not hierarchical:
                assert sel.centroids_scored == scored == pack.num_clusters


def test_budget_selection_is_exact_and_within_the_clustered_range():
    gen = small_generator()
    pack, tables = gen.pack, gen.tables
    q = user_queries(gen)[5]
    first, nc = pack.settings.sink_tokens, pack.num_clustered
    for budget in (1, 17, nc // 3, nc):
        sel = select_keys(tables, 5, q, SelectionSpec("budget", budget_keys=budget))
        assert sel.indices.shape == (3, budget) and sel.valid is None
        for row in sel.indices:
            assert len(set(row.tolist())) == budget  # no key twice
        assert int(sel.indices.min()) >= first and int(sel.indices.max()) < first + nc
    everything = select_keys(tables, 5, q, SelectionSpec("budget", budget_keys=nc)).indices
    assert torch.equal(everything, torch.arange(first, first + nc).expand(3, -1))


def test_keep_everything_equals_full_attention_exactly():
    gen = small_generator()
    prompt = "What is the pass key? Answer with the number only."
    ids = torch.tensor(gen.prompt_ids(prompt))
    outs = []
    # The in-graph torch path (the fused decode kernel sums in another order: tested separately below), one selection
    # for the prompt (a per-token tail attends chunk by chunk: the same sums in other shapes, equal to rounding)
    for choice in (AttentionChoice("full"), AttentionChoice("top-k", keep_keys=gen.pack.num_clustered, backend="torch",
                                                            prefill_tail=0)):
        cache = gen.model.new_cache(len(ids) + 1)
        first = gen.model.step(ids, cache, position_offset=gen.pack.num_tokens, context=gen.context(choice))
        nxt = gen.model.step(first.argmax().view(1), cache, position_offset=gen.pack.num_tokens, context=gen.context(choice))
        outs.append((first, nxt))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


native = pytest.importorskip("squeezed_attention.native")


def require_fused_kernel():
    """The kernel must build wherever a C++ compiler exists; without one the torch path is the documented fallback."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here: the fused kernel cannot be built (the torch lookup is used)")
    if not native.available():
        pytest.fail(f"the fused kernel did not build: {native.unavailable_reason()}")


@pytest.mark.parametrize("per_query_head", [False, True])
def test_fused_decode_kernel_selects_the_same_keys_and_matches_the_torch_path(per_query_head):
    require_fused_kernel()
    gen = small_generator()
    pack, tables = gen.pack, gen.tables
    queries = user_queries(gen)
    for budget in (1, pack.num_clustered // 10, pack.num_clustered // 3, pack.num_clustered):
        choice = AttentionChoice("top-k", keep_keys=budget, per_query_head=per_query_head, backend="torch")
        ref = make_context(pack, choice, tables)
        fused = make_context(pack, AttentionChoice("top-k", keep_keys=budget, per_query_head=per_query_head,
                                                   backend="native"), tables)
        assert fused.fused and not ref.fused
        for layer in range(0, pack.config.num_layers, 4):
            q = queries[layer][:, -1:].contiguous()  # one decode token [Hq, 1, D]
            idx, _ = ref.select(layer, q)
            t = tables
            grouped = q if per_query_head else q.reshape(fused.num_kv_heads, -1, q.shape[-1])
            out, lse, kept = native.context_decode(
                grouped, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer], t.order_by_cluster[layer],
                t.cluster_start[layer], fused.sink_kv[layer], fused.clustered_kv[layer], fused.window_kv[layer],
                budget, fused.scale, return_positions=True)
            assert torch.equal(kept, idx)  # identical key selection (same ranking, same partial cluster)
            ref_out, ref_lse = ref.attend(layer, q)
            new_out, new_lse = fused.attend(layer, q)
            assert (new_out - ref_out).abs().max() < 1e-5 and (new_lse - ref_lse).abs().max() < 1e-5


@pytest.mark.parametrize("per_query_head", [False, True])
def test_native_summaries_of_prefill_rows_match_the_torch_path(per_query_head):
    """The dropped clusters' summaries for many query rows (a prompt's prefill): the native kernel's softmax over
    the int8-coded centroids equals the torch path's baddbmm / logsumexp / bmm, for one kept key, a tenth and
    everything (no summaries: output 0, lse -inf)."""
    require_fused_kernel()
    gen = small_generator()
    pack, tables = gen.pack, gen.tables
    queries = user_queries(gen)
    for budget in (1, pack.num_clustered // 10, pack.num_clustered):
        ref = make_context(pack, AttentionChoice("top-k", keep_keys=budget, per_query_head=per_query_head,
                                                 backend="torch"), tables)
        fused = make_context(pack, AttentionChoice("top-k", keep_keys=budget, per_query_head=per_query_head,
                                                   backend="native"), tables)
        for layer in range(0, pack.config.num_layers, 3):
            q = grouped_queries(queries[layer], ref.num_kv_heads, per_query_head)
            idx, valid = ref.select(layer, queries[layer])
            ref_out, ref_lse = ref._summaries(layer, q, idx, valid)
            out, lse = fused._summaries(layer, q, idx, valid)
            assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
            finite = torch.isfinite(ref_lse)
            assert torch.equal(finite, torch.isfinite(lse))
            assert (budget == pack.num_clustered) == (not finite.any())
            assert (out - ref_out).abs().max() < 1e-5
            if finite.any():
                assert (lse[finite] - ref_lse[finite]).abs().max() < 1e-5
            # the selection's own logits, handed to the summaries, give the same numbers as scoring again
            n_idx, n_valid, logits = fused._select(layer, queries[layer], with_logits=True)
            assert logits.shape[:2] == q.shape[:2] and logits.shape[2] % 16 == 0
            again = fused._summaries(layer, q, n_idx, n_valid)
            reused = fused._summaries(layer, q, n_idx, n_valid, logits=logits)
            assert torch.equal(again[0], reused[0]) and torch.equal(again[1], reused[1])


def assert_same_selection_up_to_float32_ties(native_idx, torch_idx, tables, layer, queries, spec):
    """The native prefill selection scores in float32, the torch lookup in float64: they may differ only in
    clusters whose float64 scores tie (to 1e-5 relative) with the last cluster the budget reaches."""
    if torch.equal(native_idx, torch_idx):
        return
    scores, _ = score_layer(tables, layer, queries, spec)
    position_cluster = torch.empty(tables.num_clustered + tables.first_position, dtype=torch.long)
    for h in range(native_idx.shape[0]):
        if torch.equal(native_idx[h], torch_idx[h]):
            continue
        kv = h // tables.group_size if spec.per_query_head else h
        position_cluster[tables.order_by_cluster[layer, kv]] = torch.repeat_interleave(
            torch.arange(tables.num_clusters), tables.counts[layer, kv])
        a = set(position_cluster[native_idx[h]].tolist())
        b = set(position_cluster[torch_idx[h]].tolist())
        edge = scores[h, list(b)].min()
        for c in a ^ b:
            assert abs(scores[h, c] - edge) <= 1e-5 * edge, (layer, h, c)


@pytest.mark.parametrize("per_query_head", [False, True])
def test_native_prefill_selection_equals_the_torch_lookup_at_any_thread_count(per_query_head):
    """context_select (prefill chunks: all prompt tokens' queries pooled) picks the torch lookup's keys (up to
    float32 ties at the budget's edge; on this pack, exactly), and the kernel's fixed work split gives
    bit-identical results at 1 and 2 threads."""
    require_fused_kernel()
    gen = small_generator()
    pack, t = gen.pack, gen.tables
    queries = user_queries(gen, " ".join(["Which number was given as the pass key, and where in the text?"] * 6))
    threads = torch.get_num_threads()
    try:
        for budget in (1, pack.num_clustered // 8, pack.num_clustered // 2):
            ref = make_context(pack, AttentionChoice("top-k", keep_keys=budget, per_query_head=per_query_head,
                                                     backend="torch"), t)
            for layer in range(0, pack.config.num_layers, 5):
                q = queries[layer]  # [Hq, T, D], T = prompt tokens
                idx, _ = ref.select(layer, q)
                grouped = q if per_query_head else q.reshape(ref.num_kv_heads, -1, q.shape[-1])
                assert grouped.shape[1] > 64  # more rows than one work item of the kernel
                picks = []
                for n in (1, 2):
                    torch.set_num_threads(n)
                    picks.append(native.context_select(grouped, t.centroid_codes_t[layer], t.centroid_scales[layer],
                                                       t.counts[layer], t.order_by_cluster[layer],
                                                       t.cluster_start[layer], t.first_position, budget))
                assert torch.equal(picks[0], picks[1])
                assert_same_selection_up_to_float32_ties(picks[0], idx, t, layer, q, ref.spec)
        # The tie allowance is no blank cheque: a key from the lowest-scoring cluster instead is caught.
        scores, _ = score_layer(t, 0, queries[0], ref.spec)
        worst = int(torch.where(t.counts[0, 0] > 0, scores[0], torch.inf).argmin())
        good = ref.select(0, queries[0])[0]
        bad = good.clone()
        bad[0, 0] = t.order_by_cluster[0, 0, t.cluster_start[0, 0, worst]]
        with pytest.raises(AssertionError):
            assert_same_selection_up_to_float32_ties(bad, good, t, 0, queries[0], ref.spec)
    finally:
        torch.set_num_threads(threads)


def test_fused_decode_reads_fp16_rows_exactly_and_splits_work_independently_of_threads():
    require_fused_kernel()
    gen = small_generator()
    pack, t = gen.pack, gen.tables
    ctx = make_context(pack, AttentionChoice("top-k", keep_keys=pack.num_clustered // 5, backend="native"), t, gen.rows)
    assert ctx.clustered_kv.dtype == torch.float16  # the pack's precision, half the bytes of an fp32 copy
    queries = user_queries(gen)
    threads = torch.get_num_threads()
    try:
        for layer in (0, pack.config.num_layers - 1):
            q = queries[layer][:, -1:].reshape(ctx.num_kv_heads, -1, queries[layer].shape[-1]).contiguous()
            args = (q, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer], t.order_by_cluster[layer],
                    t.cluster_start[layer])
            results = []
            for rows, n in ((torch.float16, 1), (torch.float16, 2), (torch.float32, 2)):
                torch.set_num_threads(n)
                kv = [x[layer].to(rows) for x in (ctx.sink_kv, ctx.clustered_kv, ctx.window_kv)]
                results.append(native.context_decode(*args, *kv, ctx.spec.budget_keys, ctx.scale, return_positions=True))
            for other in results[1:]:  # fp16 -> fp32 is exact: the same numbers, bit for bit
                assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    finally:
        torch.set_num_threads(threads)


def test_native_decode_gemv_matches_linear_for_both_weight_layouts():
    require_fused_kernel()
    from squeezed_attention.model import Linear

    g = torch.Generator().manual_seed(0)
    for out_features, in_features in ((1536, 576), (576, 1536), (200, 72)):  # 72: a non-multiple of 16
        weight = torch.randn(out_features, in_features, generator=g)
        x = torch.randn(3, in_features, generator=g)
        ref = torch.nn.functional.linear(x, weight)
        for w in (weight, weight.t().contiguous().t()):  # row-major, column-major storage
            y = native.decode_gemv(x, w)
            assert y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-5, atol=1e-4)
    layer = Linear(576, 1536, bias=False)
    layer.native_gemv = True
    x = torch.randn(1, 576, generator=g)
    with torch.no_grad():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), rtol=1e-5, atol=1e-4)
    # the model built from a checkpoint routes its decode projections through the kernel
    assert all(m.native_gemv for m in real_model().modules() if isinstance(m, Linear))


def test_fused_kernel_is_used_for_decode_only_and_keeps_generation_identical():
    require_fused_kernel()
    gen = small_generator()
    a = gen.generate("What is the pass key? Answer with the number only.", AttentionChoice("top-k", keep_fraction=0.2, backend="torch"), max_new_tokens=8)
    b = gen.generate("What is the pass key? Answer with the number only.", AttentionChoice("top-k", keep_fraction=0.2, backend="native"), max_new_tokens=8)
    assert a.token_ids == b.token_ids and a.kept_fraction == pytest.approx(b.kept_fraction)
    # the K/V layout is built once per pack and shared by every context the generator makes
    choice = AttentionChoice("top-k", keep_fraction=0.2)
    assert gen.context(choice).clustered_kv is gen.context(choice).clustered_kv
    # threshold and hierarchical lookups are not fused: "auto" falls back to the torch path for them
    for choice in (AttentionChoice("threshold", keep_fraction=0.2), AttentionChoice("top-k", keep_fraction=0.2, hierarchical=True)):
        assert not make_context(gen.pack, choice, gen.tables).fused


def test_prefill_chunks_are_cut_from_the_end():
    from squeezed_attention.context_attention import prefill_chunks

    assert prefill_chunks(37, 16) == [(0, 5), (5, 21), (21, 37)]
    assert prefill_chunks(16, 16) == [(0, 16)]
    assert prefill_chunks(3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert prefill_chunks(5, 0, 2) == [(0, 3), (3, 4), (4, 5)]          # the tail selects per token, the rest together
    assert prefill_chunks(3, 0, 16) == [(0, 1), (1, 2), (2, 3)]         # a tail longer than the prompt: every token
    assert prefill_chunks(10, 3, 4) == [(0, 3), (3, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    assert prefill_chunks(4, 0, 0) == [(0, 4)]
    with pytest.raises(Exception, match="prefill-tail"):
        AttentionChoice("top-k", kv_budget=0.125, prefill_tail=-1)
    with pytest.raises(Exception, match="prefill-rows"):
        AttentionChoice("top-k", kv_budget=0.125, prefill_rows=-1)


def test_prefill_selection_per_chunk_is_one_rule_in_every_lookup():
    """--prefill-rows N: every chunk of N prompt tokens (cut from the end) selects its own keys, and the torch lookup,
    the numpy fallback and the native kernels pick the same keys for each chunk; a chunk as long as the prompt is the
    single selection exactly, and each chunk's context partial is that of the chunk alone."""
    gen = small_generator(hierarchical=False)
    prompt = "What is the pass key mentioned in the text above? Answer with the number only, please."
    ids = torch.tensor(gen.prompt_ids(prompt))
    T = len(ids)
    has_native = shutil.which(os.environ.get("CXX", "g++")) is not None and native.available()
    backends = ("torch", "numpy") + (("native",) if has_native else ())

    def run(rows, backend, tail=0):
        choice = AttentionChoice("top-k", keep_fraction=0.1, backend=backend, prefill_rows=rows, prefill_tail=tail,
                                 exact_tail=0, exact_head=0)
        logits = gen.model.step(ids, gen.model.new_cache(T), position_offset=gen.pack.num_tokens,
                                context=gen.context(choice), logits="all")
        return logits, gen.generate(prompt, choice, max_new_tokens=6, stop_at_eos=False).token_ids

    one, one_tokens = run(0, "torch")
    assert torch.equal(run(T, "torch")[0], one)                      # one chunk = one selection, bit for bit
    chunked, chunked_tokens = run(4, "torch")
    assert not torch.equal(chunked, one)                             # the chunks do select differently
    for backend in backends[1:]:
        logits, tokens = run(4, backend)
        assert tokens == chunked_tokens, backend
        assert (logits - chunked).abs().max().item() < 1e-3, backend
    # --prefill-rows 1 (every token selects, as a decode step does): the native kernels do it in one call per layer
    per_token, per_token_tokens = run(1, "torch")
    for backend in backends[1:]:
        logits, tokens = run(1, backend)
        assert tokens == per_token_tokens, backend
        assert (logits - per_token).abs().max().item() < 1e-2, backend
    # --prefill-tail 5 (the default's shape: the last tokens per token, the rest one selection): one rule everywhere,
    # and a tail as long as the prompt is --prefill-rows 1
    tail, tail_tokens = run(0, "torch", 5)
    assert not torch.equal(tail, one) and not torch.equal(tail, per_token)
    for backend in backends[1:]:
        logits, tokens = run(0, backend, 5)
        assert tokens == tail_tokens, backend
        assert (logits - tail).abs().max().item() < 1e-2, backend
    assert torch.equal(run(0, "torch", T)[0], per_token)
    # per chunk: the context partial of rows [a, b) is the chunk's own selection over those rows only
    ctx = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend="torch", prefill_rows=4, prefill_tail=0, exact_tail=0, exact_head=0,
                                      exact_decode=0))   # the later calls select as the prompt's chunks do
    q = user_queries(gen, prompt)[12]
    out, lse = ctx.attend(12, q)
    ctx.spec.prefill_rows = 0
    from squeezed_attention.context_attention import prefill_chunks

    for a, b in prefill_chunks(T, 4):
        ref_out, ref_lse = ctx.attend(12, q[:, a:b])
        assert torch.equal(out[:, a:b], ref_out) and torch.equal(lse[:, a:b], ref_lse)


def test_full_attention_over_a_pack_matches_plain_decoding():
    """The context-partial + dynamic-partial merge reproduces one causal pass over context + prompt."""
    gen = small_generator()
    model = real_model()
    prompt_ids = gen.prompt_ids("What is the pass key?")
    all_ids = torch.cat([gen.pack.token_ids, torch.tensor(prompt_ids)])
    plain = model.step(all_ids, model.new_cache(len(all_ids)), logits="all")[-len(prompt_ids):]
    # Same context KV as the pack, but kept in fp32 (the pack stores fp16).
    cache = model.new_cache(len(gen.pack.token_ids))
    model.step(gen.pack.token_ids, cache, logits="none")
    dense = DenseContext(cache.keys, cache.values)
    merged = model.step(torch.tensor(prompt_ids), model.new_cache(len(prompt_ids)),
                        position_offset=gen.pack.num_tokens, context=dense, logits="all")
    assert (merged - plain).abs().max().item() < 1e-3


def test_hierarchical_lookup_scores_fewer_centroids_and_matches_flat():
    # ~1500 tokens: 70 level-2 and 14 level-1 clusters per head (on tiny contexts the level-1 overhead
    # and the 4x level-1 keep factor leave nothing to save).
    gen = Generator(real_model(), real_checkpoint().tokenizer, small_pack(True, "chat", 1500))
    pack, tables = gen.pack, gen.tables
    queries = user_queries(gen)
    keep = 0.1
    flat = make_context(pack, AttentionChoice("top-k", keep_fraction=keep), tables)
    hier = make_context(pack, AttentionChoice("top-k", keep_fraction=keep, hierarchical=True), tables)
    overlaps = []
    for layer in range(pack.config.num_layers):
        q = queries[layer][:, -1:]
        a = select_keys(tables, layer, q, flat.spec)
        b = select_keys(tables, layer, q, hier.spec)
        assert b.centroids_scored < a.centroids_scored == pack.num_clusters
        for ra, rb in zip(a.indices.tolist(), b.indices.tolist()):
            overlaps.append(len(set(ra) & set(rb)) / len(ra))
    # Stated tolerance: on average >= 70% of the keys a flat lookup keeps are also kept hierarchically.
    assert np.mean(overlaps) >= 0.7, np.mean(overlaps)
    # And the next-token distribution stays close to the flat lookup's.
    ids = torch.tensor(gen.prompt_ids("What is the pass key? Answer with the number only."))
    logits = [gen.model.step(ids, gen.model.new_cache(len(ids)), position_offset=pack.num_tokens, context=c)
              for c in (flat, hier)]
    p, q = torch.log_softmax(logits[0].double(), -1), torch.log_softmax(logits[1].double(), -1)
    assert float((p.exp() * (p - q)).sum()) < 0.05
    assert int(logits[0].argmax()) == int(logits[1].argmax())


def test_gqa_per_query_head_selection_differs_within_a_group():
    gen = small_generator()
    q = user_queries(gen)[10][:, -1:]
    sel = select_keys(gen.tables, 10, q, SelectionSpec("budget", budget_keys=40, per_query_head=True))
    assert sel.indices.shape == (9, 40)
    groups = sel.indices.reshape(3, 3, 40)
    assert any(not torch.equal(g[0], g[1]) or not torch.equal(g[0], g[2]) for g in groups)


def test_threshold_mode_keeps_about_the_calibrated_fraction():
    gen = small_generator()
    ctx = make_context(gen.pack, AttentionChoice("threshold", keep_fraction=0.2, prefill_tail=0, exact_tail=0, exact_head=0), gen.tables)
    ids = torch.tensor(gen.prompt_ids("What is the pass key?"))
    gen.model.step(ids, gen.model.new_cache(len(ids)), position_offset=gen.pack.num_tokens, context=ctx)
    kept = ctx.stats.mean_kept() / gen.pack.num_clustered
    assert ctx.stats.calls == 30 and 0.02 < kept < 0.6, kept
    assert math.isfinite(kept)


@pytest.mark.parametrize("per_query_head", [False, True])
def test_threshold_mode_is_monotonic_in_the_keep_fraction(per_query_head):
    """A larger --threshold-keep never keeps fewer keys: the calibrated thresholds fall as the keep fraction grows
    (also between grid points), and the keys each head keeps at one fraction are a subset of those it keeps at any
    larger one (torch lookup and numpy fallback alike)."""
    gen = small_generator(hierarchical=False)
    pack, tables = gen.pack, gen.tables
    fractions = [0.01, 0.05, 0.1, 0.125, 0.2, 0.225, 0.3, 0.33, 0.5, 0.75, 0.99]
    thresholds = [pack.threshold_for(f, per_query_head) for f in fractions]
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:])), thresholds
    queries = user_queries(gen)
    np_tables = NumpyTables.from_torch(tables)
    for layer in (0, 7, 15, 29):
        previous = None
        for f, thr in zip(fractions, thresholds):
            spec = SelectionSpec("threshold", threshold=thr, per_query_head=per_query_head)
            sel = select_keys(tables, layer, queries[layer], spec)
            kept = [set(i[v].tolist()) for i, v in zip(sel.indices, sel.valid)]
            idx, valid, _ = select_keys_numpy(np_tables, layer, queries[layer].numpy(), spec)
            assert kept == [set(i[v].tolist()) for i, v in zip(idx, valid)]
            if previous is not None:
                assert all(a <= b for a, b in zip(previous, kept)), (layer, f)
            previous = kept
        assert sum(map(len, previous)) > 0


def test_real_passkey_passes_with_the_default_budget():
    from squeezed_attention.generation import DEFAULT_KV_BUDGET

    gen = small_generator(hierarchical=False)
    case, _ = passkey_case()
    for choice in (AttentionChoice("full"), AttentionChoice("top-k", kv_budget=DEFAULT_KV_BUDGET),
                   AttentionChoice("top-k", kv_budget=DEFAULT_KV_BUDGET, hierarchical=False, backend="numpy")):
        result = gen.generate(case.question, choice, max_new_tokens=12)
        assert case.answer in result.text, (choice, result.text)


def test_without_the_kernel_auto_falls_back_to_torch_and_native_is_refused(monkeypatch):
    from squeezed_attention.errors import SqueezeError

    monkeypatch.setitem(native._state, "loaded", False)
    monkeypatch.setitem(native._state, "error", "CalledProcessError: g++ not found")
    gen = small_generator()
    ctx = make_context(gen.pack, AttentionChoice("top-k", keep_fraction=0.2), gen.tables)
    assert not ctx.fused and ctx.backend == "torch"
    with pytest.raises(SqueezeError, match="could not be built .*g\\+\\+ not found.*--lookup torch"):
        make_context(gen.pack, AttentionChoice("top-k", keep_fraction=0.2, backend="native"), gen.tables)


@pytest.mark.parametrize("backend", ["torch", "numpy", "native"])
def test_question_level_selection_holds_the_prompts_selection(backend):
    """decode_selection="question": the first call per layer (the prompt's prefill) selects, later calls (decode
    steps) attend over exactly those keys and summaries without selecting again; the same in every lookup path;
    per-step selection (the default) selects in every call."""
    if backend == "native":
        require_fused_kernel()
    gen = small_generator(hierarchical=False)
    q = user_queries(gen, "What is the pass key? Answer with the number only.")
    layer = 12
    held = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, decode_selection="question",
                                       prefill_tail=0, exact_tail=0, exact_head=0))
    step = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, prefill_tail=0, exact_tail=0, exact_head=0,
                                       exact_decode=0))
    held.attend(layer, q[layer])
    calls = held.stats.calls
    one = q[layer][:, -1:] * 1.7 + 0.3          # a decode-step query unlike the prompt's
    out, lse = held.attend(layer, one)
    assert held.stats.calls == calls             # no new selection
    # the reference: the prompt's selection made explicitly, applied to the new query
    ref = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend="torch", prefill_tail=0, exact_tail=0, exact_head=0))
    idx, valid = ref.select(layer, q[layer])
    keys, values, mask = ref._selected_rows(layer, idx, valid)
    from squeezed_attention.context_attention import attention_with_lse, grouped_queries, merge_partials

    g = grouped_queries(one, ref.num_kv_heads, ref.spec.per_query_head)
    r_out, r_lse = merge_partials(*attention_with_lse(g, keys, values, ref.scale, mask), *ref._summaries(layer, g, idx, valid))
    assert (out - r_out.reshape(out.shape)).abs().max().item() < 1e-4
    step.attend(layer, q[layer])
    before = step.stats.calls
    s_out, _ = step.attend(layer, one)
    assert step.stats.calls == before + 1 and not torch.allclose(s_out, out)   # per step: a new selection
    with pytest.raises(Exception, match="decode-selection"):
        AttentionChoice("top-k", kv_budget=0.125, decode_selection="sometimes")


@pytest.mark.parametrize("backend", ["torch", "numpy", "native"])
def test_exact_prompt_tail_attends_every_key_and_decode_selects(backend):
    """exact_tail (the default): the prompt's last tokens attend every context key in the first call per layer, the
    rows before them select; a tail as long as the prompt is full attention's prefill bit for bit; later calls
    (decode steps) select (exact_decode 0; the answer's opening: test_the_answers_first_decode_steps_attend_exactly);
    question-level selection holds the prompt's last token's selection. Every lookup path
    gives the same tokens."""
    from squeezed_attention.context_attention import DenseContext
    from squeezed_attention.settings import DEFAULT_EXACT_TAIL

    if backend == "native":
        require_fused_kernel()
    gen = small_generator(hierarchical=False)
    q = user_queries(gen, "What is the pass key? Answer with the number only.")
    layer, T = 12, q[12].shape[1]
    assert AttentionChoice("top-k", kv_budget=0.125).exact_tail == DEFAULT_EXACT_TAIL > 0
    dense = DenseContext(gen.pack.keys, gen.pack.values).attend(layer, q[layer])
    ctx = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_tail=T, exact_head=0, exact_decode=0))
    out = ctx.attend(layer, q[layer])
    assert torch.equal(out[0], dense[0]) and torch.equal(out[1], dense[1]) and ctx.stats.calls == 0
    ctx.attend(layer, q[layer][:, -1:])                                   # a decode step: selects
    assert ctx.stats.calls == 1
    part = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_tail=3, exact_head=0))
    sel = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_tail=0, exact_head=0))
    got = part.attend(layer, q[layer])
    head = sel.attend(layer, q[layer][:, :T - 3])
    assert torch.equal(got[0][:, :T - 3], head[0]) and torch.equal(got[0][:, T - 3:], dense[0][:, T - 3:])
    held = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_tail=3, exact_head=0,
                                       decode_selection="question"))
    held.attend(layer, q[layer])
    last = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend="torch", exact_tail=0, exact_head=0))
    want = last.select(layer, q[layer][:, -1:])[0]
    assert torch.equal(held._last_selection[layer][0].sort(-1).values, want.sort(-1).values)
    prompt = "What is the pass key mentioned in the text above?"
    tokens = {b: gen.generate(prompt, AttentionChoice("top-k", keep_fraction=0.1, backend=b), max_new_tokens=6,
                              stop_at_eos=False).token_ids for b in ("torch", backend)}
    assert tokens["torch"] == tokens[backend]


@pytest.mark.parametrize("backend", ["torch", "numpy", "native"])
def test_followed_keys_are_the_next_positions_of_the_most_weighed_keys(backend):
    """follow_keys F: the prompt's last row (exact tail: every clustered key) points at the positions after the F
    clustered keys it weighs most (softmax weight summed over a KV group's query heads, brute force here); the
    next decode step selects F keys fewer and attends the pointed keys it did not select; its attention equals
    one softmax over sinks + selection + followed keys + window + summaries; every lookup path gives the same
    tokens."""
    if backend == "native":
        require_fused_kernel()
    gen = small_generator(hierarchical=False)
    q = user_queries(gen, "What is the pass key? Answer with the number only.")
    layer, F = 17, 4
    pack = gen.pack
    ctx = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, follow_keys=F, exact_decode=0))
    _, lse = ctx.attend(layer, q[layer])                                   # the prompt: exact tail
    first, Nc, Hkv = ctx.first_position, ctx.num_clustered, ctx.num_kv_heads
    G = q[layer].shape[0] // Hkv
    keys = pack.keys[layer].double()                                       # [Hkv, N, D]
    last = q[layer][:, -1].double().reshape(Hkv, G, -1)
    scores = torch.einsum("hgd,hnd->hgn", last, keys) / math.sqrt(keys.shape[-1])
    weights = torch.softmax(scores, -1)[..., first:first + Nc].sum(1)    # every context key in the softmax
    want = weights.topk(F, -1).indices + first + 1
    want = torch.where(want < first + Nc, want, -1)
    assert torch.equal(ctx._follow[layer].sort(-1).values, want.sort(-1).values)
    # the decode step: budget keys = selection (B - F) + the fresh followed keys
    step_q = q[layer][:, -1:]
    out, lse = ctx.attend(layer, step_q)
    idx, valid = ctx._last_selection[layer]
    B = ctx.spec.budget_keys
    assert idx.shape[1] == B - F
    fresh = [[p for p in want[h].tolist() if p >= 0 and p not in idx[h].tolist()] for h in range(Hkv)]
    # reference: one softmax over sinks, selected, fresh followed keys, window and the selection's summaries
    for h in range(Hkv):
        positions = list(range(first)) + sorted(idx[h].tolist()) + fresh[h] + list(range(first + Nc, pack.num_tokens))
        k = keys[h, positions]
        v = pack.values[layer][h, positions].double()
        bias = ctx._summary_bias(layer, idx, valid)[h].double()
        cent = ctx.summary_keys[layer][h].double()
        qh = step_q[h * G:(h + 1) * G, 0].double()
        logits = torch.cat([qh @ k.T, qh @ cent.T], -1) / math.sqrt(k.shape[-1])
        logits[:, k.shape[0]:] += bias
        w = torch.softmax(logits, -1)
        ref = w[:, :k.shape[0]] @ v + w[:, k.shape[0]:] @ ctx.summary_values[layer][h].double()
        assert torch.allclose(out[h * G:(h + 1) * G, 0].double(), ref, atol=2e-5)
        assert torch.allclose(lse[h * G:(h + 1) * G, 0].double(), torch.logsumexp(logits, -1), atol=2e-5)
    # the step points the next one: the same positions as the torch path's (the native kernel does it in C++)
    ref = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend="torch", follow_keys=F, exact_decode=0))
    ref.attend(layer, q[layer])
    ref.attend(layer, step_q)
    assert torch.equal(ctx._follow[layer].sort(-1).values, ref._follow[layer].sort(-1).values)
    assert (ctx._follow[layer] >= 0).any()
    prompt = "What is the pass key mentioned in the text above?"
    tokens = {b: gen.generate(prompt, AttentionChoice("top-k", keep_fraction=0.1, backend=b, follow_keys=F),
                              max_new_tokens=8, stop_at_eos=False).token_ids for b in ("torch", backend)}
    assert tokens["torch"] == tokens[backend]
    with pytest.raises(Exception, match="follow-keys"):
        AttentionChoice("top-k", kv_budget=0.125, follow_keys=4, decode_selection="question")
    with pytest.raises(Exception, match="follow-keys"):
        AttentionChoice("threshold", kv_budget=0.125, follow_keys=4)
    with pytest.raises(Exception, match="leaves no keys"):
        gen.context(AttentionChoice("top-k", keep_keys=4, follow_keys=4))


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_the_answers_first_decode_steps_attend_exactly(backend):
    """exact_decode N: the first N decode steps attend every context key as the prompt's exact tail does (full
    attention's partial, bit for bit, and the pointer for the next step from every clustered key); step N+1 selects
    again: teacher-forced, the first N+1 next-token distributions are full attention's bit for bit."""
    if backend == "native":
        require_fused_kernel()
    gen = small_generator(hierarchical=False)
    q = user_queries(gen, "What is the pass key? Answer with the number only.")
    layer, N = 17, 2
    dense = DenseContext(gen.pack.keys, gen.pack.values)
    ctx = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_decode=N))
    ctx.attend(layer, q[layer])                                            # the prompt (exact tail)
    calls = ctx.stats.calls
    for step in range(N):                                                  # the opening: exact, no lookup
        row = q[layer][:, step:step + 1]
        got, want = ctx.attend(layer, row), dense.attend(layer, row)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and ctx.stats.calls == calls
    ctx.attend(layer, q[layer][:, N:N + 1])                                # then it selects again
    assert ctx.stats.calls == calls + 1
    # one token per step, teacher-forced: the first call (the prompt) attends exactly, then the first n decode steps
    # do, so the first n + 1 next-token distributions are full attention's bit for bit, and the step after is not
    from squeezed_attention.evaluate import continuation_metrics

    ids = gen.tokenizer.encode(" What is the pass key mentioned in the text above? The pass key is")
    full, _ = continuation_metrics(gen, AttentionChoice("full"), ids)
    for n in (3, 6):
        got, _ = continuation_metrics(gen, AttentionChoice("top-k", keep_fraction=0.05, backend=backend,
                                                           exact_decode=n, exact_below=0), ids)
        assert torch.equal(got[:n + 1], full[:n + 1])
        assert not torch.equal(got[n + 1], full[n + 1])
    with pytest.raises(Exception, match="exact-decode"):
        AttentionChoice("top-k", kv_budget=0.125, exact_decode=4, decode_selection="question")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_an_unsure_selecting_step_runs_again_exactly(backend):
    """exact_below p: a selecting decode step whose top token is less likely than p runs again over the same cache
    slot attending every context key. Teacher-forced after an exact opening of n steps, the first selecting step
    (top probability q) re-run (p just above q) gives full attention's distribution bit for bit (the cache rewound:
    a re-run written one slot further would not), and with p just below q it stays the selecting step's; the
    metrics count the re-runs; generate reports them."""
    from squeezed_attention.evaluate import continuation_metrics
    from squeezed_attention.settings import DEFAULT_EXACT_BELOW, top_probability

    if backend == "native":
        require_fused_kernel()
    gen = small_generator(hierarchical=False)
    ids = gen.tokenizer.encode(" What is the pass key mentioned in the text above? The pass key is")
    full, _ = continuation_metrics(gen, AttentionChoice("full"), ids)
    n = 3
    choice = lambda p: AttentionChoice("top-k", keep_fraction=0.05, backend=backend, exact_decode=n,  # noqa: E731
                                       exact_below=p)
    plain, m0 = continuation_metrics(gen, choice(0), ids, full)
    assert m0["rerun_steps"] == 0 and not torch.equal(plain[n + 1], full[n + 1])
    q = top_probability(plain[n + 1].numpy())   # log-probabilities are logits too
    above, m1 = continuation_metrics(gen, choice(min(q + 1e-6, 0.999999)), ids, full)
    assert torch.equal(above[:n + 2], full[:n + 2]) and m1["rerun_steps"] >= 1
    below, m2 = continuation_metrics(gen, choice(q - 1e-6), ids, full)
    assert torch.equal(below[n + 1], plain[n + 1])
    # each later step re-ran where its own selecting distribution was less sure than p: a higher p re-runs more
    assert m2["rerun_steps"] <= m1["rerun_steps"] <= continuation_metrics(gen, choice(0.999999), ids, full)[1]["rerun_steps"]
    # the default and the label; full attention re-runs nothing
    assert AttentionChoice("top-k", kv_budget=0.125).exact_below == DEFAULT_EXACT_BELOW
    assert AttentionChoice("full").exact_below == 0
    assert "re-run exactly" in choice(0.5).label() and "not re-run" in choice(0).label()
    r = gen.generate("What is the pass key?", choice(0.999999), max_new_tokens=8, stop_at_eos=False)
    assert r.exact_below == 0.999999 and 1 <= r.rerun_steps <= r.decode_tokens - n
    assert gen.generate("What is the pass key?", AttentionChoice("full"), max_new_tokens=2).rerun_steps is None
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(Exception, match="exact-below"):
            AttentionChoice("top-k", kv_budget=0.125, exact_below=bad)
    with pytest.raises(Exception, match="exact-below"):
        AttentionChoice("top-k", kv_budget=0.125, exact_below=0.3, decode_selection="question")
    with pytest.raises(Exception, match="exact-decode"):
        AttentionChoice("top-k", kv_budget=0.125, exact_decode=-1)
