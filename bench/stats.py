"""Latency statistics: medians and percentiles of repeated runs (no means: these machines are noisy)."""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import numpy as np


def summarize(latencies_s: List[float], batch: int = 1) -> Dict[str, float]:
    """p50/p90/p99 (numpy's linear percentiles), min and max in ms of per-call latencies given in seconds, and
    clips/s at the median for ``batch`` clips per call."""
    if not latencies_s:
        raise ValueError("no latencies to summarize")
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "runs": int(ms.size),
        "p50_ms": p50,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "clips_per_s": batch * 1e3 / p50,
    }


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> List[float]:
    """Wall time of ``runs`` calls after ``warmup`` untimed ones (perf_counter, seconds)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
