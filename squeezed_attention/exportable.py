"""The decoder as an exportable graph: static shapes, the context pack as run-time inputs, the lookup in-graph.

One module serves both methods of an exported decoder: ``prefill`` (T = max_prompt tokens, padded, with a
valid-length input) and ``decode`` (T = 1). It reuses the weights of a :class:`LlamaForCausalLM` and
re-states its math without Python-side state, so ``torch.export`` captures a step once per (T, shapes):

- The fixed context is DATA, not constants: the app loads a context pack and hands its tensors to every
  call (``context_inputs``), so one artifact serves every pack built for the model.
- Squeezed attention (plan "in-graph"): centroid scores as matrix products, clusters ranked with ``topk``, and
  the ranked fill of the host lookup (take keys cluster by cluster, best cluster first, until ``keep_keys``
  are taken) restated without searchsorted or sort (neither is an ExecuTorch portable kernel): the output slot
  where each ranked cluster starts is marked with a scatter-add, a cumsum turns marks into the ranked cluster
  of every slot. The clustered K/V rows arrive cluster by cluster, so a kept key is one gathered row. The
  number of gathered rows is a constant of the artifact (``max_keep``); ``keep_keys`` (an input) masks the
  rest, so a smaller pack keeps exactly the host's fraction of its own keys.
- Full attention (``attention='full'``): the whole padded context, masked to ``context_len``.
- Question-level selection (``selection='question'``, opt-in): the prefill also returns its selection per layer
  (``selection_rows``, ``selection_bias``); the app gathers those rows once per question
  (pack_arrays.held_inputs) and ``decode`` is a second module (``held=True``, same weights and buffers) that
  attends over them with no lookup per step.
- The dynamic KV cache (prompt and generated tokens): ``state='io'`` takes ``past_keys/past_values`` and returns
  only this step's ``new_keys/new_values`` (the runner writes them at ``cache_len``; ONNX); ``state='buffer'``
  keeps it in mutable buffers updated in place (ExecuTorch; token-major, one index per write). Entries at or past ``cache_len + n_tokens`` are
  masked, so a new question simply starts again at ``cache_len = 0``.

Positions: fixed context 0..context_len-1, then the dynamic tokens at context_len + cache_len + t (RoPE
computed in-graph from the positions, as the host model's table is: float32 outer product, then cos/sin).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SqueezeError
from .model import LlamaForCausalLM, rotate_half

ATTENTIONS = ("squeezed", "full")
STATES = ("io", "buffer")
SELECTIONS = ("step", "question")


@dataclass(frozen=True)
class DecoderShapes:
    """The static shapes of an exported decoder (constants of the artifact, recorded in its manifest)."""

    max_context: int        # context tokens the artifact accepts (packs longer than this are refused)
    max_prompt: int         # prefill width (a question is padded to it)
    max_new: int            # generated tokens per question
    sink_tokens: int = 4    # always-attended first context tokens (pack build setting)
    window: int = 100       # always-attended last context tokens (the pack's observation window)
    max_clusters: int = 0   # centroids per (layer, KV head) the artifact takes (squeezed)
    max_keep: int = 0       # clustered keys gathered per KV head (squeezed); keep_keys <= max_keep are used

    @property
    def max_clustered(self) -> int:
        return self.max_context - self.sink_tokens - self.window

    @property
    def cache_capacity(self) -> int:
        return self.max_prompt + self.max_new

    @property
    def held_rows(self) -> int:
        """Rows a decode step over a held selection attends in the fixed context: sinks, kept keys, window, and
        one summary per cluster."""
        return self.sink_tokens + self.max_keep + self.window + self.max_clusters

    def to_dict(self) -> dict:
        return asdict(self)


class ExportableDecoder(nn.Module):
    """prefill/decode over a fixed context given as inputs (see the module docstring)."""

    follow = 0   # followed keys per decode step (set in __init__; see there)

    def __init__(self, model: LlamaForCausalLM, shapes: DecoderShapes, attention: str = "squeezed",
                 state: str = "io", selection: str = "step", held: bool = False, exact: bool = False,
                 follow: int = 0):
        super().__init__()
        if attention not in ATTENTIONS:
            raise SqueezeError(f"unknown attention {attention!r}; use squeezed or full")
        if state not in STATES:
            raise SqueezeError(f"unknown state handling {state!r}; use io or buffer")
        if selection not in SELECTIONS:
            raise SqueezeError(f"unknown decode selection {selection!r}; use step or question")
        if (selection == "question" or held) and attention != "squeezed":
            raise SqueezeError("--decode-selection question is a squeezed-attention setting; full attention selects nothing")
        if held and selection != "question":
            raise SqueezeError("a decode over a held selection needs selection='question'")
        if exact and (attention != "squeezed" or held or selection != "step"):
            raise SqueezeError("an exact prompt tail (--exact-tail) is a squeezed-attention prefill with per-step decode "
                               "selection")
        if follow and (attention != "squeezed" or held or selection != "step"):
            raise SqueezeError("followed keys (--follow-keys) are a squeezed-attention setting with per-step decode "
                               "selection")
        cfg = model.config
        if shapes.max_context + shapes.cache_capacity > cfg.max_positions:
            raise SqueezeError(f"max context {shapes.max_context} + prompt {shapes.max_prompt} + new tokens "
                               f"{shapes.max_new} exceed the model window of {cfg.max_positions} tokens")
        if attention == "squeezed" and (shapes.max_clusters < 1 or shapes.max_keep < 1):
            raise SqueezeError("a squeezed decoder needs max_clusters >= 1 and max_keep >= 1")
        self.config, self.shapes, self.attention, self.state = cfg, shapes, attention, state
        # selection='question': the prompt's prefill selects once per layer and returns that selection
        # (selection_rows, selection_bias); decode steps (held=True, a second module over the same weights and
        # buffers) attend over the rows the app gathered with it (held_keys/held_values/held_bias): no lookup per step.
        self.selection, self.held = selection, held
        # exact=True: the prompt's exact tail (method prefill_exact): every fixed-context row of the squeezed layout
        # (sinks, every clustered row, window; padding rows masked), no lookup, no summaries
        self.exact = exact
        # follow=F (SelectionSpec.follow_keys): decode steps also attend the F rows ``follow_rows`` (flat rows of the
        # clustered table, -1: none; the previous call's ``follow_out``) the selection did not keep, and every method
        # returns ``follow_out`` [L, Hkv, F]: the rows after the F clustered rows its last token weighed most
        # (``next_rows``: the flat row of each row's next position, -1 past the clustered keys; from the pack)
        self.follow = int(follow)
        # The last token's rows of a multi-token call's attention weights (the followed keys' pointer) are taken with
        # an index (in-graph plans: it reads 3 rows per head; a 0/1 product read every row of the [Hkv, G*T, n]
        # weights: 120 of a 128-token exact prompt's 1160 ms in the .onnx, RESULTS.md 3zc); the split plan's stages
        # keep the product (decoder_program sets False: their GPU delegates take no gather)
        self.gather_last = True
        # The graph's weights, not the host model (whose unused per-projection weights an exported program would
        # carry): the projections that read the same input are fused into one product (q|k|v, gate|up), 4 matrix
        # products per layer instead of 7 (a decode step is many small runtime calls; the weight grids are per
        # output row, so a fused matrix quantizes to exactly the values of its parts).
        self.embed_tokens, self.norm, self.lm_head = model.model.embed_tokens, model.model.norm, model.lm_head
        self.layers = nn.ModuleList(FusedLayer(layer) for layer in model.model.layers)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        # RMSNorm's mean over the hidden size as a product with this constant (a delegate takes it as a linear)
        self.register_buffer("mean_weight", torch.full((1, cfg.hidden_size), 1.0 / cfg.hidden_size), persistent=False)
        self.register_lookup_constants(cfg.num_kv_heads)
        # picks the last token's query row per head of a KV group (step_tensors' last_select)
        self.register_buffer("group_eye", torch.eye(cfg.group_size), persistent=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if state == "buffer":
            # One buffer per layer: a write into one layer's slice of a single [L, ...] buffer is functionalised
            # into an update of the whole buffer (ExecuTorch ran it as per-layer portable `where` kernels over
            # all layers' caches: half of a 7.6k decode step). Token-major, [S, Hkv, D]: a step's rows are written
            # with ONE index over the first axis, which ExecuTorch's reinplace pass turns into an in-place index_put_
            # (the [Hkv, S, D] layout needs a second index: the write then copied the whole buffer and ran a portable
            # kernel ~30x slower for a 128-token prefill).
            shape = (shapes.cache_capacity, cfg.num_kv_heads, cfg.head_dim)
            for name in self.state_names():
                self.register_buffer(name, torch.zeros(shape), persistent=False)

    def register_lookup_constants(self, num_kv_heads: int):
        """The in-graph lookup's constants, made once instead of per layer and step: 1 (1 / N as a division), the kept
        slots' indices (int and float), and where each KV head's rows start in the flat clustered table."""
        s = self.shapes
        slots = torch.arange(max(s.max_keep, 1))
        self.register_buffer("one", torch.ones(1), persistent=False)
        self.register_buffer("slot_index", slots[None, :], persistent=False)
        self.register_buffer("slot_index_f", slots.to(torch.float32)[None, :], persistent=False)
        self.register_buffer("ones_rank", torch.ones(num_kv_heads, max(min(s.max_clusters, s.max_keep), 1),
                                                     dtype=torch.int64), persistent=False)
        self.register_buffer("head_rows", torch.arange(num_kv_heads)[:, None] * max(s.max_clustered, 1), persistent=False)
        self.register_buffer("clustered_index_f", torch.arange(max(s.max_clustered, 1), dtype=torch.float32)[None, :],
                             persistent=False)
        self.register_buffer("clustered_rows", self.head_rows + torch.arange(max(s.max_clustered, 1))[None, :],
                             persistent=False)                                    # [Hkv, Nc] flat rows per head
        f = max(int(self.follow), 1)
        self.register_buffer("earlier", torch.triu(torch.ones(f, f, dtype=torch.bool), diagonal=1)[None],
                             persistent=False)                                    # [1, F, F]: entry i before j

    def state_names(self):
        """The mutable buffers of state='buffer' (the dynamic KV cache), in program order."""
        if self.state != "buffer":
            return []
        return [f"cache_{kind}_{li}" for li in range(self.config.num_layers) for kind in ("keys", "values")]

    # ------------------------------------------------------------------------------------------ contract
    # Tensors that hold something per layer are one input PER LAYER (``<name>_<layer>``): a runtime copies a
    # slice it takes out of one [L, ...] input (onnxruntime's Split, ExecuTorch's select_copy), and for the
    # fixed context that was most of a decode step (a 7.8k-token pack: ~700 MB copied per token).
    def per_layer_names(self):
        names = ["past_keys", "past_values"] if self.state == "io" else []
        if self.held:
            return names + ["held_keys", "held_values", "held_bias"]
        if self.attention == "full":
            return names + ["context_keys", "context_values"]
        follow = ["next_rows"] if self.follow else []
        if self.exact:
            return names + ["sink_kv", "window_kv", "clustered_keys", "clustered_values", "counts"] + follow
        return names + ["sink_kv", "window_kv", "clustered_keys", "clustered_values", "centroids", "value_centroids",
                        "counts", "cluster_start"] + follow + (["follow_rows"] if self.follow else [])

    def context_input_names(self):
        L = self.config.num_layers
        return [f"{n}_{li}" for li in range(L) for n in self.per_layer_names()
                if not n.startswith("past_") and n != "follow_rows"]

    def head_names(self):
        """The inputs that are not per layer."""
        uses_keep = self.attention == "squeezed" and not self.held and not self.exact
        return ["tokens", "n_tokens", "cache_len", "context_len"] + (["keep_keys"] if uses_keep else [])

    def input_names(self):
        L = self.config.num_layers
        return self.head_names() + [f"{n}_{li}" for li in range(L) for n in self.per_layer_names()]

    def arrange(self, values: dict) -> dict:
        """{input name: value} -> forward's keyword arguments: the per-layer inputs as one list, in input order
        (export.program.Method.arrange; also used for dynamic-shape specs)."""
        head = self.head_names()
        out = {n: values[n] for n in head}
        out["layer_inputs"] = [values[n] for n in self.input_names()[len(head):]]
        return out

    def output_names(self):
        names = ["logits"] + (["new_keys", "new_values"] if self.state == "io" else [])
        if self.selection == "question" and not self.held:
            names += ["selection_rows", "selection_bias"]
        if self.follow:
            names += ["follow_out"]
        return names

    def example_inputs(self, tokens: int):
        """Zero-filled example inputs of the artifact's shapes for a step of ``tokens`` tokens (dict, in order)."""
        cfg, s = self.config, self.shapes
        H, D = cfg.num_kv_heads, cfg.head_dim
        one = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
        x = {"tokens": torch.zeros(tokens, dtype=torch.int64), "n_tokens": one(tokens), "cache_len": one(0),
             "context_len": one(s.max_context)}
        if "keep_keys" in self.head_names():
            x["keep_keys"] = one(s.max_keep)
        shape = {"held_keys": (H, s.held_rows, D), "held_values": (H, s.held_rows, D), "held_bias": (H, 1, s.held_rows),
                 "past_keys": (H, s.cache_capacity, D), "past_values": (H, s.cache_capacity, D),
                 "context_keys": (H, s.max_context, D), "context_values": (H, s.max_context, D),
                 "sink_kv": (H, s.sink_tokens, 2 * D), "window_kv": (H, s.window, 2 * D),
                 # the clustered tables: flat [Hkv * Nc, D] where the lookup gathers rows of every head in one go;
                 # prefill_exact reads them whole per KV head, [Hkv, Nc, D] (the app passes a view of the same rows)
                 "clustered_keys": (H, s.max_clustered, D) if self.exact else (H * s.max_clustered, D),
                 "clustered_values": (H, s.max_clustered, D) if self.exact else (H * s.max_clustered, D),
                 "centroids": (H, s.max_clusters, D),
                 "value_centroids": (H, s.max_clusters, D),
                 "counts": (H, s.max_clusters), "cluster_start": (H, s.max_clusters),
                 "next_rows": (H * s.max_clustered,), "follow_rows": (H, max(self.follow, 1))}
        for li in range(cfg.num_layers):
            for n in self.per_layer_names():
                dtype = torch.int64 if n in ("counts", "cluster_start", "next_rows", "follow_rows") else torch.float32
                x[f"{n}_{li}"] = (torch.full(shape[n], -1, dtype=dtype) if n == "follow_rows"
                                  else torch.zeros(shape[n], dtype=dtype))
        return x

    # ------------------------------------------------------------------------------------------- forward
    # Written so that a delegate (XNNPACK) gets few islands per layer: every mask is an additive float bias
    # built once per step up front, RMSNorm's mean is a product with a constant vector, the cluster scores are
    # matrix products and a softmax, and the cache update is a side branch the attention does not wait for.
    # Attention never concatenates the fixed context's keys or values (a 7.8k context would be copied per layer
    # and step); only the small dynamic part (past cache masked at cache_len + this step's keys) is.
    # What stays on the CPU per layer is the lookup's integer work (topk, ranked fill, gather) and, with state in
    # buffers, the write.
    def forward(self, tokens, n_tokens, cache_len, context_len, keep_keys=None, layer_inputs=()):
        """Inputs as ExportableDecoder.input_names() lists them; the per-layer ones as one list (see arrange)."""
        layer_inputs = dict(zip(self.input_names()[len(self.head_names()):], layer_inputs))
        S = self.shapes.cache_capacity
        T = tokens.shape[0]
        st = self.step_tensors(T, n_tokens, cache_len, context_len)
        x = self.embed_tokens(tokens)
        new_keys, new_values = [], []
        held = [] if self.selection == "question" and not self.held else None   # (rows, bias) per layer, returned
        pointers = []                                                            # follow_out per layer
        for li in range(self.config.num_layers):
            mine = {n: layer_inputs.get(f"{n}_{li}") for n in self.per_layer_names()}
            qg, k, v = self.layer_qkv(li, x, st)
            if self.state == "io":
                past_k, past_v = mine["past_keys"], mine["past_values"]
                new_keys.append(k)
                new_values.append(v)
            else:  # the buffers are [S, Hkv, D] (see __init__); attention reads them as [Hkv, S, D]
                past_k = getattr(self, f"cache_keys_{li}").transpose(0, 1)
                past_v = getattr(self, f"cache_values_{li}").transpose(0, 1)
            if self.held:
                parts = [(mine["held_keys"], mine["held_values"], mine["held_bias"])]
            elif self.attention == "full":
                parts = [(mine["context_keys"], mine["context_values"], st["ctx_bias"])]
            elif self.exact:
                parts = self._exact_rows(mine)
            else:
                parts = self._squeezed_rows(qg, mine, keep_keys, st["row_weights"], held)
            if self.follow:
                # the clustered parts' rows: every row (exact) or the kept ones then the followed ones
                candidates = self.clustered_rows if self.exact else torch.cat([self._kept_rows, self._followed_rows], 1)
                x, weights = self.layer_attend(li, x, qg, k, v, past_k, past_v, parts, st,
                                               weigh=(1,) if self.exact else (1, 2))
                pointers.append(self._pointer(weights, candidates, mine["next_rows"]))
                if self.state == "io":
                    x = x + _schedule_here(pointers[-1], x.dtype)
            else:
                x = self.layer_attend(li, x, qg, k, v, past_k, past_v, parts, st)
            if self.state == "buffer":  # a side branch: nothing above waits for the write
                write_at = torch.clamp(cache_len + st["steps"], max=S - 1)
                getattr(self, f"cache_keys_{li}").index_put_((write_at,), k.transpose(0, 1))
                getattr(self, f"cache_values_{li}").index_put_((write_at,), v.transpose(0, 1))
        out = (self.head(x, st),)
        if self.state == "io":
            out += (torch.stack(new_keys), torch.stack(new_values))
        if held is not None:
            out += (torch.stack([r for r, _ in held]), torch.stack([b for _, b in held]))
        if self.follow:
            out += (torch.stack(pointers),)
        return out if len(out) > 1 else out[0]

    def _pointer(self, weights, candidates, next_rows):
        """follow_out of one layer (SqueezedContext._point): of the ``candidates`` rows [Hkv, n] the step's last token
        attended in the clustered parts, with ``weights`` [Hkv, n] (its query heads' softmax weights over the fixed
        context, summed), the rows after the F largest (``next_rows``); -1 where a weight is 0 (masked) or no row
        follows."""
        top, order = torch.topk(weights, self.follow, dim=-1)
        rows = candidates.gather(1, order)
        nxt = next_rows.index_select(0, rows.reshape(-1)).reshape(rows.shape)
        return torch.where(top > 0, nxt, torch.full_like(nxt, -1))

    # The pieces of a step, shared by the one-graph forward above and the split plan's stages (DecoderStage).
    def step_tensors(self, T: int, n_tokens, cache_len, context_len) -> dict:
        """What every layer of a step of T tokens uses: RoPE tables, additive masks, the query rows' weights."""
        s, G = self.shapes, self.config.group_size
        S = s.cache_capacity
        neg = torch.tensor(float("-inf"))
        zero = torch.tensor(0.0)
        steps = torch.arange(T)
        positions = context_len + cache_len + steps                                  # [T]
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        st = {"steps": steps, "cos": angles.cos(), "sin": angles.sin()}
        # the queries' RoPE tables carry attention's 1/sqrt(D) (exact for a power-of-two D): every query-key product
        # of the layer comes out scaled, with no multiply over the [Hkv, G*T, keys] scores
        st["q_cos"], st["q_sin"] = st["cos"] * self.scale, st["sin"] * self.scale
        # Additive masks for the G*T query rows of a KV head (row = head-in-group * T + t).
        st["past_bias"] = torch.where(torch.arange(S)[None, :] < cache_len, zero, neg)         # [1, S]
        st["new_bias"] = torch.where(steps[None, :] <= steps[:, None], zero, neg).repeat(G, 1)  # [G*T, T] causal
        if self.attention == "full":
            st["ctx_bias"] = torch.where(torch.arange(s.max_context) < context_len, zero, neg)[None, None, :]
        elif not self.held:
            row_valid = (steps < n_tokens).to(torch.float32).repeat(G)                        # [G*T]
            st["row_weights"] = (row_valid / row_valid.sum())[None, None, :]                  # mean over valid rows
        st["last"] = (steps == torch.clamp(n_tokens - 1, min=0)).to(torch.float32)[None, None, :]   # [1, 1, T]
        st["last_index"] = torch.clamp(n_tokens - 1, min=0).reshape(1)                                # [1]
        # the last token's query row of each head in the group, as [Hkv, G, G*T] 0/1 rows (row g: query row g*T + last)
        st["last_select"] = (self.group_eye[:, :, None] * st["last"][0]).flatten(1)[None].expand(
            self.config.num_kv_heads, G, G * T)
        return st

    def rms_norm(self, x, norm):
        variance = F.linear(x * x, self.mean_weight)                                            # [T, 1]
        return x * torch.rsqrt(variance + norm.eps) * norm.weight

    def layer_qkv(self, li: int, x, st):
        """Layer li's queries (grouped per KV head: [Hkv, G*T, D]), keys and values ([Hkv, T, D]), RoPE applied."""
        cfg = self.config
        T = x.shape[0]
        H, Hkv, D, G = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.group_size
        layer = self.layers[li]
        h = self.rms_norm(x, layer.input_layernorm)
        # slices, not split(): ExecuTorch's IR check evaluates split_with_sizes' sizes and would pin a symbolic
        # token axis (the dynamic prefill) to its example size
        qkv = _project(layer.qkv, h)
        q, k, v = qkv[..., :H * D], qkv[..., H * D:(H + Hkv) * D], qkv[..., (H + Hkv) * D:]
        q = q.reshape(T, H, D).transpose(0, 1)
        k = k.reshape(T, Hkv, D).transpose(0, 1)
        v = v.reshape(T, Hkv, D).transpose(0, 1)
        q = q * st["q_cos"] + rotate_half(q) * st["q_sin"]      # scaled by 1/sqrt(D) (step_tensors)
        k = k * st["cos"] + rotate_half(k) * st["sin"]
        return q.reshape(Hkv, G * T, D), k, v

    def layer_attend(self, li: int, x, qg, k, v, past_k, past_v, parts, st, weigh=None):
        """Attention of layer li over the fixed-context ``parts`` and the dynamic part, then o_proj and the MLP: the
        residual stream after layer li.

        ``parts``: (keys, values, bias) triples; ``values=None`` marks a table of [key | value] rows (the pack's
        sink, window and clustered rows), scored with the query padded by zeros (no slice of the table) and read
        whole (the value half is taken once, from the small output). ``qg`` comes scaled by 1/sqrt(D) (layer_qkv), so
        the products are the scaled scores; ``bias`` (masks, summaries' log N) is added to each part's scores,
        broadcast to [Hkv, G*T, n]. One softmax runs over the concatenated SCORES of every part
        and the dynamic part (past cache masked at cache_len + this step's keys): keys and values are never
        concatenated (a 7.8k context would be copied per layer and step), only the scores are; a prompt's output
        is one product over the parts' values (below), a one-token call's per-part products."""
        cfg = self.config
        T = x.shape[0]
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        layer = self.layers[li]
        q_wide = torch.cat([qg, torch.zeros_like(qg)], dim=-1) if any(p[1] is None for p in parts) else None
        # bmm, not matmul: matmul's decomposition copies its operands (expand_copy of the context per layer)
        # a part may bring its query-key products already made (the summaries: the lookup's centroid scores)
        scores = [p[3] if len(p) > 3 else torch.bmm(qg if p[1] is not None else q_wide, p[0].transpose(1, 2))
                  for p in parts]
        sizes = [sc.shape[-1] for sc in scores]
        # Each part's bias ([Hkv, 1, n] or [1, 1, n]) is added to its own scores, broadcast over the query rows, and ONE
        # concatenation feeds the softmax: a large part (the exact tail's every clustered row) is copied once, not
        # twice (a concatenation of the fixed parts, then one with the dynamic part). The dynamic part: the past cache
        # (masked at cache_len) and this step's own keys, scored apart (the cache is never concatenated with the new
        # keys: that copied it per layer and step)
        past = torch.bmm(qg, past_k.transpose(1, 2)) + st["past_bias"]
        new = torch.bmm(qg, k.transpose(1, 2)) + st["new_bias"]
        probs = torch.softmax(torch.cat([sc + p[2] for sc, p in zip(scores, parts)] + [past, new], dim=-1), dim=-1)
        weights = None
        if weigh is not None:  # the last token's weights on the parts ``weigh``, relative to the fixed context's
            ends = list(itertools.accumulate(sizes))
            starts = [0] + ends[:-1]
            # one matrix-vector product per KV head: the last token's rows, each over its fixed-context mass,
            # summed. No [Hkv, G*T, n] temporaries (an exact prompt tail's n is every clustered row; the runtime's
            # memory plan held them layer by layer), no gather (the split plan's GPU delegates have none), no
            # expanded operand (a copy per layer in XNNPACK)
            # (the mass as a product with a 0/1 column instead of a sum over this slice cost an expand_copy or a
            # portable mm per layer in the .pte and did not lower ONNX Runtime's peak RSS measurably: RESULTS.md 3o)
            # The last token's G query rows are taken first (by index in-graph, a 0/1 product in the split plan's
            # stages; a one-token step has no other rows), so
            # the fixed-context mass is summed over G rows, not G*T: over a 32-token exact tail the [Hkv, G*T, n] sum
            # was a portable kernel costing 11-18% of the .pte prompt's time (RESULTS.md 3t)
            if isinstance(T, int) and T == 1:
                last = probs                                                                    # [Hkv, G, N]
            elif self.gather_last:
                last = probs.unflatten(1, (-1, T)).index_select(2, st["last_index"]).squeeze(2)
            else:
                last = torch.bmm(st["last_select"], probs)
            coef = self.one / last[..., :ends[-1]].sum(-1, keepdim=True)                          # [Hkv, G, 1]
            row = torch.bmm(coef.transpose(1, 2), last)[:, 0]                                   # [Hkv, N]
            weights = torch.cat([row[:, starts[i]:ends[i]] for i in weigh], dim=-1)            # [Hkv, n]
        parts = [p[:2] for p in parts] + [(past_k, past_v), (k, v)]
        sizes += [past_k.shape[1], k.shape[1]]
        if isinstance(T, int) and T == 1:
            # one token: each part's slice of its [Hkv, G, n] weights is small; the values stay where they are
            out, wide, start = None, None, 0
            for (keys, values), n in zip(parts, sizes):
                p = probs[..., start:start + n]
                start += n
                if values is None:
                    wide = torch.bmm(p, keys) if wide is None else wide + torch.bmm(p, keys)
                else:
                    out = torch.bmm(p, values) if out is None else out + torch.bmm(p, values)
            if wide is not None:
                out = out + wide[..., D:]
        else:
            # a prompt of T tokens: ONE product over every part's values, concatenated ([Hkv, n, D], a fraction of
            # the [Hkv, G*T, n] weights). Slicing the weights per part copied G*T rows of each part instead, and with
            # a dynamic token axis ExecuTorch runs those slices as portable single-thread kernels (same runs, real fp32
            # .pte at 7.8k, 128-token prompt: full attention 858 -> 742 and 816 -> 732 ms; RESULTS.md 3x). The exact
            # method too (its prompt reads every clustered row: the .onnx's slices took 123 of a 128-token exact
            # prompt's 1160 ms); a one-token call of it (the answer's opening, in-graph) then copies every value once
            # (.onnx: 92.8 vs 91.9 ms a step, RESULTS.md 3zc)
            values = torch.cat([keys[..., D:] if values is None else values for keys, values in parts], dim=1)
            out = torch.bmm(probs, values)
        # [Hkv, G*T, D] -> [T, H*D] (unflatten/flatten: a reshape of the token axis would guard on its size)
        out = out.unflatten(1, (H // Hkv, T)).flatten(0, 1).transpose(0, 1).flatten(1)
        x = x + _project(layer.o_proj, out)
        gate_up = _project(layer.gate_up, self.rms_norm(x, layer.post_attention_layernorm))
        half = gate_up.shape[-1] // 2
        gate, up = gate_up[..., :half], gate_up[..., half:]
        x = x + _project(layer.down_proj, F.silu(gate) * up)
        return x if weigh is None else (x, weights)

    def head(self, x, st):
        x_last = torch.bmm(st["last"], x[None])[0]                                # the last valid token
        return _project(self.lm_head, self.rms_norm(x_last, self.norm))[0]

    def cluster_scores(self, qg, centroids, counts, row_weights):
        """lookup.cluster_scores in float32: S_qk = exp(A_qk) / sum_l N_l exp(A_ql) = softmax_k(A_qk + log N_k) / N_k
        (empty clusters: log N = -MASKED, weight 0), averaged over the valid query rows. ``qg`` is scaled by 1/sqrt(D)
        (layer_qkv), so its products with the centroids are A. Returns ([Hkv, K], log N, those products [Hkv, Q, K],
        which the summaries' scores reuse)."""
        counts_f = counts.to(torch.float32)
        log_counts = self.log_counts(counts_f)
        inv_counts = self.one / counts_f.clamp(min=1)
        qk = torch.bmm(qg, centroids.transpose(1, 2))                              # [Hkv, Q, K], reused by summaries
        per_row = torch.softmax(qk + log_counts[:, None, :], dim=-1) * inv_counts[:, None, :]   # qg is scaled
        return torch.bmm(row_weights.expand(qg.shape[0], 1, -1), per_row)[:, 0], log_counts, qk

    @staticmethod
    def log_counts(counts):
        """log N per cluster (float32; -MASKED for an empty cluster): the summaries' logit offset. Float arithmetic
        only (a delegate runs it; a where/compare would be a CPU kernel per layer and step): log max(N, 1) plus
        (min(N, 1) - 1) MASKED."""
        counts = counts.to(torch.float32)
        return counts.clamp(min=1).log() + (counts.clamp(max=1) - 1) * MASKED

    def context_parts(self, sink, kept, window, centroids, value_centroids, slot_bias, summary_bias, summary_qk=None):
        """The fixed-context parts attention runs over (layer_attend): sinks and the window as [key | value] rows, the
        kept keys (``kept``: a (keys, values) pair; or one table of [key | value] rows), then every cluster's summary (key = centroid, value = mean value); ``slot_bias`` [Hkv, B]
        masks unused kept slots, ``summary_bias`` [Hkv, K] weights summaries (log N) or masks them; ``summary_qk``:
        the query-centroid products when the lookup already made them."""
        Hkv = sink.shape[0]
        kept_keys, kept_values = kept if isinstance(kept, tuple) else (kept, None)
        summaries = (centroids, value_centroids, summary_bias[:, None, :])
        return [(sink, None, torch.zeros(Hkv, 1, sink.shape[1])), (kept_keys, kept_values, slot_bias[:, None, :]),
                (window, None, torch.zeros(Hkv, 1, window.shape[1])),
                summaries if summary_qk is None else summaries + (summary_qk,)]

    def _exact_rows(self, mine):
        """Every fixed-context row of the squeezed layout as layer_attend's parts: sinks, the clustered keys and values
        (inputs of [Hkv, max_clustered, D]: plain products, as full attention's; a head's rows past its pack's
        clustered keys are padding, masked by float arithmetic as the kept slots are) and the window. The prompt's
        exact tail: the same attention as full attention's, in cluster order instead of position order."""
        Hkv = self.config.num_kv_heads
        n = mine["counts"].sum(-1, keepdim=True).to(torch.float32)                               # [Hkv, 1]
        bias = ((n - 1 - self.clustered_index_f) * MASKED).clamp(max=0)                           # [Hkv, Nc]
        sink, window = mine["sink_kv"], mine["window_kv"]
        return [(sink, None, torch.zeros(Hkv, 1, sink.shape[1])),
                (mine["clustered_keys"], mine["clustered_values"], bias[:, None, :]),
                (window, None, torch.zeros(Hkv, 1, window.shape[1]))]

    def _squeezed_rows(self, qg, mine, keep_keys, row_weights, held=None):
        """The in-graph lookup of one layer: the kept fixed-context rows plus the summaries of the other clusters, as
        layer_attend's parts (context_parts). The split plan runs the
        part after the scores on the CPU instead (lookup_numpy.kept_rows: the same rule). ``held`` (a list): the
        selection is appended to it as (rows [Hkv, B] into the flat clustered table, bias [Hkv, B + K] = slot mask
        | summary bias), what a question-level decode attends over (lookup_numpy.held_inputs)."""
        D = self.config.head_dim
        s = self.shapes
        counts, start = mine["counts"], mine["cluster_start"]
        Hkv = qg.shape[0]
        scores, log_counts, qk = self.cluster_scores(qg, mine["centroids"], counts, row_weights)
        # Ranked fill without searchsorted: mark where each ranked cluster's keys start in the output slots.
        B, Nc = s.max_keep, s.max_clustered
        # Only the best min(K, B) clusters can own a slot: every cluster with a positive score holds at least one key
        # and empty (padding) clusters score exactly 0, so ranking stops there with the same slots and kept clusters
        # as ranking all K. (Clusters whose score underflows to 0 tie with the empty ones either way: their order
        # was top-k's tie order before too.)
        R = min(s.max_clusters, B)
        rank = torch.topk(scores, R, dim=-1).indices                             # [Hkv, R] best first
        ranked_counts = counts.gather(1, rank)
        out_start = torch.cumsum(ranked_counts, -1) - ranked_counts              # [Hkv, R]
        n_keep = torch.clamp(torch.minimum(keep_keys, counts.sum(-1, keepdim=True)), max=B)   # [Hkv, 1] used slots
        # one mark per ranked cluster at its first slot; clusters starting past the last slot land in an extra
        # column that is dropped (no compare, no dtype copy)
        marks = torch.zeros(Hkv, B + 1, dtype=torch.int64).scatter_add(
            1, torch.clamp(out_start, max=B), self.ones_rank)[:, :B]
        which = torch.cumsum(marks, -1) - 1                                      # ranked cluster of each slot
        # The tables arrive flat, [Hkv * Nc, D] head by head, so every head's rows index them with one plain
        # Gather each, an embedding lookup with [Hkv, B] row ids (a reshape of a [Hkv, Nc, D] table, or of a flat
        # index_select's result, is a full copy in XNNPACK; torch.gather needs an index per element; advanced
        # indexing is a slow portable kernel). Row of slot j in ranked cluster r:
        # head offset + cluster start + (j - the cluster's first slot).
        first_row = start.gather(1, rank) - out_start + self.head_rows                         # [Hkv, R]
        slot = self.slot_index
        # unused slots (masked below) read some row of the table: clamped into it, no select
        rows = torch.clamp(first_row.gather(1, which) + slot, max=Hkv * Nc - 1)
        kept = (F.embedding(rows, mine["clustered_keys"]), F.embedding(rows, mine["clustered_values"]))  # [Hkv, B, D]
        # 0 for a used slot, <= -MASKED past n_keep (float arithmetic: the delegate runs it)
        slot_bias = ((n_keep.to(torch.float32) - 1 - self.slot_index_f) * MASKED).clamp(max=0)
        # Summaries (SqueezedContext._summaries): every cluster none of whose keys was kept, as key = centroid,
        # value = mean value, logit + log N. A ranked cluster is kept iff its first slot is below n_keep (an empty
        # one then precedes a kept one); the flags go back to cluster order with one scatter.
        kept_cluster = torch.zeros(Hkv, s.max_clusters).scatter(1, rank, (out_start < n_keep).to(torch.float32))
        summary_bias = log_counts - kept_cluster * MASKED
        if held is not None:
            held.append((rows, torch.cat([slot_bias, summary_bias], dim=-1)))
        parts = self.context_parts(mine["sink_kv"], kept, mine["window_kv"], mine["centroids"], mine["value_centroids"],
                                   slot_bias, summary_bias, qk)
        if self.follow:  # the followed rows the selection did not keep, each once (SqueezedContext._attend_following)
            wanted = mine["follow_rows"]                                                  # [Hkv, F], -1: none
            used = slot_bias > -1.0                                                       # slots below n_keep
            kept_already = ((wanted[:, :, None] == rows[:, None, :]) & used[:, None, :]).any(-1)
            repeated = ((wanted[:, :, None] == wanted[:, None, :]) & self.earlier).any(1)
            fresh = (wanted >= 0) & ~kept_already & ~repeated
            followed = torch.clamp(wanted, min=0)
            self._kept_rows, self._followed_rows = rows, followed
            parts.insert(2, (F.embedding(followed, mine["clustered_keys"]),
                             F.embedding(followed, mine["clustered_values"]),
                             ((fresh.to(torch.float32) - 1) * MASKED)[:, None, :]))     # after the kept rows
        return parts


# Subtracted from a masked logit: exp() of it underflows to exactly 0 as for -inf, but it is reached with float
# arithmetic a delegate runs (no where/compare) and stays finite in fp16 (0 x MASKED is 0, never 0 x inf = NaN).
MASKED = 3.0e4


def _schedule_here(pointer: torch.Tensor, dtype) -> torch.Tensor:
    """An exact zero computed from a layer's followed-key pointer (integers: no NaN can leak into the sum), added to
    the next layer's input: a runtime that orders nodes by a depth-first walk from the outputs (ONNX Runtime) then
    computes the pointer, and the weights it is read from, in its layer instead of after the last layer, which held
    every layer's [Hkv, G*T, n] probabilities to the end of the call (+470 MB peak RSS on the real 7.8k .onnx with
    the exact prompt tail; RESULTS.md 3p). Four small nodes per layer."""
    return (pointer.sum() * 0).to(dtype)


def _project(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m`` applied to ``x``, an nn.Linear as plain aten.linear (the host model's Linear may route one-token
    products to its native GEMV; export must not); a weight-quantization wrapper (export.quantize) runs its own
    forward."""
    return nn.Linear.forward(m, x) if isinstance(m, nn.Linear) else m(x)


def _fused_linear(*parts: nn.Module) -> nn.Linear:
    """One bias-free nn.Linear whose output is the concatenation of ``parts``' outputs (a copy of their weights)."""
    weight = torch.cat([p.weight.detach() for p in parts], dim=0)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


class FusedLayer(nn.Module):
    """A decoder layer's weights as the exported graph reads them: norms, o_proj and down_proj as they are (the
    host model's modules), q|k|v and gate|up each as one matrix."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = _fused_linear(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj, self.down_proj = attn.o_proj, mlp.down_proj
        self.gate_up = _fused_linear(mlp.gate_proj, mlp.up_proj)


STAGE_INPUTS = ("tokens", "hidden", "query", "key", "value", "past_keys", "past_values", "sink_kv", "window_kv",
                "kept_keys", "kept_values", "kept_bias", "clustered_keys", "clustered_values", "centroids",
                "value_centroids", "counts", "next_centroids", "next_counts")
STAGE_OUTPUTS = ("hidden", "query", "key", "value", "scores")


class DecoderStage(nn.Module):
    """Stage ``s`` of the split lookup plan: the graph between two CPU lookups.

    A delegate that cannot run top-k or a data-dependent gather (LiteRT GPU, Core ML on the Neural Engine) gets
    every step as L + 1 graphs with static shapes, and the lookup runs on the CPU between them
    (lookup_numpy.kept_rows):

    - stage 0: embedding, then layer 0's queries/keys/values and its cluster scores;
    - stage s (1..L-1): layer s-1's attention over the rows the CPU gathered (``kept_keys``, ``kept_values``,
      ``kept_bias``) plus the
      pack's sinks, window and cluster summaries and the dynamic cache, its MLP, then layer s's q/k/v and scores;
    - stage L: layer L-1's attention and MLP, the final norm and the logits.

    One cut per layer is the fewest the math allows for per-step selection: layer s's queries depend on layer
    s-1's attention output. Inputs have the same names in every stage (the loop maps the pack's per-layer
    tensors onto them); the dynamic cache is explicit I/O (``past_keys`` in, ``key``/``value`` out).

    ``exact=True``: a stage of ``prefill_exact`` (the prompt's exact tail): layer s-1 attends over EVERY fixed-context
    row (``clustered_keys`` / ``clustered_values`` as [Hkv, max_clustered, D] views of the pack's tables, padding
    masked from ``counts``; ExportableDecoder._exact_rows), so no lookup runs between the stages and they return no
    scores; the same graphs otherwise (no top-k or gather either).

    A decoder with followed keys (``decoder.follow`` F): every stage after a layer also returns ``follow_weights``
    [Hkv, max_keep] (exact stages: [Hkv, max_clustered]), its last token's softmax weights on the kept slots (every
    clustered row), summed over the KV head's query heads, relative to the fixed context's mass; the CPU ranks them
    into the next step's followed rows (lookup_numpy.follow_pointer) and writes those rows into free kept slots
    (kept_rows' ``follow_rows``): the in-graph plan's rule with no graph change but one output."""

    def __init__(self, decoder: ExportableDecoder, stage: int, exact: bool = False):
        super().__init__()
        if decoder.attention != "squeezed" or decoder.state != "io":
            raise SqueezeError("the split lookup plan is a squeezed decoder with explicit cache I/O")
        if not 0 <= stage <= decoder.config.num_layers:
            raise SqueezeError(f"stage {stage} is outside 0..{decoder.config.num_layers}")
        self.decoder, self.stage, self.exact = decoder, stage, exact

    @property
    def last(self) -> bool:
        return self.stage == self.decoder.config.num_layers

    def input_names(self):
        names = ["n_tokens", "cache_len", "context_len"]
        if self.stage == 0:
            names.append("tokens")
        elif self.exact:
            names += [n for n in STAGE_INPUTS[1:9]] + ["clustered_keys", "clustered_values", "counts"]
        else:
            names += [n for n in STAGE_INPUTS[1:] if not n.startswith(("next_", "clustered_"))]
        if not self.last and not self.exact:
            names += ["next_centroids", "next_counts"]
        return [n for n in ("n_tokens", "cache_len", "context_len") + STAGE_INPUTS if n in names]

    @property
    def follows(self) -> bool:
        """A stage after a layer of a decoder with followed keys: it also returns ``follow_weights``."""
        return bool(self.decoder.follow) and self.stage > 0

    def output_names(self):
        names = ["logits"] if self.last else [n for n in STAGE_OUTPUTS if not (self.exact and n == "scores")]
        return names + (["follow_weights"] if self.follows else [])

    def example_inputs(self, tokens: int) -> dict:
        """Zero-filled inputs for a step of ``tokens`` tokens, in the forward's argument order."""
        d = self.decoder
        cfg, s = d.config, d.shapes
        Hkv, D, G = cfg.num_kv_heads, cfg.head_dim, cfg.group_size
        one = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
        shape = {"hidden": (tokens, cfg.hidden_size), "query": (Hkv, G * tokens, D), "key": (Hkv, tokens, D),
                 "value": (Hkv, tokens, D), "past_keys": (Hkv, s.cache_capacity, D),
                 "past_values": (Hkv, s.cache_capacity, D), "sink_kv": (Hkv, s.sink_tokens, 2 * D),
                 "window_kv": (Hkv, s.window, 2 * D), "kept_keys": (Hkv, s.max_keep, D),
                 "kept_values": (Hkv, s.max_keep, D),
                 "kept_bias": (Hkv, s.max_keep + s.max_clusters), "centroids": (Hkv, s.max_clusters, D),
                 "clustered_keys": (Hkv, s.max_clustered, D), "clustered_values": (Hkv, s.max_clustered, D),
                 "value_centroids": (Hkv, s.max_clusters, D), "next_centroids": (Hkv, s.max_clusters, D)}
        out = {}
        for n in self.input_names():
            if n in ("n_tokens",):
                out[n] = one(tokens)
            elif n == "cache_len":
                out[n] = one(0)
            elif n == "context_len":
                out[n] = one(s.max_context)
            elif n == "tokens":
                out[n] = torch.zeros(tokens, dtype=torch.int64)
            elif n in ("counts", "next_counts"):
                out[n] = torch.ones(Hkv, s.max_clusters, dtype=torch.int64)
            else:
                out[n] = torch.zeros(shape[n])
        return out

    def forward(self, n_tokens, cache_len, context_len, tokens=None, hidden=None, query=None, key=None, value=None,
                past_keys=None, past_values=None, sink_kv=None, window_kv=None, kept_keys=None, kept_values=None,
                kept_bias=None, clustered_keys=None, clustered_values=None,
                centroids=None, value_centroids=None, counts=None, next_centroids=None, next_counts=None):
        d, s = self.decoder, self.stage
        T = tokens.shape[0] if s == 0 else hidden.shape[0]
        st = d.step_tensors(T, n_tokens, cache_len, context_len)
        weights = ()
        if s == 0:
            x = d.embed_tokens(tokens)
        else:
            if self.exact:
                parts = d._exact_rows({"counts": counts, "sink_kv": sink_kv, "window_kv": window_kv,
                                       "clustered_keys": clustered_keys, "clustered_values": clustered_values})
            else:
                B = kept_keys.shape[1]
                # kept_bias: [slot mask | summary mask] (0 or -inf) from the CPU; log N is added here, as in-graph
                parts = d.context_parts(sink_kv, (kept_keys, kept_values), window_kv, centroids, value_centroids,
                                        kept_bias[:, :B], kept_bias[:, B:] + d.log_counts(counts))
            # followed keys: the last token's weights on the clustered rows it attended (the kept slots, the followed
            # rows among them; or every clustered row), which the CPU ranks (lookup_numpy.follow_pointer)
            x = d.layer_attend(s - 1, hidden, query, key, value, past_keys, past_values, parts, st,
                               weigh=(1,) if self.follows else None)
            if self.follows:
                x, w = x
                weights = (w,)
        if self.last:
            return (d.head(x, st),) + weights if weights else d.head(x, st)
        qg, k, v = d.layer_qkv(s, x, st)
        if self.exact:
            return (x, qg, k, v) + weights
        scores, _, _ = d.cluster_scores(qg, next_centroids, next_counts, st["row_weights"])
        return (x, qg, k, v, scores) + weights


def pack_as_arrays(pack):
    """An in-memory ContextPack as the PackArrays an app reads from its file (same tensors, same layout)."""
    import json as _json

    from .pack_arrays import PackArrays

    arrays = {"context.token_ids": pack.token_ids.int().numpy(), "kv.keys": pack.keys.numpy(),
              "kv.values": pack.values.numpy(),
              **{k: v.numpy() for k, v in pack.stored_lookup_tensors().items()}}
    metadata = {"build_settings": _json.dumps(pack.settings.to_dict(), sort_keys=True),
                "model_config": pack.config.to_json(), **pack.hashes}
    return PackArrays(pack.path or "<in memory>", metadata, arrays)


def context_inputs(pack, shapes: DecoderShapes, attention: str) -> dict:
    """A ContextPack's tensors as the decoder's context inputs (torch tensors; the numpy layout of pack_arrays)."""
    from .pack_arrays import decoder_context_inputs

    arrays = decoder_context_inputs(pack_as_arrays(pack), shapes.to_dict(), attention)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


__all__ = ["ATTENTIONS", "SELECTIONS", "STAGE_INPUTS", "STATES", "DecoderShapes", "DecoderStage", "ExportableDecoder", "context_inputs",
           "pack_as_arrays"]
