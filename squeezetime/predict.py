"""Top-k action labels for a video file with a PyTorch SqueezeTime model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from squeeze_mobile.errors import user_path

from .config import SqueezeTimeConfig
from .errors import SqueezeError
from .model import SqueezeTime, evaluating, weight_placement
from .video import VideoInfo, load_labels, normalize, read_video_clips, resolve_labels, whole_number


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


def finite_outputs(logits: torch.Tensor, where: str) -> torch.Tensor:
    """``logits`` unchanged, or a one-line error when any is NaN or infinite: finite weights can still compute them
    (a negative BatchNorm variance, values near float32's limit), and NaN scores would be printed as a prediction,
    written into JSON that no strict reader parses, or exported and verified against themselves."""
    if not bool(torch.isfinite(logits).all()):
        raise SqueezeError(f"the model's outputs on {where} are not finite (NaN or infinite): its weights cannot be "
                           "used as they are (e.g. a negative BatchNorm running_var, or values that overflow float32); "
                           "check or re-save the checkpoint")
    return logits


@torch.no_grad()
def classify_video(model: SqueezeTime, path, top: int = 5, views: str = "single",
                   labels: Optional[Sequence[str]] = None) -> VideoPrediction:
    """Decode ``path`` with the official test pipeline; the top-``top`` classes and the video's VideoInfo.

    With several views (``views='multi'``) softmax scores are averaged, as mmaction's
    ``average_clips='prob'`` does. ``labels``: class names in head order, one per class (e.g. from
    :func:`squeezetime.video.read_label_file`) or a label file's path; default: the config's label file when it has one line per class,
    else ``class_N``.
    """
    if not isinstance(model, SqueezeTime):
        raise SqueezeError(f"classify_video takes a SqueezeTime model; got {type(model).__name__}")
    cfg: SqueezeTimeConfig = model.config
    top = whole_number("top", top) or 5  # checked before decoding: top=-1 or 2.5 ended in a PyTorch traceback after it
    labels = resolve_labels(labels, cfg.num_classes)
    place = weight_placement(model)  # checked before decoding: the clip is cast to the model's dtype and device
    # a str as given (read_video_clips names a URL or an empty path as such); other kinds checked and made a Path
    read = read_video_clips(path if isinstance(path, str) else user_path(path, "the video path"), cfg, views=views)
    clips = normalize(read.clips, cfg.mean, cfg.std).to(**place)
    with evaluating(model):
        logits = finite_outputs(model(clips).float(), str(path))
    probs = torch.softmax(logits, dim=1).mean(dim=0).cpu()
    if labels is None:
        labels = load_labels(cfg.labels)
    return VideoPrediction(top_k(probs, labels if len(labels) == cfg.num_classes else None, top), read.info)


def predict_video(model: SqueezeTime, path, top: int = 5, views: str = "single",
                  labels: Optional[Sequence[str]] = None) -> List[Prediction]:
    """Decode ``path`` with the official test pipeline and return the top-``top`` classes."""
    return classify_video(model, path, top, views, labels).top
