"""Fixes for what the stop-48 black-box sweep of the public Python API found: each test fails on the code before."""

import os
from pathlib import Path

import pytest
import torch

from squeeze_mobile.errors import SqueezeError, SqueezeWarning


def _small(**overrides):
    from squeezetime.model import seeded_model

    return seeded_model("hmdb51", seed=1, frames=4, **{"width": 0.25, **overrides})


def test_prediction_and_export_leave_the_callers_model_in_its_mode(real_video):
    """classify_video, export_ready and the verification set switched a model being trained into eval mode."""
    from export.verify import build_verification_set
    from squeezetime import classify_video
    from squeezetime.rewrite import InputSpec, export_ready

    model = _small()
    model.train()
    model.cls_head.eval()   # mixed modes come back as they were, module by module
    before = {name: m.training for name, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    eval_model = _small().eval()
    assert classify_video(model, real_video, top=3).top == classify_video(eval_model, real_video, top=3).top
    export_ready(model)
    build_verification_set(model, InputSpec(frames=4, size=64), real_video)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())   # BN statistics untouched


def test_paths_and_arguments_of_the_wrong_kind_are_one_line(tmp_path, monkeypatch, real_video):
    from export.pipeline import export_squeezetime
    from squeezed_attention import save_context_pack
    from squeezed_attention.pack import check_pack_destination
    from squeezetime import classify_video, save_checkpoint

    model = _small()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SqueezeError, match=r"the output folder \(out_dir\) is empty"):
        export_squeezetime(model, "", formats="onnx")
    assert os.listdir(tmp_path) == []   # "" used to export into the current directory
    for bad, message in ((None, "must be a path .* got NoneType"), (open(real_video, "rb"), "got an open file")):
        with pytest.raises(SqueezeError, match=message):
            export_squeezetime(model, bad, formats="onnx")
        with pytest.raises(SqueezeError, match=message):
            classify_video(model, bad)
    with pytest.raises(SqueezeError, match="export_squeezetime takes a SqueezeTime model; got Linear"):
        export_squeezetime(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(SqueezeError, match="spec must be a squeezetime.rewrite.InputSpec"):
        export_squeezetime(model, tmp_path / "x", spec={"frames": 4})
    with pytest.raises(SqueezeError, match="classify_video takes a SqueezeTime model"):
        classify_video(torch.nn.Linear(2, 2), real_video)
    with pytest.raises(SqueezeError, match="the checkpoint path is empty"):
        save_checkpoint(model, "")
    with pytest.raises(SqueezeError, match="the pack path is empty"):
        check_pack_destination("")   # save_context_pack's and `context build --out`'s check
    with pytest.raises(SqueezeError, match="save_context_pack takes a ContextPack"):
        save_context_pack({"token_ids": []}, tmp_path / "x.pack")
    assert os.listdir(tmp_path) == []
    # bytes paths are paths; a generator of labels is a list of labels; labels that are not text are one line
    names = [f"class {i}" for i in range(model.config.num_classes)]
    top = classify_video(model, os.fsencode(str(real_video)), top=2, labels=(n for n in names)).top
    assert [p.label for p in top] == [names[p.index] for p in top]
    with pytest.raises(SqueezeError, match="labels must be strings of one line each"):
        classify_video(model, real_video, labels=list(range(model.config.num_classes)))
    with pytest.raises(SqueezeError, match=r"^the label list has 2 labels but the model has 51 classes \(one label per "
                                           r"class"):
        export_squeezetime(model, tmp_path / "x", formats="onnx", labels=["a", "b"])
    assert not (tmp_path / "x").exists()


def test_a_saved_preset_comes_back_and_a_bare_backbone_says_what_it_drops(tmp_path):
    import squeezetime

    model = squeezetime.build_model("hmdb51", frames=4, width=0.25, num_classes=10, input_size=160, frame_interval=2)
    for name in ("m.pth", "m.safetensors"):
        squeezetime.save_checkpoint(model, tmp_path / name)
        back = squeezetime.load_checkpoint(tmp_path / name)
        assert back.config.to_dict() == model.config.to_dict()   # was named k400 (file names, labels, manifest)
    with pytest.warns(SqueezeWarning, match="keeps no classifier head and no preprocessing"):
        squeezetime.save_checkpoint(model, tmp_path / "bb.pth", layout="backbone")
    with pytest.raises(SqueezeError, match=r"^checkpoint \(a state dict in memory\) contains no tensors"):
        squeezetime.load_checkpoint({})


def test_a_directory_where_a_file_was_exported_is_named_as_such(tmp_path):
    from export.pipeline import artifact_problem
    from squeezed_attention.decoder_session import read_decoder_manifest

    (tmp_path / "model.onnx").mkdir()
    assert artifact_problem({"file": "model.onnx", "sha256": "0" * 64}, tmp_path) == (
        "model.onnx is a folder, not the file the export wrote; re-export it")
    (tmp_path / "x.pack").write_bytes(b"PK")
    with pytest.raises(SqueezeError, match="x.pack is a file, not a decoder export folder"):
        read_decoder_manifest(tmp_path / "x.pack")


TEXT = " ".join(["abc an ss ab", "bat cab dig", "fan ham ink", "jab kin lab"] * 4)


def test_an_empty_question_is_refused_and_a_byte_order_mark_is_not_text(tmp_path):
    """Chat framing never gave empty ids, so an empty or blank question was answered (a question of the model's own);
    a context read with open(f).read() kept the file's byte-order mark as U+FEFF and made another pack."""
    from squeezed_attention import (AttentionChoice, BuildSettings, Generator, LlamaForCausalLM, build_context_pack,
                                    load_checkpoint)
    from squeezed_attention.decoder_session import prompt_token_ids
    from squeezed_attention.pack_arrays import context_text_of
    from squeezed_attention.testing import write_tiny_llama_gguf

    ck = load_checkpoint(write_tiny_llama_gguf(tmp_path / "t.gguf", layers=1))
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, TEXT, BuildSettings(observation_window=8))
    gen = Generator(model, ck.tokenizer, pack)
    for question in ("", "  \n "):
        with pytest.raises(SqueezeError, match="the prompt is empty"):
            gen.generate(question, AttentionChoice("full"), max_new_tokens=2)
        with pytest.raises(SqueezeError, match="the prompt is empty"):
            prompt_token_ids(ck.tokenizer.backend, {"join": "\n", "suffix": ""}, "chat", question)
    assert gen.generate("ab an", AttentionChoice("full"), max_new_tokens=2).token_ids
    raw = build_context_pack(model, ck, TEXT, BuildSettings(framing="raw", observation_window=8))
    assert Generator(model, ck.tokenizer, raw).prompt_ids(" ")   # raw framing continues the text: a space is text

    file = tmp_path / "bom.txt"
    file.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    with open(file, encoding="utf-8") as f:
        assert context_text_of(f.read()) == context_text_of(Path(file)) == TEXT
