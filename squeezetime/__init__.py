"""SqueezeTime for mobile: faithful PyTorch model, official checkpoint loading, real video input and
export-ready rewrites.

    >>> import squeezetime
    >>> model = squeezetime.load_checkpoint("SqueezeTime_K400_71.64.pth")      # eval mode
    >>> clip = squeezetime.video.load_clip("video.mp4", model.config)          # 1 x 3 x 16 x 224 x 224
    >>> logits = model(clip)                                                     # 1 x 400
    >>> ready = squeezetime.rewrite.export_ready(model, input_format="frames_uint8")
"""

from . import video, rewrite  # noqa: F401  (public submodules)
from .checkpoint import LoadReport, load_checkpoint, read_state_dict, save_checkpoint
from .config import CONFIGS, SqueezeTimeConfig, get_config
from .errors import SqueezeError
from .model import SqueezeTime, build_model, seeded_model
from .predict import predict_video

__all__ = [
    "CONFIGS",
    "LoadReport",
    "SqueezeError",
    "SqueezeTime",
    "SqueezeTimeConfig",
    "build_model",
    "get_config",
    "load_checkpoint",
    "predict_video",
    "read_state_dict",
    "rewrite",
    "save_checkpoint",
    "seeded_model",
    "video",
]
