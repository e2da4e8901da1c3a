"""CTL-friendly rewrites: a numerically equivalent, export-ready SqueezeTime for mobile backends.

From a loaded model and a fixed input spec this builds a new module in which
- each IOI ``pos_embed`` is resized once for the target feature size (bilinear, align_corners=True)
  and stored as a constant: no interpolate and no shape-dependent Python branch in the graph;
- every BatchNorm is folded into the conv before it: stem, bottleneck conv1/conv3, shortcut and
  depthwise downsample, the CTL ``param_conv`` BN, the IOI ``glo_conv`` BNs, and ``bn2`` (which follows
  the whole CTL module: ``bn2(T + S*G) = (s*T + t) + (s*S)*G``, so its scale goes into ``temporal_conv``
  and ``short_conv`` and its shift becomes the bias of ``temporal_conv``);
- global pooling is a mean over H and W of a 4-D tensor; there are no in-place ops and no 5-D
  tensors after the input; dropout is gone;
- the input is one of three formats: ``clip`` (N x 3 x T x H x W float, official), ``squeezed``
  (N x 3T x H x W float, channel index c*T + t) or ``frames_uint8`` (N x T x H x W x 3 uint8 RGB camera
  frames; the cast, the time-into-channel squeeze and the normalisation happen inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SqueezeError
from .model import Bottleneck, SqueezeTime, evaluating

from .config import INPUT_FORMATS  # noqa: E402  (defined beside the configs: importable without torch)


@dataclass(frozen=True)
class InputSpec:
    """The fixed input an exported graph is specialised for."""

    frames: int = 16
    size: int = 224
    input_format: str = "clip"
    batch: int = 1

    def __post_init__(self):
        import numbers

        for name in ("frames", "size", "batch"):   # 4.0 or "64" failed later inside torch with a raw TypeError
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise SqueezeError(f"InputSpec {name} must be a whole number; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.input_format not in INPUT_FORMATS:
            raise SqueezeError(f"unknown input format {self.input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
        if self.size < 32:
            raise SqueezeError(f"input size {self.size} is too small; use at least 32 (the network downsamples 32x)")
        if self.batch < 1 or self.frames < 1:
            raise SqueezeError("batch and frames must be >= 1")

    @property
    def shape(self):
        n, t, s = self.batch, self.frames, self.size
        return {
            "clip": (n, 3, t, s, s),
            "squeezed": (n, 3 * t, s, s),
            "frames_uint8": (n, t, s, s, 3),
        }[self.input_format]

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.input_format == "frames_uint8" else torch.float32

    @property
    def layout(self) -> str:
        return {
            "clip": "NCTHW float32, normalised RGB",
            "squeezed": "NCHW float32 with C = 3T ordered c*T + t (R0..R{T-1}, G.., B..), normalised",
            "frames_uint8": "NTHWC uint8 RGB 0..255 (normalisation inside the graph)",
        }[self.input_format].replace("{T-1}", str(self.frames - 1))

    def example(self, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.input_format == "frames_uint8":
            return torch.randint(0, 256, self.shape, generator=g, dtype=torch.uint8)
        return torch.randn(self.shape, generator=g)

    def from_clip(self, clip: torch.Tensor, clip_uint8: torch.Tensor = None) -> torch.Tensor:
        """Convert a normalised N x 3 x T x H x W clip (or its uint8 N x T x H x W x 3 source) to this format."""
        if self.input_format == "clip":
            return clip
        if self.input_format == "squeezed":
            n, c, t, h, w = clip.shape
            return clip.reshape(n, c * t, h, w)
        if clip_uint8 is None:
            raise SqueezeError("frames_uint8 input needs the uint8 frames, not a normalised clip")
        return clip_uint8


def _bn_scale_shift(bn: nn.BatchNorm2d):
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    with torch.no_grad():
        new.weight.copy_(weight.float())
        new.bias.copy_(bias.float())
    return new


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d = None, out_scale=None, out_shift=None) -> nn.Conv2d:
    """conv followed by BN (and/or a per-output-channel affine) as one conv with bias, computed in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    if bn is not None:
        s, t = _bn_scale_shift(bn)
        w, b = w * s.view(-1, 1, 1, 1), b * s + t
    if out_scale is not None:
        w, b = w * out_scale.view(-1, 1, 1, 1), b * out_scale
    if out_shift is not None:
        b = b + out_shift
    return _conv_like(conv, w, b)


class FoldedCTL(nn.Module):
    """CTL module with its following bn2 folded in and pos_embed baked for one feature size."""

    def __init__(self, ctl, bn2: nn.BatchNorm2d, feat: int):
        super().__init__()
        pc = ctl.param_conv
        self.param_fc1 = fold_conv_bn(pc[1], pc[2])
        self.param_fc2 = fold_conv_bn(pc[4])
        s2, t2 = _bn_scale_shift(bn2)
        self.temporal_conv = fold_conv_bn(ctl.temporal_conv, out_scale=s2, out_shift=t2)
        sc = ctl.spatial_conv
        self.short_conv = fold_conv_bn(sc.short_conv, out_scale=s2)
        self.glo_conv1 = fold_conv_bn(sc.glo_conv[0], sc.glo_conv[1])
        self.glo_conv2 = fold_conv_bn(sc.glo_conv[3], sc.glo_conv[4])
        self.glo_conv3 = fold_conv_bn(sc.glo_conv[6])
        with torch.no_grad():
            pos = sc.pos_embed.detach()
            if tuple(pos.shape[2:]) != (feat, feat):
                pos = F.interpolate(pos, size=(feat, feat), mode="bilinear", align_corners=True)
        self.register_buffer("pos_embed", pos.clone().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.param_fc2(torch.relu(self.param_fc1(x.mean(dim=(2, 3), keepdim=True)))))
        px = x * p
        g = torch.relu(self.glo_conv1(px))
        g = torch.relu(self.glo_conv2(g + self.pos_embed))
        g = torch.sigmoid(self.glo_conv3(g))
        return self.temporal_conv(px) + self.short_conv(x) * g


class FoldedBottleneck(nn.Module):
    def __init__(self, block: Bottleneck, feat: int):
        super().__init__()
        self.downsample = fold_conv_bn(block.downsample[0], block.downsample[1]) if block.stride != 1 else None
        self.conv1 = fold_conv_bn(block.conv1, block.bn1)
        self.ctl = FoldedCTL(block.conv2, block.bn2, feat)
        self.conv3 = fold_conv_bn(block.conv3, block.bn3)
        self.shortcut = (
            fold_conv_bn(block.shortcut_conv[0], block.shortcut_conv[1]) if block.shortcut_conv is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.ctl(out))
        out = self.conv3(out)
        residual = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + residual)


class ExportReadySqueezeTime(nn.Module):
    """SqueezeTime specialised to one InputSpec; see the module docstring for what changed."""

    def __init__(self, model: SqueezeTime, spec: InputSpec):
        super().__init__()
        cfg = model.config
        if spec.frames != cfg.frames:
            raise SqueezeError(f"input spec has {spec.frames} frames but the model was built for {cfg.frames}")
        self.spec = spec
        self.config = cfg
        net = model.backbone.net
        self.stem = fold_conv_bn(net.conv1, net.bn1)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        feat = _conv_out(_conv_out(spec.size, 5, 2, 2), 3, 2, 1)
        blocks = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in stage:
                if block.stride != 1:
                    feat = _conv_out(feat, 2, 2, 0)
                blocks.append(FoldedBottleneck(block, feat))
        self.blocks = nn.Sequential(*blocks)
        fc = model.cls_head.fc_cls
        self.fc = nn.Linear(fc.in_features, fc.out_features)
        with torch.no_grad():
            self.fc.weight.copy_(fc.weight)
            self.fc.bias.copy_(fc.bias)
        t = spec.frames
        # channel c*T + t of the squeezed tensor belongs to colour c
        mean = torch.tensor(cfg.mean, dtype=torch.float64).repeat_interleave(t)
        std = torch.tensor(cfg.std, dtype=torch.float64).repeat_interleave(t)
        self.register_buffer("in_scale", (1.0 / std).float().view(1, 3 * t, 1, 1))
        self.register_buffer("in_shift", (-mean / std).float().view(1, 3 * t, 1, 1))
        self.eval()

    def squeeze_input(self, x: torch.Tensor) -> torch.Tensor:
        n, t, s = self.spec.batch, self.spec.frames, self.spec.size
        fmt = self.spec.input_format
        if fmt == "clip":
            return x.reshape(n, 3 * t, s, s)
        if fmt == "squeezed":
            return x
        # frames_uint8: N,T,H,W,3 -> N,T,HW,3 (4-D) -> float -> N,3,T,HW -> N,3T,H,W -> normalise
        x = x.reshape(n, t, s * s, 3).to(torch.float32)
        x = x.permute(0, 3, 1, 2).reshape(n, 3 * t, s, s)
        return x * self.in_scale + self.in_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_input(x)
        x = self.maxpool(torch.relu(self.stem(x)))
        x = self.blocks(x)
        # keepdim pooling then a reshape: the 4-D mean-over-H,W form every delegate (XNNPACK included) takes
        x = x.mean(dim=(2, 3), keepdim=True).reshape(self.spec.batch, -1)
        return self.fc(x)


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def export_ready(model: SqueezeTime, spec: InputSpec = None, **spec_kwargs) -> ExportReadySqueezeTime:
    """Build the export-ready rewrite of ``model`` for ``spec`` (or InputSpec(**spec_kwargs)); eval mode."""
    if spec is None:
        spec_kwargs.setdefault("frames", model.config.frames)
        spec = InputSpec(**spec_kwargs)
    with torch.no_grad(), evaluating(model):   # the caller's model keeps its train/eval mode
        return ExportReadySqueezeTime(model, spec).eval()


def graph_report(module: nn.Module, example: torch.Tensor) -> Dict[str, int]:
    """Op histogram of the exported graph (used by tests and the manifest to prove the rewrite's claims)."""
    ep = torch.export.export(module, (example,))
    counts: Dict[str, int] = {}
    max_rank = 0
    for node in ep.graph.nodes:
        if node.op == "call_function":
            name = str(node.target).split(".")[1] if str(node.target).startswith("aten.") else str(node.target)
            counts[name] = counts.get(name, 0) + 1
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                max_rank = max(max_rank, val.dim())
    counts["__max_rank__"] = max_rank
    return counts
