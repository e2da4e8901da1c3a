"""Fuzz export-manifest reading: export.pipeline.read_manifest and everything that walks a manifest before a model runs.

    python -m bench.fuzz.fuzz_manifest --seconds 300 --out bench_out/fuzz

Each input is written as DIR/manifest.json of a scratch export directory, then: read_manifest; the planning
half of `squeeze verify` (plan_verification: model source, config, input spec, artifacts, verification video);
bench's spec_from_manifest; and the merge a second export into the same directory does (existing_manifest,
merge_manifest, the summary table). Seeds are manifests of the shape `squeeze export` writes (seeded and
checkpoint sources, each input format, Core ML records without a file). Only SqueezeError may come out.
"""

from __future__ import annotations

import io
import json
import sys

from bench.fuzz import harness

NAME = "manifest"
INSTRUMENT = ("export", "squeeze_mobile", "squeezetime.config", "squeezetime.rewrite", "bench.host")
PRELOAD = ("torch", "numpy", "rich.console", "rich.table")
_DIR = harness.scratch_dir("manifest")
_SHA = "0" * 64


def _scratch_files() -> None:
    """Empty files under the seed manifests' artifact names, so merged records that point at them are kept."""
    for data in seeds().values():
        manifest = json.loads(data)
        for a in manifest.get("artifacts", []) if isinstance(manifest, dict) else []:
            if a.get("file"):
                (_DIR / a["file"]).write_bytes(b"")


def instrument() -> None:
    import bench.host  # noqa: F401
    import export.cli_export  # noqa: F401
    import export.pipeline  # noqa: F401

    _scratch_files()


def _manifest(input_format="clip", source=None, frames=4, size=64, batch=1):
    from squeezetime.config import get_config

    cfg = get_config("hmdb51", frames=frames)
    shape = {"clip": [batch, 3, frames, size, size], "squeezed": [batch, 3 * frames, size, size],
             "frames_uint8": [batch, frames, size, size, 3]}[input_format]
    stem = f"squeezetime_hmdb51_{frames}x{size}_{input_format}"
    art = lambda fmt, container, name, precision, extra=None: {  # noqa: E731
        "format": fmt, "container": container, "file": name, "bytes": 1234, "sha256": _SHA, "precision": precision,
        "runtime": "r", "inputs": [{"name": "input", "shape": shape, "dtype": "float32", "layout": ""}],
        "outputs": [{"name": "logits", "shape": [batch, 51], "dtype": "float32", "layout": ""}],
        "export_seconds": 1.5, "deterministic": True,
        "verification": {"status": "pass", "numeric": True, "psnr_db": 120.0, "max_abs_error": 1e-6,
                         "top1_agreement": 1.0, "top5_agreement": 1.0}, **(extra or {})}
    return {
        "schema": "squeeze-mobile/manifest/1", "created": "2025-01-01T00:00:00+00:00",
        "model": {"name": "squeezetime", "config": cfg.to_dict(), "source": source or {"kind": "seeded", "seed": 0}},
        "input": {"format": input_format, "shape": shape, "batch": batch, "dtype": "float32", "layout": "NCTHW"},
        "preprocessing": {"frames": frames, "size": size},
        "labels": "labels.txt",
        "verification_inputs": {"video": "/nonexistent/bikes.mp4", "video_sha256": _SHA, "inputs": ["a", "b"]},
        "tools": {"torch": "2.0"},
        "artifacts": [art("onnx", "onnx", f"{stem}_fp32.onnx", "fp32"),
                      art("tflite", "tflite", f"{stem}_fp32.tflite", "fp32"),
                      art("pte", "pte", f"{stem}_fp32_xnnpack.pte", "fp32", {"pte_backend": "xnnpack"}),
                      art("coreml", "mlpackage", f"{stem}_fp16.mlpackage", "fp16"),
                      {"format": "coreml", "container": "mlmodel", "file": None, "status": "not produced", "reason": "x"}],
        "failures": [{"format": "tflite", "error": "tflite cannot convert this model"}],
    }


def seeds():
    ckpt = {"kind": "checkpoint", "path": "/nonexistent/ckpt.pth", "sha256": _SHA, "skip_unsafe_metadata": False}
    out = {
        "clip_seeded.json": json.dumps(_manifest(), indent=2),
        "squeezed_ckpt.json": json.dumps(_manifest("squeezed", ckpt, batch=3)),
        "uint8.json": json.dumps(_manifest("frames_uint8", frames=8, size=96), indent=1),
        "empty_artifacts.json": json.dumps({**_manifest(), "artifacts": []}),
        "list.json": "[]",
    }
    return {k: v.encode() for k, v in out.items()}


def target(data: bytes) -> None:
    from rich.console import Console

    from bench.host import spec_from_manifest
    from export.cli_export import print_summary
    from export.pipeline import existing_manifest, merge_manifest, plan_verification, read_manifest
    from squeeze_mobile.errors import SqueezeError

    (_DIR / "manifest.json").write_bytes(data)
    manifest = read_manifest(_DIR)
    try:
        spec_from_manifest(manifest)
    except SqueezeError:
        pass
    try:
        plan_verification(_DIR)
    except SqueezeError:
        pass
    new = _manifest()
    old = existing_manifest(_DIR, new)
    merge_manifest(old, new, _DIR, ["onnx"])
    print_summary(Console(file=io.StringIO(), width=200), new)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
