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
