"""Online stage: answer prompts against a context pack with full or squeezed attention.

    gen = Generator.from_pack("ctx.safetensors")                 # loads the model the pack was built for
    result = gen.generate("What is the pass key?", AttentionChoice("top-k", kv_budget=0.125))
"""

from __future__ import annotations

import dataclasses

import math
import numbers
import time
from dataclasses import dataclass

import torch

from .context_attention import ContextRows, DenseContext, SqueezedContext
from .errors import SqueezeError
from .lookup import DECODE_SELECTIONS, LEVEL1_KEEP_FACTOR, SelectionSpec, level1_keep_for  # noqa: F401
from .model import LlamaForCausalLM
from .pack import THRESHOLD_KEEP_RANGE, ContextPack, load_context_pack
from .weights import load_checkpoint
from .tokenizer import TextStream, check_question

CHAT_JOIN = "\n\n"  # between the fixed context and the user prompt inside the one user turn


from .settings import DEFAULT_EXACT_DECODE, DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL, DEFAULT_KV_BUDGET, DEFAULT_PREFILL_ROWS, DEFAULT_PREFILL_TAIL, MODES, GenerationResult, default_follow_keys  # noqa: F401  (re-exported)
from .settings import (DEFAULT_EXACT_BELOW, check_exact_below, exact_below_label, exact_decode_label, plain_numbers,
                       prompt_is_raw, top_probability, yes_no)


class _Default:
    """Marks a value AttentionChoice resolved from a left-out field (it behaves as the plain number)."""


class _DefaultInt(_Default, int):
    pass


class _DefaultFloat(_Default, float):
    pass


@dataclass
class AttentionChoice:
    """Full attention, or Squeezed Attention with one selection mode and one size, each in its own unit.

    Modes: "top-k" takes a fixed number of keys per head, best clusters first (static shapes); "threshold"
    (the paper) takes every key whose cluster score passes a threshold calibrated on the context.
    Sizes (give exactly one for top-k/threshold):
      kv_budget      the paper's KV budget: kept keys + centroid bytes, as a fraction of the KV cache bytes
      keep_keys      top-k only: exactly this many clustered keys per head
      keep_fraction  this fraction of the clustered keys (threshold mode: the calibrated target)
    """

    mode: str = "full"
    kv_budget: float | None = None
    keep_keys: int | None = None
    keep_fraction: float | None = None
    per_query_head: bool = False     # GQA selection granularity
    hierarchical: bool = False
    backend: str = "auto"            # "auto" | "torch" (in-graph) | "numpy" (CPU fallback) | "native" (C++ kernels)
    prefill_rows: int = DEFAULT_PREFILL_ROWS  # prompt tokens per key selection in the prompt's prefill before its
                                     # tail (0: one selection; 1: every token selects, as decode steps do)
    prefill_tail: int = DEFAULT_PREFILL_TAIL  # the prompt's last tokens that select one token at a time
                                     # (settings.prefill_chunks; RESULTS.md 3e), before the exact tail
    exact_tail: int = DEFAULT_EXACT_TAIL  # the prompt's last tokens that attend every context key (no lookup;
                                     # RESULTS.md 3h); decode steps select (but see exact_decode)
    decode_selection: str = "step"   # "step": every decode step selects; "question": decode steps reuse the
                                     # selection the prompt's prefill made (see SelectionSpec.decode_selection)
    follow_keys: int | None = None   # of each decode step's kept keys, how many follow the previous row's most
                                     # weighed keys (SelectionSpec.follow_keys); top-k mode, per-step decode. None:
                                     # settings.default_follow_keys there, else 0
    exact_decode: int | None = None  # the answer's first N decode steps attend every context key, as the exact
                                     # tail does (SelectionSpec.exact_decode; RESULTS.md 3r). None: per-step decode
                                     # selection DEFAULT_EXACT_DECODE, question-level 0 (it holds one selection)
    exact_below: float | None = None  # a selecting decode step whose top token's probability is below this runs
                                     # again attending every context key (settings.DEFAULT_EXACT_BELOW; 0: never).
                                     # None: the default for per-step decode selection, else 0
    exact_head: int = DEFAULT_EXACT_HEAD  # the prompt's first tokens that attend every context key as well (a
                                     # question written before a long instruction; RESULTS.md 3za)

    def __post_init__(self):
        # exact_decode / exact_below left out take their default for the mode and decode selection; the resolved value
        # is stored marked as a default, so dataclasses.replace(choice, mode=..., decode_selection=...) resolves it
        # again for the new choice instead of carrying the old one's (which refused valid choices or dropped the
        # answer's exact opening)
        defaulted = [name for name in ("exact_decode", "exact_below")
                     if getattr(self, name) is None or isinstance(getattr(self, name), _Default)]
        for name in defaulted:
            setattr(self, name, None)
        try:
            self._check()
        finally:
            for name in defaulted:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, _DefaultInt(value) if name == "exact_decode" else _DefaultFloat(value))

    def _check(self):
        plain_numbers(self, ("keep_keys", "prefill_rows", "prefill_tail", "exact_tail", "exact_head", "follow_keys",
                             "exact_decode"),
                      ("kv_budget", "keep_fraction"))
        for name in ("per_query_head", "hierarchical"):   # per_query_head="no" selected per query head
            setattr(self, name, yes_no(getattr(self, name), name))
        if self.mode not in MODES:
            raise SqueezeError(f"unknown attention mode {self.mode!r}; use one of {', '.join(MODES)}")
        sizes = [n for n in ("kv_budget", "keep_keys", "keep_fraction") if getattr(self, n) is not None]
        if self.exact_decode is None:
            self.exact_decode = DEFAULT_EXACT_DECODE if self.mode != "full" and self.decode_selection == "step" else 0
        if self.exact_below is None:
            self.exact_below = DEFAULT_EXACT_BELOW if self.mode != "full" and self.decode_selection == "step" else 0.0
        self.exact_below = check_exact_below(self.exact_below)
        if self.mode == "full":
            if sizes:
                raise SqueezeError(f"full attention keeps every key; drop {sizes[0]}")
            return
        if self.decode_selection not in DECODE_SELECTIONS:
            raise SqueezeError(f"--decode-selection must be one of {', '.join(DECODE_SELECTIONS)}; "
                               f"got {self.decode_selection!r}")
        if type(self.prefill_rows) is not int or self.prefill_rows < 0:
            raise SqueezeError(f"--prefill-rows (prefill_rows) must be a whole number of tokens >= 0; got {self.prefill_rows!r}")
        if type(self.prefill_tail) is not int or self.prefill_tail < 0:
            raise SqueezeError(f"--prefill-tail (prefill_tail) must be a whole number of tokens >= 0; got {self.prefill_tail!r}")
        if type(self.exact_tail) is not int or self.exact_tail < 0:
            raise SqueezeError(f"--exact-tail (exact_tail) must be a whole number of tokens >= 0; got {self.exact_tail!r}")
        if type(self.exact_head) is not int or self.exact_head < 0:
            raise SqueezeError(f"--exact-head (exact_head) must be a whole number of tokens >= 0; got {self.exact_head!r}")
        if self.follow_keys is not None and (type(self.follow_keys) is not int or self.follow_keys < 0):
            raise SqueezeError(f"--follow-keys (follow_keys) must be a whole number of keys >= 0; got {self.follow_keys!r}")
        if type(self.exact_decode) is not int or self.exact_decode < 0:
            raise SqueezeError(f"--exact-decode (exact_decode) must be a whole number of tokens >= 0; got {self.exact_decode!r}")
        if self.exact_decode and self.decode_selection != "step":
            raise SqueezeError("--exact-decode needs per-step decode selection (--decode-selection step)")
        if self.exact_below and self.decode_selection != "step":
            raise SqueezeError("--exact-below needs per-step decode selection (--decode-selection step)")
        if self.follow_keys and (self.mode != "top-k" or self.decode_selection != "step"):
            raise SqueezeError("--follow-keys needs top-k mode with per-step decode selection")
        if len(sizes) != 1:
            raise SqueezeError(f"{self.mode} mode needs exactly one of kv_budget, keep_keys, keep_fraction; "
                               f"got {', '.join(sizes) or 'none'}")
        if self.keep_keys is not None and (self.mode != "top-k" or type(self.keep_keys) is not int
                                           or self.keep_keys < 1):
            raise SqueezeError(f"--keep-keys (keep_keys) must be a whole number of keys >= 1, in top-k mode; "
                               f"got {self.keep_keys!r}")
        for name in ("kv_budget", "keep_fraction"):
            value = getattr(self, name)
            if value is not None and (type(value) not in (int, float) or not 0 < value <= 1):
                raise SqueezeError(f"{name} must be a fraction in (0, 1]; got {value!r}")

    def label(self) -> str:
        if self.mode == "full":
            return "full"
        size = (f"KV budget {self.kv_budget:g}" if self.kv_budget is not None else
                f"{self.keep_keys} keys per head" if self.keep_keys is not None else
                f"keep fraction {self.keep_fraction:g}")
        return (f"{self.mode}, {size}{', hierarchical' if self.hierarchical else ''}"
                f"{', per query head' if self.per_query_head else ''}"
                f"{f', prefill selection per {self.prefill_rows} tokens' if self.prefill_rows else ''}"
                f"{'' if self.prefill_tail == DEFAULT_PREFILL_TAIL else f', per-token prefill tail {self.prefill_tail}'}"
                f"{'' if self.exact_tail == DEFAULT_EXACT_TAIL else f', exact prompt tail {self.exact_tail}'}"
                f"{'' if self.exact_head == DEFAULT_EXACT_HEAD else f', exact prompt head {self.exact_head}'}"
                f"{', selection held for the question' if self.decode_selection == 'question' else ''}"
                f"{'' if self.follow_keys is None else f', {self.follow_keys} followed keys per step'}"
                f"{exact_decode_label(self.exact_decode) if self.decode_selection == 'step' else ''}"
                f"{exact_below_label(self.exact_below) if self.decode_selection == 'step' else ''}")


from .pack_arrays import KV_BYTES_PER_DIM, centroid_cost  # noqa: E402,F401  (one definition, re-exported)


def paper_kv_budget(keep_fraction: float, centroid_fraction: float, head_dim: int = 64) -> float:
    """KV budget as the paper counts it: kept keys + centroid storage relative to the KV cache."""
    return keep_fraction + centroid_cost(centroid_fraction, head_dim)


def keep_for_budget(kv_budget: float, centroid_fraction: float, head_dim: int = 64) -> float:
    """Fraction of clustered keys a KV budget (paper accounting) leaves after paying for the centroids."""
    return kv_budget - centroid_cost(centroid_fraction, head_dim)


def keep_fraction_for(pack: ContextPack, choice: AttentionChoice) -> float | None:
    """The fraction of clustered keys ``choice`` asks for on ``pack`` (None for full attention)."""
    if choice.mode == "full":
        return None
    if choice.keep_keys is not None:
        return choice.keep_keys / pack.num_clustered
    if choice.keep_fraction is not None:
        return choice.keep_fraction
    return min(1.0, keep_for_budget(choice.kv_budget, pack.settings.centroid_fraction, pack.config.head_dim))


def check_choice(pack: ContextPack, choice: AttentionChoice) -> None:
    """Refuse a choice this pack cannot serve, before any model work (messages name the CLI flags)."""
    if choice.mode == "full":
        return
    if choice.hierarchical and pack.l1_centroids is None:
        raise SqueezeError("this pack has no hierarchical level; rebuild it with `squeeze context build --hierarchical`")
    if choice.backend == "native" and (choice.mode != "top-k" or choice.hierarchical):
        raise SqueezeError("--lookup native runs flat top-k selection only (the fused kernels); with "
                           f"{'--hierarchical' if choice.hierarchical else '--threshold-keep'} use --lookup auto or torch")
    fraction = keep_fraction_for(pack, choice)
    nc = pack.num_clustered
    cost = centroid_cost(pack.settings.centroid_fraction, pack.config.head_dim)
    if choice.mode == "top-k":
        keys = choice.keep_keys if choice.keep_keys is not None else round(fraction * nc)
        if keys > nc:
            raise SqueezeError(f"--keep-keys {keys} is larger than the {nc} clustered context keys; "
                               f"use at most {nc} or --full")
        if keys < 1:
            what = f"--kv-budget {choice.kv_budget:g}" if choice.kv_budget is not None else f"keep fraction {fraction:g}"
            raise SqueezeError(f"{what} keeps no key of this pack's {nc} clustered keys (its centroids alone take "
                               f"{cost:.3f} of the KV cache); use a KV budget in [{_above(cost + 0.5 / nc)}, 1]")
    else:
        lo, hi = THRESHOLD_KEEP_RANGE
        if not lo <= fraction <= hi:
            if choice.kv_budget is None:
                raise SqueezeError(f"--threshold-keep {fraction:g} is outside the calibrated range [{lo:.2f}, {hi:.2f}] "
                                   "of threshold mode; use --full to keep everything")
            raise SqueezeError(f"KV budget {choice.kv_budget:g} leaves a keep fraction of {fraction:.3f} after the "
                               f"centroids ({cost:.3f}), outside threshold mode's calibrated range [{lo:.2f}, {hi:.2f}]; "
                               f"use a KV budget in [{_above(lo + cost, strict=False)}, {_below(min(1.0, hi + cost))}]")


def _above(bound: float, strict: bool = True) -> str:
    """``bound`` rounded UP to the 3 decimals a message prints (strictly above it with ``strict``), so the number a
    user copies from the message is accepted."""
    scaled = bound * 1000
    return f"{(math.floor(scaled) + 1 if strict else math.ceil(scaled - 1e-9)) / 1000:.3f}"


def _below(bound: float) -> str:
    """``bound`` rounded DOWN to 3 decimals (the largest printed value inside it)."""
    return f"{math.floor(bound * 1000 + 1e-9) / 1000:.3f}"


def check_framing(pack: ContextPack, raw: bool | None) -> bool:
    """Whether prompts continue ``pack`` as plain text; refuses a framing the pack was not built with."""
    return prompt_is_raw(pack.settings.framing, raw)


def decode_step(model, token: int, cache, offset: int, context, choice: AttentionChoice, selecting: bool):
    """One decode step of ``token``: (logits, whether it ran twice). A selecting step (``selecting``: past the
    answer's exact opening) whose top token is less likely than ``choice.exact_below`` is run again attending every
    context key, over the same cache slot (rewound), and its logits replace the selecting step's."""
    logits = model.step(torch.tensor([token]), cache, position_offset=offset, context=context)
    if not (selecting and choice.exact_below and isinstance(context, SqueezedContext)):
        return logits, False
    if top_probability(logits.detach().numpy()) >= choice.exact_below:
        return logits, False
    cache.length -= 1
    context.redo_exact()
    return model.step(torch.tensor([token]), cache, position_offset=offset, context=context), True


def make_context(pack: ContextPack, choice: AttentionChoice, tables=None, rows: ContextRows | None = None):
    """The context-attention object for ``choice`` (tables / rows: cached pack.lookup_tables() and
    ContextRows, so repeated calls do not rebuild them)."""
    if not isinstance(choice, AttentionChoice):
        raise SqueezeError(f"choice must be an AttentionChoice; got {type(choice).__name__}")
    choice = dataclasses.replace(choice)   # checked again: a field set after construction (kv_budget = nan) was not
    if choice.mode == "full":
        return DenseContext(pack.keys, pack.values)
    check_choice(pack, choice)
    fraction = keep_fraction_for(pack, choice)
    if choice.mode == "top-k":
        keys = choice.keep_keys if choice.keep_keys is not None else round(fraction * pack.num_clustered)
        fraction = keys / pack.num_clustered
        spec = SelectionSpec(mode="budget", budget_keys=int(keys), per_query_head=choice.per_query_head)
        if choice.follow_keys is not None and choice.follow_keys >= keys:
            raise SqueezeError(f"--follow-keys {choice.follow_keys} leaves no keys to select: this KV budget keeps "
                               f"{keys} keys per head")
        if choice.decode_selection == "step":
            spec.follow_keys = default_follow_keys(int(keys)) if choice.follow_keys is None else choice.follow_keys
    else:
        spec = SelectionSpec(mode="threshold", per_query_head=choice.per_query_head,
                             threshold=pack.threshold_for(fraction, choice.per_query_head, choice.hierarchical))
    if choice.hierarchical:
        spec.hierarchical = True
        spec.level1_keep = level1_keep_for(int(pack.l1_centroids.shape[2]), fraction)
    spec.prefill_rows = choice.prefill_rows
    spec.prefill_tail = choice.prefill_tail
    spec.exact_tail = choice.exact_tail
    spec.exact_head = choice.exact_head
    spec.exact_decode = choice.exact_decode
    spec.decode_selection = choice.decode_selection
    tables = tables if tables is not None else pack.lookup_tables()
    return SqueezedContext(pack.keys, pack.values, tables, spec, choice.backend, rows)



def prompt_ids_for(tokenizer, pack: ContextPack, prompt: str, raw: bool | None = None) -> list[int]:
    """The ids a prompt adds after ``pack``'s context: the user's text literally (a written <|im_end|> stays text),
    in chat framing after CHAT_JOIN and before the template's assistant cue."""
    raw = check_framing(pack, raw)
    check_question(prompt, raw)
    if raw:
        return tokenizer.encode_text(prompt)
    _, suffix = tokenizer.chat_frame()
    return tokenizer.encode_text(CHAT_JOIN + prompt) + tokenizer.encode(suffix)  # (encode_literal)


def check_room(n_ctx: int, n_prompt: int, max_new_tokens: int, window: int) -> None:
    """Refuse a prompt (its ids, framing included) and answer length that do not fit the model window after the
    context, naming numbers that fit."""
    if not n_prompt:
        raise SqueezeError("the prompt is empty; pass --prompt TEXT")
    if n_ctx + 1 >= window:
        raise SqueezeError(f"the pack's {n_ctx} context tokens leave no room for a prompt and an answer in the model "
                           f"window of {window}; use a pack of a shorter context (or the model it was built for)")
    if n_ctx + n_prompt >= window:
        raise SqueezeError(f"the prompt is {n_prompt} tokens (framing included) after the pack's {n_ctx} context "
                           f"tokens: no room is left for an answer in the model window of {window}; shorten the "
                           f"prompt to under {window - n_ctx} tokens or use a pack of a shorter context")
    if n_ctx + n_prompt + max_new_tokens > window:
        raise SqueezeError(f"context {n_ctx} + prompt {n_prompt} + {max_new_tokens} new tokens exceed the model "
                           f"window of {window}; use a shorter prompt or --max-new-tokens of at most "
                           f"{window - n_ctx - n_prompt}")


# the config fields a pack's keys and values depend on: another value means another decoder
PACK_ARCHITECTURE = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "rope_theta")


def check_pack_fits(pack: ContextPack, model: LlamaForCausalLM, tokenizer) -> None:
    """Refuse, in one line, a pack made for another decoder than ``model`` (its architecture; its weights where the
    model knows them, LlamaForCausalLM.from_checkpoint records them) or another tokenizer: its keys and values would
    be read as this model's and answer garbage, or fail deep inside attention."""
    if not isinstance(pack, ContextPack):
        raise SqueezeError(f"pack must be a ContextPack (load_context_pack / build_context_pack); got "
                           f"{type(pack).__name__}")
    where = pack.path or "this context pack"
    if not (torch.isfinite(pack.keys).all() and torch.isfinite(pack.values).all()):
        raise SqueezeError(f"{where} holds non-finite keys or values (NaN or infinity); rebuild it")
    differ = [f"{name} {getattr(pack.config, name)} vs {getattr(model.config, name)}" for name in PACK_ARCHITECTURE
              if getattr(pack.config, name) != getattr(model.config, name)]
    if differ:
        raise SqueezeError(f"{where} was built for another decoder ({'; '.join(differ[:3])}: the pack's vs this "
                           "model's); build the pack with this model")
    weights = getattr(model, "weights_sha256", None)
    if weights and pack.hashes.get("weights_sha256") and weights != pack.hashes["weights_sha256"]:
        pack.check_weights(weights)
    fingerprint = getattr(tokenizer, "fingerprint", None)
    if fingerprint is not None and pack.hashes.get("tokenizer_sha256") not in (None, fingerprint()):
        raise SqueezeError(f"{where} was built with a different tokenizer; build the pack with this model's tokenizer")


class Generator:
    """A model plus one context pack; each ``generate`` call starts from the pack's fixed context."""

    def __init__(self, model: LlamaForCausalLM, tokenizer, pack: ContextPack):
        check_pack_fits(pack, model, tokenizer)
        self.model, self.tokenizer, self.pack = model, tokenizer, pack
        self._tables = None
        self._rows = None
        self.stop_ids = set(tokenizer.stop_token_ids())

    @classmethod
    def from_pack(cls, pack_path, model_path=None, context_text: str | None = None) -> "Generator":
        pack = load_context_pack(pack_path, context_text=context_text)  # a bad pack fails before the slow load
        checkpoint = load_checkpoint(model_path)
        pack.check_model(checkpoint)
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
        return prompt_ids_for(self.tokenizer, self.pack, prompt, raw)

    def context(self, choice: AttentionChoice):
        if choice.mode == "full":
            return make_context(self.pack, choice)
        return make_context(self.pack, choice, self.tables, self.rows)

    @torch.no_grad()
    def generate(self, prompt: str, choice: AttentionChoice, max_new_tokens: int = 64, raw: bool | None = None,
                 on_text=None, stop_at_eos: bool = True, stop_when=None, progress=None) -> GenerationResult:
        """Greedy decoding. ``on_text(str)`` receives the text as it is produced (streaming);
        ``stop_when(text)`` returning True ends generation early (evaluations stop once the answer is out);
        ``progress(stage, done, total)`` hears about the prompt's prefill (per layer) and each decoded token."""
        if isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool):
            max_new_tokens = int(max_new_tokens)   # np.int64 from a sweep is a whole number too
        if type(max_new_tokens) is not int or max_new_tokens < 1:
            raise SqueezeError(f"--max-new-tokens (max_new_tokens) must be a whole number >= 1; got {max_new_tokens!r}")
        if not isinstance(choice, AttentionChoice):
            raise SqueezeError(f"choice must be an AttentionChoice, e.g. AttentionChoice('top-k', kv_budget=0.125) or "
                               f"AttentionChoice('full'); got {type(choice).__name__}")
        report = progress or (lambda *a: None)
        ids = self.prompt_ids(prompt, raw)
        n_ctx = self.pack.num_tokens
        check_room(n_ctx, len(ids), max_new_tokens, self.model.config.max_positions)
        context = self.context(choice)
        cache = self.model.new_cache(len(ids) + max_new_tokens)
        layers = self.model.config.num_layers
        t0 = time.perf_counter()
        report("prefill", 0, layers)
        logits = self.model.step(torch.tensor(ids), cache, position_offset=n_ctx, context=context,
                                 on_layer=lambda i: report("prefill", i, layers))
        prefill_seconds = time.perf_counter() - t0
        out: list[int] = []
        streamed = TextStream(self.tokenizer.decode, on_text)
        t1 = time.perf_counter()
        decode_steps = rerun = 0
        for _ in range(max_new_tokens):
            token = int(torch.argmax(logits))
            if stop_at_eos and token in self.stop_ids:
                break
            out.append(token)
            streamed.update(out)
            if len(out) == max_new_tokens or (stop_when is not None and stop_when(self.tokenizer.decode(out))):
                break
            logits, again = decode_step(self.model, token, cache, n_ctx, context, choice,
                                        selecting=decode_steps >= choice.exact_decode)
            decode_steps += 1
            rerun += again
            report("decode", len(out), max_new_tokens)
        decode_seconds = time.perf_counter() - t1
        stats = getattr(context, "stats", None)
        if stats is not None and not stats.calls:
            stats = None   # no call selected (the prompt's exact tail attended every key, and no decode step ran)
        kept = None if stats is None else stats.mean_kept() / self.pack.num_clustered
        return GenerationResult(
            text=streamed.finish(out), token_ids=out, prompt_tokens=len(ids), context_tokens=n_ctx,
            prefill_seconds=prefill_seconds, decode_seconds=decode_seconds, decode_tokens=decode_steps,
            attention=choice.label(),
            kept_fraction=kept,
            kv_budget=None if kept is None else paper_kv_budget(kept, self.pack.settings.centroid_fraction,
                                                                self.pack.config.head_dim),
            centroids_scored=None if stats is None else stats.mean_scored(), lookup=getattr(context, "backend", None),
            follow_keys=None if choice.mode == "full" else int(getattr(getattr(context, "spec", None), "follow_keys", 0) or 0),
            exact_decode=None if choice.mode == "full" else int(getattr(getattr(context, "spec", None), "exact_decode", 0) or 0),
            exact_below=None if choice.mode == "full" else choice.exact_below,
            rerun_steps=None if choice.mode == "full" else rerun)
