"""Evaluate a saved Core ML ML program (.mlpackage) with numpy, op by op, on any OS.

Apple's runtime runs only on macOS, but an ML program is a typed MIL graph and the saved file can be read
back (coremltools' milproto loader) and evaluated. What this gives is the *semantics of the saved file*:
every weight, layout, padding, quantization axis and scale exactly as written, every op's output rounded to
the dtype the program declares for it (an fp16 program's activations are fp16 values, so fp16 overflow
shows as inf). It is not Apple's runtime: Apple documents a program's declared types as the minimum
precision (an fp16 program may run in fp32) and does not document the accumulation precision inside an op.
For that unknown, conv / linear / matmul run in one of two accumulation modes:

- ``fp32``: products and sums in fp32, the result rounded once to the declared dtype;
- ``fp16``: inputs, products and the running sum in fp16: the sum is rounded to fp16 after every
  :data:`FP16_BLOCK` products (an fp16 accumulator fed by a short fp32 adder); with fp16 weights and
  activations each product of two fp16 values is exact in fp32, so this is the fp16 dot product up to the
  rounding inside each block.

The two modes bracket what a device can do for an fp16 program. Ops without numpy code here stop the
evaluation with "cannot evaluate op X". Conv, pooling, normalisation and the activations are implemented
from the MIL op specification (coremltools' op docstrings), not taken from any runtime.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from squeeze_mobile.errors import SqueezeError

_HERE = {"Darwin": "macOS"}.get(platform.system(), platform.system() or "this machine")
EVALUATOR = f"MIL program evaluated on {_HERE} (semantics of the saved file), not Apple's runtime"
ACCUMULATIONS = ("fp32", "fp16")
# products summed exactly (fp32) before each fp16 rounding of the running sum, in fp16-accumulation mode.
# Rounding after every product (1) is ~10x slower; on full-size SqueezeTime it doubled the fp16-accumulation
# error (6.8e-3 vs 3.6e-3 relative L2 to PyTorch, top-5 unchanged).
FP16_BLOCK = 4


class CannotEvaluate(SqueezeError):
    """The evaluator has no implementation for something in the program (an op, a mode, control flow): a limit
    of this checker, not a fault of the artifact; verification reports the artifact as not run."""

    not_run = True


_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
           "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
           "bool": np.bool_,
           # sub-byte constants (4-bit blockwise weights, palette indices): held one value per byte
           "int4": np.int8, "uint4": np.uint8, "uint1": np.uint8, "uint2": np.uint8, "uint3": np.uint8,
           "uint6": np.uint8}


def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def round_to(x, dtype_name: str) -> np.ndarray:
    """``x`` rounded to a MIL dtype. fp16 values are kept in float32 arrays (exactly representable, so the
    rounding is what an fp16 tensor holds; numpy arithmetic on float16 arrays is many times slower)."""
    x = np.asarray(x)
    if dtype_name == "fp16":
        with np.errstate(over="ignore"):  # overflow to inf is the point: fp16 overflow must show
            return x.astype(np.float16).astype(np.float32)
    if dtype_name == "string":
        return x
    if dtype_name not in _DTYPES:
        raise CannotEvaluate(f"cannot evaluate MIL dtype {dtype_name}")
    return x.astype(_DTYPES[dtype_name], copy=False)


def _f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


def _round11_(x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Round float32 ``x`` in place to 11 significant bits (fp16's precision) by Veltkamp splitting.

    Three float32 passes instead of two slow casts; identical to the cast for values in fp16's normal range.
    It neither overflows at 65504 nor loses bits below fp16's normal range: the fp16-accumulation mode models
    the precision of the running sum; range problems show when an op's output is rounded to its dtype.
    """
    np.multiply(x, np.float32(8193.0), out=tmp)
    np.subtract(tmp, x, out=x)
    np.subtract(tmp, x, out=x)
    return x


# ------------------------------------------------------------------------------------- products and sums
def dot(a: np.ndarray, b: np.ndarray, accumulation: str = "fp32") -> np.ndarray:
    """Batched ``a @ b`` (a's last axis against b's second-to-last) with fp32 or fp16 accumulation.

    fp16: inputs rounded to fp16, then for every block of FP16_BLOCK products the exact fp32 sum is rounded to
    fp16 and added to an fp16 running sum (rounded again).
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if accumulation == "fp32":
        return np.matmul(a, b)
    if accumulation != "fp16":
        raise SqueezeError(f"unknown accumulation {accumulation!r}; use fp32 or fp16")
    a, b = _round11_(a.copy(), np.empty_like(a)), _round11_(b.copy(), np.empty_like(b))
    step = FP16_BLOCK
    acc = np.matmul(a[..., :step], b[..., :step, :])
    tmp, part = np.empty_like(acc), np.empty_like(acc)
    _round11_(acc, tmp)
    for k0 in range(step, a.shape[-1], step):
        np.matmul(a[..., k0:k0 + step], b[..., k0:k0 + step, :], out=part)
        acc += _round11_(part, tmp)
        _round11_(acc, tmp)
    return acc


# --------------------------------------------------------------------------------------- conv and pooling
def _ints(v, n: int, default: int) -> list[int]:
    if v is None:
        return [default] * n
    return [int(i) for i in np.asarray(v).reshape(-1)]


def spatial_padding(pad_type: str, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                    dilations: Sequence[int], pad=None) -> list[int]:
    """Padding before/after every spatial axis, [b0, a0, b1, a1, ...], per the MIL conv/pool pad_type.

    ``same``/``same_lower``: the output has ceil(in / stride) positions and the total padding is
    max(0, (out - 1) * stride + dilated kernel - in); ``same`` puts the odd element after, ``same_lower`` before.
    """
    n = len(in_sizes)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type == "custom":
        out = _ints(pad, 2 * n, 0)
        if len(out) != 2 * n:
            raise SqueezeError(f"MIL pad has {len(out)} values for {n} spatial axes")
        return out
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            out += [small, big] if pad_type == "same" else [big, small]
        return out
    raise CannotEvaluate(f"cannot evaluate MIL pad_type {pad_type!r}")


def _windows(xp: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """View of every window of the (already padded) N x C x *D input: N x C x *out x *kernel."""
    n = len(kernel)
    axes = tuple(range(2, 2 + n))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    w = sliding_window_view(xp, span, axis=axes)
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return w[index]


def conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, strides=None, pad_type: str = "valid",
         pad=None, dilations=None, groups: int = 1, accumulation: str = "fp32") -> np.ndarray:
    """MIL ``conv``: x N x C_in x *D (1 to 3 spatial axes), weight C_out x C_in/groups x *K, optional bias."""
    x = np.asarray(x, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32)
    nsp = x.ndim - 2
    if nsp < 1 or nsp > 3 or weight.ndim != x.ndim:
        raise SqueezeError(f"MIL conv takes 3-D to 5-D input and a kernel of the same rank, got {x.shape} and {weight.shape}")
    kernel = list(weight.shape[2:])
    strides, dilations = _ints(strides, nsp, 1), _ints(dilations, nsp, 1)
    groups = int(groups)
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] * groups != c_in:
        raise SqueezeError(f"MIL conv: {c_in} input channels, kernel {weight.shape} and groups={groups} do not fit")
    pads = spatial_padding(pad_type, x.shape[2:], kernel, strides, dilations, pad)
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(nsp)])
    if all(k == 1 for k in kernel):  # 1x1: no windows, strides pick positions
        xs = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
        out_sizes = list(xs.shape[2:])
        cols = xs.reshape(n, groups, c_in // groups, -1)
    else:
        win = _windows(x, kernel, strides, dilations)  # N x C x *out x *K
        out_sizes = list(win.shape[2:2 + nsp])
        # N x g x (C/g * K) x L: the contraction axis before the positions, as matmul wants it
        win = win.reshape((n, groups, c_in // groups) + win.shape[2:])
        order = (0, 1, 2) + tuple(range(3 + nsp, 3 + 2 * nsp)) + tuple(range(3, 3 + nsp))
        cols = win.transpose(order).reshape(n, groups, -1, int(np.prod(out_sizes)))
    w = weight.reshape(groups, c_out // groups, -1)
    out = dot(w[None], cols, accumulation).reshape([n, c_out] + out_sizes)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float32).reshape([1, c_out] + [1] * nsp)
        if accumulation == "fp16":
            out = _f16(out)
    return out


def pool(x: np.ndarray, kind: str, kernel_sizes, strides=None, pad_type: str = "valid", pad=None,
         ceil_mode: bool = False, exclude_padding_from_average: bool = False) -> np.ndarray:
    """MIL ``max_pool`` / ``avg_pool`` over the spatial axes of N x C x *D.

    ``ceil_mode`` follows PyTorch (as the MIL spec says): ceil instead of floor for the output size, no window
    that starts inside the right padding (when there is padding); windows that run past the padded input cover
    fewer elements (and average over those). ``exclude_padding_from_average`` leaves the zeros of the padding out of the count.
    """
    x = np.asarray(x, dtype=np.float32)
    nsp = x.ndim - 2
    kernel = _ints(kernel_sizes, nsp, 1)
    strides = _ints(strides, nsp, 1)
    pads = spatial_padding(pad_type, x.shape[2:], kernel, strides, [1] * nsp, pad)
    extra = []
    for i in range(nsp):
        size = x.shape[2 + i] + pads[2 * i] + pads[2 * i + 1]
        if ceil_mode:  # (coremltools' shape rule, which the saved file's declared shapes follow)
            out = -(-(size - kernel[i]) // strides[i]) + 1
            if pads[2 * i] + pads[2 * i + 1] > 0 and (out - 1) * strides[i] >= x.shape[2 + i] + pads[2 * i]:
                out -= 1
        else:
            out = (size - kernel[i]) // strides[i] + 1
        extra.append(max(0, (out - 1) * strides[i] + kernel[i] - size))
    width = [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1] + extra[i]) for i in range(nsp)]
    axes = tuple(range(-nsp, 0))
    if kind == "max":
        xp = np.pad(x, width, constant_values=-np.inf)
        return _windows(xp, kernel, strides, [1] * nsp).max(axis=axes)
    if kind != "avg":
        raise SqueezeError(f"unknown pool kind {kind!r}")
    xp = np.pad(x, width)
    total = _windows(xp, kernel, strides, [1] * nsp).sum(axis=axes, dtype=np.float32)
    # how many elements each window averages over: the input, plus the explicit padding unless excluded
    ones = np.ones((1, 1) + x.shape[2:], np.float32)
    if exclude_padding_from_average:
        count = np.pad(ones, width)
    else:
        count = np.pad(np.pad(ones, [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(nsp)],
                              constant_values=1), [(0, 0), (0, 0)] + [(0, e) for e in extra])
    denom = _windows(count, kernel, strides, [1] * nsp).sum(axis=axes)
    return total / np.maximum(denom, 1.0)


# ------------------------------------------------------------------------------------------- the op table
class _Op:
    """One op's inputs by name: ``a["x"]`` the value, ``a.py("axis")`` a Python scalar/list, ``a.has(name)``."""

    def __init__(self, values: dict[str, object], op):
        self.values, self.op = values, op

    def __getitem__(self, name):
        return self.values[name]

    def has(self, name) -> bool:
        return self.values.get(name) is not None

    def get(self, name, default=None):
        v = self.values.get(name)
        return default if v is None else v

    def py(self, name, default=None):
        v = self.values.get(name)
        if v is None:
            return default
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()

    def flag(self, name, default=False) -> bool:
        # numpy 2 gives np.bool_ for MIL bools; bool() accepts both
        return bool(self.py(name, default))


Handler = Callable[[_Op, str], object]
OPS: dict[str, Handler] = {}


def _op(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _f(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)


_UNARY = {
    "relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6), "sigmoid": lambda x: _sigmoid(x),
    "tanh": np.tanh, "exp": np.exp, "exp2": np.exp2, "abs": np.abs, "sign": np.sign, "ceil": np.ceil,
    "floor": np.floor, "round": np.round, "square": np.square, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "silu": lambda x: x * _sigmoid(x), "softplus": lambda x: np.logaddexp(0, x), "logical_not": np.logical_not,
    "identity": lambda x: x, "sqrt": np.sqrt,
}


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _unary(fn):
    return lambda a, acc: fn(_f(a["x"]))


def _binary(fn):
    return lambda a, acc: fn(_f(a["x"]), _f(a["y"]))


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary(_fn)


@_op("log")
def _log(a, acc):
    return np.log(_f(a["x"]) + a.py("epsilon", 0.0))


@_op("rsqrt")
def _rsqrt(a, acc):
    return 1.0 / np.sqrt(_f(a["x"]) + a.py("epsilon", 1e-12))


@_op("inverse")
def _inverse(a, acc):
    return 1.0 / (_f(a["x"]) + a.py("epsilon", 1e-4))


@_op("clip")
def _clip(a, acc):
    return np.clip(_f(a["x"]), a.py("alpha"), a.py("beta"))


@_op("leaky_relu")
def _leaky(a, acc):
    x = _f(a["x"])
    return np.where(x >= 0, x, a.py("alpha", 0.01) * x)


@_op("elu")
def _elu(a, acc):
    x = _f(a["x"])
    return np.where(x > 0, x, a.py("alpha", 1.0) * (np.exp(np.minimum(x, 0)) - 1))


@_op("hard_sigmoid")
def _hard_sigmoid(a, acc):
    return np.clip(a.py("alpha", 0.2) * _f(a["x"]) + a.py("beta", 0.5), 0, 1)


@_op("gelu")
def _gelu(a, acc):
    x = _f(a["x"])
    mode = a.py("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2))).astype(np.float32)


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


def _reduce(fn):
    def run(a, acc):
        axes = a.py("axes")
        axes = None if axes is None else tuple(int(i) for i in np.atleast_1d(axes))
        return fn(_f(a["x"]), axis=axes, keepdims=a.flag("keep_dims", False))
    return run


for _name, _fn in {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
                   "reduce_prod": np.prod,
                   "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
                   "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
                   "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))}.items():
    OPS[_name] = _reduce(_fn)


@_op("conv")
def _conv(a, acc):
    return conv(a["x"], a["weight"], a.get("bias"), a.get("strides"), a.py("pad_type", "valid"), a.get("pad"),
                a.get("dilations"), a.py("groups", 1), acc)


@_op("max_pool", "avg_pool")
def _pool(a, acc):
    return pool(a["x"], "max" if a.op.op_type == "max_pool" else "avg", a["kernel_sizes"], a.get("strides"),
                a.py("pad_type", "valid"), a.get("pad"), a.flag("ceil_mode"), a.flag("exclude_padding_from_average"))


@_op("linear")
def _linear(a, acc):
    x, w = _f(a["x"]), _f(a["weight"])
    out = dot(x, w.T, acc)
    if a.has("bias"):
        out = out + _f(a["bias"])
        if acc == "fp16":
            out = _f16(out)
    return out


@_op("matmul")
def _matmul(a, acc):
    x, y = _f(a["x"]), _f(a["y"])
    if a.flag("transpose_x"):
        x = np.swapaxes(x, -1, -2)
    if a.flag("transpose_y"):
        y = np.swapaxes(y, -1, -2)
    if x.ndim == 1 or y.ndim == 1:  # vector cases as numpy defines them (the MIL spec follows them)
        return np.matmul(x, y)
    return dot(x, y, acc)


def _scale_shift(out, a, shape):
    """The optional per-channel gamma (scale) and beta (shift) of the norm ops, broadcast as ``shape``."""
    if a.has("gamma"):
        out = out * _f(a["gamma"]).reshape(shape)
    if a.has("beta"):
        out = out + _f(a["beta"]).reshape(shape)
    return out


@_op("batch_norm")
def _batch_norm(a, acc):
    x = _f(a["x"])
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    scale = 1.0 / np.sqrt(_f(a["variance"]).reshape(shape) + a.py("epsilon", 1e-5))
    out = (x - _f(a["mean"]).reshape(shape)) * scale
    return _scale_shift(out, a, shape)


@_op("instance_norm")
def _instance_norm(a, acc):
    x = _f(a["x"])
    axes = tuple(range(2, x.ndim))
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    out = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + a.py("epsilon", 1e-5))
    return _scale_shift(out, a, shape)


@_op("layer_norm")
def _layer_norm(a, acc):
    x = _f(a["x"])
    axes = a.py("axes")
    axes = tuple(range(x.ndim)) if axes is None else tuple(int(i) % x.ndim for i in np.atleast_1d(axes))
    out = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + a.py("epsilon", 1e-5))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]  # gamma/beta have the shape x.shape[axes]
    return _scale_shift(out, a, shape)


@_op("softmax")
def _softmax(a, acc):
    x = _f(a["x"])
    axis = a.py("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@_op("cast")
def _cast(a, acc):
    return a["x"]  # the rounding to the declared dtype happens for every op's output


@_op("reshape")
def _reshape(a, acc):
    x = np.asarray(a["x"])
    shape = [int(d) for d in np.asarray(a["shape"]).reshape(-1)]
    if len(shape) == x.ndim:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@_op("transpose")
def _transpose(a, acc):
    return np.transpose(a["x"], [int(p) for p in np.asarray(a["perm"]).reshape(-1)])


@_op("expand_dims")
def _expand_dims(a, acc):
    x = np.asarray(a["x"])
    axes = sorted(int(i) if i >= 0 else int(i) + x.ndim + len(a.py("axes")) for i in np.atleast_1d(a.py("axes")))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return x


@_op("squeeze")
def _squeeze(a, acc):
    axes = a.py("axes")
    return np.squeeze(a["x"], axis=None if axes is None else tuple(int(i) for i in np.atleast_1d(axes)))


@_op("concat")
def _concat(a, acc):
    if a.flag("interleave"):
        raise CannotEvaluate("cannot evaluate op concat with interleave=True")
    return np.concatenate([np.asarray(v) for v in a["values"]], axis=a.py("axis"))


@_op("stack")
def _stack(a, acc):
    return np.stack([np.asarray(v) for v in a["values"]], axis=a.py("axis"))


@_op("split")
def _split(a, acc):
    x, axis = np.asarray(a["x"]), a.py("axis")
    if a.has("split_sizes"):
        cuts = np.cumsum([int(s) for s in np.atleast_1d(a.py("split_sizes"))])[:-1]
        return np.split(x, cuts, axis=axis)
    return np.split(x, a.py("num_splits"), axis=axis)


@_op("slice_by_index")
def _slice_by_index(a, acc):
    x = np.asarray(a["x"])
    r = x.ndim
    begin = [int(v) for v in np.asarray(a["begin"]).reshape(-1)]
    end = [int(v) for v in np.asarray(a["end"]).reshape(-1)]
    stride = _ints(a.get("stride"), r, 1)
    bmask = [bool(v) for v in np.asarray(a.get("begin_mask", [False] * r)).reshape(-1)]
    emask = [bool(v) for v in np.asarray(a.get("end_mask", [False] * r)).reshape(-1)]
    smask = [bool(v) for v in np.asarray(a.get("squeeze_mask", [False] * r)).reshape(-1)]
    index = []
    for i in range(r):
        if smask[i]:
            index.append(begin[i])
            continue
        index.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    return x[tuple(index)]


@_op("slice_by_size")
def _slice_by_size(a, acc):
    x = np.asarray(a["x"])
    begin = [int(v) for v in np.asarray(a["begin"]).reshape(-1)]
    size = [int(v) for v in np.asarray(a["size"]).reshape(-1)]
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


@_op("pad")
def _pad(a, acc):
    x = np.asarray(a["x"])
    p = [int(v) for v in np.asarray(a["pad"]).reshape(-1)]
    lead = x.ndim - len(p) // 2
    width = [(0, 0)] * lead + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    mode = a.py("mode", "constant")
    if mode == "constant":
        return np.pad(x, width, constant_values=a.py("constant_val", 0.0))
    if mode in ("reflect", "replicate"):
        return np.pad(x, width, mode="reflect" if mode == "reflect" else "edge")
    raise CannotEvaluate(f"cannot evaluate op pad with mode {mode!r}")


@_op("gather")
def _gather(a, acc):
    if a.py("batch_dims", 0):
        raise CannotEvaluate("cannot evaluate op gather with batch_dims > 0")
    x, idx, axis = np.asarray(a["x"]), np.asarray(a["indices"]).astype(np.int64), a.py("axis", 0)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


@_op("select")
def _select(a, acc):
    # elementwise choice with broadcasting (torch.where): a is taken where cond is true, b elsewhere
    return np.where(np.asarray(a["cond"]).astype(bool), _f(a["a"]), _f(a["b"]))


@_op("tile")
def _tile(a, acc):
    return np.tile(a["x"], [int(r) for r in np.asarray(a["reps"]).reshape(-1)])


@_op("shape")
def _shape(a, acc):
    return np.asarray(np.shape(a["x"]), dtype=np.int32)


@_op("flatten2d")
def _flatten2d(a, acc):
    x = np.asarray(a["x"])
    axis = a.py("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _per_axis(v, rank: int, axis) -> np.ndarray:
    """A scale / zero point (scalar or vector along ``axis``) shaped to broadcast against a rank-``rank`` tensor."""
    v = np.asarray(v)
    if v.ndim == 0 or v.size == 1 and axis is None:
        return v.reshape(())
    if v.ndim == rank:  # already the blockwise shape (iOS 18 ops)
        return v
    shape = [1] * rank
    shape[int(axis) % rank] = v.size
    return v.reshape(shape)


@_op("quantize")
def _quantize(a, acc):
    x = _f(a["input"])
    axis = a.py("axis")
    dtype = a.py("output_dtype")
    scale = _per_axis(a["scale"], x.ndim, axis).astype(np.float32)
    zp = _per_axis(a.get("zero_point", 0), x.ndim, axis).astype(np.float32)
    info = np.iinfo(_DTYPES[dtype])
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(_DTYPES[dtype])


@_op("dequantize", "constexpr_affine_dequantize")
def _dequantize(a, acc):
    data = np.asarray(a["input"] if a.has("input") else a["quantized_data"])
    axis = a.py("axis")
    scale = _per_axis(a["scale"], data.ndim, axis).astype(np.float32)
    zp = _per_axis(a.get("zero_point", 0), data.ndim, axis).astype(np.float32)
    return (data.astype(np.float32) - zp) * scale


# ------------------------------------------------------------------------------------------- the program
def load_program(path: Path):
    """The MIL program of a saved .mlpackage (coremltools' milproto loader); one-line SqueezeError otherwise."""
    path = Path(path)
    if path.suffix == ".mlmodel":
        raise CannotEvaluate(f"{path.name} is a legacy neural-network .mlmodel: it cannot be read back as a MIL program "
                             "(only its structure is checked off macOS)")
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a broken artifact
        raise SqueezeError(f"{path.name} does not load as a Core ML model: {str(exc).splitlines()[0][:160]}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise CannotEvaluate(f"{path.name} is a Core ML {spec.WhichOneof('Type')} model, not an ML program: it cannot "
                             "be evaluated as MIL")
    try:
        return load_milproto(spec, spec.specificationVersion, str(path / "Data" / "com.apple.CoreML" / "weights"))
    except Exception as exc:  # noqa: BLE001 - a saved file the loader rejects is a broken artifact
        first = next((l.strip() for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
        raise SqueezeError(f"{path.name}: the ML program cannot be read back ({type(exc).__name__}: {first[:160]})") from None


class _Step:
    __slots__ = ("dtypes", "handler", "inputs", "kind", "op", "outputs", "shapes")


def _static_shape(var) -> tuple | None:
    shape = getattr(var, "shape", None)
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
        return None
    return tuple(int(d) for d in shape)


class MILProgram:
    """A saved ML program prepared for evaluation: constants materialised, the op sequence of one function.

    ``run({input name: array}, accumulation) -> {output name: array}``; every op's output is rounded to its
    declared dtype and checked against its declared shape (a mismatch is an evaluator or file error, named).
    """

    def __init__(self, path: Path, function: str | None = None, program=None):
        self.path = Path(path)
        prog = program if program is not None else load_program(self.path)  # (one read for many functions)
        name = function or ("main" if "main" in prog.functions else next(iter(prog.functions)))
        fn = prog.functions[name]
        self.input_names = list(fn.inputs)
        self.inputs = {n: (_dtype_name(v), _static_shape(v)) for n, v in fn.inputs.items()}
        self.output_names = [v.name for v in fn.outputs]
        self.output_dtypes = {v.name: _dtype_name(v) for v in fn.outputs}
        self.constants: dict[str, np.ndarray] = {}
        self.steps: list[_Step] = []
        self.op_counts: dict[str, int] = {}
        for op in fn.operations:
            self.op_counts[op.op_type] = self.op_counts.get(op.op_type, 0) + 1
            self._prepare(op)
        self._last_use = self._liveness()

    def _prepare(self, op) -> None:
        if op.blocks:
            raise CannotEvaluate(f"cannot evaluate op {op.op_type} ({op.name}): control flow is not supported")
        if op.op_type == "const":
            for v in op.outputs:
                self.constants[v.name] = round_to(v.val, _dtype_name(v)) if _dtype_name(v) != "string" else v.val
            return
        handler = OPS.get(op.op_type)
        inputs = {}
        for key, var in op.inputs.items():
            if var is not None:
                inputs[key] = tuple(v.name for v in var) if isinstance(var, (list, tuple)) else var.name
        step = _Step()
        step.op, step.kind, step.inputs = op, op.op_type, inputs
        step.outputs = [v.name for v in op.outputs]
        step.dtypes = [_dtype_name(v) for v in op.outputs]
        step.shapes = [_static_shape(v) for v in op.outputs]
        if op.op_type.startswith("constexpr_") and all(self._is_constant(n) for n in _flat(inputs)):
            # compile-time constants (quantized / palettized weights): decompress once, our code where we have
            # it, else coremltools' own reference decompression
            values = self._evaluate(step, {n: self.constants[n] for n in _flat(inputs)}, "fp32", handler or _materialise)
            self.constants.update(values)
            return
        if handler is None:
            raise CannotEvaluate(f"the MIL evaluator cannot evaluate op {op.op_type} ({op.name}) yet; its numbers "
                                 "need macOS")
        step.handler = handler
        self.steps.append(step)

    @property
    def quantized(self) -> bool:
        """Whether the program holds compressed weights or quantizes activations (constexpr_* / quantize ops)."""
        return any(t.startswith("constexpr_") or t in ("quantize", "dequantize") for t in self.op_counts)

    @property
    def computes_in_fp16(self) -> bool:
        """Whether any op of the program produces fp16 (the accumulation bracket applies)."""
        return any(d == "fp16" for step in self.steps for d in step.dtypes)

    def _is_constant(self, name) -> bool:
        return name in self.constants

    def _liveness(self) -> dict[str, int]:
        last = {}
        for i, step in enumerate(self.steps):
            for n in _flat(step.inputs):
                last[n] = i
        for n in self.output_names:
            last[n] = len(self.steps)
        return last

    def _evaluate(self, step: _Step, env, accumulation, handler) -> dict[str, np.ndarray]:
        values = {k: (tuple(env[n] for n in v) if isinstance(v, tuple) else env[v]) for k, v in step.inputs.items()}
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                result = handler(_Op(values, step.op), accumulation)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the op that could not be evaluated
            raise CannotEvaluate(f"the MIL evaluator cannot evaluate op {step.kind} ({step.op.name}): "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(step.outputs):
            raise SqueezeError(f"op {step.kind} ({step.op.name}) gave {len(results)} outputs, the program declares "
                               f"{len(step.outputs)}")
        out = {}
        for name, value, dtype, shape in zip(step.outputs, results, step.dtypes, step.shapes):
            value = round_to(value, dtype)
            if shape is not None and tuple(value.shape) != shape:
                raise SqueezeError(f"op {step.kind} ({step.op.name}) evaluated to shape {list(value.shape)}, the program "
                                   f"declares {list(shape)}")
            out[name] = value
        return out

    def run(self, feed: dict[str, np.ndarray], accumulation: str = "fp32") -> dict[str, np.ndarray]:
        if accumulation not in ACCUMULATIONS:
            raise SqueezeError(f"unknown accumulation {accumulation!r}; use one of {', '.join(ACCUMULATIONS)}")
        if set(feed) != set(self.input_names):
            raise SqueezeError(f"the ML program takes inputs {self.input_names}, got {sorted(feed)}")
        env = dict(self.constants)
        for name, (dtype, shape) in self.inputs.items():
            x = np.asarray(feed[name])
            if shape is not None and tuple(x.shape) != shape:
                raise SqueezeError(f"input {name!r} has shape {list(x.shape)}; the ML program takes {list(shape)}")
            env[name] = round_to(x, dtype)
        for i, step in enumerate(self.steps):
            env.update(self._evaluate(step, env, accumulation, step.handler))
            for n in _flat(step.inputs):  # free activations nobody reads again
                if self._last_use.get(n) == i and n not in self.constants:
                    env.pop(n, None)
        return {n: round_to(env[n], self.output_dtypes[n]) for n in self.output_names}


def _flat(inputs: dict[str, object]) -> list[str]:
    out = []
    for v in inputs.values():
        out.extend(v if isinstance(v, tuple) else [v])
    return out


def _materialise(a: _Op, acc):
    """coremltools' own decompression of a constexpr op whose inputs are all constants (palettised, sparse,
    iOS 18 blockwise weights): compile-time data, not computation."""
    return a.op.materialized_val_inference()


__all__ = [
    "ACCUMULATIONS",
    "EVALUATOR",
    "FP16_BLOCK",
    "OPS",
    "CannotEvaluate",
    "MILProgram",
    "conv",
    "dot",
    "load_program",
    "pool",
    "round_to",
    "spatial_padding",
]
