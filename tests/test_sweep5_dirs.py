"""An export that lands no artifact changes nothing in its folder (black-box sweep of artifact folders, stop 46)."""

import hashlib
import json
from pathlib import Path

import pytest

from export.cli import main

SMALL = ["--config", "hmdb51", "--frames", "4", "--size", "64"]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from conftest import write_small_checkpoint

    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt_dirs") / "small_hmdb51.pth", seed=3)


def _export(ckpt, out, *extra):
    return main(["export", "squeezetime", *SMALL, "--checkpoint", str(ckpt), "--out", str(out), "--formats", "onnx",
                 *extra])


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _interrupted(monkeypatch):
    from export.backends.onnx_backend import OnnxBackend

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxBackend, "export", stopped)


def _broken(monkeypatch):
    from export.backends.onnx_backend import OnnxBackend

    def broken(self, *args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(OnnxBackend, "export", broken)


def test_an_interrupted_first_export_leaves_no_folder_and_a_failed_one_does_not_lock_it(tmp_path, small_checkpoint,
                                                                                       monkeypatch, capsys):
    """Ctrl-C during the first export into a new folder used to leave labels.txt and a manifest listing nothing, which
    then refused the same export with other options as 'an export of another model or input'."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupted(m)
        assert _export(small_checkpoint, out, "--labels", str(_labels(tmp_path))) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    with monkeypatch.context() as m:   # every format fails: the failure is recorded, no artifact
        _broken(m)
        assert _export(small_checkpoint, out) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"] == [] and manifest["failures"][0]["format"] == "onnx"
    capsys.readouterr()
    # the same folder takes the export with other options: nothing in it was an artifact to keep
    assert _export(small_checkpoint, out, "--input", "frames_uint8") == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["format"] == "frames_uint8" and manifest["failures"] == []
    assert [a["file"] for a in manifest["artifacts"]] == ["squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx"]


def _labels(tmp_path) -> Path:
    path = tmp_path / "custom51.txt"
    path.write_text("".join(f"custom_{i}\n" for i in range(51)))
    return path


def test_a_reexport_that_lands_nothing_keeps_the_earlier_labels_and_manifest(tmp_path, small_checkpoint, monkeypatch,
                                                                            capsys):
    """A failed or interrupted re-export with --labels replaced labels.txt (and the manifest's labels_sha256) of a
    folder whose artifacts it did not write."""
    out = tmp_path / "good"
    assert _export(small_checkpoint, out) == 0
    before = _digests(out)
    assert "labels.txt" in before
    with monkeypatch.context() as m:
        _interrupted(m)
        assert _export(small_checkpoint, out, "--labels", str(_labels(tmp_path))) == 130
    assert _digests(out) == before   # byte for byte: not even the manifest's timestamp moved
    with monkeypatch.context() as m:
        _broken(m)
        assert _export(small_checkpoint, out, "--labels", str(_labels(tmp_path))) == 1
    capsys.readouterr()
    after = _digests(out)
    assert after["labels.txt"] == before["labels.txt"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels_sha256"] == before["labels.txt"] and len(manifest["artifacts"]) == 1
    assert manifest["failures"][0]["format"] == "onnx"
    assert main(["verify", str(out)]) == 0, capsys.readouterr().err
    # a re-export that lands its artifact brings its labels
    assert _export(small_checkpoint, out, "--labels", str(_labels(tmp_path))) == 0
    assert (out / "labels.txt").read_text().splitlines()[0] == "custom_0"
    assert json.loads((out / "manifest.json").read_text())["failures"] == []


def test_a_decoder_export_stopped_while_verifying_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """The decoder's artifact took its name before it was verified: Ctrl-C / SIGTERM during the minutes of verification
    left an unverified file with no manifest in a new folder, and replaced an earlier verified artifact of the same
    name whose record (sha256) the manifest still held."""
    from squeezed_attention import decoder_export, testing

    gguf = testing.write_tiny_llama_gguf(tmp_path / "tiny.gguf", layers=1, quantized=False)
    (tmp_path / "doc.txt").write_text(" ".join(["ab an ss abba nan sass"] * 8))
    kw = dict(formats=("onnx",), model_path=gguf, attention=["squeezed"], verify_text=tmp_path / "doc.txt",
              verify_tokens=4, max_context=160, max_prompt=64, max_new=16)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "art"
    with monkeypatch.context() as m:
        m.setattr(decoder_export, "verify_decoder_artifact", stopped)
        with pytest.raises(KeyboardInterrupt):
            decoder_export.export_decoder(out, kv_budget=0.3, **kw)
    assert not out.exists() or not any(out.iterdir())
    assert decoder_export.export_decoder(out, kv_budget=0.3, **kw).ok
    before = _digests(out)
    with monkeypatch.context() as m:
        m.setattr(decoder_export, "verify_decoder_artifact", stopped)
        with pytest.raises(KeyboardInterrupt):
            decoder_export.export_decoder(out, kv_budget=0.5, **kw)   # the same file name, other contents
    assert _digests(out) == before


def test_a_second_writer_into_the_same_folder_is_refused_at_once(tmp_path, small_checkpoint, capsys):
    """Two exports into one --out at the same time each rewrote the manifest from their own reading: one artifact was
    left with no record, and both said 'pass'."""
    from squeeze_mobile.atomic import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):   # another export holds it
        assert _export(small_checkpoint, out) == 1
    err = capsys.readouterr().err
    assert "another squeeze command is writing into" in err and err.count("error:") == 1
    assert list(out.iterdir()) == []
    assert _export(small_checkpoint, out) == 0   # released


def test_a_closed_standard_output_and_an_impossible_file_name_are_one_line_each(tmp_path, small_checkpoint):
    """`squeeze bench DIR >&-` ended in an AttributeError traceback (Python has None for a closed stream); a path
    component over 255 bytes gave a raw OSError traceback from almost every path option."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    assert _export(small_checkpoint, out) == 0
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "export.cli", "bench", str(out), "--out", str(tmp_path / "b")],
                          cwd=repo, capture_output=False, stderr=subprocess.PIPE, text=True, timeout=600,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "b" / "report.json").is_file()
    for argv in (["verify", "a" * 300], ["export", "squeezetime", *SMALL, "--out", str(tmp_path / ("b" * 300))]):
        proc = subprocess.run([sys.executable, "-m", "export.cli", *argv], cwd=repo, capture_output=True, text=True,
                              timeout=600)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "name is too long" in errors[0]


def test_labels_from_a_pipe_are_read_once(tmp_path, small_checkpoint, capsys):
    """--labels was read two or three times, so `--labels <(cmd)` (a pipe) was refused as 'has 0 lines'."""
    import os
    import threading

    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w", encoding="utf-8") as fh:
            fh.write("".join(f"piped_{i}\n" for i in range(51)))

    thread = threading.Thread(target=writer)
    thread.start()
    out = tmp_path / "out"
    assert _export(small_checkpoint, out, "--labels", str(fifo)) == 0, capsys.readouterr().err
    thread.join(5)
    assert (out / "labels.txt").read_text().splitlines()[50] == "piped_50"


def test_a_merge_export_marks_an_earlier_artifact_that_changed_on_disk(tmp_path, small_checkpoint, capsys):
    """An fp32 .onnx truncated after its export was listed as '115 MB ... pass' by a later fp16 export into the folder."""
    out = tmp_path / "out"
    assert _export(small_checkpoint, out) == 0
    (first,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    with open(out / first["file"], "r+b") as fh:
        fh.truncate(1000)
    capsys.readouterr()
    assert _export(small_checkpoint, out, "--precision", "fp16") == 0
    err = capsys.readouterr().err
    assert "changed since it was verified" in err and err.count("warning:") == 1, err
    records = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert records[first["file"]]["verification"]["status"] == "fail"
    assert [a["verification"]["status"] for n, a in records.items() if n != first["file"]] == ["pass"]


def test_a_manifest_saved_with_a_byte_order_mark_still_verifies(tmp_path, small_checkpoint, capsys):
    """A manifest.json re-saved by a Windows editor (UTF-8 with a BOM) was refused as 'not valid JSON (Unexpected UTF-8
    BOM ...)'."""
    out = tmp_path / "out"
    assert _export(small_checkpoint, out) == 0
    path = out / "manifest.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0, capsys.readouterr().err
