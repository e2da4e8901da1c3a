"""Fixes for what the stop-47 black-box sweeps found with other videos, checkpoints and texts."""

import json
import zipfile
from collections import OrderedDict

import pytest
import torch

from squeeze_mobile.errors import SqueezeError


def _small(**overrides):
    from squeezetime.model import seeded_model

    return seeded_model("hmdb51", seed=1, frames=4, **{"width": 0.25, **overrides})


def test_a_checkpoint_damaged_inside_is_refused(tmp_path):
    """4 KiB zeroed in the middle of a torch.save zip loaded without a word, with part of one weight zeroed: the zip's
    per-member CRC-32 was never checked."""
    import squeezetime

    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"state_dict": OrderedDict(_small().state_dict())}, good)
    raw = bytearray(good.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 4096] = bytes(4096)
    bad.write_bytes(bytes(raw))
    assert zipfile.ZipFile(bad).testzip() is not None
    squeezetime.load_checkpoint(good)
    with pytest.raises(SqueezeError, match=r"is damaged: its member '.*' does not match the checksum"):
        squeezetime.load_checkpoint(bad)


@pytest.mark.parametrize("width", [0.3, 0.13, 0.25])
def test_a_model_of_any_width_loads_back(tmp_path, width):
    """width 0.3 has stages 19/38/76/153; the width read back from the stem (19/64) gave 152 for the last stage, so the
    project's own save_checkpoint wrote a file load_checkpoint refused with 84 'shape mismatches'."""
    import squeezetime

    model = _small(width=width)
    squeezetime.save_checkpoint(model, tmp_path / "m.pth")
    again = squeezetime.load_checkpoint(tmp_path / "m.pth")
    assert again.config.stage_widths == model.config.stage_widths
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
