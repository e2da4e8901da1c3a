"""Real video input: decoding, official sampling, loop policy, crops, and clean failures on broken files."""

import pytest
import torch

from squeezetime import SqueezeError, video
from squeezetime.config import MEAN_RGB, STD_RGB


def test_probe_real_video(real_video):
    info = video.probe(real_video)
    assert (info.frames, info.width, info.height, info.codec) == (250, 640, 272, "h264")
    assert info.fps == pytest.approx(25.0)


def test_sampling_matches_mmaction_test_mode():
    # 250 frames, 16 x 4: one clip centred at offset int((250-64+1)/2) = 93
    inds = video.sample_indices(250, 16, 4, 1)
    assert inds.tolist() == [list(range(93, 93 + 64, 4))]
    ten = video.sample_indices(250, 16, 4, 10)
    assert ten[:, 0].tolist() == [9, 28, 46, 65, 84, 102, 121, 140, 158, 177]
    # a 30-frame video loops: indices wrap modulo the frame count
    short = video.sample_indices(30, 16, 4, 1)[0]
    assert short.tolist() == [(4 * i) % 30 for i in range(16)]


def test_resize_gives_the_same_bytes_on_any_thread_count(real_video):
    # PyTorch has a separate one-thread bilinear kernel that rounds differently on this clip (3 bytes at 73 px)
    frames = torch.from_numpy(video.decode_frames(real_video, [117, 121, 125, 129]))
    before = torch.get_num_threads()
    try:
        out = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out[threads] = [video.resize_short_side(frames, s) for s in (73, 256)]
            assert torch.get_num_threads() == threads  # the caller's setting is left as it was
    finally:
        torch.set_num_threads(before)
    for threads in (1, 3):
        assert all(torch.equal(a, b) for a, b in zip(out[threads], out[2]))


def test_single_clip_shape_and_statistics(real_video):
    u8 = video.read_clips_uint8(real_video, "k400")
    assert u8.shape == (1, 16, 224, 224, 3) and u8.dtype == torch.uint8
    # the same frames decoded directly and centre-cropped after a short-side-256 resize
    frames = video.decode_frames(real_video, [93, 97])
    assert frames.shape == (2, 272, 640, 3)
    resized = video.resize_short_side(torch.from_numpy(frames), 256)
    assert resized.shape == (2, 256, 602, 3)
    y, x = (256 - 224) // 2, (602 - 224) // 2
    assert torch.equal(u8[0, :2], resized[:, y:y + 224, x:x + 224])
    clip = video.load_clip(real_video, "k400")
    assert clip.shape == (1, 3, 16, 224, 224) and clip.dtype == torch.float32
    # normalisation is exactly (x - mean) / std per RGB channel
    expect = (u8.float() - torch.tensor(MEAN_RGB)) / torch.tensor(STD_RGB)
    assert torch.allclose(clip, expect.permute(0, 4, 1, 2, 3), atol=1e-6)
    # real footage: not constant, plausible range and spread
    assert 0.3 < clip.std().item() < 1.5
    assert -2.2 < clip.min().item() < -1.0 and 1.0 < clip.max().item() < 2.7
    # consecutive sampled frames differ (it is video, not a still)
    assert (u8[0, 1].float() - u8[0, 0].float()).abs().mean() > 1.0


def test_multiview_protocol(real_video):
    views = video.read_clips_uint8(real_video, "k400", views="multi", num_clips=2)
    assert views.shape == (6, 16, 224, 224, 3)  # 2 clips x 3 crops
    # ThreeCrop of a wide frame: left, centre, right crops of the same clip differ
    assert not torch.equal(views[0], views[2])
    hmdb = video.read_clips_uint8(real_video, "hmdb51", frames=4, views="multi")
    assert hmdb.shape == (6, 4, 224, 224, 3)  # HMDB51: 2 clips x ThreeCrop


def test_short_video_loops(video_dir):
    path = video_dir / "short30.mp4"
    assert video.probe(path).frames == 30
    u8 = video.read_clips_uint8(path, "k400", frames=16)
    assert u8.shape == (1, 16, 224, 224, 3)
    # indices 0,4,...,28 then 32 mod 30 = 2: the 9th sample loops back to frame 2
    raw = video.resize_short_side(torch.from_numpy(video.decode_frames(path, [0, 2])), 256)
    y, x = (256 - 224) // 2, (602 - 224) // 2
    assert torch.equal(u8[0, 0], raw[0, y:y + 224, x:x + 224])
    assert torch.equal(u8[0, 8], raw[1, y:y + 224, x:x + 224])


@pytest.mark.parametrize(
    "name,message",
    [
        ("truncated_tail.mp4", "cannot be opened: not a video or truncated"),
        # truncated_faststart.mp4 is no longer refused: its 142 decodable frames are used with a warning
        # (tests/test_video_formats.py)
        # corrupt.mp4 (damaged mid-stream) is no longer refused: its clean frames are used with a warning
        # (tests/test_sweep4_st.py)
        ("not_a_video.mp4", "cannot be opened"),
        ("empty.mp4", "is empty"),
        ("audio_only.wav", "has no video stream"),
        ("missing.mp4", "does not exist"),
    ],
)
def test_broken_files_fail_cleanly(video_dir, name, message):
    path = video_dir / name
    with pytest.raises(SqueezeError, match=message) as info:
        video.load_clip(path, "k400")
    text = str(info.value)
    assert str(path) in text and "\n" not in text


def test_label_files_ship_with_the_package():
    k400 = video.load_labels("kinetics400")
    k600 = video.load_labels("kinetics600")
    hmdb = video.load_labels("hmdb51")
    assert (len(k400), len(k600), len(hmdb)) == (400, 600, 51)
    assert k400[0] == "abseiling" and k400[-1] == "zumba" and hmdb[0] == "brush_hair"
    assert len(set(k400)) == 400
    with pytest.raises(SqueezeError):
        video.load_labels("ucf101")
