"""ExecuTorch (.pte): torch.export -> to_edge_transform_and_lower with the XNNPACK partitioner (Android/CPU),
or the Core ML partitioner (iOS); runs with executorch.runtime (XNNPACK build only off Apple platforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

from export.quantize import load_quantized_kernels

from .base import Backend, ExportOptions, Runner, register, versions_of

PTE_BACKENDS = ("xnnpack", "coreml")
# ops a stateful (decoder) program keeps on ExecuTorch's portable CPU kernels under the Core ML delegate: coremltools
# 9 cannot convert them as the decoder uses them (float-typed index tensors, integer scatter_add updates)
COREML_CPU_OPS = ["aten.index.Tensor", "aten.index_put.default", "aten.scatter_add.default"]


def set_threads(threads: Optional[int]) -> None:
    """ExecuTorch's pybindings share one CPU threadpool; resize it when asked."""
    if not threads:
        return
    try:
        from executorch.extension.pybindings import portable_lib

        reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
        if reset is not None:
            reset(int(threads))
    except ImportError:  # pragma: no cover
        pass


class ExecuTorchRunner(Runner):
    runtime = "ExecuTorch (XNNPACK)"

    def __init__(self, path: Path, threads: Optional[int]):
        import torch
        from executorch.runtime import Runtime

        set_threads(threads)
        load_quantized_kernels()
        self._torch = torch
        self.program = Runtime.get().load_program(str(path))
        self.method = self.program.load_method("forward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x))])
        return out[0].numpy()


class ExecuTorchProgramRunner(Runner):
    """Named methods of one program; mutable state (e.g. a KV cache) stays in the runtime between calls.
    torch is used only for its tensor type, the container ExecuTorch's Python binding takes."""

    runtime = "ExecuTorch (XNNPACK)"

    def __init__(self, path: Path, methods, threads: Optional[int], profile: bool = False):
        import torch
        from executorch.runtime import Runtime

        set_threads(threads)
        self._torch = torch
        self.table = methods
        self.profile = profile
        load_quantized_kernels()  # int8 embedding tables of quantized-weight programs
        self.program = Runtime.get().load_program(str(path), enable_etdump=profile)
        # every method loaded now, as an app does at start-up: loading a method initialises its delegates (XNNPACK
        # packs the weights, hundreds of ms), which a lazy load would charge to the first prefill / decode step
        self._loaded = {m: self.program.load_method(m) for m in methods if m in self.program.method_names}

    def operator_profile(self):
        """ExecuTorch's ETDump: portable kernels (``native_call_<op>`` inside an OPERATOR_CALL) and delegate
        calls; the delegate's own ops are nested inside DELEGATE_CALL and do not count toward the total."""
        import tempfile

        if not self.profile:
            return super().operator_profile()
        from executorch.devtools import Inspector

        from export.quiet import quiet

        with tempfile.TemporaryDirectory(prefix="etdump_") as tmp:
            path = str(Path(tmp) / "run.etdp")
            self.program.write_etdump_result_to_file(path, str(Path(tmp) / "debug.bin"))
            with quiet():
                inspector = Inspector(etdump_path=path)
        out = []
        for block in inspector.event_blocks:
            if block.name == "Default":  # load/init events, not execution
                continue
            for event in block.events:
                if event.perf_data is None:
                    continue
                name = event.name
                top = name in ("OPERATOR_CALL", "DELEGATE_CALL")
                op = name[len("native_call_"):].split(".")[0] if name.startswith("native_call_") else name
                for ms in event.perf_data.raw:
                    out.append({"op": op, "node": "", "us": float(ms) * 1e3, "top_level": top,
                                "delegated": bool(event.is_delegated_op)})
        return out

    def __call__(self, x):
        return self.run("forward", {"input": x})["logits"]

    def run(self, method, feed):
        if method not in self.table:
            raise SqueezeError(f"this program has no method {method!r}; it has {', '.join(self.table)}")
        if method not in self._loaded:
            self._loaded[method] = self.program.load_method(method)
        spec = self.table[method]
        names = [i["name"] for i in spec["inputs"]]
        missing = [n for n in names if n not in feed]
        if missing:
            raise SqueezeError(f"method {method!r} needs inputs {', '.join(missing)}")
        args = [self._torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names]
        outs = self._loaded[method].execute(args)
        return {name: o.numpy() for name, o in zip(spec["outputs"], outs)}


DATA_MOVEMENT = ("_to_copy", "_to_dim_order_copy", "view_copy", "permute_copy", "clone", "expand_copy", "squeeze_copy", "unsqueeze_copy")


def _delegation_summary(info) -> dict:
    by_op = {op: {"delegated": b.delegated, "portable": b.non_delegated}
             for op, b in sorted(info.delegation_by_operator.items())}
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "portable_nodes": info.num_non_delegated_nodes,
        "portable_ops": sorted(op for op, b in by_op.items() if b["portable"]),
        "by_operator": by_op,
    }


@register
class ExecuTorchBackend(Backend):
    name = "pte"
    suffix = ".pte"
    runtime = ExecuTorchRunner.runtime

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}_{opts.pte_backend}.pte"

    precisions = ("fp32", "int8")

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import torch
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower

        partitioner = self._partitioner(opts)
        quantization = None
        if opts.precision == "int8":
            module, quantization = self._quantize(module, example, opts)
        ep = torch.export.export(module, (example,), strict=False)
        edge = to_edge_transform_and_lower(ep, partitioner=[partitioner])
        info = get_delegation_info(edge.exported_program().graph_module)
        program = edge.to_executorch()
        with open(dest, "wb") as fh:
            program.write_to_file(fh)
        delegation = _delegation_summary(info)
        extras = {"pte_backend": opts.pte_backend, "delegation": delegation}
        if quantization is not None:
            # the delegate returns its outputs through getitem nodes, and a uint8 camera-frame input may be cast and
            # laid out before it: those move data; anything else left outside would compute in portable fp32
            outside = [op for op in delegation["portable_ops"] if op != "getitem"]
            computing = [op for op in outside if not any(k in op for k in DATA_MOVEMENT)]
            quantization["fully_delegated"] = delegation["delegated_subgraphs"] == 1 and not outside
            quantization["outside_delegate"] = outside
            if opts.pte_backend == "xnnpack" and computing:
                raise SqueezeError(f"pte int8: ops left outside the XNNPACK delegate ({', '.join(computing[:6])}); the "
                                   "int8 program would run them in portable fp32 kernels")
            extras["quantization"] = quantization
        return extras

    @staticmethod
    def _quantize(module, example, opts):
        """PT2E with the quantizer of the delegate it will run on (XNNPACK; Core ML for --pte-backend coreml)."""
        from export import quantize as q

        observer = opts.extra.get("observer", q.DEFAULT_OBSERVER)
        if opts.pte_backend == "xnnpack":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)

            quantizer = XNNPACKQuantizer().set_global(
                q.with_observer(get_symmetric_quantization_config(is_per_channel=True), observer))
            tool = "torchao PT2E + executorch XNNPACKQuantizer (symmetric, per-channel)"
        else:
            from .coreml_backend import coreml_pt2e_quantizer

            quantizer, tool = coreml_pt2e_quantizer(observer)
        calibration = q.calibration_tensors(opts)
        graph = q.pt2e_quantize(module, example, quantizer, calibration)
        record = {"tool": tool, **q.settings(opts, **({} if opts.pte_backend == "xnnpack" else {
            "weights": "int8 per-channel affine", "activations": "uint8 per-tensor affine"}))}
        simulated = q.simulate(graph, opts)
        if simulated:
            record["pytorch_simulation"] = simulated
        return graph, record

    def load(self, path, threads=None):
        return ExecuTorchRunner(path, threads)

    def load_program(self, path, methods, threads=None, profile=False):
        return ExecuTorchProgramRunner(path, methods, threads, profile)

    def export_program(self, program, dest: Path, opts: ExportOptions):
        """Every method into one program (weights shared), mutable buffers shared between methods, inputs not
        memory-planned (the app's arrays, e.g. a context pack, are read in place instead of copied per call)."""
        import torch
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

        partitioner = self._partitioner(opts, program=True, stateful=bool(program.state))
        modules, quantization = {m.name: m.module for m in program.methods}, None
        if opts.weights != "fp32":
            from export.quantize import quantize_program_weights

            if opts.pte_backend != "xnnpack":
                raise SqueezeError(f"--weights {opts.weights} for .pte is built for the XNNPACK delegate; export "
                                   f"--pte-backend {opts.pte_backend} with --weights fp32")
            modules, quantization = quantize_program_weights(modules, opts.weights)
        # a method's dynamic axes (the decoder's prefill: any question length up to max_prompt) stay symbolic under
        # XNNPACK, which plans for the upper bound and resizes per call; the Core ML delegate gets static shapes
        dynamic = opts.pte_backend == "xnnpack"
        with torch.no_grad():  # in-place state updates (KV cache buffers) cannot be traced with autograd on
            exported = {m.name: torch.export.export(modules[m.name], (), kwargs=m.call_kwargs(m.inputs), strict=False,
                                                    dynamic_shapes=m.dynamic_shapes() if dynamic else None)
                        for m in program.methods}
        edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
        delegation = {name: _delegation_summary(get_delegation_info(edge.exported_program(name).graph_module))
                      for name in exported}
        config = ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=bool(program.state)),
            # symbolic sizes planned at their upper bound (the example's size would make them static)
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            emit_mutable_buffer_names=True,
            # state writes (index_put into a mutable buffer) in place instead of copy + write + copy back
            run_reinplace_pass=bool(program.state))
        out = edge.to_executorch(config)
        with open(dest, "wb") as fh:
            out.write_to_file(fh)
        extras = {"pte_backend": opts.pte_backend, "delegation": delegation, "state": list(program.state),
                  "methods": {m.name: {"graph": m.name, **m.signature(dynamic)} for m in program.methods}}
        if quantization is not None:
            extras["weight_quantization"] = quantization
        return extras

    @staticmethod
    def _partitioner(opts, program: bool = False, stateful: bool = False):
        if opts.pte_backend not in PTE_BACKENDS:
            raise SqueezeError(f"unknown --pte-backend {opts.pte_backend!r}; use one of {', '.join(PTE_BACKENDS)}")
        if opts.pte_backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            return XnnpackPartitioner()
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        if not program:
            return CoreMLPartitioner()
        # Multi-method programs (the decoder): iOS 18, where mutable buffers (the KV cache) become Core ML state, and
        # the conversion pipeline without the linear+bias fusion that fails on the graphs' 0-d mask constants
        # (coreml_program.SKIPPED_PASSES, as for the .mlpackage)
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend

        from .coreml_program import SKIPPED_PASSES

        passes = [name for name in ct.PassPipeline.DEFAULT.passes if name not in SKIPPED_PASSES]
        specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS18, pass_names=passes)
        return CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=stateful,
                                 skip_ops_for_coreml_delegation=COREML_CPU_OPS)

    def cannot_run_here(self, extras=None):
        import platform

        if extras and extras.get("pte_backend") == "coreml" and platform.system() != "Darwin":
            return "not run (Core ML delegate needs macOS/iOS)"
        return None

    def tool_versions(self):
        return versions_of("torch", "executorch", "coremltools")
