"""Export SqueezeTime to every requested format, verify each artifact, write manifest.json.

Stages per format: rewrite (once) -> convert (to a temporary path, renamed on success) -> verify
(numerically on this machine's runtime; a Core ML .mlpackage off macOS by evaluating its saved MIL program;
structurally where nothing can run it here, the legacy .mlmodel off macOS) ->
record in the manifest (rewritten atomically after every format, so an interrupted run leaves a
manifest that describes exactly the complete artifacts on disk). Nothing but artifacts is written before the first
format ends: a run stopped before that leaves its folder as it was, and a run that lands no artifact beside an earlier
export's records its failures but keeps that export's labels.txt.

Every output path is checked before any work: a directory of the user's where an artifact, manifest.json
or labels.txt would go is refused (only a .mlpackage that squeeze-mobile wrote may be replaced). Exporting
again into a directory whose manifest describes the same model, input and verification video merges: new
artifacts replace the records of the same files, other formats' records stay; a directory made for another
model or input is refused, so no artifact on disk is ever left undescribed.

A format that fails is recorded with its one-line error; the others still run; the result reports
failure so the CLI exits non-zero. A format asked for in a precision it does not offer is refused before anything
is written, and an output folder the export created is removed again if it fails before writing into it.

labels.txt is written only when the config's label file has exactly one line per class of the model (a 10-class
checkpoint on the k400 config gets none, and manifest labels null: apps and `squeeze predict` show class_N).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence


from squeeze_mobile.atomic import (NO_ROOM, atomic_path, check_destination, ensure_writable_dir, folder_lock, remove,
                                   removed_if_left_empty)
from squeeze_mobile.errors import SqueezeError
from squeeze_mobile.file_kinds import describe, special_kind
from squeeze_mobile.file_kinds import is_plain_file_name
from squeeze_mobile.metrics import json_text
from squeeze_mobile.signals import DeferredSignals
from squeezetime.model import SqueezeTime
from squeezetime.rewrite import INPUT_FORMATS, InputSpec, export_ready
from squeezetime.video import label_path, read_label_file

from .backends import REGISTRY, ExportOptions, TensorInfo, conversion_error, get_backend, parse_formats  # noqa: F401
from .quiet import quiet
from .calibration import DEFAULT_VIEWS as DEFAULT_CALIBRATION_VIEWS
from .calibration import CalibrationSet, build_calibration_set, check_separation
from .quantize import DEFAULT_OBSERVER, OBSERVERS
from .verify import THRESHOLDS, VerificationSet, build_verification_set, sha256_file, verify_artifact

MANIFEST = "manifest.json"
LABELS = "labels.txt"
SCHEMA = "squeeze-mobile/manifest/1"
from .backends import DEFAULT_FORMATS  # noqa: E402,F401  (SqueezeTime exports these by default)

Progress = Callable[[str, str], None]  # (format, message)


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Dict
    failures: List[Dict] = field(default_factory=list)

    records: List[Dict] = field(default_factory=list)  # this run's artifact records (the manifest may keep older ones)

    @property
    def ok(self) -> bool:
        return not self.failures and all(a.get("verification", {}).get("status") != "fail" for a in self.records)


def check_writable(out_dir: Path) -> None:
    """The output directory exists (created if missing) and takes new files; one-line error otherwise."""
    check_text_path(out_dir, "--out")
    ensure_writable_dir(out_dir)


def check_text_path(folder, what: str) -> None:
    """The runtimes' Python bindings (onnxruntime, LiteRT, ExecuTorch, coremltools) take file names as UTF-8 text: a
    folder whose name holds bytes that are not UTF-8 (Python keeps them as lone surrogates) fails in every one of
    them after the conversion, so it is refused before any work."""
    text = str(Path(folder).absolute())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise SqueezeError(f"{what} {shown} has a name that is not valid UTF-8, which onnxruntime, LiteRT, ExecuTorch "
                           f"and coremltools cannot open files under; rename it or choose another folder") from None


PRECISIONS = ("fp32", "fp16", "int8")


def parse_precisions(precision) -> List[Optional[str]]:
    """``precision``: None (each format's default), one name, or several ('fp32,int8' or a list) -> a list."""
    if precision is None:
        return [None]
    if isinstance(precision, str):
        parts = [p.strip() for p in precision.split(",")]
        if any(parts) and not all(parts):   # 'fp32,,int8' dropped the empty item without a word
            raise SqueezeError(f"empty item in --precision {precision!r}; separate precisions with single commas")
        precision = [p for p in parts if p]
    out = list(dict.fromkeys(precision))
    if not out:
        raise SqueezeError("no precision given; use e.g. --precision fp32 or --precision fp32,int8")
    unknown = [p for p in out if p not in PRECISIONS]
    if unknown:
        raise SqueezeError(f"unknown precision {', '.join(map(repr, unknown))}; use {', '.join(PRECISIONS)} (or several, "
                           "comma-separated)")
    return out


def check_format_precisions(formats: Sequence[str], precision) -> None:
    """Refuse, before anything is loaded or written, a format asked for in a precision it does not offer (e.g.
    ``--formats tflite --precision fp16``); one line naming the formats that do offer it."""
    clashes: Dict[str, List[str]] = {}
    for prec in parse_precisions(precision):
        if prec is None:  # each format's own default
            continue
        for fmt in formats:
            if prec not in get_backend(fmt).precisions:
                clashes.setdefault(prec, []).append(fmt)
    if not clashes:
        return
    parts = []
    for prec, fmts in clashes.items():
        offer = [name for name, backend in REGISTRY.items() if prec in backend.precisions]
        parts.append(f"{', '.join(fmts)} {'does' if len(fmts) == 1 else 'do'} not offer {prec} (formats with {prec}: "
                     f"{', '.join(offer)})")
    raise SqueezeError(f"{'; '.join(parts)}; drop it from --formats or --precision (nothing was written)")


def planned_outputs(formats: Sequence[str], stem: str, spec: InputSpec, precision, pte_backend: str,
                    coreml_legacy: bool) -> List[Dict]:
    """The artifact files an export will write: [{format, file, directory artifact?, replaceable check}]."""
    out = []
    for fmt in formats:
        backend = get_backend(fmt)
        for prec in parse_precisions(precision):
            opts = ExportOptions(spec=spec, precision=prec or backend.default_precision, pte_backend=pte_backend,
                                 coreml_legacy=coreml_legacy)
            if opts.precision not in backend.precisions:
                continue  # refused with a one-line failure when the format comes up; nothing is written for it
            for target in backend.targets(stem, opts):
                name = target["file"]
                out.append({"format": fmt, "file": name, "dir": name.endswith(".mlpackage"),
                            "replaceable": backend.replaceable if name.endswith(".mlpackage") else None})
    return out


def check_outputs(out_dir: Path, planned: List[Dict]) -> None:
    """Refuse, before any work, an output path where a directory of the user's sits (never deleted)."""
    for name in (MANIFEST, LABELS):
        _check_output(out_dir / name, "file", None)
    for item in planned:
        _check_output(out_dir / item["file"], "dir" if item["dir"] else "file", item["replaceable"])


def _check_output(dest: Path, kind: str, replaceable) -> None:
    if dest.is_dir() and not dest.is_symlink() and not (kind == "dir" and replaceable and replaceable(dest)):
        raise SqueezeError(f"{dest} is a directory that squeeze-mobile did not write, where the export would write "
                           f"{'an artifact' if dest.name not in (MANIFEST, LABELS) else dest.name}; it was left alone: "
                           "remove or rename it, or choose another --out (out_dir) (nothing was changed)")
    check_destination(dest, kind, replaceable)


# What must agree for a new export to join the artifacts of an existing manifest in the same directory.
def _identity(manifest: Dict) -> Dict:
    src = manifest["model"].get("source") or {}
    source = {k: src.get(k) for k in ("kind", "sha256", "seed", "skip_unsafe_metadata") if k in src}
    inp = manifest["input"]
    return json.loads(json.dumps({"config": manifest["model"]["config"], "source": source,
                                  "input": {k: inp.get(k) for k in ("format", "shape", "batch", "dtype", "layout")}}))


def _describe_identity(ident: Dict) -> str:
    src = ident["source"]
    what = (f"checkpoint sha256 {str(src.get('sha256'))[:12]}" if src.get("kind") == "checkpoint"
            else f"{src.get('kind')} model" + (f" (seed {src['seed']})" if "seed" in src else ""))
    return f"{ident['config'].get('name')} {what}, {ident['input'].get('format')} input {ident['input'].get('shape')}"


def existing_manifest(out_dir: Path, new_manifest: Dict) -> Optional[Dict]:
    """The manifest already in ``out_dir`` when a new export may merge into it; None when there is none.

    Refuses (SqueezeError) a manifest for another model/input that describes artifacts, or one that cannot be read:
    its artifacts are on disk and would otherwise end up undescribed. A manifest of another model/input that lists no
    artifact (every format of that export failed) is replaced: None.
    """
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        old = read_manifest(out_dir)
    except SqueezeError as exc:
        raise SqueezeError(f"{out_dir} already holds a {MANIFEST} that cannot be merged with ({exc}); export into a "
                           f"fresh directory, or remove the old export first (nothing was changed)") from None
    mine, theirs = _identity(new_manifest), _identity(old)
    if mine != theirs and not old.get("artifacts"):
        # it describes no artifact (an export whose every format failed): nothing on disk would be left undescribed,
        # and its failures were another model's or input's; this export starts the folder afresh
        return None
    if mine != theirs:
        raise SqueezeError(f"{out_dir} holds an export of another model or input ({_describe_identity(theirs)}; this "
                           f"export: {_describe_identity(mine)}); export into a fresh directory, or remove the old "
                           "export first (nothing was changed)")
    return old


def merge_manifest(old: Optional[Dict], manifest: Dict, out_dir: Path, formats: Sequence[str],
                   replaced: Sequence[str] = ()) -> None:
    """Start ``manifest`` from ``old``'s records that describe artifacts still on disk (same verification video
    required); the formats of this run drop their old failures, and new records replace old ones per file."""
    if old is None:
        return
    old_video = (old.get("verification_inputs") or {}).get("video_sha256")
    new_video = manifest["verification_inputs"].get("video_sha256")
    kept = [a for a in old["artifacts"] if not a.get("file") and a.get("format") not in formats
            or a.get("file") and (out_dir / a["file"]).exists()]
    if old_video != new_video and any(a.get("file") for a in kept):
        raise SqueezeError(f"{out_dir} holds artifacts verified on another video (sha256 {str(old_video)[:12]}); "
                           "export with the same --verify-video, or into a fresh directory (nothing was changed)")
    manifest["artifacts"] = [a if a.get("file") in replaced else _checked_earlier(a, out_dir) for a in kept]
    manifest["failures"] = [f for f in old.get("failures", []) if isinstance(f, dict) and f.get("format") not in formats]
    manifest["tools"] = dict(sorted({**(old.get("tools") or {}), **manifest["tools"]}.items()))
    # the same model: a label file given to an earlier export (--labels) stays when this one brings none
    previous = out_dir / LABELS
    if manifest.get("labels") is None and old.get("labels") == LABELS and previous.is_file():
        try:
            if count_lines(previous) == manifest["model"]["config"]["num_classes"]:
                manifest["labels"] = LABELS
                if old.get("labels_sha256"):
                    manifest["labels_sha256"] = old["labels_sha256"]
        except (OSError, UnicodeDecodeError):
            pass


def _checked_earlier(record: Dict, out_dir: Path) -> Dict:
    """An earlier export's record kept beside this run's (not one of the files this run writes): when its file no
    longer has the recorded sha256 (truncated, edited, replaced), it is marked failed, with a warning, instead of being
    listed as it was verified."""
    import warnings

    from squeeze_mobile.errors import SqueezeWarning

    name = record.get("file")
    if not name or not record.get("sha256"):
        return record
    try:
        changed = sha256_file(out_dir / name) != record["sha256"]
    except (OSError, SqueezeError):
        changed = True
    if not changed:
        return record
    warnings.warn(SqueezeWarning(f"{out_dir / name}, exported earlier into this folder, changed since it was verified "
                                 "(sha256 differs); it is marked failed in the manifest: re-export that format"))
    reason = "the file changed after it was exported and verified (sha256 differs); re-export it"
    return {**record, "verification": {**(record.get("verification") or {}), "status": "fail", "failures": [reason]}}


def _add_record(manifest: Dict, record: Dict) -> None:
    """Append ``record``, replacing an older record of the same file (or, for a file-less record, format+container)."""
    def same(a):
        if record.get("file"):
            return a.get("file") == record["file"]
        return not a.get("file") and (a.get("format"), a.get("container")) == (record["format"], record.get("container"))

    manifest["artifacts"] = [a for a in manifest["artifacts"] if not same(a)] + [record]


def count_lines(path: Path) -> int:
    """The number of labels in a label file: one per line (``str.splitlines``, as every reader splits it)."""
    return len(path.read_text(encoding="utf-8").splitlines())


def matching_labels(cfg) -> Optional[Path]:
    """The label file of ``cfg`` when it names exactly one label per class of the model; else None (a checkpoint
    with another class count than its base config's label file)."""
    src = label_path(cfg.labels)
    if not src.is_file() or count_lines(src) != cfg.num_classes:
        return None
    return src


def preprocessing_record(model: SqueezeTime, spec: InputSpec) -> Dict:
    cfg = model.config
    return {
        "frames": spec.frames,
        "frame_interval": cfg.frame_interval,
        "sampling": "mmaction SampleFrames test_mode; indices loop for short videos",
        "resize_short_side": round(cfg.resize_short * spec.size / cfg.input_size),
        "crop": f"center {spec.size}x{spec.size}",
        "size": spec.size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "channel_order": "RGB",
        "value_range": "0..255 before normalisation",
        "normalisation": "inside the graph" if spec.input_format == "frames_uint8" else "(x - mean) / std, by the app",
        "time_into_channels": "channel index c*T + t",
    }


def tool_versions(formats: Sequence[str]) -> Dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for f in formats:
        versions.update(get_backend(f).tool_versions())
    return dict(sorted(versions.items()))


def _io_record(backend_name: str, spec: InputSpec, num_classes: int):
    dtype = "uint8" if spec.input_format == "frames_uint8" else "float32"
    layout = spec.layout
    if backend_name == "coreml" and dtype == "uint8":
        dtype = "float32"  # Core ML has no uint8 multi-array input: values 0..255 in float32
        layout = layout.replace("uint8 RGB 0..255", "RGB 0..255 as float32 (Core ML has no uint8 input)")
    inputs = [TensorInfo("input", list(spec.shape), dtype, layout).to_dict()]
    outputs = [TensorInfo("logits", [spec.batch, num_classes], "float32", "N x classes logits; softmax for probabilities").to_dict()]
    return inputs, outputs


class _DeferredInterrupt(DeferredSignals):
    """Ctrl-C or SIGTERM during a conversion is held until the conversion returns to Python.

    A KeyboardInterrupt raised inside a converter's C++ callbacks can abort the whole process (SIGABRT, seen
    with ExecuTorch), which would skip every cleanup and leave temporary files behind. The first signal
    therefore only sets a flag that the pipeline checks between steps (inside the atomic write, so the
    half-finished artifact is discarded); a second one interrupts at once.
    """

    def __init__(self):
        super().__init__("stopping after the current step (send it again to stop at once)")


def _write_manifest(out_dir: Path, manifest: Dict) -> None:
    try:
        with atomic_path(out_dir / MANIFEST) as tmp:
            tmp.write_text(json_text(manifest), encoding="utf-8")
    except OSError as exc:  # the previous manifest.json stays as it was (atomic write)
        raise write_error(out_dir / MANIFEST, exc) from None


def _no_room(exc: OSError) -> bool:
    """True for a write that failed for want of room, also inside shutil.copytree's collected errors (coremltools
    copies the .mlpackage it built into place with it)."""
    if exc.errno in NO_ROOM:
        return True
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        codes = [f"[Errno {code}]" for code in NO_ROOM]
        return any(code in str(entry) for entry in exc.args[0] for code in codes)
    return False


def write_error(path: Path, exc: OSError, what: str = "") -> SqueezeError:
    """One line for an OS error while writing ``path`` (the temporary was already removed by the atomic write)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if _no_room(exc):
        if isinstance(exc, shutil.Error):
            reason = next((os.strerror(code) for code in NO_ROOM if f"[Errno {code}]" in str(exc)), reason)
        return SqueezeError(f"{what}no room to write {path} ({reason}); free some space or choose another --out "
                            f"(the partial file was removed)")
    return SqueezeError(f"{what}cannot write {path} ({reason}); check the folder or choose another --out "
                        f"(the partial file was removed)")


def export_squeezetime(
    model: SqueezeTime,
    out_dir,
    formats=DEFAULT_FORMATS,
    spec: Optional[InputSpec] = None,
    precision: Optional[str] = None,
    verify_video=None,
    pte_backend: str = "xnnpack",
    coreml_legacy: bool = True,
    source: Optional[Dict] = None,
    progress: Optional[Progress] = None,
    quiet_tools: bool = True,
    calibration=None,
    calibration_views: int = DEFAULT_CALIBRATION_VIEWS,
    observer: str = DEFAULT_OBSERVER,
    labels=None,
    labels_name=None,
) -> ExportResult:
    """Export ``model`` to ``formats`` under ``out_dir`` with verification and a manifest.

    ``precision``: None = each format's default (fp32; Core ML fp16), 'fp32' / 'fp16' / 'int8' for all, or several
    ('fp32,int8' or a list: every format in each precision; file names carry the precision).
    int8 is static post-training quantization with each format's own quantizer, calibrated on ``calibration``:
    video files or folders (default: the shipped verification video, on frames no verification view uses), or a
    ready :class:`export.calibration.CalibrationSet`; ``calibration_views`` views; ``observer`` picks the
    activation-range observer (minmax or histogram). An int8 artifact that misses the int8 thresholds on the
    held-out views is not written: the format fails with one line.
    ``source`` describes where the weights came from (recorded so ``squeeze verify`` can rebuild it).
    ``labels``: a label file for the model's head (one line per class, checked before any work), or the list of its
    labels (``labels_name`` names it in messages), written as labels.txt; default: the config's label file when it
    has one line per class, else none (manifest labels null).
    """
    from squeeze_mobile.errors import user_path
    from squeezetime.model import as_cpu_float32

    if not isinstance(model, SqueezeTime):
        raise SqueezeError(f"export_squeezetime takes a SqueezeTime model; got {type(model).__name__}")
    if spec is not None and not isinstance(spec, InputSpec):
        raise SqueezeError(f"spec must be a squeezetime.rewrite.InputSpec (e.g. InputSpec(frames=8, size=160)); got "
                           f"{type(spec).__name__}")
    out_dir = user_path(out_dir, "the output folder (out_dir)")
    model = as_cpu_float32(model)   # a .half() / .double() / GPU model is exported from its float32 CPU copy
    if labels is not None:
        from squeezetime.video import resolve_labels

        labels = resolve_labels(labels, model.config.num_classes, labels_name)
    source = checked_source(source, model)
    formats = parse_formats(formats)
    precisions = parse_precisions(precision)
    check_format_precisions(formats, precision)
    if observer not in OBSERVERS:
        raise SqueezeError(f"unknown activation observer {observer!r}; use one of {', '.join(OBSERVERS)}")
    out_dir = Path(out_dir)
    # a folder this export creates is removed again if the export fails before writing into it
    try:
        with removed_if_left_empty(out_dir):
            check_writable(out_dir)
            with folder_lock(out_dir):
                return _export_squeezetime(model, out_dir, formats, spec, precision, precisions, verify_video,
                                           pte_backend, coreml_legacy, source, progress, quiet_tools, calibration,
                                           calibration_views, observer, labels)
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        shape = spec.shape if spec is not None else "the model's default input"
        raise SqueezeError(f"out of memory for an input of shape {list(shape) if spec is not None else shape} "
                           f"({_alloc_reason(exc)}); use a smaller --batch or --size (the artifacts already "
                           f"written stay described in the manifest)") from None


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError, or PyTorch's allocator refusing (a RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text or "out of memory" in text.lower()


def _alloc_reason(exc: BaseException) -> str:
    import re

    m = re.search(r"allocate (\d+) bytes", str(exc))
    return f"{int(m.group(1)) / 2**30:.1f} GiB in one allocation" if m else (type(exc).__name__)


def _export_squeezetime(model, out_dir: Path, formats, spec, precision, precisions, verify_video, pte_backend,
                        coreml_legacy, source, progress, quiet_tools, calibration, calibration_views,
                        observer, labels=None) -> ExportResult:
    say = progress or (lambda fmt, msg: None)
    spec = spec or InputSpec(frames=model.config.frames, size=model.config.input_size)
    check_writable(out_dir)
    cfg = model.config
    stem = f"squeezetime_{cfg.name}_{spec.frames}x{spec.size}_{spec.input_format}"
    # every output path and the existing manifest are checked before any work is done
    planned = planned_outputs(formats, stem, spec, precision, pte_backend, coreml_legacy)
    check_outputs(out_dir, planned)
    model_record = {"name": "squeezetime", "config": cfg.to_dict(), "source": source or {"kind": "unspecified"}}
    input_record = {"format": spec.input_format, "shape": list(spec.shape), "batch": spec.batch,
                    "dtype": str(spec.dtype).replace("torch.", ""), "layout": spec.layout}
    old = existing_manifest(out_dir, {"model": model_record, "input": input_record})

    say("rewrite", "folding BN, baking pos_embed, building the export-ready graph")
    ready = export_ready(model, spec)
    example = spec.example(seed=0)
    say("verify", "decoding verification clips and computing PyTorch reference logits")
    vset: VerificationSet = build_verification_set(model, spec, verify_video)
    calib = None
    if "int8" in precisions:
        if isinstance(calibration, CalibrationSet):
            calib = calibration
            check_separation(calib.record(), vset)
        else:
            say("calibrate", "decoding calibration views (official preprocessing) on frames no verification view uses")
            calib = build_calibration_set(cfg, spec, calibration, calibration_views, vset)
        say("calibrate", f"{len(calib)} calibration views from {calib.source}; none shares a frame with the "
                         f"{sum(vset.real)} verification views")

    labels_src = matching_labels(cfg) if labels is None else None   # the config's own label file, if it fits
    manifest = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_record,
        "input": input_record,
        "preprocessing": preprocessing_record(model, spec),
        "labels": LABELS if labels is not None or labels_src is not None else None,
        "verification_inputs": {"video": vset.video, "video_sha256": vset.video_sha256,
                                "video_frames": vset.video_frames, "inputs": vset.names},
        "tools": tool_versions(formats),
        "artifacts": [],
        "failures": [],
    }
    merge_manifest(old, manifest, out_dir, formats, replaced=[item["file"] for item in planned])
    if manifest["labels"] is None:
        say("labels", f"no {LABELS} written: the {cfg.labels} label file does not have one line per class of this "
                      f"{cfg.num_classes}-class model; manifest labels: null (predictions show class_N; --labels "
                      f"FILE names them)")

    labels_text = None
    if labels is not None or labels_src is not None:
        # written as UTF-8 lines without a byte-order mark, whatever the given file used (the apps read labels.txt
        # line by line: a Windows editor's mark would start the first label, CRLF end every label with \r); its
        # sha256 recorded, so squeeze verify notices labels edited or reordered
        names = labels if labels is not None else read_label_file(labels_src, cfg.num_classes)
        labels_text = "".join(f"{label}\n" for label in names).encode("utf-8")
        manifest["labels_sha256"] = hashlib.sha256(labels_text).hexdigest()
    result = ExportResult(out_dir, manifest)
    record = _DirectoryRecord(out_dir, labels_text, old)

    quant = {"calibration": calib, "observer": observer}
    with _DeferredInterrupt() as interrupt:
        _export_formats(formats, precisions, spec, pte_backend, coreml_legacy, ready, example, out_dir, stem, vset,
                        cfg.num_classes, say, quiet_tools, manifest, result, interrupt, quant, record)
    return result


class _DirectoryRecord:
    """What an export writes besides its artifacts (labels.txt, manifest.json), written only once a format has run to
    its end, so a run stopped before that (Ctrl-C, a signal) changes nothing: a folder it created is removed again
    (empty), an earlier export in the folder stays byte for byte. A run that lands no artifact where an earlier one
    did records its failures in the manifest but keeps the earlier labels (its own --labels would describe artifacts
    it did not write)."""

    def __init__(self, out_dir: Path, labels_text: Optional[bytes], old: Optional[Dict]):
        self.out_dir, self.labels_text = out_dir, labels_text
        self.old = old if old and old.get("artifacts") else None   # an earlier export with artifacts to keep
        self.landed = False

    def write(self, manifest: Dict, landed: bool) -> None:
        self.landed = self.landed or landed
        if self.old is not None and not self.landed:
            kept = {"labels": self.old.get("labels"),
                    **({"labels_sha256": self.old["labels_sha256"]} if self.old.get("labels_sha256") else {})}
            manifest = {**{k: v for k, v in manifest.items() if k not in ("labels", "labels_sha256")}, **kept}
        elif self.labels_text is not None:
            path = self.out_dir / LABELS
            previous = path.read_bytes() if path.is_file() else None
            self._write_labels(self.labels_text)
            try:
                _write_manifest(self.out_dir, manifest)
            except SqueezeError:
                # the manifest on disk is still the previous one: so must its label file be
                if previous is None:
                    remove(path)
                else:
                    self._write_labels(previous)
                raise
            self.labels_text = None   # written once
            return
        _write_manifest(self.out_dir, manifest)

    def _write_labels(self, text: bytes) -> None:
        try:
            with atomic_path(self.out_dir / LABELS) as tmp:
                Path(tmp).write_bytes(text)
        except OSError as exc:
            raise write_error(self.out_dir / LABELS, exc) from None


def _export_formats(formats, precisions, spec, pte_backend, coreml_legacy, ready, example, out_dir, stem, vset,
                    num_classes, say, quiet_tools, manifest, result, interrupt, quant=None, record=None):
    quant = quant or {}
    record = record or _DirectoryRecord(out_dir, None, None)
    for fmt in formats:
        backend = get_backend(fmt)
        for precision in precisions:
            interrupt.check()
            prec = precision or backend.default_precision
            opts = ExportOptions(spec=spec, precision=prec, pte_backend=pte_backend, coreml_legacy=coreml_legacy)
            if prec == "int8":
                calib = quant["calibration"]
                opts.extra.update({"calibration": calib.tensors_for(spec), "observer": quant.get("observer",
                                   DEFAULT_OBSERVER), "reference": vset, "calibration_record": calib.record()})
            there = _names_in(out_dir)
            try:
                if prec not in backend.precisions:
                    raise SqueezeError(f"{fmt} does not offer {prec} export here; supported: {', '.join(backend.precisions)}")
                records = _export_one(backend, ready, example, out_dir, stem, opts, vset, num_classes, say, quiet_tools,
                                      interrupt)
            except SqueezeError as exc:
                failure = {"format": fmt, "error": str(exc)}
                if len(precisions) > 1 or prec == "int8":
                    failure["precision"] = prec
                manifest["failures"].append(failure)
                result.failures.append(failure)
                say(fmt, f"FAILED: {exc}")
                records = getattr(exc, "records", [])  # artifacts of this format that did complete
            for artifact in records:
                _add_record(manifest, artifact)
                result.records.append(artifact)
            try:
                record.write(manifest, landed=bool(records))
            except SqueezeError as exc:
                # the artifacts just written would be on disk without a description: remove the new ones
                new = [r["file"] for r in records if r.get("file") and r["file"] not in there]
                for name in new:
                    remove(out_dir / name)
                raise SqueezeError(f"{exc}; {', '.join(new)} removed again, as the manifest could not describe "
                                   f"{'them' if len(new) > 1 else 'it'}" if new else str(exc)) from None
    # a signal held during the last step still ends the command as interrupted (exit 130 / 143), its artifact kept
    interrupt.check()


def _names_in(folder: Path) -> set:
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return set()


def _export_one(backend, ready, example, out_dir: Path, stem: str, opts: ExportOptions, vset, num_classes, say, quiet_tools,
                interrupt=None):
    """Convert, write atomically, verify; returns manifest records (Core ML can give two artifacts).

    Every artifact is verified on the temporary file, before it is renamed into place. An int8 artifact that misses
    the int8 thresholds is never written (the format fails with one line naming the metric); another that fails
    verification is written and recorded as failed where the directory held no artifact of that name, but never
    replaces one that is there (a converter regression must not destroy a good artifact)."""
    records, errors = [], []
    base_opts = opts
    for target in backend.targets(stem, base_opts):
        role, fname, convert = target["role"], target["file"], target["convert"]
        opts = dataclasses.replace(base_opts, extra={**base_opts.extra, **target.get("options", {})})
        dest = out_dir / fname
        check_free_space(out_dir, weight_bytes(ready, opts.precision), f"{backend.name}: {fname}")
        say(backend.name, f"{'quantizing (int8) ' if opts.precision == 'int8' else ''}converting -> {fname}")
        t0 = time.perf_counter()
        early, failed, replacing = None, None, dest.exists()
        try:
            with atomic_path(dest, replaceable=backend.replaceable) as tmp:
                with quiet(quiet_tools):
                    try:
                        extras = convert(ready, example, tmp, opts) or {}
                    except SqueezeError:
                        raise
                    except OSError as exc:
                        if not _no_room(exc):
                            raise conversion_error(backend.name, exc) from None
                        raise write_error(dest, exc, f"{backend.name}: ") from None  # a full disk, not the model
                    except Exception as exc:  # noqa: BLE001 - converters raise anything; name backend + op
                        raise conversion_error(backend.name, exc) from None
                seconds = time.perf_counter() - t0
                if interrupt is not None:
                    interrupt.check()  # inside the atomic write: an interrupted artifact is discarded
                if opts.precision == "int8":
                    early = _verify_int8(backend, tmp, fname, vset, opts, extras, num_classes)
                else:
                    say(backend.name, f"verifying {fname}")
                    early, failed = _verify_checked(backend, tmp, vset, opts, extras, num_classes)
                    problem = failed or ("; ".join(early["failures"]) if early["status"] == "fail" else None)
                    if replacing and problem:
                        raise SqueezeError(f"{backend.name}: verification of the new {fname} failed ({problem}); the "
                                           f"previous {fname} and its manifest record were kept")
        except SqueezeError as exc:
            if target.get("best_effort"):  # the old format is best effort: say so plainly, do not fail the run
                records.append({"format": backend.name, "container": "mlmodel", "file": None,
                                "status": "not produced", "reason": str(exc)})
                say(backend.name, f"legacy .mlmodel not produced: {exc}")
                continue
            if role == "main":
                if records:
                    exc.records = records  # artifacts of this format that did complete
                raise
            # one of several int8 variants (Core ML W8A8 / weight-only): the others are still tried
            say(backend.name, f"FAILED: {exc}")
            errors.append(str(exc))
            continue
        inputs, outputs = _io_record(backend.name, opts.spec, num_classes)
        own = backend.file_io_names(dest)   # e.g. a .tflite's signature names (args_0 / output_0), what an app calls
        if own and len(own["inputs"]) == len(inputs) and len(own["outputs"]) == len(outputs):
            for entry, tensor in zip(inputs + outputs, own["inputs"] + own["outputs"]):
                entry["tensor"] = tensor
        record = {
            "format": backend.name,
            "container": dest.suffix.lstrip("."),
            "file": fname,
            "bytes": _size(dest),
            "sha256": sha256_file(dest),
            "precision": opts.precision,
            "runtime": backend.runtime,
            "inputs": inputs,
            "outputs": outputs,
            "export_seconds": round(seconds, 2),
            "deterministic": backend.deterministic,
            **({"signature": own["signature"]} if own and own.get("signature") else {}),
            **extras,
        }
        if not backend.deterministic:
            record["nondeterminism"] = ("the .mlpackage Manifest.json carries random item identifiers"
                                        if fname.endswith(".mlpackage") else
                                        "coremltools writes a different file on every run from the same model")
        if failed is not None:
            record["verification"] = {"status": "fail", "failures": [failed]}
            records.append(record)
            error = SqueezeError(f"{backend.name}: verification of {fname} failed: {failed}")
            error.records = records  # the artifact is on disk: the manifest must still describe it
            raise error from None
        numeric = early
        record["verification"] = numeric
        records.append(record)
        if numeric["status"] == "fail":
            say(backend.name, f"verification FAILED: {'; '.join(numeric['failures'])}")
        elif numeric.get("numeric") and opts.precision == "int8":
            say(backend.name, f"ok: logits SQNR {numeric['sqnr_db']:.1f} dB, top-1 {numeric['top1_agreement']:.0%}, "
                              f"KL {numeric['softmax_kl']:.2e} on {numeric.get('judged_inputs', numeric['inputs'])} "
                              f"held-out views ({seconds:.1f}s)" + (f"; {numeric['runtime']}" if numeric.get("evaluator") else ""))
        elif numeric.get("numeric"):
            bracket = numeric.get("accumulation_bracket")
            say(backend.name, f"ok: PSNR {numeric['psnr_db']:.1f} dB, max-abs {numeric['max_abs_error']:.2e}, "
                              f"top-5 {numeric['top5_agreement']:.0%} ({seconds:.1f}s)"
                              + (f"; {numeric['runtime']}" if numeric.get("evaluator") else "")
                              + (f"; with fp16 accumulation PSNR {bracket['fp16']['psnr_db']:.1f} dB" if bracket else ""))
        else:
            say(backend.name, f"ok: structure verified; numeric {numeric['status']} ({seconds:.1f}s)")
    if errors:
        error = SqueezeError("; ".join(errors))
        error.records = records  # the variants that did pass are on disk and described
        raise error
    return records


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def weight_bytes(module, precision: str) -> int:
    """What an artifact of ``module`` at ``precision`` holds at least: its parameters and buffers."""
    count = sum(t.numel() for t in (*module.parameters(), *module.buffers()))
    return count * BYTES_PER_WEIGHT.get(precision, 4)


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Refuse a conversion the folder's disk cannot hold before it starts (a converter that runs out of space may end
    the process from C++ with no message a user sees): one line, nothing written."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    free = shutil.disk_usage(existing).free
    if free < need:
        raise SqueezeError(f"{what} needs at least {need / 1e6:.1f} MB and {folder} has {free / 1e6:.1f} MB free; "
                           "free some space or choose another --out (nothing was written)")


def _verify_checked(backend, path: Path, vset, opts: ExportOptions, extras: Dict, num_classes):
    """(verification record, None), or (None, the one-line reason) when the artifact could not be checked or run."""
    try:
        structural = backend.structural_check(path, opts, num_classes) if backend.name == "coreml" else None
        numeric = verify_artifact(backend, path, vset, opts.spec, opts.precision, extras)
    except SqueezeError as exc:
        return None, str(exc)
    if structural:
        numeric["structural"] = structural
    if backend.name == "coreml" and numeric.get("numeric"):
        cross = backend.mil_cross_check(path, vset, opts.spec, opts.precision)  # macOS: Apple's runtime vs MIL
        if cross:
            numeric["mil_evaluation"] = cross
    return numeric, None


def _verify_int8(backend, path: Path, fname: str, vset, opts: ExportOptions, extras: Dict, num_classes) -> Dict:
    """Verify an int8 artifact at its temporary path; SqueezeError (nothing written) when it misses a threshold."""
    quantization = extras.setdefault("quantization", {})
    record = opts.extra.get("calibration_record")
    if record is not None and quantization.get("calibration_batches", 1):  # weight-only int8 calibrates nothing
        quantization["calibration"] = record
        quantization["held_out"] = check_separation(record, vset)
    structural = backend.structural_check(path, opts, num_classes) if backend.name == "coreml" else None
    try:
        numeric = verify_artifact(backend, path, vset, opts.spec, opts.precision, extras)
    except SqueezeError as exc:
        raise SqueezeError(f"{backend.name}: int8 {fname} failed to run: {exc}") from None
    if structural:
        numeric["structural"] = structural
    if numeric["status"] == "fail":
        decisive = numeric.get("top1_agreement_decisive")
        raise SqueezeError(f"{backend.name}: int8 quantization of {fname} is too far from fp32 on "
                           f"{numeric.get('judged_inputs', numeric['inputs'])} held-out real views "
                           f"({'; '.join(numeric['failures'])}; measured: logits SQNR {numeric['sqnr_db']:.1f} dB, top-1 "
                           f"{'-' if decisive is None else format(decisive, '.0%')} on {numeric.get('decisive_views', 0)} "
                           f"decisive views; thresholds: SQNR >= {THRESHOLDS['int8']['sqnr_db']:.0f} dB, top-1 >= "
                           f"{THRESHOLDS['int8']['top1']:.0%}); nothing was written: check the calibration videos "
                           "(--calibration, --calibration-views) or try --observer histogram")
    return numeric


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ------------------------------------------------------------------------------------------- re-verify
MAX_MANIFEST_BYTES = 64 << 20
_HEX = set("0123456789abcdef")


def _json_kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def manifest_path(target) -> Path:
    """The manifest.json of an export directory (``target`` may also be the manifest file itself)."""
    target = Path(target)
    check_text_path(target, "export directory")
    if target.is_dir():
        path = target / MANIFEST
        if not path.is_file():
            what = "a directory" if path.is_dir() else special_kind(path)
            if what:
                raise SqueezeError(f"{path} is {what}, not the manifest an export writes; re-run `squeeze export`")
            raise SqueezeError(f"{target} has no {MANIFEST}; run `squeeze export` first")
        return path
    if not target.exists():
        raise SqueezeError(f"{target} does not exist; give the directory that `squeeze export --out` wrote")
    kind = describe(target)
    if target.name == MANIFEST or kind == "a JSON file":
        return target
    raise SqueezeError(f"{target} is {kind or 'a file of unknown kind'}, not an export directory; give the directory "
                       f"that holds {MANIFEST} (written by `squeeze export --out`)")


def read_manifest(out_dir) -> Dict:
    """Read and check the structure of an export's manifest.json; any problem is a one-line SqueezeError."""
    path = manifest_path(out_dir)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise SqueezeError(f"{path} is {path.stat().st_size / 2**20:.0f} MB, far too large for an export manifest")
        text = path.read_bytes().decode("utf-8-sig")   # a Windows editor's byte-order mark is not JSON
        manifest = json.loads(text)
    except OSError as exc:
        raise SqueezeError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SqueezeError(f"{path} is not a text file (not UTF-8); it is not an export manifest") from None
    except json.JSONDecodeError as exc:
        raise SqueezeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-run `squeeze export`") from None
    except RecursionError:
        raise SqueezeError(f"{path} is not an export manifest (JSON nested too deeply)") from None
    return validate_manifest(manifest, path)


def _bad(path, what: str):
    raise SqueezeError(f"{path} is not a valid export manifest: {what}; re-run `squeeze export`")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1




def validate_manifest(manifest, path) -> Dict:
    """The structure every reader (verify, bench, merge) relies on; raises SqueezeError naming the first problem."""
    if not isinstance(manifest, dict):
        _bad(path, f"the top level is {_json_kind(manifest)}, not an object")
    if manifest.get("schema") != SCHEMA:
        from squeezed_attention.decoder_session import SCHEMA_PREFIX as DECODER_SCHEMA_PREFIX

        if str(manifest.get("schema")).startswith(DECODER_SCHEMA_PREFIX):  # `squeeze export` wrote it, for the decoder
            raise SqueezeError(f"{path} describes a decoder export (`squeeze export decoder`), not a SqueezeTime "
                               "export")
        raise SqueezeError(f"{path} has schema {str(manifest.get('schema'))[:60]!r}, expected {SCHEMA!r}; "
                           "it was not written by `squeeze export`")
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("config"), dict):
        _bad(path, "'model' must be an object with a 'config' object")
    if not isinstance(model["config"].get("name"), str):
        _bad(path, "'model.config.name' must be a string")
    if "source" in model and not isinstance(model["source"], dict):
        _bad(path, "'model.source' must be an object")
    inp = manifest.get("input")
    if not isinstance(inp, dict):
        _bad(path, "'input' must be an object")
    if inp.get("format") not in INPUT_FORMATS:
        _bad(path, f"'input.format' must be one of {', '.join(INPUT_FORMATS)}")
    shape = inp.get("shape")
    rank = 4 if inp["format"] == "squeezed" else 5
    if not isinstance(shape, list) or len(shape) != rank or not all(_positive_int(d) for d in shape):
        _bad(path, f"'input.shape' must be {rank} positive integers for {inp['format']} input")
    if "batch" in inp and not _positive_int(inp["batch"]):
        _bad(path, "'input.batch' must be a positive integer")
    arts = manifest.get("artifacts")
    if not isinstance(arts, list):
        _bad(path, "no 'artifacts' list" if arts is None else f"'artifacts' is {_json_kind(arts)}, not a list")
    for i, a in enumerate(arts):
        if not isinstance(a, dict):
            _bad(path, f"artifact #{i + 1} is {_json_kind(a)}, not an object")
        if not isinstance(a.get("format"), str):
            _bad(path, f"artifact #{i + 1} has no 'format' string")
        if a.get("file") is not None and not is_plain_file_name(a["file"]):
            _bad(path, f"artifact #{i + 1} 'file' must be a plain file name inside the export directory")
        for key in ("bytes",):
            if key in a and a[key] is not None and not (isinstance(a[key], int) and not isinstance(a[key], bool) and a[key] >= 0):
                _bad(path, f"artifact #{i + 1} '{key}' must be a non-negative integer")
        for key in ("precision", "container", "sha256"):
            if key in a and not isinstance(a[key], str):
                _bad(path, f"artifact #{i + 1} '{key}' must be a string")
        if "verification" in a and not isinstance(a["verification"], dict):
            _bad(path, f"artifact #{i + 1} 'verification' must be an object")
    if "failures" in manifest and not isinstance(manifest["failures"], list):
        _bad(path, "'failures' must be a list")
    if "tools" in manifest and not isinstance(manifest["tools"], dict):
        _bad(path, "'tools' must be an object")
    if "verification_inputs" in manifest and not isinstance(manifest["verification_inputs"], dict):
        _bad(path, "'verification_inputs' must be an object")
    return manifest


_CONFIG_OVERRIDES = ("frames", "width", "num_classes", "depth", "pos_dim")


def config_overrides(config: Dict, path="manifest") -> Dict:
    """The architecture fields of a recorded config, type- and range-checked (a manifest is untrusted input)."""
    from squeezetime.config import CONFIGS, get_config

    if config.get("name") not in CONFIGS:
        _bad(path, f"'model.config.name' must be one of {', '.join(CONFIGS)}")
    out = {}
    for key in _CONFIG_OVERRIDES:
        if key not in config:
            continue
        v = config[key]
        if key == "width":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 4
        elif key == "pos_dim":
            ok = isinstance(v, list) and len(v) == 4 and all(_positive_int(d) and d <= 1024 for d in v)
        elif key == "num_classes":
            ok = _positive_int(v) and v <= 100_000
        else:
            ok = _positive_int(v) and v <= 1024
        if not ok:
            _bad(path, f"'model.config.{key}' has an impossible value {str(v)[:40]}")
        out[key] = v
    get_config(config["name"], **out)  # SqueezeError for unsupported combinations (frames, depth, ...)
    return out


def check_source(source, path="manifest") -> Dict:
    if not isinstance(source, dict):
        _bad(path, "'model.source' must be an object")
    kind = source.get("kind")
    if kind == "checkpoint":
        if not isinstance(source.get("path"), str) or not source["path"] or "\x00" in source["path"]:
            _bad(path, "'model.source.path' must be the checkpoint path")
        if not _is_sha256(source.get("sha256")):
            _bad(path, "'model.source.sha256' must be a sha256 hex digest")
    elif kind == "seeded":
        if "seed" in source and not (isinstance(source["seed"], int) and not isinstance(source["seed"], bool)
                                     and 0 <= source["seed"] < 2**63):
            _bad(path, "'model.source.seed' must be a non-negative integer")
    else:
        raise SqueezeError(f"{path} records model source {str(kind)[:40]!r}; re-verification needs a checkpoint or "
                           "seeded source: pass --checkpoint PATH to the checkpoint it was exported from")
    return source


def checked_source(source, model: SqueezeTime) -> Dict:
    """``export_squeezetime``'s ``source``, checked before any work: it must rebuild ``model``'s very weights, as
    ``squeeze verify`` will rebuild them from the manifest (an export whose manifest names another model would fail its
    own verification). None: {'kind': 'unspecified'} (verify then needs --checkpoint). A checkpoint source without a
    sha256 gets the file's; its path is recorded absolute."""
    if source is None:
        return {"kind": "unspecified"}
    usage = ("source must be None, {'kind': 'checkpoint', 'path': PATH} (the file the model was loaded from) or "
             "{'kind': 'seeded', 'seed': N} (squeezetime.seeded_model's seed)")
    if not isinstance(source, dict) or source.get("kind") not in ("checkpoint", "seeded"):
        raise SqueezeError(f"{usage}; got {str(source)[:80]}")
    source = dict(source)
    if source["kind"] == "checkpoint":
        path = source.get("path")
        if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
            raise SqueezeError(f"source path {str(path)[:200]!r} is not a checkpoint file; {usage}")
        source["path"] = str(Path(path).resolve())
        digest = sha256_file(Path(path))
        if source.setdefault("sha256", digest) != digest:
            raise SqueezeError(f"source sha256 {str(source['sha256'])[:12]} is not the sha256 of {path} ({digest[:12]})")
        if type(source.setdefault("skip_unsafe_metadata", False)) is not bool:
            raise SqueezeError(f"source skip_unsafe_metadata must be true or false; got {source['skip_unsafe_metadata']!r}")
    else:
        seed = source.setdefault("seed", 0)
        if type(seed) is not int or not 0 <= seed < 2**63:
            raise SqueezeError(f"source seed must be a whole number >= 0; got {seed!r}")
    import torch

    config = json.loads(json.dumps(model.config.to_dict()))   # as the manifest records it
    rebuilt = model_from_source(source, config).state_dict()
    mine = model.state_dict()
    differ = [k for k in mine if k not in rebuilt or rebuilt[k].shape != mine[k].shape
              or not torch.equal(rebuilt[k].to(mine[k].dtype), mine[k])]
    if differ or set(rebuilt) - set(mine):
        what = f"checkpoint {source['path']}" if source["kind"] == "checkpoint" else f"seeded model (seed {source['seed']})"
        raise SqueezeError(f"source {what} does not rebuild this model ({(differ or sorted(set(rebuilt) - set(mine)))[0]} "
                           "differs); pass the source the weights came from, or leave source out (nothing was written)")
    return source


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


def resolve_source(source, config: Dict, checkpoint=None, path="manifest") -> Dict:
    """The model source to rebuild from: the manifest's, or ``checkpoint`` (``--checkpoint``: where the checkpoint is
    now, when it moved) checked against what the manifest recorded: its sha256 where one is recorded, else the
    architecture the loaded checkpoint describes against the manifest's config. One-line SqueezeError on a mismatch."""
    if checkpoint is None:
        return check_source(source, path)
    given = Path(checkpoint)
    if not given.is_file():
        raise SqueezeError(f"--checkpoint {given} does not exist or is not a file")
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind == "seeded":
        raise SqueezeError("this export came from a seeded random model, not a checkpoint; drop --checkpoint")
    if kind == "checkpoint":
        check_source(source, path)
        if sha256_file(given) != source["sha256"]:
            raise SqueezeError(f"--checkpoint {given} is not the checkpoint this export came from (its sha256 differs "
                               f"from the manifest's {source['sha256'][:12]}...); give the original checkpoint")
        return {**source, "path": str(given.resolve())}
    # no checkpoint digest recorded (an export through the Python API without a source): the architecture must match
    import squeezetime
    from squeezetime.config import get_config

    expected = get_config(config.get("name"), **config_overrides(config, path)).to_dict()
    skip = bool(source.get("skip_unsafe_metadata", False)) if isinstance(source, dict) else False
    loaded = squeezetime.load_checkpoint(given, config=config.get("name"), skip_unsafe_metadata=skip).config.to_dict()
    differ = [f"{k} {loaded.get(k)} vs {expected.get(k)}" for k in ("name", *_CONFIG_OVERRIDES)
              if json.dumps(loaded.get(k)) != json.dumps(expected.get(k))]
    if differ:
        raise SqueezeError(f"--checkpoint {given} does not describe the model this export came from "
                           f"({', '.join(differ)} in the manifest); give the checkpoint it was exported from")
    return {"kind": "checkpoint", "path": str(given.resolve()), "sha256": sha256_file(given),
            "skip_unsafe_metadata": skip}


def check_source_file(source: Dict) -> None:
    """A checkpoint source's file is where the manifest (or --checkpoint) says, unchanged; one-line error otherwise."""
    if source.get("kind") != "checkpoint":
        return
    path = Path(source["path"])
    if not path.is_file():
        raise SqueezeError(f"the checkpoint this export came from is gone: {path}; pass --checkpoint PATH to where "
                           "it is now (its sha256 is checked)")
    if sha256_file(path) != source.get("sha256"):
        raise SqueezeError(f"checkpoint {path} changed since the export (sha256 differs); pass --checkpoint PATH to "
                           "the original")


def model_from_source(source: Dict, config: Dict, checkpoint=None) -> SqueezeTime:
    """Rebuild the PyTorch model an export came from, as recorded in its manifest (``checkpoint``: where the recorded
    checkpoint is now, checked by :func:`resolve_source`)."""
    import squeezetime

    source = resolve_source(source, config, checkpoint)
    overrides = config_overrides(config)
    kind = source.get("kind")
    if kind == "checkpoint":
        check_source_file(source)
        path = Path(source["path"])
        return squeezetime.load_checkpoint(path, config=config.get("name"),
                                           skip_unsafe_metadata=bool(source.get("skip_unsafe_metadata", False)))
    from squeezetime.model import seeded_model

    return seeded_model(config.get("name", "k400"), seed=source.get("seed", 0), **overrides)


@dataclass
class VerificationPlan:
    """What `squeeze verify` will check, worked out from the manifest before any model is built."""

    out_dir: Path
    manifest: Dict
    spec: InputSpec
    video: Path
    artifacts: List[Dict]  # [{record, path, failure or None}]
    source: Optional[Dict] = None  # the model source to rebuild from (the manifest's, or a moved --checkpoint)


def find_verification_video(vinfo: Dict, manifest_dir: Path, verify_video=None, path="manifest") -> Path:
    """The video the export was verified on: ``verify_video`` if given, else the recorded path (absolute, or
    relative to the working or the export directory). Its sha256 must match the manifest's."""
    if not isinstance(vinfo, dict):
        _bad(path, "no 'verification_inputs' object")
    recorded, digest = vinfo.get("video"), vinfo.get("video_sha256")
    if not _is_sha256(digest):
        _bad(path, "'verification_inputs.video_sha256' must be a sha256 hex digest")
    if recorded is not None and (not isinstance(recorded, str) or "\x00" in recorded):
        _bad(path, "'verification_inputs.video' must be a path")
    if verify_video is not None:
        video = Path(verify_video)
        if not video.is_file():
            raise SqueezeError(f"--verify-video {video} does not exist or is not a file")
        if sha256_file(video) != digest:
            raise SqueezeError(f"--verify-video {video} is not the video this export was verified on (its sha256 "
                               f"differs from the manifest's {digest[:12]}...); give the original video")
        return video
    candidates = []
    if recorded:
        candidates = [Path(recorded)] if Path(recorded).is_absolute() else [Path(recorded), manifest_dir / recorded]
    video = next((c for c in candidates if c.is_file()), None)
    if video is None:
        raise SqueezeError(f"the verification video {recorded} is not there (moved, or the export came from another "
                           "machine); pass --verify-video PATH to the same video (its sha256 is checked)")
    if sha256_file(video) != digest:
        raise SqueezeError(f"verification video {video} changed since the export (sha256 differs); pass "
                           "--verify-video PATH to the original video")
    return video


def plan_verification(out_dir, verify_video=None, checkpoint=None) -> VerificationPlan:
    """Read and check everything `verify_directory` needs from the manifest, without building a model
    (``checkpoint``: where the recorded checkpoint is now, if it moved)."""
    mpath = manifest_path(out_dir)
    manifest = read_manifest(mpath)
    out_dir = mpath.parent
    config = manifest["model"]["config"]
    overrides = config_overrides(config, mpath)
    if checkpoint is None:
        check_source(manifest["model"].get("source"), mpath)
    from squeezetime.config import get_config

    frames = get_config(config["name"], **overrides).frames
    inp = manifest["input"]
    shape = inp["shape"]
    size = shape[-1] if inp["format"] != "frames_uint8" else shape[2]
    spec = InputSpec(frames=frames, size=size, input_format=inp["format"], batch=inp.get("batch", 1))
    if list(spec.shape) != shape:
        _bad(mpath, f"'input.shape' {shape} does not match the model's {frames} frames ({list(spec.shape)} expected)")
    artifacts = []
    for art in manifest["artifacts"]:
        if not art.get("file"):
            continue
        get_backend(art["format"])  # an unknown format is a one-line error
        if not _is_sha256(art.get("sha256")):
            _bad(mpath, f"artifact {art['file']} has no sha256")
        if art.get("precision") not in THRESHOLDS:
            _bad(mpath, f"artifact {art['file']} 'precision' must be one of {', '.join(THRESHOLDS)}")
        artifacts.append({"record": art, "path": out_dir / art["file"]})
    if not artifacts:
        raise SqueezeError(f"{mpath} lists no artifacts to verify")
    video = find_verification_video(manifest.get("verification_inputs"), out_dir, verify_video, mpath)
    source = resolve_source(manifest["model"].get("source"), config, checkpoint, mpath)
    return VerificationPlan(out_dir, manifest, spec, video, artifacts, source)


def check_labels(manifest: Dict, out_dir: Path, path="manifest") -> None:
    """The label file the manifest names is there, next to it, with one line per class of the model."""
    name = manifest.get("labels")
    if name is None:
        return
    if not is_plain_file_name(name):
        _bad(path, "'labels' must be null or a plain file name inside the export directory")
    labels = Path(out_dir) / name
    if special_kind(labels):
        raise SqueezeError(f"{labels}, the label file the manifest names, is {special_kind(labels)}; copy the file "
                           "back or re-export")
    if not labels.is_file():
        raise SqueezeError(f"{labels}, the label file the manifest names, is missing; copy it back or re-export")
    from squeezetime.config import get_config

    config = manifest["model"]["config"]
    classes = get_config(config["name"], **config_overrides(config, path)).num_classes
    try:
        lines = count_lines(labels)
    except (OSError, UnicodeDecodeError) as exc:
        raise SqueezeError(f"{labels} cannot be read as a label file ({exc})") from None
    if lines != classes:
        raise SqueezeError(f"{labels} has {lines} lines but the model has {classes} classes (one label per line "
                           "expected); re-export, or set the manifest's labels to null")
    digest = manifest.get("labels_sha256")  # absent in manifests written before it was recorded: count only
    if digest is not None:
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            _bad(path, "'labels_sha256' must be a sha256 hex digest")
        if sha256_file(labels) != digest and _lf_sha256(labels) != digest:  # CRLF: a git autocrlf checkout, same labels
            raise SqueezeError(f"{labels} differs from the label file the export wrote (sha256 differs from the "
                               "manifest): its labels were edited or reordered; copy it back or re-export")


def _lf_sha256(path: Path) -> str:
    """sha256 of the file with Windows line endings read as Unix ones."""
    import hashlib

    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def artifact_problem(art: Dict, out_dir: Path) -> Optional[str]:
    """Why an artifact on disk is not the one its manifest record describes (missing, or another sha256), or None.
    A record without a sha256 is only checked for presence."""
    path = Path(out_dir) / art["file"]
    if not (path.exists() or path.is_symlink()):
        return f"artifact missing: {art['file']} is not in {out_dir}"
    package = str(art["file"]).endswith(".mlpackage")   # the one artifact that is a folder
    if path.is_dir() != package:
        return (f"{art['file']} is {'a file' if package else 'a folder'}, not the {'package folder' if package else 'file'} "
                "the export wrote; re-export it")
    digest = art.get("sha256")
    try:
        actual = sha256_file(path) if digest is not None else None
    except SqueezeError as exc:  # unreadable: this artifact fails, the others are still checked
        return str(exc)
    if digest is not None and actual != digest:
        return (f"{art['file']} differs from the file the manifest describes (sha256 differs from the manifest); "
                "re-export it")
    return None


def verify_directory(out_dir, progress: Optional[Progress] = None, verify_video=None, checkpoint=None) -> Dict:
    """Re-run the verification recorded in ``out_dir/manifest.json``; returns {file: verification}.

    ``verify_video``: where the verification video is now, if it moved (its sha256 must match the manifest).
    ``checkpoint``: where the checkpoint is now, if it moved (checked against the manifest's record).
    """
    say = progress or (lambda fmt, msg: None)
    plan = plan_verification(out_dir, verify_video, checkpoint)
    manifest = plan.manifest
    check_labels(manifest, plan.out_dir, manifest_path(plan.out_dir))
    model = model_from_source(plan.source, manifest["model"]["config"])
    spec = plan.spec
    vset = build_verification_set(model, spec, plan.video)
    results = {}
    for item in plan.artifacts:
        art, path = item["record"], item["path"]
        backend = get_backend(art["format"])
        problem = artifact_problem(art, plan.out_dir)
        if problem:
            results[art["file"]] = {"status": "fail", "failures": [problem]}
            continue
        say(art["format"], f"verifying {art['file']}")
        quantization = art.get("quantization") if isinstance(art.get("quantization"), dict) else {}
        opts = ExportOptions(spec=spec, precision=art["precision"], pte_backend=art.get("pte_backend", "xnnpack"),
                             extra={"int8_scheme": quantization.get("int8_scheme", "w8a8")})
        try:
            held_out = None
            if art["precision"] == "int8" and quantization.get("calibration_batches", 1):
                # calibrated on views that the verification views do not share a frame with
                if not isinstance(quantization.get("calibration"), dict):
                    raise SqueezeError(f"{art['file']}: the manifest does not record its calibration views")
                held_out = check_separation(quantization["calibration"], vset)
            res = verify_artifact(backend, path, vset, spec, art["precision"], art)
            if held_out:
                res["held_out"] = held_out
            if art["format"] == "coreml":
                res["structural"] = backend.structural_check(path, opts, model.config.num_classes)
                cross = backend.mil_cross_check(path, vset, spec, art["precision"]) if res.get("numeric") else None
                if cross:  # macOS: Apple's runtime gave the numbers; the MIL evaluation beside them
                    res["mil_evaluation"] = cross
        except SqueezeError as exc:
            res = {"status": "fail", "failures": [str(exc)]}
        results[art["file"]] = res
    return results
