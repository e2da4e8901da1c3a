"""Top-k action labels for a video file with a PyTorch SqueezeTime model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .config import SqueezeTimeConfig
from .model import SqueezeTime
from .video import load_clip, load_labels


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


@torch.no_grad()
def predict_video(model: SqueezeTime, path, top: int = 5, views: str = "single") -> List[Prediction]:
    """Decode ``path`` with the official test pipeline and return the top-``top`` classes.

    With several views (``views='multi'``) softmax scores are averaged, as mmaction's
    ``average_clips='prob'`` does.
    """
    cfg: SqueezeTimeConfig = model.config
    clips = load_clip(path, cfg, views=views)
    probs = torch.softmax(model.eval()(clips), dim=1).mean(dim=0)
    labels = load_labels(cfg.labels) if len(load_labels(cfg.labels)) == cfg.num_classes else None
    return top_k(probs, labels, top)
