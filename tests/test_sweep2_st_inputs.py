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
