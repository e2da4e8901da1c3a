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

    def tool_versions(self):
        return versions_of("torch", "litert-torch", "ai-edge-litert", "tensorflow")
