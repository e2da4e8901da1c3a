"""Export formats. Every module in this package registers one :class:`~export.backends.base.Backend`."""

import importlib
import pkgutil

from .base import REGISTRY, Backend, ExportOptions, Runner, TensorInfo, conversion_error  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name.endswith("_backend"):
        importlib.import_module(f"{__name__}.{_mod.name}")

FORMATS = tuple(REGISTRY)
DEFAULT_FORMATS = ("onnx", "tflite", "pte", "coreml")  # what `squeeze export squeezetime` writes by default


def get_backend(name: str) -> Backend:
    from squeeze_mobile.errors import SqueezeError

    if name not in REGISTRY:
        raise SqueezeError(f"unknown format {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
