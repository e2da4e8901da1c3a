"""Architecture facts: official key names/shapes, parameter count and conv MACs (SQUEEZETIME.md)."""

from pathlib import Path

import pytest
import torch

import squeezetime
from squeezetime import SqueezeError

# copy of shared/reference/squeezetime_k400_keys.tsv (the official K400 checkpoint: 757 entries)
KEYS_TSV = Path(__file__).with_name("data") / "squeezetime_k400_keys.tsv"


def _reference_keys():
    rows = [line.split("\t") for line in KEYS_TSV.read_text().splitlines() if line.strip()]
    return {name: (shape, dtype) for name, shape, dtype in rows}


def test_state_dict_matches_official_key_list():
    ref = _reference_keys()
    assert len(ref) == 757
    sd = squeezetime.build_model("k400").state_dict()
    mine = {k: (str(tuple(v.shape)), str(v.dtype).replace("torch.", "")) for k, v in sd.items()}
    assert set(mine) == set(ref)
    assert {k: mine[k] for k in ref} == ref


def test_parameter_count_and_conv_macs():
    from torch.utils.flop_counter import FlopCounterMode

    model = squeezetime.build_model("k400").eval()
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone."))
    pos = sum(p.numel() for n, p in model.named_parameters() if n.endswith("pos_embed"))
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("cls_head."))
    assert round(backbone / 1e6, 3) == 28.887
    assert round(pos / 1e6, 3) == 0.222
    assert round((backbone - pos) / 1e6, 1) == 28.7  # the paper's figure excludes the pos_embeds
    assert head == 2048 * 400 + 400
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(torch.zeros(1, 3, 16, 224, 224))
    assert out.shape == (1, 400)
    conv_macs = counter.get_flop_counts()["Global"][torch.ops.aten.convolution] / 2
    assert round(conv_macs / 1e9, 2) == 5.48


@pytest.mark.parametrize(
    "config,classes,frames,size,width",
    [("k600", 600, 8, 160, 0.5), ("hmdb51", 51, 4, 128, 0.25), ("k400", 400, 32, 96, 0.25)],
)
def test_named_configs_and_overrides(config, classes, frames, size, width):
    model = squeezetime.build_model(config, frames=frames, width=width).eval()
    assert model.config.num_classes == classes
    assert model.backbone.net.conv1.weight.shape == (int(64 * width), 3 * frames, 5, 5)
    with torch.no_grad():
        out = model(torch.randn(2, 3, frames, size, size))  # non-224 sizes interpolate pos_embed
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_time_is_squeezed_as_c_times_T_plus_t():
    """Feeding the squeezed layout c*T+t through the stem equals the official 5-D path."""
    model = squeezetime.build_model("k400", frames=4, width=0.25, num_classes=5).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    manual = torch.cat([x[:, c, t:t + 1] for c in range(3) for t in range(4)], dim=1)
    net = model.backbone.net
    assert torch.equal(net.conv1(x.reshape(1, 12, 64, 64)), net.conv1(manual))


def test_bad_options_are_errors():
    with pytest.raises(SqueezeError, match="unknown config"):
        squeezetime.build_model("k700")
    with pytest.raises(SqueezeError, match="frames=5"):
        squeezetime.build_model("k400", frames=5)
    with pytest.raises(SqueezeError, match="unknown SqueezeTime option"):
        squeezetime.build_model("k400", colour=3)
