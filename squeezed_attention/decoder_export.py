"""Export the Squeezed Attention decoder to mobile artifacts (.pte, .onnx), verify them on the real model, write
the runtime contract (manifest.json + tokenizer.json) an app needs.

    result = export_decoder("decoder_out", formats=("pte", "onnx"), max_context=8192, kv_budget=0.125)

One artifact per (format, attention): methods ``prefill`` (max_prompt tokens, padded) and ``decode`` (one
token) over a context pack given as inputs (so one artifact serves every pack of its model; see
squeezed_attention.exportable for the graph and squeezed_attention.pack_arrays for the pack layout). The same
backends as SqueezeTime write them (export.backends: ``export_program`` / ``load_program``).

Verification, per artifact, on a real context pack built from real prose (a pass key hidden in licence text):
for each of 3 prompts (the pass-key question among them), greedy tokens of the artifact must equal those of
the PyTorch decoder (squeezed_attention.generation, same attention mode and kept-key count) for
``verify_tokens`` tokens, and the per-step logits must match the PyTorch version of the exported graph
(PSNR >= 60 dB, fp32). ``squeeze verify DIR`` re-runs it from the manifest.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from squeeze_mobile.atomic import NO_ROOM, atomic_path, ensure_writable_dir, folder_lock, removed_if_left_empty, write_text_atomic
from squeeze_mobile.signals import DeferredSignals
from squeeze_mobile.metrics import json_text

from .decoder_session import EXACT_METHODS, SCHEMA, SCHEMA_PREFIX, exact_method_of
from .errors import SqueezeError
from .exportable import ATTENTIONS, SELECTIONS, DecoderShapes, DecoderStage, ExportableDecoder, pack_as_arrays
from .pack_arrays import decoder_context_inputs, keep_fraction_for_kv_budget
from .settings import check_exact_below, follow_min_keep

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMATS = ("pte", "onnx", "tflite", "coreml")
LOOKUP_PLANS = ("in-graph", "split")
WEIGHTS = ("fp32", "int8", "int4")
# quantized weights: greedy tokens cannot be identical; judged teacher-forced along the fp32 PyTorch tokens
QUANTIZED_TOP1_MIN = {"int8": 0.90, "int4": 0.75}
QUANTIZED_KL_MAX = {"int8": 0.05, "int4": 0.30}
# formats whose in-graph plan would keep the lookup inside an accelerator's graph: LiteRT's GPU delegate keeps
# one partition and has no TOPK_V2 (the split plan is their only plan); ONNX Runtime and ExecuTorch fall back
# to CPU kernels inside one graph / program themselves
SPLIT_ONLY = ("tflite", "coreml")   # Core ML places top-k / gather on the CPU and splits the graph itself
NO_SPLIT = ("onnx",)
QUESTION_FORMATS = ("pte",)          # question-level selection: two graphs (prefill, decode) over one cache


def artifact_bytes(path: Path) -> int:
    """Size of a file artifact, or of every file of a directory artifact (.mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def artifact_weight_bytes(module, weights: str) -> int:
    """The least an artifact of ``module`` takes on disk: its parameters and buffers at the ``weights`` precision
    (int4: half a byte each), the export pipeline's measure."""
    from export.pipeline import weight_bytes

    return weight_bytes(module, "int8") // 2 if weights == "int4" else weight_bytes(module, weights)


def state_of(fmt: str, plan: str) -> str:
    return "buffer" if fmt == "pte" and plan == "in-graph" else "io"


def default_plan(fmt: str, pte_backend: str = "xnnpack") -> str:
    # ExecuTorch's Core ML delegate, like Core ML itself, takes the split plan's stage graphs whole; coremltools 9
    # cannot convert the in-graph lookup
    return "split" if fmt in SPLIT_ONLY or (fmt == "pte" and pte_backend == "coreml") else "in-graph"
PSNR_MIN_DB = 60.0
VERIFY_PROMPTS = ("Summarise the text above in one sentence.", "What is the first thing the text talks about?")


@dataclass
class DecoderExportResult:
    out_dir: Path
    manifest: dict
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(a["verification"]["status"] in ("pass", "not run") for a in self.manifest["artifacts"])


def decoder_shapes(config, max_context: int, max_prompt: int, max_new: int, kv_budget: float,
                   centroid_fraction: float = 0.10, sink_tokens: int = 4, window: int = 100) -> DecoderShapes:
    """The artifact's static shapes: the largest pack it takes and the kept keys its KV budget allows there."""
    for name, value, low in (("--max-context", max_context, sink_tokens + window + 16), ("--max-prompt", max_prompt, 1),
                             ("--max-new", max_new, 1)):
        if type(value) is not int or value < low:
            raise SqueezeError(f"{name} must be a whole number >= {low}; got {value!r}")
    if not (isinstance(kv_budget, (int, float)) and 0 < kv_budget <= 1):
        raise SqueezeError(f"--kv-budget must be a fraction in (0, 1]; got {kv_budget!r}")
    if max_context + max_prompt + max_new > config.max_positions:
        raise SqueezeError(f"--max-context {max_context} + --max-prompt {max_prompt} + --max-new {max_new} exceed the "
                           f"model window of {config.max_positions} tokens; lower one of them")
    clustered = max_context - sink_tokens - window
    keep = keep_fraction_for_kv_budget(kv_budget, centroid_fraction, config.head_dim)
    return DecoderShapes(max_context=max_context, max_prompt=max_prompt, max_new=max_new, sink_tokens=sink_tokens,
                         window=window, max_clusters=max(1, round(centroid_fraction * clustered)),
                         max_keep=max(1, min(clustered, math.ceil(keep * clustered))))


def decoder_modules(model, shapes: DecoderShapes, attention: str, state: str, selection: str = "step",
                    exact_tail: int = 0, follow: int = 0) -> dict:
    """{method: module} of the in-graph plan: one module for prefill and decode, or, with question-level selection,
    the prefill (returns its selection) and a decode over the held selection; with an exact prompt tail
    (``exact_tail`` > 0, squeezed) also ``prefill_exact``, the tail's prefill over every fixed-context row. The
    modules share weights and KV-cache buffer names (the eager reference shares the buffers themselves)."""
    follow = follow if attention == "squeezed" else 0
    module = ExportableDecoder(model, shapes, attention, state=state, selection=selection, follow=follow).eval()
    modules = {"prefill": module, "decode": module}
    if selection == "question":
        modules["decode"] = ExportableDecoder(model, shapes, attention, state=state, selection=selection, held=True).eval()
    if exact_tail and attention == "squeezed":
        modules["prefill_exact"] = ExportableDecoder(model, shapes, attention, state=state, exact=True,
                                                     follow=follow).eval()
    for other in modules.values():
        other.layers = module.layers   # the same fused weights (a module of its own would fuse a second copy)
        for name in module.state_names():
            setattr(other, name, getattr(module, name))
    return modules


def decoder_program(model, shapes: DecoderShapes, attention: str, fmt: str, plan: str = "in-graph",
                    selection: str = "step", exact_tail: int = 0, follow: int = 0, exact_decode: int = 0):
    """The export.program.Program for one format: ExecuTorch keeps the cache in shared mutable buffers, ONNX
    takes it as inputs and returns each step's new keys/values (one graph, token axis dynamic).

    Plan "split": methods ``prefill_<s>`` / ``decode_<s>`` for the stages s = 0..L (exportable.DecoderStage),
    static shapes, cache as explicit I/O; the CPU lookup runs between them (decoder_session.GenerationLoop).
    ``selection='question'`` (in-graph plan): decode is its own graph over the prefill's held selection.
    ``exact_tail`` > 0 (squeezed, per-step selection): a third method ``prefill_exact`` (in-graph: up to max_prompt
    tokens, so an exact head and tail are one call; traced at exact_tail) runs the prompt's exact tokens over every
    fixed-context row; in the split plan as stages ``prefill_exact_<s>``
    with no lookup between them (DecoderStage(exact=True)). ``exact_decode`` > 0 (the answer's first decode steps
    attend exactly): in-graph, those steps are ``prefill_exact`` calls of one token (its token axis is dynamic); the
    split plan's static stages get a one-token copy, ``decode_exact_<s>``, so such a step does not pay for
    exact_tail rows."""
    from export.program import Method, Program

    state = state_of(fmt, plan)
    if selection == "question" and plan == "split":
        raise SqueezeError("--decode-selection question is built for the squeezed in-graph plan")
    check_exact_tail(exact_tail, attention, selection)
    modules = decoder_modules(model, shapes, attention, state, selection, exact_tail, follow)
    module = modules["prefill"]
    if plan == "split":
        for other in modules.values():
            other.gather_last = False   # the stages' GPU delegates take no gather (ExportableDecoder.gather_last)
        methods = []
        widths = (("prefill", shapes.max_prompt), ("decode", 1)) + ((("prefill_exact", exact_tail),) if exact_tail else ()) \
            + ((("decode_exact", 1),) if exact_tail and exact_decode else ())
        for name, width in widths:
            for stage in range(model.config.num_layers + 1):
                graph = DecoderStage(module, stage, exact=name in EXACT_METHODS).eval()
                methods.append(Method(f"{name}_{stage}", graph, graph.example_inputs(width), graph.output_names()))
        return Program(methods), module
    # the prefill's token axis is symbolic (1..max_prompt) where the format allows it: a question costs its own
    # length, not max_prompt's (the manifest records it per method; static formats pad). One graph for both methods
    # where the format holds one graph per file (ONNX); two modules (question-level selection) differ in more.
    one_graph = fmt != "pte" and modules["prefill"] is modules["decode"]
    # prefill_exact takes up to max_prompt tokens (traced at exact_tail): a prompt that attends exactly as a whole
    # (exact_head + exact_tail cover it) is one call, as full attention's prefill is, not pieces of exact_tail
    widths = {"prefill": shapes.max_prompt, "decode": 1, "prefill_exact": exact_tail}
    most = {"prefill": shapes.max_prompt, "decode": 1, "prefill_exact": shapes.max_prompt}
    methods = [Method(name, modules[name], modules[name].example_inputs(widths[name]), modules[name].output_names(),
                      {"tokens": {0: ("T" if name == "prefill" else "E", 1, most[name])}}
                      if name != "decode" or one_graph else {}, modules[name].arrange)
               for name in modules]
    return Program(methods, state=module.state_names()), module


def exact_tail_for(exact_tail: int | None, attention: str, selection: str, max_prompt: int) -> int:
    """The exact prompt tail an artifact is exported with: the caller's, or (None) the host's default for every
    squeezed artifact with per-step selection (every format and lookup plan), else 0."""
    if exact_tail is not None:
        return exact_tail if attention == "squeezed" else 0
    from .settings import DEFAULT_EXACT_TAIL

    return min(DEFAULT_EXACT_TAIL, max_prompt) if attention == "squeezed" and selection == "step" else 0


def exact_head_for(exact_head: int | None, attention: str, selection: str, exact_tail: int,
                   max_prompt: int | None = None) -> int:
    """The prompt's first tokens an artifact's loop runs through its exact method by default (its contract's
    exact_head): the caller's, or (None) the host's default (settings.DEFAULT_EXACT_HEAD), at most the artifact's
    ``max_prompt`` (every prompt it takes), for every squeezed artifact with per-step selection and an exact method
    (exact_tail > 0), else 0."""
    if attention != "squeezed" or selection != "step" or not exact_tail:
        return 0
    if exact_head is not None:
        return exact_head
    from .settings import DEFAULT_EXACT_HEAD

    return DEFAULT_EXACT_HEAD if max_prompt is None else min(DEFAULT_EXACT_HEAD, max_prompt)


def exact_decode_for(exact_decode: int | None, attention: str, selection: str, exact_tail: int, max_new: int) -> int:
    """The answer's opening decode steps an artifact runs exactly by default (its contract's exact_decode): the
    caller's, or (None) the host's default (settings.DEFAULT_EXACT_DECODE) for every squeezed artifact with per-step
    selection and an exact method (exact_tail > 0), at most max_new, else 0."""
    if attention != "squeezed" or selection != "step":
        return 0
    if exact_decode is not None:
        return exact_decode
    from .settings import DEFAULT_EXACT_DECODE

    return min(DEFAULT_EXACT_DECODE, max_new) if exact_tail else 0


def exact_below_for(exact_below: float | None, attention: str, selection: str, exact_tail: int) -> float:
    """The top-token probability below which an artifact's selecting decode steps run again exactly (its contract's
    exact_below): the caller's, or (None) the host's default (settings.DEFAULT_EXACT_BELOW) for every squeezed
    artifact with per-step selection and an exact method (exact_tail > 0), else 0."""
    if attention != "squeezed" or selection != "step" or not exact_tail:
        return 0.0
    if exact_below is not None:
        return float(exact_below)
    from .settings import DEFAULT_EXACT_BELOW

    return DEFAULT_EXACT_BELOW


def follow_keys_for(follow_keys: int | None, attention: str, selection: str, prefill_tail: int) -> int:
    """The followed keys an artifact is exported with: the caller's, or (None) the host's default (settings.
    DEFAULT_FOLLOW_KEYS) for every squeezed artifact with per-step selection and no per-token prompt tail (whose
    1-token prompt calls are decode steps: they would follow where the host's prefill does not), else 0. The loops
    use them where the pack's keep_keys reaches follow_min_keep (the host's default_follow_keys)."""
    if attention != "squeezed":
        return 0
    if follow_keys is not None:
        return follow_keys
    from .settings import DEFAULT_FOLLOW_KEYS

    return DEFAULT_FOLLOW_KEYS if selection == "step" and not prefill_tail else 0


def check_exact_tail(exact_tail: int, attention: str, selection: str) -> None:
    """An exact prompt tail is a third method of a squeezed program with per-step selection: a method of the .pte, a
    second graph (branch) of the .onnx file, stages ``prefill_exact_<s>`` of the split plan (.tflite, Core ML)."""
    if type(exact_tail) is not int or exact_tail < 0:
        raise SqueezeError(f"--exact-tail must be a whole number of tokens >= 0; got {exact_tail!r}")
    if not exact_tail or attention != "squeezed":
        return
    if selection != "step":
        raise SqueezeError(f"--exact-tail {exact_tail} is exported with per-step decode selection only (here: decode "
                           f"selection {selection}); pass --exact-tail 0")


class EagerRunner:
    """The exported graph run by PyTorch itself (the reference for per-step logits); same run() contract.
    ``modules``: one module for every method, {method: module} (decoder_modules), or an export.program.Program
    (e.g. the split plan's stage graphs: each method's module with its own inputs and outputs)."""

    runtime = "PyTorch eager (exported graph)"

    def __init__(self, modules):
        from export.program import Program

        self.program = modules if isinstance(modules, Program) else None
        self.modules = modules if isinstance(modules, dict) else None
        self.module = modules if self.modules is None and self.program is None else None

    @torch.no_grad()
    def run(self, method, feed):
        if self.program is not None:
            m = self.program.method(method)
            out = m.module(**m.call_kwargs({n: torch.from_numpy(np.ascontiguousarray(feed[n])) for n in m.inputs}))
            return {n: o.numpy() for n, o in zip(m.outputs, out if isinstance(out, tuple) else (out,))}
        module = self.module if self.modules is None else self.modules[method]
        names = module.input_names()
        values = {n: torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names}
        if getattr(module, "exact", False):   # the clustered tables per KV head (a runtime may declare them flat)
            hkv, nc = module.config.num_kv_heads, module.shapes.max_clustered
            values.update({n: v.reshape(hkv, nc, -1) for n, v in values.items() if n.startswith("clustered_")})
        out = module(**module.arrange(values))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(module.output_names(), out)}

    def close(self):
        pass


def chat_section(tokenizer) -> dict:
    from .generation import CHAT_JOIN

    prefix, suffix = tokenizer.chat_frame() if tokenizer.chat_template else ("", "")
    return {"prefix": prefix, "join": CHAT_JOIN, "suffix": suffix}


def contract_section(shapes: DecoderShapes, attention: str, fmt: str, kv_budget: float, methods: dict,
                     plan: str = "in-graph", selection: str = "step", prefill_rows: int = 0,
                     prefill_tail: int = 0, exact_tail: int = 0, follow: int = 0, min_keep: int = 0,
                     exact_decode: int = 0, exact_below: float = 0.0, exact_head: int = 0) -> dict:
    """The manifest's runtime contract of one decoder artifact. ``follow``: its followed keys, used where the pack
    keeps at least ``min_keep`` keys (follow_min_keep: the export's default F is gated as the host's default is,
    settings.default_follow_keys; an F given explicitly applies to every pack, as on the host)."""
    state = state_of(fmt, plan)
    how = ("mutable buffers inside the program (cache_keys_<layer>, cache_values_<layer>), shared by prefill and "
           "decode"
           if state == "buffer" else
           "explicit: past_keys_<layer>/past_values_<layer> in (one per layer, views of one cache); new_keys/"
           "new_values [layers, kv heads, tokens, head dim] (this step's rows) out; the app writes them "
           "at cache_len")
    squeezed = attention == "squeezed"
    rows, tail = (prefill_rows, prefill_tail) if squeezed else (0, 0)
    pad = ("padded to shapes.max_prompt, unless the method's tokens input lists a dynamic axis [min, max]: then the "
           "ids themselves (padded to min)")
    prompt_step = (
        f"prompt: prefill once: tokens = question ids {pad}, n_tokens = real length, "
        "cache_len = 0" + (" (one key selection for the whole question)" if squeezed else "")
        if rows == 0 and tail == 0 else
        f"prompt (prefill_rows = {rows}, prefill_tail = {tail}): the question's last {tail} tokens select one token "
        f"at a time, the tokens before them {'in chunks of %d tokens cut from the end' % rows if rows else 'together'} "
        "(squeezed_attention.settings.prefill_chunks); per chunk in order: a chunk of several tokens = prefill with its "
        f"tokens {pad}, n_tokens = chunk length, cache_len = tokens before it; a 1-token chunk = "
        "decode at cache_len = its index" + (" (question-level: prefill, so the last call returns the selection to "
                                             "hold)" if selection == "question" else ""))
    exact = exact_tail if squeezed else 0
    head = exact_head if exact else 0
    if exact:
        prompt_step = (f"prompt (exact_tail = {exact}): the question's last {exact} tokens (all of a shorter question) "
                       "run LAST as one prefill_exact call (tokens = those ids, padded to exact_tail unless the method "
                       "lists a dynamic axis; n_tokens = their count, cache_len = tokens before them; no keep_keys: every "
                       "fixed-context row of the pack layout, padding masked); the tokens before them (if any) first, "
                       "as follows: " + prompt_step)
    if head:
        prompt_step = (f"prompt head (exact_head = {head}; an app may choose another N >= 0): the question's first "
                       f"min({head}, its length) tokens run FIRST through prefill_exact at cache_len 0, in calls of at "
                       "most the method's width (the max of its tokens' dynamic axis where the method lists one: "
                       "max_prompt in-graph, so one call; else exact_tail, padded as the tail's call; "
                       "squeezed_attention.settings.exact_span); the tail is "
                       "then the last exact_tail tokens after the head, and the tokens between head and tail are the "
                       "ones that select, in the chunks below counted from the head's end; where head and tail leave no token to "
                       "select, the whole question runs as the head does. " + prompt_step)
    if any(isinstance(i, dict) and "value" in i for m in methods.values() for i in m.get("inputs", ())):
        prompt_step += ("; every method also feeds the inputs its entry fixes (\"value\": the .onnx file's graph "
                        "selector `branch`, 0 for prefill/decode, 1 for prefill_exact; the graph's other inputs are "
                        "fed to every method)")
    opening = exact_decode if exact else 0
    exact_method = exact_method_of(plan, methods)
    opening_steps = [
        f"the answer's opening (exact_decode = {opening}; an app may choose another N >= 0): the decode steps of the "
        f"answer's first {opening} tokens (a token's step is the one that feeds it) call {exact_method} instead of decode, "
        "with that one token (n_tokens = 1, cache_len as for decode; padded to the method's width where it has no "
        "dynamic axis): every fixed-context row attends, no keep_keys, no followed rows fed; its pointer (follow_out / "
        "the stages' follow_weights) points the next step as prefill_exact's does. Later steps call decode"
        + (f" ({exact_method}_0 .. {exact_method}_<L>: prefill_exact's stages one token wide)"
           if exact_method == "decode_exact" else "")
    ] if exact else []
    below = exact_below if exact and selection == "step" else 0.0
    if below:
        opening_steps.append(
            f"unsure steps (exact_below = {below:g}; an app may choose another p in [0, 1), 0: never): after a decode "
            f"call (not the opening's), if the softmax probability of its logits' top token is below exact_below, call "
            f"{exact_method} once more with the same token and cache_len, as an opening step (its cache rows "
            "overwrite the decode call's); its logits pick the token and its pointer points the next step")
    if plan == "split":
        return {**split_contract(shapes, kv_budget, methods, prompt_step, exact, follow if squeezed else 0, min_keep,
                                 opening_steps),
                "prefill_rows": rows, "prefill_tail": tail, "exact_tail": exact, "exact_head": head,
                "exact_decode": opening, "exact_below": below}
    question = squeezed and selection == "question"
    follow = follow if squeezed else 0
    decode_steps = [
        "decode: tokens = [last token], n_tokens = 1, cache_len = tokens already in the cache"
        + (f"; keep_keys = the pack's keep_keys - {follow} (follow_keys); follow_rows_<layer> = the previous call's "
           "follow_out[layer] (every method returns follow_out [layers, kv heads, follow_keys]: flat clustered rows, -1 "
           "none); prefill takes follow_rows = -1. Where the pack's keep_keys is below follow_min_keep, no key is "
           "followed: keep_keys as is and follow_rows = -1 on every call" if follow else ""),
    ] if not question else [
        ("after prefill, once per question: held inputs from its selection_rows [layers, kv heads, max_keep] and "
         "selection_bias [layers, kv heads, max_keep + max_clusters] (squeezed_attention.pack_arrays.held_inputs): per "
         "layer held_keys/held_values = [sink keys/values | clustered_keys/clustered_values rows at selection_rows | "
         "window keys/values | centroids / value_centroids], held_bias = [0 | slot bias | 0 | summary bias]"),
        "decode: tokens = [last token], n_tokens = 1, cache_len = tokens already in the cache, plus the held inputs "
        "(no pack tables, no lookup: every step of the question attends over the prefill's selection)",
    ]
    return {
        "attention": attention, "lookup_plan": plan if attention == "squeezed" else None, "state": state,
        "kv_budget": kv_budget if attention == "squeezed" else None,
        "decode_selection": selection if attention == "squeezed" else None,
        "prefill_rows": rows if squeezed else None, "prefill_tail": tail if squeezed else None,
        "exact_tail": exact if squeezed else None,
        "exact_head": head if squeezed else None,
        "exact_decode": opening if squeezed else None,
        "exact_below": below if squeezed else None,
        "follow_keys": follow if squeezed else None,
        "follow_min_keep": (min_keep if follow else 0) if squeezed else None,
        "shapes": shapes.to_dict(), "methods": methods,
        "call_sequence": [
            "attach a pack: read it, check weights_sha256 / tokenizer_sha256 against this manifest, lay it out as the "
            "context inputs (squeezed_attention.pack_arrays.decoder_context_inputs; the sample apps port it)",
            prompt_step,
            *decode_steps,
            *opening_steps,
            "logits -> argmax (greedy); stop at tokenizer.stop_token_ids",
        ],
        "state_handling": how,
        "reset": "a new question starts at cache_len = 0; cache entries at or past cache_len are masked",
        "per_layer_inputs": "every per-layer tensor is one input per layer named <name>_<layer> (0-based)",
        "pack_inputs": {
            "context_len": "pack tokens",
            "keep_keys": "round(keep_fraction * clustered keys of the pack), keep_fraction = kv_budget - centroid "
                         "bytes / KV bytes (pack_arrays.keep_fraction_for_kv_budget), at most shapes.max_keep",
            **({"context_keys/context_values": "kv.keys / kv.values as float32, padded to max_context"}
               if attention == "full" else
               {"sink_kv / window_kv": "[key|value] rows of the first sink_tokens / last window tokens",
                "clustered_keys / clustered_values": "keys / values of the clustered tokens, cluster by cluster "
                                                     "(stable), padded to max_clustered per KV head, flat: "
                                                     "[Hkv * max_clustered, D], head by head; a method that lists "
                                                     "them as [Hkv, max_clustered, D] (prefill_exact) takes a view "
                                                     "of the same rows",
                "centroids": "int8 codes x fp16 scales, padded with empty clusters",
                "counts / cluster_start": "keys per cluster and where each starts in a head's clustered rows",
                **({"next_rows": "per flat clustered row, the flat row of the next context position (-1: none, or "
                                 "padding); squeezed_attention.pack_arrays.next_rows"} if follow else {})}),
        },
    }


def split_contract(shapes: DecoderShapes, kv_budget: float, methods: dict, prompt_step: str = "",
                   exact_tail: int = 0, follow: int = 0, min_keep: int = 0, opening_steps=()) -> dict:
    """The runtime contract of the split plan (see exportable.DecoderStage and lookup_numpy.kept_rows)."""
    layers = sum(1 for m in methods if m.startswith("decode_") and m[len("decode_"):].isdigit()) - 1
    follow_steps = [
        (f"followed keys (follow_keys = {follow}; used where the pack's keep_keys is at least follow_min_keep, else "
         "as 0): every stage s >= 1 also returns follow_weights [Hkv, W] (W = max_keep; prefill_exact stages: "
         "max_clustered), the last token's softmax weights on the kept slots (prefill_exact: on the clustered rows of "
         "the pack layout, head h's row j = flat row h * max_clustered + j), summed over the KV head's query heads; "
         "after stage s the CPU keeps pointer_l = follow_pointer(follow_weights, the slots' flat rows, next_rows_l, "
         "follow_keys) (squeezed_attention.lookup_numpy.follow_pointer: the next_rows of the follow_keys largest "
         "weights, ranked best first, stable on ties; -1 for a 0 weight or an unused slot). A decode step's lookup "
         "keeps keep_keys - follow_keys and passes follow_rows = the previous call's pointer_l (kept_rows' "
         "follow_rows: each row not kept, once, in the next unused slot with bias 0); prompt calls pass none")
    ] if follow else []
    return {
        "attention": "squeezed", "lookup_plan": "split", "state": "io", "kv_budget": kv_budget,
        "follow_keys": follow, "follow_min_keep": min_keep if follow else 0,
        "shapes": shapes.to_dict(), "methods": methods, "stages": layers + 1,
        "call_sequence": [
            "attach a pack as for the in-graph plan (same per-layer context inputs <name>_<layer>)",
            *([prompt_step] if prompt_step else []),
            (f"a step (prefill: tokens padded to shapes.max_prompt; decode: one token) is the graphs <step>_0 .. "
             f"<step>_{layers} in order, every one with n_tokens, cache_len, context_len"),
            "<step>_0: tokens, next_centroids = centroids_0, next_counts = counts_0 -> hidden, query, key, value, scores",
            ("between stage s-1 and s (layer l = s-1), on the CPU: kept_keys, kept_values, kept_bias = lookup(scores, counts_l, "
             "cluster_start_l, clustered_keys_l, clustered_values_l, keep_keys, shapes.max_keep) (squeezed_attention.lookup_numpy.kept_rows: "
             "rank clusters by score, stable; fill max_keep slots cluster by cluster up to min(keep_keys, keys); "
             "bias 0/-inf per slot, then 0/-inf per cluster none of whose keys was kept); write key/value into the "
             "cache of layer l at cache_len"),
            ("<step>_s (1..L): the previous stage's hidden/query/key/value, past_keys/past_values = cache of layer l, "
             "sink_kv_l, window_kv_l, kept_keys, kept_values, kept_bias, centroids_l, value_centroids_l, counts_l, and (s < L) "
             "next_centroids/next_counts of layer s; the last stage returns logits"),
            *([f"prefill_exact (the prompt's exact tail, tokens padded to {exact_tail}): the graphs prefill_exact_0 .. "
               f"prefill_exact_{layers} with NO lookup between them: prefill_exact_0 takes tokens and returns hidden, "
               "query, key, value; prefill_exact_s (1..L) the previous stage's hidden/query/key/value, past_keys/"
               "past_values = cache of layer l (after writing key/value at cache_len as above), sink_kv_l, window_kv_l, "
               "clustered_keys_l / clustered_values_l as [Hkv, max_clustered, D] views of the pack's rows (every row; "
               "padding masked from counts_l) and counts_l"] if exact_tail else []),
            *opening_steps,
            *follow_steps,
            "logits -> argmax (greedy); stop at tokenizer.stop_token_ids",
        ],
        "state_handling": "explicit: the app keeps a [layers, kv heads, max_prompt + max_new, head dim] cache pair; "
                          "stage s takes layer s-1's as past_keys/past_values and stage s-1 returns that layer's "
                          "rows of this step as key/value, which the app writes at cache_len",
        "reset": "a new question starts at cache_len = 0; cache entries at or past cache_len are masked",
        "per_layer_inputs": "pack tensors: one per layer named <name>_<layer> (0-based); stage inputs carry no suffix",
        "pack_inputs": {"keep_keys": "round(keep_fraction * clustered keys of the pack), at most shapes.max_keep; "
                                     "the CPU lookup's argument (not a graph input)",
                        **({"next_rows": "per flat clustered row, the flat row of the next context position (-1: none, "
                                         "or padding); squeezed_attention.pack_arrays.next_rows (the CPU's, not a "
                                         "graph input)"} if follow else {})},
    }


def _tidies_a_new_directory(export):
    """An export that fails or is interrupted before it wrote an artifact into a directory it created removes that
    directory again (its tokenizer.json and artifact-less manifest included): a failed run leaves nothing behind."""
    @functools.wraps(export)
    def run(out_dir, *args, **kwargs):
        new = not Path(out_dir).exists()
        try:
            return export(out_dir, *args, **kwargs)
        except BaseException:
            d = Path(out_dir)
            if new and d.is_dir() and {p.name for p in d.iterdir()} <= {TOKENIZER_FILE, "manifest.json"}:
                for name in (TOKENIZER_FILE, "manifest.json"):
                    (d / name).unlink(missing_ok=True)
                d.rmdir()
            raise
    return run


@_tidies_a_new_directory
def export_decoder(out_dir, *args, **kwargs) -> "DecoderExportResult":
    """Export the decoder (``attention``: 'squeezed', 'full', or both as a list) to ``formats`` under ``out_dir``
    (the arguments of :func:`_export_decoder`; one writer per folder at a time, a folder this call creates and
    leaves empty is removed again)."""
    out_dir = Path(out_dir)
    with removed_if_left_empty(out_dir):
        ensure_writable_dir(out_dir)
        with folder_lock(out_dir):
            return _export_decoder(out_dir, *args, **kwargs)


def _export_decoder(out_dir, formats=FORMATS, model_path=None, max_context: int = 7808, max_prompt: int = 128,
                   max_new: int = 256, kv_budget: float = 0.125, attention="squeezed", lookup_plan=None,
                   weights: str = "fp32", verify: bool = True, decode_selection: str = "step",
                   verify_context_tokens=(2048, 8192), verify_tokens: int = 32, verify_text=None,
                   progress=None, prefill_rows: int = 0, prefill_tail: int = 0,
                   pte_backend: str = "xnnpack", exact_tail: int | None = None,
                   follow_keys: int | None = None, exact_decode: int | None = None,
                   exact_below: float | None = None, exact_head: int | None = None) -> DecoderExportResult:
    """Export the decoder (``attention``: 'squeezed', 'full', or both as a list) to ``formats`` under ``out_dir``.

    Verification builds a pack from real prose with a pass key hidden in it per length in
    ``verify_context_tokens`` (an int or several; each capped at the artifact's max context), or
    from ``verify_text`` when given (a path to a UTF-8 text file, e.g. the document the app will ship; it is
    recorded so ``squeeze verify`` can rebuild the same pack)."""
    from export.backends import ExportOptions, conversion_error, get_backend
    from export.pipeline import check_free_space, write_error
    from export.quiet import quiet

    from .model import LlamaForCausalLM
    from .weights import load_checkpoint

    say = progress or (lambda stage, msg: None)
    formats = [formats] if isinstance(formats, str) else list(formats)
    formats = list(dict.fromkeys("pte" if f == "executorch" else f for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SqueezeError(f"the decoder exports to {', '.join(FORMATS)}; got {', '.join(bad) or 'none'} "
                           "(Core ML: --formats coreml writes an .mlpackage)")
    if weights not in WEIGHTS:
        raise SqueezeError(f"--weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if lookup_plan is not None and lookup_plan not in LOOKUP_PLANS:
        raise SqueezeError(f"--lookup-plan must be one of {', '.join(LOOKUP_PLANS)}; got {lookup_plan!r}")
    from export.backends.executorch_backend import PTE_BACKENDS

    if pte_backend not in PTE_BACKENDS:
        raise SqueezeError(f"--pte-backend must be one of {', '.join(PTE_BACKENDS)}; got {pte_backend!r}")
    if pte_backend == "coreml" and "pte" in formats:
        if weights != "fp32":
            raise SqueezeError(f"--weights {weights} for .pte is built for the XNNPACK delegate; export --pte-backend "
                               "coreml with --weights fp32 (or --formats coreml for Core ML's own int8/int4 weights)")
        if lookup_plan == "in-graph" and "squeezed" in ([attention] if isinstance(attention, str) else list(attention)):
            raise SqueezeError("--pte-backend coreml takes the split lookup plan for squeezed attention (coremltools "
                               "cannot convert the in-graph lookup); drop --lookup-plan or pass --lookup-plan split")
    for fmt in formats:
        plan = lookup_plan or default_plan(fmt, pte_backend)
        if plan == "in-graph" and fmt in SPLIT_ONLY:
            raise SqueezeError(f"{fmt} takes the split lookup plan only (its GPU delegate has no top-k and keeps one "
                               "delegated partition); drop --lookup-plan or pass --lookup-plan split")
        if plan == "split" and fmt in NO_SPLIT:
            raise SqueezeError(f"{fmt} takes the in-graph lookup plan only (ONNX Runtime places the lookup's nodes on "
                               "its CPU provider itself); drop --lookup-plan or pass --lookup-plan in-graph")
    if decode_selection not in SELECTIONS:
        raise SqueezeError(f"--decode-selection must be one of {', '.join(SELECTIONS)}; got {decode_selection!r}")
    for flag, value in (("--prefill-rows", prefill_rows), ("--prefill-tail", prefill_tail)):
        if type(value) is not int or not 0 <= value <= max_prompt:
            raise SqueezeError(f"{flag} must be a whole number of tokens from 0 to --max-prompt ({max_prompt}); "
                               f"got {value!r}")
    if exact_tail is not None and (type(exact_tail) is not int or not 0 <= exact_tail <= max_prompt):
        raise SqueezeError(f"--exact-tail must be a whole number of tokens from 0 to --max-prompt ({max_prompt}); "
                           f"got {exact_tail!r}")
    if exact_tail and "squeezed" in ([attention] if isinstance(attention, str) else list(attention)):
        check_exact_tail(exact_tail, "squeezed", decode_selection)
    if exact_decode is not None and (type(exact_decode) is not int or not 0 <= exact_decode <= max_new):
        raise SqueezeError(f"--exact-decode must be a whole number of tokens from 0 to --max-new ({max_new}); "
                           f"got {exact_decode!r}")
    if exact_head is not None and (type(exact_head) is not int or not 0 <= exact_head <= max_prompt):
        raise SqueezeError(f"--exact-head must be a whole number of tokens from 0 to --max-prompt ({max_prompt}); "
                           f"got {exact_head!r}")
    exact_below = None if exact_below is None else check_exact_below(exact_below)
    squeezed = "squeezed" in ([attention] if isinstance(attention, str) else list(attention))
    for option, value, does in (("--exact-decode", exact_decode, "runs the answer's first tokens"),
                                ("--exact-below", exact_below, "runs unsure decode steps again"),
                                ("--exact-head", exact_head, "runs the prompt's first tokens")):
        if value and squeezed and decode_selection != "step":
            raise SqueezeError(f"{option} {value:g} is exported with per-step decode selection only (here: decode "
                               f"selection {decode_selection}); pass {option} 0")
        if value and squeezed and exact_tail == 0:
            raise SqueezeError(f"{option} {value:g} {does} through the exact method (prefill_exact), which --exact-tail 0 "
                               f"leaves out; pass --exact-tail >= 1 or {option} 0")
    if follow_keys is not None and (type(follow_keys) is not int or follow_keys < 0):
        raise SqueezeError(f"--follow-keys must be a whole number of keys >= 0; got {follow_keys!r}")
    if follow_keys and "squeezed" in ([attention] if isinstance(attention, str) else list(attention)):
        if decode_selection != "step" or prefill_tail:
            raise SqueezeError(f"--follow-keys {follow_keys} is exported with per-step decode selection and no "
                               "per-token prefill tail (--prefill-tail 0) only; pass --follow-keys 0")
    if decode_selection == "question":
        other = [f for f in formats if f not in QUESTION_FORMATS or (lookup_plan or default_plan(f, pte_backend)) != "in-graph"]
        if other:
            raise SqueezeError(f"--decode-selection question is built for {', '.join(QUESTION_FORMATS)} with the in-graph "
                               f"lookup plan so far (prefill and decode are two graphs over one cache); export "
                               f"{', '.join(other)} with --decode-selection step")
    attentions = [attention] if isinstance(attention, str) else list(attention)
    if not attentions or any(a not in ATTENTIONS for a in attentions):
        raise SqueezeError(f"--attention must be squeezed, full or both; got {attention!r}")
    text_file = None
    if verify_text is not None:
        from .file_kinds import read_utf8_text

        text_file = Path(verify_text).resolve()
        verify_text = read_utf8_text(text_file, "--verify-text file", "pass a UTF-8 text file with --verify-text")
    out_dir = ensure_writable_dir(out_dir)
    say("model", "loading the model")
    checkpoint = load_checkpoint(model_path)
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    shapes = decoder_shapes(model.config, max_context, max_prompt, max_new, kv_budget)
    if follow_keys and "squeezed" in attentions and follow_keys >= shapes.max_keep:   # as the host refuses it
        raise SqueezeError(f"--follow-keys {follow_keys} leaves no keys to select: at --kv-budget {kv_budget:g} and "
                           f"--max-context {shapes.max_context} the artifact keeps {shapes.max_keep} keys per head; "
                           f"use --follow-keys of at most {shapes.max_keep - 1} or a larger --kv-budget")
    tokenizer = checkpoint.tokenizer
    old = existing_decoder_manifest(out_dir, checkpoint.weights_sha256)  # before anything is written
    manifest = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"kind": "decoder", "name": model.config.name, "source": str(checkpoint.source),
                  "weights_sha256": checkpoint.weights_sha256, "tokenizer_sha256": tokenizer.fingerprint(),
                  "config": json.loads(model.config.to_json())},
        "tokenizer": {"file": TOKENIZER_FILE, "chat": chat_section(tokenizer),
                      "stop_token_ids": tokenizer.stop_token_ids(),
                      "sha256": hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()},
        "precision": "fp32",
        "tools": {"python": platform.python_version(),
                  **{k: v for f in formats for k, v in get_backend(f).tool_versions().items()}},
        "artifacts": [], "failures": [],
    }
    verification = []
    if verify:
        lengths = [verify_context_tokens] if isinstance(verify_context_tokens, int) else list(verify_context_tokens)
        if not lengths or any(type(n) is not int or n < 120 for n in lengths):
            raise SqueezeError(f"verification context lengths must be whole numbers >= 120; got {verify_context_tokens!r}")
        # (the chat prefix the pack adds must fit too: 64 tokens of room below the artifact's max context)
        lengths = [None] if text_file is not None else sorted({min(n, shapes.max_context - 64) for n in lengths})
        if text_file is not None:   # before the pack build, whose refusal names the model window, not --max-context
            n_text = len(tokenizer.encode_text(verify_text))
            if n_text > shapes.max_context:
                raise SqueezeError(f"--verify-text {text_file} is {n_text} tokens but the artifacts take at most "
                                   f"--max-context {shapes.max_context}; pass a shorter text or a larger --max-context "
                                   "(nothing was exported)")
        for n in lengths:
            say("verify", f"building the verification pack from {text_file}" if text_file else
                f"building a {n}-token verification pack from real prose")
            verification.append(VerificationData.build(model, checkpoint, n or shapes.max_context, verify_tokens,
                                                       verify_text))
            if verification[-1].pack.num_tokens > shapes.max_context:   # refused before minutes of converting
                raise SqueezeError(f"--verify-text {text_file} is {verification[-1].pack.num_tokens} tokens (framing "
                                   f"included) but the artifacts take at most --max-context {shapes.max_context}; pass "
                                   "a shorter text or a larger --max-context (nothing was exported)")
        manifest["verification_inputs"] = {"packs": [v.describe() for v in verification]}
        if text_file is not None:
            manifest["verification_inputs"]["text_file"] = str(text_file)
    merge_decoder_manifest(old, out_dir, manifest)
    tokenizer_written = False   # written with the first artifact's manifest record (this model's tokenizer)
    result = DecoderExportResult(out_dir, manifest)
    for att in attentions:
        for fmt in formats:
            backend = get_backend(fmt)
            delegate = pte_backend if fmt == "pte" else "xnnpack"
            plan = (lookup_plan or default_plan(fmt, delegate)) if att == "squeezed" else "in-graph"
            selection = decode_selection if att == "squeezed" else "step"
            stem = f"decoder_{att}" + ("_split" if plan == "split" else "") + ("_question" if selection == "question" else "") \
                + ("_coreml" if delegate == "coreml" else "")
            name = f"{stem}_{shapes.max_context // 1024}k_{weights}{backend.suffix}" if shapes.max_context % 1024 == 0 \
                else f"{stem}_{shapes.max_context}_{weights}{backend.suffix}"
            exact = exact_tail_for(exact_tail, att, selection, shapes.max_prompt)
            follow = follow_keys_for(follow_keys, att, selection, prefill_tail)
            min_keep = follow_min_keep(follow) if follow_keys is None else 0   # gated as the host's default
            opening = exact_decode_for(exact_decode, att, selection, exact, shapes.max_new)
            program, module = decoder_program(model, shapes, att, fmt, plan, selection, exact, follow, opening)
            t0 = time.perf_counter()
            # converted and verified at a temporary path: a run stopped before its manifest record is written leaves
            # the folder as it was (an earlier artifact of the same name, and its record, stay); only the rename and
            # the manifest write hold a signal until both are done
            held = DeferredSignals("writing the manifest; stopping after it (send it again to stop at once)")
            try:
                try:
                    # a converter that fills the disk can end the process from C++ with no message: refuse it first
                    check_free_space(out_dir, artifact_weight_bytes(module, weights), f"{fmt} ({att}): {name}")
                    say(fmt, f"converting {att} attention{' (split lookup plan)' if plan == 'split' else ''} -> {name}")
                    with atomic_path(out_dir / name, replaceable=backend.replaceable) as tmp:
                        try:
                            with quiet():  # converters print warnings and C++ logs by the hundred
                                extras = backend.export_program(program, tmp, ExportOptions(spec=None, weights=weights,
                                                                                            pte_backend=delegate))
                        except SqueezeError:
                            raise
                        except OSError as exc:
                            if exc.errno not in NO_ROOM + (errno.EROFS,):
                                raise conversion_error(backend.name, exc) from None
                            raise write_error(out_dir / name, exc, f"{fmt} ({att}): ") from None   # a full disk
                        except Exception as exc:  # noqa: BLE001 - converters raise anything; name backend + op
                            raise conversion_error(backend.name, exc) from None
                        record = _artifact_record(
                            tmp, fmt, name, weights, backend, t0,
                            contract_section(shapes, att, fmt, kv_budget, extras.pop("methods"), plan, selection,
                                             prefill_rows, prefill_tail, exact, follow, min_keep, opening,
                                             exact_below_for(exact_below, att, selection, exact),
                                             exact_head_for(exact_head, att, selection, exact, shapes.max_prompt)), extras)
                        _verify_record(tmp, name, fmt, record, model, verification, verify_tokens, say)
                        held.__enter__()
                except SqueezeError as exc:
                    manifest["failures"].append({"format": fmt, "attention": att, "error": str(exc)})
                    result.failures.append(manifest["failures"][-1])
                    say(fmt, f"FAILED: {exc}")
                    continue
                if not tokenizer_written:
                    write_text_atomic(out_dir / TOKENIZER_FILE, tokenizer.backend.to_str())
                    tokenizer_written = True
                manifest["artifacts"] = [a for a in manifest["artifacts"] if a.get("file") != name] + [record]
                write_text_atomic(out_dir / MANIFEST, json_text(manifest))
            finally:
                held.__exit__(None, None, None)
            held.check()
    write_text_atomic(out_dir / MANIFEST, json_text(manifest))
    return result


def _artifact_record(path: Path, fmt: str, name: str, weights: str, backend, t0: float, contract: dict,
                     extras: dict) -> dict:
    """The manifest record of the artifact converted at ``path`` (its temporary name) that lands as ``name``."""
    from export.verify import sha256_file

    return {"format": fmt, "file": name, "weights": weights, "bytes": artifact_bytes(path),
            "sha256": sha256_file(path), "runtime": backend.runtime,
            "export_seconds": round(time.perf_counter() - t0, 2), "decoder": contract, **extras}


def _verify_record(path: Path, name: str, fmt: str, record: dict, model, verification, verify_tokens: int,
                   say) -> None:
    """Verify the artifact at ``path`` (before it takes its name) into ``record['verification']``."""
    if not verification:
        record["verification"] = {"status": "not run"}
        return
    say(fmt, f"verifying {name} on {len(verification)} pack(s) x {len(verification[0].prompts)} prompts x "
             f"{verify_tokens} tokens")
    try:
        record["verification"] = verify_decoder_artifact(path, record, model, verification)
    except SqueezeError as exc:  # e.g. a verification prompt longer than --max-prompt
        record["verification"] = {"status": "fail", "failures": [str(exc)]}
    v = record["verification"]
    say(fmt, f"not run: {v['reason']}" if v["status"] == "not run" else
        f"FAILED: {v['failures'][0]}" if "prompts" not in v else
        f"{v['status']}: tokens identical on {v['prompts_identical']}/{v['prompts']} prompts, "
        f"logits PSNR {v['psnr_db']:.1f} dB" if "psnr_db" in v else
        f"{v['status']}: next-token top-1 agreement {100 * v['top1_agreement']:.1f}%, mean KL "
        f"{v['mean_kl']:.4f} vs fp32 (teacher-forced); greedy identical on {v['prompts_identical']}/"
        f"{v['prompts']} prompts")


def existing_decoder_manifest(out_dir: Path, weights_sha256: str) -> dict | None:
    """The decoder manifest already in ``out_dir`` that a new export of the same weights merges into (None when
    there is none); anything else there (another kind of export, another model, an unreadable manifest) is
    refused with nothing written."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SqueezeError(f"{path} cannot be read ({exc.__class__.__name__}); export into a fresh directory or "
                           "remove the old export first (nothing was changed)") from None
    if isinstance(old, dict) and str(old.get("schema")).startswith(SCHEMA_PREFIX) and old.get("schema") != SCHEMA:
        raise SqueezeError(f"{out_dir} holds a decoder exported by another version of squeeze-mobile (schema "
                           f"{old.get('schema')!r}, this version writes {SCHEMA!r}); export into a fresh directory "
                           "(nothing was changed)")
    if not isinstance(old, dict) or old.get("schema") != SCHEMA or not isinstance(old.get("artifacts"), list):
        raise SqueezeError(f"{out_dir} holds another kind of export ({MANIFEST} is not a decoder manifest); export "
                           "into a fresh directory (nothing was changed)")
    theirs = (old.get("model") or {}).get("weights_sha256")
    if theirs != weights_sha256:
        raise SqueezeError(f"{out_dir} holds a decoder exported from other weights (sha256 {str(theirs)[:12]}); export "
                           "into a fresh directory, or remove the old export first (nothing was changed)")
    return old


def merge_decoder_manifest(old: dict | None, out_dir: Path, manifest: dict) -> None:
    """Exporting again into a decoder directory of the same model keeps the records of the artifacts still on
    disk (a new record replaces the one of the same file), so formats and attention modes can be exported in
    separate runs. Artifacts verified on other inputs than this run's are refused (nothing is written)."""
    if old is None:
        return
    kept = [a for a in old["artifacts"] if isinstance(a, dict) and a.get("file") and (out_dir / a["file"]).exists()]
    old_inputs, new_inputs = old.get("verification_inputs"), manifest.get("verification_inputs")
    verified = [a for a in kept if (a.get("verification") or {}).get("status") not in (None, "not run")]
    if verified and new_inputs is not None and old_inputs != new_inputs:
        def packs(inputs) -> str:
            sizes = [p.get("context_tokens") for p in (inputs or {}).get("packs", []) if isinstance(p, dict)]
            return f"{', '.join(map(str, sizes)) or 'no'}-token pack{'s' if len(sizes) != 1 else ''}"

        raise SqueezeError(f"{out_dir} holds artifacts verified on other inputs ({packs(old_inputs)}; this export: "
                           f"{packs(new_inputs)}); export with the same verification settings (--max-context, "
                           "--verify-context, --verify-text), --no-verify, or into a fresh directory (nothing was "
                           "changed)")
    if new_inputs is None and old_inputs is not None:
        manifest["verification_inputs"] = old_inputs
    manifest["artifacts"] = kept
    manifest["tools"] = dict(sorted({**(old.get("tools") or {}), **manifest["tools"]}.items()))


@dataclass
class VerificationData:
    """A real pack (pass key in licence prose), the prompts, and the PyTorch decoder's greedy tokens per mode."""

    pack: object
    prompts: list
    tokens: int
    case: object
    tokenizer: object
    requested_tokens: int = 0
    reference: dict = field(default_factory=dict)   # (attention, keep_keys, decode selection, prefill rows, prefill tail) -> [token ids]

    @classmethod
    def build(cls, model, checkpoint, context_tokens: int, tokens: int, text: str | None = None) -> "VerificationData":
        from .evaluate import PASSKEY_QUESTION, make_case
        from .pack import BuildSettings, build_context_pack

        case = None
        if text is None:
            case, text = make_case(checkpoint.tokenizer, "passkey", context_tokens, 0.4, seed=11, rotate=1)
        pack = build_context_pack(model, checkpoint, text, BuildSettings())
        return cls(pack, [case.question if case else PASSKEY_QUESTION, *VERIFY_PROMPTS], tokens, case,
                   checkpoint.tokenizer, context_tokens)

    def describe(self) -> dict:
        return {"context": "pass key in real prose (squeezed_attention.evaluate.make_case, seed 11, depth 0.4)"
                if self.case else "text given by the caller",
                "context_tokens": self.pack.num_tokens, "requested_tokens": self.requested_tokens,
                "context_sha256": self.pack.hashes.get("context_sha256"),
                "prompts": list(self.prompts), "tokens_per_prompt": self.tokens,
                "pass_key": self.case.answer if self.case else None}

    def reference_tokens(self, model, tokenizer, attention: str, keep_keys: int | None,
                         decode_selection: str = "step", prefill_rows: int = 0, prefill_tail: int = 0,
                         exact_tail: int = 0, follow_keys: int = 0, exact_decode: int = 0,
                         exact_below: float = 0.0, exact_head: int = 0) -> list:
        from .generation import AttentionChoice, Generator

        key = (attention, keep_keys, decode_selection, prefill_rows, prefill_tail, exact_tail, follow_keys, exact_decode,
               exact_below, exact_head)
        if key not in self.reference:
            gen = Generator(model, tokenizer, self.pack)
            choice = AttentionChoice("full") if attention == "full" else \
                AttentionChoice("top-k", keep_keys=keep_keys, backend="torch", decode_selection=decode_selection,
                                prefill_rows=prefill_rows, prefill_tail=prefill_tail, exact_tail=exact_tail,
                                follow_keys=follow_keys,   # the artifact's own (export --follow-keys, 0 by default)
                                exact_decode=exact_decode, exact_below=exact_below, exact_head=exact_head)
            self.reference[key] = [gen.generate(p, choice, max_new_tokens=self.tokens, stop_at_eos=False).token_ids
                                   for p in self.prompts]
        return self.reference[key]


def verify_decoder_artifact(path: Path, record: dict, model, data) -> dict:
    """Greedy tokens vs the PyTorch decoder and per-step logits vs the PyTorch exported graph (see module doc), on
    one VerificationData or several (then one result per pack under ``per_pack``, combined at the top)."""
    from export.backends import get_backend

    reason = get_backend(record["format"]).cannot_run_here(record)
    if reason:  # e.g. a .pte for the Core ML delegate off Apple platforms: recorded, not failed
        return {"status": "not run", "reason": reason}
    if not isinstance(data, VerificationData):
        results = [verify_decoder_artifact(path, record, model, d) for d in data]
        if any("prompts" not in r for r in results):
            return next(r for r in results if "prompts" not in r)
        return {"status": "fail" if any(r["status"] == "fail" for r in results) else "pass",
                "failures": [f"{d.pack.num_tokens}-token pack: {f}" for d, r in zip(data, results) for f in r["failures"]],
                "prompts": sum(r["prompts"] for r in results),
                "prompts_identical": sum(r["prompts_identical"] for r in results),
                "tokens_per_prompt": results[0]["tokens_per_prompt"],
                **({"psnr_db": min(r["psnr_db"] for r in results),
                    "max_abs_logit_error": max(r["max_abs_logit_error"] for r in results)} if "psnr_db" in results[0] else
                   {"weights": results[0]["weights"], "top1_agreement": min(r["top1_agreement"] for r in results),
                    "mean_kl": max(r["mean_kl"] for r in results), "thresholds": results[0]["thresholds"],
                    "judged": results[0]["judged"]}),
                "runtime": results[0]["runtime"],
                "per_pack": [{"context_tokens": d.pack.num_tokens, **r} for d, r in zip(data, results)]}
    return _verify_on_pack(path, record, model, data)


def _verify_on_pack(path: Path, record: dict, model, data: VerificationData) -> dict:
    from export.backends import get_backend

    from .decoder_session import GenerationLoop

    contract = record["decoder"]
    shapes = DecoderShapes(**contract["shapes"])
    attention = contract["attention"]
    tokenizer = data.tokenizer
    arrays = pack_as_arrays(data.pack)
    context = decoder_context_inputs(arrays, shapes.to_dict(), attention)
    backend = get_backend(record["format"])
    try:
        runner = backend.load_program(path, contract["methods"])
    except Exception as exc:  # noqa: BLE001 - a runtime that cannot load the artifact fails verification, named
        return {"status": "fail", "failures": [f"{backend.runtime} cannot load {path.name}: {str(exc).splitlines()[0][:200]}"]}
    eager = EagerRunner(decoder_modules(model, shapes, attention, contract["state"],
                                        contract.get("decode_selection") or "step", contract.get("exact_tail") or 0,
                                        contract.get("follow_keys") or 0))
    loop_art = GenerationLoop(runner, contract, arrays, context)
    loop_ref = GenerationLoop(eager, {**contract, "lookup_plan": "in-graph"}, arrays, context)  # same math, one graph
    keep_keys = loop_art.keep_keys
    reference = data.reference_tokens(model, tokenizer, attention, keep_keys, contract.get("decode_selection") or "step",
                                      loop_art.prefill_rows, loop_art.prefill_tail, loop_art.exact_tail,
                                      loop_art.follow, loop_art.exact_decode, loop_art.exact_below,
                                      loop_art.exact_head)
    from .generation import Generator

    framing = Generator(model, tokenizer, data.pack)
    weights = record.get("weights", "fp32")
    if weights != "fp32":
        result = _verify_quantized(loop_art, loop_ref, framing, data, reference, shapes, weights, tokenizer)
        runner.close()
        return {**result, "keep_keys": keep_keys, "runtime": backend.runtime}
    identical, per_prompt, sq_err, peak = 0, [], 0.0, 0.0
    steps = 0
    for prompt, ref_tokens in zip(data.prompts, reference):
        ids = framing.prompt_ids(prompt)  # the PyTorch decoder's own chat framing of the question
        room = shapes.max_prompt + shapes.max_new - len(ids)   # greedy tokens are a prefix: compare what fits
        ref_tokens = ref_tokens[:max(1, min(len(ref_tokens), room))]
        art_tokens, art_logits = loop_art.greedy(ids, len(ref_tokens), forced=None)
        # the same calls: the artifact's unsure steps (exact_below) re-run in the graph too, not decided again on
        # logits a rounding apart
        _, eager_logits = loop_ref.greedy(ids, len(art_tokens), forced=art_tokens, rerun_at=loop_art.rerun_at)
        same = art_tokens == ref_tokens
        identical += same
        first_diff = next((i for i, (a, b) in enumerate(zip(art_tokens, ref_tokens)) if a != b), None)
        diff = np.abs(np.stack(art_logits).astype(np.float64) - np.stack(eager_logits).astype(np.float64))
        sq_err += float((diff ** 2).sum())
        steps += diff.size
        peak = max(peak, float(np.abs(np.stack(eager_logits)).max()))
        per_prompt.append({"prompt": prompt, "identical": same, "first_difference": first_diff,
                           "text": tokenizer.decode(art_tokens), "max_abs_logit_error": float(diff.max())})
    runner.close()
    mse = sq_err / max(steps, 1)
    psnr = 999.0 if mse == 0 else 10 * math.log10(peak ** 2 / mse)
    failures = []
    if identical < len(data.prompts):
        failures.append(f"greedy tokens differ from PyTorch on {len(data.prompts) - identical} of {len(data.prompts)} prompts")
    if psnr < PSNR_MIN_DB:
        failures.append(f"logits PSNR {psnr:.1f} dB < {PSNR_MIN_DB:.0f} dB")
    return {"status": "fail" if failures else "pass", "failures": failures, "prompts": len(data.prompts),
            "prompts_identical": identical, "tokens_per_prompt": data.tokens, "keep_keys": keep_keys,
            "psnr_db": round(psnr, 2), "max_abs_logit_error": max(p["max_abs_logit_error"] for p in per_prompt),
            "per_prompt": per_prompt, "runtime": backend.runtime}


def _verify_quantized(loop_art, loop_ref, framing, data, reference, shapes, weights: str, tokenizer) -> dict:
    """Quantized weights: both graphs teacher-forced along the fp32 PyTorch decoder's greedy tokens; the
    artifact's next-token top-1 must agree with the fp32 exported graph's on QUANTIZED_TOP1_MIN of the steps and
    the mean KL(fp32 || quantized) of the next-token distributions stay under QUANTIZED_KL_MAX. Free-running
    greedy tokens are recorded (identical prefix length, text), not judged."""
    from squeeze_mobile.metrics import log_softmax, next_token_agreement

    agree = steps = 0
    kl_sum = 0.0
    per_prompt = []
    for prompt, ref_tokens in zip(data.prompts, reference):
        ids = framing.prompt_ids(prompt)
        room = shapes.max_prompt + shapes.max_new - len(ids)
        ref_tokens = ref_tokens[:max(1, min(len(ref_tokens), room))]
        _, art_logits = loop_art.greedy(ids, len(ref_tokens), forced=ref_tokens)
        _, ref_logits = loop_ref.greedy(ids, len(ref_tokens), forced=ref_tokens, rerun_at=loop_art.rerun_at)
        m = next_token_agreement(log_softmax(np.stack(ref_logits)), log_softmax(np.stack(art_logits)))
        kl, same = m["kl"], m["top1"]
        agree += int(same.sum())
        steps += len(same)
        kl_sum += float(kl.sum())
        free, _ = loop_art.greedy(ids, len(ref_tokens))
        prefix = next((i for i, (x, y) in enumerate(zip(free, ref_tokens)) if x != y), len(free))
        per_prompt.append({"prompt": prompt, "top1_agreement": float(same.mean()), "mean_kl": float(kl.mean()),
                           "greedy_identical_prefix": prefix, "text": tokenizer.decode(free)})
    top1, kl_mean = agree / max(steps, 1), kl_sum / max(steps, 1)
    failures = []
    if top1 < QUANTIZED_TOP1_MIN[weights]:
        failures.append(f"{weights} weights: next-token top-1 agrees with fp32 on {100 * top1:.1f}% of steps "
                        f"(< {100 * QUANTIZED_TOP1_MIN[weights]:.0f}%)")
    if kl_mean > QUANTIZED_KL_MAX[weights]:
        failures.append(f"{weights} weights: mean KL to fp32 {kl_mean:.4f} > {QUANTIZED_KL_MAX[weights]}")
    return {"status": "fail" if failures else "pass", "failures": failures, "prompts": len(data.prompts),
            "prompts_identical": sum(p["greedy_identical_prefix"] == len(r) for p, r in zip(per_prompt, reference)),
            "tokens_per_prompt": data.tokens, "weights": weights, "top1_agreement": round(top1, 4),
            "mean_kl": round(kl_mean, 5), "thresholds": {"top1_min": QUANTIZED_TOP1_MIN[weights],
                                                         "kl_max": QUANTIZED_KL_MAX[weights]},
            "judged": "teacher-forced along the fp32 PyTorch greedy tokens, against the fp32 exported graph",
            "per_prompt": per_prompt}


__all__ = ["DecoderExportResult", "EagerRunner", "decoder_program", "decoder_shapes", "export_decoder",
           "verify_decoder_artifact"]


def is_decoder_manifest(directory) -> bool:
    """Whether ``directory`` (an export folder, or its manifest.json as `squeeze verify` / `bench` take it) holds a
    decoder export."""
    from .decoder_session import decoder_dir

    path = decoder_dir(directory) / MANIFEST
    if not path.is_file():   # missing, or a FIFO / device, which reading would block on: not a decoder's
        return False
    try:
        return str(json.loads(path.read_text(encoding="utf-8-sig")).get("schema")).startswith(SCHEMA_PREFIX)
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def verify_decoder_directory(directory, progress=None, model=None, verify_text=None) -> dict:
    """Re-run an exported decoder's verification from its manifest: sha256 of every artifact, the model it came
    from (weights hash), the verification pack rebuilt from the recorded prose case; returns {file: result}.
    ``model`` / ``verify_text``: where the model file or the --verify-text file is now, when it is no longer at the
    path the manifest records (the folder was copied to another machine); each must hash as recorded."""
    from .decoder_session import decoder_dir, read_decoder_manifest
    from .model import LlamaForCausalLM
    from .weights import load_checkpoint

    say = progress or (lambda stage, msg: None)
    directory = decoder_dir(directory)   # the folder, or its manifest.json
    manifest = read_decoder_manifest(directory)
    info = manifest.get("verification_inputs")
    if not info:
        raise SqueezeError(f"{directory} was exported with --no-verify; there is no verification to re-run")
    if verify_text is not None and not info.get("text_file"):
        raise SqueezeError(f"{directory} was verified on the prose shipped with squeeze-mobile, not on a --verify-text "
                           "file; drop --verify-text")
    # the cheap checks first, as `squeeze verify` and the bench check every export (export.pipeline.artifact_problem:
    # present, a file, the recorded sha256): a missing or changed artifact fails without the pack's rebuild (minutes)
    from export.pipeline import artifact_problem

    quick = {}
    for record in manifest["artifacts"]:
        problem = artifact_problem(record, directory)
        if problem:
            quick[record["file"]] = problem.split(";")[0]
    source = manifest["model"]["source"] if model is None else str(model)
    checkpoint = load_checkpoint(source)
    if checkpoint.weights_sha256 != manifest["model"]["weights_sha256"]:
        raise SqueezeError(f"the model {source} is not the one exported (weights sha256 differs)" if model is not None
                           else f"the model {source} changed since the export (weights sha256 differs)")
    if len(quick) == len(manifest["artifacts"]):
        shared = tokenizer_failures(directory, manifest, checkpoint.tokenizer)
        return {name: {"status": "fail", "failures": shared + [why]} for name, why in quick.items()}
    model = LlamaForCausalLM.from_checkpoint(checkpoint)
    say("verify", "rebuilding the verification pack")
    text = None
    text_file = info.get("text_file") if verify_text is None else str(verify_text)
    if text_file:   # read as the export read it (byte-order mark, encodings): the same text, same hash
        from .file_kinds import read_utf8_text

        text = read_utf8_text(text_file, "verification text (--verify-text)",
                              "pass where it is now with `squeeze verify DIR --verify-text FILE`, or re-export")
    packs = info.get("packs") if isinstance(info.get("packs"), list) else [info]  # (one-pack manifests: the dict)
    data = []
    for entry in packs:
        d = VerificationData.build(model, checkpoint, int(entry["requested_tokens"]), int(entry["tokens_per_prompt"]),
                                   text)
        if d.pack.hashes.get("context_sha256") != entry.get("context_sha256"):
            if text_file and verify_text is None:
                raise SqueezeError(f"the verification text {text_file} changed since the export (its hash differs); "
                                   "restore it, pass the text the export was verified on with --verify-text, or "
                                   "re-export")
            if text_file:
                raise SqueezeError(f"the verification text {text_file} is not the export's (its hash differs); pass "
                                   "the file the export was verified on with --verify-text, or re-export")
            raise SqueezeError("the verification context rebuilt from the manifest differs from the export's (the "
                               "prose shipped with this machine changed); re-export to verify here")
        data.append(d)
    shared = tokenizer_failures(directory, manifest, checkpoint.tokenizer)   # every artifact's answers go through it
    results = {}
    for record in manifest["artifacts"]:
        path = directory / record["file"]
        if record["file"] in quick:
            results[record["file"]] = {"status": "fail", "failures": shared + [quick[record["file"]]]}
            continue
        say(record["format"], f"verifying {record['file']}")
        result = verify_decoder_artifact(path, record, model, data)
        if shared:
            result = {**result, "status": "fail", "failures": shared + list(result.get("failures") or [])}
        results[record["file"]] = result
    return results


def tokenizer_failures(directory, manifest: dict, tokenizer) -> list:
    """What is wrong with the tokenizer an export wrote beside its artifacts (an app and `squeeze generate --artifacts`
    encode with it, not with the model file's): missing, unreadable, not the model's tokenizer, or a manifest whose
    chat framing or stop tokens are not the model's. Empty when it is intact."""
    from .decoder_session import load_decoder_tokenizer

    try:   # its content is compared with the model's below (the more telling failure), then its bytes
        stored = load_decoder_tokenizer(directory, manifest, check_sha256=False)
    except SqueezeError as exc:
        return [str(exc).split(";")[0]]
    failures = []
    if stored.to_str() != tokenizer.backend.to_str():
        failures.append(f"{manifest['tokenizer']['file']} is not the model's tokenizer (changed since the export)")
    else:
        try:
            load_decoder_tokenizer(directory, manifest)
        except SqueezeError as exc:   # the model's tokenizer, rewritten: the apps' and generate's hash check refuse it
            failures.append(str(exc).split(";")[0])
    section = manifest["tokenizer"]
    if section["chat"] != chat_section(tokenizer):
        failures.append("the manifest's chat framing is not the model's (edited since the export)")
    if section["stop_token_ids"] != tokenizer.stop_token_ids():
        failures.append("the manifest's stop_token_ids are not the model's (edited since the export)")
    return failures


functools.update_wrapper(export_decoder, _export_decoder)   # help() and inspect.signature show the real arguments
