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
