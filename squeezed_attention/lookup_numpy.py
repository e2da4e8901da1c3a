"""CPU fallback of the centroid lookup in numpy: runs outside the model graph and hands back indices.

Same algorithm and float64 scoring as lookup.py (see there for the formulas), so a runtime without the
lookup in its graph (e.g. an exported decoder that takes indices as input) selects the same keys.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import SqueezeError

if TYPE_CHECKING:   # the torch side's types: this module runs without PyTorch (the split plan's CPU lookup)
    from .lookup import LookupTables, SelectionSpec


@dataclass
class NumpyTables:
    centroids: np.ndarray
    counts: np.ndarray
    order_by_cluster: np.ndarray
    cluster_start: np.ndarray
    group_size: int
    first_position: int = 0
    l1_centroids: np.ndarray | None = None
    l1_counts: np.ndarray | None = None
    children: np.ndarray | None = None

    @classmethod
    def from_torch(cls, t: LookupTables) -> "NumpyTables":
        conv = lambda x: None if x is None else x.numpy()  # noqa: E731
        return cls(conv(t.centroids), conv(t.counts), conv(t.order_by_cluster), conv(t.cluster_start),
                   t.group_size, t.first_position, conv(t.l1_centroids), conv(t.l1_counts), conv(t.children))


def _expand(a, per_query_head, g):
    return np.repeat(a, g, axis=0) if per_query_head else a


def _scores(q, centroids, counts):
    """lookup.cluster_scores in numpy: one exp per (query, cluster), peak over non-empty clusters."""
    logits = q @ np.swapaxes(centroids, -1, -2)
    counts = counts.astype(logits.dtype)
    weights = logits + np.where(counts == 0, -np.inf, 0.0)[:, None, :]
    peak = weights.max(-1, keepdims=True)
    weights = np.exp(weights - peak)
    total = weights @ counts[:, :, None]
    log_denominator = peak + np.log(total)
    scores = (weights * (1.0 / total)).sum(1) / weights.shape[1]
    return scores, log_denominator


def _stable_descending(scores):
    return np.argsort(-scores, axis=-1, kind="stable")


def score_layer(t: NumpyTables, layer: int, queries: np.ndarray, spec: SelectionSpec):
    Hq, T, D = queries.shape
    num_kv = t.centroids.shape[1]
    q = queries.astype(np.float64)
    if not spec.per_query_head:
        q = q.reshape(num_kv, (Hq // num_kv) * T, D)
    q = q / math.sqrt(D)
    g = t.group_size
    if not spec.hierarchical:
        centroids = _expand(t.centroids[layer], spec.per_query_head, g)
        scores, _ = _scores(q, centroids, _expand(t.counts[layer], spec.per_query_head, g))
        return scores, centroids.shape[1]
    l1_scores, log_den = _scores(q, _expand(t.l1_centroids[layer], spec.per_query_head, g),
                                 _expand(t.l1_counts[layer], spec.per_query_head, g))
    children = _expand(t.children[layer], spec.per_query_head, g)
    centroids = _expand(t.centroids[layer], spec.per_query_head, g)
    K = centroids.shape[1]
    kept_parents = _stable_descending(l1_scores)[:, :spec.level1_keep]
    scores = np.full((q.shape[0], K), -1.0)
    scored_children = 0
    for h in range(q.shape[0]):
        cand = children[h, kept_parents[h]].reshape(-1)
        cand = cand[cand < K]  # only real children are scored (no padding work on the CPU path)
        scores[h, cand] = np.exp(q[h] @ centroids[h, cand].T - log_den[h]).mean(0)
        scored_children += cand.size
    return scores, t.l1_centroids.shape[2] + scored_children / q.shape[0]


def ranked_fill(scores, counts, order, start, length):
    rank = _stable_descending(scores)
    out = np.empty((scores.shape[0], length), dtype=np.int64)
    slots = np.arange(length)
    for h in range(scores.shape[0]):
        ranked_counts = counts[h, rank[h]]
        cumulative = np.cumsum(ranked_counts)
        which = np.searchsorted(cumulative, slots, side="right")
        cluster = rank[h, which]
        within = slots - (cumulative[which] - ranked_counts[which])
        out[h] = order[h, start[h, cluster] + within]
    return out


def check_selection_call(counts, order_by_cluster, layer, spec: SelectionSpec) -> None:
    """One line, not an IndexError from inside the lookup, for a layer the tables do not have or a budget above the
    clustered keys (both lookups, torch and numpy, share it)."""
    layers, clustered = int(counts.shape[0]), int(order_by_cluster.shape[-1])
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < layers:
        raise SqueezeError(f"layer must be a whole number in [0, {layers - 1}]; got {layer!r}")
    if spec.mode == "budget" and spec.budget_keys > clustered:
        raise SqueezeError(f"budget_keys {spec.budget_keys} is more than the {clustered} clustered keys of this pack")


def select_keys(t: NumpyTables, layer: int, queries: np.ndarray, spec: SelectionSpec):
    """Returns (indices [Hs, B] int64, valid [Hs, B] bool or None, centroids scored)."""
    check_selection_call(t.counts, t.order_by_cluster, layer, spec)
    scores, scored = score_layer(t, layer, queries, spec)
    g = t.group_size
    counts = _expand(t.counts[layer], spec.per_query_head, g)
    order = _expand(t.order_by_cluster[layer], spec.per_query_head, g)
    start = _expand(t.cluster_start[layer], spec.per_query_head, g)
    if spec.mode == "budget":
        return np.sort(ranked_fill(scores, counts, order, start, spec.budget_keys), axis=-1), None, scored
    kept = np.where(scores >= spec.threshold, counts, 0).sum(-1)
    length = int(kept.max())
    indices = ranked_fill(scores, counts, order, start, length)
    valid = np.arange(length)[None, :] < kept[:, None]
    sort_key = indices + (t.first_position + order.shape[-1]) * (~valid)
    indices = np.take_along_axis(indices, np.argsort(sort_key, axis=-1, kind="stable"), -1)
    return indices, valid, scored


def kept_rows(scores, counts, cluster_start, clustered_keys, clustered_values, keep_keys: int, max_keep: int,
              follow_rows=None):
    """The split plan's CPU lookup for one layer of an exported decoder: what its in-graph plan computes after
    the cluster scores (ExportableDecoder._squeezed_rows), in numpy, for every KV head at once.

    scores [Hkv, K] (the stage graph's output), counts / cluster_start [Hkv, K] (the pack's, padded with empty
    clusters), clustered_keys / clustered_values [Hkv * Nc, D] (rows cluster by cluster, head by head: the pack's
    context inputs clustered_keys_l / clustered_values_l, pack_arrays.decoder_context_inputs; [Hkv, Nc, D] views
    of them are taken too).
    Clusters are ranked best first (stable on ties) and filled key by key into ``max_keep`` slots until
    min(keep_keys, keys) are taken. ``follow_rows`` [Hkv, F] (a decoder with followed keys: flat rows the previous
    call pointed to, -1 none; follow_pointer): each row the selection did not keep, once, takes the next unused slot
    (keep_keys must leave F slots: the loop passes keep_keys - F). Returns ``kept_keys``, ``kept_values`` [Hkv,
    max_keep, D] float32 (unused slots: row 0, masked), ``kept_bias`` [Hkv, max_keep + K] float32: 0 / -inf per
    slot (used / unused), then 0 / -inf per cluster (summarised: none of its keys kept by the selection, / not);
    the stage graph adds log N to the second part. With ``follow_rows`` a fourth value: the slots' flat rows [Hkv,
    max_keep] (-1 unused), what follow_pointer maps the stage's follow_weights through."""
    Hkv = scores.shape[0]
    if clustered_keys.shape != clustered_values.shape or (clustered_keys.ndim == 2 and clustered_keys.shape[0] % Hkv):
        raise SqueezeError(f"clustered_keys {tuple(clustered_keys.shape)} / clustered_values "
                           f"{tuple(clustered_values.shape)} must both be [Hkv * Nc, D] with rows for the scores' "
                           f"{Hkv} KV heads")
    nc = clustered_keys.shape[1] if clustered_keys.ndim == 3 else clustered_keys.shape[0] // Hkv
    rows, summary = kept_slots(scores, counts, cluster_start, keep_keys, max_keep, nc)
    if follow_rows is not None:
        rows = with_followed(rows, follow_rows)
    # one row copy per kept key out of the [Hkv * Nc, D] tables (np.take on axis 0; take_along_axis over the row
    # axis builds an index per element and was 10x slower); unused slots read row 0 and are masked
    D = clustered_keys.shape[-1]
    at = np.maximum(rows, 0).ravel()
    kept = [np.take(t.reshape(-1, D), at, axis=0).astype(np.float32, copy=False).reshape(Hkv, max_keep, D)
            for t in (clustered_keys, clustered_values)]
    bias = np.concatenate([np.where(rows >= 0, 0.0, -np.inf), summary], axis=-1).astype(np.float32)
    return (kept[0], kept[1], bias) + ((rows,) if follow_rows is not None else ())


def kept_slots(scores, counts, cluster_start, keep_keys: int, max_keep: int, rows_per_head: int):
    """kept_rows' selection without the gather: (the slots' flat rows of the clustered tables [Hkv, max_keep] int64,
    head h's rows offset by h * ``rows_per_head``, -1 for an unused slot; the summary bias [Hkv, K] float32, 0 / -inf
    per cluster: summarised / kept)."""
    counts = np.asarray(counts, dtype=np.int64)
    Hkv, K = scores.shape
    heads = np.arange(Hkv)[:, None]
    rank = np.argsort(-np.asarray(scores), axis=-1, kind="stable")               # best first, stable on ties
    ranked_counts = counts[heads, rank]
    out_start = np.cumsum(ranked_counts, -1) - ranked_counts                     # [Hkv, K], non-decreasing
    slots = np.arange(max_keep)
    # the ranked cluster filling each slot = clusters starting at or before it, minus one: one searchsorted over
    # all heads, each head's values lifted above the previous head's
    lift = heads * (int(out_start[:, -1].max()) + max_keep + 1)
    which = np.searchsorted((out_start + lift).ravel(), (slots + lift).ravel(), side="right").reshape(Hkv, max_keep)
    which -= 1 + heads * K
    slot_ok = slots < np.minimum(keep_keys, counts.sum(-1))[:, None]
    rows = np.asarray(cluster_start, dtype=np.int64)[heads, rank[heads, which]] + slots - out_start[heads, which]
    last_used = np.where(slot_ok, which, -1).max(-1, keepdims=True)               # [Hkv, 1]
    position = np.empty_like(rank)
    position[heads, rank] = np.arange(K)
    summary = np.where(position > last_used, 0.0, -np.inf).astype(np.float32)
    return np.where(slot_ok, rows + heads * rows_per_head, -1), summary


def with_followed(slot_rows, follow_rows):
    """The kept slots ``slot_rows`` [Hkv, B] (-1: unused; the used ones first) with the followed rows ``follow_rows``
    [Hkv, F] (-1: none) the selection did not keep, each once and in order, written into the first unused slots (as
    ExportableDecoder._squeezed_rows attends them after the kept rows). The selection must leave F unused slots."""
    rows = np.array(slot_rows, dtype=np.int64)
    follow = np.asarray(follow_rows, dtype=np.int64)
    for h in range(len(rows)):
        used = int((rows[h] >= 0).sum())
        taken = set(rows[h, :used].tolist())
        for r in follow[h].tolist():
            if r >= 0 and r not in taken:
                if used >= rows.shape[1]:
                    raise SqueezeError(f"no slot left for a followed row: {rows.shape[1]} slots, the selection "
                                       f"used {int((slot_rows[h] >= 0).sum())}; pass keep_keys - follow_keys")
                rows[h, used] = r
                taken.add(r)
                used += 1
    return rows


def follow_pointer(weights, slot_rows, next_rows, follow: int):
    """Where the next decode step follows (ExportableDecoder._pointer, SqueezedContext._point): of the clustered
    rows a stage's last token attended, ``slot_rows`` [Hkv, n] (flat rows, -1 unused) with ``weights`` [Hkv, n]
    (the stage's follow_weights: softmax weights summed over the KV head's query heads), the rows after the
    ``follow`` largest (``next_rows``, pack_arrays.next_rows) ranked best first, stable on ties; -1 where the weight
    is 0 (a masked slot) or no row follows. Returns [Hkv, follow] int64."""
    weights = np.asarray(weights, dtype=np.float32)
    rows = np.asarray(slot_rows, dtype=np.int64)
    order = np.argsort(-weights, axis=-1, kind="stable")[:, :follow]
    top = np.take_along_axis(weights, order, -1)
    picked = np.take_along_axis(rows, order, -1)
    ok = (top > 0) & (picked >= 0)
    return np.where(ok, np.asarray(next_rows, dtype=np.int64)[np.maximum(picked, 0)], -1)
