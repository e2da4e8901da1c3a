"""Which low-bit weight scheme keeps the decoder? Next-token agreement with fp32 on real prose, per scheme.

Each scheme is applied to the PyTorch model (no export), the model runs teacher-forced over real text, and its
next-token predictions are compared with the fp32 model's: top-1 agreement and mean KL(fp32 || scheme) per
token. The ExecuTorch schemes are the export's own recipe (export.quantize.quantize_program_weights: torchao's
dynamically quantized int8 activations x int8 per-channel / 4-bit group weights, the int8 embedding); the
onnxruntime schemes are simulated on the weights only (their blockwise int8 activations are left out), with the
same block rules the .onnx export writes (export/backends/onnx_backend.py). The largest weight change of each
scheme is reported too: 0 means the scheme stores the model's values exactly (the shipped SmolLM2 GGUF is Q4_1 /
Q8_0, so a scheme with those grids loses nothing).

    python -m bench.weight_schemes [--model GGUF_OR_DIR] [--docs 6] [--tokens 384] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BLOCK = 32


def _asym4_min_max(w):
    """4-bit asymmetric blocks of BLOCK along the input, w = scale * q + min (min/max): the .onnx int4 layers."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    scale = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
    return (torch.round((b - lo) / scale).clamp(0, 15) * scale + lo).reshape(w.shape)


def _sym_blocks(w, bits: int):
    """Symmetric blocks of BLOCK with scale max|x| / (2^(bits-1) - 1) (llama.cpp Q8_0's grid for 8 bits)."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    top = 2 ** (bits - 1) - 1
    scale = b.abs().amax(-1, keepdim=True) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(b / scale).clamp(-top, top) * scale).reshape(w.shape)


def _ort_sym_blocks(w, bits: int):
    """onnxruntime's symmetric blocks: the largest-magnitude value maps to -2^(bits-1) (a signed scale), the
    rest round to the 2^bits levels of that grid."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    idx = b.abs().argmax(-1, keepdim=True)
    scale = -b.gather(-1, idx) / 2 ** (bits - 1)
    scale = torch.where(scale != 0, scale, torch.ones_like(scale))
    return (torch.round(b / scale).clamp(-2 ** (bits - 1), 2 ** (bits - 1) - 1) * scale).reshape(w.shape)


def _per_channel8(w):
    """Symmetric int8 per output row, scale max|w| / 127 (XNNPACK's QC8W head of the .pte int4)."""
    scale = w.abs().amax(-1, keepdim=True) / 127
    return torch.round(w / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-127, 127) * scale


def _sym4_groups(w):
    """torchao's symmetric 4-bit groups of BLOCK (codes -8..7, scale max|w| / 7.5): XNNPACK's only grouped kernels."""
    b = w.reshape(w.shape[0], -1, BLOCK)
    scale = b.abs().amax(-1, keepdim=True) / 7.5
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(b / scale).clamp(-8, 7) * scale).reshape(w.shape)


def _rewrite(model, layers, head=None, embedding=None):
    """A copy of ``model`` with its layers' linears, output head and embedding table replaced by fake-quantized
    values (``None``: kept in float). Returns (copy, largest weight change)."""
    m = copy.deepcopy(model)
    worst = 0.0
    with torch.no_grad():
        table = m.model.embed_tokens.weight.detach().clone()
        for mod in m.model.modules():
            if isinstance(mod, torch.nn.Linear):
                new = layers(mod.weight)
                worst = max(worst, float((new - mod.weight).abs().max()))
                mod.weight.copy_(new)
        head_w = head(table) if head else table.clone()
        emb_w = embedding(table) if embedding else table.clone()
        worst = max(worst, float((head_w - table).abs().max()), float((emb_w - table).abs().max()))
        m.lm_head.weight = torch.nn.Parameter(head_w, requires_grad=False)
        m.model.embed_tokens.weight = torch.nn.Parameter(emb_w, requires_grad=False)
    return m, worst


def _dynamic_int8(x):
    """XNNPACK's dynamic activation quantization: asymmetric int8 per token (row), range widened to hold 0."""
    lo = torch.minimum(x.amin(-1, keepdim=True), torch.zeros(()))
    hi = torch.maximum(x.amax(-1, keepdim=True), torch.zeros(()))
    scale = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    zero = torch.round(-128 - lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


class _Int8Head(torch.nn.Module):
    """The output head as XNNPACK runs an int8 one: int8 per-channel weights x dynamically quantized activations;
    ``smooth`` (per input channel) divides the activations and multiplies the weight's columns first (SmoothQuant)."""

    def __init__(self, weight, smooth=None):
        super().__init__()
        self.smooth = torch.ones(weight.shape[1]) if smooth is None else smooth
        self.weight = torch.nn.Parameter(_per_channel8(weight.detach() * self.smooth), requires_grad=False)

    def forward(self, x):
        return F.linear(_dynamic_int8(x / self.smooth), self.weight)


def _head_probe(model, alpha=None):
    """Layers and embedding as stored; the head int8 x dynamic int8 activations, with SmoothQuant scales
    s = max|x|^alpha / max|w|^(1 - alpha) per input channel when ``alpha`` is given, max|x| calibrated on one document
    of --tokens tokens starting at the source after the evaluation documents' first sources (the next rotation)."""
    m = copy.deepcopy(model)
    table = m.model.embed_tokens.weight.detach().clone()
    smooth = None
    if alpha is not None:
        seen = []
        hook = m.model.norm.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().flatten(0, -2)))
        checkpoint, docs, tokens = CHECKPOINT
        (calibration,) = real_prose(checkpoint.tokenizer, 1, tokens, first=docs)
        all_logits(m, [calibration])
        hook.remove()
        x_max = torch.cat(seen).abs().amax(0).clamp(min=1e-5)
        smooth = x_max ** alpha / table.abs().amax(0).clamp(min=1e-5) ** (1 - alpha)
    m.lm_head = _Int8Head(table, smooth)
    return m, float((m.lm_head.weight / m.lm_head.smooth - table).abs().max())


CHECKPOINT = []   # (the loaded checkpoint, documents, tokens each): for probes that calibrate on other prose


def _pte(model, weights: str):
    from export.quantize import quantize_program_weights

    modules, record = quantize_program_weights({"model": model}, weights)
    return modules["model"], max(record["max_abs_weight_error"].values())


SCHEMES = {
    "pte int8 (XNNPACK 8da8w: int8 activations per token x int8 per-channel weights, int8 embedding)":
        lambda m: _pte(m, "int8"),
    "pte int4 (XNNPACK: int8 activations per token x Q4_1's grid as 4-bit symmetric groups of 32 + block offsets; "
    "head int8 per channel; embedding Q8_0's blocks)":
        lambda m: _pte(m, "int4"),
    "onnx int8 (onnxruntime's 8-bit symmetric blocks of 32; embedding float), weights only":
        lambda m: _rewrite(m, lambda w: _ort_sym_blocks(w, 8), head=lambda w: _ort_sym_blocks(w, 8)),
    "onnxruntime's 4-bit symmetric blocks of 32 everywhere (the .onnx int4 before 2026-12-03), weights only":
        lambda m: _rewrite(m, lambda w: _ort_sym_blocks(w, 4), head=lambda w: _ort_sym_blocks(w, 4),
                           embedding=lambda w: _ort_sym_blocks(w, 4)),
    "onnx int4 (layers 4-bit asymmetric min/max blocks of 32; head + embedding 8-bit, scale max/127), weights only":
        lambda m: _rewrite(m, _asym4_min_max, head=lambda w: _sym_blocks(w, 8), embedding=lambda w: _sym_blocks(w, 8)),
    # Where the .pte int4's bytes could still go (it is 135 MB; the tied 49152 x 576 table is stored twice, 28 MB
    # as the int8 head, 28 MB as the Q8_0 embedding): the layers as they are (the GGUF's values), only the table's
    # two copies re-rounded, weights only.
    "table probe: head int8 per channel, embedding Q8_0 blocks (the .pte int4 today), layers as stored":
        lambda m: _rewrite(m, lambda w: w, head=_per_channel8, embedding=lambda w: _sym_blocks(w, 8)),
    "table probe: head int8 per channel, embedding 4-bit asymmetric groups of 32 (-14 MB), layers as stored":
        lambda m: _rewrite(m, lambda w: w, head=_per_channel8, embedding=_asym4_min_max),
    "table probe: head 4-bit symmetric groups of 32 (-13 MB), embedding Q8_0 blocks, layers as stored":
        lambda m: _rewrite(m, lambda w: w, head=_sym4_groups, embedding=lambda w: _sym_blocks(w, 8)),
    # the int8 head as XNNPACK runs it (its per-token int8 activations included), without and with SmoothQuant scales
    "head probe: int8 per channel x dynamic int8 activations, the rest as stored":
        lambda m: _head_probe(m),
    "head probe: int8 per channel x dynamic int8 activations, SmoothQuant scales alpha 0.5, the rest as stored":
        lambda m: _head_probe(m, 0.5),
}


def real_prose(tokenizer, docs: int, tokens: int, first: int = 0):
    """Token ids of real prose (squeezed_attention.corpus: Python's and the OS's licence texts), ``docs`` documents
    of ``tokens`` tokens, each starting at a different source (rotations first, first + 1, ...)."""
    from squeezed_attention.corpus import prose_of_tokens

    return [torch.tensor(tokenizer.encode("\n\n".join(prose_of_tokens(tokenizer, tokens, rotate=i)))[:tokens])
            for i in range(first, first + docs)]


def all_logits(model, docs):
    with torch.no_grad():
        return [model.step(x, model.new_cache(len(x)), logits="all") for x in docs]


def main(argv=None) -> int:
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.weights import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file or HF folder (default: the shipped SmolLM2 GGUF)")
    ap.add_argument("--docs", type=int, default=6, help="real-prose documents (default 6)")
    ap.add_argument("--tokens", type=int, default=384, help="tokens per document (default 384)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run only the schemes whose name contains this text (e.g. 'pte')")
    ap.add_argument("--out", default="squeezed_attention/results/weight_schemes",
                    help="report folder (default squeezed_attention/results/weight_schemes, where the README's numbers are)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    checkpoint = load_checkpoint(a.model)
    CHECKPOINT[:] = [checkpoint, a.docs, a.tokens]
    model = LlamaForCausalLM.from_checkpoint(checkpoint).eval()
    docs = real_prose(checkpoint.tokenizer, a.docs, a.tokens)
    reference = all_logits(model, docs)
    rows = []
    for name, make in SCHEMES.items():
        if a.only not in name:
            continue
        t0 = time.perf_counter()
        quantized, weight_change = make(model)
        agree = total = 0
        kl = 0.0
        for ref, got in zip(reference, all_logits(quantized, docs)):
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            total += ref.shape[0]
            kl += float(F.kl_div(F.log_softmax(got, -1), F.log_softmax(ref, -1), log_target=True, reduction="sum"))
        rows.append({"scheme": name, "top1_agreement": agree / total, "mean_kl": kl / total,
                     "max_weight_change": weight_change, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{agree / total:7.2%}  KL {kl / total:.4f}  max weight change "
              f"{'n/a' if weight_change is None else f'{weight_change:.2e}'}  {name}", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": checkpoint.source, "docs": len(docs), "tokens_per_doc": a.tokens,
              "command": "python -m bench.weight_schemes " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    lines = [f"# Weight schemes vs fp32 ({Path(str(checkpoint.source)).name}, {len(docs)} x {a.tokens} tokens of real prose, "
             "teacher-forced)", "", "| scheme | top-1 agreement | mean KL | max weight change |", "|---|---|---|---|"]
    for r in rows:
        change = "-" if r["max_weight_change"] is None else f"{r['max_weight_change']:.1e}"
        lines.append(f"| {r['scheme']} | {r['top1_agreement']:.1%} | {r['mean_kl']:.4f} | {change} |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'report.md'}")
    return 0


def _cli() -> int:
    from squeeze_mobile.errors import SqueezeError

    try:
        return main()
    except SqueezeError as exc:      # a bad --model, or more prose than ships with the machine
        print(f"weight_schemes: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_cli())
