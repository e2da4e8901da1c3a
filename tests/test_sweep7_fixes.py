"""Fixes for what the stop-47 black-box sweeps found with other videos, checkpoints and texts."""

import json
import zipfile
from collections import OrderedDict
from fractions import Fraction

import pytest
import torch

from squeeze_mobile.errors import SqueezeError


def _small(**overrides):
    from squeezetime.model import seeded_model

    return seeded_model("hmdb51", seed=1, frames=4, **{"width": 0.25, **overrides})


def test_a_checkpoint_damaged_inside_is_refused(tmp_path):
    """4 KiB zeroed in the middle of a torch.save zip loaded without a word, with part of one weight zeroed: the zip's
    per-member CRC-32 was never checked."""
    import squeezetime

    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"state_dict": OrderedDict(_small().state_dict())}, good)
    raw = bytearray(good.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 4096] = bytes(4096)
    bad.write_bytes(bytes(raw))
    assert zipfile.ZipFile(bad).testzip() is not None
    squeezetime.load_checkpoint(good)
    with pytest.raises(SqueezeError, match=r"is damaged: its member '.*' does not match the checksum"):
        squeezetime.load_checkpoint(bad)


@pytest.mark.parametrize("width", [0.3, 0.13, 0.25])
def test_a_model_of_any_width_loads_back(tmp_path, width):
    """width 0.3 has stages 19/38/76/153; the width read back from the stem (19/64) gave 152 for the last stage, so the
    project's own save_checkpoint wrote a file load_checkpoint refused with 84 'shape mismatches'."""
    import squeezetime

    model = _small(width=width)
    squeezetime.save_checkpoint(model, tmp_path / "m.pth")
    again = squeezetime.load_checkpoint(tmp_path / "m.pth")
    assert again.config.stage_widths == model.config.stage_widths
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def _video_with_matrix(path, matrix):
    """A small H.264 MP4 (red block at the stored frames' top left) whose track header carries ``matrix``."""
    import struct

    import av
    import numpy as np

    frames = np.zeros((6, 64, 96, 3), np.uint8)
    frames[:, :20, :30] = (255, 0, 0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") - 4
    data[at + 48:at + 84] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def _red_corner(frame):
    corners = {"top-left": frame[:10, :10], "top-right": frame[:10, -10:], "bottom-left": frame[-10:, :10],
               "bottom-right": frame[-10:, -10:]}
    return [name for name, block in corners.items() if block[..., 0].mean() > 200]


U, W = 0x10000, 0x40000000


@pytest.mark.parametrize("name, matrix, rotation, corner, mirrored", [
    ("hflip", (-U, 0, 0, 0, U, 0, 0, 0, W), 0, "top-left", True),            # was turned 180: upside down
    ("vflip", (U, 0, 0, 0, -U, 0, 0, 0, W), 180, "bottom-right", True),      # was used upside down
    ("rot180", (-U, 0, 0, 0, -U, 0, 0, 0, W), 180, "bottom-right", False),
    ("rot90", (0, -U, 0, U, 0, 0, 0, 0, W), 270, "bottom-left", False),
    ("rot90_mirrored", (0, -U, 0, -U, 0, 0, 0, 0, W), 270, "bottom-left", True),   # the same turn, no mirror
])
def test_a_mirroring_display_matrix_is_not_taken_for_a_turn(tmp_path, name, matrix, rotation, corner, mirrored):
    """A display matrix that mirrors (front cameras, editors) was read by PyAV as a 180-degree turn: frames came out
    upside down. The mirror is now taken out of the matrix (not applied, one warning) and its rotation applied."""
    import warnings

    from squeezetime import video

    path = _video_with_matrix(tmp_path / f"{name}.mp4", matrix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = video.decode_frames(path, [0])[0]
        info = video.probe(path)
    assert info.rotation == rotation and _red_corner(frame) == [corner]
    assert any("mirrors the frames" in str(w.message) for w in caught) == mirrored


def test_non_square_pixels_are_named(tmp_path, capsys):
    """A video whose pixels are not square (SAR 2:1, a player shows 320x120) was used as its stored 160x120 frames
    without a word; it still is (as the official pipeline decodes it), with one warning and `video_pixel_aspect`."""
    import av
    import numpy as np

    from export.cli import main

    path = tmp_path / "sar2.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(8):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((120, 160, 3), 30 * i, np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    assert main(["predict", str(path), "--config", "hmdb51", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["video_pixel_aspect"] == "2:1"
    assert "its pixels are not square (sample aspect ratio 2:1, shown at 320x120)" in captured.err


def test_a_label_file_with_a_blank_line_is_refused(tmp_path):
    """'walk\\n\\n' for a 2-class head was accepted and the second class printed with no name."""
    from squeezetime.video import check_label_count, read_label_file

    (tmp_path / "labels.txt").write_text("walk\n\n")
    with pytest.raises(SqueezeError, match=r"has an empty label \(line 2\)"):
        read_label_file(tmp_path / "labels.txt", 2)
    with pytest.warns(UserWarning, match="names 'run' for more than one class"):
        check_label_count(["run", "walk", "run"], 3)


def test_impossible_saved_preprocessing_is_left_out(tmp_path):
    """A checkpoint recording a 1000000-px crop was accepted; every video then failed as 'smaller than the crop'."""
    import squeezetime
    from squeezetime.checkpoint import SAVED_CONFIG_KEY

    model = _small()
    for fields in ({"input_size": 1_000_000}, {"input_size": 64, "resize_short": 10**7}, {"frame_interval": 10**6}):
        path = tmp_path / "m.pth"
        torch.save({"state_dict": OrderedDict(model.state_dict()), "meta": {SAVED_CONFIG_KEY: json.dumps(fields)}}, path)
        loaded = squeezetime.load_checkpoint(path)
        assert loaded.config.input_size == model.config.input_size
        notes = loaded.load_report.notes
        assert any("saved preprocessing was left out" in n for n in notes), notes


def test_urls_empty_paths_and_still_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import squeezetime
    from export.cli import main

    assert main(["predict", "http://127.0.0.1:9/x.mp4", "--config", "hmdb51"]) == 1
    assert "is a URL; squeeze-mobile reads local video files" in capsys.readouterr().err
    with pytest.raises(SqueezeError, match="the video path is empty"):
        squeezetime.predict_video(_small(), "")
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "still.jpg")
    assert main(["predict", str(tmp_path / "still.jpg"), "--config", "hmdb51"]) == 0
    assert "holds a single frame (a still image?)" in capsys.readouterr().err


@pytest.mark.parametrize("weight, bias", [((512, 51), (51,)), ((1, 51, 512), (51,)), ((0, 512), (0,))])
def test_a_malformed_head_is_named_as_such(tmp_path, weight, bias):
    """A transposed head was reported as 'bias (51,) vs model (512,)', a 3-D one compared with a 400-class model, an
    empty one as 'num_classes must be a whole number >= 1' without saying where the number came from."""
    import squeezetime

    state = OrderedDict(_small().state_dict())
    state["cls_head.fc_cls.weight"], state["cls_head.fc_cls.bias"] = torch.zeros(weight), torch.zeros(bias)
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    with pytest.raises(SqueezeError, match=r"classifier head .* is not a \[classes, features\] matrix"):
        squeezetime.load_checkpoint(tmp_path / "m.pth")


from conftest import TINY_DECODER_TEXT as TINY_TEXT  # noqa: E402  (the tiny model's vocabulary)


@pytest.fixture(scope="module")
def tiny_export(tiny_onnx_decoder, tmp_path_factory):
    """The shared tiny export, in a folder of this module's own (its tests write packs and outputs beside it)."""
    import shutil

    src, gguf = tiny_onnx_decoder
    d = tmp_path_factory.mktemp("tiny7")
    shutil.copytree(src / "art", d / "art")
    (d / "doc.txt").write_text(TINY_TEXT)
    return d, gguf


def test_sweep8_decoder_messages_and_session(tiny_export, capsys):
    """--verify-text over --max-context named the model window and numbers of another export; a closed DecoderSession
    kept answering; '--model do not apply ... the attention mode and KV budget are fixed at export'; the bench's default
    32 decode steps refused an export of --max-new 16."""
    from export.cli import main
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    d, gguf = tiny_export
    (d / "long.txt").write_text(" ".join([TINY_TEXT] * 6))
    assert main(["export", "decoder", "--model", str(gguf), "--max-context", "160", "--max-prompt", "64", "--max-new",
                 "16", "--verify-text", str(d / "long.txt"), "--formats", "onnx", "--out", str(d / "long")]) == 1
    err = capsys.readouterr().err
    assert "--verify-text" in err and "at most --max-context 160" in err and not (d / "long").exists()

    ck = load_checkpoint(gguf)
    save_context_pack(build_context_pack(LlamaForCausalLM.from_checkpoint(ck), ck, TINY_TEXT, BuildSettings()),
                      d / "doc.pack")
    with DecoderSession(d / "art") as session:
        session.attach(d / "doc.pack")
        assert session.generate("ab an", max_new_tokens=2).token_ids
    with pytest.raises(SqueezeError, match="this DecoderSession is closed"):
        session.generate("ab an", max_new_tokens=2)

    assert main(["generate", "--artifacts", str(d / "art"), "--context-pack", str(d / "doc.pack"), "--prompt", "ab",
                 "--model", str(gguf)]) == 1
    assert "--model does not apply with --artifacts: the model is the one exported" in capsys.readouterr().err

    from bench.decoder import run_decoder_benchmark

    report = run_decoder_benchmark(d / "art", contexts=[512], runs=1, warmup=0, rounds=1, out_dir=d / "bench",
                                   packs=[str(d / "doc.pack")], profile=False)
    assert report["settings"]["decode_tokens"] == 16


def test_nul_characters_are_refused_by_the_api_as_by_the_cli():
    from squeezed_attention.pack_arrays import context_text_of

    with pytest.raises(SqueezeError, match="contains NUL characters"):
        context_text_of("ab\x00an " * 10)


def test_bench_llama_cpp_without_the_package_is_refused_up_front(tiny_export, capsys):
    """`squeeze bench DIR --llama-cpp` without llama-cpp-python exited 0 with no llama.cpp row (one progress line)."""
    from bench.llama_cpp_peer import llama_cpp_missing
    from export.cli import main

    if llama_cpp_missing() is None:
        pytest.skip("llama-cpp-python is installed here")
    d, _ = tiny_export
    assert main(["bench", str(d / "art"), "--llama-cpp", "--contexts", "512", "--out", str(d / "b2")]) == 1
    assert "--llama-cpp: llama-cpp-python is not installed" in capsys.readouterr().err
    assert not (d / "b2").exists()


def test_int8_pte_takes_camera_frames(tmp_path):
    """--input frames_uint8 --precision int8 --formats pte failed after minutes of work in every case: the uint8
    input's dtype copy (_to_dim_order_copy) outside the delegate was taken for a computing op."""
    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec

    result = export_squeezetime(_small(), tmp_path / "o", formats="pte", precision="int8",
                                spec=InputSpec(frames=4, size=64, input_format="frames_uint8"))
    assert result.ok, result.failures
    (art,) = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]
    assert art["precision"] == "int8" and art["verification"]["status"] == "pass"
    assert any("to_dim_order_copy" in op for op in art["quantization"]["outside_delegate"])


def test_the_tflite_record_names_the_signature_an_app_calls(tmp_path):
    """The manifest named the .tflite input/output 'input'/'logits'; the file's signature has args_0/output_0, so an
    app calling the signature runner with the manifest's name got 'Invalid Input name (input) for SignatureDef'."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec

    assert export_squeezetime(_small(), tmp_path / "o", formats="tflite", spec=InputSpec(frames=4, size=64)).ok
    (art,) = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]
    runner = Interpreter(model_path=str(tmp_path / "o" / art["file"])).get_signature_runner(art["signature"])
    (inp,), (out,) = art["inputs"], art["outputs"]
    result = runner(**{inp["tensor"]: np.zeros(inp["shape"], np.float32)})
    assert result[out["tensor"]].shape == tuple(out["shape"])


def test_options_that_would_be_ignored_are_refused(tmp_path, capsys):
    from export.cli import main

    assert main(["export", "squeezetime", "--formats", "onnx", "--no-mlmodel", "--out", str(tmp_path / "o")]) == 1
    assert "--no-mlmodel applies to the coreml format" in capsys.readouterr().err
    assert main(["export", "squeezetime", "--formats", "onnx", "--precision", "fp32,,int8", "--out", str(tmp_path / "o")]) == 2
    assert "empty item in 'fp32,,int8'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
