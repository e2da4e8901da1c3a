"""Core ML: an ML program (.mlpackage, iOS 17+, fp16 by default) and, where coremltools can produce it,
the legacy neural-network .mlmodel (iOS 14+). Both convert on Linux. Apple's runtime runs only on macOS;
elsewhere an .mlpackage is verified numerically by evaluating the saved MIL program op by op
(:mod:`export.backends.coreml_mil`; "MIL program evaluated on Linux (semantics of the saved file), not
Apple's runtime"), and the legacy .mlmodel, which cannot be read back as MIL, is checked structurally only.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

from . import coreml_mil
from .base import Backend, ExportOptions, Runner, TensorInfo, register, versions_of
from .coreml_mil import EVALUATOR

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MLPROGRAM_TARGET = "iOS17"
DEBUG_HANDLE_MAP = "executorch_debug_handle_mapping.json"
LEGACY_TARGET = "iOS14"
ON_MACOS = platform.system() == "Darwin"
LEGACY_NOT_RUN = "not run (needs macOS; a legacy .mlmodel cannot be evaluated as a MIL program)"


class CoreMLRunner(Runner):
    runtime = "Core ML (macOS)"

    def __init__(self, path: Path, threads: Optional[int] = None, compute_units: str = "ALL"):
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        self.input_dtype = np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict({INPUT_NAME: x.astype(np.float32)})[OUTPUT_NAME])


def _blas_threads(threads: int):
    """Limit numpy's BLAS threads while evaluating: the evaluator's matmuls are small, and spinning BLAS
    threads on a busy machine cost more than they give (3x slower seen on 2 shared cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it numpy keeps its default threads
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


class CoreMLMILRunner(Runner):
    """The saved ML program read back and evaluated op by op with numpy (any OS): the semantics of the file,
    every op's output rounded to its declared dtype. Not Apple's runtime (see coreml_mil).

    ``accumulation`` ('fp32' or 'fp16') is how conv / linear / matmul sum their products; ``accumulations``
    lists the modes that differ for this program (fp16 only for programs that compute in fp16).
    """

    runtime = EVALUATOR

    def __init__(self, path: Path, threads: int | None = None, accumulation: str = "fp32"):
        self.program = coreml_mil.MILProgram(path)
        if len(self.program.input_names) != 1 or len(self.program.output_names) != 1:
            raise SqueezeError(f"{Path(path).name}: the runner takes one input and one output; the ML program has "
                               f"inputs {self.program.input_names} and outputs {self.program.output_names}")
        self.accumulation = accumulation
        self.accumulations = ("fp32", "fp16") if self.program.computes_in_fp16 else ("fp32",)
        self.fp16_block = coreml_mil.FP16_BLOCK
        self.quantized = self.program.quantized
        self.threads = threads or 1
        self.evaluator = {
            "name": "squeeze-mobile MIL evaluator (numpy)",
            "semantics": "the ML program read back from the saved .mlpackage, op by op; every op's output rounded "
                         "to its declared dtype",
            "not": "Apple's Core ML runtime (macOS only)",
            "accumulation": "fp32" + (" (fp16 in accumulation_bracket)" if self.program.computes_in_fp16 else ""),
            "quantized": self.quantized,
            "mil_ops": dict(sorted(self.program.op_counts.items())),
        }

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with _blas_threads(self.threads):
            out = self.program.run({self.program.input_names[0]: np.asarray(x, dtype=np.float32)}, self.accumulation)
        return out[self.program.output_names[0]]


def _mil_ops(spec) -> List[dict]:
    """Operations of the ML program's main function: type, input names, output names."""
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ops = []

    def walk(b):
        for op in b.operations:
            ins = [a.name for arg in op.inputs.values() for a in arg.arguments if a.WhichOneof("binding") == "name"]
            outs = [o.name for o in op.outputs]
            dtype = op.attributes["dtype"].immediateValue.tensor.strings.values[0] if op.type == "cast" and "dtype" in op.attributes else None
            ops.append({"type": op.type, "inputs": ins, "outputs": outs, "dtype": dtype})
            for nested in op.blocks:
                walk(nested)

    walk(block)
    return ops


def _io(spec) -> Dict[str, List[TensorInfo]]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    def info(desc):
        arr = desc.type.multiArrayType
        dtype = ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()
        return TensorInfo(desc.name, [int(d) for d in arr.shape], dtype)

    return {"inputs": [info(d) for d in spec.description.input], "outputs": [info(d) for d in spec.description.output]}


def structural_report(path: Path, expect_input: TensorInfo, expect_classes: int, precision: str, allowed_batch_norms: int = 0) -> dict:
    """Check a Core ML artifact without running it; raises SqueezeError listing every problem found."""
    import coremltools as ct
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
    except Exception as exc:  # noqa: BLE001 - any parse failure is a broken artifact
        raise SqueezeError(f"coreml artifact {path.name} does not load: {str(exc).splitlines()[0][:160]}") from None
    problems = []
    io = _io(spec)
    ins, outs = io["inputs"], io["outputs"]
    if [i.name for i in ins] != [INPUT_NAME] or [o.name for o in outs] != [OUTPUT_NAME]:
        problems.append(f"I/O names {[i.name for i in ins]} -> {[o.name for o in outs]}, expected ['input'] -> ['logits']")
    elif ins[0].shape != list(expect_input.shape):
        problems.append(f"input shape {ins[0].shape}, expected {list(expect_input.shape)}")
    elif ins[0].dtype != "float32":
        problems.append(f"input dtype {ins[0].dtype}, expected float32")
    if outs and outs[0].shape and outs[0].shape[-1] != expect_classes:
        problems.append(f"output shape {outs[0].shape}, expected [..., {expect_classes}]")
    kind = spec.WhichOneof("Type")
    report = {"spec_version": spec.specificationVersion, "model_type": kind,
              "inputs": [i.to_dict() for i in ins], "outputs": [o.to_dict() for o in outs]}
    if kind == "mlProgram":
        target = getattr(ct.target, MLPROGRAM_TARGET)
        ops = _mil_ops(spec)
        unavailable = sorted({o["type"] for o in ops if not any(v <= target for v in SSAOpRegistry.core_ops.get(o["type"], {}))})
        if unavailable:
            problems.append(f"MIL ops not available at {MLPROGRAM_TARGET}: {', '.join(unavailable)}")
        fn_inputs = {i.name for i in spec.mlProgram.functions["main"].inputs}
        fn = spec.mlProgram.functions["main"]
        fn_outputs = set(fn.block_specializations[fn.opset].outputs)
        # casts are expected only at the boundary: fp32 input -> fp16 compute -> fp32 output
        boundary = [o for o in ops if o["type"] == "cast" and (set(o["inputs"]) & fn_inputs or set(o["outputs"]) & fn_outputs)]
        inner = [o for o in ops if o["type"] == "cast" and o not in boundary]
        if inner:
            problems.append(f"{len(inner)} unexpected cast op(s) inside the graph (e.g. {inner[0]['outputs'][0]})")
        if precision == "fp32" and boundary:
            problems.append(f"fp32 program has {len(boundary)} boundary cast(s)")
        if precision == "fp16" and len(boundary) != 2:
            problems.append(f"fp16 program should cast exactly at input and output, found {len(boundary)} boundary cast(s)")
        hist: Dict[str, int] = {}
        for o in ops:
            hist[o["type"]] = hist.get(o["type"], 0) + 1
        report.update({"deployment_target": MLPROGRAM_TARGET, "mil_ops": dict(sorted(hist.items())),
                       "casts": {"boundary": len(boundary), "inner": len(inner)}})
        # coremltools fuses the in-graph input normalisation (mul + add) into one batch_norm; any other is a
        # BN the rewrite failed to fold
        if hist.get("batch_norm", 0) > allowed_batch_norms:
            problems.append(f"{hist['batch_norm']} batch_norm op(s) left (BN folding failed)")
    elif kind == "neuralNetwork":
        layers: Dict[str, int] = {}
        for layer in spec.neuralNetwork.layers:
            t = layer.WhichOneof("layer")
            layers[t] = layers.get(t, 0) + 1
        report.update({"deployment_target": LEGACY_TARGET, "nn_layers": dict(sorted(layers.items()))})
        if not layers:
            problems.append("neural network has no layers")
    else:
        problems.append(f"unexpected Core ML model type {kind}")
    if problems:
        raise SqueezeError(f"coreml structural check failed for {path.name}: " + "; ".join(problems))
    report["status"] = "pass"
    return report


WEIGHT_THRESHOLD = 0  # coremltools skips weights of at most this many elements (its default, 2048, skips small convs)
COREML_OBSERVERS = {"minmax": "min_max", "histogram": "min_max"}  # the Core ML quantizer has no histogram observer


def _coreml_observer(observer: str) -> str:
    name = COREML_OBSERVERS.get(observer, "min_max")
    return name + (" (the Core ML quantizer has no histogram observer)" if observer == "histogram" else "")


def coreml_pt2e_quantizer(observer: str):
    """ExecuTorch's Core ML PT2E quantizer: int8 per-channel weights and uint8 per-tensor activations, both affine.
    The quantizer has one scheme for weights and activations; with 'symmetric' every activation that can be negative
    spends half its range (full-size trained model, PT2E simulation: 18.8 dB and a flipped top-1 vs 26.1 dB
    affine)."""
    import torch
    from coremltools.optimize.torch.quantization.quantization_config import LinearQuantizerConfig, QuantizationScheme
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    config = LinearQuantizerConfig.from_dict({"global_config": {
        "quantization_scheme": QuantizationScheme.affine, "activation_dtype": torch.quint8,
        "weight_dtype": torch.qint8, "weight_per_channel": True,
        "activation_observer": COREML_OBSERVERS.get(observer, "min_max"), "weight_observer": "min_max"}})

    class PatternsPresent(CoreMLQuantizer):
        """CoreMLQuantizer that runs only the pattern annotators whose anchor op occurs in the graph. Each annotator
        exports its pattern graphs (400+ torch.export calls, ~100 s on 2 cores, whatever the model's size); after
        the BN fold there is no batch_norm, and SqueezeTime has no matmul, so those patterns cannot match. Falls
        back to every annotator if ExecuTorch's private registry moves."""

        def _annotate_all_patterns(self, model, quantization_config, filter_fn=None):
            try:
                from executorch.backends.apple.coreml.quantizer._coreml_quantizer import (
                    _AnnotationConfig, _AnnotationPatternRegistry)
            except ImportError:  # pragma: no cover - another ExecuTorch version
                return super()._annotate_all_patterns(model, quantization_config, filter_fn)
            ops = {str(getattr(n.target, "__name__", n.target)).split(".")[0] for n in model.graph.nodes
                   if n.op == "call_function"}
            needs = {"bn": {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"},
                     "matmul": {"matmul", "bmm", "mm"}, "linear": {"linear", "addmm"}}
            for name, annotator in _AnnotationPatternRegistry.get_annotators().items():
                if "bn" in name.split("_") and not ops & needs["bn"]:
                    continue
                if name.startswith("matmul") and not ops & needs["matmul"]:
                    continue
                annotator(model, _AnnotationConfig.from_quantization_config(quantization_config), filter_fn)

    return PatternsPresent(config), "torchao PT2E + executorch CoreMLQuantizer (affine, per-channel weights)"


WEIGHT_SCHEMES = {
    "int8": "int8 per-channel symmetric",
    "int4": "layers: 4-bit blocks of 32 along the input dimension, w = d * (q - offset) with a float offset per block "
            "(llama.cpp Q4_1's grid, exact for a Q4_1 model); embedding and head: 8-bit symmetric blocks of 32, "
            "scale max/127 (Q8_0's grid); iOS 18 constexpr_blockwise_shift_scale",
}


def int8_weight_config(names=None):
    """coremltools' OptimizationConfig for int8 per-channel symmetric weights (SqueezeTime's weight-only int8 and
    the decoders' int8): every weight above WEIGHT_THRESHOLD elements, or only the constants in ``names``."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig

    op = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                 weight_threshold=0 if names is not None else WEIGHT_THRESHOLD)
    if names is not None:
        return OptimizationConfig(op_name_configs={name: op for name in names})
    return OptimizationConfig(global_config=op)


def block_producers(block):
    """({var name: the op producing it}, {var name: element count}) of an ML program block (a saved spec's)."""
    producer, numel = {}, {}
    for op in block.operations:
        for o in op.outputs:
            producer[o.name] = op
            dims = [d.constant.size for d in o.type.tensorType.dimensions]
            numel[o.name] = int(np.prod(dims)) if dims else 1
    return producer, numel


def quantization_structure(path: Path, scheme: str) -> dict:
    """What a quantized ML program holds, read from the saved spec: constexpr (int8) weights, activation
    quantize/dequantize ops, and the share of conv/linear weight elements stored in int8. Raises SqueezeError when
    the program is not quantized the way ``scheme`` ('w8a8' or 'weight_only') says."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    producer, numel = block_producers(block)
    counts: Dict[str, int] = {}
    quantized = total = 0
    for op in block.operations:
        counts[op.type] = counts.get(op.type, 0) + 1
        if op.type not in ("conv", "linear") or "weight" not in op.inputs:
            continue
        name = op.inputs["weight"].arguments[0].name
        n = numel.get(name, 0)
        src = producer.get(name)
        # a weight is int8 when it comes from a constexpr decompression (or a dequantize of an int8 constant)
        is_q = src is not None and (src.type.startswith("constexpr_") or src.type == "dequantize")
        total += n
        quantized += n if is_q else 0
    report = {"scheme": scheme, "constexpr_ops": sum(v for k, v in counts.items() if k.startswith("constexpr_")),
              "quantize_ops": counts.get("quantize", 0), "dequantize_ops": counts.get("dequantize", 0),
              "conv_linear_weight_elements": total, "int8_weight_elements": quantized,
              "int8_weight_fraction": quantized / total if total else 0.0}
    problems = []
    if not report["constexpr_ops"]:
        problems.append("no constexpr (int8) weights")
    if scheme == "w8a8" and not report["quantize_ops"]:
        problems.append("no activation quantize ops (W8A8 expected)")
    if scheme == "weight_only" and report["quantize_ops"]:
        problems.append(f"{report['quantize_ops']} activation quantize ops in a weight-only program")
    if total and report["int8_weight_fraction"] < 0.99:
        problems.append(f"only {report['int8_weight_fraction']:.0%} of the conv/linear weight elements are int8")
    if problems:
        raise SqueezeError(f"coreml int8 structural check failed for {Path(path).name}: " + "; ".join(problems))
    report["status"] = "pass"
    return report


def is_mlpackage(path: Path) -> bool:
    """A Core ML package as coremltools writes it (so a re-export may replace it): Manifest.json and
    Data/com.apple.CoreML/, nothing else at the top level. Any other directory is not ours to delete."""
    path = Path(path)
    try:
        top = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return (path.suffix == ".mlpackage" and (path / "Manifest.json").is_file()
            and (path / "Data" / "com.apple.CoreML").is_dir() and top <= {"Manifest.json", "Data", DEBUG_HANDLE_MAP})


def _float_example(example):
    # Core ML has no uint8 multi-array input: frames_uint8 graphs take float32 0..255 (the cast is a no-op)
    return example.float() if not example.is_floating_point() else example


@register
class CoreMLBackend(Backend):
    name = "coreml"
    suffix = ".mlpackage"
    runtime = CoreMLRunner.runtime if ON_MACOS else CoreMLMILRunner.runtime
    precisions = ("fp16", "fp32", "int8")
    default_precision = "fp16"
    deterministic = False  # the package manifest carries random item identifiers

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}.mlpackage"

    def targets(self, stem, opts):
        """fp32/fp16: the ML program and (best effort) the legacy .mlmodel. int8: W8A8 (PT2E with ExecuTorch's Core ML
        quantizer, then coremltools) and weight-only int8 (coremltools.optimize on the fp16 program)."""
        main = self.artifact_name(stem, opts)
        if opts.precision == "int8":
            return [{"role": "w8a8", "file": main, "convert": self.export_w8a8, "best_effort": False,
                     "options": {"int8_scheme": "w8a8"}},
                    {"role": "weight_only", "file": main.replace("_int8.mlpackage", "_int8_weights.mlpackage"),
                     "convert": self.export_weight_only, "best_effort": False, "options": {"int8_scheme": "weight_only"}}]
        out = [{"role": "main", "file": main, "convert": self.export, "best_effort": False}]
        if opts.coreml_legacy:
            out.append({"role": "legacy", "file": main.replace(".mlpackage", ".mlmodel"), "convert": self.export_legacy,
                        "best_effort": True})
        return out

    def export_w8a8(self, module, example, dest: Path, opts: ExportOptions):
        """int8 weights and activations: PT2E with ExecuTorch's CoreMLQuantizer (per-channel symmetric weights,
        uint8 activations), calibrated on real views, converted by coremltools into quantize/dequantize ops around
        fp16 compute and constexpr_affine_dequantize weights."""
        from export import quantize as q

        quantizer, tool = coreml_pt2e_quantizer(opts.extra.get("observer", q.DEFAULT_OBSERVER))
        graph = q.pt2e_quantize(module, _float_example(example), quantizer,
                                [_float_example(x) for x in q.calibration_tensors(opts)])
        extras = self._convert(graph, example, dest, ct_precision="fp16")
        record = {"tool": tool, "scheme_name": "W8A8", "compute_precision": "fp16 between quantized ops",
                  **q.settings(opts, weights="int8 per-channel affine", activations="uint8 per-tensor affine",
                               activation_observer=_coreml_observer(opts.extra.get("observer", q.DEFAULT_OBSERVER)))}
        record["int8_scheme"] = "w8a8"
        simulated = q.simulate(graph, opts)
        if simulated:
            record["pytorch_simulation"] = simulated
        return {**extras, "quantization": record}

    def export_weight_only(self, module, example, dest: Path, opts: ExportOptions):
        """int8 weights, fp16 activations: coremltools.optimize.coreml.linear_quantize_weights (per-channel symmetric)
        on the fp16 ML program; weight_threshold 0 so that no conv weight is skipped for being small (coremltools'
        default 2048 leaves the small convs of reduced widths in fp16), 1-D tensors (biases) stay fp16."""
        import coremltools as ct
        from coremltools.optimize.coreml import linear_quantize_weights

        import torch

        example = _float_example(example)
        ep = torch.export.export(module, (example,), strict=False).run_decompositions({})
        mlmodel = self._ct_convert(ep, example, ct.precision.FLOAT16)
        mlmodel = linear_quantize_weights(mlmodel, int8_weight_config())
        self._save(mlmodel, dest)
        return {"deployment_target": MLPROGRAM_TARGET, "coreml_input_dtype": "float32",
                "quantization": {"tool": "coremltools.optimize.coreml.linear_quantize_weights", "scheme": "weight-only",
                                 "int8_scheme": "weight_only", "weights": "int8 per-channel symmetric",
                                 "activations": "fp16 (not quantized)", "weight_threshold": WEIGHT_THRESHOLD,
                                 "calibration_batches": 0}}

    def _ct_convert(self, ep, example, precision):
        import coremltools as ct

        return ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MLPROGRAM_TARGET),
            compute_precision=precision,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            skip_model_load=True,
        )

    @staticmethod
    def _save(mlmodel, dest):
        mlmodel.short_description = "SqueezeTime video action recognition (squeeze-mobile)"
        mlmodel.save(str(dest))
        # coremltools writes ExecuTorch's debug-handle map (node id -> MIL ops, ~240 KB) into every package
        # converted from a torch.export program; it is for ExecuTorch's devtools, not for the app: drop it
        (Path(dest) / DEBUG_HANDLE_MAP).unlink(missing_ok=True)

    def _convert(self, module, example, dest, ct_precision: str):
        import coremltools as ct
        import torch

        example = _float_example(example)
        ep = torch.export.export(module, (example,), strict=False).run_decompositions({})
        self._save(self._ct_convert(ep, example, ct.precision.FLOAT16 if ct_precision == "fp16" else ct.precision.FLOAT32),
                   dest)
        return {"deployment_target": MLPROGRAM_TARGET, "coreml_input_dtype": "float32"}

    def export(self, module, example, dest: Path, opts: ExportOptions):
        return self._convert(module, example, dest, opts.precision)

    def export_legacy(self, module, example, dest: Path, opts: ExportOptions):
        """Neural-network .mlmodel for older iOS via TorchScript tracing; raises SqueezeError if impossible."""
        import coremltools as ct
        import torch

        example = _float_example(example)
        try:
            traced = torch.jit.trace(module.eval(), example, check_trace=False)
            mlmodel = ct.convert(
                traced,
                convert_to="neuralnetwork",
                minimum_deployment_target=getattr(ct.target, LEGACY_TARGET),
                inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
                outputs=[ct.TensorType(name=OUTPUT_NAME)],
                skip_model_load=True,
            )
            if opts.precision == "fp16":
                from coremltools.models.neural_network import quantization_utils

                mlmodel = quantization_utils.quantize_weights(mlmodel, nbits=16)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - report the converter's reason in one line
            first = next((l.strip() for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
            raise SqueezeError(f"coremltools cannot produce a legacy .mlmodel for this graph: {first[:200]}") from None
        mlmodel.save(str(dest))
        # the legacy format is not a MIL program: only Apple's runtime runs it, whatever this OS is
        return {"deployment_target": LEGACY_TARGET, "runtime": CoreMLRunner.runtime}

    def load(self, path, threads=None):
        """Apple's runtime on macOS; elsewhere the MIL evaluator (an .mlpackage only)."""
        if ON_MACOS:
            return CoreMLRunner(path, threads)
        return CoreMLMILRunner(path, threads)

    def replaceable(self, path: Path) -> bool:
        return is_mlpackage(path)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """Several methods (the decoder's split-plan stages) as functions of one .mlpackage (coreml_program)."""
        from . import coreml_program

        methods = coreml_program.export_program(program, dest, "fp32", weights=opts.weights)
        extras = {"methods": methods, "deployment_target": coreml_program.DEPLOYMENT_TARGET,
                  "functions": len(methods), "evaluated_by": None if ON_MACOS else coreml_mil.EVALUATOR}
        if opts.weights != "fp32":
            extras["quantization"] = {"tool": coreml_program.WEIGHT_TOOLS[opts.weights],
                                      "weights": WEIGHT_SCHEMES[opts.weights], "activations": "fp32 (not quantized)",
                                      **coreml_program.compressed_weights(dest)}
        return extras

    def load_program(self, path, methods, threads=None, profile=False):
        from .coreml_program import CoreMLProgramRunner

        if profile:
            raise SqueezeError("the Core ML runner has no operator profiler here (use Xcode's performance report)")
        return CoreMLProgramRunner(path, methods, threads)

    def cannot_run_here(self, extras=None):
        if ON_MACOS or not _is_legacy(extras):
            return None
        return LEGACY_NOT_RUN

    def cannot_time_here(self, extras=None):
        if ON_MACOS:
            return None
        return ("not timed off macOS: the MIL evaluator checks the saved program's numerics in numpy; its speed says "
                "nothing about Apple's runtime")

    def mil_cross_check(self, path: Path, vset, spec, precision: str) -> dict | None:
        """On macOS, where verification ran Apple's runtime, the same verification with the MIL evaluator, so
        that the two can be compared in the manifest; None elsewhere (the MIL evaluator already gave the numbers)
        and for a legacy .mlmodel."""
        if not ON_MACOS or Path(path).suffix != ".mlpackage":
            return None
        return evaluate_mil(path, vset, spec, precision)

    def structural_check(self, path: Path, opts: ExportOptions, num_classes: int = None):
        spec = opts.spec
        expect = TensorInfo(INPUT_NAME, list(spec.shape), "float32")
        report = structural_report(path, expect, num_classes, opts.precision if path.suffix == ".mlpackage" else "fp32",
                                   allowed_batch_norms=1 if spec.input_format == "frames_uint8" else 0)
        if opts.precision == "int8":
            report["quantization"] = quantization_structure(path, opts.extra.get("int8_scheme", "w8a8"))
        return report

    def tool_versions(self):
        return versions_of("torch", "coremltools", "numpy")  # numpy: the MIL evaluator off macOS


def _is_legacy(extras) -> bool:
    """Whether a manifest record / export extras describe the neural-network .mlmodel."""
    extras = extras or {}
    return (extras.get("container") == "mlmodel" or str(extras.get("file") or "").endswith(".mlmodel")
            or extras.get("deployment_target") == LEGACY_TARGET)


class _MILBackend:
    """CoreMLBackend with the MIL evaluator as its runner on every OS (for the macOS cross-check)."""

    name = "coreml"
    runtime = CoreMLMILRunner.runtime

    def cannot_run_here(self, extras=None):
        return None

    def load(self, path, threads=None):
        return CoreMLMILRunner(path, threads)


def evaluate_mil(path: Path, vset, spec, precision: str) -> dict:
    """Verify an .mlpackage with the MIL evaluator regardless of OS (verification metrics + bracket)."""
    from export.verify import verify_artifact

    return verify_artifact(_MILBackend(), Path(path), vset, spec, precision)
