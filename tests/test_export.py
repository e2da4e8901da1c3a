"""Export pipeline on a reduced SqueezeTime: every format exports and verifies on real video, the three input
formats, determinism, the manifest, and every failure mode (bad option, unwritable dir, bad checkpoint,
converter failure, Ctrl-C, broken Core ML spec)."""

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.cli import main

SMALL = ["--config", "hmdb51", "--frames", "4", "--size", "64"]


def _run(args):
    return main(["export", "squeezetime", *SMALL, *args])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _partials(d: Path):
    return [p for p in d.rglob("*") if ".partial-" in p.name]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from conftest import write_small_checkpoint

    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "small_hmdb51.pth", seed=11)


@pytest.fixture(scope="module")
def all_formats(tmp_path_factory, small_checkpoint):
    out = tmp_path_factory.mktemp("export_all")
    code = _run(["--checkpoint", str(small_checkpoint), "--out", str(out)])
    return code, out, json.loads((out / "manifest.json").read_text())


def test_every_format_exports_and_verifies(all_formats, small_checkpoint, real_video):
    code, out, manifest = all_formats
    assert code == 0
    assert manifest["failures"] == []
    by_container = {a["container"]: a for a in manifest["artifacts"]}
    assert set(by_container) == {"onnx", "tflite", "pte", "mlpackage", "mlmodel"}
    for name in ("onnx", "tflite", "pte"):
        a = by_container[name]
        v = a["verification"]
        assert v["status"] == "pass" and v["numeric"] is True
        assert v["psnr_db"] >= 60 and v["top5_agreement"] == 1.0 and v["top1_agreement"] == 1.0
        assert v["max_abs_error"] < 1e-4
        assert v["inputs"] == 8 and sum("bikes.mp4" in p["input"] for p in v["per_input"]) == 6
        path = out / a["file"]
        assert a["bytes"] == path.stat().st_size and a["sha256"] == _sha(path)
        # a .tflite record also names the tensor in its signature (what a signature runner is called with)
        assert a["inputs"] == [{"name": "input", "shape": [1, 3, 4, 64, 64], "dtype": "float32",
                                "layout": "NCTHW float32, normalised RGB",
                                **({"tensor": "args_0"} if a["format"] == "tflite" else {})}]
        assert a["outputs"][0]["shape"] == [1, 51]
        assert a["export_seconds"] > 0
    # ExecuTorch: delegation summary, almost everything on XNNPACK
    d = by_container["pte"]["delegation"]
    assert d["delegated_nodes"] > 300 and d["portable_nodes"] <= 3 and "aten_convolution_default" in d["by_operator"]
    # LiteRT: GPU-delegate verdict from the TFLite analyzer
    gpu = by_container["tflite"]["gpu_delegate"]
    assert gpu["android_gpu_delegate"] == "compatible" and "CONV_2D" in gpu["ops"]
    # Core ML: structure checked; the .mlpackage's saved MIL program evaluated on Linux (said so, it is not Apple's
    # runtime) against PyTorch on the same real video; the legacy .mlmodel cannot be read back as MIL
    from export.backends.coreml_backend import LEGACY_NOT_RUN
    from export.backends.coreml_mil import EVALUATOR

    for name in ("mlpackage", "mlmodel"):
        assert by_container[name]["verification"]["structural"]["status"] == "pass"
    pkg = by_container["mlpackage"]
    v = pkg["verification"]
    assert v["status"] == "pass" and v["numeric"] is True and v["runtime"] == pkg["runtime"] == EVALUATOR
    assert v["inputs"] == 8 and sum("bikes.mp4" in p["input"] for p in v["per_input"]) == 6
    assert v["top1_agreement"] == 1.0 and v["psnr_db"] >= 50 and v["evaluator"]["mil_ops"]["conv"] == 152
    bracket = v["accumulation_bracket"]
    assert v["rel_l2"] < bracket["spread_rel_l2"] and bracket["fp32"]["rel_l2"] < bracket["fp16"]["rel_l2"]
    legacy = by_container["mlmodel"]
    assert legacy["verification"]["status"] == LEGACY_NOT_RUN and legacy["verification"]["numeric"] is False
    assert legacy["runtime"] == "Core ML (macOS)"
    mil = by_container["mlpackage"]["verification"]["structural"]
    assert mil["casts"] == {"boundary": 2, "inner": 0} and mil["mil_ops"]["conv"] == 152
    assert "batch_norm" not in mil["mil_ops"]
    # manifest: preprocessing, labels, model source, tools
    pre = manifest["preprocessing"]
    assert (pre["frames"], pre["frame_interval"], pre["size"], pre["channel_order"]) == (4, 4, 64, "RGB")
    assert pre["mean"] == [123.675, 116.28, 103.53] and pre["std"] == [58.395, 57.12, 57.375]
    assert (out / manifest["labels"]).read_text().splitlines()[0] == "brush_hair"
    assert manifest["model"]["source"]["sha256"] == _sha(small_checkpoint)
    assert manifest["verification_inputs"]["video_sha256"] == _sha(real_video)
    for tool in ("torch", "onnxruntime", "executorch", "litert-torch", "coremltools"):
        assert manifest["tools"][tool][0].isdigit()
    assert not _partials(out)


def test_quant_report_without_int8_leaves_no_folder(all_formats, tmp_path, capsys):
    _, out, _ = all_formats
    assert main(["quant-report", str(out), "--out", str(tmp_path / "qr" / "new")]) == 1
    assert "holds no int8 artifacts" in capsys.readouterr().err
    assert not (tmp_path / "qr").exists()


def test_verify_directory_and_tampering(all_formats, capsys):
    _, out, manifest = all_formats
    assert main(["verify", str(out)]) == 0
    table = capsys.readouterr().out
    flat = "".join(table.split())  # the table may wrap long status cells
    assert table.count("pass") == 4 and "notrun(needsmacOS;alegacy.mlmodel" in flat.replace("│", "")
    assert "MILprogramevaluatedonLinux" in flat.replace("│", "")
    onnx = next(out / a["file"] for a in manifest["artifacts"] if a["container"] == "onnx")
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    tampered = out.parent / "tampered"
    import shutil

    shutil.copytree(out, tampered)
    (tampered / onnx.name).write_bytes(bytes(data))
    assert main(["verify", str(tampered)]) == 1
    assert "sha256 differs from the manifest" in capsys.readouterr().out


@pytest.mark.parametrize("fmt,formats,batch", [("frames_uint8", "onnx,pte,coreml", 1), ("squeezed", "onnx,tflite", 3)])
def test_input_formats(tmp_path, small_checkpoint, fmt, formats, batch):
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--input", fmt, "--formats", formats,
                 *(["--no-mlmodel"] if "coreml" in formats else []), "--batch", str(batch)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shape = {"frames_uint8": [1, 4, 64, 64, 3], "squeezed": [3, 12, 64, 64]}[fmt]
    assert manifest["input"]["shape"] == shape
    for a in manifest["artifacts"]:
        assert a["inputs"][0]["shape"] == shape
        if a["format"] == "coreml":
            assert a["inputs"][0]["dtype"] == "float32"  # Core ML takes 0..255 as float32
            assert a["verification"]["structural"]["status"] == "pass"
            # the MIL program (with the in-graph normalisation as a batch_norm) evaluated on the real video
            assert a["verification"]["status"] == "pass" and a["verification"]["top1_agreement"] == 1.0
            assert a["verification"]["evaluator"]["mil_ops"]["batch_norm"] == 1
        else:
            assert a["inputs"][0]["dtype"] == ("uint8" if fmt == "frames_uint8" else "float32")
            assert a["verification"]["status"] == "pass" and a["verification"]["psnr_db"] >= 60
            assert a["verification"]["inputs"] == 8 and a["outputs"][0]["shape"] == [batch, 51]


def test_exports_are_byte_identical(all_formats, tmp_path, small_checkpoint):
    _, first, manifest = all_formats
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx,tflite,pte"]) == 0
    again = {a["file"]: a["sha256"] for a in json.loads((tmp_path / "manifest.json").read_text())["artifacts"]}
    before = {a["file"]: a["sha256"] for a in manifest["artifacts"] if a["container"] in ("onnx", "tflite", "pte")}
    assert again == before and len(again) == 3
    mlpackage = next(a for a in manifest["artifacts"] if a["container"] == "mlpackage")
    assert mlpackage["deterministic"] is False and "random" in mlpackage["nondeterminism"]


def test_fp16_precision(tmp_path, small_checkpoint):
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx", "--precision", "fp16"]) == 0
    (a,) = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    v = a["verification"]
    assert a["precision"] == "fp16" and v["thresholds"]["psnr_db"] == 30.0
    assert v["status"] == "pass" and 30 <= v["psnr_db"] < 100 and v["top1_agreement"] == 1.0


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "export.cli", *args], capture_output=True, text=True, **kw)


def _one_error_line(proc):
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode != 0 and len(errors) >= 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors


def test_bad_options_fail_cleanly(tmp_path):
    out = tmp_path / "out"
    (err,) = _one_error_line(_cli(["export", "squeezetime", *SMALL, "--formats", "onnx,tensorrt", "--out", str(out)]))
    assert "unknown format(s) tensorrt" in err
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (err,) = _one_error_line(_cli(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(blocker / "sub")]))
    assert "is not writable" in err
    (err,) = _one_error_line(_cli(["export", "squeezetime", "--config", "hmdb51", "--frames", "4", "--formats", "onnx",
                                   "--size", "16", "--out", str(out)]))
    assert "too small" in err
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    (err,) = _one_error_line(_cli(["export", "squeezetime", "--checkpoint", str(bad), "--formats", "onnx", "--out", str(out)]))
    assert "not a readable PyTorch file" in err
    assert not out.exists() or not any(out.iterdir())
    proc = _cli(["export", "squeezetime", "--formats", "onnx", "--out", str(out), "--precision", "int3"])
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_converter_failure_is_isolated(tmp_path, small_checkpoint, monkeypatch, capsys):
    from export.backends.tflite_backend import LiteRTBackend

    def broken(self, module, example, dest, opts):
        dest.write_bytes(b"half a flatbuffer")  # a partial file that must not survive
        raise RuntimeError("Lowering failed: aten.upsample_bilinear2d.vec is not supported by this converter")

    monkeypatch.setattr(LiteRTBackend, "export", broken)
    code = _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "tflite,onnx"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: tflite cannot convert this model (op aten.upsample_bilinear2d.vec)" in err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [a["container"] for a in manifest["artifacts"]] == ["onnx"]
    assert manifest["artifacts"][0]["verification"]["status"] == "pass"
    assert manifest["failures"][0]["format"] == "tflite"
    assert not list(tmp_path.glob("*.tflite")) and not _partials(tmp_path)


def test_failing_reexport_keeps_the_previous_artifact(tmp_path, small_checkpoint, monkeypatch, capsys):
    """A converter that regresses (here: a model whose logits are scaled) must not replace a verified artifact: the
    new file is verified before it is renamed into place; into a fresh directory it is written and marked failed."""
    import torch

    from export.backends.onnx_backend import OnnxBackend

    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    (good,) = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    good_sha = _sha(tmp_path / good["file"])
    export = OnnxBackend.export

    def regressed(self, module, example, dest, opts):
        class Scaled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, x):
                return self.inner(x) * 3.0

        return export(self, Scaled().eval(), example, dest, opts)

    monkeypatch.setattr(OnnxBackend, "export", regressed)
    capsys.readouterr()
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 1
    err = capsys.readouterr().err
    assert f"the previous {good['file']} and its manifest record were kept" in err, err
    assert _sha(tmp_path / good["file"]) == good_sha and not _partials(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (kept,) = manifest["artifacts"]
    assert kept["sha256"] == good_sha and kept["verification"]["status"] == "pass"
    assert manifest["failures"][0]["format"] == "onnx"
    fresh = tmp_path / "fresh"
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(fresh), "--formats", "onnx"]) == 1
    (bad,) = json.loads((fresh / "manifest.json").read_text())["artifacts"]
    assert bad["verification"]["status"] == "fail" and (fresh / bad["file"]).is_file()


def test_a_disk_too_small_for_the_artifact_is_refused_before_converting(tmp_path, small_checkpoint, monkeypatch,
                                                                         capsys):
    """A converter that runs out of space can end the process from C++ (LiteRT's LLVM writer) with nothing a user
    sees: the export checks the folder's free space against the weights' bytes first and says so in one line."""
    import collections

    from export import pipeline

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "tflite"]) == 1
    err = capsys.readouterr().err
    assert "MB free; free some space or choose another --out (nothing was written)" in err, err
    assert not list(tmp_path.glob("*.tflite")) and not _partials(tmp_path)


def test_ctrl_c_leaves_no_partial_files(tmp_path, small_checkpoint):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "export.cli", "export", "squeezetime", *SMALL, "--checkpoint", str(small_checkpoint),
         "--out", str(tmp_path), "--formats", "onnx,pte,tflite"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    # wait until the ExecuTorch conversion is under way (its temporary file is the partial to worry about)
    deadline = time.time() + 240
    seen = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "converting -> " in line and ".pte" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=400)  # the running conversion finishes or is discarded first
    assert proc.returncode == 130, seen + rest
    assert "interrupted; no partial artifacts" in rest
    assert not _partials(tmp_path)
    assert not list(tmp_path.glob("*.pte")) and not list(tmp_path.glob("*.tflite"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [a["container"] for a in manifest["artifacts"]] == ["onnx"]  # complete artifacts stay described


def test_coreml_structural_check_catches_broken_specs(all_formats, tmp_path):
    import coremltools as ct

    from export.backends.coreml_backend import structural_report
    from export.backends.base import TensorInfo
    from squeezetime import SqueezeError

    _, out, manifest = all_formats
    expect = TensorInfo("input", [1, 3, 4, 64, 64], "float32")
    pkg = next(out / a["file"] for a in manifest["artifacts"] if a["container"] == "mlpackage")
    assert structural_report(pkg, expect, 51, "fp16")["status"] == "pass"

    model = ct.models.MLModel(str(pkg), skip_model_load=True)
    spec = model.get_spec()
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    next(op for op in ops if op.type == "conv").type = "conv_transpose_bogus"
    broken = tmp_path / "broken.mlpackage"
    ct.utils.save_spec(spec, str(broken), weights_dir=model.weights_dir)
    with pytest.raises(SqueezeError, match="MIL ops not available at iOS17: conv_transpose_bogus"):
        structural_report(broken, expect, 51, "fp16")
    # an fp16 program (casts at input and output) presented as fp32 is flagged
    with pytest.raises(SqueezeError, match="boundary cast"):
        structural_report(pkg, expect, 51, "fp32")

    legacy = next(out / a["file"] for a in manifest["artifacts"] if a["container"] == "mlmodel")
    spec = ct.utils.load_spec(str(legacy))
    spec.description.input[0].type.multiArrayType.shape[2] = 8
    bad_legacy = tmp_path / "bad.mlmodel"
    ct.utils.save_spec(spec, str(bad_legacy))
    with pytest.raises(SqueezeError, match=r"input shape \[1, 3, 8, 64, 64\]"):
        structural_report(bad_legacy, expect, 51, "fp32")
    (tmp_path / "garbage.mlpackage").mkdir()
    with pytest.raises(SqueezeError, match="does not load"):
        structural_report(tmp_path / "garbage.mlpackage", expect, 51, "fp16")


def _signal_during(args, wait_for, sig, cwd=None, settle=3.0):
    """Start `squeeze ARGS`, wait for a stderr line containing WAIT_FOR, send SIG; returns (returncode, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "export.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd or Path(__file__).resolve().parents[1])
    deadline = time.time() + 300
    seen = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen += line
        if wait_for in line or not line:
            break
    time.sleep(settle)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=400)
    return proc.returncode, seen + rest


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_during_conversion_leave_nothing_behind(tmp_path, small_checkpoint, sig, code):
    code_seen, err = _signal_during(["export", "squeezetime", *SMALL, "--checkpoint", str(small_checkpoint),
                                     "--out", str(tmp_path), "--formats", "onnx,pte"], "converting -> ", sig)
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert code_seen == code, err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert errors == [f"error: interrupted; no partial artifacts were left behind ({name})"], err
    assert "Traceback" not in err
    assert not _partials(tmp_path) and not list(tmp_path.glob("*.pte"))
    # the manifest describes exactly the complete artifacts on disk (onnx, if it finished before the signal); a run
    # stopped before any format ended writes nothing at all
    on_disk = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".pte"))
    if not (tmp_path / "manifest.json").exists():
        assert on_disk == [] and not (tmp_path / "labels.txt").exists()
        return
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == sorted(a["file"] for a in manifest["artifacts"])


def test_stale_partials_of_a_killed_export_are_swept(tmp_path, small_checkpoint):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".squeezetime_hmdb51_4x64_clip_fp32.partial-{dead.pid}-abcdefgh.onnx"
    stale.write_bytes(b"\0" * 1000)
    keep = tmp_path / "notes.partial-1.txt"
    keep.write_text("mine")
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    assert not stale.exists() and keep.exists() and _partials(tmp_path) == [keep]


def test_second_export_merges_into_the_manifest(tmp_path, small_checkpoint, capsys):
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    first = json.loads((tmp_path / "manifest.json").read_text())
    (onnx,) = first["artifacts"]
    # tflite is added; onnx is exported again and its record replaced (same file), not duplicated
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "tflite,onnx"]) == 0
    merged = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(a["container"] for a in merged["artifacts"]) == ["onnx", "tflite"]
    new_onnx = next(a for a in merged["artifacts"] if a["container"] == "onnx")
    assert new_onnx["sha256"] == onnx["sha256"] == _sha(tmp_path / onnx["file"])  # deterministic export
    on_disk = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".tflite"))
    assert on_disk == sorted(a["file"] for a in merged["artifacts"])
    assert {"onnxruntime", "litert-torch"} <= set(merged["tools"])
    # a third export of one format keeps the other's record
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(a["container"] for a in again["artifacts"]) == ["onnx", "tflite"]
    capsys.readouterr()
    assert main(["verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("pass") == 2


def test_mlpackage_from_a_previous_export_is_replaced(all_formats, tmp_path, small_checkpoint):
    from export.backends.coreml_backend import DEBUG_HANDLE_MAP, is_mlpackage

    _, out, manifest = all_formats
    pkg_name = next(a["file"] for a in manifest["artifacts"] if a["container"] == "mlpackage")
    # no ExecuTorch debug-handle map (240 KB at full size) inside the package the app ships
    assert not (out / pkg_name / DEBUG_HANDLE_MAP).exists() and is_mlpackage(out / pkg_name)
    copy = tmp_path / "again"
    import shutil

    shutil.copytree(out, copy)
    assert _run(["--checkpoint", str(small_checkpoint), "--out", str(copy), "--formats", "coreml", "--no-mlmodel"]) == 0
    merged = json.loads((copy / "manifest.json").read_text())
    assert sorted(a["container"] for a in merged["artifacts"]) == sorted(a["container"] for a in manifest["artifacts"])
    pkg = next(a for a in merged["artifacts"] if a["container"] == "mlpackage")
    assert pkg["sha256"] == sha256_dir(copy / pkg_name) and not (copy / pkg_name / DEBUG_HANDLE_MAP).exists()
    assert not _partials(copy)


def sha256_dir(path):
    from export.verify import sha256_file

    return sha256_file(path)


def test_verify_after_the_video_moved(all_formats, tmp_path, real_video, capsys):
    import shutil

    _, out, _ = all_formats
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    assert Path(manifest["verification_inputs"]["video"]).is_absolute()
    manifest["verification_inputs"]["video"] = str(tmp_path / "gone" / "bikes.mp4")
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["container"] == "onnx"]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(moved)]) == 1
    err = capsys.readouterr().err
    assert "is not there" in err and "--verify-video PATH" in err
    video = tmp_path / "elsewhere.mp4"
    shutil.copyfile(real_video, video)
    assert main(["verify", str(moved), "--verify-video", str(video)]) == 0
    assert "pass" in capsys.readouterr().out


@pytest.fixture(scope="module")
def ten_class_export(tmp_path_factory):
    """A 10-class checkpoint (k400 base config, 400 labels) exported to ONNX at 4 x 32 x 32."""
    import torch

    import squeezetime
    from conftest import randomize_bn

    torch.manual_seed(5)
    model = randomize_bn(squeezetime.build_model("k400", frames=4, width=0.25, num_classes=10), seed=5)
    ckpt = tmp_path_factory.mktemp("ckpt10") / "ten.pth"
    squeezetime.save_checkpoint(model, ckpt)
    out = tmp_path_factory.mktemp("export10")
    assert main(["export", "squeezetime", "--checkpoint", str(ckpt), "--size", "32", "--formats", "onnx",
                 "--out", str(out)]) == 0
    return ckpt, out


def test_labels_only_when_they_match_the_class_count(ten_class_export, capfd):
    """A 10-class checkpoint on the k400 config: kinetics400's 400 names would label its classes wrongly. No
    labels.txt, labels null in the manifest (apps and predict show class_N), and the export says so."""
    from squeezetime.video import load_labels

    ckpt, out = ten_class_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["config"]["num_classes"] == 10 and manifest["labels"] is None
    assert not (out / "labels.txt").exists()
    assert len(load_labels(manifest["model"]["config"]["labels"])) == 400
    again = out.parent / (out.name + "_again")
    assert main(["export", "squeezetime", "--checkpoint", str(ckpt), "--size", "32", "--formats", "onnx",
                 "--out", str(again)]) == 0
    err = capfd.readouterr().err
    assert "no labels.txt written" in err and "10-class model" in err and "manifest labels: null" in err


def test_verify_checks_the_label_file(ten_class_export, tmp_path, capsys):
    import shutil

    _, out = ten_class_export
    d = tmp_path / "d"
    shutil.copytree(out, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["labels"] = "labels.txt"
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(d)]) == 1
    assert "labels.txt, the label file the manifest names, is missing" in capsys.readouterr().err
    (d / "labels.txt").write_text("\n".join(f"c{i}" for i in range(400)) + "\n")
    assert main(["verify", str(d)]) == 1
    err = capsys.readouterr().err
    assert [l for l in err.splitlines() if l.startswith("error:")] == [
        f"error: {d / 'labels.txt'} has 400 lines but the model has 10 classes (one label per line expected); "
        "re-export, or set the manifest's labels to null"]
    (d / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    assert main(["verify", str(d)]) == 0


def test_verify_with_a_moved_checkpoint(ten_class_export, tmp_path, capsys):
    """--checkpoint points verify at a checkpoint that moved; it must be the one the manifest recorded."""
    import shutil

    ckpt, out = ten_class_export
    d = tmp_path / "d"
    shutil.copytree(out, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["model"]["source"]["path"] = str(tmp_path / "gone.pth")
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(d)]) == 1
    assert "is gone" in capsys.readouterr().err
    moved = tmp_path / "moved.pth"
    shutil.copyfile(ckpt, moved)
    other = tmp_path / "other.pth"
    with open(other, "wb") as fh:
        fh.write(ckpt.read_bytes() + b"\0")
    assert main(["verify", str(d), "--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"--checkpoint {other} is not the checkpoint this export came from" in err
    assert main(["verify", str(d), "--checkpoint", str(tmp_path / "nope.pth")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", str(d), "--checkpoint", str(moved)]) == 0
    assert "pass" in capsys.readouterr().out


def test_checkpoint_for_an_export_without_a_recorded_digest(ten_class_export, tmp_path):
    """No checkpoint digest recorded (a Python-API export without a source): --checkpoint is accepted when the
    architecture it describes is the manifest's, refused otherwise; a seeded export takes no --checkpoint."""
    import squeezetime
    from export.pipeline import resolve_source
    from squeezetime import SqueezeError

    ckpt, out = ten_class_export
    config = json.loads((out / "manifest.json").read_text())["model"]["config"]
    source = resolve_source({"kind": "unspecified"}, config, ckpt)
    assert source["kind"] == "checkpoint" and source["sha256"] == _sha(ckpt)
    wider = tmp_path / "wider.pth"
    squeezetime.save_checkpoint(squeezetime.build_model("k400", frames=4, width=0.5, num_classes=10), wider)
    with pytest.raises(SqueezeError, match=r"does not describe the model this export came from \(width 0.5 vs 0.25"):
        resolve_source({"kind": "unspecified"}, config, wider)
    with pytest.raises(SqueezeError, match="seeded random model, not a checkpoint; drop --checkpoint"):
        resolve_source({"kind": "seeded", "seed": 0}, config, ckpt)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                    reason="flush-to-zero on the calling thread is set through glibc's x86-64 environment")
def test_onnx_runner_flushes_denormals_only_during_a_run(tmp_path):
    """The onnxruntime runner sets flush-to-zero / denormals-are-zero on the calling thread for a run (masked
    softmax rows produce denormals, ~5x slower without it) and puts the caller's environment back afterwards;
    creating a runner leaves the thread's environment as it was."""
    import numpy as np

    import ctypes

    import onnx
    from onnx import TensorProto, helper

    from export.backends.onnx_backend import OnnxRunner, _FlushDenormals

    relu = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=8), relu)

    libm = ctypes.CDLL("libm.so.6")
    before = ctypes.create_string_buffer(32)
    assert libm.fegetenv(before) == 0
    cleared = ctypes.create_string_buffer(before.raw, 32)          # this thread with denormals ON, whatever ran before
    mxcsr = ctypes.c_uint32.from_buffer(cleared, _FlushDenormals.MXCSR_OFFSET)
    mxcsr.value &= ~_FlushDenormals.FTZ_DAZ
    del mxcsr
    tiny = np.array([1e-38], np.float32)
    half = np.float32(0.5)
    try:
        assert libm.fesetenv(cleared) == 0
        assert (tiny * half)[0] > 0                  # a denormal result
        with _FlushDenormals():
            assert (tiny * half)[0] == 0             # flushed inside a run
        assert (tiny * half)[0] > 0                  # the caller's environment is back
        with _FlushDenormals().preserved():
            assert libm.fesetenv(before) == 0        # whatever happens inside is undone
        assert (tiny * half)[0] > 0
        runner = OnnxRunner(relu, threads=1)         # onnxruntime's session creation with set_denormal_as_zero turns
        assert (tiny * half)[0] > 0                  # FTZ on for good on the creating thread: not through our runner
        assert runner(np.zeros(1, np.float32)).shape == (1,)
        assert (tiny * half)[0] > 0
    finally:
        libm.fesetenv(before)


def test_program_methods_declare_their_dynamic_axes():
    """export.program: a method's dynamic axes become torch.export Dims and, when the backend keeps them, a
    ``dynamic`` entry of the input in the manifest signature; one graph serves several methods only when they are
    one module differing in those axes."""
    import torch

    from export.program import Method, Program

    module, other = torch.nn.Identity(), torch.nn.Identity()
    tokens = {"tokens": {0: ("T", 1, 8)}}
    prefill = Method("prefill", module, {"tokens": torch.zeros(8, dtype=torch.int64), "n": torch.zeros(1)}, ["y"],
                     tokens)
    decode = Method("decode", module, {"tokens": torch.zeros(1, dtype=torch.int64), "n": torch.zeros(1)}, ["y"])
    sig = prefill.signature(dynamic=True)
    assert sig["inputs"][0] == {"name": "tokens", "shape": [8], "dtype": "int64", "dynamic": {"0": [1, 8]}}
    assert "dynamic" not in sig["inputs"][1] and "dynamic" not in prefill.signature()["inputs"][0]
    dims = prefill.dynamic_shapes()
    assert dims["n"] is None and (dims["tokens"][0].min, dims["tokens"][0].max) == (1, 8)
    assert decode.dynamic_shapes() is None
    assert Program([prefill, decode]).one_graph() is prefill
    other_decode = Method("decode", other, decode.inputs, ["y"])
    assert Program([prefill, other_decode]).one_graph() is None   # two modules: no single graph for both
    assert Program([decode]).one_graph() is decode
    # grouped by module: one graph per group (a one-graph format's branches), the widest method of each
    groups = Program([prefill, decode, other_decode]).graphs()
    assert [(g.name, [m.name for m in ms]) for g, ms in groups] == [("prefill", ["prefill", "decode"]),
                                                                   ("decode", ["decode"])]
    assert Program([decode, Method("decode2", module, decode.inputs, ["y"])]).graphs() is None   # nothing dynamic


def test_onnx_branches_select_a_graph_and_store_shared_weights_once(tmp_path):
    """onnx_branches.merge_branches: two graphs reading one weight become If branches on the input ``branch``;
    the weight is stored once, each branch answers as its own graph did (an input one graph declares in another
    shape of the same size is reshaped inside its branch), and graphs with other outputs are refused in one line."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from export.backends.onnx_branches import merge_branches, walk_nodes
    from squeeze_mobile.errors import SqueezeError

    weight = torch.nn.Parameter(torch.randn(6, 4))

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = weight

        def forward(self, x, table):                  # table: [6, 4]
            return (x @ self.w.T + table.sum()).relu()

    class PerHead(Flat):
        def forward(self, x, table):                  # table: [2, 3, 4], the same rows
            return (x @ self.w.T - table[1].sum()).relu()

    def proto(module, table):
        x = torch.randn(5, 4)
        return torch.onnx.export(module, (x, table), dynamo=True, input_names=["x", "table"], output_names=["y"],
                                 verbose=False).model_proto

    flat, per_head = proto(Flat(), torch.zeros(6, 4)), proto(PerHead(), torch.zeros(2, 3, 4))
    model = merge_branches([flat, per_head])
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["x", "table", "branch"]
    big = [i for i in model.graph.initializer if len(i.dims) == 2]
    assert len(big) == 1, [(i.name, list(i.dims)) for i in model.graph.initializer]
    assert {n.op_type for n in model.graph.node} >= {"If"} and any(n.op_type == "Reshape" for n in walk_nodes(model.graph))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, table = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32), \
        np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    for k, module, t in ((0, Flat(), table), (1, PerHead(), table.reshape(2, 3, 4))):
        (got,) = session.run(None, {"x": x, "table": table, "branch": np.array([k], np.int64)})
        want = module(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    other = flat.__class__()
    other.CopyFrom(flat)
    other.graph.output[0].name = "z"
    with pytest.raises(SqueezeError, match="return different outputs"):
        merge_branches([flat, other])
