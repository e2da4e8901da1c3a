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
PTE_WEIGHT_SCHEMES = {"int8": {"bits": 8, "granularity": "per output channel"},
                      "int4": {"bits": 4, "granularity": "groups of 32 along the input", "group_size": 32}}


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
        """An nn.Embedding stored as int8 rows with one fp32 scale per row (symmetric)."""

        def __init__(self, weight: "torch.Tensor"):
            super().__init__()
            w = weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=2 ** -24)
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale)
            self._op = _embedding_byte_op()

        def forward(self, indices):
            return self._op(self.qweight, self.scales, None, -128, 127, indices)

    return QuantizedEmbedding


def quantize_program_weights(modules: Dict[str, "torch.nn.Module"], weights: str):
    """A copy of ``modules`` (one copy for all: methods keep sharing their weights) with every nn.Linear quantized
    for XNNPACK (dynamic int8 activations x int8 per-channel / int4 grouped weights) and every nn.Embedding as
    int8 rows. A tied output head gets its own quantized copy of the table. Returns (modules, record)."""
    import copy

    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    if weights not in PTE_WEIGHT_SCHEMES:
        raise SqueezeError(f"--weights {weights!r} has no ExecuTorch scheme; use one of {', '.join(PTE_WEIGHT_SCHEMES)}")
    scheme = PTE_WEIGHT_SCHEMES[weights]
    names = list(modules)
    copies = copy.deepcopy([modules[n] for n in names])  # one deepcopy: shared submodules stay shared
    linear = embedding = 0
    linear_params = embedding_params = 0
    seen = set()
    for root in copies:
        for m in root.modules():
            if isinstance(m, torch.nn.Linear) and id(m) not in seen:
                seen.add(id(m))
                if m.weight.shape[1] % scheme.get("group_size", 1):
                    raise SqueezeError(f"--weights {weights}: a linear's input size {m.weight.shape[1]} is not a "
                                       f"multiple of the group size {scheme['group_size']}")
                m.weight = torch.nn.Parameter(m.weight.detach().clone(), requires_grad=False)  # untie from the table
                linear += 1
                linear_params += m.weight.numel()
    granularity = PerAxis(0) if weights == "int8" else PerGroup(scheme["group_size"])
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8 if weights == "int8" else torch.int4,
                                                   weight_granularity=granularity)
    done = set()
    for root in copies:
        quantize_(root, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and id(m) not in done
                  and not done.add(id(m)))
    QuantizedEmbedding = _quantized_embedding_cls()
    replaced = {}
    for root in copies:
        for parent in list(root.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Embedding):
                    if id(child) not in replaced:
                        replaced[id(child)] = QuantizedEmbedding(child.weight)
                        embedding += 1
                        embedding_params += child.weight.numel()
                    setattr(parent, child_name, replaced[id(child)])
    record = {"tool": "torchao quantize_ (Int8DynamicActivationIntxWeightConfig) + ExecuTorch quantized embedding",
              "linear": {"count": linear, "weights": f"int{scheme['bits']} symmetric, {scheme['granularity']}",
                         "activations": "int8 per token, quantized dynamically at run time", "parameters": linear_params,
                         "kernel": "XNNPACK dynamically quantized fully connected"},
              "embedding": {"count": embedding, "weights": "int8 symmetric, one scale per row",
                            "parameters": embedding_params,
                            "kernel": "quantized_decomposed::embedding_byte (ExecuTorch quantized kernel library)"}}
    return dict(zip(names, copies)), record
