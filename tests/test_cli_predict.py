"""`squeeze predict` end to end on a real video, with a real checkpoint file, and its failure behaviour."""

import json
import subprocess
import sys

import torch

import squeezetime
from export.cli import main

from conftest import randomize_bn


def test_predict_json_with_checkpoint(tmp_path, real_video, capsys):
    torch.manual_seed(5)
    model = randomize_bn(squeezetime.build_model("hmdb51", frames=4, width=0.25)).eval()
    ckpt = tmp_path / "hmdb.pth"
    squeezetime.save_checkpoint(model, ckpt)
    assert main(["predict", str(real_video), "--checkpoint", str(ckpt), "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"] == "hmdb51" and len(out["top"]) == 3
    # same numbers as the Python API on the same clip
    clip = squeezetime.video.load_clip(real_video, model.config)
    with torch.no_grad():
        probs = torch.softmax(model(clip), 1)[0]
    top = probs.topk(3)
    labels = squeezetime.video.load_labels("hmdb51")
    assert [t["label"] for t in out["top"]] == [labels[i] for i in top.indices.tolist()]
    assert [round(t["probability"], 5) for t in out["top"]] == [round(v, 5) for v in top.values.tolist()]


def test_predict_errors_are_one_line(tmp_path, video_dir):
    for args in (
        ["predict", str(video_dir / "empty.mp4")],  # truncated and damaged files now predict with a warning
        ["predict", str(video_dir / "not_a_video.mp4")],
        ["predict", str(video_dir / "short30.mp4"), "--checkpoint", str(tmp_path / "missing.pth")],
    ):
        proc = subprocess.run([sys.executable, "-m", "export.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr
        errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr
