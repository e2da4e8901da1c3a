"""Inputs a user brings that the rest of the suite does not: half-precision checkpoints cast key by key, damaged or
foreign zip files, unreadable files, a folder given as the video."""

import errno
import shutil
import zipfile

import pytest
import torch

import squeezetime
from squeezetime import SqueezeError
from squeezetime.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def small_state():
    from conftest import randomize_bn

    torch.manual_seed(3)
    model = randomize_bn(squeezetime.build_model("hmdb51", frames=4, width=0.25, depth=14), seed=3).eval()
    return model.state_dict()


@pytest.mark.parametrize("counter", [7.0, 375_000.0])  # a real training count overflows fp16 to inf
def test_whole_dict_fp16_cast_loads(tmp_path, small_state, counter):
    """`{k: v.half() for k, v in sd.items()}` also casts BN's int64 num_batches_tracked: the file is still a valid
    checkpoint (inference never reads the counter), every weight is loaded."""
    half = {k: (torch.tensor(counter).half() if k.endswith("num_batches_tracked") else v.half())
            for k, v in small_state.items()}
    torch.save({"state_dict": half}, tmp_path / "fp16.pth")
    model = load_checkpoint(tmp_path / "fp16.pth")
    counters = [k for k in small_state if k.endswith("num_batches_tracked")]
    assert model.load_report.tensors == len(small_state)
    assert sorted(model.load_report.float_counters) == sorted(counters)
    assert "stored as floats" in model.load_report.summary()
    loaded = model.state_dict()
    for k, v in small_state.items():
        if k.endswith("num_batches_tracked"):
            assert loaded[k].dtype == torch.int64
        else:  # the fp16 values, exactly
            assert torch.equal(loaded[k], v.half().float()), k


def test_fp16_weight_that_overflowed_is_still_refused(tmp_path, small_state):
    half = {k: v.half() for k, v in small_state.items() if not k.endswith("num_batches_tracked")}
    key = next(k for k in half if k.endswith("conv1.weight"))
    half[key] = half[key].clone()
    half[key].view(-1)[0] = float("inf")
    torch.save(half, tmp_path / "bad.pth")
    with pytest.raises(SqueezeError, match="NaN or infinite"):
        load_checkpoint(tmp_path / "bad.pth")


def test_truncated_and_foreign_zip_checkpoints_say_what_they_are(tmp_path, small_state):
    torch.save({"state_dict": small_state}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SqueezeError, match=r"incomplete zip archive: the file is truncated") as info:
        load_checkpoint(tmp_path / "cut.pth")
    assert "miniz" not in str(info.value)
    with zipfile.ZipFile(tmp_path / "other.pth", "w") as zf:
        zf.writestr("weights/readme.txt", "hi")
    with pytest.raises(SqueezeError, match=r"not a PyTorch checkpoint: no data.pkl; it holds weights/readme.txt"):
        load_checkpoint(tmp_path / "other.pth")


def _denied(real_open):
    def fake(path, *args, **kwargs):
        if str(path).endswith(("locked.pth", "locked.mp4")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    return fake


def test_unreadable_checkpoint_and_video_are_named_as_such(tmp_path, small_state, real_video, monkeypatch):
    """(Root reads any file, so the refusal is simulated at open().) FFmpeg reported an unreadable video as
    'not a video or truncated'; PyTorch quoted its errno text inside 'not a readable PyTorch file'."""
    from squeezetime import checkpoint, video

    torch.save({"state_dict": small_state}, tmp_path / "locked.pth")
    shutil.copy(real_video, tmp_path / "locked.mp4")
    monkeypatch.setattr(checkpoint, "open", _denied(open), raising=False)
    monkeypatch.setattr(video, "open", _denied(open), raising=False)
    with pytest.raises(SqueezeError, match=r"locked.pth cannot be read \(Permission denied\); check the file's permissions"):
        load_checkpoint(tmp_path / "locked.pth")
    with pytest.raises(SqueezeError, match=r"locked.mp4 cannot be read \(Permission denied\); check the file's permissions"):
        video.probe(tmp_path / "locked.mp4")


def test_a_folder_given_as_the_video(tmp_path):
    from squeezetime import video

    (tmp_path / "clips.mp4").mkdir()
    with pytest.raises(SqueezeError, match=r"clips.mp4 is a directory; give a video file"):
        video.read_video_clips(tmp_path / "clips.mp4", "k400")


@pytest.mark.parametrize("wrap, prefix_note", [
    (lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3,
                 "pytorch-lightning_version": "2.1.0"}, "model. (on every key)"),          # PyTorch Lightning
    (lambda sd: {"_orig_mod." + k: v for k, v in sd.items()}, "_orig_mod. (on every key)"),  # torch.compile
    (lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()}, "_orig_mod. (on every key)"),  # DDP + compile
    (lambda sd: {"ema_state_dict": dict(sd), "meta": {"epoch": 3}}, None),                     # an EMA copy alone
])
def test_wrapped_state_dicts_load_every_tensor(tmp_path, small_state, wrap, prefix_note):
    """Checkpoints saved through common wrappers were refused with '229 unexpected key(s): model.backbone...'."""
    torch.save(wrap(small_state), tmp_path / "wrapped.pth")
    model = load_checkpoint(tmp_path / "wrapped.pth")
    assert model.load_report.tensors == len(small_state)
    if prefix_note:
        assert prefix_note in model.load_report.summary()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in small_state.items())


def test_two_candidate_state_dicts_are_not_guessed(tmp_path, small_state):
    torch.save({"a": dict(small_state), "b": dict(small_state)}, tmp_path / "two.pth")
    with pytest.raises(SqueezeError, match="non-tensor entries"):
        load_checkpoint(tmp_path / "two.pth")


def test_large_frames_are_resized_one_at_a_time_with_the_same_bytes(tmp_path, real_video, monkeypatch):
    """`predict --views multi` on a 4000x3000 video resized its 160 sampled full-size frames in one float tensor
    (23 GB; a RuntimeError from the allocator on a 23 GB machine). Frames are now resized as they are decoded: no
    resize sees more than one full-size frame, and the views are byte-identical to resizing them together."""
    import av
    import numpy as np

    from squeezetime import video

    path = tmp_path / "big.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 4000, 3000, "yuv420p"
        for i in range(3):
            img = np.zeros((3000, 4000, 3), np.uint8)
            img[..., 0] = np.arange(4000, dtype=np.uint16)[None, :] % 251
            img[..., 1] = (np.arange(3000, dtype=np.uint16)[:, None] * (i + 1)) % 241
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)

    real_resize = video.resize_short_side

    def one_full_size_frame_at_a_time(frames, short):
        # refuses before allocating: the old path would ask for 23 GB here
        assert min(frames.shape[1:3]) <= short or frames.shape[0] == 1, f"{frames.shape[0]} full-size frames at once"
        return real_resize(frames, short)

    monkeypatch.setattr(video, "resize_short_side", one_full_size_frame_at_a_time)
    clips = video.read_video_clips(path, "k400", views="multi").clips
    assert clips.shape == (30, 16, 224, 224, 3)

    monkeypatch.setattr(video, "resize_short_side", real_resize)
    for p, clip_len, num_clips in ((real_video, 16, 2), (path, 4, 1)):
        frames, _, _ = video.read_sampled_frames(p, clip_len, 4, num_clips)
        together = real_resize(torch.from_numpy(frames), 286)
        one_by_one, _, _ = video.read_sampled_frames(p, clip_len, 4, num_clips, resize_short=286)
        assert torch.equal(together, torch.from_numpy(one_by_one))


@pytest.mark.parametrize("wrap", [lambda m: m, lambda m: {"model": m, "epoch": 3}, torch.nn.DataParallel])
def test_a_whole_pickled_module_loads_with_skip_unsafe_metadata(tmp_path, wrap):
    """`torch.save(model)`: refused by default (its pickle names the class), and --skip-unsafe-metadata, which the
    message suggests, then ended in 'holds a SqueezeTime, not a state dict'. The placeholder's recorded
    _parameters/_buffers/_modules are now read as the state dict; the class is never imported."""
    from conftest import randomize_bn

    torch.manual_seed(4)
    model = randomize_bn(squeezetime.build_model("hmdb51", frames=4, width=0.25, depth=14), seed=4).eval()
    torch.save(wrap(model), tmp_path / "whole.pth")
    with pytest.raises(SqueezeError, match=r"arbitrary Python objects.*skip_unsafe_metadata"):
        load_checkpoint(tmp_path / "whole.pth")
    loaded = load_checkpoint(tmp_path / "whole.pth", skip_unsafe_metadata=True)
    assert loaded.load_report.tensors == len(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_an_ava_detection_checkpoint_is_named(tmp_path, small_state):
    """The official release also has SqueezeTime-AVA2.1.pth (a BBox head): it was refused as 'N unexpected key(s):
    roi_head...' with nothing saying why."""
    state = {k: v for k, v in small_state.items() if not k.startswith("cls_head.")}
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 2304)
    state["roi_head.bbox_head.fc_cls.bias"] = torch.zeros(81)
    torch.save({"state_dict": state}, tmp_path / "ava.pth")
    with pytest.raises(SqueezeError, match=r"spatio-temporal detection checkpoint \(AVA"):
        load_checkpoint(tmp_path / "ava.pth")


def _protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    n, size = len(payload), b""
    while True:
        size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([number << 3 | 2]) + size + payload


def test_a_mindspore_checkpoint_is_recognised_by_its_bytes(tmp_path):
    """The official release also ships a MindSpore K400 .ckpt (a protobuf Checkpoint: entries of a parameter's tag and
    its tensor); it was reported as 'bad pickle data'. It is recognised from its bytes and read as MindSpore's (a file
    with two of the network's entries is then named for the keys it lacks; the full port loads:
    tests/test_mindspore_checkpoint.py)."""
    from squeeze_mobile.file_kinds import describe

    tensor = b"\x08\x40" + _protobuf_field(2, b"Float32") + _protobuf_field(3, bytes(256))   # dims, type, content
    entries = b"".join(_protobuf_field(1, _protobuf_field(1, name.encode()) + _protobuf_field(2, tensor))
                       for name in ("backbone.conv1.weight", "backbone.bn1.gamma"))
    (tmp_path / "SqueezeTime_K400.ckpt").write_bytes(entries)
    assert describe(tmp_path / "SqueezeTime_K400.ckpt") == "a MindSpore checkpoint (.ckpt)"
    with pytest.raises(SqueezeError, match=r"shape mismatch|is missing \d+ key"):
        load_checkpoint(tmp_path / "SqueezeTime_K400.ckpt")
    # text that starts with newlines is still text
    (tmp_path / "notes.txt").write_bytes(b"\n\n\nbackbone.x\x12 rest")
    assert describe(tmp_path / "notes.txt") != "a MindSpore checkpoint (.ckpt)"
