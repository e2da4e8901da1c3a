"""Fuzz SqueezeTime checkpoint loading (squeezetime.load_checkpoint / read_state_dict) on .pth and .safetensors bytes.

    python -m bench.fuzz.fuzz_checkpoint --seconds 300 --out bench_out/fuzz

Seeds: checkpoints of a reduced SqueezeTime written by the project's own save_checkpoint (official mmaction
layout, bare backbone, safetensors), one whose metadata holds a non-tensor Python object (the
--skip-unsafe-metadata path), and small hand-made state dicts. Each input is written to a file whose suffix
follows its first bytes (safetensors header -> .safetensors, else .pth) and loaded; inputs refused for
arbitrary Python objects are loaded again with skip_unsafe_metadata=True. Only SqueezeError may come out.
"""

from __future__ import annotations

import io
import struct
import sys
import tempfile
from pathlib import Path

from bench.fuzz import harness

NAME = "checkpoint"
INSTRUMENT = ("squeezetime", "squeeze_mobile")
PRELOAD = ("torch", "safetensors.torch", "numpy")
_TMP = harness.scratch_dir("checkpoint")


def instrument() -> None:
    import squeezetime.checkpoint  # noqa: F401
    import squeeze_mobile.file_kinds  # noqa: F401


def _reduced_model():
    import torch

    import squeezetime

    torch.manual_seed(0)
    # the smallest network of the official layout: all 757 tensors, stage widths 1..8, pos_embed 1x1
    return squeezetime.build_model("hmdb51", frames=4, width=1 / 64, num_classes=3, pos_dim=(1, 1, 1, 1)).eval()


def seeds():
    import datetime
    from collections import OrderedDict

    import torch

    import squeezetime

    model = _reduced_model()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for layout, name in (("mmaction", "mmaction.pth"), ("backbone", "backbone.pth"), ("safetensors", "st.safetensors")):
            squeezetime.save_checkpoint(model, Path(d) / name, layout=layout)
            out[name] = (Path(d) / name).read_bytes()
    sd = model.state_dict()
    buf = io.BytesIO()  # mmengine-style metadata: a Python object next to the weights (needs skip_unsafe_metadata)
    torch.save({"meta": {"time": datetime.datetime(2024, 1, 1)}, "state_dict": OrderedDict(sd)}, buf)
    out["unsafe_meta.pth"] = buf.getvalue()
    small = OrderedDict((k, sd[k]) for k in list(sd)[:6])
    buf = io.BytesIO()
    torch.save({"state_dict": small}, buf)
    out["partial.pth"] = buf.getvalue()
    from safetensors.torch import save

    out["partial.safetensors"] = save({k: v.contiguous() for k, v in small.items()}, metadata={"config": "hmdb51"})
    return out


def _suffix(data: bytes) -> str:
    if len(data) >= 9 and data[8:9] == b"{" and struct.unpack("<Q", data[:8])[0] < (1 << 32):
        return ".safetensors"
    return ".pth"


def target(data: bytes) -> None:
    from squeezetime.checkpoint import load_checkpoint
    from squeeze_mobile.errors import SqueezeError

    path = _TMP / f"input{_suffix(data)}"
    path.write_bytes(data)
    try:
        try:
            load_checkpoint(path)
        except SqueezeError as exc:
            if "arbitrary Python objects" not in str(exc):
                raise
            load_checkpoint(path, skip_unsafe_metadata=True)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
