"""The real SmolLM2-135M decoder exported to ONNX with Squeezed Attention in-graph, verified on a real pack, and
answering a pass-key question through onnxruntime exactly as the PyTorch decoder does (a few minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest

from squeezed_attention import testing
from squeezed_attention.decoder_export import export_decoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_decoder")
    result = export_decoder(out, formats=("onnx",), attention="squeezed", max_context=1024, max_prompt=64, max_new=32,
                            kv_budget=0.225, verify_context_tokens=900, verify_tokens=16)
    return out, result


def test_real_decoder_onnx_matches_pytorch(real_onnx):
    out, result = real_onnx
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    v = art["verification"]
    assert result.ok, v
    assert v["prompts_identical"] == v["prompts"] == 3 and v["psnr_db"] >= 60
    (pack,) = v["per_pack"]
    assert manifest["verification_inputs"]["packs"][0]["pass_key"] in pack["per_prompt"][0]["text"]  # answered
    assert manifest["model"]["weights_sha256"] == testing.real_checkpoint().weights_sha256


def test_real_pack_answered_through_the_runtime(real_onnx, tmp_path):
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.pack import save_context_pack

    out, _ = real_onnx
    pack = testing.small_pack(hierarchical=False)
    path = save_context_pack(pack, tmp_path / "passkey.pack")
    case, _ = testing.passkey_case()
    session = DecoderSession(out, fmt="onnx")
    session.attach(path)
    got = session.generate(case.question, max_new_tokens=16)
    ref = Generator(testing.real_model(), testing.real_checkpoint().tokenizer, pack).generate(
        case.question, AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch", prefill_rows=session.loop.prefill_rows,
                                  prefill_tail=session.loop.prefill_tail,
                                  exact_tail=session.loop.exact_tail), max_new_tokens=16)
    session.close()
    assert got.token_ids == ref.token_ids
    assert case.answer in got.text
