"""The camera-motion task (squeezetime.motion_task), its shipped checkpoint and bench/motion_accuracy.py.

Real photographs from the installed Debian/PyPI packages (install.sh), real rendering through the official
preprocessing, the real trained checkpoint; the bench runs a tiny ONNX export through its runner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import squeezetime
import squeezetime.video
from squeeze_mobile.errors import SqueezeError
from squeezetime import motion_task as mt
from squeezetime.config import get_config

CHECKPOINT = Path(squeezetime.__file__).parent / "checkpoints" / "camera_motion_w050.safetensors"
HELDOUT = [
    "debian:mate-backgrounds/Blinds.jpg", "debian:mate-backgrounds/GreenMeadow.jpg", "debian:mate-backgrounds/TwoWings.jpg",
    "debian:lomiri-wallpapers-16.04/Dragonfly_by_Bolly.jpg", "debian:lomiri-wallpapers-16.04/aitzgorri_by_Aitzol_Berasategi.jpg",
    "debian:lomiri-wallpapers-16.04/greentock_by_Peter_Nerlich.jpg", "debian:lomiri-wallpapers-16.04/sunset_by_Aitzol_Berasategi.jpg",
    "pypi:scikit-learn/flower.jpg",
]


def test_photographs_are_real_distinct_and_split_by_photograph():
    refs = mt.catalog()
    train, held = mt.train_photo_ids(), mt.heldout_photo_ids()
    assert (len(refs), len(train), len(held)) == (29, 21, 8)
    assert held == HELDOUT  # a fixed rule, not a random draw: the same split everywhere
    assert not set(train) & set(held) and set(train) | set(held) == {r.id for r in refs}
    assert len({mt.sha256_of(r.path()) for r in refs}) == 29  # 29 different files
    assert mt.load_photo(held[0]).shape == (480, 768, 3)
    # the shipped checkpoint was trained on exactly the training photographs, and says so
    record = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    assert record["training"]["train_photos"] == train and record["training"]["heldout_photos"] == held
    with pytest.raises(SqueezeError, match="training photographs"):
        mt.heldout_clips(1, photo_ids=[train[0]])
    with pytest.raises(SqueezeError, match="held-out"):
        mt.TrainingClips(get_config("k400"), photo_ids=[held[0]])


def test_rendering_is_seeded_and_deterministic():
    cfg = get_config("k400", frames=4)
    a = mt.heldout_clips(1, size=64, config=cfg, photo_ids=HELDOUT[:1])
    b = mt.heldout_clips(1, size=64, config=cfg, photo_ids=HELDOUT[:1])
    assert a.frames_uint8.shape == (9, 4, 64, 64, 3) and a.frames_uint8.dtype == torch.uint8
    assert torch.equal(a.frames_uint8, b.frames_uint8)
    assert a.labels.tolist() == list(range(9)) and a.names[3] == f"{HELDOUT[0]}#tilt-up#0"
    assert torch.equal(a.normalized(0, 2), squeezetime.video.normalize(a.frames_uint8[:2], cfg.mean, cfg.std))
    # the frames are the official sampling's: 4 frames, interval 4, centred in the virtual video
    photo = mt.load_photo(HELDOUT[0])
    p1 = mt.plan_clip(np.random.default_rng(1), 2, photo.shape[:2], 4, 4)
    p1b = mt.plan_clip(np.random.default_rng(1), 2, photo.shape[:2], 4, 4)
    p2 = mt.plan_clip(np.random.default_rng(2), 2, photo.shape[:2], 4, 4)
    assert np.array_equal(p1.indices[0], squeezetime.video.sample_indices(int(p1.video_frames[0]), 4, 4)[0])
    assert np.array_equal(p1.poses, p1b.poses) and not np.allclose(p1.poses, p2.poses)
    r1, r2 = (mt.render_clips(photo, p, cfg, 64) for p in (p1, p2))
    assert torch.equal(r1, mt.render_clips(photo, p1b, cfg, 64)) and not torch.equal(r1, r2)


def test_motion_directions_and_the_view_stays_in_the_photograph():
    h, w = 480, 720
    rng = np.random.default_rng(0)
    for label, name in enumerate(mt.LABELS):
        for _ in range(20):
            plan = mt.plan_clip(rng, label, (h, w), 16, 4)
            cx, cy, s, th = (plan.poses[0, :, k] for k in range(4))
            change = {"pan-right": cx[-1] - cx[0], "pan-left": cx[0] - cx[-1], "tilt-down": cy[-1] - cy[0],
                      "tilt-up": cy[0] - cy[-1], "zoom-in": s[0] - s[-1], "zoom-out": s[-1] - s[0],
                      "rotate-cw": th[-1] - th[0], "rotate-ccw": th[0] - th[-1]}.get(name)
            if change is not None:
                assert change > 0, name
            for k in range(16):  # every corner of every sampled view inside the photograph
                c, sn = np.cos(th[k]), np.sin(th[k])
                for du, dv in ((-160, -120), (160, -120), (160, 120), (-160, 120)):
                    x, y = cx[k] + s[k] * (c * du - sn * dv), cy[k] + s[k] * (sn * du + c * dv)
                    assert 0 <= x <= w and 0 <= y <= h
    # pixels: the camera rolls clockwise -> a point right of centre rises in the frame; mirroring = a mirrored photo
    photo = np.zeros((240, 320, 3), dtype=np.uint8)
    photo[118:122, 218:222] = 255  # 60 px right of the centre (160, 120)
    canvas, sizes = mt.photo_canvas([photo])
    plans = mt.ClipPlans(np.array([7]), np.array([0]), np.array([64]), np.array([[0, 4]]),
                         np.array([[[160.0, 120.0, 1.0, 0.0], [160.0, 120.0, 1.0, 0.3]]]), np.array([False]),
                         np.ones((1, 2)), np.array([0.0]), np.array([0]))
    frames = mt.render_uint8(canvas, sizes, plans)[0].float().mean(-1)
    ys, xs = (frames[0] > 100).nonzero(as_tuple=True)
    assert abs(float(ys.float().mean()) - 119.5) < 1 and abs(float(xs.float().mean()) - 219.5) < 1
    ys, xs = (frames[1] > 100).nonzero(as_tuple=True)
    assert float(ys.float().mean()) == pytest.approx(119.5 - 60 * np.sin(0.3), abs=1.5)
    plans.flip[:] = True
    mirrored = mt.render_uint8(*mt.photo_canvas([np.ascontiguousarray(photo[:, ::-1])]),
                               mt.ClipPlans(*[getattr(plans, f) if f != "flip" else np.array([False])
                                              for f in mt.ClipPlans.__dataclass_fields__]))
    assert int((mt.render_uint8(canvas, sizes, plans).int() - mirrored.int()).abs().max()) <= 1


def test_shipped_checkpoint_loads_strictly_and_recognises_held_out_motion():
    assert CHECKPOINT.stat().st_size <= 40e6
    model = squeezetime.load_checkpoint(CHECKPOINT)  # strict: every tensor accounted for
    cfg = model.config
    assert (cfg.width, cfg.num_classes, cfg.frames, cfg.input_size) == (0.5, 9, 16, 224)
    # the label file named in the metadata, so exports and `squeeze predict` say "pan-left", not Kinetics names
    assert cfg.labels == "camera_motion" and squeezetime.video.load_labels(cfg.labels) == list(mt.LABELS)
    from safetensors import safe_open

    with safe_open(str(CHECKPOINT), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["labels"]) == list(mt.LABELS) and meta["width"] == "0.5" and meta["task"] == "camera_motion"
    record = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    assert record["heldout"]["top1"] >= 0.95  # measured on all 288 held-out clips after training
    clips = mt.heldout_clips(1, config=cfg, photo_ids=HELDOUT[-2:])  # 18 clips, 16 x 224, two unseen photographs
    with torch.no_grad():
        pred = torch.cat([model(clips.normalized(s, s + 6)) for s in range(0, len(clips), 6)]).argmax(1).numpy()
    top1 = float((pred == clips.labels).mean())
    assert top1 >= 0.8, (top1, pred.tolist())  # chance is 0.11; 1.0 measured on these 18 clips


def test_motion_accuracy_bench_runs_every_artifact_of_an_export(tmp_path):
    from bench import motion_accuracy
    from export.pipeline import export_squeezetime
    from squeezetime.model import seeded_model
    from squeezetime.rewrite import InputSpec

    model = seeded_model("k400", seed=0, width=0.25, num_classes=9, frames=4)
    out = tmp_path / "export"
    result = export_squeezetime(model, out, formats="onnx", spec=InputSpec(frames=4, size=64),
                                source={"kind": "seeded", "seed": 0})
    assert result.ok
    # an int8 record (as the quantized exports write them) is run like any other precision
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"][0]["precision"] = "int8"
    (out / "manifest.json").write_text(json.dumps(manifest))
    rc = motion_accuracy.main([str(out), "--clips-per-photo", "1", "--heldout-photos", "2", "--bootstrap", "200",
                               "--out", str(tmp_path / "rep")])
    assert rc == 0
    report = json.loads((tmp_path / "rep" / "motion_accuracy.json").read_text())
    assert report["clips"]["count"] == 18 and report["clips"]["photos"] == HELDOUT[:2] and report["clips"]["frames"] == 4 and report["clips"]["size"] == 64
    ref, onnx = report["rows"]
    assert ref["format"] == "pytorch" and onnx["format"] == "onnx" and onnx["precision"] == "int8"
    assert onnx["status"] == "ok" and onnx["runtime"].startswith("onnxruntime")
    assert onnx["agreement_with_fp32"] >= 0.95 and onnx["logits_sqnr_db"] > 60  # an fp32 graph, whatever the label
    d = onnx["top1_minus_fp32"]
    assert d["ci_low"] <= d["mean"] <= d["ci_high"] and d["resamples"] == 200
    assert abs(d["mean"] - (onnx["top1"] - ref["top1"])) < 1e-9
    md = (tmp_path / "rep" / "motion_accuracy.md").read_text()
    assert "| artifact | precision |" in md and onnx["file"] in md
    # identical results: a zero difference with a zero-width interval
    assert motion_accuracy.paired_bootstrap(np.ones(5), np.ones(5), 100)["ci_high"] == 0.0
