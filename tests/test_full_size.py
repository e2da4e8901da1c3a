"""One full-size integration test: the official 16 x 224 x 224 K400 network to all four formats, verified."""

import json

from export.cli import main


def test_full_size_export_all_formats(tmp_path, real_video):
    out = tmp_path / "full"
    code = main(["export", "squeezetime", "--formats", "onnx,tflite,pte,coreml", "--out", str(out),
                 "--verify-video", str(real_video)])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 3, 16, 224, 224]
    containers = {a["container"]: a for a in manifest["artifacts"]}
    assert set(containers) == {"onnx", "tflite", "pte", "mlpackage", "mlmodel"}
    for name in ("onnx", "tflite", "pte"):
        v = containers[name]["verification"]
        assert v["status"] == "pass" and v["psnr_db"] >= 60 and v["top5_agreement"] == 1.0
        assert 110e6 < containers[name]["bytes"] < 125e6  # 29.7M fp32 parameters
    assert containers["mlpackage"]["verification"]["structural"]["mil_ops"]["conv"] == 152
    assert 55e6 < containers["mlpackage"]["bytes"] < 65e6  # fp16 weights
