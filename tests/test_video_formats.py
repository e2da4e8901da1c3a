"""The video input policy on real footage in several codecs and containers: every file that decodes is used,
files whose container claims more frames than decode are used with exactly one warning, and the counts
(declared / packets / decoded) reach the API, `squeeze predict --json` and the verification set."""

import gzip
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import squeezetime
from squeeze_mobile.errors import SqueezeWarning
from squeezetime import SqueezeError, video
from squeezetime.rewrite import InputSpec

from conftest import CODEC_CLIP_FPS, CODEC_CLIP_FRAMES, CODEC_CLIPS, encode_clip, randomize_bn, source_frames

# name -> (codec FFmpeg reports, width, height, frame count the container declares: None for Matroska/WebM)
EXPECTED = {
    "h264_bframes.mp4": ("h264", 320, 136, 24),
    "hevc.mkv": ("hevc", 320, 136, None),
    "vp9.webm": ("vp9", 320, 136, None),
    "mpeg4.avi": ("mpeg4", 638, 478, 24),
    "mjpeg.mov": ("mjpeg", 639, 479, 24),
    "h264_444_odd.mov": ("h264", 321, 137, 24),
}


def reference_decode(path):
    """Every frame of the first video stream as RGB, decoded by PyAV directly (no project code)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def squeeze_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, SqueezeWarning)]


def read_recording(path, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = video.read_video_clips(path, "k400", **kwargs)
    return result, squeeze_warnings(record)


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", sorted(CODEC_CLIPS))
def test_codecs_and_containers_decode_completely(codec_dir, real_video, name):
    path = codec_dir / name
    codec, width, height, declared = EXPECTED[name]
    info = video.probe(path)
    assert (info.codec, info.width, info.height) == (codec, width, height)
    assert info.frame_counts() == {"declared": declared, "packets": 24, "decoded": 24}
    assert info.frames == 24 and info.complete and info.fps == pytest.approx(CODEC_CLIP_FPS)
    # sampling on 24 frames, T=4 x interval 4: one clip at offset int((24 - 16 + 1) / 2) = 4
    result, warned = read_recording(path, frames=4, size=64)
    assert warned == []
    assert result.clips.shape == (1, 4, 64, 64, 3) and result.clips.dtype == torch.uint8
    assert result.info.frame_counts() == info.frame_counts()
    frames, inds, _ = video.read_sampled_frames(path, 4, 4)
    assert inds.tolist() == [[4, 8, 12, 16]]
    # the sampled frames are exactly the reference decoder's frames 4, 8, 12, 16 ...
    ref = reference_decode(path)
    assert len(ref) == 24 and frames.shape == (4, height, width, 3)
    for got, i in zip(frames, inds[0]):
        assert np.array_equal(got, ref[i])
    # ... and they are the footage that was encoded, in order (closer to their own source frame than to
    # the one three frames on)
    src = source_frames(real_video, CODEC_CLIP_FRAMES, width, height)
    for got, i in zip(frames, inds[0]):
        assert mean_abs(got, src[i]) < 3.5
        assert mean_abs(got, src[i]) < mean_abs(got, src[i + 3]) - 1.0
    # resize + centre crop of those frames is the clip (short side round(256 * 64 / 224) = 73)
    resized = video.resize_short_side(torch.from_numpy(frames), 73)
    h, w = resized.shape[1:3]
    y, x = (h - 64) // 2, (w - 64) // 2
    assert torch.equal(result.clips[0], resized[:, y:y + 64, x:x + 64])


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "hevc.mkv"])
def test_fixtures_really_reorder_frames(codec_dir, name):
    """The h264 and hevc clips carry B-frames: presentation order differs from decode order."""
    with av.open(str(codec_dir / name)) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert pts != sorted(pts)


def test_edit_list_hiding_a_frame_is_used_with_one_warning(codec_dir, monkeypatch):
    """box.mp4's shape: 24 frames declared, 24 packets, 23 decode (the edit list hides one)."""
    path = codec_dir / "h264_editlist.mp4"
    info = video.probe(path)
    assert info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 23}
    assert info.frames == 23 and not info.complete
    # the 23 frames are the full stream's frames 1..23: same bitstream, the first one hidden
    full, hidden = reference_decode(codec_dir / "h264_bframes.mp4"), reference_decode(path)
    assert len(hidden) == 23 and all(np.array_equal(a, b) for a, b in zip(hidden, full[1:]))
    # one decode pass (23 is within the window below the packet count), sampling on 23 frames:
    # T=3 x interval 3 starts at int((23 - 9 + 1) / 2) = 7 (on 24 it would start at 8)
    passes = []
    real_decode = video._decode
    monkeypatch.setattr(video, "_decode", lambda *a: passes.append(1) or real_decode(*a))
    result, warned = read_recording(path, frames=3, size=64, interval=3)
    assert len(passes) == 1
    assert warned == [f"video {path}: the container declares 24 frames but only 23 decode cleanly; sampling uses "
                      "the decoded frames (the file may be truncated, or its index lists frames it does not show)"]
    assert result.info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 23}
    with pytest.warns(SqueezeWarning):
        frames, inds, _ = video.read_sampled_frames(path, 3, 3)
    assert inds.tolist() == [[7, 10, 13]]
    assert all(np.array_equal(f, hidden[i]) for f, i in zip(frames, inds[0]))
    # the video counts decodable frames: index 22 is the last one, 23 is out of range
    assert np.array_equal(video.decode_frames(path, [22])[0], hidden[22])
    with pytest.raises(SqueezeError, match="out of range"):
        video.decode_frames(path, [23])


def test_truncated_file_uses_what_decodes(video_dir, monkeypatch):
    """Cut at 60% with the index first: the last packet is cut off (the demuxer flags it corrupt, it is not
    decoded); 142 frames decode cleanly. Policy change: this file used to be refused as truncated."""
    path = video_dir / "truncated_faststart.mp4"
    passes = []
    real_decode = video._decode
    monkeypatch.setattr(video, "_decode", lambda *a: passes.append(1) or real_decode(*a))
    result, warned = read_recording(path)
    assert result.info.frame_counts() == {"declared": 250, "packets": 143, "decoded": 142}
    assert len(warned) == 1 and "declares 250 frames but only 142 decode cleanly" in warned[0]
    assert result.clips.shape == (1, 16, 224, 224, 3)
    assert len(passes) == 1  # 142 is one below the 143 packets: within the window
    # the frames used are the first 142 of the complete file
    with pytest.warns(SqueezeWarning):
        frames, inds, _ = video.read_sampled_frames(path, 16, 4)
    assert inds[0, 0] == int((142 - 64 + 1) / 2)
    full = video.decode_frames(video_dir / "faststart.mp4", inds[0].tolist())
    assert np.array_equal(frames, full)


@pytest.mark.parametrize("name", sorted(CODEC_CLIPS))
def test_files_cut_in_the_middle(codec_dir, tmp_path, name):
    """Cut at 60%: either refused with one line (the index is lost) or the decodable frames with one warning;
    never a silent short read and never another exception."""
    data = (codec_dir / name).read_bytes()
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: len(data) * 6 // 10])
    try:
        result, warned = read_recording(path, frames=4, size=64)
    except SqueezeError as exc:
        # mp4/mov keep their index at the end: cut, they cannot be opened; the Matroska file's one cluster
        # of frames is cut off: it opens and yields no frame
        expected = "contains no decodable video frames" if name.endswith(".mkv") else "cannot be opened"
        assert name.endswith((".mp4", ".mov", ".mkv")), str(exc)
        assert expected in str(exc) and "\n" not in str(exc)
        return
    assert name.endswith((".avi", ".webm"))
    counts = result.info.frame_counts()
    assert 1 <= counts["decoded"] < 24 and counts["decoded"] <= counts["packets"]
    assert len(warned) == 1 and f"only {counts['decoded']} decode cleanly" in warned[0]
    if name.endswith(".webm"):  # no frame count in WebM: the declared duration (24 frames at 25 fps) is the claim
        assert counts["declared"] is None and "declares 0.96 s (about 24 frames at 25 fps)" in warned[0]
    else:
        assert counts["declared"] == 24
    assert result.clips.shape == (1, 4, 64, 64, 3)


def test_predict_json_records_frame_counts_and_warns_once(tmp_path, video_dir):
    """CLI: a truncated file predicts (policy change: it was an error) with one `warning:` line and the counts."""
    torch.manual_seed(0)
    model = randomize_bn(squeezetime.build_model("k400", frames=4, width=0.25, num_classes=10)).eval()
    ckpt = tmp_path / "small.pth"
    squeezetime.save_checkpoint(model, ckpt)
    path = video_dir / "truncated_faststart.mp4"
    proc = subprocess.run([sys.executable, "-m", "export.cli", "predict", str(path), "--checkpoint", str(ckpt),
                           "--top", "2", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["video_frames"] == {"declared": 250, "packets": 143, "decoded": 142}
    assert len(out["top"]) == 2
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: video {path}: the container declares 250 frames but only 142 decode cleanly; "
                      "sampling uses the decoded frames (the file may be truncated, or its index lists frames it does not show)"]
    assert "Traceback" not in proc.stderr


def test_verification_set_records_counts_and_absolute_path(codec_dir, small_model, monkeypatch):
    from export.verify import build_verification_set

    monkeypatch.chdir(codec_dir)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vset = build_verification_set(small_model, InputSpec(frames=4, size=64), "h264_editlist.mp4")
    assert len(squeeze_warnings(record)) == 1
    assert vset.video == str(codec_dir / "h264_editlist.mp4") and Path(vset.video).is_absolute()
    assert vset.video_frames == {"declared": 24, "packets": 24, "decoded": 23}
    assert vset.frames_uint8.shape == (8, 4, 64, 64, 3)  # 2 clips x 3 crops + 2 random clips


def _opencv_doc_file(*relative):
    """A file of Debian's opencv-doc (installed, or unpacked with `dpkg-deb -x` under $OPENCV_DOC_DIR)."""
    roots = [Path(os.environ["OPENCV_DOC_DIR"])] if os.environ.get("OPENCV_DOC_DIR") else []
    roots.append(Path("/usr/share/doc/opencv-doc"))
    for root in roots:
        for rel in relative:
            if (root / rel).is_file():
                return root / rel
    pytest.skip(f"OpenCV sample {relative[0]} not present (apt-get install opencv-doc, or set OPENCV_DOC_DIR)")


def test_real_opencv_box_mp4(tmp_path):
    """The file of issue 10: h264 with B-frames whose edit list hides the last of 456 packets."""
    src = _opencv_doc_file("examples/data/box.mp4", "opencv4/html/box.mp4.gz", "html/box.mp4.gz")
    path = src
    if src.suffix == ".gz":
        path = tmp_path / "box.mp4"
        path.write_bytes(gzip.decompress(src.read_bytes()))
    result, warned = read_recording(path)
    assert result.info.frame_counts() == {"declared": 456, "packets": 456, "decoded": 455}
    assert (result.info.codec, result.info.width, result.info.height) == ("h264", 640, 480)
    assert len(warned) == 1 and "declares 456 frames but only 455 decode cleanly" in warned[0]
    assert result.clips.shape == (1, 16, 224, 224, 3)


def test_real_opencv_tree_avi():
    """Cinepak in AVI: the index declares 444 frames, 68 are in the file and decode."""
    path = _opencv_doc_file("examples/data/tree.avi")
    result, warned = read_recording(path)
    assert result.info.frame_counts() == {"declared": 444, "packets": 68, "decoded": 68}
    assert (result.info.codec, result.info.width, result.info.height) == ("cinepak", 320, 240)
    assert len(warned) == 1 and "declares 444 frames but only 68 decode cleanly" in warned[0]
    # 68 frames, 16 x 4: the clip starts at int((68 - 64 + 1) / 2) = 2
    with pytest.warns(SqueezeWarning):
        frames, inds, _ = video.read_sampled_frames(path, 16, 4)
    assert inds[0].tolist() == list(range(2, 66, 4))
    ref = reference_decode(path)
    assert len(ref) == 68 and all(np.array_equal(f, ref[i]) for f, i in zip(frames, inds[0]))


def test_relative_name_with_a_colon(codec_dir, tmp_path, monkeypatch):
    """FFmpeg reads "12:30.mp4" as protocol "12" unless given an absolute path (it used to be refused)."""
    (tmp_path / "12:30.mp4").write_bytes((codec_dir / "h264_bframes.mp4").read_bytes())
    monkeypatch.chdir(tmp_path)
    info = video.probe("12:30.mp4")
    assert info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 24} and info.path == "12:30.mp4"


def test_extreme_aspect_ratio_is_refused(tmp_path, real_video):
    """8x200 frames: scaling the short side to 256 would make 6400-pixel-long frames; one line instead."""
    path = tmp_path / "sliver.mov"
    encode_clip(path, source_frames(real_video, 3, 8, 200), "mjpeg", "mov", "yuvj420p", {"qscale": "3"})
    with pytest.raises(SqueezeError, match=r"has 8x200 frames \(aspect ratio over 16:1\)"):
        video.read_clips_uint8(path, "k400")
