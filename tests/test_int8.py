"""int8 SqueezeTime through the export pipeline on real video (bikes.mp4): each format's int8 artifact verified on
held-out real views, calibration/verification separation, a broken quantization (a calibration set of zeros)
refused with one line and no file, `squeeze verify` re-checking int8 artifacts, fp32 and int8 side by side in one
directory, and the per-layer error report.

The network: the trained camera-motion SqueezeTime (squeezetime/checkpoints, width 0.5) cut to depth 14 -- its
stem, the first bottleneck of every stage and its head, with their trained weights and BN statistics -- at
16 x 64 x 64. Seeded random SqueezeTimes are useless here: their logits barely depend on the input (the BN shifts
dominate), so even a calibration set of zeros quantizes them within 37 dB; this network's activations have
trained ranges (zeros: 15 dB, real views: 42 dB in the PT2E simulation). Depth 14 because ExecuTorch's lowering
time grows with the node count, not the width."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import squeezetime
from export.cli import main

TRAINED = Path(squeezetime.__file__).parent / "checkpoints" / "camera_motion_w050.safetensors"
SMALL = ["--size", "64"]
VIEWS = 6
STEM = "squeezetime_k400_16x64_clip"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_model():
    """The trained checkpoint's stem, first block of each stage and head as a depth-14 SqueezeTime."""
    assert TRAINED.is_file(), f"{TRAINED} (the trained camera-motion checkpoint) is needed by these tests"
    trained = squeezetime.load_checkpoint(TRAINED)
    tiny = squeezetime.build_model(trained.config, depth=14)
    state = trained.state_dict()
    tiny.load_state_dict({k: state[k] for k in tiny.state_dict()}, strict=True)
    return tiny.eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_trained_depth14.pth"
    squeezetime.save_checkpoint(tiny_model, path)
    return path


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("int8")
    code = main(["export", "squeezetime", *SMALL, "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--formats", "onnx,pte,tflite", "--precision", "int8", "--calibration-views", str(VIEWS)])
    return code, out, json.loads((out / "manifest.json").read_text())


def test_calibration_views_avoid_every_verification_frame(tiny_model, real_video):
    from export.calibration import build_calibration_set, check_separation, rebuild_calibration_set
    from export.verify import build_verification_set
    from squeeze_mobile.errors import SqueezeError
    from squeezetime.rewrite import InputSpec

    spec = InputSpec(frames=16, size=64)
    vset = build_verification_set(tiny_model, spec)
    calib = build_calibration_set(tiny_model.config, spec, None, 12, vset)
    used = {f for v in calib.views for f in v["frames"]}
    verified = {f for fr in vset.frame_indices for f in fr}
    assert len(calib) == 12 and calib.clips.shape == (12, 3, 16, 64, 64) and len(verified) == 32
    assert not used & verified and calib.separation["disjoint"] and calib.separation["shared_frames"] == []
    assert calib.videos[0]["sha256"] == vset.video_sha256 and calib.source.startswith("default: bikes.mp4")
    # the same video named explicitly is the same case: its verification frames stay out
    given = build_calibration_set(tiny_model.config, spec, [real_video], 3, vset)
    assert not {f for v in given.views for f in v["frames"]} & verified and given.source.startswith("--calibration")
    # the record rebuilds byte for byte (every view's sha256 is checked)
    again = rebuild_calibration_set(tiny_model.config, spec, calib.record(), vset)
    assert torch.equal(again.frames_uint8, calib.frames_uint8) and again.sha256 == calib.sha256
    # a record that reuses a verification frame is refused
    bad = json.loads(json.dumps(calib.record()))
    bad["view_list"][0]["frames"][1] = sorted(verified)[0]
    with pytest.raises(SqueezeError, match="calibrated on frames .* that the verification views use"):
        check_separation(bad, vset)


def test_int8_artifacts_verified_on_held_out_real_views(int8_export, real_video):
    code, out, manifest = int8_export
    assert code == 0 and manifest["failures"] == []
    arts = {a["format"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"onnx", "pte", "tflite"}
    assert {a["file"] for a in arts.values()} == {f"{STEM}_int8.onnx", f"{STEM}_int8_xnnpack.pte", f"{STEM}_int8.tflite"}
    for fmt, a in arts.items():
        v, q = a["verification"], a["quantization"]
        assert a["precision"] == "int8" and v["precision"] == "int8" and v["status"] == "pass" and v["numeric"]
        # judged on the 6 real views; the 2 random clips are reported beside
        assert v["inputs"] == 8 and v["judged_inputs"] == 6 and "sqnr_db" in v["random_inputs"]
        assert v["sqnr_db"] >= 25 and v["top1_agreement"] == 1.0 and v["softmax_kl"] < 1e-3
        assert v["thresholds"]["sqnr_db"] == 20 and v["thresholds"]["top1"] == 0.98
        assert a["sha256"] == _sha(out / a["file"]) and a["bytes"] == (out / a["file"]).stat().st_size
        cal = q["calibration"]
        assert q["calibration_batches"] == VIEWS and cal["views"] == VIEWS and len(cal["view_list"]) == VIEWS
        assert cal["videos"][0]["sha256"] == _sha(real_video) and len(cal["sha256"]) == 64
        assert q["held_out"]["disjoint"] and cal["separation"]["shared_frames"] == []
        assert q["weights"] == "int8 per-channel symmetric" and q["activation_observer"] in ("minmax", "min_max")
    # ONNX: every conv runs as QLinearConv in onnxruntime's optimized graph on this machine
    k = arts["onnx"]["quantization"]["int8_kernels"]
    assert k["int8_conv"] == 44 and k["float_conv"] == 0 and k["int8_matmul"] == 1
    # ExecuTorch: one XNNPACK delegate, nothing computing outside it; the PT2E simulation agrees with the runtime
    q = arts["pte"]["quantization"]
    assert q["fully_delegated"] and arts["pte"]["delegation"]["delegated_subgraphs"] == 1
    assert abs(q["pytorch_simulation"]["sqnr_db"] - arts["pte"]["verification"]["sqnr_db"]) < 3
    # LiteRT: both quantizers tried, the kept one has float I/O and passes in the reference kernels too
    q = arts["tflite"]["quantization"]
    assert set(q["candidates"]) == {"litert_quantizer", "litert_torch_pt2e"} and q["chosen"] in q["candidates"]
    assert q["io"] == {"input": "float32", "output": "float32"} and q["reference_kernels"]["status"] == "pass"
    assert all(c["reference_kernels"]["runs"] for c in q["candidates"].values())
    assert q["candidates"][q["chosen"]]["calibration_sqnr_db"] == max(c["calibration_sqnr_db"]
                                                                       for c in q["candidates"].values())
    assert arts["tflite"]["gpu_delegate"]["android_gpu_delegate"] in ("compatible", "incompatible")
    assert not [p for p in out.iterdir() if ".partial-" in p.name]


def test_verify_rechecks_int8_and_their_separation(int8_export, tmp_path, capsys):
    from export.pipeline import verify_directory

    _, out, manifest = int8_export
    # a copy whose manifest says one artifact was calibrated on a frame the verification views use
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    m = json.loads((copy / "manifest.json").read_text())
    onnx = next(a for a in m["artifacts"] if a["format"] == "onnx")
    shared = onnx["quantization"]["calibration"]["separation"]["verification_frames"][0]
    onnx["quantization"]["calibration"]["view_list"][0]["frames"][0] = shared
    (copy / "manifest.json").write_text(json.dumps(m))
    results = verify_directory(copy)
    assert results[onnx["file"]]["status"] == "fail"
    assert "its fidelity is not measured on held-out views" in results[onnx["file"]]["failures"][0]
    others = [v for f, v in results.items() if f != onnx["file"]]
    assert len(others) == 2 and all(v["status"] == "pass" and v["held_out"]["disjoint"] for v in others)
    assert all(v["precision"] == "int8" and v["sqnr_db"] >= 25 for v in others)


def test_zero_calibration_is_refused_without_writing(tiny_model, tmp_path):
    from export.calibration import CalibrationSet
    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec

    zeros = CalibrationSet(torch.zeros(4, 3, 16, 64, 64), torch.zeros(4, 16, 64, 64, 3, dtype=torch.uint8),
                           [{"video": 0, "frames": [0], "crop": [0, 0], "sha256": "0" * 64}] * 4,
                           [{"path": "zeros", "sha256": "0" * 64}], "zeros")
    out = tmp_path / "zeros"
    result = export_squeezetime(tiny_model, out, formats="onnx", spec=InputSpec(frames=16, size=64), precision="int8",
                                calibration=zeros)
    assert not result.ok and len(result.failures) == 1
    message = result.failures[0]["error"]
    assert "\n" not in message and message.startswith("onnx: int8 quantization of")
    assert "too far from fp32" in message and "nothing was written" in message
    sqnr = float(message.split("logits SQNR ")[1].split(" dB")[0])
    assert sqnr < 20  # 15 dB measured; the same network calibrated on real views: > 35 dB
    assert result.failures[0]["precision"] == "int8"
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json"]  # no artifact, no partial file


def test_fp32_and_int8_side_by_side(tmp_path, tiny_checkpoint, capsys):
    both = tmp_path / "both"
    common = [*SMALL, "--checkpoint", str(tiny_checkpoint), "--formats", "onnx"]
    assert main(["export", "squeezetime", *common, "--out", str(both), "--precision", "fp32,int8",
                 "--calibration-views", "3"]) == 0
    assert "no --calibration given" in capsys.readouterr().err
    m = json.loads((both / "manifest.json").read_text())
    assert sorted((a["file"], a["precision"]) for a in m["artifacts"]) == [
        (f"{STEM}_fp32.onnx", "fp32"), (f"{STEM}_int8.onnx", "int8")]
    fp32 = next(a for a in m["artifacts"] if a["precision"] == "fp32")
    assert fp32["verification"]["psnr_db"] >= 60 and "quantization" not in fp32
    assert (both / f"{STEM}_int8.onnx").stat().st_size < 0.3 * (both / f"{STEM}_fp32.onnx").stat().st_size
    # options that make no sense are refused before any work
    assert main(["export", "squeezetime", *common, "--out", str(tmp_path / "x"), "--calibration", str(tmp_path)]) == 1
    assert "--calibration applies to int8 only" in capsys.readouterr().err
    assert main(["export", "squeezetime", *common, "--out", str(tmp_path / "y"), "--precision", "int8",
                 "--calibration", str(tmp_path / "missing.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_quant_report_per_layer(int8_export, tmp_path):
    _, out, manifest = int8_export
    rep = tmp_path / "report"
    assert main(["quant-report", str(out), "--out", str(rep)]) == 0
    report = json.loads((rep / "quant_report.json").read_text())
    assert report["views"]["count"] == 6
    by_format = {a["format"]: a for a in report["artifacts"]}
    assert set(by_format) == {"onnx", "pte", "tflite"}
    assert "qdq_loss_debug" in by_format["onnx"]["tool"] and "numeric debugger" in by_format["pte"]["tool"]
    assert "validate" in by_format["tflite"]["tool"] or "numeric debugger" in by_format["tflite"]["tool"]
    for a in report["artifacts"]:
        values = [r["sqnr_db"] for r in a["rows"] if r.get("sqnr_db") is not None]
        assert len(values) >= 40 and values == sorted(values)  # worst first
        assert a["summary"]["min_sqnr_db"] == values[0] and 5 < a["summary"]["median_sqnr_db"] < 80
    kinds = {r["kind"] for r in by_format["onnx"]["rows"]}
    assert kinds == {"activation", "weight"} and len([r for r in by_format["onnx"]["rows"] if r["kind"] == "weight"]) >= 45
    md = (rep / "quant_report.md").read_text()
    assert md.count("| 1 |") == 3 and "worst first" in md
    assert (rep / "quant_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coreml_weight_only_int8_structure_and_mil_numbers(tiny_model, tmp_path):
    """Weight-only int8 Core ML (coremltools.optimize) on its own: every conv/linear weight stored as int8, no
    activation quantize op, and the saved ML program evaluated on Linux against fp32 PyTorch on the real views.
    (The W8A8 package comes out of the same export; its test is test_coreml_w8a8_export, marked slow.)"""
    from export.backends import ExportOptions, get_backend
    from export.backends.coreml_mil import EVALUATOR
    from export.verify import build_verification_set, verify_artifact
    from squeezetime.rewrite import InputSpec, export_ready

    spec = InputSpec(frames=16, size=64)
    backend = get_backend("coreml")
    opts = ExportOptions(spec=spec, precision="int8", extra={"int8_scheme": "weight_only"})
    dest = tmp_path / "w.mlpackage"
    extras = backend.export_weight_only(export_ready(tiny_model, spec), spec.example(0), dest, opts)
    assert extras["quantization"]["weight_threshold"] == 0 and extras["quantization"]["calibration_batches"] == 0
    structure = backend.structural_check(dest, opts, 9)["quantization"]
    assert structure["int8_weight_fraction"] == 1.0 and structure["quantize_ops"] == 0
    assert structure["constexpr_ops"] >= 45 and structure["status"] == "pass"
    res = verify_artifact(backend, dest, build_verification_set(tiny_model, spec), spec, "int8", extras)
    assert res["status"] == "pass" and res["runtime"] == EVALUATOR and res["evaluator"]["quantized"]
    assert res["sqnr_db"] >= 30 and res["top1_agreement"] == 1.0 and res["judged_inputs"] == 6


@pytest.mark.slow
def test_coreml_w8a8_export(tiny_checkpoint, tmp_path, request):
    """Both Core ML int8 packages through the CLI: W8A8 (ExecuTorch's Core ML quantizer) and weight-only. About
    2.5 minutes on 2 cores (the Core ML quantizer exports ~250 pattern graphs whatever the model), so it runs only
    when asked for: pytest -m slow tests/test_int8.py."""
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("Core ML W8A8 export takes ~2.5 min on 2 cores: run with -m slow")
    out = tmp_path / "coreml"
    assert main(["export", "squeezetime", *SMALL, "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--formats", "coreml", "--precision", "int8", "--calibration-views", str(VIEWS)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    arts = {a["file"]: a for a in m["artifacts"]}
    assert set(arts) == {f"{STEM}_int8.mlpackage", f"{STEM}_int8_weights.mlpackage"}
    w8a8 = arts[f"{STEM}_int8.mlpackage"]
    s = w8a8["verification"]["structural"]["quantization"]
    assert s["quantize_ops"] > 0 and s["int8_weight_fraction"] == 1.0
    assert w8a8["verification"]["status"] == "pass" and w8a8["verification"]["sqnr_db"] >= 25
    assert w8a8["quantization"]["pytorch_simulation"]["status"] == "pass"
    assert w8a8["quantization"]["held_out"]["disjoint"]
    assert "calibration" not in arts[f"{STEM}_int8_weights.mlpackage"]["quantization"]
    assert main(["verify", str(out)]) == 0
