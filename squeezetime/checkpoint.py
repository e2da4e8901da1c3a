"""Loading SqueezeTime weights from official (mmaction2) files, bare state dicts and safetensors.

Unlike the official loader (which copies only named parameters, so BN running statistics are dropped
and a prefixed file silently matches nothing), every tensor is accounted for: missing, unexpected or
shape-mismatched keys are an error that names them. Files are read without executing pickled code.
"""

from __future__ import annotations

import pickle
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from .config import CONFIGS, SqueezeTimeConfig, get_config
from .errors import SqueezeError
from .model import SqueezeTime

BACKBONE_PREFIX = "backbone.net."
HEAD_PREFIX = "cls_head.fc_cls."
# Counters that do not affect inference (BN uses running stats in eval); tolerated when absent.
_OPTIONAL_SUFFIX = ".num_batches_tracked"
_BACKBONE_ROOTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
MAX_WIDTH, MAX_CLASSES, MAX_POS_DIM = 4.0, 100_000, 1024
# bounds of the preprocessing a checkpoint may record (squeeze export's --size range; short sides up to 4K video)
MIN_CROP, MAX_CROP, MAX_SHORT_SIDE, MAX_FRAME_INTERVAL = 32, 1024, 4096, 1024


@dataclass
class LoadReport:
    path: str
    tensors: int
    num_classes: Optional[int]
    missing_optional: List[str] = field(default_factory=list)
    missing_head: bool = False
    renamed_prefixes: List[str] = field(default_factory=list)
    float_counters: List[str] = field(default_factory=list)  # num_batches_tracked stored as floats (cast with the weights)
    notes: List[str] = field(default_factory=list)  # what reading the file's format did (e.g. a MindSpore .ckpt's names)

    def summary(self) -> str:
        parts = [f"loaded {self.tensors} tensors from {self.path}", *self.notes]
        if self.renamed_prefixes:
            parts.append(f"stripped/mapped prefixes: {', '.join(self.renamed_prefixes)}")
        if self.missing_head:
            parts.append("classifier head missing: left randomly initialised (allow_missing_head)")
        if self.float_counters:
            parts.append(f"{len(self.float_counters)} BN num_batches_tracked counters stored as floats, read as whole "
                         f"numbers (no effect on inference)")
        if self.missing_optional:
            parts.append(f"{len(self.missing_optional)} BN num_batches_tracked counters absent (no effect on inference)")
        return "; ".join(parts)


def _short_list(keys, limit=4) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# What save_checkpoint records besides the tensors: the preprocessing a model was built for (the architecture is read
# back from the tensors' shapes), so a model built for 112-px crops every 2nd frame comes back wanting them
SAVED_PREPROCESSING = ("input_size", "frame_interval", "resize_short", "multiview_resize_short", "multiview_clips",
                       "mean", "std", "labels", "spatial_strides")
SAVED_CONFIG_KEY = "squeezetime_preprocessing"


def read_state_dict(path, skip_unsafe_metadata: bool = False) -> Dict[str, torch.Tensor]:
    """Read a flat name -> tensor mapping from a .pth/.pt/.ckpt (no pickled code), .safetensors or MindSpore .ckpt file
    (its names mapped to PyTorch's, its optimizer state left out: squeezetime.mindspore_ckpt).

    Files whose pickle references arbitrary Python objects (e.g. mmengine training state next to the
    weights) are refused unless ``skip_unsafe_metadata``: then those objects become inert placeholders
    (nothing is imported or called) and only the tensors are used.
    """
    return _read(path, skip_unsafe_metadata)[0]


def _read(path, skip_unsafe_metadata: bool = False):
    """read_state_dict's tensors and the notes for the load report."""
    path = Path(path)
    if path.is_dir():
        raise SqueezeError(f"checkpoint {path} is a directory; give the checkpoint file (.pth or .safetensors)")
    if not path.is_file():
        raise SqueezeError(f"checkpoint {path} does not exist or is not a file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SqueezeError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise SqueezeError(f"checkpoint {path} is empty (0 bytes); download or save it again")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SqueezeError(f"checkpoint {path} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    fmt = checkpoint_format(path)
    if fmt == "pack":
        raise SqueezeError(f"checkpoint {path} is a Squeezed Attention context pack, not a SqueezeTime checkpoint")
    if fmt == "mindspore":
        from .mindspore_ckpt import read_mindspore_checkpoint

        return (*read_mindspore_checkpoint(path), None)
    if fmt == "safetensors":
        from safetensors.torch import load, load_file

        try:
            if _utf8_name(path):
                return _check_keys(dict(load_file(str(path))), path), [], _saved_safetensors(path)
            # safetensors' Rust reader takes only UTF-8 file names: read the bytes here instead
            return _check_keys(dict(load(path.read_bytes())), path), [], _saved_safetensors(path)
        except SqueezeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes means "not readable"
            raise SqueezeError(f"checkpoint {path} is not a readable safetensors file ({_first_line(exc)})"
                               f"{_what_it_is(path)}") from None
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():  # a file object: torch.load picks its own loader
            # from a path's extension; its note that protocols above 2 may hold opcodes it lacks is handled below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc) and _pickle_protocol(path) >= 4:
            # torch.save(..., pickle_protocol=4 or 5): opcodes (FRAME, ...) torch's weights-only reader does not
            # implement; the pure-Python unpickler reads them, admitting the same tensor globals only
            obj = _load_with_inert_objects(path, inert=skip_unsafe_metadata)
            _check_zip_crc(path)
            return _unwrap(obj, path), [], _saved_pickle(obj)
        if "GLOBAL" not in str(exc):  # not a forbidden object: the bytes are simply not a pickle
            raise SqueezeError(f"checkpoint {path} is not a readable PyTorch file (bad pickle data){_what_it_is(path)}") from None
        if not skip_unsafe_metadata:
            raise _objects_refused(path, exc) from None
        obj = _load_with_inert_objects(path)
    except (MemoryError, RecursionError) as exc:
        raise SqueezeError(f"checkpoint {path} is not a readable PyTorch file ({type(exc).__name__} while parsing)") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything on malformed bytes; all mean "not readable"
        what = _what_it_is(path)  # when the file is recognisably something else, PyTorch's guess adds nothing
        reason = _zip_problem(path) or ("" if what else _first_line(exc))
        raise SqueezeError(f"checkpoint {path} is not a readable PyTorch file{f' ({reason})' if reason else ''}{what}") from None
    _check_zip_crc(path)
    return _unwrap(obj, path), [], _saved_pickle(obj)


def _check_zip_crc(path) -> None:
    """A torch.save zip records a CRC-32 per member that torch.load never checks: a file damaged inside (a bad sector,
    a download that wrote zeros) loaded with silently corrupted weights. Every member is checked against its CRC."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return   # the legacy pickle format records no checksum
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError, EOFError) as exc:
        raise SqueezeError(f"checkpoint {path} is a damaged zip archive ({_first_line(exc)}); download or save it "
                           "again") from None
    if bad is not None:
        raise SqueezeError(f"checkpoint {path} is damaged: its member {bad!r} does not match the checksum recorded "
                           "when it was saved (the file changed on disk or in transfer); download or save it again")


def _saved_pickle(obj) -> Optional[str]:
    """The preprocessing save_checkpoint recorded in an mmaction-layout file's meta (a JSON string), or None."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    value = meta.get(SAVED_CONFIG_KEY) if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) else None


def _saved_preset(saved: Optional[str]) -> Optional[str]:
    """The config preset save_checkpoint recorded beside the preprocessing (None for other files)."""
    import json

    try:
        value = json.loads(saved).get("preset") if saved else None
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _saved_safetensors(path) -> Optional[str]:
    try:
        return _safetensors_metadata(path).get(SAVED_CONFIG_KEY)
    except Exception:  # noqa: BLE001 - the tensors were read; metadata is optional
        return None


def _apply_saved(cfg: SqueezeTimeConfig, saved: Optional[str], notes: list) -> SqueezeTimeConfig:
    """``cfg`` (read from the tensors) with the preprocessing save_checkpoint recorded; metadata that is not valid
    JSON or names impossible values is left out, with a note in the load report."""
    import json

    if not saved:
        return cfg
    try:
        fields = json.loads(saved)
        fields = {k: v for k, v in fields.items() if k in SAVED_PREPROCESSING} if isinstance(fields, dict) else None
        if fields is None:
            raise ValueError("not an object")
        if "labels" in fields:
            from .video import label_path

            if not (isinstance(fields["labels"], str) and re.fullmatch(r"[A-Za-z0-9_-]+", fields["labels"])
                    and label_path(fields["labels"]).is_file()
                    and len(label_path(fields["labels"]).read_text(encoding="utf-8").splitlines()) == cfg.num_classes):
                fields.pop("labels")   # a label file this installation lacks, or one of another class count
        saved = get_config(cfg, **fields)
        # sizes no clip can have: a crop of 1000000 px then failed on every video as "frames smaller than the crop"
        if not MIN_CROP <= saved.input_size <= MAX_CROP:
            raise ValueError(f"input_size {saved.input_size} is outside [{MIN_CROP}, {MAX_CROP}]")
        for name in ("resize_short", "multiview_resize_short"):
            if not saved.input_size <= getattr(saved, name) <= MAX_SHORT_SIDE:
                raise ValueError(f"{name} {getattr(saved, name)} is outside [input_size, {MAX_SHORT_SIDE}]")
        if saved.frame_interval > MAX_FRAME_INTERVAL or saved.multiview_clips > MAX_FRAME_INTERVAL:
            raise ValueError("frame_interval or multiview_clips is implausibly large")
        return saved
    except (ValueError, TypeError, SqueezeError, RecursionError) as exc:
        notes.append(f"the saved preprocessing was left out ({_first_line(exc)})")
        return cfg


def _zip_problem(path) -> Optional[str]:
    """What is wrong with a zip that torch.load refused, in words (PyTorch's own message quotes its C++ internals)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        from squeeze_mobile.file_kinds import describe

        if (describe(path) or "").startswith("a zip archive"):
            return "an incomplete zip archive: the file is truncated, e.g. an interrupted download or save"
        return None
    except (OSError, ValueError, RuntimeError, NotImplementedError):
        return None
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        return f"a zip archive that is not a PyTorch checkpoint: no data.pkl; it holds {shown or 'nothing'}"
    return None


def _utf8_name(path) -> bool:
    try:
        str(Path(path).absolute()).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by Python as lone surrogates
        return False
    return True


def checkpoint_format(path) -> str:
    """'safetensors', 'torch' (a zip or legacy pickle for torch.load), 'mindspore' (a MindSpore .ckpt: a protobuf
    Checkpoint), from the file's first bytes whatever its name
    (``x.SAFETENSORS``, a safetensors file saved as ``.pth``, a pickle named ``.safetensors``); from the extension,
    case-insensitively, only when the bytes are neither (so the error names the format the user meant); 'pack' for a
    Squeezed Attention context pack (a safetensors file that is no checkpoint)."""
    from squeeze_mobile.file_kinds import describe

    kind = describe(path) or ""
    if kind == "a Squeezed Attention context pack":
        return "pack"
    if kind == "a safetensors file":
        return "safetensors"
    if kind.startswith("a MindSpore checkpoint"):
        return "mindspore"
    if kind.startswith(("a zip archive", "a pickle")):
        return "torch"
    return "safetensors" if Path(path).suffix.lower() == ".safetensors" else "torch"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message, or its type name (some carry no message)."""
    line = next((l.strip() for l in str(exc).splitlines() if l.strip()), "")
    if len(line) < 16:  # "124", "'data'", "": the type says more than the message
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line[:limit]


def _what_it_is(path) -> str:
    """'; it is an MP4/MOV video, not a checkpoint' when the file is recognisably something else."""
    from squeeze_mobile.file_kinds import describe

    kind = describe(path)
    if kind is None or kind.startswith(("a zip archive", "a pickle", "a safetensors")):
        return ""
    return f"; it is {kind}, not a checkpoint"


def _check_keys(tensors: Dict, path) -> Dict[str, torch.Tensor]:
    bad = [k for k in tensors if not isinstance(k, str)]
    if bad:
        raise SqueezeError(f"checkpoint {path} has non-text keys in its state dict (e.g. {str(bad[0])[:40]!r})")
    return tensors


class _InertObject:
    """Stands in for a pickled object of a class we refuse to import; records its arguments, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch.nn.parameter", "Parameter"),
}


def _objects_refused(path, exc) -> SqueezeError:
    found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return SqueezeError(
        f"checkpoint {path} needs unpickling of arbitrary Python objects ({', '.join(found[:4]) or 'unknown'}), "
        "which squeeze-mobile refuses; pass skip_unsafe_metadata=True (--skip-unsafe-metadata) to load only "
        "its tensors with those objects replaced by inert placeholders, or re-save it as safetensors")


def _pickle_protocol(path) -> int:
    """The protocol of the checkpoint's pickle (data.pkl of a zip, or a legacy file's first pickle), 0 if unknown."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                head = zf.open(name).read(2) if name else b""
        else:
            with open(path, "rb") as fh:
                head = fh.read(2)
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile):
        return 0
    return head[1] if len(head) == 2 and head[0] == 0x80 else 0


def _load_with_inert_objects(path, inert: bool = True):
    """torch.load with the pure-Python unpickler, tensors' own globals only; any other object becomes an inert
    placeholder, or with ``inert=False`` is refused as torch's weights-only reader refuses it."""
    import types

    stubs = {}

    # the pure-Python unpickler: its memo is a dict, where the C one grows an array to whatever index a
    # (corrupt) LONG_BINPUT names -- one flipped byte asked for 6+ GB
    class InertUnpickler(pickle._Unpickler):
        def find_class(self, module, name):
            if (module, name) in _TENSOR_GLOBALS or (module == "torch._utils" and name.startswith("_rebuild_")):
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if not inert:
                raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not a tensor's")
            key = f"{module}.{name}"
            if key not in stubs:
                stubs[key] = type(name, (_InertObject,), {"__module__": "inert." + module})
            return stubs[key]

    # load: the legacy (pre-zip) format reads its magic number, protocol and system info as pickles of their own
    inert_pickle = types.SimpleNamespace(Unpickler=InertUnpickler, load=lambda f, **kw: InertUnpickler(f, **kw).load(),
                                         __name__="inert_pickle")
    try:
        with open(path, "rb") as fh:  # a file object: torch.load picks its own loader from a path's extension
            return torch.load(fh, map_location="cpu", weights_only=False, pickle_module=inert_pickle)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        if not inert and isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            raise _objects_refused(path, exc) from None
        how = "even with placeholders" if inert else "as a tensors-only pickle"
        raise SqueezeError(f"checkpoint {path} could not be read {how} ({_first_line(exc, 120)})") from None


def _inert_module_state(obj, prefix: str = "", out=None):
    """The state dict of an nn.Module pickled whole (``torch.save(model)``), read from its placeholder's recorded
    attributes -- _parameters, persistent _buffers, _modules, as ``Module.state_dict`` walks them -- without importing
    or running its class. None when ``obj`` is no such placeholder."""
    state = getattr(obj, "state", None) if isinstance(obj, _InertObject) else None
    if not isinstance(state, dict) or not isinstance(state.get("_parameters"), Mapping) \
            or not isinstance(state.get("_modules"), Mapping):
        return None
    out = OrderedDict() if out is None else out
    transient = state.get("_non_persistent_buffers_set")
    if isinstance(transient, _InertObject):  # a pickled set becomes a placeholder holding its items
        transient = transient.args[0] if transient.args and isinstance(transient.args[0], (list, tuple)) else ()
    transient = set(transient) if isinstance(transient, (set, frozenset, list, tuple)) else set()
    for name, tensor in state["_parameters"].items():
        if tensor is not None:
            out[prefix + name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in transient:
            out[prefix + name] = tensor
    for name, child in state["_modules"].items():
        if child is not None and _inert_module_state(child, f"{prefix}{name}.", out) is None:
            return None
    return out


# How many dicts deep the state dict may be wrapped ({'checkpoint': {'model': {'state_dict': ...}}} is 3).
MAX_NESTING = 4


def _unwrap_once(obj):
    """The dict one level inside ``obj`` that holds the state dict, or ``obj`` itself when there is none to pick."""
    module_state = _inert_module_state(obj)
    if module_state is not None:  # torch.save(model): loaded with skip_unsafe_metadata, the class never imported
        return module_state
    if not isinstance(obj, Mapping):
        return obj
    for nest in ("state_dict", "model", "module"):
        if nest in obj and _inert_module_state(obj[nest]) is not None:  # {'model': <a whole module>, ...}
            return _inert_module_state(obj[nest])
        if nest in obj and isinstance(obj[nest], Mapping):
            return obj[nest]
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    # one dict of tensors under another name and nothing else of the kind (e.g. {'ema_state_dict': ...},
    # {'state_dict_ema': ...}, {'weights': ...}): that dict is the state dict
    nested = [v for v in obj.values()
              if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
    if len(nested) == 1:
        return nested[0]
    # else a lone dict beside plain values ({'checkpoint': {'model': ...}, 'epoch': 3}): the state dict is inside it
    nested = [v for v in obj.values() if _holds_tensors(v)]
    return nested[0] if len(nested) == 1 else obj


def _holds_tensors(obj, depth: int = MAX_NESTING) -> bool:
    """Whether a tensor is somewhere inside ``obj`` (dicts, or a whole module's placeholder), ``depth`` dicts deep."""
    if _inert_module_state(obj) is not None:
        return True
    if not isinstance(obj, Mapping) or depth == 0:
        return False
    return any(isinstance(v, torch.Tensor) or _holds_tensors(v, depth - 1) for v in obj.values())


def _unwrap(obj, path) -> Dict[str, torch.Tensor]:
    for _ in range(MAX_NESTING):  # wrappers of wrappers: {'model': {'state_dict': ...}} named its inner key unexpected
        inner = _unwrap_once(obj)
        if inner is obj:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise SqueezeError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    _check_keys(obj, path)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if any(isinstance(v, _InertObject) for v in obj.values()):
        raise SqueezeError(f"checkpoint {path} stores arbitrary Python objects inside its state dict: {_short_list(others)}")
    if others:
        raise SqueezeError(f"checkpoint {path} has non-tensor entries in its state dict: {_short_list(others)}")
    if not tensors:
        raise SqueezeError(f"checkpoint {path} contains no tensors")
    return tensors


def canonical_keys(state: Mapping[str, torch.Tensor]):
    """Map the key layouts seen in the wild onto the official ``backbone.net.``/``cls_head.fc_cls.`` names.

    Handles DataParallel ``module.`` prefixes, bare backbone dicts (``conv1.weight``...), ``net.``-rooted
    backbone dicts and mmaction files. Returns (new_state, list of rewrites applied).
    """
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    state, wrappers = _strip_wrapper_prefix(state)
    applied = set(f"{w} (on every key)" for w in wrappers)
    for key, value in state.items():
        k = key
        while k.startswith("module."):
            k = k[len("module."):]
            applied.add("module.")
        if k.startswith(("backbone.net.", "cls_head.fc_cls.")):
            pass
        elif k.startswith("backbone.") and k[len("backbone."):].startswith(_BACKBONE_ROOTS):
            k = "backbone.net." + k[len("backbone."):]
            applied.add("backbone. -> backbone.net.")
        elif k.startswith("net.") and k[4:].startswith(_BACKBONE_ROOTS):
            k = "backbone." + k
            applied.add("net. -> backbone.net.")
        elif k.startswith(_BACKBONE_ROOTS):
            k = BACKBONE_PREFIX + k
            applied.add("(bare) -> backbone.net.")
        elif k.startswith("fc_cls."):
            k = "cls_head." + k
            applied.add("fc_cls. -> cls_head.fc_cls.")
        if k in out:
            raise SqueezeError(f"checkpoint has two tensors that both map to {k}")
        out[k] = value
    return out, sorted(applied)


WRAPPER_PREFIXES = ("model.", "_orig_mod.", "module.")


def _known_key(key: str) -> bool:
    while key.startswith("module."):
        key = key[len("module."):]
    return key.startswith(("backbone.", "cls_head.fc_cls.", "fc_cls.", *_BACKBONE_ROOTS)) or (
        key.startswith("net.") and key[4:].startswith(_BACKBONE_ROOTS))


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor]):
    """A prefix on every key from a known wrapper around the model -- PyTorch Lightning's ``model.``, torch.compile's
    ``_orig_mod.`` (also under ``module.``) -- is removed when what remains is a layout we know. Any other prefix
    stays (the strict load names the keys: an unknown name may not be a SqueezeTime at all)."""
    stripped, prefixes = dict(state), []
    for _ in range(3):
        if not stripped or any(_known_key(k) for k in stripped):
            break
        heads = {k.split(".", 1)[0] for k in stripped}
        if len(heads) != 1 or any("." not in k for k in stripped):
            break
        prefix = heads.pop() + "."
        if prefix not in WRAPPER_PREFIXES:
            break
        stripped = {k[len(prefix):]: v for k, v in stripped.items()}
        prefixes.append(prefix)
    if prefixes and stripped and all(_known_key(k) for k in stripped):
        return OrderedDict(stripped), prefixes
    return state, []


def _width_of(state: Mapping[str, torch.Tensor], stem_channels: int) -> float:
    """The width multiplier whose stage widths (int(64 w), int(128 w), int(256 w), int(512 w)) are the checkpoint's.
    The stem alone does not fix it: width 0.3 has stages 19/38/76/153, and 19/64 gives 152 for the last one (a model
    saved at such a width did not load back). The widest stage present gives the finest estimate; the stem's is the
    fallback (shapes the stages do not match are then named by the strict load)."""
    planes = []
    for i, base in enumerate((64, 128, 256, 512), start=1):
        w = state.get(f"{BACKBONE_PREFIX}layer{i}.0.conv1.weight")
        planes.append(int(w.shape[0]) if w is not None and w.ndim == 4 else None)
    for base, p in reversed(list(zip((64, 128, 256, 512), planes))):
        if not p:
            continue
        width = p / base
        if int(64 * width) == stem_channels and all(q is None or int(b * width) == q
                                                     for b, q in zip((64, 128, 256, 512), planes)):
            return width
    return stem_channels / 64.0


def infer_config(state: Mapping[str, torch.Tensor], config=None, preset: Optional[str] = None) -> SqueezeTimeConfig:
    """Derive num_classes, frames, width and pos_dim from the tensors; start from ``config`` (or by class count, or
    the ``preset`` the file recorded when the count is no preset's)."""
    overrides = {}
    head = state.get(HEAD_PREFIX + "weight")
    bias = state.get(HEAD_PREFIX + "bias")
    if head is not None and (head.ndim != 2 or head.shape[0] < 1
                             or (bias is not None and tuple(bias.shape) != (head.shape[0],))):
        # a transposed, 3-D or empty head was compared against some preset's and named as a bias mismatch or a
        # num_classes error that did not say where the number came from
        raise SqueezeError(f"the checkpoint's classifier head ({HEAD_PREFIX}weight {list(head.shape)}"
                           + (f", bias {list(bias.shape)}" if bias is not None else "")
                           + ") is not a [classes, features] matrix with one bias per class; is it a SqueezeTime "
                           "classifier checkpoint?")
    num_classes = int(head.shape[0]) if head is not None else None
    by_classes = {c.num_classes: name for name, c in CONFIGS.items()}
    if config is None:   # the preset save_checkpoint recorded (a 10-class model built from hmdb51 stays hmdb51)
        config = by_classes.get(num_classes) or (preset if preset in CONFIGS else "k400")
    base = get_config(config)
    other = by_classes.get(num_classes)
    if num_classes is not None and other is not None and num_classes != base.num_classes:
        # another preset's head (a K400 checkpoint with config k600): its files and labels would be named wrongly
        raise SqueezeError(f"the checkpoint's head has {num_classes} classes, {other}'s, but config {base.name} has "
                           f"{base.num_classes}; use --config {other} (or leave --config out: it is read from the head)")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    stem = state.get(BACKBONE_PREFIX + "conv1.weight")
    if stem is not None and stem.ndim == 4:
        if stem.shape[1] % 3 == 0:
            overrides["frames"] = int(stem.shape[1]) // 3
        overrides["width"] = _width_of(state, int(stem.shape[0]))
    pos = []
    for i in range(1, 5):
        pe = state.get(f"{BACKBONE_PREFIX}layer{i}.0.conv2.spatial_conv.pos_embed")
        pos.append(int(pe.shape[-1]) if pe is not None and pe.ndim == 4 else base.pos_dim[i - 1])
    overrides["pos_dim"] = tuple(pos)
    blocks = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"{re.escape(BACKBONE_PREFIX)}layer{i}\.(\d+)\.", k)] if m}
        blocks.append(max(idx) + 1 if idx else None)
    from .config import BLOCKS_PER_DEPTH

    for depth, counts in BLOCKS_PER_DEPTH.items():
        if tuple(blocks) == counts:
            overrides["depth"] = depth
    # tensor shapes are untrusted (a stride-0 tensor can claim any size): refuse networks no checkpoint describes
    if not 0 < overrides.get("width", base.width) <= MAX_WIDTH or overrides.get("num_classes", 1) > MAX_CLASSES \
            or not all(1 <= p <= MAX_POS_DIM for p in overrides["pos_dim"]):
        raise SqueezeError(f"checkpoint tensor shapes describe an implausible SqueezeTime (width "
                           f"{overrides.get('width', base.width):g}, {overrides.get('num_classes', '?')} classes, pos_dim "
                           f"{overrides['pos_dim']}); is this a SqueezeTime checkpoint?")
    return get_config(base, **overrides)


def load_state_into(model: SqueezeTime, state: Mapping[str, torch.Tensor], allow_missing_head=False, path="<memory>") -> LoadReport:
    """Strictly copy ``state`` (already canonical keys) into ``model``; raise SqueezeError on any mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    optional = [k for k in missing if k.endswith(_OPTIONAL_SUFFIX)]
    head_missing = [k for k in missing if k.startswith("cls_head.")]
    hard_missing = [k for k in missing if k not in optional and (k not in head_missing or not allow_missing_head)]
    if any(k.startswith("roi_head.") for k in unexpected):
        raise SqueezeError(f"checkpoint {path} is a spatio-temporal detection checkpoint (AVA: an roi_head instead of "
                           f"cls_head); squeeze-mobile runs the action classifier: use a K400, K600 or HMDB51 checkpoint")
    if unexpected:
        raise SqueezeError(f"checkpoint {path} has {len(unexpected)} unexpected key(s): {_short_list(unexpected)}")
    if mismatched:
        raise SqueezeError(f"checkpoint {path} has {len(mismatched)} shape mismatch(es): {_short_list(mismatched, 3)}")
    if hard_missing:
        # the command line has no such option on purpose: a random head predicts nothing, and an export of it
        # could not be re-verified (the head would differ on every load)
        hint = (": a backbone-only file, without the classifier head that predict and export need (to fine-tune a "
                "new head in Python: squeezetime.load_checkpoint(path, allow_missing_head=True))") if all(
            k.startswith("cls_head.") for k in hard_missing
        ) else ""
        raise SqueezeError(f"checkpoint {path} is missing {len(hard_missing)} key(s): {_short_list(hard_missing)}{hint}")
    odd = [f"{k} ({'a ' + v.device.type if v.device.type != 'cpu' else v.layout} tensor)" for k, v in state.items()
           if v.layout != torch.strided or v.device.type != "cpu"]
    if odd:  # meta tensors carry no data; sparse/quantized layouts are not what a SqueezeTime checkpoint holds
        raise SqueezeError(f"checkpoint {path} has tensors that are not dense CPU tensors: {_short_list(odd, 2)}")
    state, float_counters = _float_counters_as_ints(state, expected)
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise SqueezeError(f"checkpoint {path} has NaN or infinite values in {len(non_finite)} tensor(s) "
                           f"({_short_list(non_finite, 2)}); the file is corrupt or its training diverged")
    with torch.no_grad():
        for k, v in state.items():
            target = expected[k]
            if v.dtype != target.dtype and not (v.is_floating_point() and target.is_floating_point()):
                raise SqueezeError(f"checkpoint {path}: {k} has dtype {v.dtype}, expected {target.dtype}")
            target.copy_(v.to(target.dtype))
    return LoadReport(
        path=str(path),
        tensors=len(state),
        num_classes=model.config.num_classes,
        missing_optional=optional,
        missing_head=bool(head_missing),
        float_counters=float_counters,
    )


def _float_counters_as_ints(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]):
    """BN's num_batches_tracked stored as a float: a whole-dict cast (``{k: v.half() for ...}``) casts that step
    counter with the weights, and a real training count (~10^5) even overflows fp16 to inf. Inference never reads
    it, so such a counter is taken as its rounded value (0 when not finite); every weight stays checked."""
    fixed, names = dict(state), []
    for k, v in state.items():
        if k.endswith(_OPTIONAL_SUFFIX) and k in expected and v.is_floating_point() \
                and not expected[k].is_floating_point() and v.numel() == 1:
            value = float(v)
            fixed[k] = torch.tensor(int(round(value)) if value == value and abs(value) < 2 ** 62 else 0, dtype=torch.int64)
            names.append(k)
    return fixed, names


def _safetensors_metadata(path) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON), read in Python: the
    Rust reader takes only UTF-8 file names."""
    import json
    import struct

    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > 100_000_000:
            return {}
        header = json.loads(fh.read(size).decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _metadata_label_file(path, num_classes: int) -> Optional[str]:
    """The label file a .safetensors checkpoint names in its metadata (``label_file``: a stem under
    squeezetime/labels/, as the project's own trained checkpoints write it), if that file exists and has one line
    per class; otherwise None (the base config's labels)."""
    from .video import label_path

    if checkpoint_format(path) != "safetensors":
        return None
    try:
        name = _safetensors_metadata(path).get("label_file")
    except Exception:  # noqa: BLE001 - read_state_dict already accepted the file; metadata is optional
        return None
    if not name or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not label_path(name).is_file():
        return None
    lines = label_path(name).read_text(encoding="utf-8").splitlines()
    return name if len(lines) == num_classes else None


def load_checkpoint(path, config=None, allow_missing_head: bool = False, skip_unsafe_metadata: bool = False) -> SqueezeTime:
    """Load a SqueezeTime checkpoint into a freshly built model, in eval mode.

    ``config`` names the base config (k400/k600/hmdb51); by default it is picked from the number of
    classes in the head. Frames, width, pos_dim and depth are read from the tensor shapes. The returned
    model carries ``load_report`` (a :class:`LoadReport`). ``path`` may also be a state dict already in memory (any
    layout the files use), read by the same rules.
    """
    in_memory = isinstance(path, Mapping)
    if in_memory:
        raw, notes, saved = _check_keys(_unwrap(dict(path), "(a state dict in memory)"), "(a state dict in memory)"), [], None
        path = "(a state dict in memory)"
    elif not isinstance(path, (str, os.PathLike)):
        raise SqueezeError(f"load_checkpoint takes a checkpoint path or a state dict; got {type(path).__name__}")
    else:
        raw, notes, saved = _read(path, skip_unsafe_metadata=skip_unsafe_metadata)
    notes = list(notes)
    state, renamed = canonical_keys(raw)
    cfg = infer_config(state, config, _saved_preset(saved))
    labels = None if in_memory else _metadata_label_file(path, cfg.num_classes)
    if labels:
        cfg = get_config(cfg, labels=labels)
    cfg = _apply_saved(cfg, saved, notes)
    try:
        model = SqueezeTime(cfg)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # shapes describing no buildable network
        raise SqueezeError(f"checkpoint {path} describes a SqueezeTime that cannot be built ({_first_line(exc)})") from None
    report = load_state_into(model, state, allow_missing_head=allow_missing_head, path=path)
    report.renamed_prefixes = renamed
    report.notes = notes
    model.load_report = report
    return model.eval()


def save_checkpoint(model: SqueezeTime, path, layout: str = "mmaction") -> None:
    """Write ``model`` in one of the layouts we read: mmaction (default), bare backbone, or safetensors. The mmaction
    and safetensors files record the preprocessing the model was built for; a bare backbone holds only the backbone's
    tensors (no head, no preprocessing: a warning says so).

    Written atomically (temporary file, then rename) so a failure never leaves a partial file.
    """
    from squeeze_mobile.atomic import atomic_path

    import json

    if layout not in ("mmaction", "backbone", "safetensors"):
        raise SqueezeError(f"unknown checkpoint layout {layout!r}; use mmaction, backbone or safetensors")
    if not isinstance(model, SqueezeTime):
        raise SqueezeError(f"save_checkpoint takes a SqueezeTime model; got {type(model).__name__}")
    from squeeze_mobile.errors import user_path

    state = model.state_dict()
    path = user_path(path, "the checkpoint path")
    safetensors = layout == "safetensors" or path.suffix.lower() == ".safetensors"
    if safetensors and layout == "backbone":
        raise SqueezeError(f"layout 'backbone' is a .pth state dict; {path} names a .safetensors file (which holds "
                           "the whole model): use another file name or layout='safetensors'")
    config = model.config.to_dict()
    saved = json.dumps({**{k: config[k] for k in SAVED_PREPROCESSING}, "preset": model.config.name})
    with atomic_path(path) as tmp:
        if safetensors:
            from safetensors.torch import save_file

            meta = {"config": model.config.name, SAVED_CONFIG_KEY: saved}
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        elif layout == "mmaction":
            torch.save({"meta": {"config": model.config.name, SAVED_CONFIG_KEY: saved}, "state_dict": OrderedDict(state)},
                       str(tmp))
        elif layout == "backbone":
            import warnings

            from squeeze_mobile.errors import SqueezeWarning

            warnings.warn(SqueezeWarning(
                f"layout 'backbone' writes the backbone's tensors only: {path.name} keeps no classifier head and no "
                "preprocessing (crop, frame interval, mean/std), so loading it gives the preset's; use layout "
                "'mmaction' or 'safetensors' to keep them"), stacklevel=2)
            bare = OrderedDict((k[len(BACKBONE_PREFIX):], v) for k, v in state.items() if k.startswith(BACKBONE_PREFIX))
            torch.save(bare, str(tmp))
        else:
            raise SqueezeError(f"unknown checkpoint layout {layout!r}; use mmaction, backbone or safetensors")
