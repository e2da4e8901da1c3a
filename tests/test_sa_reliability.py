"""Bad inputs to `squeeze context build|eval` and `squeeze generate`, through the real CLI (export.cli.main, or a
subprocess for pipes): the right exit status, exactly one `error:` line, no traceback, nothing written, changed
or deleted. Refusals that need no model pass `--model <missing file>`: had the model been loaded first, the
message would be "model not found" instead, so these tests also prove the check runs before the slow work.

Packs and models here come from a tiny but complete Llama GGUF (squeezed_attention.testing), so the end-to-end
paths run in seconds.
"""

import json
import random
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export import cli
from squeeze_mobile.errors import SqueezeError
from squeezed_attention import file_kinds
from squeezed_attention.pack import load_context_pack
from squeezed_attention.testing import write_tiny_llama_gguf
from squeezed_attention.weights import default_gguf_path

ROOT = Path(__file__).resolve().parents[1]
from conftest import TINY_TEXT, run_cli as run  # noqa: E402

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def assert_one_error(rc, err, expected_rc, *fragments):
    lines = err.strip().splitlines()
    assert rc == expected_rc, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder):
    """Every file under ``folder`` with its bytes (a refused command must leave it exactly so)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GGUF model, a context file and two packs built by the CLI: raw/flat and chat/hierarchical."""
    d = tmp_path_factory.mktemp("sa_tiny")
    write_tiny_llama_gguf(d / "tiny.gguf")
    (d / "ctx.txt").write_text(TINY_TEXT)
    for name, extra in (("raw.pack", ["--raw", "--observation-window", "8"]),
                        ("chat.pack", ["--hierarchical", "--level1", "0.05", "--observation-window", "16"])):
        rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / name),
                       "--model", str(d / "tiny.gguf"), *extra])
        assert rc == 0
    return d


@pytest.fixture
def scratch(tmp_path, tiny):
    """A folder with copies of the context and model, for tests that must see nothing appear or change."""
    for name in ("ctx.txt", "tiny.gguf", "raw.pack"):
        (tmp_path / name).write_bytes((tiny / name).read_bytes())
    return tmp_path


# ------------------------------------------------------------------------------------ finding 1: --out
@pytest.mark.parametrize("where", ["directory", "proc", "under_a_file", "context_itself", "a_video"])
def test_build_out_is_validated_before_any_work_and_nothing_changes(scratch, capsys, where):
    (scratch / "mine").mkdir()
    (scratch / "mine" / "precious.txt").write_text("keep me")
    (scratch / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    out, message = {
        "directory": (scratch / "mine", "is a directory"),
        "proc": (Path("/proc/x.pack"), "/proc"),
        "under_a_file": (scratch / "ctx.txt" / "x.pack", "ctx.txt"),
        "context_itself": (scratch / "ctx.txt", "the context file itself"),
        "a_video": (scratch / "clip.mp4", "MP4/MOV video, not a context pack"),
    }[where]
    before = snapshot(scratch)
    rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", out,
                      "--model", scratch / "missing.gguf"], capsys)
    assert_one_error(rc, err, 1, message)
    assert snapshot(scratch) == before


@pytest.mark.skipif(IS_ROOT, reason="root writes into any directory")
def test_build_into_an_unwritable_directory_is_refused_up_front(scratch, capsys):
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", locked / "x.pack",
                          "--model", scratch / "missing.gguf"], capsys)
        assert_one_error(rc, err, 1, str(locked))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# -------------------------------------------------------------------------- findings 2, 4: numeric ranges
BUILD = ["context", "build", "--context", "{d}/ctx.txt", "--out", "{d}/new.pack"]
EVAL = ["context", "eval", "--out", "{d}/eval_out"]
GENERATE = ["generate", "--context-pack", "{d}/raw.pack", "--prompt", "ab"]


@pytest.mark.parametrize("argv, fragment", [
    (BUILD + ["--observation-window", "0"], "[1, 8192]"),
    (BUILD + ["--observation-window", "-1"], "[1, 8192]"),
    (BUILD + ["--centroids", "0"], "(0, 0.5]"),
    (BUILD + ["--centroids", "0.7"], "(0, 0.5]"),
    (BUILD + ["--level1", "0"], "(0, 0.5]"),
    (BUILD + ["--seed", "-1"], "[0, "),
    (BUILD + ["--threads", "-1"], "[1, "),
    (BUILD + ["--threads", "0"], "[1, "),
    (BUILD + ["--threads", "two"], "expected an integer"),
    (EVAL + ["--lengths", "abc"], "expected an integer"),
    (EVAL + ["--lengths", ""], "needs at least one length"),
    (EVAL + ["--lengths", "2048,,4096"], "empty item"),
    (EVAL + ["--lengths", "2048,4096,2048"], "length 2048 is given twice"),
    (EVAL + ["--kv-budgets", "0.125,0.1250"], "KV budget 0.125 is given twice"),
    (EVAL + ["--depths", "2"], "[0, 1]"),
    (EVAL + ["--needle-depths", "-0.1"], "[0, 1]"),
    (EVAL + ["--kinds", "foo"], "passkey, needle"),
    (EVAL + ["--continuation-tokens", "0"], "[2, "),
    (EVAL + ["--continuation-tokens", "-3"], "[2, "),
    (EVAL + ["--kv-budgets", "0"], "(0, 1]"),
    (EVAL + ["--kv-budgets", "0.2,1.5"], "(0, 1]"),
    (EVAL + ["--threads", "-1"], "[1, "),
    (GENERATE + ["--kv-budget", "0"], "(0, 1]"),
    (GENERATE + ["--kv-budget", "1.5"], "(0, 1]"),
    (GENERATE + ["--keep-keys", "0"], "[1, "),
    (GENERATE + ["--keep-keys", "0.5"], "expected an integer"),
    (GENERATE + ["--threshold-keep", "1"], "[0.01, 0.99]"),
    (GENERATE + ["--threshold-keep", "0.001"], "[0.01, 0.99]"),
    (GENERATE + ["--max-new-tokens", "-5"], "[1, "),
    (GENERATE + ["--max-new-tokens", "0"], "[1, "),
    (GENERATE + ["--threads", "-1"], "[1, "),
    (GENERATE + ["--budget", "0"], "[1, "),            # the old name of --keep-keys
    (GENERATE + ["--keep", "1"], "[0.01, 0.99]"),      # the old name of --threshold-keep
    (GENERATE + ["--kv-budget", "0.2", "--keep-keys", "3"], "not allowed with"),
])
def test_out_of_range_options_are_usage_errors(scratch, capsys, argv, fragment):
    before = snapshot(scratch)
    rc, _, err = run([a.format(d=scratch) for a in argv], capsys)
    assert_one_error(rc, err, 2, fragment)
    assert snapshot(scratch) == before


@pytest.mark.parametrize("argv, fragment", [
    (BUILD + ["--hierarchical", "--level1", "0.2"], "(0, 0.1]"),
    (EVAL + ["--lengths", "100000"], "[256, 8096]"),
    (EVAL + ["--lengths", "2048,100"], "[256, 8096]"),
    (EVAL + ["--kv-budgets", "0.225,0.02"], "[0.062, 1.0]"),
    (EVAL + ["--lengths", "2048", "--continuation-tokens", "2000"], "[2, 1888]"),
    (EVAL + ["--kinds", "passkey,needle", "--lengths", "1024"], None),  # valid: only --out decides below
])
def test_values_that_need_the_model_are_refused_before_loading_it(scratch, capsys, argv, fragment):
    if fragment is None:  # a valid evaluation whose --out is a file: refused before the model loads
        (scratch / "taken").write_text("mine")
        argv = [a.replace("eval_out", "taken") for a in argv]
        fragment = "is a file"
    before = snapshot(scratch)
    rc, _, err = run([a.format(d=scratch) for a in argv], capsys)
    assert_one_error(rc, err, 1, fragment)
    assert snapshot(scratch) == before


def test_eval_lengths_message_names_the_model_window(scratch, capsys):
    rc, _, err = run(["context", "eval", "--lengths", "100000", "--out", scratch / "e"], capsys)
    assert_one_error(rc, err, 1, "window is 8192 tokens")
    assert not (scratch / "e").exists()


def test_build_settings_refuse_bad_values_in_the_python_api():
    from squeezed_attention.pack import BuildSettings

    for kwargs, fragment in [({"observation_window": 0}, "[1, 8192]"), ({"observation_window": -1}, "[1, 8192]"),
                             ({"centroid_fraction": 0}, "(0, 0.5]"), ({"hierarchical": True, "level1_fraction": 0},
                                                                      "(0, 0.1]"),
                             ({"seed": -1}, "[0, "), ({"framing": "html"}, "'chat' or 'raw'")]:
        with pytest.raises(SqueezeError, match=None) as info:
            BuildSettings(**kwargs)
        assert fragment in str(info.value)


# --------------------------------------------------------------- findings 3, 12: --context, model files
@pytest.mark.parametrize("kind, message", [
    ("missing", "context file not found"), ("directory", "is a directory"), ("latin1", "not UTF-8"),
    ("empty", "holds only whitespace"),   # "  \\n"
])
def test_unusable_context_file_is_refused_before_the_model_loads(scratch, capsys, kind, message):
    path = {"missing": scratch / "nope.txt", "directory": scratch, "latin1": scratch / "l1.txt",
            "empty": scratch / "empty.txt"}[kind]
    (scratch / "l1.txt").write_bytes("café".encode("latin-1"))
    (scratch / "empty.txt").write_text("  \n")
    rc, _, err = run(["context", "build", "--context", path, "--out", scratch / "x.pack",
                      "--model", scratch / "missing.gguf"], capsys)
    assert_one_error(rc, err, 1, message)
    assert not (scratch / "x.pack").exists()


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_unreadable_context_file_says_permission_denied(scratch, capsys):
    (scratch / "ctx.txt").chmod(0)
    try:
        rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", scratch / "x.pack",
                          "--model", scratch / "missing.gguf"], capsys)
        assert_one_error(rc, err, 1, "permission denied")
    finally:
        (scratch / "ctx.txt").chmod(0o644)


def _bad_models(d: Path, tiny: Path) -> dict:
    gguf = (tiny / "tiny.gguf").read_bytes()
    with open(default_gguf_path(), "rb") as f:
        real_head = f.read(2 << 20)  # the whole header, then the tensor data stops
    (d / "folder").mkdir()
    import gguf as gguf_package

    w = gguf_package.GGUFWriter(str(d / "gpt2.gguf"), "gpt2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files = {"truncated.gguf": gguf[: len(gguf) // 2], "real_truncated.gguf": real_head,
             "random.gguf": bytes(range(256)) * 8, "magic_then_junk.gguf": b"GGUF" + bytes(range(7, 250)) * 4,
             "empty.gguf": b"", "a_pack.gguf": (tiny / "raw.pack").read_bytes()}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {
        "truncated.gguf": "past the end", "real_truncated.gguf": "runs past the end of the file",
        "random.gguf": "not a GGUF model", "magic_then_junk.gguf": "not a valid GGUF file",
        "empty.gguf": "empty file", "a_pack.gguf": "context pack (pass packs as --context-pack)",
        "folder": "needs config.json", "gpt2.gguf": "'gpt2' model", "missing.gguf": "model not found",
    }


@pytest.mark.parametrize("name", ["truncated.gguf", "real_truncated.gguf", "random.gguf", "magic_then_junk.gguf",
                                  "empty.gguf", "a_pack.gguf", "folder", "gpt2.gguf", "missing.gguf"])
def test_bad_model_files_are_one_line_errors(scratch, tiny, capsys, name):
    message = _bad_models(scratch, tiny)[name]
    rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", scratch / "x.pack",
                      "--model", scratch / name], capsys)
    assert_one_error(rc, err, 1, message)
    assert not (scratch / "x.pack").exists()


# ------------------------------------------------------------- findings 5, 9: packs that are not packs
def _bad_packs(d: Path, tiny: Path) -> dict:
    good = (tiny / "raw.pack").read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    import io

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buf)
    from safetensors.torch import save

    files = {"tampered.pack": bytes(flipped), "truncated.pack": good[: len(good) // 3], "random.pack": random.Random(0).randbytes(4096),
             "empty.pack": b"", "video.pack": b"\x00\x00\x00\x18ftypisom" + bytes(512),
             "checkpoint.pack": buf.getvalue(), "model.pack": (tiny / "tiny.gguf").read_bytes(),
             "weights.pack": save({"w": torch.zeros(2)}), "text.pack": b"just some notes\n"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {"tampered.pack": "modified after it was built", "truncated.pack": "damaged or truncated",
            "random.pack": "not a context pack", "empty.pack": "empty file", "video.pack": "MP4/MOV video",
            "checkpoint.pack": "zip archive", "model.pack": "GGUF model file (pass models as --model)",
            "weights.pack": "safetensors file but not a context pack", "text.pack": "text file, not a context pack",
            "missing.pack": "context pack not found", ".": "is a directory, not a context pack"}


@pytest.mark.parametrize("name", ["tampered.pack", "truncated.pack", "random.pack", "empty.pack", "video.pack",
                                  "checkpoint.pack", "model.pack", "weights.pack", "text.pack", "missing.pack", "."])
def test_bad_pack_files_are_one_line_errors_before_the_model_loads(scratch, tiny, capsys, name):
    message = _bad_packs(scratch, tiny)[name]
    rc, _, err = run(["generate", "--context-pack", scratch / name, "--prompt", "ab",
                      "--model", scratch / "missing.gguf"], capsys)
    assert_one_error(rc, err, 1, message)


def test_unreadable_pack_says_permission_denied_not_missing(tiny, monkeypatch):
    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))

    from squeeze_mobile import file_kinds as shared_file_kinds   # where open_for_reading lives (re-exported here)

    monkeypatch.setattr(shared_file_kinds, "open", denied, raising=False)
    with pytest.raises(SqueezeError, match="permission denied; ask its owner"):
        load_context_pack(tiny / "raw.pack")


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_unreadable_pack_on_disk_says_permission_denied(scratch, capsys):
    (scratch / "raw.pack").chmod(0)
    try:
        rc, _, err = run(["generate", "--context-pack", scratch / "raw.pack", "--prompt", "ab"], capsys)
        assert_one_error(rc, err, 1, "permission denied")
    finally:
        (scratch / "raw.pack").chmod(0o644)


def test_packs_are_written_with_the_umask_permissions(tiny):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("raw.pack", "chat.pack"):
        assert (tiny / name).stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------------ sizes: one word, one unit
def _generate_json(tiny, capsys, *extra, pack="raw.pack"):
    rc, out, err = run(["generate", "--context-pack", tiny / pack, "--prompt", "ab ab", "--model", tiny / "tiny.gguf",
                        "--max-new-tokens", "3", "--json", *extra], capsys)
    assert rc == 0, err
    return json.loads(out)


def test_generate_sizes_are_named_by_their_units(tiny, capsys):
    from squeezed_attention.generation import centroid_cost

    pack = load_context_pack(tiny / "raw.pack")
    nc, cost = pack.num_clustered, centroid_cost(0.10, pack.config.head_dim)
    # the defaults on a 3-token answer: every call attends exactly (the prompt's tail, the answer's opening), so no
    # kept fraction or KV budget ran; --exact-decode 0 makes the answer's steps select
    default = _generate_json(tiny, capsys)
    assert default["attention"] == "top-k, KV budget 0.125"
    assert default["selection"]["kv_budget"] == 0.125 and default["selection"]["mode"] == "top-k"
    assert default["selection"]["exact_decode"] == 16 and default["kept_fraction"] is None is default["kv_budget"]
    selecting = _generate_json(tiny, capsys, "--exact-decode", "0")
    assert selecting["attention"] == "top-k, KV budget 0.125, every answer token selects"
    # keep = KV budget - centroid bytes, rounded to whole keys; the reported KV budget adds the centroids back
    assert selecting["kept_fraction"] == round((0.125 - cost) * nc) / nc
    assert selecting["kv_budget"] == pytest.approx(selecting["kept_fraction"] + cost)
    keys = _generate_json(tiny, capsys, "--keep-keys", "5", "--exact-decode", "0")
    assert keys["attention"] == "top-k, 5 keys per head, every answer token selects" and keys["kept_fraction"] == 5 / nc
    assert _generate_json(tiny, capsys, "--budget", "5")["attention"] == "top-k, 5 keys per head"  # old name
    thr = _generate_json(tiny, capsys, "--threshold-keep", "0.3")
    assert thr["attention"] == "threshold, keep fraction 0.3" and thr["selection"]["keep_fraction"] == 0.3
    assert _generate_json(tiny, capsys, "--kv-budget", "0.5", "--hierarchical", pack="chat.pack")["attention"] == \
        "top-k, KV budget 0.5, hierarchical"


def test_generate_json_reports_the_followed_keys_that_ran(tiny, capsys):
    """selection.follow_keys was the request echoed (null for "the default") while the default ran: it is the number
    each decode step followed, as the top-level follow_keys."""
    from squeezed_attention.settings import default_follow_keys

    pack = load_context_pack(tiny / "raw.pack")
    for extra in ([], ["--keep-keys", str(pack.num_clustered - 1)]):
        out = _generate_json(tiny, capsys, "--exact-decode", "0", *extra)   # steps that select (and follow)
        keys = round(out["kept_fraction"] * pack.num_clustered)
        assert out["follow_keys"] == default_follow_keys(keys) == out["selection"]["follow_keys"]
    assert default_follow_keys(pack.num_clustered - 1) > 0   # the second case ran the default's followed keys
    out = _generate_json(tiny, capsys, "--keep-keys", "6", "--follow-keys", "2")
    assert out["follow_keys"] == 2 == out["selection"]["follow_keys"]
    out = _generate_json(tiny, capsys, "--full")
    assert out["follow_keys"] is None and out["exact_decode"] is None


def test_generate_table_names_the_kv_budget(tiny, capsys):
    rc, out, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--model",
                        tiny / "tiny.gguf", "--max-new-tokens", "2", "--keep-keys", "4", "--exact-decode", "0"], capsys)
    assert rc == 0
    assert "top-k, 4 keys per head" in err and "of clustered keys (+ sinks, window): KV budget 0.0" in err
    assert "budget budget" not in err and not err.startswith("\n") and not out.startswith("\n")
    # the defaults on a 2-token answer: no call selected, and the table says why
    rc, out, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--model",
                        tiny / "tiny.gguf", "--max-new-tokens", "2", "--keep-keys", "4"], capsys)
    assert rc == 0 and "KV budget 0.0" not in err
    assert "no call selected" in " ".join(err.split()) and "the answer's first 16" in " ".join(err.split()), err


@pytest.mark.parametrize("extra, pack, message", [
    (["--kv-budget", "0.03"], "raw.pack", "keeps no key"),
    (["--keep-keys", "100000"], "raw.pack", "larger than the"),
    (["--max-new-tokens", "250"], "raw.pack", "use --max-new-tokens of at most"),
    (["--hierarchical"], "raw.pack", "no hierarchical level"),
    (["--raw"], "chat.pack", "chat framing"),
    (["--threshold-keep", "0.3", "--lookup", "native"], "raw.pack", "--lookup native runs flat top-k selection only"),
    (["--hierarchical", "--lookup", "native"], "chat.pack", "with --hierarchical use --lookup auto or torch"),
])
def test_sizes_the_pack_cannot_serve_are_refused_before_the_model_loads(tiny, capsys, extra, pack, message):
    rc, _, err = run(["generate", "--context-pack", tiny / pack, "--prompt", "ab", "--model", tiny / "missing.gguf",
                      *extra], capsys)
    assert_one_error(rc, err, 1, message)


def test_kv_budget_message_gives_the_accepted_range(tiny, capsys):
    rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--kv-budget", "0.03"], capsys)
    assert_one_error(rc, err, 1, "centroids alone take 0.062 of the KV cache", "use a KV budget in [0.0")


def test_threshold_mode_range_agrees_between_check_and_message(tiny):
    from squeezed_attention.generation import AttentionChoice, make_context

    pack = load_context_pack(tiny / "raw.pack")
    for ok in (0.01, 0.99):
        make_context(pack, AttentionChoice("threshold", keep_fraction=ok, backend="torch"))
    for bad in (0.005, 1.0):
        with pytest.raises(SqueezeError, match=r"--threshold-keep .* calibrated range \[0.01, 0.99\]"):
            make_context(pack, AttentionChoice("threshold", keep_fraction=bad, backend="torch"))


# ------------------------------------------------------------------ Ctrl-C / SIGTERM while building
def test_interrupt_during_pack_building_leaves_no_file(scratch, capsys, monkeypatch):
    from squeezed_attention import pack as pack_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGTERM becomes in export.cli.main

    monkeypatch.setattr(pack_module, "build_context_pack", interrupted)
    before = snapshot(scratch)
    rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", scratch / "x.pack",
                      "--model", scratch / "tiny.gguf", "--raw", "--observation-window", "8"], capsys)
    assert_one_error(rc, err, 130, "interrupted")
    assert snapshot(scratch) == before


def test_interrupt_while_the_pack_is_written_leaves_no_file(scratch, capsys, monkeypatch):
    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a pack")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    before = snapshot(scratch)
    rc, _, err = run(["context", "build", "--context", scratch / "ctx.txt", "--out", scratch / "raw.pack",
                      "--model", scratch / "tiny.gguf", "--raw", "--observation-window", "8"], capsys)
    assert_one_error(rc, err, 130, "interrupted")
    assert snapshot(scratch) == before  # the old pack at --out is untouched, no temporary is left


def test_sigterm_while_building_a_pack_leaves_no_file(scratch):
    """A real build with the real model, stopped by SIGTERM whatever it is doing: exit 143, nothing left."""
    import signal
    import time

    (scratch / "long.txt").write_text(" ".join(["The licence grants rights to copy and distribute."] * 300))
    before = snapshot(scratch)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "export.cli", "context", "build", "--context", "long.txt",
                             "--out", "long.pack"], cwd=scratch, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # imports, model load or prefill: wherever it is
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1
    assert snapshot(scratch) == before


# ------------------------------------------------------------------------------ finding 12: pipes, help
@pytest.mark.parametrize("command", ["build", "generate"])
def test_closed_stdout_pipe_exits_0_quietly(scratch, command):
    argv = {"build": ["context", "build", "--context", "ctx.txt", "--out", "new.pack", "--model", "tiny.gguf",
                      "--raw", "--observation-window", "8"],
            "generate": ["generate", "--context-pack", "raw.pack", "--prompt", "ab", "--model", "tiny.gguf",
                         "--max-new-tokens", "4"]}[command]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "export.cli", *argv], cwd=scratch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -1` that has already exited
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and err == "", err


def _subparser(parser, *path):
    for name in path:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", [("context", "build"), ("context", "eval"), ("generate",)])
def test_every_option_help_states_its_default(path):
    import argparse

    parser = _subparser(cli.build_parser(), *path)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest in ("help", "debug") or not action.option_strings:
            continue
        assert "default" in action.help or "required" in action.help, action.option_strings
    text = parser.format_help()
    if path == ("generate",):
        for flag in ("--kv-budget", "--keep-keys", "--threshold-keep", "[0.01, 0.99]", "0.125"):
            assert flag in text
        assert "--budget " not in text and "--keep " not in text  # the old names work but are not advertised


def test_exact_decode_on_the_command_line(tiny, capsys):
    """--exact-decode N: generate runs it (named in the attention label); it is refused where it cannot run: with
    --full, in the classic evaluation and with held question selections; with --artifacts it goes to the exported
    decoder's loop (test_decoder_export.py), so the folder is what is checked."""
    out = _generate_json(tiny, capsys, "--exact-decode", "2")
    assert out["attention"] == "top-k, KV budget 0.125, exact first 2 answer tokens"
    for extra, message in ((["--full", "--exact-decode", "2"], "--exact-decode shapes Squeezed Attention's key selection"),
                           (["--exact-decode", "2", "--decode-selection", "question"], "needs per-step decode selection"),
                           (["--exact-decode", "-1"], "--exact-decode")):
        rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--model",
                          tiny / "tiny.gguf", "--max-new-tokens", "2", *extra], capsys)
        assert rc != 0 and message in err, err
    rc, _, err = run(["generate", "--artifacts", tiny, "--context-pack", tiny / "raw.pack", "--prompt", "ab",
                      "--exact-decode", "2"], capsys)
    assert rc == 1 and "has no manifest.json" in err, err
    rc, _, err = run(["context", "eval", "--model", tiny / "tiny.gguf", "--exact-decode", "2", "--out",
                      tiny / "eval_out"], capsys)
    assert rc == 1 and "--exact-decode applies to the suite" in err, err


def test_exact_below_on_the_command_line(tiny, capsys):
    """--exact-below P: generate runs it (named in the attention label, the re-runs counted in --json); a value outside
    [0, 1) is refused by the parser; refused with --full, with held question selections and in the classic
    evaluation; with --artifacts it goes to the exported decoder's loop (test_decoder_export.py)."""
    out = _generate_json(tiny, capsys, "--exact-below", "0.99", "--exact-decode", "0")
    assert out["attention"].endswith("unsure steps (top token below 0.99) re-run exactly")
    assert out["exact_below"] == 0.99 and 1 <= out["rerun_steps"] <= out["decode_tokens"]
    off = _generate_json(tiny, capsys, "--exact-below", "0")
    assert off["rerun_steps"] == 0 and off["attention"].endswith("unsure steps not re-run")
    for extra, message in ((["--full", "--exact-below", "0.3"], "--exact-below shapes Squeezed Attention's key selection"),
                           (["--exact-below", "0.3", "--decode-selection", "question"], "needs per-step decode selection"),
                           (["--exact-below", "1"], "--exact-below"), (["--exact-below", "-0.1"], "--exact-below"),
                           (["--exact-below", "half"], "--exact-below")):
        rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--model",
                          tiny / "tiny.gguf", "--max-new-tokens", "2", *extra], capsys)
        assert rc != 0 and message in err, err
    rc, _, err = run(["context", "eval", "--model", tiny / "tiny.gguf", "--exact-below", "0.3", "--out",
                      tiny / "eval_out"], capsys)
    assert rc == 1 and "--exact-below applies to the suite" in err, err


def test_suite_only_options_are_refused_by_the_classic_evaluation(tiny, capsys, tmp_path):
    """`context eval --exact-tail 5 --seed 7` (no --suite) ran the classic evaluation with the default tail and seed:
    the options were ignored. Every option whose help says "suite" is refused now, by name; nothing is written."""
    out = tmp_path / "eval_out"
    rc, _, err = run(["context", "eval", "--model", tiny / "tiny.gguf", "--exact-tail", "5", "--seed", "7",
                      "--cases-per-length", "3", "--out", out], capsys)
    assert_one_error(rc, err, 1, "--exact-tail, --cases-per-length, --seed apply to the suite only",
                     "pass --suite dev or --suite heldout")
    rc, _, err = run(["context", "eval", "--model", tiny / "tiny.gguf", "--decode-selection", "question", "--out", out],
                     capsys)
    assert_one_error(rc, err, 1, "--decode-selection applies to the suite only")
    assert not out.exists()


def test_an_evaluation_folder_is_made_only_when_results_are_written(tmp_path):
    """An evaluation stopped before its first result said 'nothing was written' and left an empty folder."""
    from squeezed_attention.evaluate import check_output_dir

    assert check_output_dir(tmp_path / "new" / "eval") == tmp_path / "new" / "eval"
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SqueezeError, match="is a file"):
        check_output_dir(tmp_path / "file")


def test_standard_output_that_takes_nothing_is_named_as_such(tiny):
    """`squeeze generate ... > /dev/full` said 'cannot write a file ...; choose another --out' (generate has none)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "export.cli", "generate", "--context-pack", str(tiny / "raw.pack"),
                               "--prompt", "ab", "--model", str(tiny / "tiny.gguf"), "--max-new-tokens", "2", "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: cannot write to standard output (No space left on device)"]


def test_centroids_that_take_the_whole_default_budget_are_said_at_build(tiny, capsys, tmp_path):
    """--centroids 0.5 built a pack that every default `generate` then refused ("keeps no key"); the build says so."""
    (tmp_path / "ctx.txt").write_text(TINY_TEXT)
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx.txt", "--out", tmp_path / "x.pack", "--raw",
                      "--centroids", "0.5", "--observation-window", "8", "--model", tiny / "tiny.gguf"], capsys)
    assert rc == 0 and (tmp_path / "x.pack").is_file(), err
    warned = [line for line in err.splitlines() if "--centroids 0.5" in line]
    assert len(warned) == 1 and "more than the default --kv-budget 0.125" in warned[0], err
