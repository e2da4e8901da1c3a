"""Context packs: the offline Squeezed Attention stage for one fixed context, saved as safetensors.

A pack holds the fixed context's KV cache (fp16), its clustering (raw-mean centroids stored as int8 with
one fp16 scale per centroid, uint16 labels, int32 counts, optional level-1 clusters), calibrated
thresholds, the build settings, and sha256 hashes of the model weights, the tokenizer and the context
text. A content hash over all tensors and metadata detects any modification; a pack built with another
model or tokenizer is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_file
from .centroid_codes import dequantize_centroids, quantize_centroids, roundtrip_centroids
from .config import LlamaConfig
from .errors import SqueezeError
from .kmeans import cluster_sums, kmeans
from .lookup import LookupTables, SelectionSpec, score_layer

PACK_FORMAT = "squeeze-context-pack/2"
KEEP_FRACTION_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
MIN_CLUSTERED_TOKENS = 16


@dataclass
class BuildSettings:
    # Level-2 clusters per clustered key. The paper uses 5% fp16 centroids; 10% int8 centroids cost the same
    # bytes and, on SmolLM2-135M, kept pass keys that 5% lost at 4k and 8k tokens (squeezed_attention/RESULTS.md).
    centroid_fraction: float = 0.10
    hierarchical: bool = False
    level1_fraction: float = 0.01        # level-1 clusters per clustered key (paper: 1%)
    observation_window: int = 100        # last tokens: never clustered, always attended, used to calibrate
    sink_tokens: int = 4                 # first tokens: never clustered, always attended (attention sinks)
    seed: int = 0
    kmeans_iterations: int = 12
    framing: str = "chat"                # "chat": context is the start of one user turn; "raw": plain text
    prefill_chunk: int = 1024

    def to_dict(self):
        return dict(self.__dict__)


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
        return LookupTables.build(self.centroids, self.counts, self.labels, self.config.group_size,
                                  self.l1_centroids, self.l1_counts, self.child_offsets,
                                  first_position=self.settings.sink_tokens)

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

    def threshold_for(self, keep_fraction: float, per_query_head: bool) -> float:
        """Calibrated cluster-score threshold for a keep fraction (log-linear between grid points)."""
        grid = self.keep_fractions.numpy()
        if not grid[0] <= keep_fraction <= grid[-1]:
            raise SqueezeError(f"--keep {keep_fraction} is outside the calibrated range "
                               f"[{grid[0]:.2f}, {grid[-1]:.2f}]; use --full to keep everything")
        table = (self.thresholds_head if per_query_head else self.thresholds_group).numpy()
        return float(np.exp(np.interp(keep_fraction, grid, np.log(np.maximum(table, 1e-300)))))


# ------------------------------------------------------------------------------------------------ build
def frame_context(tokenizer, text: str, framing: str) -> list[int]:
    """Token ids of the fixed context: raw text, or the chat prefix + text (the start of a user turn)."""
    if framing == "raw":
        return tokenizer.encode(text)
    if framing != "chat":
        raise SqueezeError(f"unknown framing '{framing}'; use 'chat' or 'raw'")
    prefix, _ = tokenizer.chat_frame()
    return tokenizer.encode(prefix) + tokenizer.encode(text)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_context_pack(model, checkpoint, text: str, settings: BuildSettings | None = None, progress=None) -> ContextPack:
    """Prefill ``text`` once, cluster its keys and calibrate thresholds. ``progress(stage, done, total)``."""
    settings = settings or BuildSettings()
    config = model.config
    started = time.perf_counter()
    if not text or not text.strip():
        raise SqueezeError("the context is empty; pass a text file with the fixed context")
    if not 0.0 < settings.centroid_fraction <= 0.5:
        raise SqueezeError("--centroids must be in (0, 0.5]; the default is 0.10")
    ids = frame_context(checkpoint.tokenizer, text, settings.framing)
    n = len(ids)
    if n >= config.max_positions:
        raise SqueezeError(f"the context is {n} tokens but the model window is {config.max_positions}; "
                           f"shorten it below {config.max_positions - 256} tokens to leave room for the prompt")
    window, sinks = settings.observation_window, settings.sink_tokens
    if n - window - sinks < MIN_CLUSTERED_TOKENS:
        raise SqueezeError(f"the context is only {n} tokens; Squeezed Attention needs at least "
                           f"{window + sinks + MIN_CLUSTERED_TOKENS} (observation window {window} + sink tokens "
                           f"{sinks} + {MIN_CLUSTERED_TOKENS})")
    report = progress or (lambda *a: None)

    # 1) Prefill; the observation window goes last so its post-RoPE queries can be recorded.
    token_ids = torch.tensor(ids, dtype=torch.int64)
    cache = model.new_cache(n)
    done = 0
    for start in range(0, n - window, settings.prefill_chunk):
        piece = token_ids[start:min(start + settings.prefill_chunk, n - window)]
        model.step(piece, cache, logits="none")
        done += len(piece)
        report("prefill", done, n)
    obs_queries: list = []
    model.step(token_ids[n - window:], cache, logits="none", query_sink=obs_queries)
    report("prefill", n, n)
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
    report("calibrate", 1, 1)
    pack.build_seconds = time.perf_counter() - started
    return pack


def calibrate_thresholds(tables: LookupTables, queries, per_query_head: bool):
    """One global threshold per keep fraction: the quantile of key scores over all layers, heads and keys.

    A key's score is its cluster's mean normalized score S over the observation-window queries.
    """
    spec = SelectionSpec(per_query_head=per_query_head)
    key_scores = []
    for layer in range(queries.shape[0]):
        scores, _ = score_layer(tables, layer, queries[layer], spec)  # [Hs, K]
        # Every key gets its cluster's score; counting clusters by size is the same and cheaper.
        counts = tables.counts[layer]
        if per_query_head:
            counts = counts.repeat_interleave(tables.group_size, 0)
        key_scores.append(torch.repeat_interleave(scores.flatten(), counts.flatten()))
    all_scores = torch.sort(torch.cat(key_scores), descending=True).values
    total = all_scores.numel()
    picks = [min(total - 1, max(0, math.ceil(f * total) - 1)) for f in KEEP_FRACTION_GRID]
    return all_scores[picks].clone()


# ------------------------------------------------------------------------------------------- save / load
def _content_sha256(tensors: dict, metadata: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in metadata.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_context_pack(pack: ContextPack, path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        "context.token_ids": pack.token_ids.int(),
        "kv.keys": pack.keys, "kv.values": pack.values,
        **pack.stored_lookup_tensors(),
        "calibration.keep_fractions": pack.keep_fractions,
        "calibration.thresholds_group": pack.thresholds_group,
        "calibration.thresholds_head": pack.thresholds_head,
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": PACK_FORMAT, "model_config": pack.config.to_json(),
                "build_settings": json.dumps(pack.settings.to_dict(), sort_keys=True),
                "build_seconds": f"{pack.build_seconds:.3f}", **pack.hashes}
    metadata["content_sha256"] = _content_sha256(tensors, metadata)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    pack.path = str(path)
    return path


def load_context_pack(path, checkpoint=None, context_text: str | None = None) -> ContextPack:
    """Load and verify a pack. With ``checkpoint``, refuse a pack built for other weights or tokenizer;
    with ``context_text``, refuse a pack built from a different context file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SqueezeError(f"context pack not found: {path}; build one with `squeeze context build`")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise SqueezeError(f"{path} is not a readable context pack ({type(exc).__name__}); "
                           "rebuild it with `squeeze context build`") from None
    if metadata.get("format") != PACK_FORMAT:
        raise SqueezeError(f"{path} is not a {PACK_FORMAT} file; rebuild it with `squeeze context build`")
    if _content_sha256(tensors, metadata) != metadata.get("content_sha256"):
        raise SqueezeError(f"{path} was modified after it was built (content hash mismatch); rebuild it")
    if checkpoint is not None:
        if metadata.get("weights_sha256") != checkpoint.weights_sha256:
            raise SqueezeError(f"{path} was built for other model weights (sha256 {metadata.get('weights_sha256', '?')[:12]}, "
                               f"this model {checkpoint.weights_sha256[:12]}); rebuild it with this --model")
        if metadata.get("tokenizer_sha256") != checkpoint.tokenizer.fingerprint():
            raise SqueezeError(f"{path} was built with a different tokenizer; rebuild it with this --model")
    if context_text is not None and metadata.get("context_sha256") != text_sha256(context_text):
        raise SqueezeError(f"{path} was built from a different context text; rebuild it from this file")
    get = tensors.get
    l1 = None
    if "lookup.level1_centroid_codes" in tensors:
        l1 = dequantize_centroids(tensors["lookup.level1_centroid_codes"], tensors["lookup.level1_centroid_scales"])
    return ContextPack(
        config=LlamaConfig.from_json(metadata["model_config"]),
        settings=BuildSettings(**json.loads(metadata["build_settings"])),
        token_ids=tensors["context.token_ids"].long(), keys=tensors["kv.keys"], values=tensors["kv.values"],
        centroids=dequantize_centroids(tensors["lookup.centroid_codes"], tensors["lookup.centroid_scales"]),
        counts=tensors["lookup.counts"], labels=tensors["lookup.labels"],
        keep_fractions=tensors["calibration.keep_fractions"],
        thresholds_group=tensors["calibration.thresholds_group"],
        thresholds_head=tensors["calibration.thresholds_head"],
        l1_centroids=l1, l1_counts=get("lookup.level1_counts"), child_offsets=get("lookup.level1_child_offsets"),
        hashes={k: metadata[k] for k in ("weights_sha256", "tokenizer_sha256", "context_sha256")},
        build_seconds=float(metadata.get("build_seconds", 0)), path=str(path))
