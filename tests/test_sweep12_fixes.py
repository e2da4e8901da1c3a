"""Fixes for what the stop-48 black-box sweep of the exported decoder's lifecycle found (a changed tokenizer.json or a
damaged artifact answered wrongly with exit 0, a cut manifest was a traceback, ...): each test fails on the code
before."""

import json
import shutil

import numpy as np
import pytest

from squeeze_mobile.errors import SqueezeError

from conftest import TINY_DECODER_TEXT as TINY_TEXT  # noqa: E402  (the tiny model's vocabulary)


@pytest.fixture(scope="module")
def tiny(tiny_onnx_decoder, tmp_path_factory):
    """The shared tiny export (copied: tests here damage files) and packs of this module's own."""
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    src, gguf = tiny_onnx_decoder
    d = tmp_path_factory.mktemp("tiny12")
    shutil.copytree(src / "art", d / "art")
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    save_context_pack(build_context_pack(model, ck, TINY_TEXT, BuildSettings()), d / "doc.pack")
    save_context_pack(build_context_pack(model, ck, TINY_TEXT, BuildSettings(observation_window=8)), d / "w8.pack")
    save_context_pack(build_context_pack(model, ck, "ab an ss abba nan " * 4, BuildSettings(observation_window=8)),
                      d / "short.pack")
    return d


def _copy(tiny, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(tiny / "art", out)
    return out


def test_a_changed_tokenizer_is_refused(tiny, tmp_path):
    """An edited vocabulary (two digits swapped) decoded other digits, exit 0: the manifest now records the file's
    sha256 and every loop checks it."""
    from squeezed_attention.decoder_session import DecoderSession

    art = _copy(tiny, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    assert len(manifest["tokenizer"]["sha256"]) == 64
    tok = json.loads((art / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (art / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(SqueezeError, match="is not the one the export wrote"):
        DecoderSession(art)


def test_logits_that_are_not_finite_are_one_line(tiny):
    """A damaged artifact computed NaN logits; argmax(NaN) is token 0, a stop token: an empty answer, exit 0."""
    from squeezed_attention.decoder_session import DecoderSession

    with DecoderSession(tiny / "art") as session:
        session.attach(tiny / "doc.pack")
        run = session.loop.runner.run

        def nan_logits(method, feed):
            out = dict(run(method, feed))
            out["logits"] = np.full_like(out["logits"], np.nan)
            return out

        session.loop.runner.run = nan_logits
        with pytest.raises(SqueezeError, match="logits that are not finite"):
            session.generate("ab an", max_new_tokens=2)


def test_bench_checks_each_artifacts_sha256_first(tiny, tmp_path):
    from bench.decoder import run_decoder_benchmark

    art = _copy(tiny, tmp_path)
    onnx = next(art.glob("*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF   # same size: the size check alone took it
    onnx.write_bytes(bytes(data))
    with pytest.raises(SqueezeError, match="sha256 differs from the manifest.*nothing was run"):
        run_decoder_benchmark(art, contexts=[512], runs=1, warmup=0, rounds=1, out_dir=tmp_path / "bench",
                              packs=[str(tiny / "doc.pack")], profile=False)
    assert not (tmp_path / "bench").exists()
    # verify fails it before rebuilding the verification pack (minutes on the real model)
    from squeezed_attention.decoder_export import verify_decoder_directory

    stages = []
    results = verify_decoder_directory(art, progress=lambda stage, msg: stages.append(msg))
    assert results[onnx.name] == {"status": "fail", "failures": [
        f"{onnx.name} differs from the file the manifest describes (sha256 differs from the manifest)"]}
    assert not any("rebuilding" in m for m in stages), stages


def test_a_cut_manifest_and_a_graph_of_other_shapes_are_one_line(tiny, tmp_path):
    from export.backends import get_backend
    from squeezed_attention.decoder_session import DecoderSession, read_decoder_manifest

    art = _copy(tiny, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    for field in ("shapes", "methods", "kv_budget"):
        cut = json.loads(json.dumps(manifest))
        cut["artifacts"][0]["decoder"].pop(field)
        (art / "manifest.json").write_text(json.dumps(cut))
        with pytest.raises(SqueezeError, match=f"is damaged: the record of .* has no (valid )?decoder.{field}"):
            read_decoder_manifest(art)
    (art / "manifest.json").write_text(json.dumps(manifest))
    record = manifest["artifacts"][0]
    runner = get_backend("onnx").load_program(art / record["file"], record["decoder"]["methods"], 1)
    with DecoderSession(art) as session:
        session.attach(tiny / "doc.pack")
        cache = session.loop.new_cache()
        feed = {}
        session.loop.runner = type("R", (), {"run": lambda self, m, f: feed.update(f) or runner.run(m, f)})()
        session.loop.step("decode", [1], 3, cache)
    bad = {k: (v[..., :-1] if k.startswith("centroids_") else v) for k, v in feed.items()}
    with pytest.raises(SqueezeError, match="onnxruntime refused the decode call .* does not take the inputs"):
        runner.run("decode", bad)


def test_messages_name_what_the_folder_has_and_what_a_short_context_can_use(tiny, capsys):
    from export.cli import main

    assert main(["generate", "--artifacts", str(tiny / "art"), "--context-pack", str(tiny / "doc.pack"), "--prompt",
                 "ab", "--artifact-attention", "full"]) == 1
    assert "(it has: onnx squeezed in-graph-plan); pick one of those with --format" in capsys.readouterr().err
    assert main(["generate", "--artifacts", str(tiny / "art"), "--context-pack", str(tiny / "w8.pack"), "--prompt",
                 "ab"]) == 1
    assert "rebuild the pack with --observation-window 100" in capsys.readouterr().err
    assert main(["generate", "--artifacts", str(tiny / "art"), "--context-pack", str(tiny / "short.pack"), "--prompt",
                 "ab"]) == 1
    assert "is too short for that layout (it needs 120 tokens)" in capsys.readouterr().err


def test_artifact_json_names_the_selection_it_ran(tiny, capsys):
    from export.cli import main

    assert main(["generate", "--artifacts", str(tiny / "art"), "--context-pack", str(tiny / "doc.pack"), "--prompt",
                 "ab an", "--json", "--max-new-tokens", "4", "--exact-tail", "0", "--exact-head", "0", "--exact-decode", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    selection = out["selection"]
    assert selection["kv_budget"] == 0.3 and selection["exact_tail"] == 0 and selection["keep_keys"] >= 1
    from squeezed_attention.pack_arrays import centroid_cost

    assert out["kv_budget"] == pytest.approx(out["kept_fraction"] + centroid_cost(0.10, _head_dim(tiny)))


def _head_dim(tiny) -> int:
    from squeezed_attention.pack_arrays import read_pack_arrays

    return int(read_pack_arrays(tiny / "doc.pack").arrays["kv.keys"].shape[-1])


def test_an_onnx_model_given_as_a_pack_is_named(tiny, capsys):
    from export.cli import main

    onnx = next((tiny / "art").glob("*.onnx"))
    assert main(["generate", "--artifacts", str(tiny / "art"), "--context-pack", str(onnx), "--prompt", "ab"]) == 1
    err = capsys.readouterr().err
    assert "an ONNX model" in err and "unrecognised" not in err, err
