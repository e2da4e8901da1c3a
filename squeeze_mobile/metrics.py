"""The project's comparison metrics (numpy, float64), one definition each: next-token agreement between two
distributions (context evaluation, quantized decoder verification, SqueezeTime verification's softmax KL) and
SQNR (verification, the LiteRT quantizer choice, the per-layer report, the accuracy bench)."""

from __future__ import annotations

import math

import numpy as np


def log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def next_token_agreement(reference_logp, logp) -> dict:
    """Per-step KL(reference || other) and top-1 agreement of [steps, vocab] log-probabilities."""
    reference_logp, logp = np.asarray(reference_logp, np.float64), np.asarray(logp, np.float64)
    kl = (np.exp(reference_logp) * (reference_logp - logp)).sum(-1)
    top1 = reference_logp.argmax(-1) == logp.argmax(-1)
    return {"kl": kl, "top1": top1, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "top1_agreement": float(top1.mean()), "scored_tokens": int(top1.size)}


def sqnr_db(reference, other) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (other - ref)^2), both flattened;
    inf when they are identical (callers writing JSON cap it)."""
    ref = np.asarray(reference, np.float64).ravel()
    out = np.asarray(other, np.float64).ravel()
    noise = float(np.sum((out - ref) ** 2))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(max(float(np.sum(ref ** 2)), 1e-300) / noise)


def softmax_kl(reference_logits, logits) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(other)), nats."""
    return next_token_agreement(log_softmax(reference_logits), log_softmax(logits))["kl_mean"]


__all__ = ["log_softmax", "next_token_agreement", "softmax_kl", "sqnr_db"]


def json_text(obj, indent: int = 2) -> str:
    """``obj`` as the JSON text the project's manifests and reports are written in: non-finite floats as null (never a
    bare NaN), one trailing newline."""
    import json

    return json.dumps(json_finite(obj), indent=indent, allow_nan=False) + "\n"


def json_finite(obj):
    """``obj`` with every NaN or infinite float replaced by None: JSON has no NaN (Python writes a bare ``NaN`` that
    strict readers, the apps' among them, refuse), and a metric of non-finite outputs has no value."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj
