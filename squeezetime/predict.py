"""Top-k action labels for a video file with a PyTorch SqueezeTime model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .config import SqueezeTimeConfig
from .model import SqueezeTime
from .video import VideoInfo, load_labels, normalize, read_video_clips, whole_number


@dataclass
class Prediction:
    index: int
    label: str
    probability: float


def top_k(probs: torch.Tensor, labels: Optional[List[str]], k: int) -> List[Prediction]:
    k = min(k, probs.numel())
    values, indices = probs.topk(k)
    return [
        Prediction(int(i), labels[int(i)] if labels and int(i) < len(labels) else f"class_{int(i)}", float(v))
        for v, i in zip(values, indices)
    ]


@dataclass
class VideoPrediction:
    """The top classes of a video and what the video held (declared / decoded frame counts)."""

    top: List[Prediction]
    video: VideoInfo


@torch.no_grad()
def classify_video(model: SqueezeTime, path, top: int = 5, views: str = "single") -> VideoPrediction:
    """Decode ``path`` with the official test pipeline; the top-``top`` classes and the video's VideoInfo.

    With several views (``views='multi'``) softmax scores are averaged, as mmaction's
    ``average_clips='prob'`` does.
    """
    cfg: SqueezeTimeConfig = model.config
    top = whole_number("top", top) or 5  # checked before decoding: top=-1 or 2.5 ended in a PyTorch traceback after it
    read = read_video_clips(path, cfg, views=views)
    clips = normalize(read.clips, cfg.mean, cfg.std)
    probs = torch.softmax(model.eval()(clips), dim=1).mean(dim=0)
    labels = load_labels(cfg.labels)
    return VideoPrediction(top_k(probs, labels if len(labels) == cfg.num_classes else None, top), read.info)


def predict_video(model: SqueezeTime, path, top: int = 5, views: str = "single") -> List[Prediction]:
    """Decode ``path`` with the official test pipeline and return the top-``top`` classes."""
    return classify_video(model, path, top, views).top
