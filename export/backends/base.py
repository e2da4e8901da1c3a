"""The small interface every export format implements, and the registry that finds them.

A backend turns an export-ready ``torch.nn.Module`` plus example input into one artifact (a file, or a
directory for .mlpackage), and loads an artifact into a :class:`Runner` that executes it on numpy
input. The same runner serves verification, benchmarking and prediction: there is exactly one
"load and run" per runtime. Adding a format means adding one module under ``export/backends/`` that
defines a Backend subclass decorated with :func:`register`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional

import numpy as np

from squeeze_mobile.errors import SqueezeError

if TYPE_CHECKING:  # annotations only
    import torch

    from squeezetime.rewrite import InputSpec

# No torch / squeezetime imports at run time here: the ONNX answer path of an exported decoder loads backends without PyTorch.
REGISTRY: Dict[str, "Backend"] = {}


def register(cls):
    inst = cls()
    REGISTRY[cls.name] = inst
    return cls


@dataclass
class ExportOptions:
    spec: "InputSpec"  # squeezetime.rewrite.InputSpec (None for models without one, e.g. the decoder)
    precision: str = "fp32"
    pte_backend: str = "xnnpack"
    coreml_legacy: bool = True
    weights: str = "fp32"   # program exports: 'int8' / 'int4' weight-only quantization where the backend has it
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorInfo:
    name: str
    shape: List[int]
    dtype: str
    layout: str = ""

    def to_dict(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}


class Runner(ABC):
    """A loaded artifact, ready to run: ``runner(x) -> logits`` on numpy arrays."""

    runtime: str = ""

    @abstractmethod
    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def run(self, method: str, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run a named method on named inputs; returns named outputs (state stays in the runtime where it holds
        it). Single-method artifacts (SqueezeTime) also answer ``forward`` with ``{"input": x} -> {"logits": y}``."""
        if method != "forward" or set(feed) != {"input"}:
            raise SqueezeError(f"the {self.runtime} runner of this artifact has only method 'forward' (input 'input')")
        return {"logits": self(feed["input"])}

    def operator_profile(self) -> List[Dict[str, Any]]:
        """Per-operator times of the calls made since the runner was loaded with ``profile=True``, from the
        runtime's own profiler: ``[{"op": kernel or op type, "node": graph node name or "", "us": microseconds,
        "top_level": whether it counts toward the step's total (nested delegate internals do not)}]``."""
        raise SqueezeError(f"the {self.runtime} runner has no operator profiler")

    def close(self) -> None:  # runtimes that hold native resources release them here
        pass


class Backend(ABC):
    name: ClassVar[str]
    suffix: ClassVar[str]  # '.onnx', '.tflite', '.pte', '.mlpackage'
    runtime: ClassVar[str]  # human-readable runtime used by the runner
    precisions: ClassVar[tuple] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"
    deterministic: ClassVar[bool] = True

    def artifact_name(self, stem: str, opts: ExportOptions) -> str:
        return stem + self.suffix

    def targets(self, stem: str, opts: ExportOptions) -> List[Dict[str, Any]]:
        """The artifacts one export of this format writes, in order: [{role, file, convert, best_effort}].
        ``convert(module, example, dest, opts)`` writes one of them; a best-effort artifact that fails is recorded
        as not produced instead of failing the format. Most formats write one file."""
        return [{"role": "main", "file": self.artifact_name(stem, opts), "convert": self.export, "best_effort": False}]

    @abstractmethod
    def export(self, module: torch.nn.Module, example: torch.Tensor, dest: Path, opts: ExportOptions) -> Dict[str, Any]:
        """Write the artifact to ``dest`` (a temporary path the caller renames). Returns manifest extras."""

    @abstractmethod
    def load(self, path: Path, threads: Optional[int] = None) -> Runner: ...

    def export_program(self, program, dest: Path, opts: ExportOptions) -> Dict[str, Any]:
        """Write a program of named methods (export.program.Program) to ``dest``; returns manifest extras.
        Formats that can hold several methods or named inputs override this."""
        raise SqueezeError(f"{self.name} cannot export multi-method programs yet (methods: {', '.join(program.names)}); "
                           "use --formats pte or onnx")

    def load_program(self, path: Path, methods: Dict[str, Dict], threads: Optional[int] = None,
                     profile: bool = False) -> Runner:
        """Load an artifact written by export_program; ``methods`` is the manifest's method table
        ({name: {"graph", "inputs": [{"name", ...}], "outputs": [...]}}) so the runner can order inputs by name."""
        raise SqueezeError(f"{self.name} cannot run multi-method programs here")

    def replaceable(self, path: Path) -> bool:
        """Whether an existing *directory* at ``path`` is an artifact of this format that a new export may
        replace. File formats never replace a directory (a user's folder named like an artifact is left alone)."""
        return False

    def cannot_run_here(self, extras: Optional[Dict[str, Any]] = None) -> Optional[str]:
        """None if this machine can execute the artifact (described by its manifest ``extras``), else why not."""
        return None

    def cannot_time_here(self, extras: Optional[Dict[str, Any]] = None) -> Optional[str]:
        """None if timing the artifact here measures its runtime (what `squeeze bench` reports), else why not."""
        return self.cannot_run_here(extras)

    def structural_check(self, path: Path, opts: ExportOptions) -> Optional[Dict[str, Any]]:
        """Checks that do not need the runtime (CoreML on Linux). None when not applicable."""
        return None

    def tool_versions(self) -> Dict[str, str]:
        return {}

    def file_io_names(self, path: Path) -> Optional[Dict[str, Any]]:
        """Where a one-method artifact's own names for its input and output differ from the manifest's logical ones
        (``input`` / ``logits``): {"signature": NAME or None, "inputs": [...], "outputs": [...]}, in order; None when
        the file uses the logical names (or has none: a .pte's method takes positional tensors)."""
        return None


def conversion_error(backend: str, exc: BaseException, log: str = "") -> SqueezeError:
    """One line that names the backend and, when we can find it, the operator that failed."""
    text = f"{exc} {log}"
    op = None
    for pattern in (r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", r"[Oo]p(?:erator)? ['\"`]?([A-Za-z0-9_:.]+)['\"`]? (?:is )?not (?:supported|implemented)",
                    r"unsupported op(?:erator)?[: ]+['\"`]?([A-Za-z0-9_:.]+)"):
        m = re.search(pattern, text)
        if m:
            op = m.group(1)
            break
    first = next((l.strip() for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
    where = f" (op {op})" if op else ""
    return SqueezeError(f"{backend} cannot convert this model{where}: {type(exc).__name__}: {first[:200]}")


def versions_of(*dists: str) -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "not installed"
    return out
