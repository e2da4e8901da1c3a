"""TFLite / LiteRT (.tflite) through litert-torch; runs on the ai-edge-litert interpreter (XNNPACK delegate).

The Android GPU-delegate compatibility verdict of TensorFlow's TFLite analyzer goes into the manifest.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .base import Backend, ExportOptions, Runner, register, versions_of


class LiteRTRunner(Runner):
    runtime = "LiteRT interpreter (XNNPACK)"

    def __init__(self, path: Path, threads: Optional[int]):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(x))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class LiteRTProgramRunner(Runner):
    """Named signatures of one .tflite file (one per method), run with the interpreter's signature runners.
    Inputs are matched by name; outputs come back in the method's declared order (litert-torch names them
    output_0, output_1, ...)."""

    runtime = "LiteRT interpreter (XNNPACK)"

    def __init__(self, path: Path, methods, threads: Optional[int]):
        from ai_edge_litert.interpreter import Interpreter

        self.table = methods
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self._runners = {}

    def run(self, method, feed):
        from squeeze_mobile.errors import SqueezeError

        if method not in self.table:
            raise SqueezeError(f"this model has no signature {method!r}; it has {', '.join(self.table)}")
        if method not in self._runners:
            runner = self.interpreter.get_signature_runner(method)
            dtypes = {n: d["dtype"] for n, d in runner.get_input_details().items()}
            ours = {i.get("tensor", i["name"]): i["name"] for i in self.table[method]["inputs"]}
            outputs = sorted(runner.get_output_details(), key=_output_index)
            self._runners[method] = (runner, {t: (ours.get(t, t), d) for t, d in dtypes.items()}, outputs)
        runner, inputs, outputs = self._runners[method]
        missing = [name for name, _ in inputs.values() if name not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        # the converter narrows int64 inputs (token ids, lengths) to int32: the manifest records the file's dtypes
        result = runner(**{t: np.ascontiguousarray(feed[name], dtype=d) for t, (name, d) in inputs.items()})
        return {name: result[key] for name, key in zip(self.table[method]["outputs"], outputs)}

    def __call__(self, x):
        return self.run("forward", {"input": x})["logits"]


WEIGHT_RECIPES = {"int8": "dynamic_wi8_afp32", "int4": "dynamic_wi4b32_afp32"}


def quantize_weights(path: Path, weights: str) -> dict:
    """Weight quantization of a converted .tflite in place with the LiteRT quantizer (ai-edge-quantizer): int8 =
    per-channel int8 weights, int4 = blocks of 32; activations stay float (dynamic range: the CPU kernels
    quantize them on the fly, the GPU delegate dequantizes the weights)."""
    from ai_edge_quantizer import quantizer, recipe

    from export.quiet import quiet
    from squeeze_mobile.errors import SqueezeError

    if weights not in WEIGHT_RECIPES:
        raise SqueezeError(f"--weights must be fp32, {', '.join(WEIGHT_RECIPES)} for tflite; got {weights!r}")
    name = WEIGHT_RECIPES[weights]
    with quiet():
        q = quantizer.Quantizer(str(path))
        q.load_quantization_recipe(getattr(recipe, name)())
        q.quantize().export_model(str(path), overwrite=True)
    return {"tool": "ai-edge-quantizer", "recipe": name, "weights": weights}


def signatures_of(path: Path, program) -> dict:
    """The methods' signatures with the dtypes the .tflite file declares (int64 inputs become int32)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    out = {}
    for m in program.methods:
        sig = m.signature()
        declared = interpreter.get_signature_runner(m.name).get_input_details()
        tensors = tensor_names(m)
        for entry in sig["inputs"]:
            tensor = tensors[entry["name"]]
            if tensor != entry["name"]:
                entry["tensor"] = tensor   # the signature's own name for it (list arguments are numbered)
            if tensor in declared:
                entry["dtype"] = np.dtype(declared[tensor]["dtype"]).name
        out[m.name] = {"graph": m.name, **sig}
    return out


def tensor_names(method) -> dict:
    """Input name -> the signature input litert-torch makes of it: a keyword argument keeps its name, the items
    of a list argument become <argument>_<index>."""
    names = {}
    for key, value in method.call_kwargs({n: n for n in method.inputs}).items():
        if isinstance(value, (list, tuple)):
            names.update({item: f"{key}_{i}" for i, item in enumerate(value)})
        else:
            names[value] = key
    return names


def _output_index(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else 0


def gpu_compatibility(path: Path) -> dict:
    """Run TensorFlow's TFLite analyzer with the GPU-delegate check; return verdict + offending ops."""
    import tensorflow as tf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    report = buf.getvalue()
    incompatible = sorted(set(re.findall(r"GPU COMPATIBILITY WARNING: Not supported op (\w+)", report)))
    reasons = sorted(set(l.strip() for l in report.splitlines() if "GPU COMPATIBILITY WARNING" in l))
    compatible = "GPU COMPATIBILITY WARNING" not in report and "Your model looks compatible with GPU delegate" in report
    ops = sorted(set(re.findall(r"Op#\d+ (\w+)\(", report)))
    return {
        "android_gpu_delegate": "compatible" if compatible else "incompatible",
        "incompatible_ops": incompatible,
        "warnings": reasons[:20],
        "ops": ops,
    }


@register
class LiteRTBackend(Backend):
    name = "tflite"
    suffix = ".tflite"
    runtime = LiteRTRunner.runtime

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}.tflite"

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import litert_torch

        edge_model = litert_torch.convert(module, (example,))
        edge_model.export(str(dest))
        return {"gpu_delegate": gpu_compatibility(dest)}

    def load(self, path, threads=None):
        return LiteRTRunner(path, threads)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """Every method as a signature of one .tflite (weights shared between signatures), static shapes."""
        import litert_torch
        import torch

        converter = None
        with torch.no_grad():
            for m in program.methods:
                kwargs = m.call_kwargs(m.inputs)
                converter = (litert_torch.signature(m.name, m.module, sample_kwargs=kwargs) if converter is None
                             else converter.signature(m.name, m.module, sample_kwargs=kwargs))
            edge_model = converter.convert()
        edge_model.export(str(dest))
        quantized = quantize_weights(dest, opts.weights) if opts.weights != "fp32" else None
        return {"gpu_delegate": gpu_compatibility(dest), **({"weight_quantization": quantized} if quantized else {}),
                "methods": signatures_of(dest, program)}

    def load_program(self, path, methods, threads=None, profile=False):
        return LiteRTProgramRunner(path, methods, threads)

    def tool_versions(self):
        return versions_of("torch", "litert-torch", "ai-edge-litert", "tensorflow")
