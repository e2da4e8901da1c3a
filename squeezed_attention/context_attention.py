"""Attention over a fixed context, plugged into the decoder as its "context partial".

DenseContext attends to every context key (full attention). SqueezedContext runs the centroid lookup per
layer, gathers only the kept keys (plus the always-kept observation window) and attends to those. Both
return (out, lse) so the decoder merges them with the user/generated-token partial by log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .lookup import LookupTables, SelectionSpec, select_keys
from .lookup_numpy import NumpyTables
from .lookup_numpy import select_keys as select_keys_numpy
from .model import attention_with_lse


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


class SqueezedContext(DenseContext):
    """Sparse attention over the fixed context: centroid lookup, then exact attention on the kept keys."""

    def __init__(self, keys, values, tables: LookupTables, spec: SelectionSpec, backend: str = "torch"):
        super().__init__(keys, values)
        self.tables, self.spec, self.backend = tables, spec, backend
        self.numpy_tables = NumpyTables.from_torch(tables) if backend == "numpy" else None
        self.num_clustered = tables.num_clustered
        G = tables.group_size
        heads = self.num_kv_heads * G if spec.per_query_head else self.num_kv_heads
        kv_of_head = torch.arange(heads) // (G if spec.per_query_head else 1)
        self.row_offset = (kv_of_head * self.length).unsqueeze(-1)  # into keys[layer] flattened over heads
        # Always attended: the attention-sink tokens before the clustered range and the observation window.
        first, end = tables.first_position, tables.first_position + self.num_clustered
        # Kept in position order (sinks, selected, window) so keeping everything is bit-identical to dense.
        self.sink_positions = torch.arange(first).expand(heads, -1)
        self.window_positions = torch.arange(end, self.length).expand(heads, -1)
        self.stats = LookupStats()

    def select(self, layer: int, queries):
        """(indices [Hs, B], valid [Hs, B] or None) of the clustered keys this layer attends to."""
        if self.backend == "numpy":
            idx, valid, scored = select_keys_numpy(self.numpy_tables, layer, queries.numpy(), self.spec)
            idx = torch.from_numpy(idx)
            valid = None if valid is None else torch.from_numpy(valid)
        else:
            sel = select_keys(self.tables, layer, queries, self.spec)
            idx, valid, scored = sel.indices, sel.valid, sel.centroids_scored
        kept = idx.shape[1] if valid is None else float(valid.sum(-1).double().mean())
        self.stats.calls += 1
        self.stats.kept_keys += kept
        self.stats.centroids_scored += scored
        return idx, valid

    def attend(self, layer: int, queries):
        Hq, T, D = queries.shape
        idx, valid = self.select(layer, queries)
        positions = torch.cat([self.sink_positions, idx, self.window_positions], dim=1)
        flat = (positions + self.row_offset).reshape(-1)
        keys = self.keys[layer].reshape(-1, D).index_select(0, flat).reshape(positions.shape[0], -1, D)
        values = self.values[layer].reshape(-1, D).index_select(0, flat).reshape(positions.shape[0], -1, D)
        mask = None
        if valid is not None:
            keep = torch.cat([torch.ones_like(self.sink_positions, dtype=torch.bool), valid,
                              torch.ones_like(self.window_positions, dtype=torch.bool)], dim=1)
            mask = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf")).unsqueeze(1)
        q = queries if self.spec.per_query_head else queries.reshape(self.num_kv_heads, -1, D)
        out, lse = attention_with_lse(q, keys, values, self.scale, mask)
        return out.reshape(Hq, T, D), lse.reshape(Hq, T)
