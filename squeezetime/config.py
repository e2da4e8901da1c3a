"""Named SqueezeTime configurations and the preprocessing metadata that goes with them.

Like timm's pretrained configs, each named config carries both the architecture hyper-parameters and
what a user needs to feed the network (frames, sampling interval, crop size, mean/std, label file).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from .errors import SqueezeError

# How an exported graph takes its input (see squeezetime.rewrite.InputSpec)
INPUT_FORMATS = ("clip", "squeezed", "frames_uint8")

# Official normalisation (RGB, 0..255 input), from the mmaction2 data preprocessor of the release.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)

# 14: one bottleneck per stage, a reduced network for fast tests and experiments (no official checkpoint);
# ExecuTorch's lowering time grows with the node count, not the width, so int8 tests need fewer blocks
BLOCKS_PER_DEPTH = {14: (1, 1, 1, 1), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
SUPPORTED_FRAMES = (4, 8, 16, 32)


@dataclass(frozen=True)
class SqueezeTimeConfig:
    name: str = "k400"
    depth: int = 50
    width: float = 1.0  # width factor on the stage widths 64/128/256/512
    frames: int = 16  # T; the stem sees 3*T channels
    input_size: int = 224  # training/test crop size
    pos_dim: Tuple[int, int, int, int] = (56, 28, 14, 7)  # pos_embed side per stage
    spatial_strides: Tuple[int, int, int, int] = (1, 2, 2, 2)
    num_classes: int = 400
    dropout: float = 0.5
    # Preprocessing of the official test pipeline.
    frame_interval: int = 4
    resize_short: int = 256  # single-clip (val) pipeline: short side 256 then centre crop
    multiview_resize_short: int = 224  # multi-view (test) pipeline: short side then ThreeCrop
    multiview_clips: int = 10
    mean: Tuple[float, float, float] = MEAN_RGB
    std: Tuple[float, float, float] = STD_RGB
    labels: str = "kinetics400"  # file stem under squeezetime/labels/
    top1_published: float = 71.64

    @property
    def blocks(self) -> Tuple[int, ...]:
        return BLOCKS_PER_DEPTH[self.depth]

    @property
    def stage_widths(self) -> Tuple[int, ...]:
        return tuple(int(w * self.width) for w in (64, 128, 256, 512))

    @property
    def feature_dim(self) -> int:
        return self.stage_widths[-1] * 4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CONFIGS = {
    "k400": SqueezeTimeConfig(),
    "k600": SqueezeTimeConfig(name="k600", num_classes=600, labels="kinetics600", top1_published=76.06),
    "hmdb51": SqueezeTimeConfig(
        name="hmdb51",
        num_classes=51,
        labels="hmdb51",
        multiview_clips=2,
        multiview_resize_short=286,
        top1_published=65.56,
    ),
}

_FIELDS = {f.name for f in dataclasses.fields(SqueezeTimeConfig)}


def get_config(config="k400", **overrides) -> SqueezeTimeConfig:
    """Resolve a config name (or config object) and apply keyword overrides, validating them."""
    if isinstance(config, SqueezeTimeConfig):
        base = config
    else:
        if config not in CONFIGS:
            raise SqueezeError(f"unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
        base = CONFIGS[config]
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise SqueezeError(
            f"unknown SqueezeTime option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_FIELDS))}"
        )
    for key in ("pos_dim", "spatial_strides", "mean", "std"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    cfg = dataclasses.replace(base, **overrides)
    if cfg.depth not in BLOCKS_PER_DEPTH:
        raise SqueezeError(f"depth {cfg.depth} is not supported; use one of {sorted(BLOCKS_PER_DEPTH)}")
    if cfg.frames not in SUPPORTED_FRAMES:
        raise SqueezeError(f"frames={cfg.frames} is not supported; use one of {SUPPORTED_FRAMES}")
    if len(cfg.pos_dim) != 4 or len(cfg.spatial_strides) != 4:
        raise SqueezeError("pos_dim and spatial_strides need exactly four values (one per stage)")
    _check_numbers(cfg)
    if cfg.num_classes < 1 or cfg.width <= 0 or cfg.input_size < 32:
        raise SqueezeError("num_classes must be >= 1, width > 0 and input_size >= 32")
    return cfg


_WHOLE = ("depth", "frames", "input_size", "num_classes", "frame_interval", "resize_short", "multiview_resize_short",
          "multiview_clips")


def _check_numbers(cfg: SqueezeTimeConfig) -> None:
    """Whole numbers where the network or the sampler counts, finite positive scales: NaN width, 2.5 classes or a zero
    std (a clip of infinities) failed later, or not at all."""
    import math
    import numbers

    for name in _WHOLE:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise SqueezeError(f"{name} must be a whole number >= 1; got {value!r}")
    for name in ("pos_dim", "spatial_strides"):
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in getattr(cfg, name)):
            raise SqueezeError(f"{name} must be four whole numbers >= 1; got {getattr(cfg, name)!r}")
    if not isinstance(cfg.width, numbers.Real) or not math.isfinite(cfg.width):
        raise SqueezeError(f"width must be a finite number > 0; got {cfg.width!r}")
    for name in ("mean", "std"):
        values = getattr(cfg, name)
        if len(values) != 3 or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values) \
                or (name == "std" and not all(v > 0 for v in values)):
            raise SqueezeError(f"{name} must be three finite numbers{' > 0' if name == 'std' else ''} (RGB); "
                               f"got {values!r}")
    if not 0 <= cfg.dropout < 1:
        raise SqueezeError(f"dropout must be in [0, 1); got {cfg.dropout!r}")
