"""Attention over a fixed context, plugged into the decoder as its "context partial".

DenseContext attends to every context key (full attention). SqueezedContext runs the centroid lookup per
layer, gathers only the kept keys (plus the always-kept observation window) and attends to those. Both
return (out, lse) so the decoder merges them with the user/generated-token partial by log-sum-exp.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from . import native
from .errors import SqueezeError
from .lookup import LookupTables, SelectionSpec, grouped_queries, select_keys
from .lookup_numpy import NumpyTables
from .lookup_numpy import select_keys as select_keys_numpy
from .model import attention_with_lse, merge_partials
from .settings import exact_span, prefill_chunks


class DenseContext:
    """Full attention over the fixed context's KV cache ([L, Hkv, N, D])."""

    def __init__(self, keys, values):
        self.keys, self.values = keys.float(), values.float()
        self.num_kv_heads, self.length, self.head_dim = keys.shape[1], keys.shape[2], keys.shape[3]
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def attend(self, layer: int, queries):
        Hq, T, D = queries.shape
        out, lse = attention_with_lse(queries.reshape(self.num_kv_heads, -1, D), self.keys[layer],
                                      self.values[layer], self.scale)
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)


@dataclass
class LookupStats:
    """What the lookups did, summed over calls (layers x steps)."""

    calls: int = 0
    kept_keys: float = 0.0           # clustered keys attended per selecting head
    centroids_scored: float = 0.0
    per_layer_kept: dict = field(default_factory=dict)

    def mean_kept(self) -> float:
        return self.kept_keys / max(self.calls, 1)

    def mean_scored(self) -> float:
        return self.centroids_scored / max(self.calls, 1)


NATIVE_MAX_ROWS = 32  # query rows per selecting head up to which the fused kernel beats gather + flash attention

LOOKUP_BACKENDS = ("auto", "torch", "numpy", "native")


@dataclass
class ContextRows:
    """The fixed context's K/V laid out for Squeezed Attention, built once per pack and shared by every
    SqueezedContext over it: rows hold [key | value] (2*D floats, read together); the clustered rows are kept
    CLUSTER BY CLUSTER (slot i = context position order_by_cluster[i]), so a kept cluster is one contiguous
    run in memory; the attention sinks and the observation window stay in position order. Kept in the pack's
    precision (fp16): the fused kernel widens rows to fp32 as it reads them (exact), the PyTorch path widens
    the rows it gathered, so the numbers are those of an fp32 copy at half the bytes streamed per step."""

    sink_kv: torch.Tensor           # [L, Hkv, first, 2D]
    clustered_kv: torch.Tensor      # [L, Hkv, Nc, 2D] cluster order
    window_kv: torch.Tensor         # [L, Hkv, W, 2D]
    slot_of_position: torch.Tensor  # [L, Hkv, Nc] context position - first -> slot in clustered_kv

    @classmethod
    def build(cls, keys, values, tables: LookupTables) -> "ContextRows":
        D = keys.shape[-1]
        first, end = tables.first_position, tables.first_position + tables.num_clustered
        rel = tables.order_by_cluster - first
        rows = torch.cat([keys, values.to(keys.dtype)], dim=-1)  # [L, Hkv, N, 2D]
        return cls(sink_kv=rows[:, :, :first].contiguous(),
                   clustered_kv=rows[:, :, first:end].gather(2, rel.unsqueeze(-1).expand(-1, -1, -1, 2 * D)),
                   window_kv=rows[:, :, end:].contiguous(),
                   slot_of_position=torch.empty_like(rel).scatter_(2, rel, torch.arange(rel.shape[2]).expand_as(rel)))


class SqueezedContext:
    """Sparse attention over the fixed context: centroid lookup, then exact attention on the kept keys.

    backend: "torch" (in-graph lookup, what export captures), "numpy" (CPU fallback handing back indices),
    "native" (fused C++ kernels for flat budget lookups: selection + attention in one call for decode-sized
    steps, selection for prefill chunks; threshold and hierarchical lookups use "torch"), or "auto"
    (= "native" where it can be built, else "torch").

    rows: the pack's ContextRows (built here if not given; pass a cached one to avoid re-laying out K/V).
    """

    def __init__(self, keys, values, tables: LookupTables, spec: SelectionSpec, backend: str = "auto",
                 rows: ContextRows | None = None):
        if backend not in LOOKUP_BACKENDS:
            raise SqueezeError(f"unknown lookup backend '{backend}'; use one of {', '.join(LOOKUP_BACKENDS)}")
        if backend == "native":
            native.require()
        self.tables, self.spec = tables, spec
        self.fused = backend in ("native", "auto") and spec.mode == "budget" and not spec.hierarchical \
            and tables.centroid_codes is not None and native.available()
        # What actually runs decode steps ("native" requested for a threshold/hierarchical lookup runs torch).
        self.backend = "native" if self.fused else ("numpy" if backend == "numpy" else "torch")
        self.numpy_tables = NumpyTables.from_torch(tables) if backend == "numpy" else None
        L, Hkv, N, D = keys.shape
        self.num_kv_heads, self.length, self.head_dim = Hkv, N, D
        self.scale = 1.0 / math.sqrt(D)
        self.num_clustered = tables.num_clustered
        self.first_position = tables.first_position
        rows = rows if rows is not None else ContextRows.build(keys, values, tables)
        self.keys, self.values = keys, values   # the prompt's exact tail attends them all (position order)
        self.sink_kv, self.clustered_kv, self.window_kv = rows.sink_kv, rows.clustered_kv, rows.window_kv
        self.slot_of_position = rows.slot_of_position
        # Summaries of the clusters a selection does not keep, per selecting head (built once per context)
        per_head = (lambda x: x.index_select(1, torch.arange(Hkv).repeat_interleave(tables.group_size))) \
            if spec.per_query_head else (lambda x: x)
        counts = per_head(tables.counts)
        self.summary_log_counts = torch.where(counts > 0, counts.clamp(min=1).float().log(),
                                              torch.tensor(float("-inf")))               # [L, Hs, K]
        self.summary_keys = per_head(tables.centroids.float()).contiguous()               # [L, Hs, K, D]
        self.summary_values = per_head(tables.value_centroids).contiguous()
        self.kernel_summary_values = tables.value_centroids.float().contiguous()          # [L, Hkv, K, D]
        self.cluster_of = per_head(tables.labels).contiguous()                             # [L, Hs, Nc]
        G = tables.group_size
        heads = Hkv * G if spec.per_query_head else Hkv
        self.kv_of_head = torch.arange(heads) // (G if spec.per_query_head else 1)
        self._exact_keys = {}   # layer -> the exact tail's float keys until _point has read them
        # layer -> (keys, values) widened to float32, held from the prompt's exact rows through the answer's exact
        # opening (spec.exact_decode): widening the fp16 tables cost each exact call more than its attention (at 8k,
        # 30 layers: ~230 ms against ~60 ms on one thread), so an exact step ran slower than full attention's, which
        # widens once (DenseContext). Dropped per layer when its opening ends (the bytes full attention holds: twice
        # the pack's fp16 keys and values, for those steps only); later exact re-runs (exact_below) widen per call.
        self._wide = {}
        self.row_offset = (self.kv_of_head * self.num_clustered).unsqueeze(-1)  # into clustered[layer] flattened
        self.stats = LookupStats()
        # decode_selection="question": per layer, the prompt's last selection (idx, valid) as made, then the rows and
        # summary bias it selects, reused by every later call (one context object per question: Generator.generate)
        self._last_selection = {}
        self._held = {}
        self._prompted = set()  # layers whose first call (the prompt's prefill) has run
        self._decode_steps = {}  # layer -> decode calls so far (spec.exact_decode: the first ones attend exactly)
        self._redo = set()       # layers whose next call re-runs the last decode step exactly (redo_exact)
        # follow_keys: per layer, the context positions [Hs, F] the next decode step attends besides its selection
        # (the keys right after the ones the previous row weighed most; -1: none), and the selection's budget
        # without them
        self._follow = {}
        self._step_spec = dataclasses.replace(spec, budget_keys=spec.budget_keys - spec.follow_keys)

    def select(self, layer: int, queries):
        """(indices [Hs, B], valid [Hs, B] or None): context positions of the clustered keys to attend."""
        return self._select(layer, queries)[:2]

    def _select(self, layer: int, queries, with_logits: bool = False, spec: SelectionSpec | None = None):
        """select(), plus the native kernels' centroid logits of the query rows when asked (None otherwise), which
        the native summaries then reuse instead of scoring the rows again. ``spec``: another budget (follow_keys)."""
        spec = self.spec if spec is None else spec
        if self.fused:
            t = self.tables
            q = grouped_queries(queries, self.num_kv_heads, spec.per_query_head)
            picked = native.context_select(q, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer],
                                           t.order_by_cluster[layer], t.cluster_start[layer], t.first_position,
                                           spec.budget_keys, return_logits=with_logits)
            idx, logits = picked if with_logits else (picked, None)
            self._count(idx.shape[1], t.num_clusters)
            return idx, None, logits
        if self.backend == "numpy":
            idx, valid, scored = select_keys_numpy(self.numpy_tables, layer, queries.numpy(), spec)
            idx = torch.from_numpy(idx)
            valid = None if valid is None else torch.from_numpy(valid)
        else:
            sel = select_keys(self.tables, layer, queries, spec)
            idx, valid, scored = sel.indices, sel.valid, sel.centroids_scored
        self._count(idx.shape[1] if valid is None else float(valid.sum(-1).double().mean()), scored)
        return idx, valid, None

    def _count(self, kept: float, scored: float):
        self.stats.calls += 1
        self.stats.kept_keys += kept
        self.stats.centroids_scored += scored

    def _summary_bias(self, layer: int, kept_positions, valid):
        """[Hs, K] logit offsets of the summaries: log N for a cluster none of whose keys was kept, else -inf."""
        kept = self.cluster_of[layer].gather(1, kept_positions - self.first_position)    # [Hs, B] clusters
        bias = self.summary_log_counts[layer].clone()                                    # [Hs, K]
        masked = torch.full(kept.shape, float("-inf"))
        if valid is not None:  # padding entries write back what is there
            masked = torch.where(valid, masked, bias.gather(1, kept))
        return bias.scatter_(1, kept, masked)

    def _summaries(self, layer: int, q, kept_positions, valid, bias=None, logits=None):
        """The clusters the selection did not keep, each as one summary entry (key = its centroid, value = its mean
        value, logit + log N): exp(q.c) N v_mean stands in for the sum over its keys, so the attention keeps (an
        estimate of) the weight and the direction of what was dropped instead of renormalising it onto the kept
        keys. q: grouped [Hs, R, D]; returns (out [Hs, R, D], lse [Hs, R]) to merge by log-sum-exp. A cluster any
        of whose keys was kept (the ranked fill's last one may be partial) has no summary. ``bias``: a held
        _summary_bias (then the positions are not read). ``logits``: the native selection's centroid logits of
        these rows (_select), reused by the native summaries."""
        bias = self._summary_bias(layer, kept_positions, valid) if bias is None else bias
        if self.fused:  # the native kernels: the same softmax, logits from the int8 codes, no [rows, K] tensors
            t = self.tables
            return native.context_summaries(q.float(), t.centroid_codes_t[layer], t.centroid_scales[layer], bias,
                                            self.kernel_summary_values[layer], logits)
        logits = torch.baddbmm(bias[:, None, :], q.float(), self.summary_keys[layer].transpose(1, 2), alpha=self.scale)
        lse = torch.logsumexp(logits, -1)
        weights = torch.exp(logits - lse[..., None]).nan_to_num_(0.0)                     # all kept: lse -inf, out 0
        return torch.bmm(weights, self.summary_values[layer]), lse

    def _attend_fused(self, layer: int, queries, spec: SelectionSpec | None = None):
        spec = self.spec if spec is None else spec
        Hq, T, D = queries.shape
        t = self.tables
        q = grouped_queries(queries, self.num_kv_heads, spec.per_query_head)
        out, lse, positions = native.context_decode(
            q, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer], t.order_by_cluster[layer],
            t.cluster_start[layer], self.sink_kv[layer], self.clustered_kv[layer], self.window_kv[layer],
            spec.budget_keys, self.scale, return_positions=True,
            summary_values=self.kernel_summary_values[layer])                             # summaries in the kernel
        self._count(spec.budget_keys, t.num_clusters)
        self._last_selection[layer] = (positions, None)
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)

    def _attend_per_token_fused(self, layer: int, queries):
        """--prefill-rows 1 in ONE native call per layer: every prompt token is a selecting head of its own (the
        kernel maps head h to KV head h // (heads per KV head)), so each token's rows select and attend exactly as
        a decode step of that token would (the same kernel, the same keys and summaries as the per-chunk loop)."""
        Hq, T, D = queries.shape
        t = self.tables
        q = grouped_queries(queries, self.num_kv_heads, self.spec.per_query_head)      # [Hs, R*T, D], row r*T + t
        Hs, R = q.shape[0], q.shape[1] // T
        q_tok = q.reshape(Hs, R, T, D).transpose(1, 2).reshape(Hs * T, R, D)         # head h*T + t: token t's rows
        out, lse, positions = native.context_decode(
            q_tok, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer], t.order_by_cluster[layer],
            t.cluster_start[layer], self.sink_kv[layer], self.clustered_kv[layer], self.window_kv[layer],
            self.spec.budget_keys, self.scale, return_positions=True,
            summary_values=self.kernel_summary_values[layer])
        self._count(self.spec.budget_keys, t.num_clusters)
        self._last_selection[layer] = (positions.reshape(Hs, T, -1)[:, -1], None)    # the last token's selection
        out = out.reshape(Hs, T, R, D).transpose(1, 2).reshape(Hq, T, D)
        return out, lse.reshape(Hs, T, R).transpose(1, 2).reshape(Hq, T)

    def attend(self, layer: int, queries):
        """Context partial (out [Hq, T, D], lse [Hq, T]) of the query rows [Hq, T, D]. The first call per layer is
        the prompt's prefill (one context object per question: Generator.generate): its first ``spec.exact_head`` and
        last ``spec.exact_tail`` rows attend every context key (no lookup), the rows between them select, once or per chunk of
        ``spec.prefill_rows`` tokens (cut from the end), the last ``spec.prefill_tail`` of them per token. Later calls
        (decode steps) select, the first ``spec.exact_decode`` of them attending every key. With
        ``spec.decode_selection == "question"`` the prompt's last selection (its last
        token's, where that token attends exactly) is held: every later call attends over the same rows and
        summaries."""
        question = self.spec.decode_selection == "question"
        if question and layer in self._held:
            return self._attend_held(layer, queries)
        T = queries.shape[1]
        head, start = 0, T
        if layer not in self._prompted:
            self._prompted.add(layer)
            head, start = exact_span(T, self.spec.exact_head, self.spec.exact_tail)
        else:
            done = self._decode_steps.get(layer, 0)
            redo = layer in self._redo   # the same step again (redo_exact): not counted twice, attending exactly
            self._redo.discard(layer)
            if not redo:
                self._decode_steps[layer] = done + T
            if redo or (done + T <= self.spec.exact_decode and not question):
                start = 0   # the answer's opening (spec.exact_decode): every row attends every context key
            elif self.spec.follow_keys and T == 1:
                return self._attend_following(layer, queries)
        parts = []
        if head and start < T:
            # the exact head (spec.exact_head, where a question written first lies) and tail in ONE pass over the
            # context keys (each row's context partial is its own; one read and widening of the keys per layer)
            both = self._attend_exact(layer, torch.cat([queries[:, :head], queries[:, start:]], 1))
            parts.append((both[0][:, :head], both[1][:, :head]))
            if start > head:
                parts.append(self._attend_selecting(layer, queries[:, head:start]))
            parts.append((both[0][:, head:], both[1][:, head:]))
        else:
            if head:
                parts.append(self._attend_exact(layer, queries[:, :head]))
            if start > head:
                parts.append(self._attend_selecting(layer, queries[:, head:start]))
            if start < T:
                parts.append(self._attend_exact(layer, queries[:, start:]))
        last_exact = start < T or head == T   # the call's last row attended every key
        if last_exact and question:
            self._last_selection[layer] = self.select(layer, queries[:, -1:])
        if question:
            self._hold(layer, *self._last_selection[layer])
        out, lse = parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts], 1),
                                                     torch.cat([p[1] for p in parts], 1))
        if layer in self._wide and self._decode_steps.get(layer, 0) >= self.spec.exact_decode:
            del self._wide[layer]   # the answer's exact opening is over for this layer
        if self.spec.follow_keys and not question:
            # the prompt's last row points the first decode step: over every clustered key where it attends exactly.
            # Only a call followed by a selecting step points: within the answer's exact opening the next call attends
            # every key again, so the pointer (another pass over every clustered key) would be overwritten unread
            if last_exact and self._decode_steps.get(layer, 0) < self.spec.exact_decode:
                self._exact_keys.pop(layer, None)
                self._follow.pop(layer, None)
            elif last_exact:
                self._point(layer, queries[:, -1:], lse[:, -1:], None, None)
            else:
                self._point(layer, queries[:, -1:], lse[:, -1:], *self._last_selection[layer])
        return out, lse

    def redo_exact(self):
        """Run the decode step just made once more, every layer attending every context key (as the answer's opening
        does), without counting it as another step: the generation loop's check of an unsure selecting step
        (AttentionChoice.exact_below), after it rewound the cache by that step. The exact step's last row then points
        the next step (follow_keys) in place of the selecting one's."""
        self._redo = set(range(self.keys.shape[0]))

    def _context_rows(self, table, layer: int, positions):
        """float32 rows [Hs, n, D] of the pack's keys or values (``table`` [L, Hkv, N, D]) at context ``positions``
        [Hs, n] of each selecting head's KV head: one gather from the flat layer, no copy of it."""
        Hkv, N, D = table.shape[1:]
        flat = (self.kv_of_head.unsqueeze(-1) * N + positions).reshape(-1)
        return table[layer].reshape(Hkv * N, D).index_select(0, flat).reshape(*positions.shape, D).float()

    def _point(self, layer: int, row, lse, positions, valid):
        """Where the next decode step follows (SelectionSpec.follow_keys): of the clustered keys this query row
        attended (``positions`` [Hs, N] with ``valid``; None: every clustered key), given the row [Hq, 1, D] and its
        context log-sum-exp ``lse`` [Hq, 1], the F with the largest softmax weight (summed over a selecting head's
        query heads), each moved one position on; -1 where that leaves the clustered keys."""
        q = grouped_queries(row, self.num_kv_heads, self.spec.per_query_head).float()       # [Hs, G, D]
        Hs, G = q.shape[0], q.shape[1]
        if positions is None:   # every clustered key, in position order (the exact tail's row)
            first = self.first_position
            # the exact tail's float copy of the layer's keys (one widening of the fp16 table per layer, not two)
            k = self._exact_keys.pop(layer, None)
            k = (k if k is not None else self.keys[layer].float())[:, first:first + self.num_clustered]
            k = k if self.num_kv_heads == len(self.kv_of_head) else k.index_select(0, self.kv_of_head)
            positions = torch.arange(first, first + self.num_clustered).expand(Hs, -1)
        else:
            k = self._context_rows(self.keys, layer, positions)
        self._point_scored(layer, torch.bmm(q, k.transpose(1, 2)).mul_(self.scale), lse.reshape(Hs, G), positions,
                           valid)

    def _point_scored(self, layer: int, scores, lse, positions, valid):
        """_point from the rows' scaled scores [Hs, R, N] over ``positions`` and their context lse [Hs, R]."""
        F = self.spec.follow_keys
        weights = torch.exp(scores - lse.unsqueeze(-1)).sum(1)                               # [Hs, N]
        if valid is not None:
            weights = weights.masked_fill(~valid, -1.0)
        order = torch.topk(weights, F, dim=-1).indices
        nxt = positions.gather(1, order) + 1
        inside = (nxt < self.first_position + self.num_clustered)
        if valid is not None:
            inside &= valid.gather(1, order)
        self._follow[layer] = torch.where(inside, nxt, torch.full_like(nxt, -1))

    def _attend_following(self, layer: int, queries):
        """A decode step with follow_keys F: the selection keeps F keys fewer, and the step also attends the F
        positions the previous row pointed to (_point) that the selection did not keep; the cluster summaries are
        the selection's. Then this row points the next step."""
        Hq, T, D = queries.shape
        spec = self._step_spec
        follow = self._follow.get(layer)
        query_rows = T if spec.per_query_head else T * (Hq // self.num_kv_heads)
        if self.fused and query_rows <= NATIVE_MAX_ROWS:   # one kernel call: selection, followed rows, pointers
            t = self.tables
            q = grouped_queries(queries, self.num_kv_heads, spec.per_query_head)
            if follow is None:
                follow = torch.full((q.shape[0], spec.follow_keys), -1, dtype=torch.int64)
            out, lse, idx, self._follow[layer], fresh = native.context_decode_follow(
                q, t.centroid_codes_t[layer], t.centroid_scales[layer], t.counts[layer], t.order_by_cluster[layer],
                t.cluster_start[layer], self.sink_kv[layer], self.clustered_kv[layer], self.window_kv[layer],
                spec.budget_keys, self.scale, self.kernel_summary_values[layer], follow, self.slot_of_position[layer])
            self._count(spec.budget_keys, t.num_clusters)
            self.stats.kept_keys += float(fresh.double().mean())
            self._last_selection[layer] = (idx, None)
            return out.reshape(Hq, T, D), lse.reshape(Hq, T)
        idx, valid, logits = self._select(layer, queries, with_logits=True, spec=spec)
        self._last_selection[layer] = (idx, valid)
        keys, values, mask = self._selected_rows(layer, idx, valid)
        q = grouped_queries(queries, self.num_kv_heads, spec.per_query_head)
        out, lse = attention_with_lse(q, keys, values, self.scale, mask)
        out, lse = merge_partials(out, lse, *self._summaries(layer, q, idx, valid, logits=logits))
        Hs = idx.shape[0]
        if follow is None:
            follow = torch.full((Hs, spec.follow_keys), -1, dtype=idx.dtype)
        # a followed position counts once: not if the selection kept it, nor twice in the list
        all_valid = torch.ones_like(idx, dtype=torch.bool) if valid is None else valid
        fresh = (follow >= 0) & ~((follow.unsqueeze(-1) == idx.unsqueeze(1)) & all_valid.unsqueeze(1)).any(-1)
        fresh &= ~torch.triu(follow.unsqueeze(-1) == follow.unsqueeze(1), diagonal=1).any(1)
        self.stats.kept_keys += float(fresh.sum(-1).double().mean())     # the step's _count had its selection
        positions = torch.cat([idx, follow.clamp(min=0)], 1)                                  # [Hs, B - F + F]
        attended = torch.cat([all_valid, fresh], 1)
        q = grouped_queries(queries, self.num_kv_heads, spec.per_query_head).float()        # [Hs, R, D]
        scores = torch.bmm(q, self._context_rows(self.keys, layer, positions).transpose(1, 2)).mul_(self.scale)
        B = idx.shape[1]
        logits = scores[..., B:].masked_fill(~fresh.unsqueeze(1), float("-inf"))
        flse = torch.logsumexp(logits, -1)
        fout = torch.bmm(torch.exp(logits - flse.unsqueeze(-1)).nan_to_num_(0.0),
                         self._context_rows(self.values, layer, positions[:, B:]))
        R = q.shape[1]
        out, lse = merge_partials(out.reshape(Hs, R, D), lse.reshape(Hs, R), fout, flse)
        self._point_scored(layer, scores, lse, positions, attended)
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)

    def _attend_exact(self, layer: int, queries):
        """Every context key, in position order (DenseContext's attention): the prompt's exact tail."""
        Hq, T, D = queries.shape
        wide = self._wide.get(layer)
        if wide is None:
            wide = (self.keys[layer].float(), self.values[layer].float())
            if self._decode_steps.get(layer, 0) < self.spec.exact_decode:   # more exact calls of the opening to come
                self._wide[layer] = wide
        keys, values = wide
        if self.spec.follow_keys and self.spec.decode_selection != "question":   # _point scores the last row on them
            self._exact_keys[layer] = keys
        out, lse = attention_with_lse(queries.reshape(self.num_kv_heads, -1, D), keys, values, self.scale)
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)

    def _attend_selecting(self, layer: int, queries):
        T = queries.shape[1]
        chunks = prefill_chunks(T, self.spec.prefill_rows, self.spec.prefill_tail)
        if len(chunks) == 1:
            return self._attend_chunk(layer, queries)
        runs = []  # the chunks, with runs of 1-token chunks merged: the native kernels do such a run in one call
        for a, b in chunks:
            if runs and b - a == 1 and runs[-1][2] and self.fused:
                runs[-1][1] = b
            else:
                runs.append([a, b, b - a == 1])
        parts = [self._attend_per_token_fused(layer, queries[:, a:b]) if single and b - a > 1 else
                 self._attend_chunk(layer, queries[:, a:b]) for a, b, single in runs]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def _selected_rows(self, layer: int, idx, valid):
        """(keys [Hs, R, D], values [Hs, R, D] float32, mask [Hs, 1, R] or None) of sinks + selected keys + window."""
        Hs, B = idx.shape
        D = self.head_dim
        slots = self.slot_of_position[layer].index_select(0, self.kv_of_head).gather(1, idx - self.first_position)
        flat = (slots + self.row_offset).reshape(-1)
        heads = self.kv_of_head
        rows = torch.cat([self.sink_kv[layer].index_select(0, heads),
                          self.clustered_kv[layer].reshape(-1, 2 * D).index_select(0, flat).reshape(Hs, B, 2 * D),
                          self.window_kv[layer].index_select(0, heads)], dim=1).float()
        mask = None
        if valid is not None:
            n_sink, n_window = self.sink_kv.shape[2], self.window_kv.shape[2]
            keep = torch.cat([torch.ones(Hs, n_sink, dtype=torch.bool), valid,
                              torch.ones(Hs, n_window, dtype=torch.bool)], dim=1)
            mask = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf")).unsqueeze(1)
        return rows[..., :D], rows[..., D:], mask

    def _hold(self, layer: int, idx, valid):
        keys, values, mask = self._selected_rows(layer, idx, valid)
        self._held[layer] = (keys.contiguous(), values.contiguous(), mask, self._summary_bias(layer, idx, valid))

    def _attend_held(self, layer: int, queries):
        Hq, T, D = queries.shape
        keys, values, mask, bias = self._held[layer]
        q = grouped_queries(queries, self.num_kv_heads, self.spec.per_query_head)
        out, lse = attention_with_lse(q, keys, values, self.scale, mask)
        out, lse = merge_partials(out, lse, *self._summaries(layer, q, None, None, bias))
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)

    def _attend_chunk(self, layer: int, queries):
        Hq, T, D = queries.shape
        query_rows = T if self.spec.per_query_head else T * (Hq // self.num_kv_heads)
        if self.fused and query_rows <= NATIVE_MAX_ROWS:
            return self._attend_fused(layer, queries)
        idx, valid, logits = self._select(layer, queries, with_logits=True)
        self._last_selection[layer] = (idx, valid)
        # Sinks, selected keys (ascending positions), window: the dense order, so keeping everything is
        # bit-identical to full attention.
        keys, values, mask = self._selected_rows(layer, idx, valid)
        q = grouped_queries(queries, self.num_kv_heads, self.spec.per_query_head)
        out, lse = attention_with_lse(q, keys, values, self.scale, mask)
        out, lse = merge_partials(out, lse, *self._summaries(layer, q, idx, valid, logits=logits))
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)
