"""Command-line cases from the second new-user sweep: output folders whose names are not UTF-8."""

import signal
import os
from pathlib import Path

import pytest

from export.cli import main

SMALL = ["--config", "hmdb51", "--frames", "4", "--size", "64"]


@pytest.fixture
def latin1_dir(tmp_path):
    """A folder named in Latin-1 bytes (an old archive copied onto a UTF-8 system)."""
    raw = os.path.join(os.fsencode(tmp_path), b"vid\xe9os")
    try:
        os.mkdir(raw)
    except (OSError, UnicodeError):
        pytest.skip("this filesystem refuses names that are not UTF-8")
    return Path(os.fsdecode(raw))


def test_out_folder_whose_name_is_not_utf8_is_refused_before_work(latin1_dir, capsys):
    """Every runtime binding (onnxruntime, LiteRT, ExecuTorch, coremltools) refused such a path after the conversion
    with a pybind 'incompatible constructor arguments' message, and the artifacts were left recorded as failed."""
    out = latin1_dir / "export"
    assert main(["export", "squeezetime", *SMALL, "--out", str(out), "--formats", "onnx"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "vid\\xe9os/export has a name that is not valid UTF-8" in errors[0], errors
    assert not out.exists()
    for command in (["verify", str(latin1_dir)], ["bench", str(latin1_dir)]):
        assert main(command) == 1
        assert "not valid UTF-8" in capsys.readouterr().err


def test_verify_with_an_unreadable_artifact_fails_that_artifact_in_one_line(tmp_path, capsys, monkeypatch):
    """`squeeze verify DIR` on an artifact without read permission ended in a PermissionError traceback from the
    sha256 check. (Root reads any file, so the refusal is simulated at open() in the sha256 check.)"""
    import errno

    from export import verify as verify_module

    out = tmp_path / "art"
    assert main(["export", "squeezetime", *SMALL, "--out", str(out), "--formats", "onnx"]) == 0
    capsys.readouterr()
    onnx = next(out.glob("*.onnx"))
    real_open = open

    def denied(path, *args, **kwargs):
        if Path(path) == onnx:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(verify_module, "open", denied, raising=False)
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "cannot be read (Permission denied); check the file's permissions" in captured.out
    assert [l for l in captured.err.splitlines() if l.startswith("error:")] == [
        f"error: verification failed for {onnx.name}"]


def test_safetensors_checkpoint_in_a_latin1_folder_loads_with_its_labels(latin1_dir):
    """safetensors' Rust reader refuses file names that are not UTF-8 ('Path ... is not valid UTF-8'), so a valid
    checkpoint there was refused as 'not a readable safetensors file' and its label_file metadata was lost."""
    import shutil

    import torch

    import squeezetime

    shipped = Path(squeezetime.__file__).with_name("checkpoints") / "camera_motion_w050.safetensors"
    copy = latin1_dir / shipped.name
    shutil.copyfile(shipped, copy)
    model = squeezetime.load_checkpoint(copy)
    reference = squeezetime.load_checkpoint(shipped)
    assert model.config.labels == reference.config.labels == "camera_motion"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_held_during_the_last_step_still_ends_the_export_as_interrupted(signum, tmp_path):
    """Ctrl-C (or SIGTERM) during the last format's conversion or verification is held until the step ends (the
    artifact is kept); the export then stops as interrupted (exit 130 / 143 in the CLI) instead of exiting 0 as if
    nothing had been asked."""
    from export import pipeline
    from squeeze_mobile.signals import Terminated

    held = pipeline._DeferredInterrupt()
    held.requested = signum   # what its handler records
    with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
        pipeline._export_formats([], [None], None, None, False, None, None, tmp_path, "squeezetime", None, 0,
                                 lambda *a: None, True, {"failures": []}, None, held)
