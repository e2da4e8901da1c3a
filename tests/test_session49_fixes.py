"""Fixes of the stop-49 session: each test fails on the code before."""

import pytest

from conftest import TINY_DECODER_TEXT  # noqa: E402  (the tiny model's vocabulary)


@pytest.fixture
def counted_loads(monkeypatch):
    """Count the ONNX backend's program loads (the runtime's load: 10-20 s for a real model)."""
    from export.backends import get_backend

    backend = type(get_backend("onnx"))
    real = backend.load_program
    loads = []

    def load_program(self, *args, **kwargs):
        loads.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(backend, "load_program", load_program)
    return loads


def test_generate_artifacts_refuses_a_long_prompt_or_a_wrong_pack_before_the_runtime_loads(
        tiny_onnx_decoder, tmp_path, counted_loads, capsys):
    from export.cli import main
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    src, gguf = tiny_onnx_decoder
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    save_context_pack(build_context_pack(model, ck, TINY_DECODER_TEXT, BuildSettings()), tmp_path / "doc.pack")
    save_context_pack(build_context_pack(model, ck, TINY_DECODER_TEXT, BuildSettings(observation_window=8)),
                      tmp_path / "w8.pack")
    art, pack = str(src / "art"), str(tmp_path / "doc.pack")

    assert main(["generate", "--artifacts", art, "--context-pack", pack, "--prompt", "ab an " * 80]) == 1
    assert "exported for at most 64" in capsys.readouterr().err
    assert main(["generate", "--artifacts", art, "--context-pack", pack, "--prompt", "ab", "--max-new-tokens",
                 "500"]) == 1
    assert "--max-new-tokens (max_new_tokens) must be between 1 and" in capsys.readouterr().err
    assert main(["generate", "--artifacts", art, "--context-pack", str(tmp_path / "w8.pack"), "--prompt", "ab"]) == 1
    assert "--observation-window 100" in capsys.readouterr().err
    assert counted_loads == []                      # every refusal came before the runtime's load

    assert main(["generate", "--artifacts", art, "--context-pack", pack, "--prompt", "ab an", "--max-new-tokens",
                 "3", "--json"]) == 0
    assert len(counted_loads) == 1


def test_the_api_session_still_loads_in_its_constructor_and_a_deferred_one_at_its_first_answer(
        tiny_onnx_decoder, tmp_path, counted_loads):
    from squeezed_attention.decoder_session import DecoderSession
    from squeeze_mobile.errors import SqueezeError

    src, _ = tiny_onnx_decoder
    with DecoderSession(src / "art"):
        assert len(counted_loads) == 1
    deferred = DecoderSession(src / "art", load=False)
    assert len(counted_loads) == 1
    with pytest.raises(SqueezeError, match="no context pack attached"):
        deferred.generate("ab")
    deferred.close()                                # closing a session that never loaded is fine
    with pytest.raises(SqueezeError, match="is closed"):
        deferred.load()


@pytest.mark.parametrize("edit", ["no suffix", "string stop id", "negative stop id"])
def test_a_tokenizer_section_without_its_framing_or_with_stop_ids_that_are_not_numbers_is_one_line(
        tiny_onnx_decoder, tmp_path, edit):
    """A manifest whose chat framing lacked its suffix was a KeyError traceback; a stop id written as a string never
    matched a token, so the answer ran past its end (the app cores refuse both)."""
    import json
    import shutil

    from squeezed_attention.decoder_session import DecoderSession
    from squeeze_mobile.errors import SqueezeError

    src, _ = tiny_onnx_decoder
    art = tmp_path / "art"
    shutil.copytree(src / "art", art)
    manifest = json.loads((art / "manifest.json").read_text())
    section = manifest["tokenizer"]
    if edit == "no suffix":
        del section["chat"]["suffix"]
    else:
        section["stop_token_ids"] = ["2"] if edit == "string stop id" else [-1]
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SqueezeError, match="has no valid tokenizer section"):
        DecoderSession(art, load=False)


@pytest.mark.parametrize("flags", [["--artifact-attention", "full"], ["--format", "onnx", "--lookup-plan", "split"]])
def test_artifact_options_without_artifacts_are_refused_not_ignored(tmp_path, flags, capsys):
    """`squeeze generate --artifact-attention full` without --artifacts ran the host's squeezed attention, exit 0."""
    from export.cli import main

    rc = main(["generate", "--context-pack", str(tmp_path / "absent.pack"), "--prompt", "hi", *flags])
    err = capsys.readouterr().err
    assert rc != 0 and "only with --artifacts DIR" in err and flags[0] in err, err
