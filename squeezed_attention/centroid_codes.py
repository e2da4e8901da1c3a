"""int8 centroid storage: symmetric codes per centroid with one fp16 scale (max |x| / 127).

Packs store centroids this way (1 byte per element + 2 bytes per centroid instead of 2 per element).
code * scale is exact in float32/float64 (7-bit code x 11-bit mantissa), so the dequantized centroids
the PyTorch/numpy lookups score with are bit-for-bit what the fused kernel reconstructs from the codes.
"""

from __future__ import annotations

import torch


def quantize_centroids(centroids):
    """centroids [..., D] -> (codes [..., D] int8, scales [...] fp16). Idempotent on dequantized output."""
    scales = (centroids.float().abs().amax(-1) / 127.0).half()
    safe = torch.where(scales > 0, scales.float(), torch.ones_like(scales, dtype=torch.float32))
    codes = torch.round(centroids.float() / safe.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def dequantize_centroids(codes, scales):
    return codes.float() * scales.float().unsqueeze(-1)


def roundtrip_centroids(centroids):
    """The centroids as a pack stores them (what calibration and the online lookup must see)."""
    return dequantize_centroids(*quantize_centroids(centroids))


def exact_codes(centroids):
    """(codes, float32 scales) that reproduce ``centroids`` exactly, or None if they are not int8-coded."""
    codes, scales = quantize_centroids(centroids)
    if not torch.equal(dequantize_centroids(codes, scales), centroids.float()):
        return None
    return codes.contiguous(), scales.float().contiguous()
