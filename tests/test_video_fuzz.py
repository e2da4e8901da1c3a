"""Inputs found while fuzzing the video loader (bench/fuzz/fuzz_video.py) stay fixed: each one either decodes
or raises SqueezeError with a one-line message -- never another exception."""

import json
import warnings
from pathlib import Path

import pytest

from squeezetime import SqueezeError, video

DATA = Path(__file__).parent / "data" / "fuzz" / "video"
# file -> {"frames": frames that decode} or {"error": part of the SqueezeError message}
EXPECTED = json.loads((DATA / "expected.json").read_text())


def test_every_kept_input_has_an_expectation():
    assert sorted(EXPECTED) == sorted(p.name for p in DATA.iterdir() if p.name != "expected.json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fuzz_input(name):
    path = DATA / name
    expect = EXPECTED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shortfall warning is allowed; the outcome is what is fixed
        if "error" in expect:
            with pytest.raises(SqueezeError, match=expect["error"]) as info:
                video.probe(path)
            assert "\n" not in str(info.value) and str(path) in str(info.value)
            with pytest.raises(SqueezeError, match=expect["error"]):
                video.read_clips_uint8(path, "k400", frames=2, size=32, interval=2)
        else:
            assert video.probe(path).frames == expect["frames"]
            clips = video.read_clips_uint8(path, "k400", frames=2, size=32, interval=2)
            assert clips.shape == (1, 2, 32, 32, 3)
