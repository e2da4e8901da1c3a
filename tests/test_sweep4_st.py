"""Inputs a demanding user brings that the rest of the suite does not (fourth SqueezeTime sweep): files damaged in
the middle (not cut short), and the other videos, checkpoints and command-line combinations below. Every file is
made here, at test time, with PyAV or byte edits."""

import json
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

from conftest import CODEC_CLIP_FRAMES, CODEC_CLIPS, read_recording, squeeze_warnings, write_small_checkpoint




def decode_all(path):
    """Every frame of the first video stream as RGB, decoded by PyAV directly (no project code)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def damaged_copy(src, dst, start: float, length: int):
    """``src`` with ``length`` bytes zeroed from ``start`` (a fraction of the file): damage, not a cut."""
    data = bytearray(Path(src).read_bytes())
    at = int(len(data) * start)
    data[at: at + length] = bytes(length)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pth", "k400", num_classes=10)


# ------------------------------------------------------------------------------------ damaged mid-stream
@pytest.fixture(scope="module")
def damaged_bikes(tmp_path_factory, real_video):
    """bikes.mp4 with 2000 bytes zeroed in the middle of its coded frames (the index at the end intact)."""
    return damaged_copy(real_video, tmp_path_factory.mktemp("damaged") / "damaged_bikes.mp4", 0.5, 2000)


def test_a_file_damaged_mid_stream_uses_the_frames_that_decode_cleanly(damaged_bikes, real_video):
    """It was refused as a whole ('is corrupt: decoding failed at frame 120'). Now: the 2 packets FFmpeg rejects are
    skipped, the 14 frames decoded from damaged data (concealed, or decoded after the damage and before the next
    keyframe) are left out, one warning gives the counts, and sampling runs on the 234 clean frames (the keyframe
    decoded before the damage and shown after it among them)."""
    path = damaged_bikes
    result, warned = read_recording(path, frames=4, size=64)
    counts = result.info.frame_counts()
    assert counts == {"declared": 250, "packets": 250, "decoded": 234, "damaged_packets": 2, "damaged_frames": 14}
    assert not result.info.complete and result.info.frames == 234
    assert warned == [f"video {path} is damaged: 2 video packets of 250 do not decode and 14 frames decoded from "
                      "damaged data are left out; sampling uses the 234 frames that decode cleanly; re-encode it or "
                      "use another file"]
    with pytest.warns(SqueezeWarning):
        frames, inds, _ = video.read_sampled_frames(path, 16, 4)
    assert inds[0, 0] == int((234 - 64 + 1) / 2)
    # every frame used is bit for bit a frame of the intact file, in order: nothing concealed (whose pixels depend on
    # the decoder's memory reuse) reaches the model
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(real_video))}
    where = [intact.get(f.tobytes()) for f in frames]
    assert None not in where and where == sorted(where)
    # probe agrees and does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert video.probe(path).frame_counts() == counts


def test_damaged_and_truncated_files_are_treated_alike(video_dir, tmp_path):
    """The faststart copy damaged in the middle, then cut at 60%: the damage is counted as in the whole file, the cut
    as in a truncated file, one warning for both."""
    damaged = damaged_copy(video_dir / "faststart.mp4", tmp_path / "damaged.mp4", 0.3, 2000)
    cut = tmp_path / "damaged_then_cut.mp4"
    cut.write_bytes(damaged.read_bytes()[: int(damaged.stat().st_size * 0.6)])
    whole, _ = read_recording(damaged, frames=4, size=64)
    result, warned = read_recording(cut, frames=4, size=64)
    w, c = whole.info.frame_counts(), result.info.frame_counts()
    assert w["damaged_packets"] > 0 and (c["damaged_packets"], c["damaged_frames"]) == (w["damaged_packets"], w["damaged_frames"])
    assert c["declared"] == 250 and c["packets"] == 143
    # the cut-off last packet (flagged by the demuxer) and the damage are what is missing
    assert c["decoded"] == 143 - 1 - c["damaged_packets"] - c["damaged_frames"]
    assert len(warned) == 1 and warned[0].startswith(f"video {cut} is damaged: {c['damaged_packets']} video packet")
    assert "(the container declares 250 frames)" in warned[0]


@pytest.mark.parametrize("name", sorted(CODEC_CLIPS))
def test_zeroed_bytes_in_the_middle_of_any_container(codec_dir, tmp_path, name, real_video):
    """600 zero bytes at 30% of each codec/container: the clean frames are used with one warning (or, where nothing
    was lost, none); never an exception. Each frame used is a frame of the intact file."""
    path = damaged_copy(codec_dir / name, tmp_path / f"zeroed_{name}", 0.3, 600)
    result, warned = read_recording(path, frames=4, size=64)
    counts = result.info.frame_counts()
    assert 1 <= counts["decoded"] <= CODEC_CLIP_FRAMES and result.clips.shape == (1, 4, 64, 64, 3)
    assert len(warned) == (0 if result.info.complete else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames, _, _ = video.read_sampled_frames(path, 4, 2)
    if name.startswith(("h264", "hevc", "mpeg4")):  # codecs whose decoders detect damage in this test's files
        intact = {f.tobytes() for f in decode_all(codec_dir / name)}
        assert all(f.tobytes() in intact for f in frames)


def packet_spans(src):
    """The video packets of ``src`` as (pos, size, is_keyframe), in decode order."""
    with av.open(str(src)) as container:
        return [(p.pos, p.size, p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]


def zero_inside_packets(src, dst, damage):
    """``src`` with bytes zeroed inside its video packets: ``damage`` maps a packet's decode-order number to
    (start as a fraction of the packet, byte count or None for the rest of it)."""
    spans = packet_spans(src)
    data = bytearray(Path(src).read_bytes())
    for number, (start, length) in damage.items():
        pos, size, _ = spans[number]
        at = pos + int(size * start)
        length = pos + size - at if length is None else length
        data[at: at + length] = bytes(length)
    Path(dst).write_bytes(bytes(data))


def frames_used(path):
    """What the reader finds in a damaged file: its counts and, for every frame it uses, that frame's index in
    the intact file (None for a frame the intact file does not have)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = video.probe(path)
        frames = video.decode_frames(path, range(info.frames))
    return info.frame_counts(), frames


@pytest.mark.parametrize("start", [0.3, 0.7])
def test_a_concealed_keyframe_is_left_out_with_its_group(codec_dir, tmp_path, start):
    """32 bytes zeroed inside the second keyframe's slice data: FFmpeg's H.264 decoder conceals the damage without
    rejecting the packet. With slice threads (on any machine with two or more cores) it turned its error
    resilience off, flagged nothing, and the 12 frames of that group -- the keyframe's concealed pixels and the
    frames predicted from them -- were used without a warning. Now the keyframe is flagged and its group left out."""
    src = codec_dir / "h264_bframes.mp4"
    spans = packet_spans(src)
    second_key = [i for i, (_, _, key) in enumerate(spans) if key][1]
    zero_inside_packets(src, tmp_path / "concealed.mp4", {second_key: (start, 32)})
    counts, frames = frames_used(tmp_path / "concealed.mp4")
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(src))}
    assert [intact.get(f.tobytes()) for f in frames] == list(range(second_key))
    assert counts["decoded"] == second_key and counts["damaged_frames"] + counts["damaged_packets"] > 0
    with pytest.warns(SqueezeWarning, match="damaged"):
        video.read_sampled_frames(tmp_path / "concealed.mp4", 4, 2)


def test_damage_is_judged_where_a_frame_was_decoded_not_where_it_is_shown(codec_dir, tmp_path):
    """The second packet after the second keyframe (in decode order) wiped: the decoder rejects it, then outputs the
    keyframe, which was decoded before the damage and is clean. The frames after it in the group predict from the
    lost packet (or from the one stored right before it, whose tail the damage may have reached): they used to be
    used (the keyframe coming out reset the reader's 'damaged' state), frames that are not frames of the file. Now
    they are left out: the first group and the keyframe are used."""
    src = codec_dir / "h264_bframes.mp4"
    spans = packet_spans(src)
    second_key = [i for i, (_, _, key) in enumerate(spans) if key][1]
    zero_inside_packets(src, tmp_path / "lost.mp4", {second_key + 2: (0.0, None)})
    counts, frames = frames_used(tmp_path / "lost.mp4")
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(src))}
    assert [intact.get(f.tobytes()) for f in frames] == list(range(second_key + 1))
    assert counts["damaged_packets"] == 1
    assert counts["decoded"] + counts["damaged_packets"] + counts["damaged_frames"] == len(spans)


def test_a_file_whose_every_packet_is_damaged_is_refused_in_one_line(tmp_path, codec_dir):
    """MJPEG packets wiped: no frame decodes; the refusal says the packets were damaged."""
    src = codec_dir / "mjpeg.mov"
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    for pos, size in spans:
        data[pos: pos + size] = bytes(size)
    path = tmp_path / "all_damaged.mov"
    path.write_bytes(bytes(data))
    with pytest.raises(SqueezeError) as info:
        video.read_clips_uint8(path, "k400", frames=4, size=64)
    text = str(info.value)
    assert "contains no decodable video frames (24 damaged packets rejected, 0 frames decoded from damaged data)" in text
    assert "\n" not in text


def test_a_stream_without_a_decoder_is_named_as_such_not_as_damage(codec_dir, tmp_path):
    """The sample entry's codec renamed ('avc1' -> 'zzzz', as a damaged header or an unknown codec shows it): FFmpeg
    has no decoder. It is not counted as 25 damaged packets (as the damage handling first did)."""
    path = tmp_path / "unknown_codec.mp4"
    path.write_bytes((codec_dir / "h264_bframes.mp4").read_bytes().replace(b"avc1", b"zzzz"))
    with pytest.raises(SqueezeError) as info:
        video.probe(path)
    assert str(info.value) == (f"video {path}: its video stream's codec cannot be decoded by this FFmpeg (an unknown "
                               "codec, or a damaged header); re-encode it or use another file")


def test_predict_on_a_damaged_file_warns_once_and_records_the_damage(damaged_bikes, small_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "export.cli", "predict", str(damaged_bikes), "--checkpoint",
                           str(small_checkpoint), "--top", "2", "--json", "--threads", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["video_frames"] == {"declared": 250, "packets": 250, "decoded": 234, "damaged_packets": 2,
                                   "damaged_frames": 14}
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "is damaged: 2 video packets of 250 do not decode" in warned[0]
    assert "Traceback" not in proc.stderr


def test_scattered_bit_flips_are_used_with_one_warning(video_dir, real_video):
    """corrupt.mp4: 300 bytes flipped over 40% of bikes.mp4 (was refused: 'decoding failed at frame 87'). Every frame
    used is a frame of the intact file, in order (3 of the 124 used before were not: frames after a concealed one
    in decode order but shown before it)."""
    path = video_dir / "corrupt.mp4"
    result, warned = read_recording(path, frames=4, size=64)
    assert result.info.frame_counts() == {"declared": 250, "packets": 250, "decoded": 121, "damaged_packets": 3,
                                          "damaged_frames": 126}
    assert len(warned) == 1 and "sampling uses the 121 frames that decode cleanly" in warned[0]
    counts, frames = frames_used(path)
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(real_video))}
    where = [intact.get(f.tobytes()) for f in frames]
    assert None not in where and where == sorted(where)


def test_damage_across_a_packet_boundary_leaves_out_the_packet_before(tmp_path, real_video):
    """50 zero bytes at 65% of bikes.mp4 cover the last 2 bytes of one P-frame and the header of the next packet:
    the decoder rejects the second and decodes the first without a complaint, though its pixels are wrong (the frame
    is not one of the intact file's; it was used). The packet stored right before a rejected one counts as damaged
    too, so no frame decoded from it is used."""
    path = damaged_copy(real_video, tmp_path / "across.mp4", 0.65, 50)
    at = int(Path(real_video).stat().st_size * 0.65)
    touched = [i for i, (pos, size, _) in enumerate(packet_spans(real_video)) if pos < at + 50 and at < pos + size]
    assert len(touched) == 2   # the damage spans a packet boundary
    counts, frames = frames_used(path)
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(real_video))}
    where = [intact.get(f.tobytes()) for f in frames]
    assert None not in where and where == sorted(where) and counts["damaged_packets"] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_a_frame_found_concealed_after_frames_decoded_from_it_leaves_them_out(tmp_path, real_video, seed):
    """20 bytes flipped over bikes.mp4: a reference frame the decoder concealed comes out (shown) after B-frames
    decoded from it, which were judged clean when they came out. The reader notices and decodes again knowing
    the damage, so every frame used is a frame of the intact file, in order, and probe counts the same."""
    data = bytearray(Path(real_video).read_bytes())
    g = torch.Generator().manual_seed(seed)
    for pos in torch.randint(int(len(data) * 0.05), int(len(data) * 0.9), (20,), generator=g).tolist():
        data[pos] ^= 0x5A
    path = tmp_path / "flipped.mp4"
    path.write_bytes(bytes(data))
    counts, frames = frames_used(path)
    assert counts["damaged_frames"] > 0
    intact = {f.tobytes(): i for i, f in enumerate(decode_all(real_video))}
    where = [intact.get(f.tobytes()) for f in frames]
    assert None not in where and where == sorted(where)
    result, warned = read_recording(path, frames=4, size=64)
    assert result.info.frame_counts() == counts and len(warned) == 1


# ------------------------------------------------------------------------------------ Python API arguments
@pytest.mark.parametrize("kwargs", [{"frames": 0}, {"size": 0}, {"interval": 0}, {"num_clips": 0}, {"resize": 0},
                                    {"frames": -1}, {"size": -5}, {"interval": -2}, {"num_clips": -1},
                                    {"frames": 2.5}, {"size": True}])
def test_load_clip_refuses_sampling_arguments_that_are_not_whole_numbers_from_1(codec_dir, kwargs):
    """frames=0 gave 16 frames (`frames or cfg.frames`), interval=-2 sampled backwards, negatives ended in numpy or
    PyTorch tracebacks, size=True gave a 1x1 crop."""
    (name, value), = kwargs.items()
    with pytest.raises(SqueezeError) as info:
        video.load_clip(codec_dir / "h264_bframes.mp4", "k400", **kwargs)
    assert str(info.value) == f"{name} must be a whole number >= 1 (or None for the default); got {value!r}"
    with pytest.raises(SqueezeError, match="clip_len must be a whole number >= 1"):
        video.read_sampled_frames(codec_dir / "h264_bframes.mp4", 0, 4)


def test_load_clip_takes_numpy_integers_and_none(codec_dir):
    path = codec_dir / "h264_bframes.mp4"
    a = video.read_clips_uint8(path, "k400", frames=np.int64(4), size=np.int32(64), interval=np.int64(2), num_clips=None)
    b = video.read_clips_uint8(path, "k400", frames=4, size=64, interval=2)
    assert a.shape == (1, 4, 64, 64, 3) and torch.equal(a, b)


@pytest.mark.parametrize("top", [0, -1, 2.5, True])
def test_classify_video_refuses_a_top_that_is_not_a_whole_number_from_1(codec_dir, small_model, top):
    """top=-1 and top=2.5 ended in PyTorch tracebacks (after decoding), top=0 returned nothing."""
    from squeezetime.predict import classify_video

    with pytest.raises(SqueezeError, match=f"top must be a whole number >= 1 .*got {top!r}"):
        classify_video(small_model, codec_dir / "h264_bframes.mp4", top=top)


# ------------------------------------------------------------------------------------ --labels for a custom head
def test_predict_labels_names_a_custom_head(tmp_path, codec_dir, small_checkpoint, capsys):
    """A 10-class checkpoint had no way to be given its class names: predict showed class_N and nothing took a file."""
    from export.cli import main

    names = [f"gesture {i}" for i in range(10)]
    (tmp_path / "ten.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (tmp_path / "two.txt").write_text("a\nb\n", encoding="utf-8")
    video_path = str(codec_dir / "h264_bframes.mp4")
    assert main(["predict", video_path, "--checkpoint", str(small_checkpoint), "--top", "10", "--json"]) == 0
    captured = capsys.readouterr()
    plain, plain_err = json.loads(captured.out)["top"], captured.err
    assert main(["predict", video_path, "--checkpoint", str(small_checkpoint), "--top", "10", "--json",
                 "--labels", str(tmp_path / "ten.txt")]) == 0
    captured = capsys.readouterr()
    named = json.loads(captured.out)["top"]
    assert "class_N" not in captured.err
    assert [p["label"] for p in plain] == [f"class_{p['index']}" for p in plain]
    # said once, as the export says it (predict printed class_N without a word)
    assert ("note: the kinetics400 label file does not have one line per class of this 10-class model: classes are "
            "shown as class_N (--labels FILE names them)") in plain_err
    assert [p["label"] for p in named] == [names[p["index"]] for p in plain]  # same ranking, the file's names
    assert [p["probability"] for p in named] == [p["probability"] for p in plain]
    # a file for another head, or none at all: one line, nothing predicted
    two, missing = tmp_path / "two.txt", tmp_path / "missing.txt"
    for bad, message in ((two, f"label file {two} has 2 lines but the model has 10 classes (one label per line, in "
                               "the classifier's order)"),
                         (missing, f"label file not found: {missing}; give a UTF-8 text file with one label per line")):
        assert main(["predict", video_path, "--checkpoint", str(small_checkpoint), "--labels", str(bad)]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and [l for l in captured.err.splitlines() if l.startswith("error:")] == [
            f"error: {message}"]


def test_label_files_from_windows_editors_are_read_as_their_lines(tmp_path, small_checkpoint, capsys):
    """A UTF-8 byte-order mark and CRLF line ends (Notepad), or UTF-16 with its mark: the labels are the lines' text.
    The export writes labels.txt as plain UTF-8 lines, so the apps (which read it line by line) see the same names:
    a copied file started its first label with the mark."""
    from export.cli import main
    from squeezetime.video import read_label_file

    names = [f"gesture {i}" for i in range(9)] + ["café ☕"]
    crlf = "\r\n".join(names) + "\r\n"
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + crlf.encode("utf-8"))
    (tmp_path / "utf16.txt").write_bytes(crlf.encode("utf-16"))
    for name in ("bom.txt", "utf16.txt"):
        assert read_label_file(tmp_path / name, 10) == names
    out = tmp_path / "art"
    assert main(["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx",
                 "--labels", str(tmp_path / "bom.txt"), "--out", str(out)]) == 0
    assert (out / "labels.txt").read_bytes() == "".join(f"{n}\n" for n in names).encode("utf-8")
    assert main(["verify", str(out)]) == 0


def test_export_labels_are_copied_checked_and_kept_by_a_later_export(tmp_path, small_checkpoint, capsys):
    from export.cli import main

    names = [f"gesture {i}" for i in range(10)]
    (tmp_path / "ten.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (tmp_path / "two.txt").write_text("a\nb\n", encoding="utf-8")
    base = ["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx"]
    refused = tmp_path / "refused"
    assert main([*base, "--out", str(refused), "--labels", str(tmp_path / "two.txt")]) == 1
    assert "error: label file" in capsys.readouterr().err and not refused.exists()  # nothing made
    out = tmp_path / "art"
    assert main([*base, "--out", str(out), "--labels", str(tmp_path / "ten.txt")]) == 0
    assert (out / "labels.txt").read_text(encoding="utf-8").splitlines() == names
    assert json.loads((out / "manifest.json").read_text())["labels"] == "labels.txt"
    # exporting again without --labels (same model) keeps them described
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) == 0
    assert "no labels.txt written" not in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["labels"] == "labels.txt"
    assert main(["verify", str(out)]) == 0


# ------------------------------------------------------------------------------------ export options of the other model
@pytest.mark.parametrize("model,options,named", [
    ("squeezetime", ["--weights", "int8"], "--weights applies to `squeeze export decoder`, not squeezetime (SqueezeTime's "
                                           "precision option is --precision)"),
    ("squeezetime", ["--max-context", "999", "--attention", "full"], "--max-context, --attention apply to `squeeze "
                                                                     "export decoder`, not squeezetime"),
    ("decoder", ["--checkpoint", "x.pth", "--size", "64"], "--checkpoint, --size apply to `squeeze export squeezetime`, "
                                                           "not decoder"),
    ("decoder", ["--labels", "names.txt"], "--labels applies to `squeeze export squeezetime`, not decoder"),
])
def test_export_refuses_the_other_models_options(tmp_path, capsys, model, options, named):
    """`squeeze export squeezetime --weights int8` exported fp32 without a word; the decoder ignored --checkpoint."""
    from export.cli import main

    out = tmp_path / "out"
    assert main(["export", model, "--formats", "onnx", "--out", str(out), *options]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {named}; see `squeeze export --help`"] and not out.exists()


def test_export_options_both_models_take_are_not_refused(tmp_path, small_checkpoint, capsys):
    from export.cli import main

    out = tmp_path / "out"
    assert main(["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx",
                 "--threads", "1", "--pte-backend", "xnnpack", "--out", str(out)]) == 0


def test_bench_refuses_decoder_options_for_a_squeezetime_export(tmp_path, small_checkpoint, capsys):
    """`squeeze bench DIR --contexts 2048 --decode-tokens 4` on a SqueezeTime export ran its usual table, ignoring both."""
    from export.cli import main

    out = tmp_path / "art"
    assert main(["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    for options, named in ((["--contexts", "2048", "--decode-tokens", "4"], "--contexts, --decode-tokens apply"),
                           (["--no-profile"], "--no-profile applies")):
        assert main(["bench", str(out), *options, "--threads", "1", "--runs", "1"]) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {named} to decoder directories (squeeze export decoder); {out}: no decoder export "
                          f"there to take {'it' if named.endswith('applies') else 'them'}"]
        assert not (out / "bench").exists()
    assert main(["bench", "--peers", "--llama-cpp"]) == 1
    assert "--llama-cpp applies to decoder directories (squeeze export decoder); --peers does not take it" in \
        capsys.readouterr().err


def test_bench_refuses_phone_options_without_adb(tmp_path, capsys):
    """`squeeze bench DIR --cpu-mask f0` timed this machine unpinned, ignoring the phone's options. Refused before the
    directory is read."""
    from export.cli import main

    assert main(["bench", str(tmp_path), "--cpu-mask", "f0", "--pte-runner", "runner"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: --pte-runner, --cpu-mask apply to phone benchmarks; add --adb [SERIAL] to run on a "
                      "phone, or drop them"]


@pytest.mark.parametrize("options,named", [
    (["--observer", "histogram"], "--observer applies to int8 only; add --precision int8 (or e.g. fp32,int8)"),
    (["--calibration-views", "5", "--observer", "histogram"],
     "--calibration-views, --observer apply to int8 only; add --precision int8 (or e.g. fp32,int8)"),
    (["--pte-backend", "coreml"], "--pte-backend coreml applies to the .pte format, which --formats leaves out; add pte "
                                  "to --formats or drop --pte-backend"),
])
def test_export_refuses_options_its_formats_and_precisions_do_not_use(tmp_path, capsys, options, named):
    """`--formats onnx --observer histogram` (no int8) and `--formats onnx --pte-backend coreml` exported as if the
    option had not been given."""
    from export.cli import main

    out = tmp_path / "out"
    assert main(["export", "squeezetime", "--formats", "onnx", "--out", str(out), *options]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {named}"] and not out.exists()


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("wrap", [
    lambda sd: {"model": {"state_dict": sd}},                                         # a named key inside a named key
    lambda sd: {"checkpoint": {"model": {"state_dict": sd}}, "epoch": 3, "meta": {"seed": 0}},  # under another name
    lambda sd: {"checkpoint": {"module": {"module." + k: v for k, v in sd.items()}}},  # DDP inside a wrapper
])
def test_state_dicts_nested_in_wrappers_load_every_tensor(tmp_path, small_model, wrap):
    """Only one level was unwrapped: {'model': {'state_dict': ...}} was refused as 'non-tensor entries in its state
    dict: state_dict', {'checkpoint': {...}} as '...: checkpoint'."""
    state = small_model.state_dict()
    torch.save(wrap(dict(state)), tmp_path / "nested.pth")
    model = squeezetime.load_checkpoint(tmp_path / "nested.pth")
    assert model.load_report.tensors == len(state)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_nesting_still_does_not_guess_between_two_state_dicts_or_descend_into_metadata(tmp_path, small_model):
    state = dict(small_model.state_dict())
    for obj, named in (({"a": {"state_dict": state}, "b": {"state_dict": state}}, "a, b"),
                       ({"meta": {"epoch": 1}}, "meta")):
        torch.save(obj, tmp_path / "x.pth")
        with pytest.raises(SqueezeError, match=f"has non-tensor entries in its state dict: {named}$"):
            squeezetime.load_checkpoint(tmp_path / "x.pth")


def test_verify_notices_a_label_file_edited_or_reordered(tmp_path, small_checkpoint, capsys):
    """With one line per class still there, `squeeze verify` passed a labels.txt whose lines were swapped: every
    prediction named the wrong class. The export records the file's sha256 now."""
    from export.cli import main

    (tmp_path / "ten.txt").write_text("".join(f"gesture {i}\n" for i in range(10)), encoding="utf-8")
    out = tmp_path / "art"
    assert main(["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx",
                 "--labels", str(tmp_path / "ten.txt"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels_sha256"] == __import__("hashlib").sha256((tmp_path / "ten.txt").read_bytes()).hexdigest()
    assert main(["verify", str(out)]) == 0
    written = (out / "labels.txt").read_bytes()
    (out / "labels.txt").write_bytes(written.replace(b"\n", b"\r\n"))   # a git autocrlf checkout: the same labels
    assert main(["verify", str(out)]) == 0
    (out / "labels.txt").write_bytes(written)
    lines = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    (out / "labels.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out / 'labels.txt'} differs from the label file the export wrote (sha256 differs from "
                      "the manifest): its labels were edited or reordered; copy it back or re-export"]


def test_a_demuxer_error_ends_the_stream_like_a_cut(codec_dir, monkeypatch):
    """FFmpeg's demuxers resync over most damage (no generated file made one fail in 1,050 tries), but one that
    raises mid-file used to refuse the whole file ('demuxing failed after N packets'). The packets before it are used,
    as a truncated file's are, with the one shortfall warning."""
    real_open = av.open

    class FailingDemux:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def demux(self, *streams):
            for i, packet in enumerate(self._container.demux(*streams)):
                if i == 10:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield packet

    monkeypatch.setattr(av, "open", lambda *a, **k: FailingDemux(real_open(*a, **k)))
    path = codec_dir / "h264_bframes.mp4"
    result, warned = read_recording(path, frames=4, size=64)
    counts = result.info.frame_counts()
    # the 10 packets before the error all decode: the frames the decoder still held are flushed out
    assert (counts["declared"], counts["packets"], counts["decoded"]) == (24, 10, 10)
    assert len(warned) == 1 and "the container declares 24 frames but only" in warned[0]


def test_exporting_squeezetime_into_a_decoder_export_names_it(tmp_path, small_checkpoint, capsys):
    """It was refused as a manifest 'not written by `squeeze export`' -- `squeeze export decoder` wrote it."""
    from export.cli import main
    from squeezed_attention.decoder_session import SCHEMA

    out = tmp_path / "decoder_out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "artifacts": []}))
    assert main(["export", "squeezetime", "--checkpoint", str(small_checkpoint), "--size", "64", "--formats", "onnx",
                 "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "manifest.json describes a decoder export (`squeeze export decoder`), not a " \
        "SqueezeTime export" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def _variable_rate_mkv(path, frames=48):
    """A complete Matroska file at a variable frame rate, as screen recorders and MediaRecorder write: 30 fps, then
    the last third of the frames at 10 fps (its nominal rate stays 30)."""
    import fractions

    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
    stream.time_base = fractions.Fraction(1, 1000)
    fast = 2 * frames // 3
    times = [round(i * 1000 / 30) for i in range(fast)] + [round(fast * 1000 / 30) + 100 * i for i in range(frames - fast)]
    rng = np.random.default_rng(0)
    for t in times:
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = t, stream.time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_a_variable_frame_rate_file_is_complete_and_a_truncated_one_is_not(tmp_path):
    """A variable-rate MKV shows fewer frames than its duration x nominal rate: every packet decoding, it is complete
    (it was warned about as truncated); cut short, the packets stop before the declared duration and it warns."""
    whole = tmp_path / "vfr.mkv"
    _variable_rate_mkv(whole)
    info = video.probe(whole)
    assert info.declared_frames is None and info.decoded_frames == info.packets == 48
    assert info.duration * info.fps > 1.5 * 48 and info.complete   # 2.2 s x 30 fps claims ~66 frames
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        video.read_video_clips(whole, "k400", frames=8, size=32)
    assert squeeze_warnings(record) == []
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    short = video.probe(cut)
    assert not short.complete and short.span < 0.9 * short.duration
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        video.read_video_clips(cut, "k400", frames=8, size=32)
    warned = squeeze_warnings(record)
    assert len(warned) == 1 and "the container declares" in warned[0] and "may be truncated" in warned[0]


@pytest.mark.parametrize("protocol", [4, 5])
def test_checkpoints_saved_with_newer_pickle_protocols_load_and_stay_safe(small_checkpoint, tmp_path, protocol):
    """torch.save(..., pickle_protocol=4|5): torch's weights-only reader lacks their FRAME opcode ("bad pickle data"
    was the error); they load with the same tensor-only rule, and an object besides the weights is still refused."""
    import argparse

    from squeezetime.checkpoint import read_state_dict

    state = torch.load(small_checkpoint, weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save(state, plain, pickle_protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # torch's "Detected pickle protocol" note is not shown to the user
        loaded = read_state_dict(plain)
    flat = read_state_dict(small_checkpoint)
    assert loaded.keys() == flat.keys() and all(torch.equal(loaded[k], flat[k]) for k in flat)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    assert read_state_dict(legacy).keys() == flat.keys()
    for path, zipped in ((tmp_path / "meta.pth", True), (tmp_path / "meta_legacy.pth", False)):
        torch.save({**state, "args": argparse.Namespace(lr=0.1)}, path, pickle_protocol=protocol,
                   _use_new_zipfile_serialization=zipped)
        with pytest.raises(SqueezeError, match=r"arbitrary Python objects \(argparse.Namespace\)"):
            read_state_dict(path)
        assert read_state_dict(path, skip_unsafe_metadata=True).keys() == flat.keys()


def test_zero_filled_and_tar_files_are_named_not_called_text(tmp_path, real_video):
    import tarfile

    from squeezetime.checkpoint import read_state_dict

    zeros = tmp_path / "zeros.pth"
    zeros.write_bytes(bytes(5000))
    with pytest.raises(SqueezeError) as e:
        read_state_dict(zeros)
    assert str(e.value) == (f"checkpoint {zeros} is not a readable PyTorch file; it is a file of zero bytes only "
                            "(e.g. space reserved by an interrupted download or copy), not a checkpoint")
    tarred = tmp_path / "ckpt.pth.tar"
    with tarfile.open(tarred, "w") as tar:
        tar.add(real_video, arcname="x.pth")
    with pytest.raises(SqueezeError, match=r"it is a tar archive \(extract the file inside it\), not a checkpoint$"):
        read_state_dict(tarred)
    nul_text = tmp_path / "nul.pth"
    nul_text.write_bytes(b"hello\x00world" * 10)
    with pytest.raises(SqueezeError) as e:
        read_state_dict(nul_text)
    assert "text file" not in str(e.value)


def test_weights_whose_outputs_are_not_finite_are_refused_before_any_output(small_checkpoint, tmp_path, real_video):
    """Finite weights can compute NaN (a negative BatchNorm variance): predict printed NaN into --json (exit 0) and
    export wrote an artifact and a manifest holding NaN. Both now stop in one line and write nothing."""
    state = torch.load(small_checkpoint, weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("bn1.running_var"))
    state["state_dict"][key] = -torch.ones_like(state["state_dict"][key])
    bad = tmp_path / "negative_var.pth"
    torch.save(state, bad)
    cli = [sys.executable, "-m", "export.cli"]
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(cli + ["predict", str(real_video), "--checkpoint", str(bad), "--json", "--threads", "1"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1].startswith("error: the model's outputs on ")
    assert "are not finite (NaN or infinite)" in run.stderr
    out = tmp_path / "export"
    run = subprocess.run(cli + ["export", "squeezetime", "--formats", "onnx", "--checkpoint", str(bad), "--frames", "4",
                                "--size", "32", "--out", str(out), "--threads", "1"],
                         capture_output=True, text=True, cwd=root, timeout=600)
    assert run.returncode == 1 and "are not finite" in run.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_metrics_that_are_not_finite_are_written_as_null():
    from squeeze_mobile.metrics import json_text

    record = {"psnr_db": float("nan"), "rows": [1.0, float("inf"), {"x": -float("inf")}], "ok": 2}
    text = json_text(record)
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert json.loads(text) == {"psnr_db": None, "rows": [1.0, None, {"x": None}], "ok": 2}


def test_destinations_that_are_not_plain_files_are_refused_and_links_written_through(tmp_path):
    """A FIFO or device given as --out was replaced by a plain file (a pack where /dev/full was, as root); a dangling
    link was called "a file"; a link to a file was replaced by a file instead of writing what it points to."""
    import os

    from squeeze_mobile.atomic import check_destination, ensure_writable_dir, write_text_atomic

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SqueezeError, match=r"fifo is a named pipe \(FIFO\), not a file this command can write"):
        check_destination(fifo)
    assert fifo.is_fifo()
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text_atomic(check_destination(link), "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SqueezeError, match=r"dangling is a symbolic link to .*nowhere, which does not exist"):
        ensure_writable_dir(dangling / "sub")


def test_a_config_naming_another_presets_class_count_is_refused(tmp_path):
    """--config k600 with a 400-class checkpoint exported "squeezetime_k600_*" files of a 400-class model; a head of
    a count no preset has (a fine-tune) still takes any --config."""
    path = write_small_checkpoint(tmp_path / "k400.pth", "k400")
    with pytest.raises(SqueezeError, match=r"head has 400 classes, k400's, but config k600 has 600; use --config k400"):
        squeezetime.load_checkpoint(path, config="k600")
    assert squeezetime.load_checkpoint(path).config.name == "k400"
    custom = write_small_checkpoint(tmp_path / "ten.pth", "k400", num_classes=10)
    assert squeezetime.load_checkpoint(custom, config="k600").config.num_classes == 10
