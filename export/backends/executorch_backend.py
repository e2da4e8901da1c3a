"""ExecuTorch (.pte): torch.export -> to_edge_transform_and_lower with the XNNPACK partitioner (Android/CPU),
or the Core ML partitioner (iOS); runs with executorch.runtime (XNNPACK build only off Apple platforms)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

from .base import Backend, ExportOptions, Runner, register, versions_of

PTE_BACKENDS = ("xnnpack", "coreml")


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
        self._torch = torch
        self.program = Runtime.get().load_program(str(path))
        self.method = self.program.load_method("forward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x))])
        return out[0].numpy()


@register
class ExecuTorchBackend(Backend):
    name = "pte"
    suffix = ".pte"
    runtime = ExecuTorchRunner.runtime

    def artifact_name(self, stem, opts):
        return f"{stem}_{opts.precision}_{opts.pte_backend}.pte"

    def export(self, module, example, dest: Path, opts: ExportOptions):
        import torch
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower

        if opts.pte_backend not in PTE_BACKENDS:
            raise SqueezeError(f"unknown --pte-backend {opts.pte_backend!r}; use one of {', '.join(PTE_BACKENDS)}")
        if opts.pte_backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioner = XnnpackPartitioner()
        else:
            from executorch.backends.apple.coreml.partition import CoreMLPartitioner

            partitioner = CoreMLPartitioner()
        ep = torch.export.export(module, (example,), strict=False)
        edge = to_edge_transform_and_lower(ep, partitioner=[partitioner])
        info = get_delegation_info(edge.exported_program().graph_module)
        program = edge.to_executorch()
        with open(dest, "wb") as fh:
            program.write_to_file(fh)
        by_op = {
            op: {"delegated": b.delegated, "portable": b.non_delegated}
            for op, b in sorted(info.delegation_by_operator.items())
        }
        portable_ops = sorted(op for op, b in by_op.items() if b["portable"])
        return {
            "pte_backend": opts.pte_backend,
            "delegation": {
                "delegated_subgraphs": info.num_delegated_subgraphs,
                "delegated_nodes": info.num_delegated_nodes,
                "portable_nodes": info.num_non_delegated_nodes,
                "portable_ops": portable_ops,
                "by_operator": by_op,
            },
        }

    def load(self, path, threads=None):
        return ExecuTorchRunner(path, threads)

    def cannot_run_here(self, extras=None):
        import platform

        if extras and extras.get("pte_backend") == "coreml" and platform.system() != "Darwin":
            return "not run (Core ML delegate needs macOS/iOS)"
        return None

    def tool_versions(self):
        return versions_of("torch", "executorch", "coremltools")
