"""ONNX (.onnx) through the torch.onnx dynamo exporter; runs on onnxruntime (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .base import Backend, ExportOptions, Runner, register, versions_of

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxRunner(Runner):
    runtime = "onnxruntime (CPU)"

    def __init__(self, path: Path, threads: Optional[int]):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


@register
class OnnxBackend(Backend):
    name = "onnx"
    suffix = ".onnx"
    runtime = OnnxRunner.runtime
    precisions = ("fp32", "fp16")

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}.onnx"

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import onnx
        import torch

        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False,
        )
        model = program.model_proto
        if opts.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # fp16 weights and activations inside; the graph keeps fp32/uint8 I/O for the app
            import onnx_ir

            model = convert_float_to_float16(model, keep_io_types=True)
            # the converter appends the input cast nodes at the end of the graph: restore topological order
            ir_model = onnx_ir.serde.deserialize_model(model)
            ir_model.graph.sort()
            model = onnx_ir.serde.serialize_model(ir_model)
        model.producer_version = torch.__version__.split("+")[0]
        onnx.checker.check_model(model)
        with open(dest, "wb") as fh:
            fh.write(model.SerializeToString(deterministic=True))
        return {"opset": OPSET, "nodes": len(model.graph.node)}

    def load(self, path, threads=None):
        return OnnxRunner(path, threads)

    def tool_versions(self):
        return versions_of("torch", "onnx", "onnxscript", "onnxruntime")
