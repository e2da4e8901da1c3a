"""A disk that fills (or a file-size limit) during an export: one `error:` line, no partial file, no artifact left
that the manifest does not describe."""

import errno
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main

SMALL = ["--config", "hmdb51", "--frames", "4", "--size", "64"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from conftest import write_small_checkpoint

    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt_disk") / "small_hmdb51.pth", seed=5)


def _partials(folder: Path):
    return [p.name for p in folder.rglob("*") if ".partial-" in p.name]


def test_litert_write_past_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, small_checkpoint):
    """LiteRT's C++ writer used to end the process through LLVM's fatal-error handler when a write failed (full
    disk, quota, `ulimit -f`): exit status 1, no message (captured by the quiet wrapper), a partial .tflite left.
    A file-size limit fails the write the same way a full disk does, without needing a small filesystem."""
    out = tmp_path / "out"
    limit = 1_000_000  # the .tflite of this model is ~3.2 MB; manifest.json and labels.txt are a few kB

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "export", "squeezetime", *SMALL, "--checkpoint", str(small_checkpoint),
         "--out", str(out), "--formats", "tflite"],
        cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1 and "no room to write" in errors[0] and ".tflite" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not _partials(out) and not list(out.glob("*.tflite"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"] == [] and manifest["failures"][0]["format"] == "tflite"


def test_manifest_that_cannot_be_written_removes_the_new_artifact(tmp_path, small_checkpoint, monkeypatch, capsys):
    """The artifact fits, the manifest rewritten after it does not: one line, and the new artifact is removed again
    (it would be on disk with no description), and so is its labels.txt; the manifest on disk is the previous one
    (here none: the folder the export made is removed)."""
    from export import pipeline

    real_json_text = pipeline.json_text

    def json_text(obj, *args, **kwargs):
        # the manifest that lists the new artifact is the one that meets the full disk
        if isinstance(obj, dict) and obj.get("artifacts"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_json_text(obj, *args, **kwargs)

    monkeypatch.setattr(pipeline, "json_text", json_text)
    out = tmp_path / "out"
    code = main(["export", "squeezetime", *SMALL, "--checkpoint", str(small_checkpoint), "--out", str(out),
                 "--formats", "onnx"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no room to write" in errors[0] and "manifest.json" in errors[0], err
    assert "removed again" in errors[0]
    assert not list(out.glob("*.onnx")) and not _partials(out)
    # the folder this export made is gone again: no manifest, no label file without artifacts
    assert not out.exists()


def test_a_full_disk_inside_copytree_is_named_as_such(tmp_path):
    """coremltools copies the .mlpackage it built with shutil.copytree, whose shutil.Error collects the ENOSPC:
    that is a full disk, not 'coreml cannot convert this model'."""
    import shutil

    from export.pipeline import write_error

    exc = shutil.Error([("/tmp/a/weight.bin", str(tmp_path / "b"), "[Errno 28] No space left on device: 'b'")])
    message = str(write_error(tmp_path / "m.mlpackage", exc, "coreml: "))
    assert message.startswith("coreml: no room to write") and "No space left on device" in message
    other = shutil.Error([("/tmp/a", "/tmp/b", "[Errno 13] Permission denied")])
    assert "cannot write" in str(write_error(tmp_path / "m.mlpackage", other))


def test_an_input_too_large_for_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """`--size 1024 --batch 256` (both in range) made PyTorch's allocator raise a RuntimeError (48 GiB for the
    example input) that reached the user as a traceback. The allocator's refusal is simulated here: on a machine with
    enough memory the real one would allocate it."""
    from squeezetime.rewrite import InputSpec

    def refuse(self, seed=0):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 51539607552 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(InputSpec, "example", refuse)
    out = tmp_path / "out"
    assert main(["export", "squeezetime", *SMALL[:4], "--size", "1024", "--batch", "256", "--out", str(out),
                 "--formats", "onnx"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: out of memory for an input of shape [256, 3, 4, 1024, 1024] (48.0 GiB in one allocation); "
                      "use a smaller --batch or --size (the artifacts already written stay described in the manifest)"]
    assert not out.exists()


def test_bench_report_that_does_not_fit_is_one_line(tmp_path, small_checkpoint):
    """The bench report's PNG written past a full disk / file-size limit ended in PIL's traceback."""
    art = tmp_path / "art"
    assert main(["export", "squeezetime", *SMALL, "--checkpoint", str(small_checkpoint), "--out", str(art),
                 "--formats", "onnx"]) == 0

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))  # report.md fits, report.png does not

    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", "bench", str(art), "--formats", "onnx", "--no-eager", "--threads", "1",
         "--runs", "1", "--warmup", "0", "--out", str(tmp_path / "rep")],
        cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors == ["error: cannot write a file (File too large); free some space or choose another --out "
                      "(no partial file was left)"], proc.stderr[-2000:]
    assert not _partials(tmp_path / "rep")
