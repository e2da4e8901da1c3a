"""The export-ready rewrite is numerically equivalent on real video and has the graph properties it claims."""

import pytest
import torch

import squeezetime
from squeezetime import SqueezeError, video
from squeezetime.rewrite import InputSpec, export_ready, graph_report

from conftest import randomize_bn


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return randomize_bn(squeezetime.build_model("k400"), seed=7).eval()


@pytest.fixture(scope="module")
def real_clips(real_video):
    """Two real clips (different positions of the video) at 224 and at 256 (needs pos_embed interpolation)."""
    out = {}
    for size in (224, 256, 286):
        u8 = video.read_clips_uint8(real_video, "k400", size=size, views="multi", num_clips=2)[[0, 4]]
        out[size] = (video.normalize(u8, squeezetime.get_config().mean, squeezetime.get_config().std), u8)
    return out


@pytest.mark.parametrize("size", [224, 256, 286])  # 286: the HMDB51 test crop, not a multiple of 32
@pytest.mark.parametrize("fmt", ["clip", "squeezed", "frames_uint8"])
def test_rewrite_matches_original_on_real_video(full_model, real_clips, size, fmt):
    clip, u8 = real_clips[size]
    with torch.no_grad():
        ref = full_model(clip)
        ready = export_ready(full_model, InputSpec(frames=16, size=size, input_format=fmt, batch=2))
        out = ready(ready.spec.from_clip(clip, u8))
    assert out.shape == ref.shape == (2, 400)
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), err
    assert torch.equal(out.topk(5).indices, ref.topk(5).indices)


def test_graph_is_mobile_friendly(full_model):
    for fmt in ("clip", "frames_uint8"):
        spec = InputSpec(frames=16, size=256, input_format=fmt)
        ready = export_ready(full_model, spec)
        ops = graph_report(ready, spec.example())
        assert ops["__max_rank__"] == 4  # nothing 5-D after the input
        assert "batch_norm" not in " ".join(ops) and "_native_batch_norm_legit_no_training" not in ops
        assert not any("interpolate" in k or "upsample" in k for k in ops)
        assert not any(k.endswith("_") for k in ops if not k.startswith("_"))  # no in-place aten ops
        assert ops["conv2d"] == 152 and ops["mean"] == 17  # 16 CTL pools + the global pool
    # pos_embed was resized for 256 input (feature sizes 64/32/16/8)
    assert tuple(ready.blocks[0].ctl.pos_embed.shape) == (1, 16, 64, 64)
    assert tuple(ready.blocks[-1].ctl.pos_embed.shape) == (1, 16, 8, 8)


def test_input_spec_validation(full_model):
    with pytest.raises(SqueezeError, match="unknown input format"):
        InputSpec(input_format="nhwc")
    with pytest.raises(SqueezeError, match="at least 32"):
        InputSpec(size=16)
    with pytest.raises(SqueezeError, match="8 frames"):
        export_ready(full_model, InputSpec(frames=8))
