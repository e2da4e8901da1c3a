"""Centroid lookup: which fixed-context keys each head attends to, in-graph PyTorch version.

Cluster scores follow the paper, computed stably in log space (the official code's plain exp() overflows):
    A_ij = q_i . c_j / sqrt(d)
    log S_ij = A_ij - logsumexp_l(A_il + log N_l)        (N_l = keys in cluster l; empty: log 0 = -inf)
    S_j = mean_i exp(log S_ij)                           (mean over the current queries: one selection
                                                          for a prefill chunk, per token in decode)
Selection turns cluster scores into key indices with STATIC shapes: clusters are ranked by score (ties
broken by cluster index) and keys are taken cluster by cluster in that order (keys of one cluster in
position order) until ``length`` keys are taken. ``budget`` mode takes a fixed number of keys;
``threshold`` mode takes every key whose cluster score passes the calibrated threshold, padded to the
largest head and masked. The same algorithm in numpy lives in lookup_numpy.py (tests prove they agree).

Scoring runs in float64 (tiny: a few hundred centroids per head) so the torch and numpy versions rank
clusters identically instead of flipping near-ties on float32 rounding. (The native kernels in csrc/ score
decode steps in float64 too, and prefill blocks in float32 for speed: see context_decode.cpp.)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .centroid_codes import exact_codes
from .errors import SqueezeError
from .lookup_numpy import check_selection_call


@dataclass
class LookupTables:
    """Per-pack lookup metadata in the form the online lookup wants (built once at pack load)."""

    centroids: torch.Tensor        # [L, Hkv, K, D] float64 (raw-key means)
    counts: torch.Tensor           # [L, Hkv, K] int64
    order_by_cluster: torch.Tensor  # [L, Hkv, Nc] int64: context positions grouped by cluster, ascending
    cluster_start: torch.Tensor    # [L, Hkv, K] int64: where each cluster starts in order_by_cluster
    group_size: int                # query heads per KV head
    first_position: int = 0        # context position of the first clustered key (after the sink tokens)
    # Hierarchical level (None when the pack has none). Level-2 clusters are numbered parent by parent.
    l1_centroids: torch.Tensor | None = None   # [L, Hkv, K1, D] float64
    l1_counts: torch.Tensor | None = None      # [L, Hkv, K1] int64
    children: torch.Tensor | None = None       # [L, Hkv, K1, Cmax] int64, padded with K (a dummy cluster)
    centroid_codes: torch.Tensor | None = None   # [L, Hkv, K, D] int8 and
    centroid_scales: torch.Tensor | None = None  # [L, Hkv, K] float32: codes x scales == centroids exactly
                                                 # (set when the centroids are int8-quantized, as packs store them)
    value_centroids: torch.Tensor | None = None   # [L, Hkv, K, D] float32: mean value per cluster (int8-coded),
                                                  # the summaries of the clusters a selection does not keep
    labels: torch.Tensor | None = None            # [L, Hkv, Nc] int64: cluster of every clustered position
    centroid_codes_t: torch.Tensor | None = None  # [L, Hkv, Kp/16, D, 16]: the codes in blocks of 16 centroids,
                                                  # each block dimension-major, K zero-padded (the fused kernel's
                                                  # layout: a block is 1 KB read front to back)

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[2])

    @property
    def num_clustered(self) -> int:
        return int(self.order_by_cluster.shape[2])

    @classmethod
    def build(cls, centroids, counts, labels, group_size, l1_centroids=None, l1_counts=None, child_offsets=None,
              first_position: int = 0, value_centroids=None):
        counts = counts.to(torch.int64)
        labels = labels.to(torch.int64)
        order = torch.sort(labels, dim=-1, stable=True).indices + first_position
        start = torch.cumsum(counts, -1) - counts
        children = None
        if l1_centroids is not None:
            children = children_table(child_offsets.to(torch.int64), int(centroids.shape[2]))
        return cls(
            centroids=centroids.double(), **_codes_fields(centroids),
            counts=counts,
            order_by_cluster=order, cluster_start=start, group_size=group_size, first_position=first_position,
            value_centroids=value_centroids, labels=labels,
            l1_centroids=None if l1_centroids is None else l1_centroids.double(),
            l1_counts=None if l1_counts is None else l1_counts.to(torch.int64),
            children=children)


def _codes_fields(centroids) -> dict:
    codes = exact_codes(centroids)
    if codes is None:
        return {}
    K = codes[0].shape[-2]
    padded = torch.nn.functional.pad(codes[0], (0, 0, 0, -K % 16))  # [..., Kp, D]
    blocked = padded.unflatten(-2, (-1, 16)).transpose(-1, -2)       # [..., Kp/16, D, 16]
    return {"centroid_codes": codes[0], "centroid_scales": codes[1], "centroid_codes_t": blocked.contiguous()}


def children_table(child_offsets, num_clusters: int):
    """[..., K1+1] offsets of contiguous children -> [..., K1, Cmax] child ids padded with num_clusters."""
    sizes = child_offsets[..., 1:] - child_offsets[..., :-1]
    cmax = max(int(sizes.max()), 1)
    slot = torch.arange(cmax)
    ids = child_offsets[..., :-1, None] + slot
    return torch.where(slot < sizes[..., None], ids, torch.full_like(ids, num_clusters))


@dataclass
class SelectionSpec:
    """How many fixed-context keys to keep and how to choose them."""

    mode: str = "budget"            # "budget" (fixed count, static shapes) or "threshold" (paper)
    budget_keys: int = 0            # budget mode: keys kept per head
    threshold: float = 0.0          # threshold mode: calibrated cluster-score threshold (not log)
    per_query_head: bool = False    # GQA: one selection per query head (True) or per KV group (False)
    hierarchical: bool = False      # score level-1 centroids first, then only the kept ones' children
    level1_keep: int = 0            # hierarchical: level-1 clusters kept (static)
    prefill_rows: int = 0           # prompt tokens per selection in a prefill (0: one selection for the whole
                                    # prompt); chunks are cut from the END, so the last tokens select together
    prefill_tail: int = 0           # the prompt's last tokens that select one token at a time (as decode steps);
                                    # prefill_rows chunks the tokens before them (settings.prefill_chunks)
    exact_tail: int = 0             # the prompt's last tokens that attend every context key (no lookup); the
                                    # tokens before them select as above (settings.exact_start)
    exact_head: int = 0             # the prompt's first tokens that attend every context key too; the selecting
                                    # rows lie between head and tail (settings.exact_span)
    decode_selection: str = "step"  # "step": every decode step selects its keys; "question": the prompt's
                                    # (last) selection per layer is held and every decode step attends over it
    follow_keys: int = 0            # of budget_keys, the keys a decode step takes from the previous row instead of
                                    # its selection: the next positions after the F clustered keys that row weighed
                                    # most (a copy follows its source; RESULTS.md 3m)
    exact_decode: int = 0           # the answer's first decode steps that attend every context key, as the
                                    # prompt's exact tail does (its opening, where a copied value starts; RESULTS 3r)

    def __post_init__(self):
        # a bad field used to keep every key (an unknown mode) or fail as an IndexError deep in the lookup
        if self.mode not in ("budget", "threshold"):
            raise SqueezeError(f"SelectionSpec mode must be 'budget' or 'threshold'; got {self.mode!r}")
        for name in ("budget_keys", "level1_keep", "prefill_rows", "prefill_tail", "exact_tail", "exact_head",
                     "follow_keys", "exact_decode"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise SqueezeError(f"SelectionSpec {name} must be a whole number >= 0; got {value!r}")
            setattr(self, name, int(value))
        if not isinstance(self.threshold, numbers.Real) or not math.isfinite(self.threshold):
            raise SqueezeError(f"SelectionSpec threshold must be a finite number; got {self.threshold!r}")
        if self.decode_selection not in ("step", "question"):
            raise SqueezeError(f"SelectionSpec decode_selection must be 'step' or 'question'; got "
                               f"{self.decode_selection!r}")


DECODE_SELECTIONS = ("step", "question")


@dataclass
class Selection:
    indices: torch.Tensor      # [Hs, B] int64 key positions (ascending; valid ones first)
    valid: torch.Tensor | None  # [Hs, B] bool, None when every entry is valid
    centroids_scored: float    # centroids scored per selecting head (mean over heads): the lookup's work


def _expand_heads(t, per_query_head: bool, group_size: int):
    """Per-KV-head tables -> per selecting head (query heads share their KV head's tables)."""
    return t.repeat_interleave(group_size, dim=0) if per_query_head else t


def grouped_queries(queries, num_kv_heads: int, per_query_head: bool):
    """[Hq, T, D] -> [Hs, Q, D]: per query head, or the G heads of a KV group pooled as G*T queries."""
    if per_query_head:
        return queries
    Hq, T, D = queries.shape
    return queries.reshape(num_kv_heads, (Hq // num_kv_heads) * T, D)


def cluster_scores(queries, centroids, counts):
    """Mean over queries of the normalized cluster score S: queries [Hs,Q,D] (already scaled), centroids
    [Hs,K,D], counts [Hs,K] -> ([Hs,K] scores in [0,1], [Hs,Q,1] log-denominators).

    S_ik = exp(A_ik) / sum_l N_l exp(A_il), computed with ONE exp per (query, cluster): E = exp(A - peak) with
    the peak over non-empty clusters (so E <= 1, no overflow), Z = sum_l N_l E_il, S = E / Z. Empty clusters
    get S = 0. (A log-space logsumexp followed by exp(A - lse) costs two exps; scoring is most of a
    prefill lookup.)
    """
    logits = torch.matmul(queries, centroids.transpose(-1, -2))  # [Hs, Q, K]
    counts = counts.to(logits.dtype)
    empty = torch.zeros_like(counts).masked_fill_(counts == 0, float("-inf")).unsqueeze(1)  # [Hs, 1, K]
    weights = logits.add_(empty)  # in place: few passes over the [Hs, Q, K] block (this is the prefill cost)
    peak = weights.amax(-1, keepdim=True)
    weights = weights.sub_(peak).exp_()
    total = torch.matmul(weights, counts.unsqueeze(-1))  # [Hs, Q, 1] = sum_k N_k E_qk
    log_denominator = peak + torch.log(total)
    scores = weights.mul_(total.reciprocal_()).sum(1) / weights.shape[1]
    return scores, log_denominator


LEVEL1_KEEP_FACTOR = 4.0  # hierarchical lookup keeps this multiple of the key fraction at level 1


def level1_keep_for(num_level1: int, fraction: float) -> int:
    """Level-1 clusters a hierarchical lookup keeps when it wants ``fraction`` of the clustered keys. Level-1
    centroids average ~5 children, which dilutes the score of a small distinctive cluster (a pass key): keeping 2x
    the wanted fraction at level 1 lost pass keys at keep 0.1, 4x did not."""
    return max(1, min(num_level1, math.ceil(num_level1 * min(1.0, LEVEL1_KEEP_FACTOR * fraction + 1.0 / num_level1))))


def parent_ranks(tables: LookupTables, layer: int, queries, spec: SelectionSpec):
    """[Hs, K] the rank (0 = best) of each cluster's level-1 parent by its level-1 score for ``queries``: a
    hierarchical lookup keeping ``m`` parents scores exactly the clusters whose parent ranks below ``m``."""
    num_kv = tables.centroids.shape[1]
    q = grouped_queries(queries.double(), num_kv, spec.per_query_head) / math.sqrt(queries.shape[-1])
    G = tables.group_size
    l1_scores, _ = cluster_scores(q, _expand_heads(tables.l1_centroids[layer], spec.per_query_head, G),
                                  _expand_heads(tables.l1_counts[layer], spec.per_query_head, G))
    order = torch.sort(l1_scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    children = _expand_heads(tables.children[layer], spec.per_query_head, G)   # [Hs, K1, Cmax], padding K
    K = tables.num_clusters
    out = torch.full((children.shape[0], K + 1), children.shape[1], dtype=torch.int64)
    out.scatter_(1, children.flatten(1), rank.unsqueeze(-1).expand_as(children).flatten(1))
    return out[:, :K]


def score_layer(tables: LookupTables, layer: int, queries, spec: SelectionSpec):
    """Cluster scores [Hs, K] for one layer (flat or hierarchical) and the number of centroids scored."""
    num_kv = tables.centroids.shape[1]
    q = grouped_queries(queries.double(), num_kv, spec.per_query_head) / math.sqrt(queries.shape[-1])
    G = tables.group_size
    if not spec.hierarchical:
        centroids = _expand_heads(tables.centroids[layer], spec.per_query_head, G)
        counts = _expand_heads(tables.counts[layer], spec.per_query_head, G)
        scores, _ = cluster_scores(q, centroids, counts)
        return scores, int(centroids.shape[1])
    l1_centroids = _expand_heads(tables.l1_centroids[layer], spec.per_query_head, G)
    l1_counts = _expand_heads(tables.l1_counts[layer], spec.per_query_head, G)
    children = _expand_heads(tables.children[layer], spec.per_query_head, G)  # [Hs, K1, Cmax]
    l1_scores, log_denominator = cluster_scores(q, l1_centroids, l1_counts)
    kept_parents = torch.sort(l1_scores, dim=-1, descending=True, stable=True).indices[:, :spec.level1_keep]
    candidates = children.gather(1, kept_parents.unsqueeze(-1).expand(-1, -1, children.shape[-1]))
    candidates = candidates.flatten(1)  # [Hs, M1*Cmax], padding = K
    K = tables.num_clusters
    centroids = _expand_heads(tables.centroids[layer], spec.per_query_head, G)
    padded = torch.cat([centroids, centroids.new_zeros(centroids.shape[0], 1, centroids.shape[2])], 1)
    cand_centroids = padded.gather(1, candidates.unsqueeze(-1).expand(-1, -1, padded.shape[-1]))
    # Level-2 scores reuse the level-1 denominator: it sums the same keys through their parents' centroids.
    cand_scores = torch.exp(torch.matmul(q, cand_centroids.transpose(-1, -2)) - log_denominator).mean(1)
    scores = torch.full((q.shape[0], K + 1), -1.0, dtype=cand_scores.dtype)  # unscored clusters rank last
    scores.scatter_(1, candidates, cand_scores)
    scored = int(l1_centroids.shape[1]) + float((candidates < K).sum(-1).double().mean())
    return scores[:, :K], scored


def ranked_fill(scores, counts, order_by_cluster, cluster_start, length: int):
    """Take ``length`` keys per head, cluster by cluster in descending score order. Returns [Hs, length]."""
    rank = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked_counts = counts.gather(1, rank)
    cumulative = torch.cumsum(ranked_counts, -1)
    slots = torch.arange(length).expand(scores.shape[0], length).contiguous()
    which = torch.searchsorted(cumulative, slots, right=True)  # ranked cluster holding each slot
    cluster = rank.gather(1, which)
    within = slots - (cumulative.gather(1, which) - ranked_counts.gather(1, which))
    return order_by_cluster.gather(1, cluster_start.gather(1, cluster) + within)


def select_keys(tables: LookupTables, layer: int, queries, spec: SelectionSpec) -> Selection:
    """Pick the fixed-context keys to attend for one layer. queries: post-RoPE [Hq, T, D]."""
    check_selection_call(tables.counts, tables.order_by_cluster, layer, spec)
    scores, scored = score_layer(tables, layer, queries, spec)
    G = tables.group_size
    counts = _expand_heads(tables.counts[layer], spec.per_query_head, G)
    order = _expand_heads(tables.order_by_cluster[layer], spec.per_query_head, G)
    start = _expand_heads(tables.cluster_start[layer], spec.per_query_head, G)
    if spec.mode == "budget":
        indices = ranked_fill(scores, counts, order, start, spec.budget_keys)
        return Selection(torch.sort(indices, dim=-1).values, None, scored)
    kept = torch.where(scores >= spec.threshold, counts, torch.zeros_like(counts)).sum(-1)  # keys per head
    length = int(kept.max())  # data-dependent width: threshold mode is for eager runs; phones use budget
    indices = ranked_fill(scores, counts, order, start, length)
    valid = torch.arange(length) < kept.unsqueeze(-1)
    # Ascending positions, valid keys first (so `valid` stays a prefix mask).
    end = tables.first_position + tables.num_clustered
    sort_key = indices + end * (~valid).to(indices.dtype)
    indices = indices.gather(1, torch.sort(sort_key, dim=-1).indices)
    return Selection(indices, valid, scored)
