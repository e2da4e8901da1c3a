"""The arithmetic floor of a decoder's prompt: the multiply-adds a prompt of P tokens costs at the artifact's static
shapes, over this machine's measured arithmetic peaks (bench/native/peak_probe.c: fp32 FMA, int8 dot product).

A prompt is not bound by memory the way a decode step is (bench/memory_floor.py): every weight read serves P tokens,
and attention over the fixed context is a matrix product of P query rows. So its floor is arithmetic, and the ratio of
two artifacts' floors is the most their prompt speeds can differ on any machine. The count follows the graphs:

- weights: every layer's linears for each of the P tokens, the output head once (only the last token's logits);
- attention: a query head scores every key row its part holds and weighs every value row (2 x head_dim multiply-adds
  per row), masked rows included (the shapes are static): full attention's ``max_context`` rows, the question's cache
  (``max_prompt + max_new`` rows) and the call's own P tokens;
- Squeezed Attention: the tokens before the exact tail (``exact_tail``) read the rows a selecting step reads (sinks,
  window, kept and followed slots, one centroid and one mean value per cluster -- the centroid products the lookup
  scores are those same summary rows); the exact tail's tokens read every row of the squeezed layout, as full
  attention does. The lookup's ranking and gathers are left out (no multiply-adds), so this stays a lower bound.

Weights at int8 or int4 are multiplied at the int8 dot-product peak (XNNPACK quantizes the activations dynamically and
runs integer products; int4 must be unpacked first, so the int8 rate bounds it from above), attention at the fp32 peak.
"""

from __future__ import annotations

from typing import Dict, Optional

from .memory_floor import context_rows, weights_per_layer
from .peak_probe import peak_at

INTEGER_WEIGHTS = ("int8", "int4")


def prompt_macs(config: Dict, contract: Dict, tokens: int) -> Dict[str, float]:
    """{weights, attention, total}: the multiply-adds of one ``tokens``-token prompt (see the module docstring)."""
    s = contract["shapes"]
    cache = int(s["max_prompt"]) + int(s["max_new"])
    per_row = config["num_layers"] * config["num_heads"] * config["head_dim"] * 2   # one key and one value, all layers
    weights = tokens * config["num_layers"] * weights_per_layer(config) + config["vocab_size"] * config["hidden_size"]
    if contract["attention"] == "full":
        rows = tokens * (context_rows(contract) + cache + tokens)
    else:
        from squeezed_attention.settings import exact_span

        head, start = exact_span(tokens, int(contract.get("exact_head") or 0), int(contract.get("exact_tail") or 0))
        selecting = start - head     # one call; a call's own tokens are its new rows
        exact = tokens - selecting   # the exact head and tail (settings.exact_span)
        rows = (selecting * (context_rows(contract, "decode") + cache + selecting)
                + exact * (context_rows(contract, "exact") + cache + exact))
    return {"weights": float(weights), "attention": float(rows * per_row), "total": float(weights + rows * per_row)}


def floor_ms(macs: Dict[str, float], weights: str, peaks: Dict, threads: int) -> Optional[float]:
    """The prompt's floor in ms: its weight products at the peak their precision runs at, its attention at fp32."""
    fp32 = peak_at(peaks, "fp32", threads)          # GOP/s: an FMA is 2 ops
    wide = peak_at(peaks, "int8", threads) if weights in INTEGER_WEIGHTS else fp32
    if not fp32 or not wide:
        return None
    return (2 * macs["weights"] / (wide * 1e9) + 2 * macs["attention"] / (fp32 * 1e9)) * 1e3


def annotate(row: Dict, config: Dict, contract: Dict, peaks: Dict) -> None:
    """Add the max-prompt prefill's floor to a benchmark row: its multiply-adds, the floor in ms at the measured peaks
    and the share of the peak the measured prefill reached."""
    tokens = row.get("prompt_tokens")
    if not tokens:
        return
    macs = prompt_macs(config, contract, int(tokens))
    row["prompt_gmacs"] = macs["total"] / 1e9
    row["prompt_gmacs_breakdown"] = {k: v / 1e9 for k, v in macs.items() if k != "total"}
    row["prompt_floor_ms"] = floor_ms(macs, row.get("weights", "fp32"), peaks, row["threads"])
    if row["prompt_floor_ms"] and row.get("prompt_prefill_ms"):
        row["prompt_peak_share"] = row["prompt_floor_ms"] / row["prompt_prefill_ms"]


__all__ = ["annotate", "floor_ms", "prompt_macs"]
