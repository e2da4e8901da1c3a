"""Reading the official release's MindSpore checkpoint (.ckpt) of SqueezeTime into PyTorch names.

A MindSpore ``.ckpt`` is one protobuf ``Checkpoint`` message: repeated entries of a parameter's name (``tag``) and a
tensor (``dims``, a type name such as ``Float32``, the raw little-endian bytes). A large tensor may be written as several
consecutive entries with the same name, whose bytes are concatenated. The port's cells mirror the PyTorch modules
(``layer1.0.conv2.spatial_conv.pos_embed``...), so the names differ only where the frameworks name things differently:
BatchNorm's ``gamma``/``beta``/``moving_mean``/``moving_variance`` are PyTorch's ``weight``/``bias``/``running_mean``/
``running_var``, and the classifier is the backbone's own ``fc`` (``cls_head.fc_cls`` in the mmaction layout). A file
saved from a training run also holds the optimizer's state (``moments.*``, ``learning_rate``, ``global_step``...): those
entries are left out and counted in the load report; every other entry goes through the strict load.

The messages are parsed by the protobuf library from a descriptor built here (MindSpore's checkpoint.proto has three
fields per message), so MindSpore itself is not needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from .errors import SqueezeError

# MindSpore's tensor type names (both spellings of the unsigned types occur across versions)
_DTYPES = {
    "Float32": np.float32, "Float16": np.float16, "Float64": np.float64,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "Uint8": np.uint8, "UInt16": np.uint16, "Uint16": np.uint16,
    "UInt32": np.uint32, "Uint32": np.uint32, "UInt64": np.uint64, "Uint64": np.uint64,
    "Bool": np.bool_,
}
# Entries of a training run's state that are no weights of the network (MindSpore's optimizers and loss scaling)
_TRAINING_PREFIXES = ("moments.", "moment1.", "moment2.", "accum.", "adam_m.", "adam_v.", "mean_grad.", "mean_square.",
                      "stat.", "global_step", "learning_rate", "momentum", "beta1_power", "beta2_power", "epoch_num",
                      "step_num", "loss_scale", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                      "random_op")
_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_CLASSIFIER = re.compile(r"^((?:backbone\.)?(?:net\.)?)fc\.(weight|bias)$")

_MESSAGES = None


def _message_class():
    """The ``Checkpoint`` message class, built once from a descriptor (no generated code, no MindSpore)."""
    global _MESSAGES
    if _MESSAGES is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        F = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(name="squeeze_mindspore_checkpoint.proto",
                                                   package="squeeze_mindspore", syntax="proto2")
        tensor = proto.message_type.add(name="TensorProto")
        tensor.field.add(name="dims", number=1, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
        tensor.field.add(name="tensor_type", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        tensor.field.add(name="tensor_content", number=3, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
        checkpoint = proto.message_type.add(name="Checkpoint")
        value = checkpoint.nested_type.add(name="Value")
        value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        value.field.add(name="tensor", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                        type_name=".squeeze_mindspore.TensorProto")
        checkpoint.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                             type_name=".squeeze_mindspore.Checkpoint.Value")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _MESSAGES = message_factory.GetMessageClass(pool.FindMessageTypeByName("squeeze_mindspore.Checkpoint"))
    return _MESSAGES


def _is_training_state(name: str) -> bool:
    return name.startswith(_TRAINING_PREFIXES)


def _torch_name(name: str) -> str:
    """A MindSpore parameter name as the PyTorch module tree names it."""
    match = _CLASSIFIER.match(name)
    if match:  # the port's classifier sits in the backbone; the mmaction layout calls it cls_head.fc_cls
        return f"cls_head.fc_cls.{match.group(2)}"
    head, _, last = name.rpartition(".")
    if head and last in _BN_NAMES:
        return f"{head}.{_BN_NAMES[last]}"
    return name


def read_mindspore_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(PyTorch-named tensors, notes for the load report) from a MindSpore ``.ckpt``; one-line SqueezeError when the
    file is not one (encrypted, truncated, another protobuf) or holds entries no tensor can be made of."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SqueezeError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    from google.protobuf.message import DecodeError

    message = _message_class()()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise SqueezeError(f"checkpoint {path} looks like a MindSpore checkpoint but cannot be parsed ({exc or 'bad data'}): "
                           "the file is truncated, encrypted (MindSpore's enc_key) or not a checkpoint") from None
    # consecutive entries with one name are the slices of one tensor
    groups: List[Tuple[str, list]] = []
    for entry in message.value:
        if groups and groups[-1][0] == entry.tag:
            groups[-1][1].append(entry.tensor)
        else:
            groups.append((entry.tag, [entry.tensor]))
    if not groups:
        raise SqueezeError(f"checkpoint {path} is a MindSpore checkpoint with no entries")
    tensors: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    renamed = 0
    for name, parts in groups:
        if _is_training_state(name):
            skipped.append(name)
            continue
        kind = parts[0].tensor_type
        if kind not in _DTYPES:
            raise SqueezeError(f"checkpoint {path}: MindSpore entry {name!r} has type {kind!r}, which is no tensor "
                               f"type squeeze-mobile reads ({', '.join(sorted(set(_DTYPES)))})")
        dtype = np.dtype(_DTYPES[kind]).newbyteorder("<")
        raw = b"".join(p.tensor_content for p in parts)
        dims = [int(d) for d in parts[-1].dims]
        if any(d < 0 for d in dims):
            raise SqueezeError(f"checkpoint {path}: MindSpore entry {name!r} has a negative dimension {dims}")
        count = int(np.prod(dims)) if dims not in ([], [0]) else 1   # dims [0]: a scalar, as MindSpore writes one
        if len(raw) != count * dtype.itemsize:
            raise SqueezeError(f"checkpoint {path}: MindSpore entry {name!r} holds {len(raw)} bytes, but {kind} of "
                               f"shape {tuple(dims)} needs {count * dtype.itemsize}; the file is damaged")
        array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        shape = () if dims in ([], [0]) else tuple(dims)
        target = _torch_name(name)
        renamed += target != name
        if target in tensors:
            raise SqueezeError(f"checkpoint {path}: MindSpore entries {name!r} and another both map to {target}")
        tensors[target] = torch.from_numpy(array.reshape(shape).copy())
    if not tensors:
        raise SqueezeError(f"checkpoint {path} is a MindSpore checkpoint holding only training state "
                           f"({len(skipped)} entries such as {skipped[0]}), no network weights")
    notes = [f"MindSpore checkpoint: {renamed} names mapped to PyTorch's (BatchNorm gamma/beta/moving_mean/"
             f"moving_variance, classifier fc)"]
    if skipped:
        shown = ", ".join(sorted({s.split(".", 1)[0] + (".*" if "." in s else "") for s in skipped})[:4])
        notes.append(f"{len(skipped)} training-state entries left out ({shown})")
    return tensors, notes
