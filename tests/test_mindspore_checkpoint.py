"""The official release's MindSpore .ckpt of SqueezeTime loads, with the names of the MindSpore port's cells.

The files are written here byte by byte in protobuf's wire format (MindSpore's checkpoint.proto: repeated Value {tag = 1,
tensor = 2 {dims = 1, tensor_type = 2, tensor_content = 3}}), independently of the reader's protobuf descriptor, with
the names the port's cells give its parameters (BatchNorm gamma/beta/moving_mean/moving_variance, no
num_batches_tracked, the classifier as the backbone's fc), large tensors split into consecutive slices as MindSpore
writes them, and a training run's optimizer state beside the weights.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import squeezetime
from squeezetime import SqueezeError

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_TYPES = {torch.float32: "Float32", torch.float16: "Float16", torch.int32: "Int32", torch.int64: "Int64"}


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


def _tensor(dims, kind: str, content: bytes) -> bytes:
    return b"".join(bytes([1 << 3]) + _varint(d) for d in dims) + _field(2, kind.encode()) + _field(3, content)


def _entries(name: str, value: torch.Tensor, slices: int = 1) -> bytes:
    data = value.detach().contiguous().numpy().astype(value.numpy().dtype.newbyteorder("<")).tobytes()
    dims = list(value.shape) or [0]           # MindSpore writes a scalar with dims [0]
    step = -(-len(data) // slices)
    return b"".join(_field(1, _field(1, name.encode()) + _field(2, _tensor(dims, _TYPES[value.dtype], data[i:i + step])))
                    for i in range(0, len(data), step))


def _mindspore_name(key: str, prefix: str) -> str:
    if key.startswith("cls_head.fc_cls."):
        return prefix + "fc." + key.rsplit(".", 1)[1]
    name = key[len("backbone.net."):]
    head, _, last = name.rpartition(".")
    if last in _BN:
        # only BatchNorm has running statistics; its weight/bias are gamma/beta (convs keep weight/bias)
        return prefix + f"{head}.{_BN[last]}"
    return prefix + name


def _is_bn(model, key: str) -> bool:
    module = model.get_submodule(key.rsplit(".", 1)[0])
    return isinstance(module, torch.nn.BatchNorm2d)


def write_mindspore_ckpt(model, path, prefix="", dtype=None, optimizer_state=True, slices=3):
    """The model's weights as the MindSpore port saves them (names of its cells; ``prefix`` e.g. 'net.')."""
    body = b""
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue                                   # MindSpore's BatchNorm keeps no step counter
        if key.startswith("backbone.net.") and not _is_bn(model, key):
            name = prefix + key[len("backbone.net."):]
        else:
            name = _mindspore_name(key, prefix)
        value = value.to(dtype) if dtype is not None and value.is_floating_point() else value
        big = value.numel() > 4096
        body += _entries(name, value, slices if big else 1)
        if optimizer_state and value.is_floating_point():
            body += _entries("moments." + name, torch.zeros_like(value))
    if optimizer_state:
        body += _entries("learning_rate", torch.tensor(0.01)) + _entries("global_step", torch.tensor([1200], dtype=torch.int32))
    path.write_bytes(body)
    return path


def _clip(frames=4, size=64):
    return torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("prefix", ["", "net.", "backbone.net."])
def test_the_mindspore_port_loads_and_reproduces_the_logits(tmp_path, small_model, prefix):
    path = write_mindspore_ckpt(small_model, tmp_path / "SqueezeTime_K400_ms.ckpt", prefix=prefix)
    loaded = squeezetime.load_checkpoint(path)
    x = _clip()
    with torch.no_grad():
        assert torch.equal(loaded(x), small_model(x))
    # BN running statistics arrived under their MindSpore names
    bn = loaded.backbone.net.layer2[0].conv2.param_conv[2]
    assert torch.equal(bn.running_var, small_model.backbone.net.layer2[0].conv2.param_conv[2].running_var)
    summary = loaded.load_report.summary()
    assert "MindSpore checkpoint" in summary and "training-state entries left out (global_step, learning_rate, moments.*)" in summary
    assert loaded.config.num_classes == 10 and loaded.config.frames == 4 and loaded.config.width == 0.25


def test_a_half_precision_mindspore_checkpoint_loads(tmp_path, small_model):
    path = write_mindspore_ckpt(small_model, tmp_path / "half.ckpt", dtype=torch.float16, optimizer_state=False)
    loaded = squeezetime.load_checkpoint(path)
    state = loaded.state_dict()
    ref = small_model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            assert torch.equal(value, ref[key].half().float()), key
    assert "training-state" not in loaded.load_report.summary()


def test_predict_takes_a_mindspore_checkpoint(tmp_path, small_model, real_video):
    path = write_mindspore_ckpt(small_model, tmp_path / "ms.ckpt")
    run = subprocess.run([sys.executable, "-m", "export.cli", "predict", str(real_video), "--checkpoint", str(path),
                          "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert len(out["top"]) == 5


def test_damaged_or_foreign_mindspore_files_are_one_line_errors(tmp_path, small_model):
    good = write_mindspore_ckpt(small_model, tmp_path / "good.ckpt", optimizer_state=False).read_bytes()
    # truncated inside an entry
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    with pytest.raises(SqueezeError, match=r"looks like a MindSpore checkpoint but cannot be parsed .*truncated"):
        squeezetime.load_checkpoint(tmp_path / "cut.ckpt")
    # a slice missing: the bytes do not fill the tensor's shape
    name = b"layer1.0.conv1.weight"
    w = small_model.backbone.net.layer1[0].conv1.weight
    bad = _field(1, _field(1, name) + _field(2, _tensor(list(w.shape), "Float32", bytes(8))))
    (tmp_path / "short.ckpt").write_bytes(bad + good)
    with pytest.raises(SqueezeError, match=r"entry 'layer1.0.conv1.weight' holds \d+ bytes, but Float32 of shape"):
        squeezetime.load_checkpoint(tmp_path / "short.ckpt")
    # another network's MindSpore checkpoint: the strict load names what does not fit
    other = _entries("encoder.dense.weight", torch.zeros(4, 4)) + _entries("encoder.norm.gamma", torch.ones(4))
    (tmp_path / "other.ckpt").write_bytes(other)
    with pytest.raises(SqueezeError, match=r"unexpected key\(s\): encoder.dense.weight, encoder.norm.weight"):
        squeezetime.load_checkpoint(tmp_path / "other.ckpt")
    # only optimizer state
    (tmp_path / "opt.ckpt").write_bytes(_entries("moments.conv1.weight", torch.zeros(2, 2)))
    with pytest.raises(SqueezeError, match=r"holding only training state"):
        squeezetime.load_checkpoint(tmp_path / "opt.ckpt")
    # a string entry where a weight should be
    (tmp_path / "str.ckpt").write_bytes(_field(1, _field(1, b"conv1.weight") + _field(2, _tensor([0], "str", b"abcd"))))
    with pytest.raises(SqueezeError, match=r"has type 'str', which is no tensor type"):
        squeezetime.load_checkpoint(tmp_path / "str.ckpt")
