"""Bad inputs to `squeeze predict / export / verify / bench`: one `error:` line that says what to do, a non-zero
exit, no traceback, nothing half-written. All of these fail before any model is exported or benchmarked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.cli import main
from squeeze_mobile.errors import SqueezeError

SMALL = ["--config", "hmdb51", "--frames", "4", "--size", "64"]
ONNX_NAME = "squeezetime_hmdb51_4x64_clip_fp32.onnx"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert not err.startswith("\n"), "no stray blank line before the error"
    return errors[0]


def _no_partials(folder: Path):
    return [p for p in Path(folder).rglob("*") if ".partial-" in p.name or p.name.startswith(".write-test-")]


# ---------------------------------------------------------------------------------------- numbers out of range
@pytest.mark.parametrize("argv, flag, accepted", [
    (["predict", "{video}", "--top", "0"], "--top", ">= 1"),
    (["predict", "{video}", "--top", "-1"], "--top", ">= 1"),
    (["predict", "{video}", "--threads", "-1"], "--threads", "in [1, "),
    (["predict", "{video}", "--threads", "0"], "--threads", "in [1, "),
    (["export", "squeezetime", "--out", "{tmp}/o", "--threads", "-1"], "--threads", "in [1, "),
    (["export", "squeezetime", "--out", "{tmp}/o", "--threads", "0"], "--threads", "in [1, "),
    (["export", "squeezetime", "--out", "{tmp}/o", "--frames", "0"], "--frames", "one of 4, 8, 16, 32"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--frames", "5"], "--frames", "one of 4, 8, 16, 32"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--batch", "0"], "--batch", "in [1, 256]"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--size", "0"], "--size", "too small; use an integer in [32, 1024]"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--size", "16"], "--size", "too small; use an integer in [32, 1024]"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--size", "4096"], "--size", "too large"),
    (["bench", "{tmp}", "--runs", "0"], "--runs", ">= 1"),
    (["bench", "{tmp}", "--threads", "0"], "--threads", "in [1, "),
    (["bench", "{tmp}", "--threads", "1,,2"], "--threads", "empty item"),
    (["export", "squeezetime", "--out", "{tmp}/o", "--formats", "onnx,tensorrt"], "--formats", "unknown format(s) tensorrt"),
    (["export", "decoder", "--out", "{tmp}/o", "--formats", "gguf"], "--formats", "unknown format(s) gguf"),
    (["bench", "{tmp}", "--warmup", "-1"], "--warmup", ">= 0"),
    (["bench", "{tmp}", "--runs", "many"], "--runs", "expected an integer"),
])
def test_out_of_range_numbers_name_the_accepted_range(tmp_path, capsys, real_video, argv, flag, accepted):
    code = main([a.format(video=real_video, tmp=tmp_path) for a in argv])
    line = _error_line(capsys)
    assert code == 2 and f"argument {flag}:" in line and accepted in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, what", [
    (["export", "squeezetime", "--formats", "onnx", "--out", ""], "--out"),
    (["export", "squeezetime", "--formats", "onnx", "--out", "  "], "--out"),
    (["export", "squeezetime", "--formats", "onnx", "--out", "o", "--checkpoint", ""], "--checkpoint"),
    (["verify", ""], "dir"),
    (["verify", "x", "--checkpoint", ""], "--checkpoint"),
    (["bench", ""], "dir"),
    (["bench", "x", "--out", ""], "--out"),
    (["predict", "{video}", "--checkpoint", ""], "--checkpoint"),
    (["predict", ""], "video"),
])
def test_empty_paths_are_refused(tmp_path, capsys, monkeypatch, real_video, argv, what):
    """An empty path would mean the current directory (export into it, verify it) or no checkpoint at all (a random
    model): refused like any bad option, one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main([a.format(video=real_video) for a in argv]) == 2
    line = _error_line(capsys)
    assert f"argument {what}: is empty" in line, line
    assert list(tmp_path.iterdir()) == []


def test_bench_threads_list_is_checked(tmp_path, capsys):
    for bad in ("-1", "0", "1,0"):   # usage errors (exit 2), as `export --threads 0`
        assert main(["bench", str(tmp_path), "--threads", bad]) == 2
        assert "argument --threads: must be an integer in [1, " in _error_line(capsys)


# ------------------------------------------------------------------------------------------ bad checkpoints
@pytest.fixture
def bad_checkpoints(tmp_path, real_video):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "video.pth").write_bytes(real_video.read_bytes()[:200_000])
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
    (tmp_path / "dir.pth").mkdir()
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("empty.pth", "is empty (0 bytes)"),
    ("video.pth", "it is an MP4/MOV video, not a checkpoint"),
    ("random.pth", "is not a readable PyTorch file"),
    ("random.safetensors", "is not a readable safetensors file"),
    ("dir.pth", "is a directory; give the checkpoint file"),
    ("missing.pth", "does not exist"),
])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_bad_checkpoint_is_one_line(bad_checkpoints, capsys, real_video, name, message, command):
    ckpt = str(bad_checkpoints / name)
    if command == "predict":
        argv = ["predict", str(real_video), "--checkpoint", ckpt]
    else:
        argv = ["export", "squeezetime", "--checkpoint", ckpt, "--formats", "onnx", "--out", str(bad_checkpoints / "out")]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert message in line, line
    assert not (bad_checkpoints / "out").exists()  # --out is created only once the inputs are known to be good


@pytest.mark.parametrize("command", ["predict", "export"])
def test_backbone_only_checkpoint_names_no_missing_flag(tmp_path, capsys, real_video, command):
    """The head-less error names only what exists (the Python API), and the CLI has no --allow-missing-head."""
    import squeezetime

    path = tmp_path / "backbone.pth"
    squeezetime.save_checkpoint(squeezetime.build_model("hmdb51", frames=4, width=0.25), path, layout="backbone")
    argv = (["predict", str(real_video)] if command == "predict" else
            ["export", "squeezetime", "--formats", "onnx", "--out", str(tmp_path / "o")]) + ["--checkpoint", str(path)]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "backbone-only" in line and "--allow-missing-head" not in line, line
    assert main(argv + ["--allow-missing-head"]) == 2  # and no such flag
    assert "unrecognized arguments: --allow-missing-head" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_empty_checkpoint_in_a_real_process(tmp_path, real_video):
    (tmp_path / "empty.pth").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "export.cli", "predict", str(real_video), "--checkpoint",
                           str(tmp_path / "empty.pth")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
        f"error: checkpoint {tmp_path / 'empty.pth'} is empty (0 bytes); download or save it again"]


def test_unsafe_checkpoint_message_fits_predict(tmp_path, capsys, real_video):
    import datetime
    from collections import OrderedDict

    import torch

    import squeezetime

    model = squeezetime.build_model("hmdb51", frames=4, width=0.25)
    path = tmp_path / "mmengine.pth"
    torch.save({"meta": {"time": datetime.datetime(2024, 1, 1)}, "state_dict": OrderedDict(model.state_dict())}, path)
    assert main(["predict", str(real_video), "--checkpoint", str(path)]) == 1
    assert "--skip-unsafe-metadata" in _error_line(capsys)
    # ... and predict has that flag
    assert main(["predict", str(real_video), "--checkpoint", str(path), "--skip-unsafe-metadata", "--top", "2",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 2


# -------------------------------------------------------------------------------------------------- verify
def _manifest(**changes):
    from squeezetime.config import get_config

    m = {"schema": "squeeze-mobile/manifest/1",
         "model": {"name": "squeezetime", "config": get_config("hmdb51", frames=4).to_dict(),
                   "source": {"kind": "seeded", "seed": 0}},
         "input": {"format": "clip", "shape": [1, 3, 4, 64, 64], "batch": 1},
         "verification_inputs": {"video": "c.mp4", "video_sha256": "0" * 64, "inputs": []},
         "artifacts": [{"format": "onnx", "file": ONNX_NAME, "sha256": "0" * 64, "precision": "fp32"}],
         "failures": []}
    m.update(changes)
    return m


def _pack(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"kv.keys": torch.zeros(2)}, str(path), metadata={"format": "squeeze-context-pack/2"})
    return path


@pytest.mark.parametrize("content, message", [
    ("[]", "the top level is an array, not an object"),
    (json.dumps({k: v for k, v in _manifest().items() if k != "artifacts"}), "no 'artifacts' list"),
    (json.dumps(_manifest(artifacts="x")), "'artifacts' is a string, not a list"),
    (json.dumps(_manifest(artifacts=[{"format": "onnx", "file": ONNX_NAME, "precision": "fp32"}])),
     f"artifact {ONNX_NAME} has no sha256"),
    (json.dumps(_manifest(artifacts=[{"format": "onnx", "file": "../../etc/passwd", "sha256": "0" * 64}])),
     "'file' must be a plain file name"),
    (json.dumps(_manifest(artifacts=[])), "lists no artifacts to verify"),
    (json.dumps(_manifest())[:100], "is not valid JSON"),
    ("\xff\xfe not text", "not valid JSON"),
    (json.dumps(_manifest(schema="other/1")), "it was not written by `squeeze export`"),
    (json.dumps(_manifest(model={"config": {"name": "k400", "width": -1}, "source": {"kind": "seeded"}})),
     "'model.config.width' has an impossible value"),
    (json.dumps(_manifest(input={"format": "clip", "shape": [1, 3, 4, 64]})), "'input.shape' must be 5 positive"),
    (json.dumps(_manifest()), "the verification video c.mp4 is not there"),
])
def test_verify_bad_manifests(tmp_path, capsys, content, message):
    (tmp_path / "manifest.json").write_text(content, encoding="utf-8", errors="surrogateescape")
    assert main(["verify", str(tmp_path)]) == 1
    line = _error_line(capsys)
    assert message in line, line


def test_verify_names_what_it_was_given(tmp_path, capsys, real_video):
    assert main(["verify", str(_pack(tmp_path / "ctx.pack"))]) == 1
    line = _error_line(capsys)
    assert "is a Squeezed Attention context pack, not an export directory" in line and "run squeeze export" not in line
    assert main(["verify", str(real_video)]) == 1
    assert "is an MP4/MOV video, not an export directory" in _error_line(capsys)
    assert main(["verify", str(tmp_path)]) == 1
    assert "has no manifest.json; run `squeeze export` first" in _error_line(capsys)
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "does not exist" in _error_line(capsys)
    (tmp_path / "sub" / "manifest.json").mkdir(parents=True)
    assert main(["verify", str(tmp_path / "sub")]) == 1
    assert "is a directory, not the manifest" in _error_line(capsys)


def test_verify_video_option(tmp_path, capsys, real_video):
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest()))
    assert main(["verify", str(tmp_path)]) == 1
    assert "pass --verify-video PATH" in _error_line(capsys)
    assert main(["verify", str(tmp_path), "--verify-video", str(real_video)]) == 1
    assert "is not the video this export was verified on" in _error_line(capsys)
    assert main(["verify", str(tmp_path), "--verify-video", str(tmp_path / "gone.mp4")]) == 1
    assert "--verify-video" in _error_line(capsys)


# -------------------------------------------------------------------------------------------------- export
def test_export_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(tmp_path / "f")]) == 1
    line = _error_line(capsys)
    assert "is a file, not a directory" in line and "File exists" not in line


@pytest.mark.parametrize("name", [ONNX_NAME, "manifest.json", "labels.txt"])
def test_export_refuses_user_directory_named_like_an_output(tmp_path, capsys, name):
    user = tmp_path / name
    user.mkdir()
    (user / "mine.txt").write_text("keep me")
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(tmp_path)]) == 1
    line = _error_line(capsys)
    assert "is a directory that squeeze-mobile did not write" in line and "left alone" in line
    assert (user / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, nothing removed


def test_export_refuses_user_directory_named_like_an_mlpackage(tmp_path, capsys):
    user = tmp_path / "squeezetime_hmdb51_4x64_clip_fp16.mlpackage"
    (user / "Data").mkdir(parents=True)
    (user / "Manifest.json").write_text("{}")  # looks a bit like a package, but it is not what coremltools writes
    (user / "photos").mkdir()
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx,coreml", "--out", str(tmp_path)]) == 1
    assert "did not write" in _error_line(capsys)
    assert (user / "photos").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [user.name]


def test_export_refuses_to_mix_models_in_one_directory(tmp_path, capsys):
    other = _manifest(model={"name": "squeezetime", "config": {"name": "k400", "frames": 16},
                             "source": {"kind": "seeded", "seed": 0}},
                      input={"format": "clip", "shape": [1, 3, 16, 224, 224], "batch": 1})
    (tmp_path / "manifest.json").write_text(json.dumps(other))
    (tmp_path / "squeezetime_k400_16x224_clip_fp32.onnx").write_bytes(b"onnx")
    before = (tmp_path / "manifest.json").read_text()
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(tmp_path)]) == 1
    assert "holds an export of another model or input" in _error_line(capsys)
    assert (tmp_path / "manifest.json").read_text() == before
    (tmp_path / "manifest.json").write_text("{not json")
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(tmp_path)]) == 1
    assert "cannot be merged" in _error_line(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--formats", "tflite", "--precision", "fp16"], "tflite does not offer fp16 (formats with fp16: "),
    (["--formats", "pte", "--pte-backend", "coreml", "--precision", "fp16"], "pte does not offer fp16"),
    (["--precision", "fp32,fp16"], "tflite, pte do not offer fp16"),  # the default formats
    (["--formats", "onnx,tflite", "--precision", "fp16", "--checkpoint", "{tmp}/nope.pth"], "tflite does not offer"),
])
def test_export_format_precision_clash_fails_first(tmp_path, capsys, extra, message):
    """A format asked for in a precision it does not offer is refused before any work: no model, no --out, no
    labels.txt and no artifact-less manifest."""
    assert main(["export", "squeezetime", *SMALL, "--out", str(tmp_path / "o"),
                 *[a.format(tmp=tmp_path) for a in extra]]) == 1
    line = _error_line(capsys)
    assert message in line and "nothing was written" in line, line
    assert not (tmp_path / "o").exists()


def test_export_api_refuses_a_clash_before_writing(tmp_path):
    from export.pipeline import export_squeezetime
    from squeezetime.model import seeded_model

    model = seeded_model("hmdb51", frames=4)
    with pytest.raises(SqueezeError, match="tflite does not offer fp16"):
        export_squeezetime(model, tmp_path / "o", formats="onnx,tflite", precision="fp16")
    assert not (tmp_path / "o").exists()


def test_failed_export_removes_the_folders_it_created(tmp_path, capsys, video_dir):
    """--out (and missing parents) made for an export that then fails before writing anything are removed again;
    a folder that was there before stays."""
    argv = ["export", "squeezetime", *SMALL, "--formats", "onnx", "--verify-video", str(video_dir / "not_a_video.mp4")]
    assert main(argv + ["--out", str(tmp_path / "a" / "b" / "c")]) == 1
    assert "cannot be opened" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    assert main(argv + ["--out", str(tmp_path / "mine" / "o")]) == 1
    _error_line(capsys)
    assert [p.name for p in tmp_path.rglob("*")] == ["mine"]


def test_export_verify_video_missing_fails_first(tmp_path, capsys):
    assert main(["export", "squeezetime", *SMALL, "--formats", "onnx", "--out", str(tmp_path / "o"),
                 "--verify-video", str(tmp_path / "nope.mp4")]) == 1
    assert "--verify-video" in _error_line(capsys)


# --------------------------------------------------------------------------------------------------- bench
def _bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "art"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(_manifest()))
    return d


def test_bench_out_file_is_refused_before_measuring(tmp_path, capsys):
    d = _bench_dir(tmp_path)
    (tmp_path / "report").write_text("x")
    assert main(["bench", str(d), "--out", str(tmp_path / "report")]) == 1
    assert "is a file, not a directory" in _error_line(capsys)
    (tmp_path / "rep" / "report.json").mkdir(parents=True)
    assert main(["bench", str(d), "--out", str(tmp_path / "rep")]) == 1
    assert "report.json is a directory" in _error_line(capsys)


def test_bench_creates_no_folder_for_a_failed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "nonexist"]) == 1
    assert "nonexist does not exist" in _error_line(capsys)
    assert main(["bench", "nonexist", "--out", "rep/sub"]) == 1
    _error_line(capsys)
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(_manifest(artifacts=[])))
    assert main(["bench", "art"]) == 1
    assert "lists no artifacts to benchmark" in _error_line(capsys)
    assert main(["bench", "art", "--adb"]) == 1
    _error_line(capsys)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["art", "art/manifest.json"]


@pytest.mark.parametrize("argv, message, code", [
    (["--formats", "bogus"], "argument --formats: unknown format(s) bogus; choose from", 2),   # usage errors, as --runs 0
    (["--formats", "onnx,tensorrt"], "unknown format(s) tensorrt", 2),
    (["--formats", ","], "no formats given", 2),
    (["--formats", "tflite"], "holds no tflite artifact (it has: onnx)", 1),
    (["--formats", "tflite", "--adb"], "has no .tflite or .pte artifacts", 1),
])
def test_bench_formats_are_checked(tmp_path, capsys, argv, message, code):
    d = _bench_dir(tmp_path)
    assert main(["bench", str(d), *argv]) == code
    assert message in _error_line(capsys)
    assert not (d / "bench").exists() and not (d / "bench_android").exists()


def test_bench_gpu_needs_cuda_and_no_dir(tmp_path, capsys):
    import torch

    d = _bench_dir(tmp_path)
    assert main(["bench", str(d), "--gpu"]) == 1
    assert "--gpu benchmarks the PyTorch models it builds itself" in _error_line(capsys)
    if torch.cuda.is_available():
        pytest.skip("the no-CUDA message needs a machine without CUDA")
    assert main(["bench", "--gpu", "--out", str(tmp_path / "g")]) == 1
    assert "--gpu needs a CUDA GPU" in _error_line(capsys)
    assert not (tmp_path / "g").exists()


# -------------------------------------------------------------------------------------------------- --debug
def test_debug_works_after_the_subcommand(tmp_path):
    with pytest.raises(SqueezeError, match="has no manifest.json"):
        main(["verify", str(tmp_path), "--debug"])
    with pytest.raises(SqueezeError, match="has no manifest.json"):
        main(["--debug", "verify", str(tmp_path)])
    assert main(["verify", str(tmp_path)]) == 1


def test_every_option_help_states_its_default(capsys):
    import argparse

    from export.cli import build_parser

    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in set(action.choices.values()):
                    yield from walk(sub)

    missing = []
    for parser in walk(build_parser()):
        if parser.prog.split()[-1] not in ("predict", "export", "verify", "bench", "squeeze"):
            continue  # context/generate belong to squeezed_attention's CLI
        for action in parser._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS) or action.dest == "help":
                continue
            if "default" not in action.help and "required" not in action.help:
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert not missing, missing


# ------------------------------------------------------------------------------------------- signals (real processes)
@pytest.mark.parametrize("sig, code, name", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "SIGINT")])
def test_signal_during_context_build(tmp_path, sig, code, name):
    """main() turns SIGTERM into the same unwinding as Ctrl-C for every command: here a context pack build."""
    import signal
    import time

    from squeezed_attention.testing import passkey_case

    _, text = passkey_case(6000)  # long enough that the build (about a minute) is still running at the signal
    (tmp_path / "ctx.txt").write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "export.cli", "context", "build", "--context",
                             str(tmp_path / "ctx.txt"), "--out", str(tmp_path / "ctx.pack")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    time.sleep(15)  # imports, model loading, and into the build (which takes minutes on 2 cores)
    assert proc.poll() is None, "the build finished before the signal; make the context longer"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=400)  # unwinding waits for the running step (minutes on a loaded machine)
    assert proc.returncode == code, err
    assert [l for l in err.splitlines() if l.startswith("error:")] == [
        f"error: interrupted; no partial artifacts were left behind ({name})"], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.txt"]  # no pack, no partial


# ----------------------------------------------------------------------------- fuzzing regressions (bench/fuzz)
FUZZ = Path(__file__).with_name("data") / "fuzz"


@pytest.mark.parametrize("path", sorted((FUZZ / "manifest").iterdir()), ids=lambda p: p.name)
def test_manifest_fuzz_inputs_raise_only_squeeze_error(path):
    """Every step that walks a manifest (read, verify's planning, bench's spec, the merge, the summary table)
    either works or raises SqueezeError on inputs the fuzzer (bench/fuzz/fuzz_manifest.py) and the sweep found."""
    from bench.fuzz import fuzz_manifest

    fuzz_manifest._scratch_files()
    try:
        fuzz_manifest.target(path.read_bytes())
    except SqueezeError:
        pass


@pytest.mark.parametrize("name, message", [
    ("deep_nesting.json", "JSON nested too deeply"),
    ("not_utf8.json", "is not a text file (not UTF-8)"),
    ("truncated.json", "is not valid JSON"),
    ("shape_bool_seed.json", "'input.shape' must be 5 positive integers"),
    ("config_types.json", "'model.config.width' has an impossible value wide"),
    ("video_list.json", "'verification_inputs.video' must be a path"),
    ("unknown_format.json", "unknown format 'tensorrt'"),
])
def test_manifest_fuzz_inputs_messages(tmp_path, capsys, name, message):
    (tmp_path / "manifest.json").write_bytes((FUZZ / "manifest" / name).read_bytes())
    assert main(["verify", str(tmp_path)]) == 1
    assert message in _error_line(capsys)


def test_summary_table_prints_manifest_text_literally():
    import io

    from rich.console import Console

    from export.cli_export import print_summary

    manifest = json.loads((FUZZ / "manifest" / "markup_and_types.json").read_text())
    buf = io.StringIO()
    print_summary(Console(file=buf, width=300), manifest)
    assert "[red]x[bold].onnx" in buf.getvalue() and "[/]" in buf.getvalue()


def test_export_summary_header_has_no_padding():
    import io

    from rich.console import Console

    from export.cli_export import print_summary

    manifest = json.loads((FUZZ / "manifest" / "markup_and_types.json").read_text())
    buf = io.StringIO()
    print_summary(Console(file=buf, width=300), manifest)
    first = buf.getvalue().splitlines()[0]
    assert first == "squeeze export -> clip input [1, 3, 4, 64, 64]"


def test_bench_threads_has_an_upper_bound_and_repeats_collapse(tmp_path, capsys):
    """`--threads 5000` started 5000 runtime threads per worker on a 2-core machine and ran past 5 minutes."""
    from bench.host import parse_threads
    from squeeze_mobile.cli_types import MAX_THREADS

    assert main(["bench", str(tmp_path), "--threads", f"1,{MAX_THREADS + 1}"]) == 2
    assert f"in [1, {MAX_THREADS}]" in _error_line(capsys)
    assert parse_threads("2,1,2") == [2, 1]
