"""Context packs read without PyTorch: numpy arrays, integrity checks, and the exported decoder's input layout.

This is what an app does with a pack (and what the torch-free `squeeze generate --artifacts` loop runs): read
the safetensors file, check its format and content hash, check it was built for the artifact's model and
tokenizer, and lay its tensors out as the exported decoder's context inputs (fixed-size, padded, float32).
The PyTorch side (squeezed_attention.pack) shares the content hash and the layout from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SqueezeError, reason_of

from .settings import PACK_FORMAT


def content_sha256(arrays: dict, metadata: dict) -> str:
    """The pack's content hash over its metadata (minus the hash itself) and every tensor's name, dtype, shape
    and bytes. Tensors may be numpy arrays or torch tensors (dtype names are spelled as torch spells them)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in metadata.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = arrays[name]
        if not isinstance(a, np.ndarray):  # a torch tensor: hash the same bytes
            a = a.contiguous().view(__import__("torch").uint8).numpy().view(_numpy_dtype(a.dtype)).reshape(tuple(a.shape))
        a = np.ascontiguousarray(a)
        h.update(f"{name}|torch.{a.dtype.name}|{tuple(a.shape)}|".encode())
        h.update(a.tobytes() if a.size else b"")
    return h.hexdigest()


def _numpy_dtype(torch_dtype):
    return np.dtype(str(torch_dtype).replace("torch.", ""))


@dataclass
class PackArrays:
    """A context pack as numpy arrays plus its metadata (format, model config, build settings, hashes)."""

    path: str
    metadata: dict
    arrays: dict

    @property
    def settings(self) -> dict:
        return json.loads(self.metadata["build_settings"])

    @property
    def model_config(self) -> dict:
        return json.loads(self.metadata["model_config"])

    @property
    def num_tokens(self) -> int:
        return int(self.arrays["context.token_ids"].shape[0])

    @property
    def hashes(self) -> dict:
        return {k: self.metadata.get(k) for k in ("weights_sha256", "tokenizer_sha256", "context_sha256")}

    def check_context(self, context_text: str) -> None:
        """Refuse a pack built from another context text (``--context`` given beside the pack)."""
        check_context_hash(self.metadata.get("context_sha256"), context_text, self.path)

    def check_model(self, weights_sha256: str | None, tokenizer_sha256: str | None) -> None:
        """Refuse a pack built for other weights or another tokenizer than the artifact's."""
        if weights_sha256 and self.metadata.get("weights_sha256") != weights_sha256:
            raise SqueezeError(f"{self.path} was built for other model weights than this decoder was exported from "
                               "(weights sha256 differs); rebuild the pack with the artifact's model")
        if tokenizer_sha256 and self.metadata.get("tokenizer_sha256") != tokenizer_sha256:
            raise SqueezeError(f"{self.path} was built with a different tokenizer than this decoder's; "
                               "rebuild the pack with the artifact's model")


PACK_HINT = "build one with `squeeze context build`"


def check_pack_file(path) -> Path:
    """Refuse, in one line that says what it is, a path that is not a readable pack file: missing, a directory,
    unreadable, or another kind of file (a GGUF model, an .onnx, a text file). Both pack readers start here (the
    torch-free one said 'not found' for a directory and 'not a readable context pack (SafetensorError)' for a model)."""
    from .file_kinds import kind_of, open_for_reading

    path = Path(path)
    with open_for_reading(path, "context pack", PACK_HINT):
        pass
    kind = kind_of(path)
    if kind not in ("a safetensors file", "a Squeezed Attention context pack"):
        extra = " (pass models as --model)" if kind == "a GGUF model file" else ""
        raise SqueezeError(f"{path} is {kind}{extra}, not a context pack; {PACK_HINT}")
    return path


def read_pack_arrays(path) -> PackArrays:
    """Read and verify a pack with safetensors' numpy API (no PyTorch)."""
    from safetensors import safe_open

    path = check_pack_file(path)
    try:
        with safe_open(str(path), "np") as f:
            metadata = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except PermissionError:
        raise SqueezeError(f"{path} cannot be read (permission denied)") from None
    except Exception as exc:  # noqa: BLE001 - anything the safetensors reader raises means "not a pack"
        # the same words as the PyTorch reader's (read_context_pack): one message for one file, whichever path reads it
        raise SqueezeError(f"{path} is a damaged or truncated context pack ({reason_of(exc)}); "
                           "rebuild it with `squeeze context build`") from None
    if metadata.get("format") != PACK_FORMAT:
        raise SqueezeError(f"{path} is not a {PACK_FORMAT} file; rebuild it with `squeeze context build`")
    try:
        intact = content_sha256(arrays, metadata) == metadata.get("content_sha256")
    except Exception:  # noqa: BLE001 - malformed metadata is tampering too
        intact = False
    if not intact:
        raise SqueezeError(f"{path} was modified after it was built (content hash mismatch); rebuild it")
    problem = _inconsistency(arrays, metadata)
    if problem:
        raise SqueezeError(f"{path} is an inconsistent context pack ({problem}); rebuild it with `squeeze context build`")
    return PackArrays(str(path), metadata, arrays)


def _inconsistency(a: dict, metadata: dict) -> str | None:
    """What the decoder inputs rely on (shapes agree, labels and counts describe the clustered keys), or None."""
    needed = ("context.token_ids", "kv.keys", "kv.values", "lookup.centroid_codes", "lookup.centroid_scales",
              "lookup.counts", "lookup.labels")
    missing = [k for k in needed if k not in a]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        settings = json.loads(metadata["build_settings"])
        sinks, window = int(settings["sink_tokens"]), int(settings["observation_window"])
        float(settings["centroid_fraction"])
        json.loads(metadata["model_config"])
    except (KeyError, TypeError, ValueError):
        return "its settings are not readable"
    keys, values, labels, counts = a["kv.keys"], a["kv.values"], a["lookup.labels"], a["lookup.counts"]
    codes, scales = a["lookup.centroid_codes"], a["lookup.centroid_scales"]
    n = a["context.token_ids"].shape[0] if a["context.token_ids"].ndim == 1 else -1
    if keys.ndim != 4 or keys.shape != values.shape or keys.shape[2] != n or keys.dtype != np.float16:
        return "its key/value tensors do not match its tokens"
    L, H, _, D = keys.shape
    nc = n - sinks - window
    if nc < 1 or labels.shape != (L, H, nc) or codes.ndim != 4 or codes.shape[:2] != (L, H) or codes.shape[3] != D:
        return "its lookup tensors do not match its key/value tensors"
    K = codes.shape[2]
    if counts.shape != (L, H, K) or scales.shape != (L, H, K) or codes.dtype != np.int8:
        return "its centroid tensors disagree"
    if labels.size and (labels.astype(np.int64).min() < 0 or labels.astype(np.int64).max() >= K):
        return "cluster labels out of range"
    per_cluster = np.zeros((L * H, K), np.int64)
    np.add.at(per_cluster, (np.repeat(np.arange(L * H), nc), labels.reshape(-1).astype(np.int64)), 1)
    if not np.array_equal(per_cluster.reshape(L, H, K), counts.astype(np.int64)):
        return "cluster counts do not match the labels"
    return None


def dequantized_centroids(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 codes x fp16 scales -> float32 (exact; the same numbers the PyTorch lookup scores with)."""
    return codes.astype(np.float32) * scales.astype(np.float32)[..., None]


def quantized_like_centroids(x: np.ndarray) -> np.ndarray:
    """int8 codes x one fp16 scale per vector, dequantized to float32 (centroid_codes.quantize_centroids in numpy:
    the same rounding, so both sides see the same numbers)."""
    scales = (np.abs(x.astype(np.float32)).max(-1) / np.float32(127.0)).astype(np.float16)
    safe = np.where(scales > 0, scales.astype(np.float32), np.float32(1.0))
    codes = np.clip(np.round(x.astype(np.float32) / safe[..., None]), -127, 127).astype(np.int8)
    return codes.astype(np.float32) * scales.astype(np.float32)[..., None]


def value_centroids(values: np.ndarray, labels: np.ndarray, counts: np.ndarray, sinks: int) -> np.ndarray:
    """The mean value of every cluster ([L, H, K, D] float32, int8-coded like the key centroids; 0 for empty
    clusters): what a cluster's summary contributes for the keys the lookup did not keep. Computed from the
    pack's own fp16 values when it is loaded (not stored: the pack stays within its metadata bytes)."""
    L, H, nc = labels.shape
    K, D = counts.shape[-1], values.shape[-1]
    counts = counts.astype(np.int64)
    out = np.zeros((L, H, K, D), dtype=np.float64)
    order = np.argsort(labels, axis=-1, kind="stable")                            # cluster by cluster
    starts = np.cumsum(counts, -1) - counts
    for li in range(L):
        for h in range(H):
            rows = values[li, h, sinks:sinks + nc][order[li, h]].astype(np.float64)
            filled = counts[li, h] > 0
            out[li, h, filled] = np.add.reduceat(rows, starts[li, h, filled], axis=0)
    out /= np.maximum(counts, 1)[..., None]
    return quantized_like_centroids(out)


def cluster_order(labels: np.ndarray) -> np.ndarray:
    """[..., Nc] clustered index of each slot of the decoders' clustered tables: cluster by cluster, position order
    within a cluster (decoder_context_inputs and next_rows lay rows out by it)."""
    return np.argsort(labels, axis=-1, kind="stable")


def check_pack_fits(pack: PackArrays, shapes: dict, attention: str, kv_budget: float | None = None) -> None:
    """Refuse, in one line, a pack the artifact with these ``shapes`` cannot take (too long, other sink/window
    counts, more clusters per head, with ``kv_budget`` more kept keys than it gathers), without laying it out
    (decoder_context_inputs does that after this check)."""
    n = pack.num_tokens
    if n > shapes["max_context"]:
        raise SqueezeError(f"the context pack has {n} tokens but the exported decoder takes at most "
                           f"{shapes['max_context']}; re-export with --max-context {n} or more")
    if attention == "full":
        return
    settings = pack.settings
    sinks, window = int(settings["sink_tokens"]), int(settings["observation_window"])
    if (sinks, window) != (shapes["sink_tokens"], shapes["window"]):
        from .settings import MIN_CLUSTERED_TOKENS

        need = shapes["sink_tokens"] + shapes["window"] + MIN_CLUSTERED_TOKENS
        fix = (f"rebuild the pack with --observation-window {shapes['window']}" if n >= need else
               f"this {n}-token context is too short for that layout (it needs {need} tokens); a context this short "
               "costs little to attend in full: use a full-attention artifact (--artifact-attention full; `squeeze "
               "export decoder --attention both` writes one)")
        raise SqueezeError(f"the context pack keeps {sinks} sink and {window} window tokens but the decoder was "
                           f"exported for {shapes['sink_tokens']} and {shapes['window']}; {fix}")
    K = int(pack.arrays["lookup.counts"].shape[-1])
    if K > shapes["max_clusters"]:
        raise SqueezeError(f"the context pack has {K} clusters per head but the decoder takes at most "
                           f"{shapes['max_clusters']}; rebuild it with a smaller --centroids or re-export")
    if kv_budget is not None:
        artifact_keep_keys(pack, shapes, kv_budget)


def artifact_keep_keys(pack: PackArrays, shapes: dict, kv_budget: float) -> int:
    """The clustered keys per head a squeezed artifact keeps from ``pack`` at its KV budget (the host's count for the
    pack: the budget less the pack's own centroid bytes), or a one-line SqueezeError where that is more than the
    artifact gathers (``max_keep``, sized at export for the default centroids): a pack built with fewer centroids
    leaves more keys to keep, and capping them silently attended fewer keys than the KV budget, and than the host."""
    nc = int(pack.arrays["lookup.labels"].shape[-1])
    centroids = float(pack.settings["centroid_fraction"])
    fraction = keep_fraction_for_kv_budget(kv_budget, centroids, int(pack.arrays["kv.keys"].shape[-1]))
    keep = max(1, min(int(round(fraction * nc)), nc))
    if keep > shapes["max_keep"]:
        raise SqueezeError(f"at the decoder's KV budget {kv_budget:g} this pack (built with --centroids {centroids:g}) "
                           f"keeps {keep} keys per head but the decoder gathers at most {shapes['max_keep']}; rebuild "
                           "the pack with the default --centroids or re-export with a larger --max-context")
    return keep


def decoder_context_inputs(pack: PackArrays, shapes: dict, attention: str) -> dict:
    """The pack's tensors in the exported decoder's input layout (names as ExportableDecoder.context_input_names):
    one input per tensor and layer, ``<name>_<layer>`` (views of one [L, ...] array per tensor: no copies).

    ``shapes``: the artifact's DecoderShapes as a dict (max_context, sink_tokens, window, max_clusters, ...).
    Squeezed: sinks and window rows in position order as [key | value] rows; the clustered keys and values
    CLUSTER BY CLUSTER (stable within a cluster), then zero padding, flat per layer (``clustered_keys_l``,
    ``clustered_values_l``: [Hkv * max_clustered, D], head by head; a method that declares them [Hkv,
    max_clustered, D] gets a view of them: decoder_session.GenerationLoop._shaped); centroids/counts/cluster
    starts padded with empty clusters.
    """
    check_pack_fits(pack, shapes, attention)
    a = pack.arrays
    n = pack.num_tokens
    keys, values = a["kv.keys"], a["kv.values"]                                   # [L, H, N, D] fp16
    if attention == "full":
        pad = ((0, 0), (0, 0), (0, shapes["max_context"] - n), (0, 0))
        return per_layer({"context_keys": np.pad(keys.astype(np.float32), pad),
                          "context_values": np.pad(values.astype(np.float32), pad)})
    sinks = int(pack.settings["sink_tokens"])
    counts = a["lookup.counts"].astype(np.int64)                                  # [L, H, K]
    K = counts.shape[-1]
    labels = a["lookup.labels"].astype(np.int64)                                  # [L, H, Nc]
    nc = labels.shape[-1]
    kv = lambda a, b: np.concatenate([keys[:, :, a:b], values[:, :, a:b]], axis=-1).astype(np.float32)  # noqa: E731
    order = cluster_order(labels)[..., None]                                      # cluster by cluster
    L, H = keys.shape[:2]
    pad_c = ((0, 0), (0, 0), (0, n_clustered_max(shapes) - nc), (0, 0))

    def clustered(x):  # [L, H, N, D] -> cluster order, padded, flat per layer: [L, H * max_clustered, D]
        x = np.take_along_axis(x[:, :, sinks:sinks + nc], order, axis=2).astype(np.float32)
        return np.pad(x, pad_c).reshape(L, -1, x.shape[-1])

    centroids = dequantized_centroids(a["lookup.centroid_codes"], a["lookup.centroid_scales"])
    pad_k = ((0, 0), (0, 0), (0, shapes["max_clusters"] - K))
    return per_layer({
        "sink_kv": kv(0, sinks),                                                  # [key | value] rows
        "window_kv": kv(sinks + nc, n),
        # flat per layer, [Hkv * Nc, D] head by head: the graph's lookup gathers rows of every head in one go
        # (keys and values apart: prefill_exact reads them whole, as [Hkv, Nc, D] views, with plain products)
        "clustered_keys": clustered(keys),
        "clustered_values": clustered(values),
        "centroids": np.pad(centroids, pad_k + ((0, 0),)),
        "value_centroids": np.pad(value_centroids(values, labels, counts, sinks), pad_k + ((0, 0),)),
        "counts": np.pad(counts, pad_k),
        "cluster_start": np.pad(np.cumsum(counts, -1) - counts, pad_k),
    })


def next_rows(pack: PackArrays, shapes: dict) -> dict:
    """``next_rows_<layer>`` [Hkv * max_clustered] int64 for decoders with followed keys (contract follow_keys): for
    every flat row of the clustered tables (decoder_context_inputs' layout, cluster by cluster per KV head), the flat
    row of the next context position, -1 where that position is not clustered (the last clustered key) and for
    padding rows."""
    labels = pack.arrays["lookup.labels"].astype(np.int64)                        # [L, H, Nc]
    L, H, nc = labels.shape
    width = n_clustered_max(shapes)
    order = cluster_order(labels)                                                 # slot -> clustered index
    slot_of = np.empty_like(order)
    np.put_along_axis(slot_of, order, np.arange(nc)[None, None, :].repeat(L, 0).repeat(H, 1), axis=-1)
    after = order + 1                                                             # the next clustered index per slot
    inside = after < nc
    nxt = np.where(inside, np.take_along_axis(slot_of, np.minimum(after, nc - 1), axis=-1), -1)
    nxt = np.where(inside, nxt + (np.arange(H) * width)[None, :, None], -1)
    table = np.full((L, H, width), -1, dtype=np.int64)
    table[:, :, :nc] = nxt
    return per_layer({"next_rows": table.reshape(L, H * width)})


def per_layer(arrays: dict) -> dict:
    """{name: [L, ...]} -> {name_<layer>: [...]} (contiguous views, layer by layer in the artifact's input order)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    L = next(iter(arrays.values())).shape[0]
    return {f"{k}_{li}": v[li] for li in range(L) for k, v in arrays.items()}


KV_BYTES_PER_DIM = 2 * 2  # fp16 key + fp16 value per head dimension


def centroid_cost(centroid_fraction: float, head_dim: int = 64) -> float:
    """What the lookup reads besides the kept keys, as a fraction of the KV cache (the paper's accounting done in
    bytes): the key centroids the lookup scores AND the value centroids the summaries of the clusters it did not
    keep add (both int8, head_dim bytes + a 2-byte scale each): 2 x 0.10 x 66 / 256 = 0.0516 at the default 10%
    (the paper counts 5% fp16 key centroids, 0.025, and drops what it does not keep)."""
    return 2 * centroid_fraction * (head_dim + 2) / (KV_BYTES_PER_DIM * head_dim)


def keep_fraction_for_kv_budget(kv_budget: float, centroid_fraction: float, head_dim: int = 64) -> float:
    """The fraction of clustered keys a KV budget (kept keys + centroid bytes, over the KV cache) leaves to keep."""
    keep = kv_budget - centroid_cost(centroid_fraction, head_dim)
    if keep <= 0:
        raise SqueezeError(f"a KV budget of {kv_budget:g} does not even cover the centroids "
                           f"({centroid_cost(centroid_fraction, head_dim):.4f} of the KV cache); use a larger --kv-budget")
    return keep


def n_clustered_max(shapes: dict) -> int:
    return shapes["max_context"] - shapes["sink_tokens"] - shapes["window"]


def held_inputs(selection_rows, selection_bias, context: dict, shapes: dict) -> dict:
    """A question-level decoder's decode inputs (ExportableDecoder with held=True), built ONCE per question from
    what its prefill returned: for every layer l, the fixed-context rows a decode step attends over, as plain
    key and value tables plus one additive bias, in this order: the sinks, the ``max_keep`` kept rows, the window,
    then one summary per cluster (key = centroid, value = mean value).

    selection_rows [L, Hkv, B] (int, rows of the flat tables clustered_keys_l / clustered_values_l; unused slots
    point at any row and are
    masked), selection_bias [L, Hkv, B + K] (0 / -inf per slot, then log N / -inf per cluster: summarised or
    not), ``context``: the pack's decoder inputs (pack_arrays.decoder_context_inputs). Returns
    ``held_keys_l`` / ``held_values_l`` [Hkv, R, D] and ``held_bias_l`` [Hkv, 1, R] float32, R = sinks + B + window + K."""
    rows = np.asarray(selection_rows, dtype=np.int64)
    bias = np.asarray(selection_bias, dtype=np.float32)
    L, Hkv, B = rows.shape
    K, S, W = int(shapes["max_clusters"]), int(shapes["sink_tokens"]), int(shapes["window"])
    if bias.shape != (L, Hkv, B + K):
        raise SqueezeError(f"selection_bias {tuple(bias.shape)} does not match selection_rows {tuple(rows.shape)} "
                           f"and {K} clusters: expected {(L, Hkv, B + K)}")
    out = {}
    for li in range(L):
        tables = [context[f"clustered_{kind}_{li}"] for kind in ("keys", "values")]
        tables = [t.reshape(-1, t.shape[-1]) for t in tables]
        D = tables[0].shape[-1]
        if rows[li].max(initial=0) >= tables[0].shape[0] or rows[li].min(initial=0) < 0:
            raise SqueezeError(f"selection_rows of layer {li} point outside clustered_keys_{li} "
                               f"({tables[0].shape[0]} rows)")
        sink, window = context[f"sink_kv_{li}"], context[f"window_kv_{li}"]
        for kind, t, half, summary in (("keys", tables[0], slice(0, D), "centroids"),
                                       ("values", tables[1], slice(D, 2 * D), "value_centroids")):
            kept = np.take(t, rows[li].ravel(), axis=0).reshape(Hkv, B, D)
            out[f"held_{kind}_{li}"] = np.concatenate([sink[..., half], kept, window[..., half],
                                                       context[f"{summary}_{li}"]], axis=1).astype(np.float32)
        held_bias = np.zeros((Hkv, 1, S + B + W + K), np.float32)
        held_bias[:, 0, S:S + B] = bias[li, :, :B]
        held_bias[:, 0, S + B + W:] = bias[li, :, B:]
        out[f"held_bias_{li}"] = held_bias
    return out


__all__ = ["PACK_FORMAT", "PackArrays", "check_context_hash", "text_sha256", "centroid_cost", "content_sha256", "keep_fraction_for_kv_budget", "decoder_context_inputs", "held_inputs", "dequantized_centroids",
           "read_pack_arrays"]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def context_text_of(text) -> str:
    """The fixed context's text: ``text`` itself (a str the tokenizer can encode), or the text of the file a path
    names (read as `--context FILE` is read); anything else is a one-line SqueezeError (a Path was taken for text:
    AttributeError; bytes or a string with a lone surrogate: the tokenizer's TypeError). For build_context_pack and
    for the context_text a pack is checked against (load_context_pack, Generator.from_pack, DecoderSession.attach)."""
    import os

    from .tokenizer import check_user_text

    if isinstance(text, os.PathLike):
        from .file_kinds import read_utf8_text

        text = read_utf8_text(text)
    elif not isinstance(text, str):
        raise SqueezeError(f"the context must be text (str) or the path of a text file (pathlib.Path); got "
                           f"{type(text).__name__}" + (" (decode it first, e.g. data.decode('utf-8'))"
                                                       if isinstance(text, (bytes, bytearray)) else ""))
    if "\0" in text:   # as `squeeze context build` refuses such a file: binary data, or UTF-16/32 read as UTF-8
        raise SqueezeError("the context contains NUL characters, so it is not plain text (binary data, or UTF-16/32 "
                           "decoded as UTF-8); pass the text itself")
    # Line ends as Python's text mode reads them: a file saved with Windows (CRLF) or old Mac (CR) line ends gives
    # the same context, and the same pack hash, whether it is passed as a path, read with open(f).read() or read
    # with newline=''; before, a pack built one way was refused as "built from a different context text" the other.
    # A leading byte-order mark likewise: the file reader drops it, open(f).read() keeps it as U+FEFF.
    text = text[1:] if text.startswith("\ufeff") else text
    return check_user_text(text.replace("\r\n", "\n").replace("\r", "\n"), "the context")


def check_context_hash(recorded: str | None, context_text, where=None) -> None:
    """Refuse a pack whose recorded context hash is not the hash of ``context_text`` (the text, or the path of the
    text file it was built from: context_text_of)."""
    if recorded != text_sha256(context_text_of(context_text)):
        raise SqueezeError(f"{where or 'this context pack'} was built from a different context text; rebuild it from "
                           "this file")
