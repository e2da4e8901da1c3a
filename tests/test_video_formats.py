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

from conftest import read_recording, squeeze_warnings, CODEC_CLIP_FPS, CODEC_CLIP_FRAMES, CODEC_CLIPS, encode_clip, randomize_bn, source_frames

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




def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("name", sorted(CODEC_CLIPS))
def test_codecs_and_containers_decode_completely(codec_dir, real_video, name):
    path = codec_dir / name
    codec, width, height, declared = EXPECTED[name]
    info = video.probe(path)
    assert (info.codec, info.width, info.height) == (codec, width, height)
    assert info.frame_counts() == {"declared": declared, "packets": 24, "decoded": 24, "damaged_packets": 0, "damaged_frames": 0}
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
    assert info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 23, "damaged_packets": 0, "damaged_frames": 0}
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
    assert result.info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 23, "damaged_packets": 0, "damaged_frames": 0}
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
    assert result.info.frame_counts() == {"declared": 250, "packets": 143, "decoded": 142, "damaged_packets": 0, "damaged_frames": 0}
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
    assert out["video_frames"] == {"declared": 250, "packets": 143, "decoded": 142, "damaged_packets": 0, "damaged_frames": 0}
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
    assert vset.video_frames == {"declared": 24, "packets": 24, "decoded": 23, "damaged_packets": 0, "damaged_frames": 0}
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
    assert result.info.frame_counts() == {"declared": 456, "packets": 456, "decoded": 455, "damaged_packets": 0, "damaged_frames": 0}
    assert (result.info.codec, result.info.width, result.info.height) == ("h264", 640, 480)
    assert len(warned) == 1 and "declares 456 frames but only 455 decode cleanly" in warned[0]
    assert result.clips.shape == (1, 16, 224, 224, 3)


def test_real_opencv_tree_avi():
    """Cinepak in AVI: the index declares 444 frames, 68 are in the file and decode."""
    path = _opencv_doc_file("examples/data/tree.avi")
    result, warned = read_recording(path)
    assert result.info.frame_counts() == {"declared": 444, "packets": 68, "decoded": 68, "damaged_packets": 0, "damaged_frames": 0}
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
    assert info.frame_counts() == {"declared": 24, "packets": 24, "decoded": 24, "damaged_packets": 0, "damaged_frames": 0} and info.path == "12:30.mp4"


def test_extreme_aspect_ratio_is_refused(tmp_path, real_video):
    """8x200 frames: scaling the short side to 256 would make 6400-pixel-long frames; one line instead."""
    path = tmp_path / "sliver.mov"
    encode_clip(path, source_frames(real_video, 3, 8, 200), "mjpeg", "mov", "yuvj420p", {"qscale": "3"})
    with pytest.raises(SqueezeError, match=r"has 8x200 frames \(aspect ratio over 16:1\)"):
        video.read_clips_uint8(path, "k400")


# ------------------------------------------------------------------------- display rotation and cover art
# A phone stores a portrait clip as landscape pixels plus a display matrix in the track header; players (and
# FFmpeg's CLI, and the apps) show it upright. Clips here: 16 frames of real footage, 64x48 upright, with a
# red top-left corner, encoded losslessly (x264 qp 0 in 4:4:4, so a turned clip decodes to exactly the
# turned pixels). The display matrix that a phone held in portrait writes (the tkhd matrix of an iPhone
# portrait clip: turn 90 degrees clockwise to show):
PHONE_PORTRAIT_MATRIX = (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)


def marked_frames(real_video, count=16, width=64, height=48):
    frames = source_frames(real_video, count, width, height)
    for f in frames:
        f[:8, :8] = (255, 0, 0)
    return frames


def write_lossless(path, frames_rgb, ccw_rotation=None) -> None:
    """mp4, h264 qp 0 yuv444p; ``ccw_rotation``: the display matrix's angle as PyAV's VideoFrame.rotation reads it."""
    height, width = frames_rgb[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=CODEC_CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        if ccw_rotation is not None:
            stream.set_display_rotation(ccw_rotation)
        for i, rgb in enumerate(frames_rgb):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def rotated_dir(tmp_path_factory, real_video):
    """upright.mp4, and for k quarter turns (counter-clockwise) of its pixels: stored_k.mp4 (no display
    matrix) and phone_k.mp4 (the same pixels with a display matrix that turns them back upright)."""
    d = tmp_path_factory.mktemp("rotated")
    upright = marked_frames(real_video)
    write_lossless(d / "upright.mp4", upright)
    for k in (1, 2, 3):
        stored = [np.rot90(f, k) for f in upright]
        write_lossless(d / f"stored_{k}.mp4", stored)
        write_lossless(d / f"phone_{k}.mp4", stored, ccw_rotation=-90 * k)
    return d


def test_fixture_carries_a_phone_display_matrix(rotated_dir):
    """phone_1.mp4 holds the matrix a phone writes for portrait video, and PyAV reads it as -90 degrees."""
    import struct

    assert struct.pack(">9i", *PHONE_PORTRAIT_MATRIX) in (rotated_dir / "phone_1.mp4").read_bytes()
    for k, degrees in ((1, -90), (2, 180), (3, 90)):
        with av.open(str(rotated_dir / f"phone_{k}.mp4")) as c:
            frame = next(c.decode(video=0))
        assert abs(frame.rotation) == 180 if k == 2 else frame.rotation == degrees
        assert (frame.width, frame.height) == ((48, 64) if k % 2 else (64, 48))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_display_rotation_turns_frames_upright(rotated_dir, k):
    upright = video.decode_frames(rotated_dir / "upright.mp4", range(16))
    path = rotated_dir / f"phone_{k}.mp4"
    info = video.probe(path)
    assert (info.width, info.height, info.rotation) == (64, 48, 90 * k)
    assert info.frame_counts() == {"declared": 16, "packets": 16, "decoded": 16, "damaged_packets": 0, "damaged_frames": 0} and info.complete
    frames = video.decode_frames(path, range(16))
    assert frames.shape == (16, 48, 64, 3) and frames.flags.c_contiguous
    assert np.array_equal(frames, upright)  # lossless: exactly the upright clip's pixels
    # the marked corner is top-left again (red up to the RGB <-> YUV rounding), and no other corner is red
    red = lambda block: (block[..., 0] > 240).all() and (block[..., 1:] < 15).all()
    assert red(frames[:, :8, :8])
    assert not any(red(frames[:, y:y + 8, x:x + 8]) for y, x in ((0, 56), (40, 0), (40, 56)))
    # the same pixels without the display matrix are used as stored
    stored = video.probe(rotated_dir / f"stored_{k}.mp4")
    assert (stored.width, stored.height, stored.rotation) == ((48, 64, 0) if k % 2 else (64, 48, 0))
    # sampling, resize and crop run on the upright frames
    result, warned = read_recording(path, frames=4, size=32)
    assert warned == [] and result.info.rotation == 90 * k and (result.info.width, result.info.height) == (64, 48)
    assert torch.equal(result.clips, video.read_clips_uint8(rotated_dir / "upright.mp4", "k400", frames=4, size=32))


def test_rotation_off_a_right_angle_is_not_applied_with_one_warning(tmp_path, real_video):
    path = tmp_path / "tilted.mp4"
    frames = marked_frames(real_video)
    write_lossless(path, frames, ccw_rotation=-45)
    result, warned = read_recording(path, frames=4, size=32)
    assert warned == [f"video {path}: its display matrix rotates frames by -45 degrees, not a multiple of 90; "
                      "frames are used as stored"]
    assert result.info.rotation == 0 and (result.info.width, result.info.height) == (64, 48)
    with pytest.warns(SqueezeWarning, match="not a multiple of 90"):
        first = video.decode_frames(path, [0])[0]
    assert np.array_equal(first, reference_decode(path)[0])


def test_unrotated_clip_reports_no_rotation(codec_dir):
    info = video.probe(codec_dir / "h264_bframes.mp4")
    assert info.rotation == 0 and (info.width, info.height) == (320, 136)


def test_predict_same_on_upright_and_phone_rotated_clip(tmp_path, rotated_dir, small_model, capsys):
    """`squeeze predict`: the phone's portrait clip (landscape pixels + display matrix) predicts exactly as the
    clip stored upright; the landscape pixels shown as stored (what used to be read) predict differently."""
    from export.cli import main

    ckpt = tmp_path / "small.pth"
    squeezetime.save_checkpoint(small_model, ckpt)

    rotations = {}

    def predict(name):
        assert main(["predict", str(rotated_dir / name), "--checkpoint", str(ckpt), "--top", "10", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        rotations[name] = out["video_rotation"]
        return [(t["index"], round(t["probability"], 6)) for t in out["top"]]

    upright = predict("upright.mp4")
    assert predict("phone_1.mp4") == upright
    assert predict("stored_1.mp4") != upright
    assert rotations["upright.mp4"] == rotations["stored_1.mp4"] == 0 and rotations["phone_1.mp4"] in (90, 270)


def _mp4_with_cover_first(src, dst) -> None:
    """Move moov's udta box (iTunes metadata with the cover art) before its trak: the demuxer then makes the
    cover art stream 0 and the real video stream 1. Box sizes and chunk offsets are unchanged."""
    import struct

    data = src.read_bytes()

    def boxes(start, end):
        i = start
        while i < end:
            size, kind = struct.unpack(">I4s", data[i:i + 8])
            yield kind, i, size
            i += size

    moov = next((i, size) for kind, i, size in boxes(0, len(data)) if kind == b"moov")
    kids = list(boxes(moov[0] + 8, moov[0] + moov[1]))
    order = sorted(kids, key=lambda b: {b"mvhd": 0, b"udta": 1}.get(b[0], 2))
    assert [b[0] for b in order] == [b"mvhd", b"udta", b"trak"]
    body = b"".join(data[i:i + size] for _, i, size in order)
    dst.write_bytes(data[:moov[0] + 8] + body + data[moov[0] + moov[1]:])


def _cover_jpeg(width=64, height=48) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _add_cover(out, width=64, height=48):
    art = out.add_stream("mjpeg")
    art.width, art.height, art.pix_fmt = width, height, "yuvj420p"
    art.disposition = av.stream.Disposition.attached_pic
    packet = av.Packet(_cover_jpeg(width, height))
    packet.stream = art
    packet.pts = packet.dts = 0
    out.mux(packet)


@pytest.fixture(scope="module")
def cover_dir(tmp_path_factory, real_video):
    """song.m4a: AAC audio plus album cover art (attached_pic), no video. video_cover_last.mp4: 16 frames of
    real footage plus cover art; video_cover_first.mp4: the same file with the cover art as stream 0."""
    d = tmp_path_factory.mktemp("cover")
    with av.open(str(d / "song.m4a"), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=44100)
        _add_cover(out)
        for k in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, k * 1024
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    with av.open(str(d / "video_cover_last.mp4"), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=CODEC_CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        _add_cover(out)
        for i, rgb in enumerate(source_frames(real_video, 16, 64, 48)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    _mp4_with_cover_first(d / "video_cover_last.mp4", d / "video_cover_first.mp4")
    return d


def test_cover_art_fixtures_are_what_music_files_carry(cover_dir):
    with av.open(str(cover_dir / "song.m4a")) as c:
        assert [(s.type, bool(s.disposition & av.stream.Disposition.attached_pic)) for s in c.streams] == [
            ("audio", False), ("video", True)]
    with av.open(str(cover_dir / "video_cover_first.mp4")) as c:
        assert [(s.codec_context.name, bool(s.disposition & av.stream.Disposition.attached_pic))
                for s in c.streams] == [("mjpeg", True), ("h264", False)]


def test_audio_with_cover_art_is_refused_like_audio_only(cover_dir, capsys):
    from export.cli import main

    path = cover_dir / "song.m4a"
    for read in (video.probe, lambda p: video.load_clip(p, "k400")):
        with pytest.raises(SqueezeError) as info:
            read(path)
        assert str(info.value) == f"video {path} has no video stream; pass a file with video"
    assert main(["predict", str(path)]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: video {path} has no video stream; pass a file with video"]
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["video_cover_first.mp4", "video_cover_last.mp4"])
def test_cover_art_is_never_taken_for_the_video(cover_dir, name):
    path = cover_dir / name
    info = video.probe(path)
    assert (info.codec, info.width, info.height) == ("h264", 64, 48)
    assert info.frame_counts() == {"declared": 16, "packets": 16, "decoded": 16, "damaged_packets": 0, "damaged_frames": 0} and info.complete
    frames = video.decode_frames(path, range(16))
    assert np.array_equal(frames, video.decode_frames(cover_dir / "video_cover_last.mp4", range(16)))
    result, warned = read_recording(path, frames=4, size=32)
    assert warned == [] and result.clips.shape == (1, 4, 32, 32, 3)
