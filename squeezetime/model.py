"""SqueezeTime (depth-50) in plain PyTorch.

Module names mirror the official mmaction2 checkpoint keys (``backbone.net.*`` and
``cls_head.fc_cls.*``) so that an official file loads strictly, BN statistics included.

Time is squeezed into channels by a plain reshape N x 3 x T x H x W -> N x 3T x H x W
(channel index = c*T + t). The Channel-Time Learning (CTL) module replaces the 3x3 conv of a ResNet
bottleneck: a temporal-importance branch (``param_conv``) produces per-channel weights p, and
``CTL(x) = temporal_conv(p*x) + short_conv(x) * glo_conv(p*x [+ pos_embed before the 7x7 conv])``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .config import SqueezeTimeConfig, get_config
from .errors import SqueezeError

GLO_CHANNELS = 16  # width of the IOI (inter-temporal object interaction) branch
POS_EMBED_BEFORE = 3  # pos_embed is added to the input of glo_conv[3], the 7x7 conv


class IOIBranch(nn.Module):
    """Temporal-position restoring branch (named ``spatial_conv`` in the checkpoints)."""

    def __init__(self, channels: int, pos_dim: int):
        super().__init__()
        self.short_conv = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.glo_conv = nn.Sequential(
            nn.Conv2d(channels, GLO_CHANNELS, 3, padding=1, bias=True),
            nn.BatchNorm2d(GLO_CHANNELS),
            nn.ReLU(),
            nn.Conv2d(GLO_CHANNELS, GLO_CHANNELS, 7, padding=3, bias=True),
            nn.BatchNorm2d(GLO_CHANNELS),
            nn.ReLU(),
            nn.Conv2d(GLO_CHANNELS, channels, 3, padding=1, bias=True),
            nn.Sigmoid(),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, GLO_CHANNELS, pos_dim, pos_dim))
        nn.init.kaiming_normal_(self.pos_embed, mode="fan_out", nonlinearity="relu")

    def pos_embed_for(self, height: int, width: int) -> torch.Tensor:
        if tuple(self.pos_embed.shape[2:]) == (height, width):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=(height, width), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        short = self.short_conv(x)
        g = x * p
        for i, layer in enumerate(self.glo_conv):
            if i == POS_EMBED_BEFORE:
                g = g + self.pos_embed_for(g.shape[2], g.shape[3])
            g = layer(g)
        return short * g


class CTL(nn.Module):
    """Channel-Time Learning module (``conv2`` of every bottleneck)."""

    def __init__(self, channels: int, pos_dim: int):
        super().__init__()
        self.param_conv = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.temporal_conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.spatial_conv = IOIBranch(channels, pos_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.param_conv(x)  # N x C x 1 x 1 temporal-importance weights
        return self.temporal_conv(p * x) + self.spatial_conv(x, p)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, pos_dim: int, shortcut: bool):
        super().__init__()
        self.stride = stride
        if stride != 1:
            # Depthwise 2x2/s2 conv + BN; applied before both the main path and the residual.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, in_planes, 2, stride=2, groups=in_planes, bias=True),
                nn.BatchNorm2d(in_planes),
            )
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = CTL(planes, pos_dim)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.shortcut_conv = None
        if shortcut:
            self.shortcut_conv = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.shortcut_conv is None else self.shortcut_conv(x)
        return self.relu(out + residual)


class SqueezeTimeNet(nn.Module):
    """The 2-D backbone on squeezed input (``backbone.net`` in the checkpoints)."""

    def __init__(self, cfg: SqueezeTimeConfig):
        super().__init__()
        widths = cfg.stage_widths
        self.conv1 = nn.Conv2d(3 * cfg.frames, widths[0], 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = widths[0]
        for i, (planes, n, stride, pdim) in enumerate(zip(widths, cfg.blocks, cfg.spatial_strides, cfg.pos_dim)):
            blocks = []
            for b in range(n):
                first = b == 0
                blocks.append(
                    Bottleneck(
                        in_planes,
                        planes,
                        stride=stride if first else 1,
                        pos_dim=pdim,
                        shortcut=first and in_planes != planes * Bottleneck.expansion,
                    )
                )
                in_planes = planes * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        x = x.reshape(n, c * t, h, w)  # squeeze time into channels: index c*T + t
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return x


class SqueezeTimeBackbone(nn.Module):
    def __init__(self, cfg: SqueezeTimeConfig):
        super().__init__()
        self.net = SqueezeTimeNet(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class I2DHead(nn.Module):
    """Global average pool, dropout (train only), linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(x.mean(dim=(2, 3))))


class SqueezeTime(nn.Module):
    """Recognizer: N x 3 x T x H x W normalised clip -> N x num_classes logits."""

    def __init__(self, cfg: SqueezeTimeConfig):
        super().__init__()
        self.config = cfg
        self.backbone = SqueezeTimeBackbone(cfg)
        self.cls_head = I2DHead(cfg.feature_dim, cfg.num_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.backbone(x))


def build_model(config="k400", **overrides) -> SqueezeTime:
    """Build a randomly initialised SqueezeTime for a named config, with optional overrides.

    Example: ``build_model("k400", frames=8, width=0.5, num_classes=10)``.
    """
    return SqueezeTime(get_config(config, **overrides))


def weight_placement(model: nn.Module) -> dict:
    """``{'dtype': ..., 'device': ...}`` of ``model``'s floating-point weights and buffers, the same for all of them
    (a model cast with ``.half()``, ``.bfloat16()`` or ``.double()``, or moved to a GPU, is used as it is: inputs are
    cast to match); a model mixing dtypes or devices is a one-line SqueezeError."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    kinds = sorted({(str(t.dtype).replace("torch.", ""), str(t.device)) for t in tensors})
    if len(kinds) > 1:
        raise SqueezeError("the model's weights are of several dtypes or devices ("
                           + ", ".join(f"{d} on {dev}" for d, dev in kinds) + "); cast the whole model first, e.g. model.float()")
    return {"dtype": tensors[0].dtype, "device": tensors[0].device} if tensors else {}


@contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode inside the block, every submodule's own mode given back after it: predicting or
    exporting mid-training must not leave the owner's model with dropout off and BatchNorm statistics frozen."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def as_cpu_float32(model: nn.Module) -> nn.Module:
    """``model`` itself when its weights are float32 on the CPU, else a float32 CPU copy (the exporters trace float32
    graphs on the CPU; the user's model is left as it is)."""
    place = weight_placement(model)
    if not place or (place["dtype"] == torch.float32 and place["device"].type == "cpu"):
        return model
    import copy

    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def seeded_model(config="k400", seed: int = 0, **overrides) -> SqueezeTime:
    """A deterministic random SqueezeTime with non-trivial BN statistics (for demos, exports and tests).

    Without a checkpoint the commands export this model and say so; ``seed`` is recorded in the manifest so
    ``squeeze verify`` can rebuild exactly the same weights.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config, **overrides)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.6, 1.6)
                    m.weight.uniform_(0.6, 1.4)
                    m.bias.uniform_(-0.2, 0.2)
                    m.num_batches_tracked.fill_(1000)
    return model.eval()


def randomize_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d non-trivial statistics and affine parameters (seeded), so that a loader or converter
    that drops or misplaces them changes the logits (used by the tests and the sample apps' golden files)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.num_batches_tracked.fill_(1234)
    return model
