"""Fuzz context-pack loading: squeezed_attention.pack.load_context_pack and what a loaded pack feeds.

    python -m bench.fuzz.fuzz_context_pack --seconds 300 --out bench_out/fuzz

Seeds: real packs (flat, hierarchical, chat and raw framing) built by build_context_pack with the tiny
Llama GGUF the tests use (squeezed_attention.testing.write_tiny_llama_gguf), so every byte follows the real
format. Each input is loaded as it is (the content hash refuses almost every mutation), and, when it still
parses as safetensors, loaded again after its content hash is recomputed: that reaches the structural checks
behind the hash (dtypes, shapes, label/count/offset ranges) as a deliberately forged pack would. A pack that
loads must then serve the lookup: lookup tables, a top-k and a threshold selection on random queries.
Only SqueezeError may come out.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench.fuzz import harness

NAME = "context_pack"
INSTRUMENT = ("squeezed_attention", "squeeze_mobile")
PRELOAD = ("torch", "numpy", "safetensors", "safetensors.torch", "tokenizers", "jinja2")
_TMP = Path(tempfile.mkdtemp(prefix="squeeze-fuzz-pack-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def instrument() -> None:
    import squeezed_attention.generation  # noqa: F401
    import squeezed_attention.lookup  # noqa: F401
    import squeezed_attention.pack  # noqa: F401


def seeds():
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.testing import write_tiny_llama_gguf
    from squeezed_attention.weights import load_checkpoint

    with tempfile.TemporaryDirectory() as d:
        checkpoint = load_checkpoint(write_tiny_llama_gguf(Path(d) / "tiny.gguf"))
        model = LlamaForCausalLM.from_checkpoint(checkpoint)
        text = " ".join(["ab abss an"] * 22)
        out = {}
        for name, settings in {
            "flat_raw": BuildSettings(framing="raw", observation_window=8),
            "hier_raw": BuildSettings(framing="raw", hierarchical=True, level1_fraction=0.05, observation_window=8),
            "hier_chat": BuildSettings(framing="chat", hierarchical=True, level1_fraction=0.05, observation_window=16),
        }.items():
            pack = build_context_pack(model, checkpoint, text, settings)
            save_context_pack(pack, Path(d) / f"{name}.pack")
            out[name] = (Path(d) / f"{name}.pack").read_bytes()
    return out


def _resigned(path: Path):
    """The same tensors and metadata with a recomputed content hash, or None when safetensors cannot parse it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from squeezed_attention.pack import _content_sha256

    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata["content_sha256"] = _content_sha256(tensors, metadata)
        forged = path.with_suffix(".resigned")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(forged), metadata=metadata)
        return forged
    except Exception:  # noqa: BLE001 - not parseable (the plain load already covers those bytes)
        return None


def _use(pack) -> None:
    """What generate does with a loaded pack before the model runs: tables, both selection modes."""
    import torch

    from squeezed_attention.generation import AttentionChoice, make_context
    from squeezed_attention.lookup import select_keys

    tables = pack.lookup_tables()
    q = torch.randn(pack.config.num_heads, 2, pack.config.head_dim, generator=torch.Generator().manual_seed(0))
    for choice in (AttentionChoice("top-k", kv_budget=0.5, backend="torch"),
                   AttentionChoice("threshold", keep_fraction=0.3, backend="torch"),
                   AttentionChoice("top-k", keep_keys=1, hierarchical=pack.l1_centroids is not None, backend="torch")):
        ctx = make_context(pack, choice, tables)
        select_keys(tables, 0, q, ctx.spec)


def target(data: bytes) -> None:
    from squeezed_attention.pack import load_context_pack

    path = _TMP / "input.pack"
    path.write_bytes(data)
    try:
        try:
            _use(load_context_pack(path))
        except Exception as exc:
            from squeeze_mobile.errors import SqueezeError

            if not isinstance(exc, SqueezeError):
                raise
        forged = _resigned(path)
        if forged is not None:
            _use(load_context_pack(forged))
    finally:
        for p in _TMP.iterdir():
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
