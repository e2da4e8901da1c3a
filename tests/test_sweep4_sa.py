"""Fourth new-user sweep of Squeezed Attention (context files, prompts, packs, exported decoder folders) through the
real CLI and the Python API it wraps, on a tiny real-format GGUF, its packs and a verified .onnx export of it."""

import json
import re
import shutil
from pathlib import Path

import pytest

from export import cli
from squeezed_attention.testing import write_tiny_llama_gguf

from conftest import TINY_TEXT, assert_one_error_line as assert_one_error, run_cli as run


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


# ------------------------------------------------------------------ packs built with other centroids on an artifact
def test_a_pack_that_keeps_more_keys_than_the_artifact_gathers_is_refused(tiny, verified, capsys):
    """A pack built with fewer centroids leaves more of the KV budget to kept keys than the artifact gathers (its
    max_keep is sized for the default centroids): the loop capped them silently, attending fewer keys than the host
    for the same pack and budget (14 vs 15 here) while reporting the full KV budget."""
    from squeeze_mobile.errors import SqueezeError
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.pack_arrays import read_pack_arrays

    pack = tiny / "fewer_centroids.pack"
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", pack, "--model", tiny / "tiny.gguf",
                      "--centroids", "0.05"], capsys)
    assert rc == 0, err
    arrays = read_pack_arrays(pack)
    contract = next(a for a in json.loads((verified / "manifest.json").read_text())["artifacts"]
                    if a["decoder"]["attention"] == "squeezed")["decoder"]
    # the host keeps round(keep fraction * clustered keys) of this pack; the artifact gathers fewer
    from squeezed_attention.pack_arrays import keep_fraction_for_kv_budget

    nc = arrays.arrays["lookup.labels"].shape[-1]
    host_keep = round(keep_fraction_for_kv_budget(contract["kv_budget"], 0.05, arrays.arrays["kv.keys"].shape[-1]) * nc)
    assert host_keep > contract["shapes"]["max_keep"]

    rc, out, err = run(["generate", "--artifacts", verified, "--artifact-attention", "squeezed", "--context-pack", pack,
                        "--prompt", "ab", "--max-new-tokens", 2], capsys)
    assert_one_error(rc, err, f"keeps {host_keep} keys per head", f"at most {contract['shapes']['max_keep']}")
    assert out == ""
    session = DecoderSession(verified, attention="squeezed")
    try:
        with pytest.raises(SqueezeError, match="rebuild the pack with the default --centroids"):
            session.attach(pack)
        session.attach(tiny / "chat.pack")          # a pack of the default centroids still answers
        assert session.generate("ab", max_new_tokens=2).token_ids
    finally:
        session.close()
    rc, out, err = run(["bench", verified, "--context-pack", pack, "--out", tiny / "bench_fewer", "--threads", 1,
                        "--decode-tokens", 2, "--rounds", 1, "--runs", 1], capsys)
    assert_one_error(rc, err, "does not fit decoder_squeezed", f"keeps {host_keep} keys per head")
    # the full-attention artifact keeps every key: the same pack answers there
    rc, out, err = run(["generate", "--artifacts", verified, "--artifact-attention", "full", "--context-pack", pack,
                        "--prompt", "ab", "--max-new-tokens", 2, "--json"], capsys)
    assert rc == 0 and json.loads(out)["context_tokens"] == arrays.num_tokens, err


def test_a_refused_decoder_bench_leaves_no_report_folder(tiny, verified, tmp_path, capsys):
    """The decoder bench created its --out folder before checking the packs, so a refused run (a pack longer than the
    artifact's --max-context, here) left an empty folder behind; the folder is made when something is written."""
    long_text = tmp_path / "long.txt"
    long_text.write_text(TINY_TEXT + " ab" * 8)
    pack = tmp_path / "long.pack"
    rc, _, err = run(["context", "build", "--context", long_text, "--out", pack, "--model", tiny / "tiny.gguf"], capsys)
    assert rc == 0, err
    out = tmp_path / "deeper" / "bench_out"
    rc, _, err = run(["bench", verified, "--context-pack", pack, "--out", out, "--threads", 1, "--decode-tokens", 2,
                      "--rounds", 1, "--runs", 1], capsys)
    assert_one_error(rc, err, "does not fit", "takes at most 160")
    assert not out.exists() and not out.parent.exists()
    rc, _, err = run(["bench", verified, "--context-pack", tiny / "chat.pack", "--out", out, "--threads", 1,
                      "--decode-tokens", 2, "--rounds", 1, "--runs", 1, "--no-profile"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]


# ------------------------------------------------------------------ the Python API: what build_context_pack takes
def test_build_context_pack_takes_a_path_and_refuses_what_is_not_text(tiny):
    """build_context_pack(model, ck, Path("doc.txt")) ended in AttributeError ('PosixPath' has no 'strip'); bytes and
    a str with a lone surrogate in the tokenizer's TypeError; settings given as a dict in AttributeError."""
    from squeeze_mobile.errors import SqueezeError
    from squeezed_attention import BuildSettings, LlamaForCausalLM, build_context_pack, load_checkpoint

    ck = load_checkpoint(tiny / "tiny.gguf")
    model = LlamaForCausalLM.from_checkpoint(ck)
    settings = BuildSettings(observation_window=8, framing="raw")
    from_text = build_context_pack(model, ck, TINY_TEXT, settings)
    utf16 = tiny / "ctx_utf16.txt"
    utf16.write_bytes(TINY_TEXT.encode("utf-16"))   # read as `context build --context` reads it: the mark dropped
    for path in (tiny / "ctx.txt", utf16):
        from_path = build_context_pack(model, ck, path, settings)
        assert from_path.num_tokens == from_text.num_tokens
        assert from_path.hashes["context_sha256"] == from_text.hashes["context_sha256"]
        assert (from_path.keys == from_text.keys).all()
    for bad, message in ((TINY_TEXT.encode(), "got bytes \\(decode it first"), (None, "got NoneType"),
                         (TINY_TEXT + "\udce9", "not valid UTF-8 text"), (["ab"], "got list")):
        with pytest.raises(SqueezeError, match=message):
            build_context_pack(model, ck, bad, settings)
    with pytest.raises(SqueezeError, match="settings must be a BuildSettings.*got dict"):
        build_context_pack(model, ck, TINY_TEXT, {"observation_window": 8})
    with pytest.raises(SqueezeError, match="not found|does not exist|no such"):
        build_context_pack(model, ck, tiny / "missing.txt", settings)


def test_python_api_flags_and_choices_are_checked_not_taken_for_truthy(tiny, verified):
    """AttentionChoice(per_query_head="no") selected per query head (any non-empty string was True);
    Generator.generate(prompt, "full") / None ended in AttributeError; raw="yes" was taken for raw=True (and "no"
    too); DecoderSession(threads="2") was reported as 'onnxruntime cannot load <artifact> ... re-export the decoder',
    threads=0 / -1 were passed to the runtime."""
    import numpy as np

    from squeeze_mobile.errors import SqueezeError
    from squeezed_attention import AttentionChoice, Generator
    from squeezed_attention.decoder_session import DecoderSession

    for name in ("per_query_head", "hierarchical"):
        for bad in ("no", "False", 1, None):
            with pytest.raises(SqueezeError, match=f"{name} must be True or False"):
                AttentionChoice("top-k", kv_budget=0.4, **{name: bad})
        assert getattr(AttentionChoice("top-k", kv_budget=0.4, **{name: np.bool_(True)}), name) is True
    gen = Generator.from_pack(tiny / "chat.pack", model_path=tiny / "tiny.gguf")
    for bad in ("full", None, {"mode": "full"}):
        with pytest.raises(SqueezeError, match="choice must be an AttentionChoice"):
            gen.generate("ab", bad, max_new_tokens=2)
    for bad in ("yes", "no", 1):
        with pytest.raises(SqueezeError, match="raw must be True or False"):
            gen.generate("ab", AttentionChoice("full"), max_new_tokens=2, raw=bad)
    assert gen.generate("ab", AttentionChoice("full"), max_new_tokens=2, raw=np.bool_(False)).token_ids
    for bad in ("2", 0, -1, 2.0, True):
        with pytest.raises(SqueezeError, match="threads must be a whole number from 1 to 256"):
            DecoderSession(verified, attention="squeezed", threads=bad)
    session = DecoderSession(verified, attention="squeezed", threads=np.int64(1))
    try:
        session.attach(tiny / "chat.pack")
        for bad in ("yes", "no"):
            with pytest.raises(SqueezeError, match="raw must be True or False"):
                session.generate("ab", max_new_tokens=2, raw=bad)
        assert session.generate("ab", max_new_tokens=2, raw=False).token_ids
    finally:
        session.close()


def test_bench_prefills_the_question_the_session_would(tiny, verified):
    """The decoder bench encoded its question with special-token matching (a second copy of the session's prompt
    encoding), so a question with a written <|im_end|> was timed as another, shorter prompt than the one
    DecoderSession answers (and its 'pass key' answer came from that prompt)."""
    from bench.decoder import measure_decoder
    from squeezed_attention.decoder_session import DecoderSession

    question = "What does <|im_end|> mean here? ab an"
    session = DecoderSession(verified, attention="squeezed")
    try:
        session.attach(tiny / "chat.pack")
        ids = session.prompt_ids(question)
        file = session.artifact["file"]
    finally:
        session.close()
    assert len(ids) > len(session.tokenizer.encode(question, add_special_tokens=False).ids)   # the literal encoding
    res = measure_decoder({"dir": str(verified), "file": file, "pack": str(tiny / "chat.pack"), "question": question,
                           "threads": 1, "runs": 1, "warmup": 0, "decode_tokens": 2, "prefill_tail": None})
    assert res["question_tokens"] == len(ids)


def test_output_the_console_cannot_encode_is_escaped_not_a_traceback(tiny, tmp_path):
    """On a console whose encoding cannot hold the text (PYTHONIOENCODING=ascii, a Latin-1 terminal), an answer in
    Arabic / CJK ended `squeeze generate` mid-stream in a UnicodeEncodeError traceback, and `context build --out
    pâck_中.pack` wrote the pack, then failed (exit 1) printing its summary."""
    import os
    import subprocess
    import sys

    out = tmp_path / "p\u00e2ck_\u4e2d.pack"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "export.cli", "context", "build", "--context", str(tiny / "ctx.txt"),
                           "--out", str(out), "--model", str(tiny / "tiny.gguf")], capture_output=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    stdout, stderr = proc.stdout.decode("ascii"), proc.stderr.decode("ascii")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "p\\xe2ck_\\u4e2d.pack" in stdout and out.is_file()


def test_a_max_new_tokens_that_does_not_fit_is_refused_with_a_number_that_fits(tiny, tmp_path, capsys, monkeypatch):
    """With a pack that nearly fills the window, `squeeze generate` said 'use --max-new-tokens of at most 16' (the
    room before the prompt's own tokens) and, given 16, refused again after loading the model ('at most 3'). The
    prompt is counted before the model loads, so the first number given works."""
    import re

    from squeezed_attention import model as model_module

    text = tmp_path / "long.txt"
    text.write_text(TINY_TEXT + " ab" * 40)
    pack = tmp_path / "long.pack"
    rc, _, err = run(["context", "build", "--context", text, "--out", pack, "--model", tiny / "tiny.gguf"], capsys)
    assert rc == 0, err
    loads = []
    real = model_module.LlamaForCausalLM.from_checkpoint.__func__
    monkeypatch.setattr(model_module.LlamaForCausalLM, "from_checkpoint",
                        classmethod(lambda cls, ck: loads.append(1) or real(cls, ck)))
    base = ["generate", "--context-pack", pack, "--model", tiny / "tiny.gguf", "--prompt", "ab", "--json"]
    rc, out, err = run(base + ["--max-new-tokens", 64], capsys)
    assert_one_error(rc, err, "--max-new-tokens of at most")
    assert not loads                                   # refused before the model loaded
    fits = int(re.search(r"at most (\d+)", err).group(1))
    rc, out, err = run(base + ["--max-new-tokens", fits, "--exact-tail", 0], capsys)
    assert rc == 0, err
    assert json.loads(out)["context_tokens"] + json.loads(out)["prompt_tokens"] + fits == 256   # the window, exactly
    rc, out, err = run(base + ["--max-new-tokens", fits + 1], capsys)
    assert_one_error(rc, err, f"at most {fits}")
    # an empty raw prompt is refused before the model loads too
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", tmp_path / "raw.pack", "--model",
                      tiny / "tiny.gguf", "--raw", "--observation-window", "8"], capsys)
    assert rc == 0, err
    loads.clear()
    rc, out, err = run(["generate", "--context-pack", tmp_path / "raw.pack", "--model", tiny / "tiny.gguf",
                        "--prompt", ""], capsys)
    assert_one_error(rc, err, "the prompt is empty")
    assert not loads


def test_an_answer_no_call_selected_for_reports_no_kept_fraction_through_an_artifact(tiny, verified):
    """A question inside the exact tail answered in one token selects nothing (every context key attended): the host
    reports kept_fraction / kv_budget None, the artifact loop reported the artifact's nominal keep fraction and KV
    budget as if keys had been dropped."""
    from squeezed_attention import AttentionChoice, Generator
    from squeezed_attention.decoder_session import DecoderSession

    gen = Generator.from_pack(tiny / "chat.pack", model_path=tiny / "tiny.gguf")
    host = gen.generate("ab", AttentionChoice("top-k", kv_budget=0.3), max_new_tokens=1, stop_at_eos=False)
    assert (host.kept_fraction, host.kv_budget) == (None, None)
    opening = DecoderSession(verified, attention="squeezed")   # the default: the answer's first steps attend exactly
    try:
        opening.attach(tiny / "chat.pack")
        assert opening.loop.exact_decode > 0
        two = opening.generate("ab", max_new_tokens=2, stop_at_eos=False)
        assert (two.kept_fraction, two.kv_budget, two.exact_decode) == (None, None, opening.loop.exact_decode)
    finally:
        opening.close()
    session = DecoderSession(verified, attention="squeezed", exact_decode=0)
    try:
        session.attach(tiny / "chat.pack")
        one = session.generate("ab", max_new_tokens=1, stop_at_eos=False)
        assert one.token_ids == host.token_ids and (one.kept_fraction, one.kv_budget) == (None, None)
        two = session.generate("ab", max_new_tokens=2, stop_at_eos=False)   # one decode step selects
        keep = session.loop.keep_keys
        # 55 clustered keys in ctx.txt's pack; the KV budget the kept count gives (0.3 asked, whole keys kept)
        from squeezed_attention.pack_arrays import centroid_cost

        head_dim = int(session.loop.pack.arrays["kv.keys"].shape[-1])
        assert two.kept_fraction == keep / 55
        assert two.kv_budget == pytest.approx(keep / 55 + centroid_cost(0.10, head_dim)) and abs(two.kv_budget - 0.3) < 0.01
        again = session.generate("ab", max_new_tokens=1, stop_at_eos=False)  # a new question starts unselected
        assert again.kept_fraction is None
    finally:
        session.close()


def test_a_pack_named_twice_is_benchmarked_once(tiny, verified, tmp_path, capsys, monkeypatch):
    """bench --context-pack P --context-pack P (or P by a relative path) measured P twice per round and merged both
    into one row, so a row held twice the samples the report's '1 rounds x 1 runs' says (thread counts given twice
    are measured once)."""
    monkeypatch.chdir(tiny)
    out = tmp_path / "bench"
    rc, _, err = run(["bench", verified, "--context-pack", tiny / "chat.pack", "--context-pack", "chat.pack",
                      "--formats", "onnx", "--out", out, "--threads", 1, "--decode-tokens", 2, "--rounds", 1, "--runs", 1,
                      "--no-profile"], capsys)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 2 and len(report["packs"]) == 1
    assert all(r["samples"] == {"prefill": 1, "decode_steps": 2} for r in report["rows"]), report["rows"]

    rc, _, err = run(["bench", verified, "--context-pack", tiny / "chat.pack", "--prefill-tail", "2,2", "--formats",
                      "onnx", "--out", out, "--threads", 1, "--decode-tokens", 2, "--rounds", 1, "--runs", 1,
                      "--no-profile"], capsys)
    assert rc == 0, err
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert sorted((r["attention"], r["prefill_tail"] or 0) for r in rows) == [("full", 0), ("squeezed", 2)]
    assert all(r["samples"] == {"prefill": 1, "decode_steps": 2} for r in rows), rows


def test_a_context_too_long_or_too_short_is_refused_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch):
    """context build loaded the model (a minute on a busy 2-core machine for SmolLM2) before counting the context's
    tokens, so a 33k-token README or a one-line file was refused only after the load; the model file's tokenizer
    counts them first."""
    from squeezed_attention import model as model_module

    loads = []
    real = model_module.LlamaForCausalLM.from_checkpoint.__func__
    monkeypatch.setattr(model_module.LlamaForCausalLM, "from_checkpoint",
                        classmethod(lambda cls, ck: loads.append(1) or real(cls, ck)))
    for name, text, message in (("long.txt", TINY_TEXT + " ab" * 60, "it does not fit"),
                                ("short.txt", "ab an", "the context is only")):
        (tmp_path / name).write_text(text)
        rc, _, err = run(["context", "build", "--context", tmp_path / name, "--out", tmp_path / "x.pack",
                          "--model", tiny / "tiny.gguf"], capsys)
        assert_one_error(rc, err, message)
        assert not loads and not (tmp_path / "x.pack").exists()
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", tmp_path / "x.pack",
                      "--model", tiny / "tiny.gguf"], capsys)
    assert rc == 0 and loads == [1], err


def test_the_context_a_pack_is_checked_against_can_be_a_path(tiny, verified):
    """load_context_pack / Generator.from_pack / DecoderSession.attach(context_text=Path("doc.txt")) ended in
    AttributeError ('PosixPath' has no attribute 'encode'), bytes the same: the text a pack is checked against is
    taken as build_context_pack takes it."""
    from squeeze_mobile.errors import SqueezeError
    from squeezed_attention import Generator, load_context_pack
    from squeezed_attention.decoder_session import DecoderSession

    other = tiny / "other.txt"
    other.write_text(TINY_TEXT + " an")
    assert load_context_pack(tiny / "chat.pack", context_text=tiny / "ctx.txt").num_tokens == 159
    assert Generator.from_pack(tiny / "chat.pack", tiny / "tiny.gguf", context_text=tiny / "ctx.txt").pack
    session = DecoderSession(verified, attention="squeezed")
    try:
        session.attach(tiny / "chat.pack", context_text=tiny / "ctx.txt")
        for bad, message in ((other, "built from a different context text"), (TINY_TEXT.encode(), "got bytes"),
                             (tiny / "missing.txt", "not found")):
            with pytest.raises(SqueezeError, match=message):
                session.attach(tiny / "chat.pack", context_text=bad)
            with pytest.raises(SqueezeError, match=message):
                load_context_pack(tiny / "chat.pack", context_text=bad)
    finally:
        session.close()


def test_verify_and_bench_take_a_decoder_folders_manifest_json(tiny, verified, tmp_path, capsys):
    """`squeeze verify DIR/manifest.json` (how a SqueezeTime folder, and generate --artifacts, take it) on a decoder
    folder said "has schema 'squeeze-mobile/decoder-manifest/2', expected 'squeeze-mobile/manifest/1'; it was not
    written by `squeeze export`"; bench the same."""
    rc, out, err = run(["verify", verified / "manifest.json"], capsys)
    assert rc == 0 and out.count(": pass") == 2, out + err
    rc, _, err = run(["bench", verified / "manifest.json", "--context-pack", tiny / "chat.pack", "--formats", "onnx",
                      "--out", tmp_path / "b", "--threads", 1, "--decode-tokens", 2, "--rounds", 1, "--runs", 1,
                      "--no-profile"], capsys)
    assert rc == 0, err
    rows = json.loads((tmp_path / "b" / "report.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows


def test_the_torch_free_pack_reader_says_what_a_wrong_file_is(tiny, verified, capsys):
    """generate --artifacts --context-pack DIR said 'context pack not found: DIR' (it exists: a folder), and a model or
    a text file given as the pack 'is not a readable context pack (SafetensorError)'; the host's reader named them.
    Both readers now share one front door (check_pack_file)."""
    from squeeze_mobile.errors import SqueezeError
    from squeezed_attention.pack import read_context_pack
    from squeezed_attention.pack_arrays import read_pack_arrays

    cases = ((tiny, "is a directory, not a context pack"), (tiny / "tiny.gguf", "is a GGUF model file (pass models"),
             (tiny / "ctx.txt", "is a text file, not a context pack"), (tiny / "missing.pack", "not found"))
    for path, message in cases:
        for reader in (read_pack_arrays, read_context_pack):
            with pytest.raises(SqueezeError, match=re.escape(message)):
                reader(path)
        rc, out, err = run(["generate", "--artifacts", verified, "--context-pack", path, "--prompt", "ab"], capsys)
        assert_one_error(rc, err, message)
