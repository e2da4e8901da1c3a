"""The split lookup plan (issue: decoder export 2/2, part 1): static graphs per layer with the centroid lookup on
the CPU between them, for delegates without top-k/gather (LiteRT GPU, Core ML). Exported to .tflite (its only
plan) and .pte on a tiny real GGUF; tokens identical to the in-graph plan and to PyTorch; the CPU lookup is
the in-graph rule (compared on random tables with ties, empty clusters and short packs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from squeeze_mobile.errors import SqueezeError
from squeezed_attention import testing
from squeezed_attention.decoder_export import (
    EagerRunner,
    contract_section,
    decoder_program,
    decoder_shapes,
    export_decoder,
)
from squeezed_attention.exportable import (
    DecoderShapes,
    ExportableDecoder,
    MASKED,
    pack_as_arrays,
)
from squeezed_attention.lookup_numpy import kept_rows

SHAPES = dict(max_context=160, max_prompt=64, max_new=16)
TINY_TEXT = " ".join(["ab an ss abba nan sass"] * 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import (
        BuildSettings,
        build_context_pack,
        save_context_pack,
    )
    from squeezed_attention.weights import load_checkpoint

    d = tmp_path_factory.mktemp("tiny_split")
    gguf = testing.write_tiny_llama_gguf(d / "tiny.gguf", layers=2, quantized=False)
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, TINY_TEXT, BuildSettings())
    save_context_pack(pack, d / "tiny.pack")
    (d / "doc.txt").write_text(TINY_TEXT)
    return d, gguf, model, ck, pack


@pytest.fixture(scope="module")
def exported(tiny):
    d, gguf, *_ = tiny
    out = d / "artifacts"
    # followed keys given (2): they apply to every pack, this tiny one included (the default's 4 needs 32 kept keys);
    # the answer's opening given (3; the default 16 would cover every answer these tests decode)
    result = export_decoder(out, formats=("tflite", "pte"), model_path=gguf, attention="squeezed", lookup_plan="split",
                            kv_budget=0.3, verify_text=d / "doc.txt", verify_tokens=8, follow_keys=2, exact_decode=3,
                            **SHAPES)
    return out, result


def _in_graph_rows(scores, counts, start, clustered, keep_keys, max_keep):
    """The in-graph plan's selection (ExportableDecoder._squeezed_rows after the scores) on given scores."""
    H, K = scores.shape
    D = clustered.shape[-1] // 2
    shapes = DecoderShapes(max_context=clustered.shape[1] + 4 + 100, max_prompt=1, max_new=1, max_clusters=K,
                           max_keep=max_keep)
    module = ExportableDecoder.__new__(ExportableDecoder)
    torch.nn.Module.__init__(module)
    module.shapes = shapes
    module.config = type("C", (), {"head_dim": D})()
    module.register_lookup_constants(H)
    captured = {}
    module.cluster_scores = lambda *a: (torch.from_numpy(scores), module.log_counts(torch.from_numpy(counts)), None)
    module.context_parts = lambda sink, kept, window, c, vc, slot_bias, summary_bias, qk=None: captured.update(
        kept=kept, slot_bias=slot_bias, summary_bias=summary_bias)
    flat = clustered.reshape(H * clustered.shape[1], 2 * D)                     # flat, as the pack's inputs
    mine = {"clustered_keys": torch.from_numpy(flat[:, :D].copy()), "clustered_values": torch.from_numpy(flat[:, D:].copy()),
            "counts": torch.from_numpy(counts),
            "cluster_start": torch.from_numpy(start), "centroids": None, "value_centroids": None, "sink_kv": None,
            "window_kv": None}
    module._squeezed_rows(torch.zeros(H, 1, D), mine, torch.tensor([keep_keys]), None)
    return captured


@pytest.mark.parametrize("seed,keep_keys,B", [(0, 30, 40), (1, 7, 40), (2, 1000, 40), (3, 1, 40), (4, 9, 10),
                                              (5, 30, 12)])
def test_cpu_lookup_is_the_in_graph_rule(seed, keep_keys, B):
    """kept_rows (numpy, between the split plan's graphs) keeps the rows, masks and summaries the in-graph plan
    does: padding clusters, empty clusters, a keep count above the pack's keys, a short pack, fewer slots than
    clusters (the graph ranks only the best B)."""
    rng = np.random.default_rng(seed)
    H, K, Nc, D = 3, 24, 90, 4
    counts = rng.integers(0, 7, (H, K)).astype(np.int64)
    counts[:, -5:] = 0                                     # padding clusters of a smaller pack
    counts[1, 3] = 0                                       # an empty cluster among real ones
    start = np.cumsum(counts, -1) - counts
    clustered = rng.standard_normal((H, Nc, 2 * D)).astype(np.float32)
    scores = rng.random((H, K)).astype(np.float32) * (counts > 0)
    ref = _in_graph_rows(scores, counts, start, clustered, keep_keys, B)
    keys, values = (np.ascontiguousarray(clustered[..., :D]), np.ascontiguousarray(clustered[..., D:]))
    flat = lambda x: x.reshape(H * Nc, D)  # noqa: E731  (the input layout)
    *kept, bias = kept_rows(scores, counts, start, flat(keys), flat(values), keep_keys, B)
    *kept_3d, bias_3d = kept_rows(scores, counts, start, keys, values, keep_keys, B)           # [H, Nc, D] views
    kept, kept_3d = np.concatenate(kept, -1), np.concatenate(kept_3d, -1)
    np.testing.assert_array_equal(kept, kept_3d)
    np.testing.assert_array_equal(bias, bias_3d)
    with pytest.raises(SqueezeError, match="must both be"):
        kept_rows(scores, counts, start, flat(keys)[1:], flat(values)[1:], keep_keys, B)   # rows not per head
    with pytest.raises(SqueezeError, match="must both be"):
        kept_rows(scores, counts, start, flat(keys), flat(values)[:-H], keep_keys, B)      # tables disagree
    used = np.isfinite(bias[:, :B])
    np.testing.assert_array_equal(used, ref["slot_bias"].numpy() == 0)
    np.testing.assert_array_equal(kept[used], torch.cat(ref["kept"], -1).numpy()[used])  # graph: (keys, values)
    summarised = np.isfinite(bias[:, B:])
    # the graph masks with -MASKED (float arithmetic a delegate runs), the CPU lookup with -inf: the same weights (0)
    np.testing.assert_array_equal(summarised & (counts > 0), ref["summary_bias"].numpy() > -MASKED / 2)
    assert (ref["slot_bias"].numpy()[~used] <= -MASKED).all()
    assert used.sum(-1).tolist() == np.minimum(min(keep_keys, B), counts.sum(-1)).tolist()


def test_split_stages_give_the_in_graph_logits_bit_for_bit(tiny):
    """The split plan's stages in PyTorch with the numpy lookup between them == the one-graph decoder."""
    from squeezed_attention.decoder_session import GenerationLoop
    from squeezed_attention.pack_arrays import decoder_context_inputs

    _, _, model, ck, pack = tiny
    shapes = decoder_shapes(model.config, kv_budget=0.3, **SHAPES)
    program, _ = decoder_program(model, shapes, "squeezed", "tflite", "split")
    assert program.names == [f"{m}_{s}" for m in ("prefill", "decode") for s in range(3)]

    arrays = pack_as_arrays(pack)
    context = decoder_context_inputs(arrays, shapes.to_dict(), "squeezed")
    contract = contract_section(shapes, "squeezed", "tflite", 0.3, {m.name: m.signature() for m in program.methods},
                                "split")
    split = GenerationLoop(EagerRunner(program), contract, arrays, context)
    one = GenerationLoop(EagerRunner(ExportableDecoder(model, shapes, "squeezed", "io").eval()),
                         {**contract, "lookup_plan": "in-graph"}, arrays, context)
    ids = ck.tokenizer.encode("\n\nab nan<|im_end|>\n<|im_start|>assistant\n")
    t1, l1 = split.greedy(ids, 10)
    t2, l2 = one.greedy(ids, 10)
    assert t1 == t2
    assert all(np.array_equal(a, b) for a, b in zip(l1, l2))
    assert split.lookup_seconds > 0


def test_split_artifacts_verified_and_gpu_compatible(exported):
    out, result = exported
    assert result.ok, result.manifest["failures"]
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["format"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"tflite", "pte"}
    for fmt, a in arts.items():
        assert "_split_" in a["file"]
        c = a["decoder"]
        assert c["lookup_plan"] == "split" and c["state"] == "io" and c["stages"] == 3
        # the exact prompt tail (the host's default, 32 tokens) as stages of its own, no lookup between them
        assert c["exact_tail"] == 32
        # and the answer's opening (exact_decode 3) as one-token copies of those stages, decode_exact_<s>
        assert c["exact_decode"] == 3
        assert set(c["methods"]) == {f"{m}_{s}" for m in ("prefill", "decode", "prefill_exact", "decode_exact")
                                     for s in range(3)}
        for s in range(3):
            exact, opening = c["methods"][f"prefill_exact_{s}"], c["methods"][f"decode_exact_{s}"]
            assert exact["outputs"] == opening["outputs"]
            assert [i["name"] for i in exact["inputs"]] == [i["name"] for i in opening["inputs"]]
        assert c["methods"]["decode_exact_0"]["inputs"][3]["shape"] == [1]
        exact_in = {i["name"]: i for i in c["methods"]["prefill_exact_1"]["inputs"]}
        assert exact_in["clustered_keys"]["shape"][0] == 2 and len(exact_in["clustered_keys"]["shape"]) == 3
        assert not {"kept_keys", "kept_bias", "centroids", "next_centroids"} & set(exact_in)
        assert c["methods"]["prefill_exact_0"]["outputs"] == ["hidden", "query", "key", "value"]
        # followed keys: every stage after a layer returns its last token's weights on the rows it attended
        assert c["follow_keys"] == 2 and c["follow_min_keep"] == 0
        assert c["methods"]["prefill_exact_1"]["outputs"] == ["hidden", "query", "key", "value", "follow_weights"]
        assert c["methods"]["decode_1"]["outputs"] == ["hidden", "query", "key", "value", "scores", "follow_weights"]
        assert c["methods"]["prefill_exact_0"]["inputs"][3]["shape"] == [32]
        assert [i["name"] for i in c["methods"]["decode_1"]["inputs"]][:4] == ["n_tokens", "cache_len", "context_len",
                                                                              "hidden"]
        assert c["methods"]["decode_2"]["outputs"] == ["logits", "follow_weights"]
        v = a["verification"]
        assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"] == 3 and v["psnr_db"] >= 60, v
    # the LiteRT GPU delegate takes every stage graph: no TOPK_V2 / GATHER left in them (TensorFlow's analyzer)
    gpu = arts["tflite"]["gpu_delegate"]
    assert gpu["android_gpu_delegate"] == "compatible", gpu
    assert not {"TOPK_V2", "GATHER", "GATHER_ND"} & set(gpu["ops"])
    tfl_inputs = {i["name"]: i["dtype"] for i in arts["tflite"]["decoder"]["methods"]["prefill_0"]["inputs"]}
    assert tfl_inputs["tokens"] == "int32"   # what the file declares, not what PyTorch traced


@pytest.mark.parametrize("fmt", ["tflite", "pte"])
def test_split_artifact_answers_like_pytorch(exported, tiny, fmt):
    """Tokens == the host decoder's with the same exact prompt tail and followed keys: the artifact's tail (32
    tokens: the whole question runs through prefill_exact_<s>), a 4-token tail after a selecting prefill, and none;
    the answer's first 3 steps run the one-token exact stages decode_exact_<s>, then decode steps keep F keys fewer
    and write the previous step's pointer rows into free slots (the first one an exact step's); with the opening
    overridden to 0 every decode step selects."""
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator

    out, _ = exported
    d, _, model, ck, pack = tiny
    calls = []
    # (the unsure steps' re-run off here, exact_below 0: below, every selecting step runs again)
    for tail, opening in ((None, None), (4, None), (0, None), (None, 0)):
        # (no exact head: the tail's own variants, the question's tokens before it selecting)
        session = DecoderSession(out, fmt=fmt, plan="split", exact_tail=tail, exact_decode=opening, exact_below=0,
                                 exact_head=0)
        session.attach(d / "tiny.pack")
        run = session.runner.run
        used = []   # kept slots in use per decode step of layer 0 (selection: keep_keys - 2, then fresh followed rows)
        session.runner.run = lambda method, feed: (calls.append(method), method == "decode_1" and used.append(
            int(np.isfinite(feed["kept_bias"][:, :feed["kept_keys"].shape[1]]).sum(-1).max())), run(method, feed))[2]
        got = session.generate("ab nan", max_new_tokens=10, stop_at_eos=False)
        assert session.loop.follow == 2
        keep = session.loop.keep_keys
        assert used and max(used) <= keep and any(u > keep - 2 for u in used), (used, keep)
        ref = Generator(model, ck.tokenizer, pack).generate(
            "ab nan", AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch",
                                      prefill_rows=session.loop.prefill_rows, prefill_tail=session.loop.prefill_tail,
                                      exact_tail=session.loop.exact_tail, exact_head=0, follow_keys=2,
                                      exact_decode=session.loop.exact_decode, exact_below=0), max_new_tokens=10,
            stop_at_eos=False)
        assert session.loop.exact_decode == (3 if opening is None else 0)
        session.close()
        assert got.token_ids == ref.token_ids, tail
        assert got.lookup.startswith("split")
        exact_calls = [c for c in calls if c.startswith("prefill_exact_")]
        assert exact_calls == ([] if tail == 0 else ["prefill_exact_0", "prefill_exact_1", "prefill_exact_2"]), tail
        assert ("prefill_0" in calls) == (tail != None), tail   # noqa: E711  (the whole question is exact at 32)
        stages = ["decode_exact_0", "decode_exact_1", "decode_exact_2"]
        assert [c for c in calls if c.startswith("decode_exact_")] == stages * session.loop.exact_decode
        assert calls.count("decode_0") == 9 - session.loop.exact_decode
        calls.clear()
    # every selecting step unsure (the tiny model's top tokens are far below 0.99): each decode step's stages, then the
    # one-token exact stages again, and the host's tokens with the same rule
    session = DecoderSession(out, fmt=fmt, plan="split", exact_below=0.99)
    session.attach(d / "tiny.pack")
    run = session.runner.run
    session.runner.run = lambda method, feed: (calls.append(method), run(method, feed))[1]
    got = session.generate("ab nan", max_new_tokens=10, stop_at_eos=False)
    opening = session.loop.exact_decode
    assert got.rerun_steps == len(session.loop.rerun_at) == 9 - opening > 0
    assert calls.count("decode_0") == 9 - opening and calls.count("decode_exact_0") == 9
    firsts = [c for c in calls if c in ("decode_0", "decode_exact_0")]
    assert firsts == ["decode_exact_0"] * opening + ["decode_0", "decode_exact_0"] * (9 - opening)
    ref = Generator(model, ck.tokenizer, pack).generate(
        "ab nan", AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch",
                                  exact_tail=session.loop.exact_tail, follow_keys=2, exact_decode=opening,
                                  exact_below=0.99), max_new_tokens=10, stop_at_eos=False)
    session.close()
    assert got.token_ids == ref.token_ids and ref.rerun_steps == got.rerun_steps


def test_split_generate_never_imports_torch(exported, tiny):
    """`squeeze generate --format tflite` (the split plan: LiteRT + the numpy lookup + tokenizer, the exact tail's
    stages included) answers without importing PyTorch, the command's own start-up included."""
    import subprocess
    import sys

    out, _ = exported
    d, *_ = tiny
    code = (
        "import sys, json\n"
        "from export.cli import main\n"
        f"rc = main(['generate', '--artifacts', {str(out)!r}, '--format', 'tflite', '--context-pack', "
        f"{str(d / 'tiny.pack')!r}, '--prompt', 'ab nan', '--max-new-tokens', '4', '--json'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["lookup"].startswith("split")


def test_plan_format_mismatches_are_refused(tiny, tmp_path):
    _, gguf, *_ = tiny
    with pytest.raises(SqueezeError, match="tflite takes the split lookup plan only"):
        export_decoder(tmp_path / "a", formats="tflite", model_path=gguf, lookup_plan="in-graph", verify=False, **SHAPES)
    with pytest.raises(SqueezeError, match="onnx takes the in-graph lookup plan only"):
        export_decoder(tmp_path / "b", formats="onnx", model_path=gguf, lookup_plan="split", verify=False, **SHAPES)
    with pytest.raises(SqueezeError, match="--lookup-plan must be one of"):
        export_decoder(tmp_path / "c", formats="pte", model_path=gguf, lookup_plan="cpu", verify=False, **SHAPES)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_bench_takes_the_split_step_apart(exported, tmp_path):
    """`squeeze bench` on split artifacts: one row each, and the decode step split by wall clock into graph calls
    (L + 1 per step), the CPU lookup and the loop's glue."""
    import subprocess
    import sys
    from pathlib import Path

    out, _ = exported
    report_dir = tmp_path / "bench"
    cmd = [sys.executable, "-m", "export.cli", "bench", str(out), "--out", str(report_dir), "--contexts", "2048",
           "--runs", "1", "--warmup", "0", "--rounds", "1", "--decode-tokens", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((report_dir / "report.json").read_text())
    rows = {r["format"]: r for r in report["rows"]}
    assert set(rows) == {"tflite", "pte"} and all(r["status"] == "ok" and r["lookup_plan"] == "split"
                                                  for r in rows.values())
    for e in report["lookup_share"]:
        assert e["status"] == "ok" and e["graph_calls_per_step"] == 3 and 0 < e["share"] < 1
        assert e["graph_ms"] > 0 and e["lookup_ms"] > 0
    assert "| tflite | squeezed (split)" in (report_dir / "report.md").read_text()


def test_tflite_int8_weights_with_the_litert_quantizer(tiny, tmp_path):
    """--weights int8 on .tflite: the LiteRT quantizer's dynamic-range recipe on the split artifact, still one
    signature per stage, verified against fp32 by next-token agreement (teacher-forced)."""
    d, gguf, *_ = tiny
    result = export_decoder(tmp_path / "q", formats="tflite", model_path=gguf, attention="squeezed", weights="int8",
                            kv_budget=0.3, verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    assert art["file"] == "decoder_squeezed_split_160_int8.tflite"
    assert art["weight_quantization"]["recipe"] == "dynamic_wi8_afp32"
    v = art["verification"]
    assert v["status"] == "pass" and v["top1_agreement"] >= 0.9, v
    fp32 = (d / "artifacts" / "decoder_squeezed_split_160_fp32.tflite")
    if fp32.exists():   # (the module's fp32 export) weights shrink about 4x; the graph's other constants do not
        assert art["bytes"] < fp32.stat().st_size
