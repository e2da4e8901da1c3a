"""The memory floor of a decoder's decode step: the bytes one step must read, over this machine's measured read
bandwidth (bench/native/peak_probe.c, ``read_bw``).

A one-token decode step does little arithmetic per byte: every weight matrix is read once, and so is every
fixed-context key and value the step attends (full attention: all ``max_context`` rows, the graph's static shape;
Squeezed Attention: the sinks, the window, the centroids and their mean values, the kept and followed rows; an exact
step of the answer's opening: every clustered row). So a step cannot run faster than those bytes take to stream from
memory, and the ratio of two artifacts' floors is the most their decode speeds can differ on this machine whatever
the kernels do. The floor counts what must be READ, once, at the artifact's static shapes:

- weights: every linear of every layer and the output head, at the artifact's weight precision (fp32 4 bytes, fp16 2,
  int8 1, int4 0.5 per weight; quantisation scales and offsets, a few percent, are left out, so this stays a lower
  bound); the token embedding reads one row, left out too;
- the fixed context: keys and values as float32 rows, per layer and KV head;
- the per-question cache: ``max_prompt + max_new`` rows per layer and KV head (the graph's static cache shape).

Gathers' writes, activations and the lookup's integer tables are left out (all small beside the above, or not read
again), so the floor is a lower bound on the step's time, not an estimate of it.
"""

from __future__ import annotations

from typing import Dict, Optional

WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
FLOAT_BYTES = 4


def weights_per_layer(config: Dict) -> int:
    """Weights of one layer's linears: q, k, v, o and the MLP's gate, up and down."""
    hidden, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    h, hkv = config["num_heads"], config["num_kv_heads"]
    return hidden * (h * d + 2 * hkv * d) + h * d * hidden + 3 * hidden * inter


def weight_bytes(config: Dict, weights: str) -> float:
    """Bytes of the weight matrices a decode step reads (every layer's linears and the output head)."""
    params = config["num_layers"] * weights_per_layer(config) + config["vocab_size"] * config["hidden_size"]
    return params * WEIGHT_BYTES.get(weights, 4.0)


def context_rows(contract: Dict, step: str = "decode") -> int:
    """Fixed-context rows (per layer and KV head) one step reads: ``decode`` (a selecting step, or full attention's
    step) or ``exact`` (an exact step of the answer's opening: every row of the squeezed layout)."""
    s = contract["shapes"]
    if contract["attention"] == "full":
        return int(s["max_context"])
    clustered = int(s["max_context"]) - int(s["sink_tokens"]) - int(s["window"])
    fixed = int(s["sink_tokens"]) + int(s["window"])
    if step == "exact":
        return fixed + clustered
    # the kept slots, the followed rows, and one centroid (key) plus one mean value per cluster
    return fixed + int(s["max_keep"]) + int(contract.get("follow_keys") or 0) + int(s["max_clusters"])


def step_bytes(config: Dict, contract: Dict, weights: str, step: str = "decode") -> Dict[str, float]:
    """{weights, context, cache, total}: the bytes one decode step reads (see the module docstring)."""
    s = contract["shapes"]
    per_row = 2 * config["num_layers"] * config["num_kv_heads"] * config["head_dim"] * FLOAT_BYTES  # key + value
    out = {"weights": weight_bytes(config, weights), "context": context_rows(contract, step) * per_row,
           "cache": (int(s["max_prompt"]) + int(s["max_new"])) * per_row}
    out["total"] = out["weights"] + out["context"] + out["cache"]
    return out


def floor_ms(total_bytes: float, gbps: Optional[float]) -> Optional[float]:
    """Milliseconds ``total_bytes`` take at ``gbps`` GB/s (None without a bandwidth)."""
    return total_bytes / (gbps * 1e9) * 1e3 if gbps else None


def bandwidth_for(peaks: Dict, threads: int) -> Optional[float]:
    """The measured read bandwidth (GB/s) at ``threads`` threads from the machine peaks (peak_probe.machine_peaks:
    the best of the probes around the runs), or None where it was not measured."""
    from .peak_probe import peak_at

    return peak_at(peaks, "read_bw", threads)


def annotate(row: Dict, config: Dict, contract: Dict, peaks: Dict) -> None:
    """Add the decode step's floor to a benchmark row: bytes read per step, the floor in ms at the measured bandwidth,
    and the share of that bandwidth the measured step reached (the opening's exact steps too, where timed)."""
    gbps = bandwidth_for(peaks, row["threads"])
    sel = step_bytes(config, contract, row.get("weights", "fp32"))
    row["decode_read_mb"] = sel["total"] / 1e6
    row["decode_read_breakdown_mb"] = {k: v / 1e6 for k, v in sel.items() if k != "total"}
    row["decode_floor_ms"] = floor_ms(sel["total"], gbps)
    if row["decode_floor_ms"] and row.get("decode_ms_per_token"):
        row["decode_bandwidth_share"] = row["decode_floor_ms"] / row["decode_ms_per_token"]
    if contract["attention"] == "squeezed" and row.get("opening_ms_per_token"):
        exact = step_bytes(config, contract, row.get("weights", "fp32"), "exact")
        row["opening_floor_ms"] = floor_ms(exact["total"], gbps)


__all__ = ["WEIGHT_BYTES", "annotate", "bandwidth_for", "context_rows", "floor_ms", "step_bytes", "weight_bytes",
           "weights_per_layer"]
