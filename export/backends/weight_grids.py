"""Block weight grids shared by the backends that store llama.cpp-style quantized weights (onnx_backend's int4
MatMulNBits, coreml_program's int4 blockwise constants): the arithmetic that makes a model read from a Q4_1 / Q8_0
GGUF land back on its own grid."""

from __future__ import annotations

import numpy as np


def symmetric_8bit(rows: np.ndarray, block: int):
    """[R, C] float rows as 8-bit symmetric blocks of ``block`` along C with scale = max|x| / 127 (llama.cpp Q8_0's
    grid): (int8 codes [R, C / block, block] in -127..127, float32 scales [R, C / block])."""
    blocks = rows.astype(np.float32).reshape(rows.shape[0], -1, block)
    scale = (np.abs(blocks).max(-1) / 127.0).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale)
    return np.clip(np.rint(blocks / safe[..., None]), -127, 127).astype(np.int8), scale


def asymmetric_4bit(rows: np.ndarray, block: int):
    """[R, C] float rows as 4-bit asymmetric blocks of ``block`` along C (min/max: x = d * q + lo, q in 0..15;
    llama.cpp Q4_1's grid, whose quantizer puts a block's min at q = 0 and its max at q = 15, so a Q4_1 model comes
    back exactly): (uint8 codes [R, C / block, block], float32 steps d and minima lo [R, C / block])."""
    blocks = rows.astype(np.float32).reshape(rows.shape[0], -1, block)
    lo, hi = blocks.min(-1), blocks.max(-1)
    d = np.where(hi > lo, (hi - lo) / 15, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo[..., None]) / d[..., None]), 0, 15).astype(np.uint8)
    return q, d, lo.astype(np.float32)
