"""Static int8 post-training quantization shared by the backends: the PT2E flow (torch.export -> prepare_pt2e with
the format's own quantizer -> calibrate on real views -> convert_pt2e), the activation-observer choice, and the
settings every int8 record carries.

Each format quantizes with its field's own tool (see the backends): ExecuTorch with the XNNPACK quantizer,
LiteRT with litert-torch's PT2E quantizer or the LiteRT quantizer, Core ML with ExecuTorch's Core ML quantizer,
ONNX with onnxruntime.quantization. Weights are per-channel symmetric int8 everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Dict, List, Sequence

from squeeze_mobile.errors import SqueezeError

if TYPE_CHECKING:  # annotations only: the CLI imports this module to build its parser, without torch
    import torch

# calibration views (export.calibration builds them)
DEFAULT_VIEWS = 12
MAX_VIEWS = 512

# Activation observers: MinMax keeps every calibration value in range (fast at 5.5 GMACs); histogram picks the
# range that minimises the quantization error of the observed distribution (slower, clips outliers).
OBSERVERS = ("minmax", "histogram")
DEFAULT_OBSERVER = "minmax"


def activation_observer(name: str):
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    if name not in OBSERVERS:
        raise SqueezeError(f"unknown activation observer {name!r}; use one of {', '.join(OBSERVERS)}")
    return (MinMaxObserver if name == "minmax" else HistogramObserver).with_args(eps=2 ** -12)


def with_observer(config, observer: str):
    """A PT2E QuantizationConfig (torchao's or litert-torch's dataclass) with its activation observer replaced;
    fixed-range specs (sigmoid) and the weight spec stay as the quantizer defines them."""
    ctr = activation_observer(observer)
    spec = config.input_activation
    if spec is None:
        return config
    new = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    out = config.output_activation
    return dataclasses.replace(config, input_activation=new,
                               output_activation=new if out is spec else
                               (dataclasses.replace(out, observer_or_fake_quant_ctr=ctr) if out is not None else None))


def pt2e_quantize(module: "torch.nn.Module", example: "torch.Tensor", quantizer, calibration: Sequence["torch.Tensor"],
                  fold_quantize: bool = True):
    """torch.export -> prepare_pt2e -> run every calibration batch -> convert_pt2e; returns the quantized
    GraphModule (fake-quantized in PyTorch: quantize/dequantize around each op, as the runtime will compute)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise SqueezeError("static int8 quantization needs at least one calibration view")
    with torch.no_grad():
        graph = torch.export.export(module, (example,), strict=False).module()
        prepared = prepare_pt2e(graph, quantizer)
        for x in calibration:
            prepared(x)
        return convert_pt2e(prepared, fold_quantize=fold_quantize)


def run_graph(graph, inputs: Sequence["torch.Tensor"]):
    """Logits of a (quantized) GraphModule on numpy-compatible batches, as one numpy array."""
    import numpy as np
    import torch

    with torch.no_grad():
        return np.concatenate([graph(torch.as_tensor(x)).numpy() for x in inputs])


def simulate(graph, opts) -> Dict:
    """The fake-quantized PyTorch graph on the verification views (ExportOptions.extra['reference']): what the PT2E
    quantization predicts, beside what the runtime gives. {} when no verification set was passed."""
    vset = opts.extra.get("reference")
    if vset is None:
        return {}
    from export.verify import compare

    out = run_graph(graph, vset.inputs_for(opts.spec))[:len(vset.names)]
    res = compare(vset.reference, out, vset.names, "int8")
    keys = ("status", "sqnr_db", "psnr_db", "top1_agreement", "top5_agreement", "softmax_kl", "max_abs_error")
    return {"what": "PT2E fake-quantized PyTorch graph (simulation, not the runtime)", **{k: res[k] for k in keys}}


def calibration_tensors(opts) -> List["torch.Tensor"]:
    """The calibration batches an int8 export was given (ExportOptions.extra['calibration'])."""
    import torch

    calib = opts.extra.get("calibration")
    if not calib:
        raise SqueezeError("int8 export needs calibration views (export_squeezetime builds them from real video)")
    return [torch.as_tensor(x) for x in calib]


def settings(opts, **extra) -> Dict:
    """What every int8 record says about the scheme; the backend adds its tool and specifics."""
    return {"scheme": "static", "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor",
            "activation_observer": opts.extra.get("observer", DEFAULT_OBSERVER),
            "calibration_batches": len(opts.extra.get("calibration") or []), **extra}


# --------------------------------------------------------------------------------------- weight-only (programs)
# ExecuTorch's LLM recipe: linears as dynamically quantized int8 activations x int8 / 4-bit grouped weights
# (torchao quantize_; XNNPACK runs them as its dynamically quantized fully-connected kernels) and the embedding
# table as int8 rows read by ExecuTorch's quantized embedding kernel.
#
# int4 stores llama.cpp's grids, so a model read from a Q4_1 / Q8_0 GGUF (the shipped SmolLM2) keeps its own values
# instead of being rounded a second time (re-rounding Q4_1 onto symmetric 4-bit groups lost a third of the next-token
# agreement with fp32): the layers' linears as 4-bit ASYMMETRIC blocks of 32 (w = d q + lo, q in 0..15), run as
# XNNPACK's symmetric 4-bit groups (codes q - 8, scale d; XNNPACK stores the scale as bf16) plus the blocks'
# offsets lo + 8 d applied to the input's block sums (two small float products per linear: x -> block sums ->
# offsets); the output head int8 per channel (XNNPACK's grouped kernels are 4-bit only); the embedding table as
# 8-bit symmetric blocks of 32 with scale max/127 (Q8_0's grid, exact), read by the quantized embedding kernel.
PTE_BLOCK = 32
PTE_WEIGHT_SCHEMES = {"int8": {"bits": 8, "granularity": "per output channel"},
                      "int4": {"bits": 4, "granularity": "asymmetric blocks of 32 along the input (llama.cpp Q4_1's "
                                                        "grid) as symmetric 4-bit groups plus block offsets",
                               "group_size": PTE_BLOCK}}


def _embedding_byte_op():
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  registers quantized_decomposed ops
    import torch

    return torch.ops.quantized_decomposed.embedding_byte.default


def load_quantized_kernels() -> bool:
    """Register ExecuTorch's quantized CPU kernels (the embedding_byte an int8 table needs) with the runtime this
    process uses; an app links the same kernel library. False when this ExecuTorch build has none."""
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:  # pragma: no cover - a build without the quantized kernels
        return False
    return True


def _quantized_embedding_cls():
    import torch

    class QuantizedEmbedding(torch.nn.Module):
        """An nn.Embedding stored as int8 codes with fp32 symmetric scales (max|x| / 127): one per row, or one per
        block of ``block`` along the row (llama.cpp Q8_0's grid; ExecuTorch's embedding_byte takes [rows, blocks]
        scales)."""

        def __init__(self, weight: "torch.Tensor", block: int = 0):
            super().__init__()
            from export.backends.weight_grids import symmetric_8bit

            w = weight.detach().float().numpy()
            codes, scales = symmetric_8bit(w, block or w.shape[1])
            self.register_buffer("qweight", torch.from_numpy(codes.reshape(w.shape)))
            self.register_buffer("scales", torch.from_numpy(scales if block else scales[:, 0]))
            self._op = _embedding_byte_op()

        def forward(self, indices):
            return self._op(self.qweight, self.scales, None, -128, 127, indices)

        def dequantized(self):
            scales = self.scales if self.scales.dim() == 2 else self.scales[:, None]
            return self.qweight.float() * scales.repeat_interleave(self.qweight.shape[1] // scales.shape[1], dim=1)

    return QuantizedEmbedding


def _block_offset_linear_cls():
    import torch

    class BlockOffsetLinear(torch.nn.Module):
        """A linear whose weight is d (q - 8) + offset per block of ``block`` inputs: the symmetric part is the
        wrapped (quantized) linear, the offsets come back as (block sums of x) @ offsets^T, two small float
        products (a 0/1 block-sum matrix, then the [out, blocks] offsets) that XNNPACK runs as fully connected."""

        def __init__(self, inner: "torch.nn.Linear", offsets: "torch.Tensor", block: int):
            super().__init__()
            self.inner = inner
            blocks = offsets.shape[1]
            self.register_buffer("block_sum", torch.eye(blocks).repeat_interleave(block, dim=1))   # [blocks, in]
            self.register_buffer("offsets", offsets.float().contiguous())                          # [out, blocks]

        def forward(self, x):
            sums = torch.nn.functional.linear(x, self.block_sum)
            # the wrapped module's weight as plain aten.linear (a host Linear may route to a native GEMV)
            return (torch.nn.functional.linear(x, self.inner.weight, self.inner.bias)
                    + torch.nn.functional.linear(sums, self.offsets))

    return BlockOffsetLinear


def _bf16(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    return t.to(torch.bfloat16).float()


def quantize_program_weights(modules: Dict[str, "torch.nn.Module"], weights: str):
    """A copy of ``modules`` (one copy for all: methods keep sharing their weights) quantized for XNNPACK: every
    nn.Linear as dynamic int8 activations x int8 per-channel (``int8``) or, for ``int4``, the layers' linears on
    llama.cpp's Q4_1 grid (symmetric 4-bit groups + block offsets) and the output head int8 per channel; every
    nn.Embedding as int8 codes (per row for ``int8``, Q8_0's blocks of 32 for ``int4``). A tied output head gets
    its own quantized copy of the table. Returns (modules, record); the record carries the largest difference
    between a stored weight (as the kernels read it: XNNPACK's bf16 group scales) and the float weight, per kind."""
    import copy

    import numpy as np
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    from export.backends.weight_grids import asymmetric_4bit

    if weights not in PTE_WEIGHT_SCHEMES:
        raise SqueezeError(f"--weights {weights!r} has no ExecuTorch scheme; use one of {', '.join(PTE_WEIGHT_SCHEMES)}")
    scheme = PTE_WEIGHT_SCHEMES[weights]
    names = list(modules)
    copies = copy.deepcopy([modules[n] for n in names])  # one deepcopy: shared submodules stay shared
    tables = {(m.num_embeddings, m.embedding_dim) for root in copies for m in root.modules()
              if isinstance(m, torch.nn.Embedding)}
    layers, heads, seen = [], [], set()
    for root in copies:
        for m in root.modules():
            if isinstance(m, torch.nn.Linear) and id(m) not in seen:
                seen.add(id(m))
                is_head = weights == "int4" and (m.out_features, m.in_features) in tables
                if not is_head and m.weight.shape[1] % scheme.get("group_size", 1):
                    raise SqueezeError(f"--weights {weights}: a linear's input size {m.weight.shape[1]} is not a "
                                       f"multiple of the group size {scheme['group_size']}")
                m.weight = torch.nn.Parameter(m.weight.detach().clone(), requires_grad=False)  # untie from the table
                (heads if is_head else layers).append(m)
    errors = {}
    floats = {id(m): m.weight.detach().clone() for m in layers + heads}
    int8_config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if weights == "int8":
        _quantize_linears(copies, set(map(id, layers)), int8_config)
    else:
        grids = {}
        for m in layers:
            q, d, lo = asymmetric_4bit(m.weight.numpy(), PTE_BLOCK)
            grids[id(m)] = (torch.from_numpy(q.astype(np.int8) - 8).reshape(m.weight.shape), torch.from_numpy(d),
                            torch.from_numpy(lo + 8 * d))
        _quantize_linears(copies, set(grids), Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(PTE_BLOCK)))
        _quantize_linears(copies, set(map(id, heads)), int8_config)
        BlockOffsetLinear = _block_offset_linear_cls()
        worst = 0.0
        wrapped = {}
        for root in copies:
            for parent in list(root.modules()):
                if isinstance(parent, BlockOffsetLinear):   # already wrapped (a module shared by another method)
                    continue
                for child_name, child in list(parent.named_children()):
                    if id(child) in grids:
                        if id(child) not in wrapped:
                            codes, d, offsets = grids[id(child)]
                            qw = child.weight   # torchao's IntxUnpackedToInt8Tensor: set the grid's own codes
                            qw.qdata.copy_(codes)
                            qw.scale.copy_(d)
                            qw.zero_point.zero_()
                            stored = (codes.float().unflatten(1, (-1, PTE_BLOCK)) * _bf16(d)[..., None]
                                      + offsets[..., None]).flatten(1)
                            worst = max(worst, float((stored - floats[id(child)]).abs().max()))
                            wrapped[id(child)] = BlockOffsetLinear(child, offsets, PTE_BLOCK)
                        setattr(parent, child_name, wrapped[id(child)])
        errors["linear_int4"] = worst
    for m in heads + (layers if weights == "int8" else []):
        stored = m.weight.dequantize()   # per-channel int8: fp32 scales, as XNNPACK reads them
        key = "head_int8" if m in heads else "linear_int8"
        errors[key] = max(errors.get(key, 0.0), float((stored - floats[id(m)]).abs().max()))
    QuantizedEmbedding = _quantized_embedding_cls()
    replaced = {}
    embedding_params = 0
    for root in copies:
        for parent in list(root.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Embedding):
                    if id(child) not in replaced:
                        replaced[id(child)] = QuantizedEmbedding(child.weight, PTE_BLOCK if weights == "int4" else 0)
                        embedding_params += child.weight.numel()
                        errors["embedding_int8"] = max(errors.get("embedding_int8", 0.0), float(
                            (replaced[id(child)].dequantized() - child.weight.detach().float()).abs().max()))
                    setattr(parent, child_name, replaced[id(child)])
    linear_params = sum(m.weight.numel() for m in layers)
    record = {"tool": "torchao quantize_ (Int8DynamicActivationIntxWeightConfig) + ExecuTorch quantized embedding",
              "linear": {"count": len(layers), "weights": f"int{scheme['bits']} {'symmetric, ' if weights == 'int8' else ''}"
                                                          f"{scheme['granularity']}",
                         "activations": "int8 per token, quantized dynamically at run time", "parameters": linear_params,
                         "kernel": "XNNPACK dynamically quantized fully connected"},
              "embedding": {"count": len(replaced),
                            "weights": "int8 symmetric, " + ("blocks of 32 along the row, scale max/127 (llama.cpp "
                                                             "Q8_0's grid)" if weights == "int4" else "one scale per row"),
                            "parameters": embedding_params,
                            "kernel": "quantized_decomposed::embedding_byte (ExecuTorch quantized kernel library)"},
              "max_abs_weight_error": {k: round(v, 8) for k, v in errors.items()}}
    if heads:
        record["head"] = {"count": len(heads), "weights": "int8 symmetric, per output channel",
                          "parameters": sum(m.weight.numel() for m in heads),
                          "kernel": "XNNPACK dynamically quantized fully connected"}
    return dict(zip(names, copies)), record


def _quantize_linears(copies, ids, config):
    """torchao quantize_ on the linears whose id is in ``ids``, each once however many modules share it."""
    import torch
    from torchao.quantization import quantize_

    done = set()
    for root in copies:
        quantize_(root, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and id(m) in ids
                  and id(m) not in done and not done.add(id(m)))
