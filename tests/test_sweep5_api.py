"""Python API edge cases from a black-box sweep of the public API (stop 46): each failed before its fix."""

import os
from pathlib import Path
import stat

import pytest
import torch

from squeeze_mobile.errors import SqueezeError


def _tiny(tmp_path, name, **kw):
    from squeezed_attention import LlamaForCausalLM, load_checkpoint
    from squeezed_attention.testing import write_tiny_llama_gguf

    ck = load_checkpoint(write_tiny_llama_gguf(tmp_path / f"{name}.gguf", **kw))
    return ck, LlamaForCausalLM.from_checkpoint(ck)


TEXT = " ".join(["abc an ss ab", "bat cab dig", "fan ham ink", "jab kin lab"] * 4)   # ~130 byte-level tokens


def test_a_pack_for_another_decoder_or_other_weights_is_refused_by_the_generator(tmp_path):
    """Generator(model, tokenizer, pack) read a 1-layer pack with a 2-layer model (garbage answers, or a raw torch
    error for another head size); a pack of other weights of the same shape was taken too."""
    from squeezed_attention import BuildSettings, Generator, build_context_pack

    ck1, m1 = _tiny(tmp_path, "one", layers=1, seed=0)
    ck2, m2 = _tiny(tmp_path, "two", layers=2, seed=0)
    ck3, m3 = _tiny(tmp_path, "other", layers=1, seed=5)
    pack = build_context_pack(m1, ck1, TEXT, BuildSettings(framing="raw", observation_window=8))
    Generator(m1, ck1.tokenizer, pack)   # its own model: fine
    with pytest.raises(SqueezeError, match=r"built for another decoder \(num_layers 1 vs 2"):
        Generator(m2, ck2.tokenizer, pack)
    with pytest.raises(SqueezeError, match="built for other model weights"):
        Generator(m3, ck3.tokenizer, pack)


def test_a_zero_token_step_and_a_settings_field_changed_after_construction_are_errors_not_crashes(tmp_path):
    """Both reached the flash-attention kernel with zero query rows, which kills the interpreter with SIGFPE."""
    from squeezed_attention import BuildSettings, build_context_pack

    ck, model = _tiny(tmp_path, "one", layers=1)
    with pytest.raises(SqueezeError, match="at least one token"):
        model.step(torch.tensor([], dtype=torch.long), model.new_cache(4))
    settings = BuildSettings(framing="raw")
    settings.observation_window = 0
    with pytest.raises(SqueezeError, match=r"observation_window\) must be an integer in \[1"):
        build_context_pack(model, ck, TEXT, settings)


def test_atomic_writes_refuse_special_files_and_write_through_links(tmp_path):
    """save_checkpoint (like every atomic write) replaced a FIFO, and would replace a device node as root, with a plain
    file, and turned a symbolic link into a local file."""
    import squeezetime

    model = squeezetime.seeded_model("hmdb51", seed=0)
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(SqueezeError, match="named pipe"):
        squeezetime.save_checkpoint(model, fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    target = tmp_path / "real.pth"
    target.write_bytes(b"old")
    link = tmp_path / "link.pth"
    link.symlink_to(target)
    squeezetime.save_checkpoint(model, link)
    assert link.is_symlink() and target.stat().st_size > 1000
    assert squeezetime.load_checkpoint(link).config.num_classes == 51


def _mkv(path, frames=80, first_pts=0, gop=10):
    import fractions

    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"g": str(gop)})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            arr = np.zeros((48, 64, 3), np.uint8)
            arr[..., 0], arr[:, :32, 1] = (i * 6) % 256, 200
            f = av.VideoFrame.from_ndarray(arr, format="rgb24")
            f.pts, f.time_base = first_pts + i, fractions.Fraction(1, 25)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_matroska_timing_a_late_start_is_complete_and_a_damaged_middle_counts_the_lost_duration(tmp_path):
    """A complete MKV whose timestamps start at 20 s (cut from a longer recording) was warned about as truncated (its
    duration counted from 0); a damaged one whose demuxer dropped most packets said only '1 packet does not decode'."""
    from squeezetime import video

    late = video.probe(_mkv(tmp_path / "late.mkv", frames=40, first_pts=500))
    assert late.complete and late.shortfall_message() is None
    data = bytearray(_mkv(tmp_path / "whole.mkv").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0x5A
    (tmp_path / "damaged.mkv").write_bytes(bytes(data))
    info = video.probe(tmp_path / "damaged.mkv")
    if not (info.damaged_packets or info.damaged_frames) or info.decoded_frames > 60:
        pytest.skip(f"this FFmpeg build read the damaged file differently ({info})")
    message = info.shortfall_message()
    assert "is damaged" in message and "the container declares 3.20 s (about 80 frames" in message, message


def test_one_calibration_path_is_one_path_not_its_characters(tmp_path):
    """calibration='clip.mp4' was iterated character by character ('/' listed as a folder; '..' calibrated on '.')."""
    from export.calibration import expand_sources

    clip = _mkv(tmp_path / "clip.mkv", frames=20)
    assert expand_sources(str(clip)) == [clip] and expand_sources(clip) == [clip]
    assert expand_sources(str(tmp_path)) == [clip]


def test_an_export_source_that_does_not_rebuild_the_model_is_refused_before_any_work(tmp_path):
    """export_squeezetime(source=...) was recorded unchecked: a wrong seed exported 'ok' and failed its own verify; a
    checkpoint source without a sha256, or a malformed one, wrote a manifest the reader refuses."""
    import squeezetime
    from export.pipeline import export_squeezetime, verify_directory
    from squeezetime.rewrite import InputSpec

    model = squeezetime.seeded_model("hmdb51", seed=7, frames=4, depth=14, width=0.25)
    spec = InputSpec(frames=4, size=64)
    for bad, message in (({"kind": "seeded", "seed": 0}, r"seeded model \(seed 0\) does not rebuild this model"),
                         ({"kind": "seeded", "seed": -1}, "seed must be a whole number"),
                         ("seeded", "source must be None"), ({"kind": "bogus"}, "source must be None"),
                         ({"kind": "checkpoint", "path": str(tmp_path / "none.pth")}, "is not a checkpoint file")):
        with pytest.raises(SqueezeError, match=message):
            export_squeezetime(model, tmp_path / "out", formats="onnx", spec=spec, source=bad)
        assert not (tmp_path / "out").exists()
    path = tmp_path / "weights.pth"
    squeezetime.save_checkpoint(model, path)
    result = export_squeezetime(model, tmp_path / "out", formats="onnx", spec=spec,
                                source={"kind": "checkpoint", "path": str(path)})   # sha256 filled in
    assert result.ok and result.manifest["model"]["source"]["sha256"]
    assert all(v["status"] == "pass" for v in verify_directory(tmp_path / "out").values())


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors"])
def test_a_saved_checkpoint_loads_back_with_its_preprocessing_and_labels(tmp_path, name):
    """save_checkpoint kept only the tensors and the preset's name: a model built for 112-px crops every 2nd frame came
    back wanting 224-px crops every 4th, and the camera-motion checkpoint re-saved lost its label names."""
    import squeezetime
    from squeezetime.checkpoint import SAVED_PREPROCESSING

    model = squeezetime.seeded_model("hmdb51", seed=1, frames=8, depth=14, width=0.25, input_size=112,
                                     pos_dim=(28, 14, 7, 4), frame_interval=2, resize_short=128)
    squeezetime.save_checkpoint(model, tmp_path / name)
    back = squeezetime.load_checkpoint(tmp_path / name)
    assert {k: getattr(back.config, k) for k in SAVED_PREPROCESSING} == \
        {k: getattr(model.config, k) for k in SAVED_PREPROCESSING}
    shipped = Path(squeezetime.__file__).parent / "checkpoints" / "camera_motion_w050.safetensors"
    original = squeezetime.load_checkpoint(shipped)
    squeezetime.save_checkpoint(original, tmp_path / name)
    assert squeezetime.load_checkpoint(tmp_path / name).config.labels == original.config.labels != "kinetics400"
    with pytest.raises(SqueezeError, match="unknown checkpoint layout"):
        squeezetime.save_checkpoint(model, tmp_path / "x.safetensors", layout="onnx")


def test_fifos_and_devices_are_refused_or_read_once_never_waited_on(tmp_path):
    """Pack, model and manifest readers blocked forever on a FIFO (verify and bench too); a context 'file' of
    /dev/zero was read until memory ran out. A text read once (`--context <(cmd)`) still comes through a pipe."""
    import threading

    from export.pipeline import read_manifest
    from squeeze_mobile.file_kinds import read_utf8_text
    from squeezed_attention import load_checkpoint, read_context_pack

    fifo = tmp_path / "x.fifo"
    os.mkfifo(fifo)
    for call, what in ((read_context_pack, "context pack"), (load_checkpoint, "model")):
        with pytest.raises(SqueezeError, match=f"is a named pipe \\(FIFO\\), not a {what} file"):
            call(fifo)
    with pytest.raises(SqueezeError, match="is a device"):
        read_utf8_text("/dev/zero")
    (tmp_path / "export").mkdir()
    os.mkfifo(tmp_path / "export" / "manifest.json")
    with pytest.raises(SqueezeError, match="named pipe"):
        read_manifest(tmp_path / "export")

    def writer():
        with open(fifo, "w", encoding="utf-8") as fh:
            fh.write("the pass key is 4242\n")

    thread = threading.Thread(target=writer)
    thread.start()
    assert read_utf8_text(fifo) == "the pass key is 4242\n"
    thread.join(5)


def test_the_pack_writer_refuses_what_the_reader_refuses_and_specs_are_checked(tmp_path):
    """save_context_pack wrote packs every reader refuses (NaN keys, wrong dtypes), and a Generator answered '' from a
    NaN pack; a SelectionSpec with an unknown mode kept every key, out-of-range budgets failed as IndexErrors."""
    import dataclasses

    import squeezed_attention
    from squeezed_attention import BuildSettings, Generator, SelectionSpec, build_context_pack, save_context_pack
    from squeezed_attention.lookup import select_keys
    from squeezed_attention.lookup_numpy import NumpyTables, select_keys as select_numpy

    assert squeezed_attention.SqueezeError is SqueezeError
    ck, model = _tiny(tmp_path, "one", layers=1)
    pack = build_context_pack(model, ck, TEXT, BuildSettings(framing="raw", observation_window=8))
    keys = pack.keys.clone()
    keys[0, 0, 20, 0] = float("nan")
    bad = dataclasses.replace(pack, keys=keys)
    with pytest.raises(SqueezeError, match="non-finite values"):
        save_context_pack(bad, tmp_path / "nan.pack")
    with pytest.raises(SqueezeError, match="not understood|dtype"):
        save_context_pack(dataclasses.replace(pack, values=pack.values.bfloat16()), tmp_path / "bf16.pack")
    assert list(tmp_path.glob("*.pack")) == []
    with pytest.raises(SqueezeError, match="non-finite"):
        Generator(model, ck.tokenizer, bad)
    with pytest.raises(SqueezeError, match="mode must be"):
        SelectionSpec(mode="bogus", budget_keys=4)
    with pytest.raises(SqueezeError, match="budget_keys must be a whole number"):
        SelectionSpec(budget_keys=-5)
    tables = pack.lookup_tables()
    q = torch.zeros(model.config.num_heads, 1, model.config.head_dim)
    too_many = SelectionSpec(budget_keys=pack.num_clustered + 1)
    for select, t in ((select_keys, tables), (select_numpy, NumpyTables.from_torch(tables))):
        with pytest.raises(SqueezeError, match="more than the"):
            select(t, 0, q if select is select_keys else q.numpy(), too_many)
        with pytest.raises(SqueezeError, match="layer must be"):
            select(t, 5, q if select is select_keys else q.numpy(), SelectionSpec(budget_keys=2))


def test_attention_choices_derived_with_replace_resolve_their_own_defaults():
    """AttentionChoice stored the defaults it resolved: dataclasses.replace(choice, decode_selection='question') was
    refused for an --exact-decode the caller never set, and replace(full, mode='top-k') had no exact opening; a field
    set after construction (kv_budget = nan) kept every key."""
    import dataclasses

    from squeezed_attention import AttentionChoice, make_context
    from squeezed_attention.settings import DEFAULT_EXACT_BELOW, DEFAULT_EXACT_DECODE

    step = AttentionChoice("top-k", kv_budget=0.2)
    held = dataclasses.replace(step, decode_selection="question")
    assert held.exact_decode == 0 and held.exact_below == 0
    topk = dataclasses.replace(AttentionChoice("full"), mode="top-k", kv_budget=0.2)
    assert topk.exact_decode == DEFAULT_EXACT_DECODE and topk.exact_below == DEFAULT_EXACT_BELOW
    assert dataclasses.replace(step, exact_decode=3).exact_decode == 3   # a value given is kept
    with pytest.raises(SqueezeError, match="needs per-step decode selection"):
        AttentionChoice("top-k", kv_budget=0.2, exact_decode=3, decode_selection="question")
    step.kv_budget = float("nan")
    with pytest.raises(SqueezeError, match="kv_budget must be a fraction"):
        make_context(None, step)


def test_a_state_dict_in_memory_loads_and_export_specs_take_whole_numbers():
    """load_checkpoint(state_dict) and load_checkpoint(bytes) ended in pathlib's TypeError; InputSpec(frames=4.0) and
    size='64' failed later inside torch."""
    import squeezetime
    from squeezetime.rewrite import InputSpec

    model = squeezetime.seeded_model("hmdb51", seed=1, depth=14, width=0.25, frames=4)
    back = squeezetime.load_checkpoint({"state_dict": model.state_dict(), "meta": {"config": "hmdb51"}})
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SqueezeError, match="takes a checkpoint path or a state dict; got bytes"):
        squeezetime.load_checkpoint(b"abc")
    for bad in (dict(frames=4.0), dict(size="64"), dict(batch=True)):
        with pytest.raises(SqueezeError, match="must be a whole number"):
            InputSpec(**bad)
    assert InputSpec(frames=__import__("numpy").int64(4), size=64).frames == 4


def test_a_calibrated_threshold_comes_back_exactly_between_equal_grid_points(tmp_path):
    """threshold_for interpolated in log space and came back 1 ulp above a flat stretch of the calibration, so a cluster
    scored exactly there (every cluster of a one-cluster pack) was dropped at every keep fraction."""
    import dataclasses

    from squeezed_attention import BuildSettings, build_context_pack

    ck, model = _tiny(tmp_path, "one", layers=1)
    pack = build_context_pack(model, ck, TEXT, BuildSettings(framing="raw", observation_window=8))
    flat = torch.full_like(pack.thresholds_group, 0.007633587786259542)
    pack = dataclasses.replace(pack, thresholds_group=flat, thresholds_head=flat)
    for keep in (0.01, 0.37, 0.5, 0.99):
        assert pack.threshold_for(keep, False) == 0.007633587786259542


@pytest.mark.parametrize("bad, message", [(dict(width=float("nan")), "width must be a finite number"),
                                          (dict(num_classes=2.5), "num_classes must be a whole number"),
                                          (dict(std=(0.0, 1.0, 1.0)), "std must be three finite numbers > 0")])
def test_configs_refuse_numbers_no_network_or_clip_can_use(bad, message):
    from squeezetime.config import get_config

    with pytest.raises(SqueezeError, match=message):
        get_config("k400", **bad)
