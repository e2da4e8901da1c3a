"""Fourth new-user sweep of Squeezed Attention (context files, prompts, packs, exported decoder folders) through the
real CLI and the Python API it wraps, on a tiny real-format GGUF, its packs and a verified .onnx export of it."""

import json
import shutil
from pathlib import Path

import pytest

from export import cli
from squeezed_attention.testing import write_tiny_llama_gguf

TINY_TEXT = " ".join(["ab abss an"] * 22)  # 154 tokens of the tiny vocabulary


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, *fragments):
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep4_sa")
    write_tiny_llama_gguf(d / "tiny.gguf")
    (d / "ctx.txt").write_text(TINY_TEXT)
    rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / "chat.pack"),
                   "--model", str(d / "tiny.gguf")])   # the exported decoders' observation window (100)
    assert rc == 0
    return d


@pytest.fixture(scope="module")
def verified(tiny):
    """A verified .onnx export (squeezed + full) whose verification pack is rebuilt from ctx.txt."""
    from squeezed_attention.decoder_export import export_decoder

    out = tiny / "verified"
    result = export_decoder(out, formats=("onnx",), model_path=tiny / "tiny.gguf", attention=["squeezed", "full"],
                            kv_budget=0.3, max_context=160, max_prompt=64, max_new=16,
                            verify_text=tiny / "ctx.txt", verify_context_tokens=150, verify_tokens=4)
    assert result.ok, result.failures
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ the exported tokenizer and the manifest's framing
def test_verify_checks_the_tokenizer_an_export_wrote(tiny, verified, capsys):
    """The apps and `squeeze generate --artifacts` encode with the folder's tokenizer.json and its manifest's chat
    framing and stop tokens, so `squeeze verify` must fail a folder where they are missing or not the model's (it
    passed: verification encoded with the model file's tokenizer only)."""
    rc, out, err = run(["verify", verified], capsys)
    assert rc == 0 and out.count(": pass") == 2, out + err

    d = _copy(verified, tiny / "no_tokenizer")
    (d / "tokenizer.json").unlink()
    rc, out, err = run(["verify", d], capsys)
    assert rc == 1 and out.count("tokenizer.json is missing") == 2 and "Traceback" not in err, out + err

    d = _copy(verified, tiny / "other_tokenizer")
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]   # two ids swapped: still a readable tokenizer, not the model's
    (d / "tokenizer.json").write_text(json.dumps(tok))
    rc, out, err = run(["verify", d], capsys)
    assert rc == 1 and out.count("is not the model's tokenizer") == 2, out + err

    for key, value, what in (("join", "\n", "chat framing"), ("stop_token_ids", [0], "stop_token_ids")):
        d = _copy(verified, tiny / f"edited_{key}")
        manifest = json.loads((d / "manifest.json").read_text())
        if key == "join":
            manifest["tokenizer"]["chat"]["join"] = value
        else:
            manifest["tokenizer"][key] = value
        (d / "manifest.json").write_text(json.dumps(manifest))
        rc, out, err = run(["verify", d], capsys)
        assert rc == 1 and out.count(what) == 2 and out.count(": fail") == 2, out + err


def test_bench_refuses_a_folder_without_its_tokenizer_before_running(tiny, verified, capsys):
    """bench ran every row and failed each with 'Exception: No such file or directory (os error 2)' (no file named),
    and wrote a report of failures."""
    d = _copy(verified, tiny / "bench_no_tokenizer")
    (d / "tokenizer.json").unlink()
    rc, out, err = run(["bench", d, "--context-pack", tiny / "chat.pack", "--out", tiny / "bench_out", "--threads", 1,
                        "--decode-tokens", 2, "--rounds", 1, "--runs", 1], capsys)
    assert_one_error(rc, err, "tokenizer.json is missing")
    assert not (tiny / "bench_out").exists()
