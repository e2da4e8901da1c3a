"""Fixes for what the stop-46 sweeps left open: casts of the video model, exit codes, and the like."""

import json

import pytest
import torch

from squeeze_mobile.errors import SqueezeError


@pytest.fixture(scope="module")
def small_seeded():
    from squeezetime.model import seeded_model

    return lambda: seeded_model("hmdb51", seed=3, frames=4, width=0.25)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double"])
def test_predict_video_takes_a_cast_model(small_seeded, real_video, cast):
    """A model cast with .half() / .bfloat16() / .double() ended in PyTorch's 'Input type (float) and bias type should
    be the same'; it now classifies, with the float32 model's top classes."""
    from squeezetime.predict import predict_video

    ref = predict_video(small_seeded(), real_video, top=3)
    out = predict_video(getattr(small_seeded(), cast)(), real_video, top=3)
    assert [p.index for p in out][:1] == [p.index for p in ref][:1]
    assert out[0].probability == pytest.approx(ref[0].probability, abs=0.02)
    assert all(isinstance(p.probability, float) for p in out)


def test_a_model_of_mixed_dtypes_is_one_line(small_seeded, real_video):
    from squeezetime.predict import predict_video

    model = small_seeded()
    model.cls_head.fc_cls.half()
    with pytest.raises(SqueezeError, match=r"several dtypes or devices \(float16 on cpu, float32 on cpu\)"):
        predict_video(model, real_video)


def test_export_of_a_half_model_exports_its_float32_copy(small_seeded, tmp_path):
    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec

    model = small_seeded().half()
    result = export_squeezetime(model, tmp_path / "o", formats="onnx", spec=InputSpec(frames=4, size=64))
    assert result.ok, result.failures
    assert next(model.parameters()).dtype == torch.float16   # the user's model is left as it was
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [a["verification"]["status"] for a in manifest["artifacts"]] == ["pass"]
