"""Export SqueezeTime to every requested format, verify each artifact, write manifest.json.

Stages per format: rewrite (once) -> convert (to a temporary path, renamed on success) -> verify
(numerically on this machine's runtime, or structurally where the runtime needs another OS) ->
record in the manifest (rewritten atomically after every format, so an interrupted run leaves a
manifest that describes exactly the complete artifacts on disk).

A format that fails is recorded with its one-line error; the others still run; the result reports
failure so the CLI exits non-zero.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from squeeze_mobile.atomic import atomic_path, remove
from squeeze_mobile.errors import SqueezeError
from squeezetime.model import SqueezeTime
from squeezetime.rewrite import InputSpec, export_ready
from squeezetime.video import label_path

from .backends import REGISTRY, ExportOptions, TensorInfo, conversion_error, get_backend
from .quiet import quiet
from .verify import VerificationSet, build_verification_set, sha256_file, verify_artifact

MANIFEST = "manifest.json"
SCHEMA = "squeeze-mobile/manifest/1"
DEFAULT_FORMATS = ("onnx", "tflite", "pte", "coreml")

Progress = Callable[[str, str], None]  # (format, message)


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Dict
    failures: List[Dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and all(a["verification"]["status"] != "fail" for a in self.manifest["artifacts"])


def parse_formats(formats) -> List[str]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(dict.fromkeys(["pte" if f == "executorch" else f for f in formats]))
    if not formats:
        raise SqueezeError("no formats given; use e.g. --formats onnx,tflite,pte,coreml")
    unknown = [f for f in formats if f not in REGISTRY]
    if unknown:
        raise SqueezeError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_FORMATS)}")
    return formats


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SqueezeError(f"output directory {out_dir} is not writable ({exc.strerror or exc})") from None


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
    if backend_name == "coreml" and dtype == "uint8":
        dtype = "float32"  # Core ML has no uint8 multi-array input: values 0..255 in float32
    inputs = [TensorInfo("input", list(spec.shape), dtype, spec.layout).to_dict()]
    outputs = [TensorInfo("logits", [spec.batch, num_classes], "float32", "N x classes logits; softmax for probabilities").to_dict()]
    return inputs, outputs


class _DeferredInterrupt:
    """Ctrl-C during a conversion is held until the conversion returns to Python.

    A KeyboardInterrupt raised inside a converter's C++ callbacks can abort the whole process (SIGABRT, seen
    with ExecuTorch), which would skip every cleanup and leave temporary files behind. The first Ctrl-C
    therefore only sets a flag that the pipeline checks between steps (inside the atomic write, so the
    half-finished artifact is discarded); a second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        self.requested = True
        print("note: interrupt received; stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _write_manifest(out_dir: Path, manifest: Dict) -> None:
    with atomic_path(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


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
) -> ExportResult:
    """Export ``model`` to ``formats`` under ``out_dir`` with verification and a manifest.

    ``precision``: None = each format's default (fp32; Core ML fp16), or 'fp32' / 'fp16' for all.
    ``source`` describes where the weights came from (recorded so ``squeeze verify`` can rebuild it).
    """
    say = progress or (lambda fmt, msg: None)
    formats = parse_formats(formats)
    spec = spec or InputSpec(frames=model.config.frames, size=model.config.input_size)
    if precision not in (None, "fp32", "fp16"):
        raise SqueezeError(f"unknown precision {precision!r}; use fp32 or fp16")
    out_dir = Path(out_dir)
    check_writable(out_dir)
    cfg = model.config
    stem = f"squeezetime_{cfg.name}_{spec.frames}x{spec.size}_{spec.input_format}"

    say("rewrite", "folding BN, baking pos_embed, building the export-ready graph")
    ready = export_ready(model, spec)
    example = spec.example(seed=0)
    say("verify", "decoding verification clips and computing PyTorch reference logits")
    vset: VerificationSet = build_verification_set(model, spec, verify_video)

    labels_file = "labels.txt"
    if label_path(cfg.labels).is_file():
        shutil.copyfile(label_path(cfg.labels), out_dir / labels_file)
    manifest = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": "squeezetime", "config": cfg.to_dict(), "source": source or {"kind": "unspecified"}},
        "input": {"format": spec.input_format, "shape": list(spec.shape), "batch": spec.batch,
                  "dtype": str(spec.dtype).replace("torch.", ""), "layout": spec.layout},
        "preprocessing": preprocessing_record(model, spec),
        "labels": labels_file if (out_dir / labels_file).exists() else None,
        "verification_inputs": {"video": vset.video, "video_sha256": vset.video_sha256, "inputs": vset.names},
        "tools": tool_versions(formats),
        "artifacts": [],
        "failures": [],
    }
    _write_manifest(out_dir, manifest)
    result = ExportResult(out_dir, manifest)

    with _DeferredInterrupt() as interrupt:
        _export_formats(formats, precision, spec, pte_backend, coreml_legacy, ready, example, out_dir, stem, vset,
                        cfg.num_classes, say, quiet_tools, manifest, result, interrupt)
    return result


def _export_formats(formats, precision, spec, pte_backend, coreml_legacy, ready, example, out_dir, stem, vset,
                    num_classes, say, quiet_tools, manifest, result, interrupt):
    for fmt in formats:
        interrupt.check()
        backend = get_backend(fmt)
        prec = precision or backend.default_precision
        opts = ExportOptions(spec=spec, precision=prec, pte_backend=pte_backend, coreml_legacy=coreml_legacy)
        try:
            if prec not in backend.precisions:
                raise SqueezeError(f"{fmt} does not offer {prec} export here; supported: {', '.join(backend.precisions)}")
            records = _export_one(backend, ready, example, out_dir, stem, opts, vset, num_classes, say, quiet_tools, interrupt)
        except SqueezeError as exc:
            failure = {"format": fmt, "error": str(exc)}
            manifest["failures"].append(failure)
            result.failures.append(failure)
            say(fmt, f"FAILED: {exc}")
        else:
            manifest["artifacts"].extend(records)
        _write_manifest(out_dir, manifest)


def _export_one(backend, ready, example, out_dir: Path, stem: str, opts: ExportOptions, vset, num_classes, say, quiet_tools,
                interrupt=None):
    """Convert, write atomically, verify; returns manifest records (Core ML can give two artifacts)."""
    targets = [("main", backend.artifact_name(stem, opts), backend.export)]
    if backend.name == "coreml" and opts.coreml_legacy:
        targets.append(("legacy", backend.artifact_name(stem, opts).replace(".mlpackage", ".mlmodel"), backend.export_legacy))
    records = []
    for role, fname, convert in targets:
        dest = out_dir / fname
        say(backend.name, f"converting -> {fname}")
        t0 = time.perf_counter()
        try:
            with quiet(quiet_tools) as captured, atomic_path(dest) as tmp:
                try:
                    extras = convert(ready, example, tmp, opts) or {}
                except SqueezeError:
                    raise
                except Exception as exc:  # noqa: BLE001 - converters raise anything; name backend + op
                    raise conversion_error(backend.name, exc) from None
                if interrupt is not None:
                    interrupt.check()  # inside the atomic write: an interrupted artifact is discarded
        except SqueezeError as exc:
            if role == "legacy":  # the old format is best effort: say so plainly, do not fail the run
                records.append({"format": backend.name, "container": "mlmodel", "file": None,
                                "status": "not produced", "reason": str(exc)})
                say(backend.name, f"legacy .mlmodel not produced: {exc}")
                continue
            raise
        seconds = time.perf_counter() - t0
        inputs, outputs = _io_record(backend.name, opts.spec, num_classes)
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
            **extras,
        }
        if not backend.deterministic:
            record["nondeterminism"] = "the .mlpackage Manifest.json carries random item identifiers"
        say(backend.name, f"verifying {fname}")
        structural = None
        try:
            structural = backend.structural_check(dest, opts, num_classes) if backend.name == "coreml" else None
            numeric = verify_artifact(backend, dest, vset, opts.spec, opts.precision, extras)
        except SqueezeError as exc:
            record["verification"] = {"status": "fail", "failures": [str(exc)]}
            records.append(record)
            raise SqueezeError(f"{backend.name}: verification of {fname} failed: {exc}") from None
        if structural:
            numeric["structural"] = structural
        record["verification"] = numeric
        records.append(record)
        if numeric["status"] == "fail":
            say(backend.name, f"verification FAILED: {'; '.join(numeric['failures'])}")
        elif numeric.get("numeric"):
            say(backend.name, f"ok: PSNR {numeric['psnr_db']:.1f} dB, max-abs {numeric['max_abs_error']:.2e}, "
                              f"top-5 {numeric['top5_agreement']:.0%} ({seconds:.1f}s)")
        else:
            say(backend.name, f"ok: structure verified; numeric {numeric['status']} ({seconds:.1f}s)")
    return records


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ------------------------------------------------------------------------------------------- re-verify
def read_manifest(out_dir) -> Dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise SqueezeError(f"{out_dir} has no {MANIFEST}; run `squeeze export` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SqueezeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if manifest.get("schema") != SCHEMA:
        raise SqueezeError(f"{path} has schema {manifest.get('schema')!r}, expected {SCHEMA!r}")
    return manifest


def model_from_source(source: Dict, config: Dict) -> SqueezeTime:
    """Rebuild the PyTorch model an export came from, as recorded in its manifest."""
    import squeezetime

    kind = source.get("kind")
    if kind == "checkpoint":
        path = Path(source["path"])
        if not path.is_file():
            raise SqueezeError(f"the checkpoint this export came from is gone: {path}")
        if sha256_file(path) != source.get("sha256"):
            raise SqueezeError(f"checkpoint {path} changed since the export (sha256 differs)")
        return squeezetime.load_checkpoint(path, config=config.get("name"), skip_unsafe_metadata=source.get("skip_unsafe_metadata", False))
    if kind == "seeded":
        from squeezetime.model import seeded_model

        overrides = {k: config[k] for k in ("frames", "width", "num_classes", "depth", "pos_dim") if k in config}
        return seeded_model(config.get("name", "k400"), seed=source.get("seed", 0), **overrides)
    raise SqueezeError(f"manifest records model source {kind!r}; re-verification needs a checkpoint or seeded source")


def verify_directory(out_dir, progress: Optional[Progress] = None) -> Dict:
    """Re-run the verification recorded in ``out_dir/manifest.json``; returns {file: verification}."""
    say = progress or (lambda fmt, msg: None)
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    model = model_from_source(manifest["model"]["source"], manifest["model"]["config"])
    inp = manifest["input"]
    shape = inp["shape"]
    size = shape[-1] if inp["format"] != "frames_uint8" else shape[2]
    spec = InputSpec(frames=model.config.frames, size=size, input_format=inp["format"], batch=inp.get("batch", 1))
    vinfo = manifest["verification_inputs"]
    video_path = Path(vinfo["video"])
    if not video_path.is_file():
        raise SqueezeError(f"the verification video {video_path} is gone")
    if sha256_file(video_path) != vinfo["video_sha256"]:
        raise SqueezeError(f"verification video {video_path} changed since the export (sha256 differs)")
    vset = build_verification_set(model, spec, video_path)
    results = {}
    for art in manifest["artifacts"]:
        if not art.get("file"):
            continue
        path = out_dir / art["file"]
        backend = get_backend(art["format"])
        if not path.exists():
            results[art["file"]] = {"status": "fail", "failures": ["artifact missing"]}
            continue
        if sha256_file(path) != art["sha256"]:
            results[art["file"]] = {"status": "fail", "failures": ["sha256 differs from the manifest"]}
            continue
        say(art["format"], f"verifying {art['file']}")
        opts = ExportOptions(spec=spec, precision=art["precision"], pte_backend=art.get("pte_backend", "xnnpack"))
        try:
            res = verify_artifact(backend, path, vset, spec, art["precision"], art)
            if art["format"] == "coreml":
                res["structural"] = backend.structural_check(path, opts, model.config.num_classes)
        except SqueezeError as exc:
            res = {"status": "fail", "failures": [str(exc)]}
        results[art["file"]] = res
    return results
