"""Second new-user sweep of Squeezed Attention's inputs (context files, prompts, option combinations, export disk
space) through the real CLI and the Python API it wraps, on a tiny real-format GGUF and its packs."""

import codecs
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from export import cli
from squeeze_mobile.errors import SqueezeError
from squeezed_attention.file_kinds import read_utf8_text
from squeezed_attention.testing import write_tiny_llama_gguf

ROOT = Path(__file__).resolve().parents[1]

from conftest import TINY_TEXT, assert_one_error_line as assert_one_error, run_cli as run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep2_sa")
    write_tiny_llama_gguf(d / "tiny.gguf")
    (d / "ctx.txt").write_text(TINY_TEXT)
    rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / "raw.pack"),
                   "--model", str(d / "tiny.gguf"), "--raw", "--observation-window", "8"])
    assert rc == 0
    rc = cli.main(["context", "build", "--context", str(d / "ctx.txt"), "--out", str(d / "chat.pack"),
                   "--model", str(d / "tiny.gguf")])   # the exported decoders' observation window (100)
    assert rc == 0
    return d


# ------------------------------------------------------------------------------ context files: encodings, NUL
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_unicode_text_with_a_byte_order_mark_reads_as_its_text(tmp_path, encoding):
    """Windows editors save "Unicode" text as UTF-16 with a byte-order mark: it is the same text as its UTF-8."""
    text = "Le café coûte 3 €. 東京 😀\nline two"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    (tmp_path / "t.txt").write_bytes(data)
    assert read_utf8_text(tmp_path / "t.txt") == text


@pytest.mark.parametrize("data", ["hello world".encode("utf-16-le"), b"abc\x00def ghi\n"],
                         ids=["utf16_without_bom", "nul_byte"])
def test_text_with_nul_characters_is_refused_before_the_model_loads(tiny, tmp_path, capsys, data):
    """UTF-16 without a byte-order mark is valid UTF-8 with a NUL in every other byte: it was built into a pack of
    garbage tokens. Refused in one line, before the model (missing here) is looked at."""
    (tmp_path / "ctx.txt").write_bytes(data)
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx.txt", "--out", tmp_path / "x.pack",
                      "--model", tiny / "missing.gguf"], capsys)
    assert_one_error(rc, err, "contains NUL characters", "without a byte-order mark")
    assert not (tmp_path / "x.pack").exists()


def test_pack_built_from_utf16_matches_the_same_text_in_utf8(tiny, tmp_path, capsys):
    (tmp_path / "ctx16.txt").write_bytes(TINY_TEXT.encode("utf-16"))
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx16.txt", "--out", tmp_path / "p.pack",
                      "--model", tiny / "tiny.gguf", "--raw", "--observation-window", "8"], capsys)
    assert rc == 0, err
    from squeezed_attention.pack import load_context_pack

    a, b = load_context_pack(tmp_path / "p.pack"), load_context_pack(tiny / "raw.pack")
    assert a.token_ids.tolist() == b.token_ids.tolist()
    assert a.hashes["context_sha256"] == b.hashes["context_sha256"]


# --------------------------------------------------------------------------------- prompts that are not text
def test_non_utf8_prompt_bytes_are_one_line_errors_before_the_model_loads(tiny):
    """A Latin-1 terminal's "café" reaches Python as a lone surrogate, which the tokenizer refused with a TypeError
    traceback (after the model had loaded)."""
    proc = subprocess.run([sys.executable, "-m", "export.cli", "generate", "--context-pack", str(tiny / "raw.pack"),
                           "--model", str(tiny / "missing.gguf"), b"--prompt", b"ab caf\xe9"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--prompt is not valid UTF-8 text" in lines[0] and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def exported(tiny):
    from squeezed_attention.decoder_export import export_decoder

    out = tiny / "art"
    result = export_decoder(out, formats=("onnx",), model_path=tiny / "tiny.gguf", attention=["squeezed", "full"],
                            kv_budget=0.3,
                            verify=False, max_context=160, max_prompt=64, max_new=16)
    assert result.ok or not result.failures, result.failures
    return out


def test_exported_decoder_refuses_a_prompt_that_is_not_text(tiny, exported):
    from squeezed_attention.decoder_session import DecoderSession

    session = DecoderSession(exported, fmt="onnx", attention="squeezed")
    try:
        session.attach(tiny / "chat.pack")
        assert session.generate("ab", max_new_tokens=2).token_ids   # the session answers text
        for bad, message in (("ab caf\udce9", "not valid UTF-8 text"), (b"ab", "must be text"), (None, "must be text")):
            with pytest.raises(SqueezeError, match=message):
                session.generate(bad, max_new_tokens=2)
    finally:
        session.close()
    proc = subprocess.run([sys.executable, "-m", "export.cli", "generate", "--artifacts", str(exported),
                           "--context-pack", str(tiny / "chat.pack"), b"--prompt", b"ab caf\xe9"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--prompt is not valid UTF-8 text" in proc.stderr


def test_host_generator_refuses_a_prompt_that_is_not_text(tiny):
    from squeezed_attention.generation import AttentionChoice, Generator

    gen = Generator.from_pack(tiny / "raw.pack", model_path=tiny / "tiny.gguf")
    for bad in ("ab caf\udce9", 42):
        with pytest.raises(SqueezeError, match="the prompt (is not valid UTF-8 text|must be text)"):
            gen.generate(bad, AttentionChoice("full"), max_new_tokens=2)


@pytest.mark.parametrize("extra", [["--exact-tail", "4"], ["--prefill-rows", "2"], ["--prefill-tail", "3"]])
def test_selection_options_for_a_full_attention_artifact_are_refused(tiny, exported, capsys, extra):
    """--prefill-rows/--prefill-tail were silently ignored with a full-attention artifact, and --exact-tail was told
    to re-export with a wider tail (a full-attention artifact has none)."""
    rc, _, err = run(["generate", "--artifacts", exported, "--artifact-attention", "full", "--context-pack",
                      tiny / "chat.pack", "--prompt", "ab", "--max-new-tokens", "2", *extra], capsys)
    assert_one_error(rc, err, extra[0], "full-attention artifact", "--artifact-attention squeezed")
    rc, out, err = run(["generate", "--artifacts", exported, "--artifact-attention", "full", "--context-pack",
                        tiny / "chat.pack", "--prompt", "ab", "--max-new-tokens", "2", "--json", extra[0], "0"], capsys)
    assert rc == 0 and json.loads(out)["attention"] == "full", err


def test_a_context_that_fills_the_window_is_refused_at_build(tiny, tmp_path, capsys):
    """A context up to one token short of the model window built a pack that no question fits (generate then asked
    for --max-new-tokens of at most 0)."""
    (tmp_path / "ctx.txt").write_text(" ".join(["ab abss an"] * 35))   # 245 of the tiny model's 256 positions
    rc, _, err = run(["context", "build", "--context", tmp_path / "ctx.txt", "--out", tmp_path / "x.pack", "--raw",
                      "--observation-window", "8", "--model", tiny / "tiny.gguf"], capsys)
    assert_one_error(rc, err, "no room is left for a question", "a pack takes at most 240 tokens, and 192 leaves 64")
    assert not (tmp_path / "x.pack").exists()


def test_a_pack_of_another_model_is_refused_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch):
    """generate loaded the whole model (a minute for SmolLM2 on 2 cores) before comparing the pack's weights hash."""
    write_tiny_llama_gguf(tmp_path / "other.gguf", seed=5)
    import squeezed_attention.model as model_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model_module.LlamaForCausalLM, "from_checkpoint", classmethod(no_load))
    rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab",
                      "--model", tmp_path / "other.gguf"], capsys)
    assert_one_error(rc, err, "was built for other model weights", "rebuild it with this --model")


def test_build_out_with_a_trailing_slash_is_refused(tiny, tmp_path, capsys):
    """`--out packs/` wrote the pack as a FILE named packs (the slash dropped), where the user meant a folder."""
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", f"{tmp_path / 'packs'}/",
                      "--model", tiny / "missing.gguf"], capsys)
    assert_one_error(rc, err, "names a folder", "packs/doc.pack")
    assert not (tmp_path / "packs").exists()


# ----------------------------------------------------------------------------------------- option combinations
@pytest.mark.parametrize("extra", [["--hierarchical"], ["--lookup", "numpy"], ["--follow-keys", "2"],
                                   ["--decode-selection", "question"], ["--exact-tail", "4"],
                                   ["--per-query-head", "--prefill-rows", "2"]])
def test_full_attention_with_selection_options_is_refused(tiny, capsys, extra):
    """--full silently dropped every option of the key selection: a user comparing settings got the same numbers."""
    rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--full",
                      "--model", tiny / "missing.gguf", *extra], capsys)
    assert_one_error(rc, err, extra[0], "nothing with --full")


def test_the_lowest_kv_budget_a_message_names_is_accepted(tiny, capsys):
    """The message printed the bound rounded to nearest (0.066 here), which itself kept no key."""
    rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--kv-budget", "0.03",
                      "--model", tiny / "missing.gguf"], capsys)
    assert_one_error(rc, err, "keeps no key")
    lowest = re.search(r"use a KV budget in \[([0-9.]+), 1\]", err).group(1)
    rc, out, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab", "--kv-budget", lowest,
                        "--model", tiny / "tiny.gguf", "--max-new-tokens", "2", "--json", "--exact-decode", "0"], capsys)
    assert rc == 0, err
    assert json.loads(out)["kept_fraction"] > 0   # (the answer's step selects: no exact opening)


def test_a_prompt_that_fills_the_window_names_the_room_left(tiny, capsys):
    """The message told a user whose prompt alone overflows the window to pass --max-new-tokens of at most 1."""
    rc, _, err = run(["generate", "--context-pack", tiny / "raw.pack", "--prompt", "ab " * 150,
                      "--model", tiny / "tiny.gguf", "--max-new-tokens", "4"], capsys)
    from squeezed_attention.pack import load_context_pack

    room = 256 - load_context_pack(tiny / "raw.pack").num_tokens   # the tiny model's window
    assert_one_error(rc, err, "no room is left for an answer", f"shorten the prompt to under {room} tokens")
    assert "--max-new-tokens of at most 1" not in err


def test_generate_help_shows_the_default_kv_budget(capsys):
    try:
        cli.main(["generate", "--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())
    assert "(default 0.125, when no other size is given)" in out and "{DEFAULT" not in out


def test_level1_without_hierarchical_is_refused(tiny, tmp_path, capsys):
    """--level1 was silently ignored without --hierarchical (a flat pack, where the user asked for a level size)."""
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", tmp_path / "x.pack",
                      "--level1", "0.05", "--model", tiny / "missing.gguf"], capsys)
    assert_one_error(rc, err, "--level1", "without --hierarchical")
    assert not (tmp_path / "x.pack").exists()


def test_hierarchical_pack_with_fewer_centroids_than_the_default_level1(tiny, tmp_path, capsys):
    """--hierarchical --centroids 0.005 was refused because the DEFAULT --level1 (0.01) exceeded it."""
    rc, _, err = run(["context", "build", "--context", tiny / "ctx.txt", "--out", tmp_path / "h.pack", "--hierarchical",
                      "--centroids", "0.005", "--model", tiny / "tiny.gguf", "--raw", "--observation-window", "8"],
                     capsys)
    assert rc == 0, err
    from squeezed_attention.pack import load_context_pack

    pack = load_context_pack(tmp_path / "h.pack")
    assert pack.l1_centroids is not None and pack.settings.level1_fraction == 0.005


# ------------------------------------------------------------------------------------------- export disk space
def test_decoder_export_refuses_a_disk_without_room_for_the_weights(tiny, tmp_path, monkeypatch):
    """A converter that fills the disk can end the process from C++; the export now refuses the format first."""
    from collections import namedtuple

    import export.pipeline as pipeline
    from squeezed_attention.decoder_export import export_decoder

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 1000, 1000))
    out = tmp_path / "d"
    result = export_decoder(out, formats=("onnx",), model_path=tiny / "tiny.gguf", attention="squeezed",
                            kv_budget=0.3, verify=False, max_context=160, max_prompt=64, max_new=16)
    assert not result.ok and len(result.failures) == 1
    assert "needs at least" in result.failures[0]["error"] and "MB free" in result.failures[0]["error"]
    assert not list(out.glob("*.onnx")) and not [p for p in out.iterdir() if ".partial-" in p.name]


# ------------------------------------------------------------------------------------- bench over a user's pack
def test_bench_refuses_a_pack_of_another_model_or_layout_before_running(tiny, exported, tmp_path, capsys):
    """`squeeze bench DIR --context-pack PACK` timed a pack of another model (rc 0, a report of garbage answers) that
    `squeeze generate --artifacts` refuses, and ran a pack of another observation window until each row failed."""
    write_tiny_llama_gguf(tmp_path / "other.gguf", seed=5)
    rc = cli.main(["context", "build", "--context", str(tiny / "ctx.txt"), "--out", str(tmp_path / "other.pack"),
                   "--model", str(tmp_path / "other.gguf")])
    assert rc == 0
    capsys.readouterr()
    for pack, message in (("other.pack", "was built for other model weights"),
                          ("raw.pack", "keeps 4 sink and 8 window tokens")):
        where = tmp_path / pack if pack == "other.pack" else tiny / pack
        rc, _, err = run(["bench", exported, "--context-pack", where, "--out", tmp_path / "b", "--decode-tokens", "2",
                          "--rounds", "1", "--no-profile"], capsys)
        assert_one_error(rc, err, message)
        assert not (tmp_path / "b" / "report.json").exists()


# -------------------------------------------------------------------------------------- squeeze verify DIR
def test_verify_rereads_a_verify_text_with_a_byte_order_mark_as_the_export_did(tiny, tmp_path, capsys):
    """The export read --verify-text without its byte-order mark, `squeeze verify` read it with one: the rebuilt
    pack's hash differed and verify blamed 'the prose shipped with this machine'."""
    from squeezed_attention.decoder_export import export_decoder

    (tmp_path / "doc.txt").write_text(TINY_TEXT, encoding="utf-8-sig")
    out = tmp_path / "art"
    result = export_decoder(out, formats=("onnx",), model_path=tiny / "tiny.gguf", attention="squeezed", kv_budget=0.3,
                            verify_text=tmp_path / "doc.txt", verify_tokens=4, max_context=160, max_prompt=64,
                            max_new=16)
    assert result.ok, result.failures
    rc, out_text, err = run(["verify", out], capsys)
    assert rc == 0, err
    (tmp_path / "doc.txt").write_text(TINY_TEXT + " ab", encoding="utf-8")
    rc, _, err = run(["verify", out], capsys)
    assert rc == 1 and "doc.txt changed since the export" in err and "prose shipped" not in err, err


def test_verify_text_longer_than_max_context_is_refused_before_converting(tiny, tmp_path):
    """A --verify-text longer than --max-context converted every format (minutes on the real model), then failed
    each artifact's verification and left them written."""
    from squeezed_attention.decoder_export import export_decoder

    (tmp_path / "long.txt").write_text(TINY_TEXT + " ab an ss" * 12)
    with pytest.raises(SqueezeError, match=r"--verify-text .* tokens .* at most --max-context 160"):
        export_decoder(tmp_path / "art", formats=("onnx",), model_path=tiny / "tiny.gguf", attention="squeezed",
                       verify_text=tmp_path / "long.txt", max_context=160, max_prompt=64, max_new=16)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("answer", ["two lines\nof answer\n", ""])
def test_artifact_answer_is_printed_without_an_extra_blank_line(tiny, exported, capsys, monkeypatch, answer):
    """`generate --artifacts` always printed a newline after the answer: a blank line after an answer that ends its
    line, and a lone blank line for an empty answer (the host path prints neither)."""
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.settings import GenerationResult

    def answered(self, prompt, max_new_tokens=64, raw=None, on_text=None, stop_at_eos=True):
        if answer and on_text:
            on_text(answer)
        return GenerationResult(text=answer, token_ids=[], prompt_tokens=2, context_tokens=141, prefill_seconds=0.01,
                                decode_seconds=0.01, decode_tokens=0, attention="full", runtime="onnxruntime")

    monkeypatch.setattr(DecoderSession, "generate", answered)
    rc, out, err = run(["generate", "--artifacts", exported, "--context-pack", tiny / "chat.pack", "--prompt", "ab"],
                       capsys)
    assert rc == 0, err
    assert out == answer


# ------------------------------------------------------------------------------------- Python API: numpy numbers
def test_numpy_numbers_from_a_sweep_are_accepted_by_the_python_api(tiny, exported, tmp_path):
    """AttentionChoice(kv_budget=np.float64(0.3)) was refused as 'must be a fraction in (0, 1]; got 0.3', and
    np.int64 counts as 'not a whole number' (np.linspace / np.arange sweeps); BuildSettings the same;
    DecoderSession.generate(max_new_tokens=2.5) ended in a TypeError."""
    import numpy as np

    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.pack import BuildSettings

    gen = Generator.from_pack(tiny / "raw.pack", model_path=tiny / "tiny.gguf")
    for budget in np.linspace(0.2, 0.4, 2):
        swept = gen.generate("ab", AttentionChoice("top-k", kv_budget=budget, exact_tail=np.int64(0)),
                             max_new_tokens=np.int64(3))
        assert swept.token_ids == gen.generate("ab", AttentionChoice("top-k", kv_budget=float(budget), exact_tail=0, exact_head=0),
                                               max_new_tokens=3).token_ids
    choice = AttentionChoice("top-k", keep_keys=np.int64(5))
    assert type(choice.keep_keys) is int and json.dumps(choice.__dict__)
    settings = BuildSettings(centroid_fraction=np.float32(0.2), observation_window=np.int64(8), framing="raw")
    assert type(settings.observation_window) is int and json.dumps(settings.to_dict())
    for bad in (np.float64("nan"), np.bool_(True)):
        with pytest.raises(SqueezeError):
            AttentionChoice("top-k", kv_budget=bad)
    session = DecoderSession(exported, fmt="onnx", attention="squeezed")
    try:
        session.attach(tiny / "chat.pack")
        assert len(session.generate("ab", max_new_tokens=np.int64(2), stop_at_eos=False).token_ids) == 2
        with pytest.raises(SqueezeError, match="--max-new-tokens \\(max_new_tokens\\) must be a whole number"):
            session.generate("ab", max_new_tokens=2.5)
    finally:
        session.close()


def test_followed_keys_that_leave_nothing_to_select_are_refused_as_on_the_host(tiny, tmp_path, capsys):
    """`export decoder --follow-keys 1000` died in torch.export with a multi-line converter error; an artifact whose
    followed keys reach a pack's kept keys answered with no key selected, where the host refuses the same setting."""
    from squeezed_attention.decoder_export import export_decoder
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, make_context
    from squeezed_attention.pack import load_context_pack

    with pytest.raises(SqueezeError, match="--follow-keys 1000 leaves no keys to select.*at most 3"):
        export_decoder(tmp_path / "no", formats=("onnx",), model_path=tiny / "tiny.gguf", attention="squeezed",
                       follow_keys=1000, verify=False, max_context=160, max_prompt=64, max_new=16)
    assert not (tmp_path / "no").exists()
    out = tmp_path / "follow5"
    assert export_decoder(out, formats=("onnx",), model_path=tiny / "tiny.gguf", attention="squeezed", kv_budget=0.3,
                          follow_keys=5, verify=False, max_context=160, max_prompt=64, max_new=16).ok is not None
    (tmp_path / "short.txt").write_text(" ".join(["ab abss an"] * 17))   # 21 clustered keys: 5 kept at KV budget 0.3
    rc = cli.main(["context", "build", "--context", str(tmp_path / "short.txt"), "--out", str(tmp_path / "short.pack"),
                   "--model", str(tiny / "tiny.gguf")])
    assert rc == 0
    pack = load_context_pack(tmp_path / "short.pack")
    with pytest.raises(SqueezeError, match="--follow-keys 5 leaves no keys to select"):   # the host's refusal
        make_context(pack, AttentionChoice("top-k", kv_budget=0.3, follow_keys=5))
    session = DecoderSession(out, fmt="onnx")
    try:
        with pytest.raises(SqueezeError, match="follows 5 keys per decode step but the pack keeps only 5"):
            session.attach(tmp_path / "short.pack")
        session.attach(tiny / "chat.pack")   # a pack that keeps more keys answers
        assert session.generate("ab", max_new_tokens=2, stop_at_eos=False).token_ids
    finally:
        session.close()


@pytest.mark.parametrize("where,name", [("artifact", "../decoder.onnx"), ("artifact", "/tmp/decoder.onnx"),
                                        ("tokenizer", "../../tokenizer.json"), ("tokenizer", ".hidden.json")])
def test_a_decoder_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path, where, name):
    """The torch-free loop opens the files a decoder manifest names inside its folder; a name with a path (or a
    hidden one) is refused in one line before anything is opened, as the video manifest's reader refuses it."""
    from squeezed_attention.decoder_session import SCHEMA, read_decoder_manifest

    manifest = {"schema": SCHEMA, "model": {"kind": "decoder"}, "tokenizer": {"file": "tokenizer.json"},
                "artifacts": [{"file": "decoder_squeezed_160_fp32.onnx", "format": "onnx", "decoder": {
                    "attention": "full", "state": "io", "shapes": {"max_context": 160, "max_prompt": 8, "max_new": 8},
                    "methods": {"prefill": {"inputs": []}, "decode": {"inputs": []}}}}]}
    read_decoder_manifest(_write_json(tmp_path / "ok", manifest))            # plain names: accepted
    if where == "artifact":
        manifest["artifacts"][0]["file"] = name
    else:
        manifest["tokenizer"]["file"] = name
    with pytest.raises(SqueezeError, match="names a file outside its folder"):
        read_decoder_manifest(_write_json(tmp_path / "bad", manifest))


def _write_json(folder, value):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(value))
    return folder


@pytest.mark.parametrize("dynamic", [[5], [9, 2], ["1", "8"], 4, [0, 8]])
def test_a_malformed_dynamic_token_axis_is_one_line(dynamic):
    from squeezed_attention.decoder_session import token_width

    methods = {"prefill": {"inputs": [{"name": "tokens", "dynamic": {"0": dynamic}}]}}
    with pytest.raises(SqueezeError, match="prefill method gives its tokens input a malformed dynamic axis"):
        token_width(methods, "prefill", 3, 16)
    methods["prefill"]["inputs"][0]["dynamic"]["0"] = [1, 8]
    assert token_width(methods, "prefill", 3, 16) == 3 and token_width(methods, "prefill", 9, 16) == 16


@pytest.mark.parametrize("answer", ["Yes 😀😀", "ok 日本語", "a 🎉!"])
def test_streamed_pieces_add_up_to_the_returned_text_at_every_cut(answer):
    """An answer cut by --max-new-tokens at any token (also one holding a space and the first bytes of an emoji): the
    pieces streamed add up to the returned text, which drops only the unfinished character (the stream held the
    space back with it and never sent it)."""
    from squeezed_attention.tokenizer import TextStream

    from squeezed_attention import testing

    tok = testing.real_checkpoint().tokenizer
    ids = tok.encode(answer)
    for cut in range(1, len(ids) + 1):
        pieces = []
        stream = TextStream(tok.decode, pieces.append)
        for i in range(1, cut + 1):
            stream.update(ids[:i])
        text = stream.finish(ids[:cut])
        assert "".join(pieces) == text == tok.decode(ids[:cut]).rstrip("\ufffd")
