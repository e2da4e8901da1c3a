"""Context packs: the offline Squeezed Attention stage for one fixed context, saved as safetensors.

A pack holds the fixed context's KV cache (fp16), its clustering (raw-mean centroids stored as int8 with
one fp16 scale per centroid, uint16 labels, int32 counts, optional level-1 clusters), calibrated
thresholds, the build settings, and sha256 hashes of the model weights, the tokenizer and the context
text. A content hash over all tensors and metadata detects any modification; a pack built with another
model or tokenizer is refused.
"""

from __future__ import annotations

import dataclasses

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from squeeze_mobile.atomic import check_destination

from .atomic import atomic_file
from .centroid_codes import dequantize_centroids, quantize_centroids, roundtrip_centroids
from .config import LlamaConfig
from .errors import SqueezeError, reason_of
from .file_kinds import kind_of
from .kmeans import cluster_sums, kmeans
from .pack_arrays import content_sha256
from .lookup import LookupTables, SelectionSpec, level1_keep_for, parent_ranks, score_layer

from .settings import (KEEP_FRACTION_GRID, MIN_CLUSTERED_TOKENS, PACK_FORMAT, THRESHOLD_KEEP_RANGE,  # noqa: F401
                       BuildSettings, _is_number)


@dataclass
class ContextPack:
    config: LlamaConfig
    settings: BuildSettings
    token_ids: torch.Tensor          # [N] int64
    keys: torch.Tensor               # [L, Hkv, N, D] fp16 (post-RoPE)
    values: torch.Tensor             # [L, Hkv, N, D] fp16
    centroids: torch.Tensor          # [L, Hkv, K, D] float32: int8 codes x fp16 scales, as stored
    counts: torch.Tensor             # [L, Hkv, K] int32
    labels: torch.Tensor             # [L, Hkv, Nc] uint16
    keep_fractions: torch.Tensor     # [F] float64
    thresholds_group: torch.Tensor   # [F] float64 cluster-score thresholds, one selection per KV group
    thresholds_head: torch.Tensor    # [F] float64 ... one selection per query head
    l1_centroids: torch.Tensor | None = None   # [L, Hkv, K1, D] float32, int8-quantized like `centroids`
    l1_counts: torch.Tensor | None = None      # [L, Hkv, K1] int32
    child_offsets: torch.Tensor | None = None  # [L, Hkv, K1+1] int32 (level-2 ids are grouped by parent)
    l1_thresholds_group: torch.Tensor | None = None  # [F] float64: the thresholds of a hierarchical lookup, whose
    l1_thresholds_head: torch.Tensor | None = None   # scores are normalised over level-1 centroids (not flat ones)
    hashes: dict = field(default_factory=dict)  # weights_sha256, tokenizer_sha256, context_sha256
    build_seconds: float = 0.0
    path: str | None = None

    # -------------------------------------------------------------------------------------------- sizes
    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_clustered(self) -> int:
        return int(self.labels.shape[-1])

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[2])

    def lookup_tables(self) -> LookupTables:
        from .pack_arrays import value_centroids

        vbar = value_centroids(self.values.numpy(), self.labels.numpy(), self.counts.numpy(), self.settings.sink_tokens)
        return LookupTables.build(self.centroids, self.counts, self.labels, self.config.group_size,
                                  self.l1_centroids, self.l1_counts, self.child_offsets,
                                  first_position=self.settings.sink_tokens, value_centroids=torch.from_numpy(vbar))

    def size_report(self) -> dict:
        """Bytes per context token, split into the KV cache and the lookup metadata."""
        L, H = self.config.num_layers, self.config.num_kv_heads
        nbytes = lambda t: 0 if t is None else t.numel() * t.element_size()  # noqa: E731
        kv = nbytes(self.keys) + nbytes(self.values)
        meta = sum(nbytes(t) for t in self.stored_lookup_tensors().values())
        n = self.num_tokens
        return {
            "tokens": n, "clustered_tokens": self.num_clustered, "clusters": self.num_clusters,
            "kv_bytes": kv, "metadata_bytes": meta,
            "kv_bytes_per_token": kv / n, "metadata_bytes_per_token": meta / n,
            "metadata_bytes_per_layer_head_token": meta / (L * H * self.num_clustered),
        }

    def stored_lookup_tensors(self) -> dict:
        """The lookup metadata exactly as saved (int8 centroid codes + fp16 scales, labels, counts, ...)."""
        codes, scales = quantize_centroids(self.centroids)
        out = {"lookup.centroid_codes": codes, "lookup.centroid_scales": scales, "lookup.counts": self.counts,
               "lookup.labels": self.labels}
        if self.l1_centroids is not None:
            codes1, scales1 = quantize_centroids(self.l1_centroids)
            out.update({"lookup.level1_centroid_codes": codes1, "lookup.level1_centroid_scales": scales1,
                        "lookup.level1_counts": self.l1_counts, "lookup.level1_child_offsets": self.child_offsets})
        return out

    def check_model(self, checkpoint) -> None:
        """Refuse a pack built for other model weights or another tokenizer."""
        where = self.path or "this context pack"
        self.check_weights(checkpoint.weights_sha256)
        if self.hashes.get("tokenizer_sha256") != checkpoint.tokenizer.fingerprint():
            raise SqueezeError(f"{where} was built with a different tokenizer; rebuild it with this --model")

    def check_weights(self, weights_sha256: str) -> None:
        """Refuse a pack built for other model weights (``weights_sha256``: the model's, e.g. gguf_weights_sha256)."""
        if self.hashes.get("weights_sha256") != weights_sha256:
            raise SqueezeError(f"{self.path or 'this context pack'} was built for other model weights (sha256 "
                               f"{self.hashes.get('weights_sha256', '?')[:12]}, this model {weights_sha256[:12]}); "
                               "rebuild it with this --model")

    def check_context(self, context_text: str) -> None:
        """Refuse a pack built from another context text."""
        check_context_hash(self.hashes.get("context_sha256"), context_text, self.path)

    def threshold_for(self, keep_fraction: float, per_query_head: bool, hierarchical: bool = False) -> float:
        """Calibrated cluster-score threshold for a keep fraction (log-linear between grid points), for the flat
        lookup or (``hierarchical``) the two-level one, whose scores are on another scale."""
        grid = self.keep_fractions.numpy()
        if not grid[0] <= keep_fraction <= grid[-1]:
            raise SqueezeError(f"--threshold-keep {keep_fraction:g} is outside the calibrated range "
                               f"[{grid[0]:.2f}, {grid[-1]:.2f}]; use --full to keep everything")
        if hierarchical:
            table = self.l1_thresholds_head if per_query_head else self.l1_thresholds_group
            if table is None:
                raise SqueezeError("this pack has no thresholds calibrated for the hierarchical lookup (built before "
                                   "they were, or without --hierarchical); rebuild it with `squeeze context build "
                                   "--hierarchical`, or use top-k selection (--kv-budget)")
            table = table.numpy()
        else:
            table = (self.thresholds_head if per_query_head else self.thresholds_group).numpy()
        value = float(np.exp(np.interp(keep_fraction, grid, np.log(np.maximum(table, 1e-300)))))
        # between its two grid points: exp(log(t)) can come back one unit in the last place above t, and a cluster
        # scored exactly at a calibrated threshold (every cluster of a one-cluster pack) was then dropped
        i = int(np.clip(np.searchsorted(grid, keep_fraction), 1, len(grid) - 1))
        lo, hi = sorted((float(table[i - 1]), float(table[i])))
        return min(max(value, lo), hi)


# ------------------------------------------------------------------------------------------------ build
# the fewest positions a pack leaves free in the model window: the chat framing's closing tokens, a short question
# and an answer (a context filling the window up to one token built a pack no `squeeze generate` could use)
MIN_ANSWER_ROOM = 16


def frame_context(tokenizer, text: str, framing: str) -> list[int]:
    """Token ids of the fixed context: raw text, or the chat prefix + text (the start of a user turn)."""
    if framing == "raw":
        return tokenizer.encode_text(text)
    if framing != "chat":
        raise SqueezeError(f"unknown framing '{framing}'; use 'chat' or 'raw'")
    prefix, _ = tokenizer.chat_frame()
    return tokenizer.encode(prefix) + tokenizer.encode_text(text)   # special-token strings in the text stay text


from .pack_arrays import check_context_hash, context_text_of, text_sha256  # noqa: E402,F401  (one definition, torch-free)


def check_context_length(n: int, config: LlamaConfig, settings: BuildSettings) -> None:
    """Refuse a context of ``n`` tokens (framing included) that leaves no room for a question in the model window,
    or too few tokens to cluster after the sinks and the observation window (one-line SqueezeError)."""
    if n > config.max_positions - MIN_ANSWER_ROOM:   # a pack no question could follow (framing, prompt, answer)
        room = min(256, config.max_positions // 4)
        raise SqueezeError(f"the context is {n} tokens and the model window {config.max_positions}: "
                           f"{'it does not fit' if n >= config.max_positions else 'no room is left for a question'}; "
                           f"a pack takes at most {config.max_positions - MIN_ANSWER_ROOM} tokens, and "
                           f"{config.max_positions - room} leaves {room} for the prompt and its answer; shorten it")
    window, sinks = settings.observation_window, settings.sink_tokens
    if n - window - sinks < MIN_CLUSTERED_TOKENS:
        raise SqueezeError(f"the context is only {n} token{'' if n == 1 else 's'}; Squeezed Attention needs at least "
                           f"{window + sinks + MIN_CLUSTERED_TOKENS} (observation window {window} + sink tokens "
                           f"{sinks} + {MIN_CLUSTERED_TOKENS}); use a longer text"
                           + (f" or a smaller --observation-window (at most {n - sinks - MIN_CLUSTERED_TOKENS})"
                              if n - sinks - MIN_CLUSTERED_TOKENS >= 1 else ""))


def build_context_pack(model, checkpoint, text, settings: BuildSettings | None = None, progress=None) -> ContextPack:
    """Prefill ``text`` once, cluster its keys and calibrate thresholds. ``progress(stage, done, total)``.

    ``text``: the context as a str, or a path (pathlib.Path, os.PathLike) of a text file, read as `squeeze context
    build --context FILE` reads it (UTF-8, or UTF-16/32 with a byte-order mark)."""
    text = context_text_of(text)
    settings = BuildSettings() if settings is None else settings
    if not isinstance(settings, BuildSettings):
        raise SqueezeError(f"settings must be a BuildSettings, e.g. BuildSettings(observation_window=50); got "
                           f"{type(settings).__name__}")
    settings = dataclasses.replace(settings)   # checked again: a field set after construction was never checked
    config = model.config
    started = time.perf_counter()
    if not text.strip():
        raise SqueezeError("the context " + ("is empty" if not text else "holds only whitespace")
                           + "; pass a text file with the fixed context")
    ids = frame_context(checkpoint.tokenizer, text, settings.framing)
    n = len(ids)
    check_context_length(n, config, settings)
    window, sinks = settings.observation_window, settings.sink_tokens
    report = progress or (lambda *a: None)

    # 1) Prefill; the observation window goes last so its post-RoPE queries can be recorded.
    token_ids = torch.tensor(ids, dtype=torch.int64)
    cache = model.new_cache(n)
    done = 0
    layers = config.num_layers
    for start in range(0, n - window, settings.prefill_chunk):
        piece = token_ids[start:min(start + settings.prefill_chunk, n - window)]
        model.step(piece, cache, logits="none",
                   on_layer=lambda i, d=done, t=len(piece): report("prefill", d + t * i // layers, n))
        done += len(piece)
    obs_queries: list = []
    model.step(token_ids[n - window:], cache, logits="none", query_sink=obs_queries,
               on_layer=lambda i: report("prefill", done + window * i // layers, n))
    keys, values = cache.keys, cache.values  # [L, Hkv, N, D] fp32
    L, Hkv, _, D = keys.shape
    nc = n - window - sinks

    # 2) Level-2 K-means over L2-normalized keys, all (layer, head) groups at once. The first tokens are
    #    attention sinks (huge attention whatever the query): clustering them with ordinary keys and then
    #    dropping them wrecks the output, so they stay dense like the observation window.
    report("cluster", 0, 1)
    raw = keys[:, :, sinks:sinks + nc].reshape(L * Hkv, nc, D)
    k2 = max(1, round(settings.centroid_fraction * nc))
    result = kmeans(torch.nn.functional.normalize(raw, dim=-1), k2, settings.kmeans_iterations, settings.seed)
    labels, counts = result.labels, result.counts
    sums, _ = cluster_sums(raw, labels, k2)
    # Stored centroid = mean of RAW keys (online scoring uses raw dot products); empty -> zero vector.
    centroids = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)

    l1_centroids = l1_counts = child_offsets = None
    if settings.hierarchical:
        k1 = max(1, min(k2, round(settings.level1_fraction * nc)))
        parents = kmeans(torch.nn.functional.normalize(centroids, dim=-1), k1, settings.kmeans_iterations,
                         settings.seed + 1).labels  # [G, K2]
        # Number level-2 clusters parent by parent so each parent's children are one contiguous range.
        order = torch.sort(parents, dim=-1, stable=True).indices
        new_id = torch.empty_like(order).scatter_(1, order, torch.arange(k2).expand_as(order).contiguous())
        centroids, counts = centroids.gather(1, order.unsqueeze(-1).expand(-1, -1, D)), counts.gather(1, order)
        labels, parents = new_id.gather(1, labels), parents.gather(1, order)
        weighted, _ = cluster_sums(centroids * counts.unsqueeze(-1).to(centroids.dtype), parents, k1)
        l1_counts = torch.zeros(L * Hkv, k1, dtype=torch.int64).scatter_add_(1, parents, counts)
        l1_centroids = weighted / l1_counts.clamp_min(1).unsqueeze(-1).to(weighted.dtype)
        children_per_parent = torch.zeros(L * Hkv, k1, dtype=torch.int64).scatter_add_(1, parents, torch.ones_like(parents))
        child_offsets = torch.cat([torch.zeros(L * Hkv, 1, dtype=torch.int64), children_per_parent.cumsum(-1)], 1)
        l1_centroids = roundtrip_centroids(l1_centroids.reshape(L, Hkv, k1, D))
        l1_counts = l1_counts.reshape(L, Hkv, k1).int()
        child_offsets = child_offsets.reshape(L, Hkv, k1 + 1).int()
    report("cluster", 1, 1)

    pack = ContextPack(
        config=config, settings=settings, token_ids=token_ids,
        keys=keys.half(), values=values.half(),
        centroids=roundtrip_centroids(centroids.reshape(L, Hkv, k2, D)), counts=counts.reshape(L, Hkv, k2).int(),
        labels=labels.reshape(L, Hkv, nc).int().to(torch.uint16) if k2 <= 65535 else labels.reshape(L, Hkv, nc).int(),
        keep_fractions=torch.tensor(KEEP_FRACTION_GRID, dtype=torch.float64),
        thresholds_group=torch.zeros(0), thresholds_head=torch.zeros(0),
        l1_centroids=l1_centroids, l1_counts=l1_counts, child_offsets=child_offsets,
        hashes={"weights_sha256": checkpoint.weights_sha256, "tokenizer_sha256": checkpoint.tokenizer.fingerprint(),
                "context_sha256": text_sha256(text)},
    )
    # 3) Calibrate on the stored (int8-quantized) centroids, exactly what the online lookup will see.
    report("calibrate", 0, 1)
    tables = pack.lookup_tables()
    queries = torch.stack(obs_queries)  # [L, Hq, W, D]
    pack.thresholds_group = calibrate_thresholds(tables, queries, per_query_head=False)
    pack.thresholds_head = calibrate_thresholds(tables, queries, per_query_head=True)
    if settings.hierarchical:
        pack.l1_thresholds_group = calibrate_thresholds(tables, queries, per_query_head=False, hierarchical=True)
        pack.l1_thresholds_head = calibrate_thresholds(tables, queries, per_query_head=True, hierarchical=True)
    report("calibrate", 1, 1)
    pack.build_seconds = time.perf_counter() - started
    return pack


def calibrate_thresholds(tables: LookupTables, queries, per_query_head: bool, hierarchical: bool = False):
    """One global threshold per keep fraction: the quantile of key scores over all layers, heads and keys.

    A key's score is its cluster's mean normalized score S over the observation-window queries. ``hierarchical``:
    the two-level lookup's scores (normalised over level-1 centroids) where, at each keep fraction, only the children
    of the level-1 clusters that lookup keeps are scored; the others count as dropped keys.
    """
    key_scores, key_ranks = [], []
    num_level1 = int(tables.l1_centroids.shape[2]) if hierarchical else 0
    for layer in range(queries.shape[0]):
        spec = SelectionSpec(per_query_head=per_query_head, hierarchical=hierarchical, level1_keep=num_level1)
        scores, _ = score_layer(tables, layer, queries[layer], spec)  # [Hs, K]; hierarchical: every child scored
        # Every key gets its cluster's score; counting clusters by size is the same and cheaper.
        counts = tables.counts[layer]
        if per_query_head:
            counts = counts.repeat_interleave(tables.group_size, 0)
        key_scores.append(torch.repeat_interleave(scores.flatten(), counts.flatten()))
        if hierarchical:
            key_ranks.append(torch.repeat_interleave(parent_ranks(tables, layer, queries[layer], spec).flatten(),
                                                     counts.flatten()))
    scores = torch.cat(key_scores)
    total = scores.numel()
    picks = [min(total - 1, max(0, math.ceil(f * total) - 1)) for f in KEEP_FRACTION_GRID]
    if not hierarchical:
        return torch.sort(scores, descending=True).values[picks].clone()
    ranks = torch.cat(key_ranks)
    out = torch.empty(len(KEEP_FRACTION_GRID), dtype=torch.float64)
    by_keep: dict = {}
    for i, f in enumerate(KEEP_FRACTION_GRID):
        by_keep.setdefault(level1_keep_for(num_level1, f), []).append(i)
    for keep, rows in by_keep.items():
        scored = scores[ranks < keep]
        ordered = torch.sort(scored, descending=True).values
        for i in rows:   # fewer keys scored than the fraction asks: the threshold keeps every scored one
            out[i] = ordered[min(picks[i], ordered.numel() - 1)]
    # A larger fraction scores a superset of clusters; never a higher threshold, so it never keeps fewer keys
    return torch.cummin(out, 0).values


# ------------------------------------------------------------------------------------------- save / load
def _content_sha256(tensors: dict, metadata: dict) -> str:
    """The pack's content hash (one definition, shared with the torch-free reader in pack_arrays)."""
    return content_sha256(tensors, metadata)


def check_pack_destination(path, protect=()) -> Path:
    """Refuse, before any work, a pack destination that cannot be written or holds something that is not a
    context pack (a directory, the context text itself, any other file: only an older pack is replaced)."""
    from squeeze_mobile.errors import user_path

    user_path(path, "the pack path")   # None, an open file, "": one line (Path("") is the current directory)
    if isinstance(path, str) and path.endswith(("/", os.sep)):   # Path() drops the slash: a FILE named like the folder
        raise SqueezeError(f"--out {path} names a folder; give the pack's file path, e.g. {path}doc.pack "
                           "(nothing was written)")
    path = check_destination(path, "file")
    if path.is_file():
        same = [p for p in protect if Path(p).exists() and path.samefile(p)]
        if same:
            raise SqueezeError(f"--out {path} is the context file itself; choose another path for the pack "
                               "(nothing was changed)")
        kind = kind_of(path)
        if kind != "a Squeezed Attention context pack":
            raise SqueezeError(f"{path} already exists and is {kind}, not a context pack; remove it yourself or "
                               "choose another path (nothing was changed)")
    return path


def save_context_pack(pack: ContextPack, path) -> Path:
    """Write ``pack`` as one safetensors file at ``path`` (what `squeeze context build --out` writes): the fp16 KV
    cache, the int8 centroids with their fp16 scales, labels, counts, calibration thresholds, the build settings and
    the hashes of the model, tokenizer and context, plus a content hash over all of it. The file is written under a
    temporary name and renamed when complete; a directory or any file other than an older pack at ``path`` is refused
    (SqueezeError, nothing written). Returns the path written."""
    from safetensors.torch import save_file

    if not isinstance(pack, ContextPack):
        raise SqueezeError(f"save_context_pack takes a ContextPack (from build_context_pack or load_context_pack); got "
                           f"{type(pack).__name__}")
    path = check_pack_destination(path)
    tensors = {
        "context.token_ids": pack.token_ids.int(),
        "kv.keys": pack.keys, "kv.values": pack.values,
        **pack.stored_lookup_tensors(),
        "calibration.keep_fractions": pack.keep_fractions,
        "calibration.thresholds_group": pack.thresholds_group,
        "calibration.thresholds_head": pack.thresholds_head,
    }
    if pack.l1_thresholds_group is not None or pack.l1_thresholds_head is not None:
        tensors["calibration.level1_thresholds_group"] = pack.l1_thresholds_group
        tensors["calibration.level1_thresholds_head"] = pack.l1_thresholds_head
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": PACK_FORMAT, "model_config": pack.config.to_json(),
                "build_settings": json.dumps(pack.settings.to_dict(), sort_keys=True),
                "build_seconds": f"{pack.build_seconds:.3f}", **pack.hashes}
    try:   # the reader's checks, before writing: a file every reader would refuse is not written
        metadata["content_sha256"] = _content_sha256(tensors, metadata)
        _pack_from_stored(path, tensors, metadata)
    except (TypeError, ValueError, RuntimeError) as exc:   # e.g. a bfloat16 tensor: no dtype of the format
        raise SqueezeError(f"this context pack is inconsistent ({reason_of(exc)}); nothing was written to {path}") from None
    except _Inconsistent as exc:
        raise SqueezeError(f"this context pack is inconsistent ({exc}); nothing was written to {path}") from None
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, _new_file_mode())  # safetensors writes 0600; a pack is shared data, like any file we write
    pack.path = str(path)
    return path


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


from .pack_arrays import PACK_HINT, check_pack_file  # noqa: E402  (one front door for both readers)
_HASH_KEYS = ("weights_sha256", "tokenizer_sha256", "context_sha256")


def load_context_pack(path, checkpoint=None, context_text: str | None = None) -> ContextPack:
    """Load and verify a pack. With ``checkpoint``, refuse a pack built for other weights or tokenizer;
    with ``context_text``, refuse a pack built from a different context file. Every problem with the file
    (missing, unreadable, not a pack, truncated, modified, inconsistent) is a one-line SqueezeError."""
    pack = read_context_pack(path)
    if checkpoint is not None:
        pack.check_model(checkpoint)
    if context_text is not None:
        pack.check_context(context_text)
    return pack


def read_context_pack(path) -> ContextPack:
    """Read and check a pack file on its own (format, content hash, every tensor's dtype/shape/range)."""
    from safetensors import SafetensorError, safe_open

    path = check_pack_file(path)
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        reason = reason_of(exc)
        raise SqueezeError(f"{path} is a damaged or truncated context pack ({reason}); rebuild it "
                           "with `squeeze context build`") from None
    fmt = metadata.get("format")
    if fmt != PACK_FORMAT:
        if fmt and fmt.startswith("squeeze-context-pack/"):
            raise SqueezeError(f"{path} is a context pack of another format version ({fmt[:40]!r}, this version reads "
                               f"{PACK_FORMAT}); rebuild it with `squeeze context build`")
        raise SqueezeError(f"{path} is a safetensors file but not a context pack (no {PACK_FORMAT} tag); {PACK_HINT}")
    try:
        content = _content_sha256(tensors, metadata)
    except (RuntimeError, TypeError, ValueError):  # a dtype the hash cannot view as bytes: not ours
        content = None
    if content is None or content != metadata.get("content_sha256"):
        raise SqueezeError(f"{path} was modified after it was built (content hash mismatch); rebuild it")
    try:
        return _pack_from_stored(path, tensors, metadata)
    except _Inconsistent as exc:
        raise SqueezeError(f"{path} is an inconsistent context pack ({exc}); rebuild it with "
                           "`squeeze context build`") from None


class _Inconsistent(Exception):
    pass


def _pack_from_stored(path, tensors: dict, metadata: dict) -> ContextPack:
    """Check everything the online lookup relies on (dtypes, shapes, index ranges), then build the pack."""
    def need(cond, what):
        if not cond:
            raise _Inconsistent(what)

    try:
        config = LlamaConfig.from_json(metadata.get("model_config", "")).validate()
    except (TypeError, ValueError, AttributeError):
        raise _Inconsistent("its model_config is not a valid Llama config") from None
    try:
        raw_settings = json.loads(metadata.get("build_settings", ""))
        need(isinstance(raw_settings, dict), "build_settings is not an object")
        settings = BuildSettings(**raw_settings)
    except (TypeError, ValueError):
        raise _Inconsistent("its build_settings are not valid") from None
    except SqueezeError as exc:
        raise _Inconsistent(f"build settings: {exc}") from None
    for key in _HASH_KEYS:
        value = metadata.get(key)
        need(isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value),
             f"{key} is not a sha256")
    try:
        build_seconds = float(metadata.get("build_seconds", "0"))
    except ValueError:
        raise _Inconsistent("build_seconds is not a number") from None

    def tensor(name, dtypes, shape, optional=False):
        t = tensors.get(name)
        if t is None:
            need(optional, f"tensor {name} is missing")
            return None
        need(t.dtype in dtypes, f"tensor {name} has dtype {t.dtype}")
        need(len(t.shape) == len(shape) and all(e is None or e == int(a) for a, e in zip(t.shape, shape)),
             f"tensor {name} has shape {list(t.shape)}")
        return t

    L, H, D = config.num_layers, config.num_kv_heads, config.head_dim
    ids = tensor("context.token_ids", (torch.int32,), (None,))
    n = int(ids.shape[0])
    need(0 < n < config.max_positions, f"{n} context tokens for a model window of {config.max_positions}")
    need(bool(((ids >= 0) & (ids < config.vocab_size)).all()), "token ids outside the vocabulary")
    nc = n - settings.observation_window - settings.sink_tokens
    need(nc >= 1, "no clustered tokens")
    keys = tensor("kv.keys", (torch.float16,), (L, H, n, D))
    values = tensor("kv.values", (torch.float16,), (L, H, n, D))
    codes = tensor("lookup.centroid_codes", (torch.int8,), (L, H, None, D))
    k = int(codes.shape[2])
    need(1 <= k <= nc, f"{k} clusters for {nc} clustered keys")
    scales = tensor("lookup.centroid_scales", (torch.float16,), (L, H, k))
    counts = tensor("lookup.counts", (torch.int32,), (L, H, k))
    labels = tensor("lookup.labels", (torch.uint16, torch.int32), (L, H, nc))
    label_ids = labels.to(torch.int64)
    need(bool(((label_ids >= 0) & (label_ids < k)).all()), "cluster labels out of range")
    histogram = torch.zeros(L, H, k, dtype=torch.int64).scatter_add_(2, label_ids, torch.ones_like(label_ids))
    need(torch.equal(histogram, counts.to(torch.int64)), "cluster counts do not match the labels")
    grid = tensor("calibration.keep_fractions", (torch.float64,), (len(KEEP_FRACTION_GRID),))
    need(grid.tolist() == list(KEEP_FRACTION_GRID), "the calibration grid is not the keep-fraction grid")
    thresholds = [tensor(f"calibration.thresholds_{w}", (torch.float64,), (len(KEEP_FRACTION_GRID),))
                  for w in ("group", "head")]
    for t in (keys, values, scales, *thresholds):
        need(bool(torch.isfinite(t).all()), "non-finite values")
    level1 = [tensors.get(f"lookup.level1_{x}") for x in ("centroid_codes", "centroid_scales", "counts", "child_offsets")]
    need(all(t is None for t in level1) or all(t is not None for t in level1), "an incomplete hierarchical level")
    l1 = l1_counts = offsets = None
    if level1[0] is not None:
        codes1 = tensor("lookup.level1_centroid_codes", (torch.int8,), (L, H, None, D))
        k1 = int(codes1.shape[2])
        need(1 <= k1 <= k, f"{k1} level-1 clusters for {k} clusters")
        scales1 = tensor("lookup.level1_centroid_scales", (torch.float16,), (L, H, k1))
        l1_counts = tensor("lookup.level1_counts", (torch.int32,), (L, H, k1))
        offsets = tensor("lookup.level1_child_offsets", (torch.int32,), (L, H, k1 + 1))
        steps = offsets[..., 1:] - offsets[..., :-1]
        need(bool((offsets[..., 0] == 0).all() and (offsets[..., -1] == k).all() and (steps >= 0).all()),
             "level-1 child offsets are not a partition of the clusters")
        need(bool(torch.isfinite(scales1).all()), "non-finite values")
        need(bool((l1_counts >= 0).all()), "negative level-1 counts")
        l1 = dequantize_centroids(codes1, scales1)
    l1_thresholds = [tensor(f"calibration.level1_thresholds_{w}", (torch.float64,), (len(KEEP_FRACTION_GRID),),
                            optional=True) for w in ("group", "head")]
    need(all(t is None for t in l1_thresholds) or (l1 is not None and all(t is not None for t in l1_thresholds)),
         "level-1 thresholds without a complete hierarchical level")
    for t in l1_thresholds:
        need(t is None or bool(torch.isfinite(t).all()), "non-finite values")
    extra = (4 if l1 is not None else 0) + (2 if l1_thresholds[0] is not None else 0)
    need(len(tensors) == 10 + extra, "unexpected extra tensors")
    return ContextPack(
        config=config, settings=settings, token_ids=ids.long(), keys=keys, values=values,
        centroids=dequantize_centroids(codes, scales), counts=counts, labels=labels,
        keep_fractions=grid, thresholds_group=thresholds[0], thresholds_head=thresholds[1],
        l1_centroids=l1, l1_counts=l1_counts, child_offsets=offsets,
        l1_thresholds_group=l1_thresholds[0], l1_thresholds_head=l1_thresholds[1],
        hashes={key: metadata[key] for key in _HASH_KEYS}, build_seconds=build_seconds, path=str(path))
