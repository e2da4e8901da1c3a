"""SqueezeTime for mobile: faithful PyTorch model, official checkpoint loading, real video input and
export-ready rewrites.

    >>> import squeezetime
    >>> model = squeezetime.load_checkpoint("SqueezeTime_K400_71.64.pth")      # eval mode
    >>> clip = squeezetime.video.load_clip("video.mp4", model.config)          # 1 x 3 x 16 x 224 x 224
    >>> logits = model(clip)                                                     # 1 x 400
    >>> ready = squeezetime.rewrite.export_ready(model, input_format="frames_uint8")
"""

# Names load on first use (PEP 562), so the `squeeze` command's start-up (and the torch-free answer path of an
# exported decoder) can read configs without importing PyTorch.
_EXPORTS = {
    "checkpoint": ["LoadReport", "load_checkpoint", "read_state_dict", "save_checkpoint"],
    "config": ["CONFIGS", "SqueezeTimeConfig", "get_config"],
    "errors": ["SqueezeError"],
    "model": ["SqueezeTime", "build_model", "seeded_model"],
    "predict": ["predict_video", "classify_video"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("video", "rewrite")


def __getattr__(name):
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CONFIGS",
    "LoadReport",
    "SqueezeError",
    "SqueezeTime",
    "SqueezeTimeConfig",
    "build_model",
    "classify_video",
    "get_config",
    "load_checkpoint",
    "predict_video",
    "read_state_dict",
    "rewrite",
    "save_checkpoint",
    "seeded_model",
    "video",
]
