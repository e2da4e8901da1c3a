"""Checkpoint loading: official mmaction2 layout and its variants reproduce logits; every failure is an error."""

from collections import OrderedDict

import pytest
import torch

import squeezetime
from squeezetime import SqueezeError
from squeezetime.checkpoint import BACKBONE_PREFIX

from conftest import randomize_bn


def _clip(frames=4, size=64, seed=1):
    return torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_mmaction_layout_reproduces_logits_exactly(tmp_path, small_model):
    # exactly what mmaction2 writes: meta + state_dict with backbone.net./cls_head.fc_cls. keys
    path = tmp_path / "SqueezeTime_custom.pth"
    torch.save({"meta": {"epoch": 100, "mmaction_version": "1.2.0"}, "state_dict": OrderedDict(small_model.state_dict())}, path)
    loaded = squeezetime.load_checkpoint(path)
    assert not loaded.training
    assert loaded.config.num_classes == 10 and loaded.config.frames == 4 and loaded.config.width == 0.25
    x = _clip()
    assert torch.equal(_logits(loaded, x), _logits(small_model, x))
    # BN running statistics really arrived (the official loader drops them)
    bn = loaded.backbone.net.layer2[0].conv2.param_conv[2]
    ref = small_model.backbone.net.layer2[0].conv2.param_conv[2]
    assert torch.equal(bn.running_var, ref.running_var) and int(bn.num_batches_tracked) == 1234
    assert loaded.load_report.tensors == len(small_model.state_dict())


def test_dataparallel_prefix_and_safetensors(tmp_path, small_model):
    x = _clip()
    expected = _logits(small_model, x)
    dp = tmp_path / "dp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in small_model.state_dict().items()}}, dp)
    model = squeezetime.load_checkpoint(dp)
    assert torch.equal(_logits(model, x), expected)
    assert "module." in model.load_report.renamed_prefixes

    st = tmp_path / "weights.safetensors"
    squeezetime.save_checkpoint(small_model, st)
    assert torch.equal(_logits(squeezetime.load_checkpoint(st), x), expected)


def test_bare_backbone_needs_allow_missing_head(tmp_path, small_model):
    path = tmp_path / "backbone.pth"
    squeezetime.save_checkpoint(small_model, path, layout="backbone")
    with pytest.raises(SqueezeError, match=r"missing 2 key\(s\): cls_head.fc_cls.bias, cls_head.fc_cls.weight.*allow_missing_head"):
        squeezetime.load_checkpoint(path)
    model = squeezetime.load_checkpoint(path, allow_missing_head=True)
    assert model.load_report.missing_head
    # the backbone features are identical even though the head is new
    x = _clip()
    with torch.no_grad():
        assert torch.equal(model.backbone(x), small_model.backbone(x))


def test_num_classes_and_config_inferred_from_head(tmp_path):
    torch.manual_seed(3)
    model = randomize_bn(squeezetime.build_model("k400", frames=8, width=0.25, num_classes=51))
    path = tmp_path / "hmdb.pth"
    squeezetime.save_checkpoint(model, path)
    loaded = squeezetime.load_checkpoint(path)
    assert loaded.config.name == "hmdb51" and loaded.config.num_classes == 51 and loaded.config.frames == 8


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path, small_model):
    sd = OrderedDict(small_model.state_dict())
    key = BACKBONE_PREFIX + "layer3.1.conv2.spatial_conv.glo_conv.4.running_var"
    missing = OrderedDict((k, v) for k, v in sd.items() if k != key)
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(SqueezeError, match=r"missing 1 key\(s\): " + key.replace(".", r"\.")):
        squeezetime.load_checkpoint(tmp_path / "missing.pth")

    extra = OrderedDict(sd)
    extra["backbone.net.layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": extra}, tmp_path / "extra.pth")
    with pytest.raises(SqueezeError, match=r"unexpected key\(s\): backbone\.net\.layer5\.0\.conv1\.weight"):
        squeezetime.load_checkpoint(tmp_path / "extra.pth")

    bad = OrderedDict(sd)
    name = BACKBONE_PREFIX + "layer1.0.conv3.weight"
    bad[name] = torch.zeros(bad[name].shape[0] + 1, *bad[name].shape[1:])
    torch.save({"state_dict": bad}, tmp_path / "shape.pth")
    with pytest.raises(SqueezeError, match=r"shape mismatch.*layer1\.0\.conv3\.weight"):
        squeezetime.load_checkpoint(tmp_path / "shape.pth")


def test_prefix_that_matches_nothing_is_an_error_not_silence(tmp_path, small_model):
    torch.save({"state_dict": {"encoder." + k: v for k, v in small_model.state_dict().items()}}, tmp_path / "p.pth")
    with pytest.raises(SqueezeError, match="unexpected key"):
        squeezetime.load_checkpoint(tmp_path / "p.pth")


class Evil:
    command = "true"

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_pickled_code_is_refused_and_never_executed(tmp_path, small_model):
    marker = tmp_path / "pwned"
    Evil.command = f"touch {marker}"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_model.state_dict(), "hook": Evil()}, path)
    with pytest.raises(SqueezeError, match=r"arbitrary Python objects \(posix\.system\)"):
        squeezetime.load_checkpoint(path)
    # opt-in: the object becomes an inert placeholder, the tensors load, nothing runs
    model = squeezetime.load_checkpoint(path, skip_unsafe_metadata=True)
    assert not marker.exists()
    x = _clip()
    assert torch.equal(_logits(model, x), _logits(small_model, x))
    # an object inside the state dict itself is refused even then
    sd = OrderedDict(small_model.state_dict())
    sd["backbone.net.bn1.weight"] = Evil()
    torch.save({"state_dict": sd}, tmp_path / "evil2.pth")
    with pytest.raises(SqueezeError, match="inside its state dict"):
        squeezetime.load_checkpoint(tmp_path / "evil2.pth", skip_unsafe_metadata=True)
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(SqueezeError, match="does not exist"):
        squeezetime.load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SqueezeError, match="not a readable PyTorch file"):
        squeezetime.load_checkpoint(tmp_path / "junk.pth")
    import pickle as _pickle

    (tmp_path / "legacy.pth").write_bytes(_pickle.dumps({"a": 1}, protocol=2)[:-3])
    with pytest.raises(SqueezeError, match="not a readable PyTorch file"):
        squeezetime.load_checkpoint(tmp_path / "legacy.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(SqueezeError, match="not a readable safetensors"):
        squeezetime.load_checkpoint(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(SqueezeError, match="not a state dict"):
        squeezetime.load_checkpoint(tmp_path / "list.pth")


def test_truncated_checkpoint_file(tmp_path, small_model):
    path = tmp_path / "full.pth"
    squeezetime.save_checkpoint(small_model, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(SqueezeError, match="not a readable PyTorch file"):
        squeezetime.load_checkpoint(tmp_path / "cut.pth")


# ----------------------------------------------------------------------------- fuzzing regressions (bench/fuzz)
FUZZ_INPUTS = sorted((__import__("pathlib").Path(__file__).with_name("data") / "fuzz" / "checkpoint").iterdir())


@pytest.mark.parametrize("path", FUZZ_INPUTS, ids=lambda p: p.name)
@pytest.mark.parametrize("skip_unsafe_metadata", [False, True])
def test_fuzz_found_inputs_raise_squeeze_error(path, skip_unsafe_metadata):
    # huge_memo_index.pth: one corrupt LONG_BINPUT opcode made the C unpickler of the --skip-unsafe-metadata path
    # allocate a memo array for index 0x7ffffff0 (6+ GB, killed for memory); the pure-Python unpickler keeps a dict
    with pytest.raises(SqueezeError):
        squeezetime.load_checkpoint(path, skip_unsafe_metadata=skip_unsafe_metadata)


def _tiny_state():
    model = squeezetime.build_model("hmdb51", frames=4, width=1 / 64, num_classes=3, pos_dim=(1, 1, 1, 1))
    return OrderedDict(model.state_dict())


@pytest.mark.parametrize("case, message", [
    ("meta", "not dense CPU tensors"),
    ("sparse", "not dense CPU tensors"),
    ("nan", "NaN or infinite values"),
    ("stride0_huge", "implausible SqueezeTime"),
    ("int_keys", "non-text keys"),
])
def test_odd_tensors_are_refused(tmp_path, case, message):
    sd = _tiny_state()
    if case == "meta":
        sd = OrderedDict((k, torch.empty(v.shape, dtype=v.dtype, device="meta")) for k, v in sd.items())
    elif case == "sparse":
        sd["backbone.net.bn1.weight"] = sd["backbone.net.bn1.weight"].to_sparse()
    elif case == "nan":
        sd["backbone.net.bn1.running_var"][0] = float("nan")
    elif case == "stride0_huge":  # a stride-0 view claims a million output channels in a few bytes
        sd[BACKBONE_PREFIX + "conv1.weight"] = torch.zeros(1).expand(10**6, 12, 3, 3)
    elif case == "int_keys":
        sd = {1: torch.zeros(1)}
    path = tmp_path / f"{case}.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(SqueezeError, match=message):
        squeezetime.load_checkpoint(path)


def test_wrong_files_say_what_they_are(tmp_path, real_video):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(SqueezeError, match=r"is empty \(0 bytes\)"):
        squeezetime.load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "clip.pth").write_bytes(real_video.read_bytes()[:65536])
    with pytest.raises(SqueezeError, match="it is an MP4/MOV video, not a checkpoint"):
        squeezetime.load_checkpoint(tmp_path / "clip.pth")
    (tmp_path / "clip.safetensors").write_bytes(real_video.read_bytes()[:65536])
    with pytest.raises(SqueezeError, match="not a readable safetensors file .* it is an MP4/MOV video"):
        squeezetime.load_checkpoint(tmp_path / "clip.safetensors")
    with pytest.raises(SqueezeError, match="is a directory"):
        squeezetime.load_checkpoint(tmp_path)


def test_format_is_read_from_the_bytes_not_the_name(tmp_path, small_model):
    """The file's bytes pick the loader, whatever its name says: an upper-case extension, a safetensors file saved as
    .pth, a zip or legacy pickle checkpoint named .safetensors; the label-file metadata of safetensors too."""
    import shutil

    from safetensors.torch import save_file

    x = _clip()
    expected = _logits(small_model, x)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in small_model.state_dict().items()}, str(st))
    zipped, legacy = tmp_path / "w.pth", tmp_path / "legacy.pth"
    torch.save({"state_dict": small_model.state_dict()}, zipped)
    torch.save({"state_dict": small_model.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    for src, name in [(st, "UPPER.SAFETENSORS"), (st, "st_as.pth"), (st, "st_as.ckpt"), (zipped, "zip_as.safetensors"),
                      (legacy, "pickle_as.safetensors"), (zipped, "zip.PTH")]:
        shutil.copyfile(src, tmp_path / name)
        assert torch.equal(_logits(squeezetime.load_checkpoint(tmp_path / name), x), expected), name
    # the label file a safetensors checkpoint names in its metadata is found under any file name
    torch.manual_seed(2)
    nine = squeezetime.build_model("k400", frames=4, width=0.25, num_classes=9).eval()
    save_file({k: v.contiguous() for k, v in nine.state_dict().items()}, str(tmp_path / "motion.pth"),
              metadata={"label_file": "camera_motion"})
    assert squeezetime.load_checkpoint(tmp_path / "motion.pth").config.labels == "camera_motion"
    # unrecognised bytes: the error names the format the extension promised, whatever its case
    (tmp_path / "junk.SafeTensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SqueezeError, match="is not a readable safetensors file"):
        squeezetime.load_checkpoint(tmp_path / "junk.SafeTensors")
    # save_checkpoint: the extension's case does not change the layout written
    squeezetime.save_checkpoint(small_model, tmp_path / "saved.SAFETENSORS")
    from squeeze_mobile.file_kinds import describe

    assert describe(tmp_path / "saved.SAFETENSORS") == "a safetensors file"


def test_context_pack_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"kv.keys": torch.zeros(2)}, str(tmp_path / "ctx.pth"), metadata={"format": "squeeze-context-pack/2"})
    with pytest.raises(SqueezeError, match="is a Squeezed Attention context pack, not a SqueezeTime checkpoint"):
        squeezetime.load_checkpoint(tmp_path / "ctx.pth")


def test_backbone_only_message_names_no_missing_cli_flag(tmp_path, small_model):
    """The head-less error names what exists: the Python API's allow_missing_head, no --allow-missing-head flag."""
    path = tmp_path / "backbone.pth"
    squeezetime.save_checkpoint(small_model, path, layout="backbone")
    with pytest.raises(SqueezeError) as info:
        squeezetime.load_checkpoint(path)
    message = str(info.value)
    assert "backbone-only" in message and "allow_missing_head=True" in message
    assert "--allow-missing-head" not in message
