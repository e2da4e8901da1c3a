"""ONNX (.onnx) through the torch.onnx dynamo exporter; runs on onnxruntime (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

from .base import Backend, ExportOptions, Runner, register, versions_of

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxRunner(Runner):
    runtime = "onnxruntime (CPU)"

    def __init__(self, path: Path, threads: Optional[int], profile: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._profile_dir = None
        if profile:
            import tempfile

            self._profile_dir = tempfile.mkdtemp(prefix="ort_profile_")
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(self._profile_dir) / "ort")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def operator_profile(self):
        """onnxruntime's profiler: one event per node execution (``<node>_kernel_time``)."""
        import json
        import shutil

        if self._profile_dir is None:
            return super().operator_profile()
        path = self.session.end_profiling()
        try:
            events = json.loads(Path(path).read_text(encoding="utf-8"))
        finally:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        suffix = "_kernel_time"
        return [{"op": e.get("args", {}).get("op_name", ""), "node": e["name"][:-len(suffix)], "us": float(e["dur"]),
                 "top_level": True}
                for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(suffix)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def run(self, method, feed):
        # one graph serves every method (the methods differ in a dynamic axis); feed it what it declares
        names = [i.name for i in self.session.get_inputs()]
        missing = [n for n in names if n not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        outs = self.session.run(None, {n: feed[n] for n in names})
        return dict(zip((o.name for o in self.session.get_outputs()), outs))


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

    def load_program(self, path, methods, threads=None, profile=False):
        return OnnxRunner(path, threads, profile)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """One ONNX graph for all methods: the widest method with its dynamic axes symbolic (the decoder's
        prefill and decode are the same graph at T = max_prompt and T = 1)."""
        import onnx
        import torch

        from squeeze_mobile.errors import SqueezeError

        graph = program.one_graph()
        if graph is None:
            raise SqueezeError(f"onnx holds one graph per file; methods {', '.join(program.names)} differ in more than "
                               "a dynamic axis")
        dims = {n: {axis: torch.export.Dim(sym, min=lo, max=hi) for axis, (sym, lo, hi) in axes.items()}
                for n, axes in graph.dynamic.items()}
        with torch.no_grad():
            exported = torch.onnx.export(
                graph.module, (), kwargs=graph.call_kwargs(graph.inputs), dynamo=True, opset_version=OPSET,
                input_names=list(graph.inputs), output_names=list(graph.outputs), external_data=False, verbose=False,
                dynamic_shapes=graph.call_kwargs({n: dims.get(n) for n in graph.inputs}) if dims else None,
            )
        model = exported.model_proto
        model.producer_version = torch.__version__.split("+")[0]
        onnx.checker.check_model(model)
        with open(dest, "wb") as fh:
            fh.write(model.SerializeToString(deterministic=True))
        return {"opset": OPSET, "nodes": len(model.graph.node),
                "methods": {m.name: {"graph": "main", **m.signature()} for m in program.methods}}

    def tool_versions(self):
        return versions_of("torch", "onnx", "onnxscript", "onnxruntime")
