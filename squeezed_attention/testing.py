"""Shared, cached objects for the squeezed_attention tests (one model load and small packs per process)."""

from __future__ import annotations

import functools

from .evaluate import make_case
from .generation import Generator
from .model import LlamaForCausalLM
from .pack import BuildSettings, build_context_pack
from .weights import load_checkpoint

SMALL_CONTEXT_TOKENS = 600


@functools.lru_cache(maxsize=1)
def real_checkpoint():
    return load_checkpoint()


@functools.lru_cache(maxsize=1)
def real_model():
    return LlamaForCausalLM.from_checkpoint(real_checkpoint())


@functools.lru_cache(maxsize=4)
def passkey_case(tokens: int = SMALL_CONTEXT_TOKENS, depth: float = 0.5, seed: int = 7):
    """(EvalCase, context text) with a pass key hidden in real prose."""
    return make_case(real_checkpoint().tokenizer, "passkey", tokens, depth, seed=seed, rotate=0)


@functools.lru_cache(maxsize=4)
def small_pack(hierarchical: bool = True, framing: str = "chat", tokens: int = SMALL_CONTEXT_TOKENS):
    _, text = passkey_case(tokens)
    return build_context_pack(real_model(), real_checkpoint(), text,
                              BuildSettings(hierarchical=hierarchical, framing=framing))


def small_generator(hierarchical: bool = True) -> Generator:
    return Generator(real_model(), real_checkpoint().tokenizer, small_pack(hierarchical))


# A tiny but complete Llama GGUF (real file format, real gguf writer): fuzzing seed and fast loader tests.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_llama_gguf(path, layers: int = 1, seed: int = 0, quantized=True):
    """Write a 1-layer Llama (hidden 32, 4 heads, 2 KV heads, 40-token byte-level vocab) as GGUF; returns path.
    ``quantized``: True stores every matrix as Q8_0, "Q4_1" the layout of the shipped SmolLM2 file (the layers'
    matrices Q4_1, the embedding table Q8_0), False float32."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden, heads, kv, head_dim, inter = 32, 4, 2, 8, 32
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ċ", "Ġ"] + list("abcdefghijklmnopqrstuvwxyz0123") \
        + ["Ġa", "ab", "Ġab", "ss", "an"]
    merges = ["Ġ a", "a b", "Ġ ab", "s s", "a n"]
    token_types = [3, 3, 3] + [1] * (len(tokens) - 3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(token_types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TINY_CHAT_TEMPLATE)

    def add(name, *shape):
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if quantized and len(shape) == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            if quantized == "Q4_1" and name.startswith("blk."):
                kind = gguf.GGMLQuantizationType.Q4_1
            w.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, data if len(shape) == 2 else np.abs(data) + 1.0)

    add("token_embd.weight", len(tokens), hidden)
    add("output_norm.weight", hidden)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        add(f"blk.{i}.attn_k.weight", kv * head_dim, hidden)
        add(f"blk.{i}.attn_v.weight", kv * head_dim, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        add(f"blk.{i}.ffn_gate.weight", inter, hidden)
        add(f"blk.{i}.ffn_up.weight", inter, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
