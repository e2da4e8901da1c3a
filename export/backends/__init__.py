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


def parse_formats(formats) -> list:
    """Format names from ``"onnx,pte"`` or a list (``executorch`` = ``pte``), each once, in the order given; an empty or
    unknown name is a one-line SqueezeError."""
    from squeeze_mobile.errors import SqueezeError

    if formats is None:   # the Python API's "default"
        formats = list(DEFAULT_FORMATS)
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        formats = [f if isinstance(f, str) else repr(f) for f in formats]
    except TypeError:
        raise SqueezeError(f"formats must be names such as 'onnx,pte' or a list of them; got {type(formats).__name__}") from None
    formats = list(dict.fromkeys(["pte" if f == "executorch" else f for f in formats]))
    if not formats:
        raise SqueezeError("no formats given; use e.g. --formats onnx,tflite,pte,coreml")
    unknown = [f for f in formats if f not in REGISTRY]
    if unknown:
        raise SqueezeError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_FORMATS)}")
    return formats


def format_list_text(text: str) -> str:
    """``--formats``: the names checked by :func:`parse_formats`, given back as one comma-separated string."""
    return ",".join(parse_formats(text))
