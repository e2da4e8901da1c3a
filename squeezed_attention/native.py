"""The native CPU kernels (csrc/: Squeezed Attention selection + attention, the decode GEMV), compiled once
on first use.

PyTorch's own extension builder compiles them (g++ and ninja; `pip install -r requirements.txt` brings
ninja) into a per-user cache keyed by the sources, flags, torch version and CPU, then registers
``torch.ops.squeeze_mobile.{context_select, context_decode, context_summaries, decode_gemv}``. Where they cannot be built (no
compiler), ``available()`` is False, the reason is kept in ``unavailable_reason()``, and callers use plain
PyTorch (the in-graph lookup: same selection, more small ops per step; F.linear for decode projections).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path

import torch

from .errors import SqueezeError

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("context_decode.cpp", "decode_gemv.cpp")]
HEADERS = [CSRC / "simd.h"]
_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None}


def _cpu_signature() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags  # -march=native code must not run on another CPU


# -fopenmp: at::parallel_for is a header template; without OpenMP it silently runs serially.
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def build_directory() -> Path:
    key = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES + HEADERS) + torch.__version__.encode() + _cpu_signature().encode()
                         + " ".join(CFLAGS + LDFLAGS).encode()).hexdigest()[:16]
    root = Path(os.environ.get("SQUEEZE_NATIVE_CACHE", Path.home() / ".cache" / "squeeze-mobile" / "native"))
    return root / key


def load() -> bool:
    """Compile (first time) and register the kernel; False (reason kept) when it cannot be built."""
    with _lock:
        if _state["loaded"] or _state["error"] is not None:
            return _state["loaded"]
        try:
            from torch.utils.cpp_extension import load as load_extension

            directory = build_directory()
            if not any(directory.glob("*.so")):
                print("compiling the native CPU kernels (Squeezed Attention lookup + attention, decode GEMV; once, about a minute) ...", file=sys.stderr)
            directory.mkdir(parents=True, exist_ok=True)
            load_extension(name="squeeze_mobile_native", sources=[str(source) for source in SOURCES], build_directory=str(directory),
                           extra_cflags=CFLAGS, extra_ldflags=LDFLAGS, is_python_module=False,
                           verbose=False)
            _state["loaded"] = True
        except Exception as exc:  # no compiler, no ninja, read-only home: the PyTorch path still works
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _state["error"] = f"{type(exc).__name__}: {first_line[:200]}"
        return _state["loaded"]


def available() -> bool:
    return load()


def unavailable_reason() -> str | None:
    load()
    return _state["error"]


def require() -> None:
    if not load():
        raise SqueezeError(f"the native Squeezed Attention kernels could not be built ({_state['error']}); install g++ and "
                           "ninja, or use --lookup torch")


def context_select(queries, centroid_codes_t, centroid_scales, counts, order, start, first: int, budget: int,
                   return_logits: bool = False):
    """Kept context positions [Hs, budget] (ascending) for any number of query rows [Hs, R, D]; the
    selection of lookup.select_keys in budget mode, flat. See csrc/context_decode.cpp. ``return_logits``:
    (positions, the rows' centroid logits [Hs, R, Kp] as scored), for context_summaries."""
    op = torch.ops.squeeze_mobile.context_select_logits if return_logits else torch.ops.squeeze_mobile.context_select
    return op(queries.contiguous(), centroid_codes_t, centroid_scales, counts, order, start, int(first), int(budget))


def context_decode(queries, centroid_codes_t, centroid_scales, counts, order, start, sink_kv, clustered_kv,
                   window_kv, budget: int, scale: float, return_positions: bool = False, summary_values=None):
    """One layer's context partial for a decode step; see csrc/context_decode.cpp. *_kv rows are
    [key | value] (float32 or float16). ``summary_values`` [Hkv, K, D] float32: the clusters' mean values; given,
    every cluster the selection drops joins the softmax as one summary entry (centroid logit + log N, mean
    value), as SqueezedContext._summaries adds them on the other paths. Returns (out [Hs, R, D], lse [Hs, R],
    kept positions [Hs, budget] ascending, empty unless ``return_positions``)."""
    return torch.ops.squeeze_mobile.context_decode(
        queries.contiguous(), centroid_codes_t, centroid_scales, counts, order, start, sink_kv,
        clustered_kv, window_kv, int(budget), float(scale), bool(return_positions), summary_values)


def context_decode_follow(queries, centroid_codes_t, centroid_scales, counts, order, start, sink_kv, clustered_kv,
                          window_kv, budget: int, scale: float, summary_values, follow, slot_of):
    """context_decode (with summaries and kept positions) for a step with followed keys: ``follow`` [Hs, F] int64
    context positions (-1: none) attended besides the selection where it did not keep them, ``slot_of`` [Hkv, Nc]
    the cluster-order slot of each clustered position. Returns (out, lse, kept positions [Hs, budget], the next
    step's follow positions [Hs, F], followed rows added per head [Hs]); SqueezedContext._attend_following."""
    return torch.ops.squeeze_mobile.context_decode_follow(
        queries.contiguous(), centroid_codes_t, centroid_scales, counts, order, start, sink_kv, clustered_kv,
        window_kv, int(budget), float(scale), summary_values, follow.contiguous(), slot_of)


def context_summaries(queries, centroid_codes_t, centroid_scales, bias, summary_values, logits=None):
    """Summaries of the clusters one selection dropped, for any number of query rows [Hs, R, D] (prefill chunks):
    bias [Hs, K] float32 = log N for a dropped non-empty cluster, -inf otherwise; summary_values [Hkv, K, D];
    ``logits``: the same rows' centroid logits from context_select(return_logits=True) (not scored again).
    Returns (out [Hs, R, D], lse [Hs, R]) to merge by log-sum-exp, as SqueezedContext._summaries."""
    return torch.ops.squeeze_mobile.context_summaries(queries.contiguous(), centroid_codes_t, centroid_scales,
                                                      bias.float().contiguous(), summary_values, logits)


def decode_gemv(x, weight):
    """x [T, in] @ weight[out, in]^T for decode-sized T, split over the intra-op threads (see
    csrc/decode_gemv.cpp). weight: row-major or column-major (weight.t() contiguous) storage."""
    return torch.ops.squeeze_mobile.decode_gemv(x.contiguous(), weight)
