"""The decoder as a Core ML ML program (issue: decoder export 2/2): the split plan's stage graphs as the functions
of one iOS 18 multifunction .mlpackage, verified token for token against PyTorch through the MIL evaluator
(the saved program's semantics in numpy; Apple's runtime needs macOS), on a one-layer tiny GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from squeeze_mobile.errors import SqueezeError
from squeezed_attention import testing
from squeezed_attention.decoder_export import export_decoder

SHAPES = dict(max_context=160, max_prompt=64, max_new=16)
TINY_TEXT = " ".join(["ab an ss abba nan sass"] * 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_coreml")
    gguf = testing.write_tiny_llama_gguf(d / "tiny.gguf", layers=1, quantized=False)
    (d / "doc.txt").write_text(TINY_TEXT)
    result = export_decoder(d / "artifacts", formats=("coreml",), model_path=gguf, attention="squeezed", kv_budget=0.3,
                            verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    return d, gguf, result


def test_coreml_decoder_is_one_multifunction_program_verified_against_pytorch(exported):
    from export.backends.coreml_mil import load_program

    d, _, result = exported
    out = d / "artifacts"
    assert result.ok, result.manifest["failures"]
    manifest = json.loads((out / "manifest.json").read_text())
    (a,) = manifest["artifacts"]
    assert a["format"] == "coreml" and a["file"].endswith(".mlpackage") and (out / a["file"]).is_dir()
    assert a["decoder"]["lookup_plan"] == "split" and a["deployment_target"] == "iOS18"
    v = a["verification"]
    assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"] == 3 and v["psnr_db"] >= 60, v
    methods = a["decoder"]["methods"]
    # the exact prompt tail (the host's default) as functions of their own: prefill_exact_<s>; the answer's opening
    # (the host's default 16 exact decode steps, capped at --max-new) as their one-token copies, decode_exact_<s>
    assert a["decoder"]["exact_tail"] == 32 and a["decoder"]["exact_decode"] == min(16, SHAPES["max_new"])
    assert set(methods) == {f"{m}_{s}" for m in ("prefill", "decode", "prefill_exact", "decode_exact") for s in (0, 1)}
    assert a["functions"] == 8
    # integer inputs are int32 in the file; outputs are stored as out_<name> (a stage's input and output share names)
    inputs = {i["name"]: i for i in methods["decode_1"]["inputs"]}
    assert inputs["cache_len"]["dtype"] == "int32" and inputs["hidden"]["dtype"] == "float32"
    assert methods["decode_0"]["output_tensors"] == ["out_" + n for n in methods["decode_0"]["outputs"]]
    program = load_program(out / a["file"])
    assert set(program.functions) == set(methods)
    for name, fn in program.functions.items():
        ops = {op.op_type for op in fn.operations}
        # the split plan's point: no top-k in any function (the CPU lookup runs between them)
        assert "topk" not in ops, (name, sorted(ops))
        assert [v.name for v in fn.outputs] == methods[name]["output_tensors"]


def test_coreml_artifact_answers_through_the_session_like_pytorch(exported):
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    d, gguf, _ = exported
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, TINY_TEXT, BuildSettings())
    path = save_context_pack(pack, d / "tiny.pack")
    session = DecoderSession(d / "artifacts", fmt="coreml")
    session.attach(path)
    got = session.generate("ab an", max_new_tokens=6, stop_at_eos=False)
    ref = Generator(model, ck.tokenizer, pack).generate(
        "ab an", AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch", prefill_rows=session.loop.prefill_rows,
                                  prefill_tail=session.loop.prefill_tail,
                                  exact_tail=session.loop.exact_tail), max_new_tokens=6,
        stop_at_eos=False)
    session.close()
    assert got.token_ids == ref.token_ids and len(got.token_ids) == 6
    assert got.lookup.startswith("split") and np.isfinite(got.prefill_seconds)


def test_coreml_decoder_refusals(exported, tmp_path):
    _, gguf, _ = exported
    with pytest.raises(SqueezeError, match="split lookup plan only"):
        export_decoder(tmp_path / "a", formats="coreml", model_path=gguf, lookup_plan="in-graph", verify=False, **SHAPES)
    with pytest.raises(SqueezeError, match="--weights must be one of"):
        export_decoder(tmp_path / "b", formats="coreml", model_path=gguf, weights="int2", verify=False, **SHAPES)


@pytest.mark.parametrize("weights, constexpr_op", [("int8", "constexpr_blockwise_shift_scale"),
                                                   ("int4", "constexpr_blockwise_shift_scale")])
def test_coreml_decoder_weights_are_compressed_and_judged_against_fp32(exported, tmp_path, weights, constexpr_op):
    """--weights int8|int4 for Core ML: every weight matrix of every function (projections, MLP, head, embedding)
    is stored compressed (constexpr ops, decompressed at load), the graph's own tables (RoPE, masks) and the norm
    vectors stay float, and the artifact is judged teacher-forced against fp32 by the MIL evaluator."""
    import coremltools as ct

    d, gguf, _ = exported
    export_decoder(tmp_path / "q", formats=("coreml",), model_path=gguf, attention="squeezed", kv_budget=0.3,
                   verify_text=d / "doc.txt", verify_tokens=8, weights=weights, **SHAPES)
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["weights"] == weights and art["file"].endswith(".mlpackage")
    q = art["quantization"]
    assert q["compressed_weight_fraction"] == 1.0 and set(q["functions"]) == set(art["decoder"]["methods"])
    assert all(f["compressed_elements"] == f["weight_elements"] > 0 for f in q["functions"].values())
    v = art["verification"]
    assert v["status"] == "pass" and v["weights"] == weights, v
    spec = ct.models.MLModel(str(tmp_path / "q" / art["file"]), skip_model_load=True).get_spec()
    for fn in spec.mlProgram.functions.values():
        ops = fn.block_specializations[fn.opset].operations
        assert any(op.type == constexpr_op for op in ops)
        for op in ops:                                   # nothing but parameter matrices was compressed
            if op.type.startswith("constexpr_"):
                assert op.outputs[0].name.startswith("p_"), op.outputs[0].name


def test_bench_lists_the_coreml_decoder_as_not_timed_off_macos(exported, tmp_path):
    from bench.decoder import run_decoder_benchmark
    from export.backends.coreml_backend import ON_MACOS

    if ON_MACOS:
        pytest.skip("on macOS the Core ML decoder is timed with Apple's runtime")
    d, _, _ = exported
    with pytest.raises(SqueezeError, match="not timed off macOS"):
        run_decoder_benchmark(d / "artifacts", out_dir=tmp_path / "b", contexts=(512,))


def test_coreml_int4_stores_a_q4_1_model_on_its_own_grid(tmp_path):
    """A decoder read from a Q4_1 / Q8_0 GGUF exported with --weights int4: the weights the saved program
    decompresses (the MIL evaluator's materialised constants) equal the model's own weights, layer matrices (4-bit
    blocks with float offsets) and embedding/head (8-bit blocks) alike."""
    from export.backends.coreml_mil import MILProgram, load_program
    from squeezed_attention.weights import load_checkpoint

    gguf = testing.write_tiny_llama_gguf(tmp_path / "q41.gguf", layers=1, quantized="Q4_1")
    export_decoder(tmp_path / "a", formats=("coreml",), model_path=gguf, attention="squeezed", weights="int4",
                   verify=False, **SHAPES)
    art = json.loads((tmp_path / "a" / "manifest.json").read_text())["artifacts"][0]
    sd = {k: v.float().numpy() for k, v in load_checkpoint(str(gguf)).state_dict.items()}
    # the exported graph's weights (exportable.FusedLayer): q|k|v and gate|up as one matrix each
    state = {"p_decoder_embed_tokens_weight_grid": sd["model.embed_tokens.weight"],
             "p_decoder_lm_head_weight_grid": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}   # tied
    layer = "model.layers.0."
    state["p_decoder_layers_0_qkv_weight_grid"] = np.concatenate(
        [sd[layer + f"self_attn.{p}_proj.weight"] for p in "qkv"])
    state["p_decoder_layers_0_gate_up_weight_grid"] = np.concatenate(
        [sd[layer + f"mlp.{p}_proj.weight"] for p in ("gate", "up")])
    state["p_decoder_layers_0_o_proj_weight_grid"] = sd[layer + "self_attn.o_proj.weight"]
    state["p_decoder_layers_0_down_proj_weight_grid"] = sd[layer + "mlp.down_proj.weight"]
    path = tmp_path / "a" / art["file"]
    prog = load_program(path)
    matched = set()
    for function in prog.functions:
        for name, value in MILProgram(path, function, program=prog).constants.items():
            if name.endswith("_grid"):
                assert name in state, name
                ref = state[name]
                got = np.asarray(value, np.float32)
                got = got if got.shape == ref.shape else got.T
                assert np.abs(got - ref).max() < 1e-5, name
                matched.add(name.split("_layers_0_")[-1])
    assert {"qkv_weight_grid", "gate_up_weight_grid", "o_proj_weight_grid", "down_proj_weight_grid"} <= matched, matched
    assert any("lm_head" in n or "embed_tokens" in n for n in matched), matched


def test_pte_for_the_core_ml_delegate(exported, tmp_path):
    """`squeeze export decoder --formats pte --pte-backend coreml`: the full-attention program's graph goes to Core ML
    whole with the KV cache as iOS 18 state (only the cache writes stay on ExecuTorch's CPU kernels), squeezed attention
    takes the split plan (every stage graph one Core ML partition, the lookup on the CPU between them); verification
    and the answer loop say why they cannot run off Apple platforms; options the delegate does not take fail first."""
    import sys

    from squeezed_attention.decoder_session import DecoderSession

    d, gguf, _ = exported
    out = tmp_path / "coreml_pte"
    for bad, match in ((dict(weights="int8"), "built for the XNNPACK delegate"),
                       (dict(lookup_plan="in-graph"), "takes the split lookup plan")):
        with pytest.raises(SqueezeError, match=match):
            export_decoder(out, formats="pte", model_path=gguf, attention="squeezed", pte_backend="coreml", **bad, **SHAPES)
    assert not out.exists()
    result = export_decoder(out, formats="pte", model_path=gguf, attention=["squeezed", "full"], kv_budget=0.3,
                            pte_backend="coreml", verify_text=d / "doc.txt", verify_tokens=4, **SHAPES)
    assert not result.failures, result.failures
    arts = {a["decoder"]["attention"]: a for a in result.manifest["artifacts"]}
    sq, full = arts["squeezed"], arts["full"]
    assert sq["pte_backend"] == full["pte_backend"] == "coreml" and "_coreml" in sq["file"] and "_coreml" in full["file"]
    assert sq["decoder"]["lookup_plan"] == "split" and full["decoder"]["state"] == "buffer"
    for stage, info in sq["delegation"].items():       # each stage graph: one Core ML partition, nothing on the CPU
        assert info["delegated_subgraphs"] == 1 and set(info["portable_ops"]) <= {"getitem"}, (stage, info)
    for method in ("prefill", "decode"):                # the whole step, the cache writes excepted
        info = full["delegation"][method]
        assert info["delegated_subgraphs"] == 1 and set(info["portable_ops"]) <= {"getitem", "aten_index_put_default"}
        assert info["by_operator"]["aten_index_put_default"]["portable"] == 2   # K and V of the one layer
    if sys.platform != "darwin":
        assert sq["verification"]["status"] == full["verification"]["status"] == "not run"
        assert "macOS" in sq["verification"]["reason"]
        with pytest.raises(SqueezeError, match="cannot run here"):
            DecoderSession(out, fmt="pte", attention="squeezed")
