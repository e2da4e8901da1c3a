"""Online stage: answer prompts against a context pack with full or squeezed attention.

    gen = Generator.from_pack("ctx.safetensors")                 # loads the model the pack was built for
    result = gen.generate("What is the pass key?", AttentionChoice("budget", keep=0.1))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .context_attention import ContextRows, DenseContext, SqueezedContext
from .errors import SqueezeError
from .lookup import SelectionSpec
from .model import LlamaForCausalLM
from .pack import ContextPack, load_context_pack
from .weights import load_checkpoint

CHAT_JOIN = "\n\n"  # between the fixed context and the user prompt inside the one user turn
LEVEL1_KEEP_FACTOR = 4.0  # hierarchical lookup keeps this multiple of the key fraction at level 1


@dataclass
class AttentionChoice:
    """Full attention, or Squeezed Attention with a keep fraction (threshold) or a key budget."""

    mode: str = "full"               # "full" | "threshold" | "budget"
    keep: float | None = None        # fraction of clustered keys to keep (threshold mode; budget mode if no budget)
    budget: int | None = None        # keys kept per head (budget mode)
    per_query_head: bool = False     # GQA selection granularity
    hierarchical: bool = False
    backend: str = "auto"            # "auto" | "torch" (in-graph) | "numpy" (CPU fallback) | "native" (C++ kernels)

    def label(self) -> str:
        if self.mode == "full":
            return "full"
        what = f"keep {self.keep:g}" if self.budget is None else f"budget {self.budget}"
        return f"{self.mode} {what}{' hier' if self.hierarchical else ''}{' per-head' if self.per_query_head else ''}"


KV_BYTES_PER_DIM = 2 * 2  # fp16 key + fp16 value


def centroid_cost(centroid_fraction: float, head_dim: int = 64) -> float:
    """Centroid storage as a fraction of the KV cache, the paper's accounting done in bytes: 5% fp16
    centroids (keys only) = 0.025; our default 10% int8 centroids (head_dim bytes + a 2-byte scale) = 0.0258."""
    return centroid_fraction * (head_dim + 2) / (KV_BYTES_PER_DIM * head_dim)


def paper_kv_budget(keep_fraction: float, centroid_fraction: float) -> float:
    """KV budget as the paper counts it: kept keys + centroid storage relative to the KV cache."""
    return keep_fraction + centroid_cost(centroid_fraction)


def keep_for_budget(kv_budget: float, centroid_fraction: float) -> float:
    return kv_budget - centroid_cost(centroid_fraction)


def make_context(pack: ContextPack, choice: AttentionChoice, tables=None, rows: ContextRows | None = None):
    """The context-attention object for ``choice`` (tables / rows: cached pack.lookup_tables() and
    ContextRows, so repeated calls do not rebuild them)."""
    if choice.mode == "full":
        return DenseContext(pack.keys, pack.values)
    if choice.hierarchical and pack.l1_centroids is None:
        raise SqueezeError("this pack has no hierarchical level; rebuild it with `squeeze context build --hierarchical`")
    nc = pack.num_clustered
    if choice.mode == "budget":
        keys = choice.budget if choice.budget is not None else round((choice.keep or 0) * nc)
        if keys > nc:
            raise SqueezeError(f"--budget {keys} is larger than the {nc} clustered context keys; use at most {nc} or --full")
        if keys < 0:
            raise SqueezeError("--budget must be positive")
        fraction = keys / nc
        spec = SelectionSpec(mode="budget", budget_keys=int(keys), per_query_head=choice.per_query_head)
    elif choice.mode == "threshold":
        if choice.keep is None or not 0 < choice.keep <= 1:
            raise SqueezeError("--keep must be a fraction in (0, 1]")
        fraction = choice.keep
        spec = SelectionSpec(mode="threshold", threshold=pack.threshold_for(choice.keep, choice.per_query_head),
                             per_query_head=choice.per_query_head)
    else:
        raise SqueezeError(f"unknown attention mode '{choice.mode}'; use full, threshold or budget")
    if choice.hierarchical:
        k1 = int(pack.l1_centroids.shape[2])
        # Level-1 centroids average ~5 children, which dilutes the score of a small distinctive cluster
        # (a pass key): keeping 2x the wanted fraction at level 1 lost pass keys at keep 0.1, 4x did not.
        spec.hierarchical = True
        spec.level1_keep = max(1, min(k1, math.ceil(k1 * min(1.0, LEVEL1_KEEP_FACTOR * fraction + 1.0 / k1))))
    tables = tables if tables is not None else pack.lookup_tables()
    return SqueezedContext(pack.keys, pack.values, tables, spec, choice.backend, rows)


@dataclass
class GenerationResult:
    text: str
    token_ids: list
    prompt_tokens: int
    context_tokens: int
    prefill_seconds: float
    decode_seconds: float
    decode_tokens: int
    attention: str
    kept_fraction: float | None = None      # mean fraction of clustered keys attended (lookup stats)
    centroids_scored: float | None = None
    lookup: str | None = None                # lookup backend that ran ("native", "torch", "numpy"), None = full
    extra: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else float("nan")


class Generator:
    """A model plus one context pack; each ``generate`` call starts from the pack's fixed context."""

    def __init__(self, model: LlamaForCausalLM, tokenizer, pack: ContextPack):
        self.model, self.tokenizer, self.pack = model, tokenizer, pack
        self._tables = None
        self._rows = None
        self.stop_ids = {i for i in (tokenizer.eos_token_id, 0) if i is not None}

    @classmethod
    def from_pack(cls, pack_path, model_path=None, context_text: str | None = None) -> "Generator":
        checkpoint = load_checkpoint(model_path)
        pack = load_context_pack(pack_path, checkpoint, context_text)
        return cls(LlamaForCausalLM.from_checkpoint(checkpoint), checkpoint.tokenizer, pack)

    @property
    def tables(self):
        if self._tables is None:
            self._tables = self.pack.lookup_tables()
        return self._tables

    @property
    def rows(self) -> ContextRows:
        """The pack's K/V in the Squeezed Attention layout, built once (a copy of the cache in its fp16)."""
        if self._rows is None:
            self._rows = ContextRows.build(self.pack.keys, self.pack.values, self.tables)
        return self._rows

    def prompt_ids(self, prompt: str, raw: bool | None = None) -> list[int]:
        framing = self.pack.settings.framing
        raw = framing == "raw" if raw is None else raw
        if raw != (framing == "raw"):
            raise SqueezeError(f"this pack was built with {framing} framing; "
                               + ("drop --raw" if raw else "pass --raw") + " or rebuild the pack")
        if raw:
            return self.tokenizer.encode(prompt)
        _, suffix = self.tokenizer.chat_frame()
        return self.tokenizer.encode(CHAT_JOIN + prompt + suffix)

    def context(self, choice: AttentionChoice):
        if choice.mode == "full":
            return make_context(self.pack, choice)
        return make_context(self.pack, choice, self.tables, self.rows)

    @torch.no_grad()
    def generate(self, prompt: str, choice: AttentionChoice, max_new_tokens: int = 64, raw: bool | None = None,
                 on_text=None, stop_at_eos: bool = True, stop_when=None) -> GenerationResult:
        """Greedy decoding. ``on_text(str)`` receives the text as it is produced (streaming);
        ``stop_when(text)`` returning True ends generation early (evaluations stop once the answer is out)."""
        ids = self.prompt_ids(prompt, raw)
        if not ids:
            raise SqueezeError("the prompt is empty; pass --prompt TEXT")
        n_ctx = self.pack.num_tokens
        window = self.model.config.max_positions
        if n_ctx + len(ids) + max_new_tokens > window:
            raise SqueezeError(f"context {n_ctx} + prompt {len(ids)} + {max_new_tokens} new tokens exceed the model "
                               f"window of {window}; use a shorter prompt or fewer --max-new-tokens")
        context = self.context(choice)
        cache = self.model.new_cache(len(ids) + max_new_tokens)
        t0 = time.perf_counter()
        logits = self.model.step(torch.tensor(ids), cache, position_offset=n_ctx, context=context)
        prefill_seconds = time.perf_counter() - t0
        out: list[int] = []
        printed = ""
        t1 = time.perf_counter()
        decode_steps = 0
        for _ in range(max_new_tokens):
            token = int(torch.argmax(logits))
            if stop_at_eos and token in self.stop_ids:
                break
            out.append(token)
            if on_text is not None:
                text = self.tokenizer.decode(out)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    on_text(text[len(printed):])
                    printed = text
            if len(out) == max_new_tokens or (stop_when is not None and stop_when(self.tokenizer.decode(out))):
                break
            logits = self.model.step(torch.tensor([token]), cache, position_offset=n_ctx, context=context)
            decode_steps += 1
        decode_seconds = time.perf_counter() - t1
        stats = getattr(context, "stats", None)
        return GenerationResult(
            text=self.tokenizer.decode(out), token_ids=out, prompt_tokens=len(ids), context_tokens=n_ctx,
            prefill_seconds=prefill_seconds, decode_seconds=decode_seconds, decode_tokens=decode_steps,
            attention=choice.label(),
            kept_fraction=None if stats is None else stats.mean_kept() / self.pack.num_clustered,
            centroids_scored=None if stats is None else stats.mean_scored(), lookup=getattr(context, "backend", None))
