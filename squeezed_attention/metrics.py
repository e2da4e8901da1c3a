"""Next-token agreement between two models' distributions (numpy, float64): the one definition used by the
context evaluation (squeezed vs full attention) and by the verification of quantized decoder artifacts."""

from __future__ import annotations

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


__all__ = ["log_softmax", "next_token_agreement"]
