"""The prompt's exact head (settings.DEFAULT_EXACT_HEAD; RESULTS.md 3za, 3zb): the question's first tokens attend every
context key as its last ones do, so a question written before a long instruction or after a preamble keeps its words
exact (by default every prompt of up to 160 tokens). One rule on
the host (every lookup path), in the exported decoders' loop (prefill_exact calls before the selecting prefill) and in
the app cores (their tests replay Python's calls)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_DECODER_TEXT
from squeeze_mobile.errors import SqueezeError
from squeezed_attention.generation import AttentionChoice
from squeezed_attention.settings import DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL, exact_span
from squeezed_attention.testing import real_checkpoint, real_model, small_generator

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = (" Please answer in one complete sentence, be concise, do not add any explanation, and do not repeat the "
               "question; if the document does not say, reply that you do not know.")


def test_exact_span_puts_the_selecting_rows_between_head_and_tail():
    # the values the Kotlin and Swift cores assert for their exactSpan
    assert exact_span(100, 16, 32) == (16, 68)
    assert exact_span(40, 16, 32) == (16, 16)       # head and tail cover the prompt: nothing selects
    assert exact_span(10, 16, 32) == (10, 10)
    assert exact_span(100, 0, 32) == (0, 68)
    assert exact_span(100, 16, 0) == (16, 100)
    assert (DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL) == (128, 32)   # RESULTS.md 3zb: every prompt up to 160 exact
    choice = AttentionChoice("top-k", kv_budget=0.125)
    assert choice.exact_head == DEFAULT_EXACT_HEAD and "head" not in choice.label()
    assert ", exact prompt head 4" in AttentionChoice("top-k", kv_budget=0.125, exact_head=4).label()
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(SqueezeError, match=r"--exact-head \(exact_head\) must be a whole number"):
            AttentionChoice("top-k", kv_budget=0.125, exact_head=bad)


def _queries(gen, prompt):
    sink = []
    ids = torch.tensor(gen.prompt_ids(prompt))
    gen.model.step(ids, gen.model.new_cache(len(ids)), position_offset=gen.pack.num_tokens,
                   context=gen.context(AttentionChoice("full")), query_sink=sink)
    return sink


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_head_rows_attend_every_key_and_the_rows_between_select_once(backend):
    """Host rule on the real model's queries: rows [0, H) and [T - E, T) are full attention's rows bit for bit; the
    rows between are one selection over themselves (the same as a context given only those rows); a head that covers
    the prompt is full attention's prefill and selects nothing."""
    from squeezed_attention.context_attention import DenseContext

    gen = small_generator(hierarchical=False)
    q = _queries(gen, "What is the pass key mentioned in the text above?" + INSTRUCTION)
    layer, T = 12, q[12].shape[1]
    H, E = 5, 7
    assert T > H + E + 4
    dense = DenseContext(gen.pack.keys, gen.pack.values).attend(layer, q[layer])
    ctx = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_head=H, exact_tail=E,
                                      exact_decode=0))
    out, lse = ctx.attend(layer, q[layer])
    for rows in (slice(0, H), slice(T - E, T)):
        assert torch.equal(out[:, rows], dense[0][:, rows]) and torch.equal(lse[:, rows], dense[1][:, rows])
    assert ctx.stats.calls == 1
    middle = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_head=0, exact_tail=0))
    mid = middle.attend(layer, q[layer][:, H:T - E])
    assert torch.equal(out[:, H:T - E], mid[0]) and torch.equal(lse[:, H:T - E], mid[1])
    assert not torch.equal(out[:, H:T - E], dense[0][:, H:T - E])       # they do select
    whole = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_head=T, exact_tail=0))
    got = whole.attend(layer, q[layer])
    assert torch.equal(got[0], dense[0]) and whole.stats.calls == 0
    # question-level decode selection holds the last row's selection also where the head covers the prompt
    held = gen.context(AttentionChoice("top-k", keep_fraction=0.1, backend=backend, exact_head=T, exact_tail=0,
                                       decode_selection="question"))
    held.attend(layer, q[layer])
    assert layer in held._held


def test_the_exported_loop_runs_head_selection_and_tail_as_the_host_does(tiny_onnx_decoder, tmp_path):
    """The tiny .onnx export (exact tail 32, head 16 in its contract): a 60-token question runs prefill_exact over its first
    16 tokens at cache_len 0, one selecting prefill, then the tail; its tokens are the host's with the same rule. A
    head longer than the tail is still one call (the method takes up to max_prompt tokens); head and tail that leave
    nothing to select are one exact run."""
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import Generator
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    src, gguf = tiny_onnx_decoder
    manifest = json.loads((src / "art" / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    assert art["decoder"]["exact_head"] == 16 and art["decoder"]["exact_tail"] == 32   # the fixture's head
    assert any("exact_head = 16" in step for step in art["decoder"]["call_sequence"])
    tokens = next(i for i in art["decoder"]["methods"]["prefill_exact"]["inputs"] if i["name"] == "tokens")
    assert tokens["dynamic"] == {"0": [1, 64]}   # traced at the tail's 32, takes up to max_prompt
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, TINY_DECODER_TEXT, BuildSettings())
    save_context_pack(pack, tmp_path / "doc.pack")
    prompt = "ab an ss " * 8
    for head, want in ((None, None), (40, None), (0, None)):
        session = DecoderSession(src / "art", exact_head=head, exact_decode=0, exact_below=0)
        session.attach(tmp_path / "doc.pack")
        calls = []
        run = session.runner.run
        session.runner.run = lambda method, feed: (calls.append((method, int(feed["n_tokens"][0]),
                                                                 int(feed["cache_len"][0]))), run(method, feed))[1]
        got = session.generate(prompt, max_new_tokens=5, stop_at_eos=False)
        n = len(session.prompt_ids(prompt))
        H = 16 if head is None else head
        if head is None:
            assert n > H + 32           # a selecting prefill between head and tail
        h, start = exact_span(n, H, 32)
        W = 64   # prefill_exact's dynamic axis reaches max_prompt: an exact run of up to 64 tokens is one call
        if h == start:
            expected = [("prefill_exact", min(W, n - a), a) for a in range(0, n, W)]
        else:
            expected = ([("prefill_exact", min(W, h - a), a) for a in range(0, h, W)]
                        + [("prefill", start - h, h), ("prefill_exact", n - start, start)])
        if head == 40:   # head and tail cover the 61 tokens: one call, wider than the tail's 32 (it was two)
            assert expected == [("prefill_exact", n, 0)] and 32 < n <= W
        assert calls[:len(expected)] == expected, (head, calls)
        assert [c[0] for c in calls[len(expected):]] == ["decode"] * 4
        ref = Generator(model, ck.tokenizer, pack).generate(
            prompt, AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch", exact_head=H,
                                    exact_decode=0, exact_below=0), max_new_tokens=5, stop_at_eos=False)
        session.close()
        assert got.token_ids == ref.token_ids, head
    with pytest.raises(SqueezeError, match="--exact-head must be a whole number of tokens >= 0"):
        DecoderSession(src / "art", exact_head=-2, load=False)


def test_export_records_the_head_and_refuses_one_it_cannot_run(tiny_onnx_decoder, tmp_path, capsys):
    from export.cli import main
    from squeezed_attention.decoder_export import export_decoder, exact_head_for

    _, gguf = tiny_onnx_decoder
    assert exact_head_for(None, "squeezed", "step", 32) == DEFAULT_EXACT_HEAD
    assert exact_head_for(None, "squeezed", "step", 32, max_prompt=64) == 64    # the whole of any prompt it takes
    assert exact_head_for(None, "squeezed", "step", 32, max_prompt=512) == DEFAULT_EXACT_HEAD
    assert exact_head_for(None, "squeezed", "step", 0) == 0          # no exact method: no head
    assert exact_head_for(8, "full", "step", 32) == 0
    assert exact_head_for(None, "squeezed", "question", 32) == 0
    with pytest.raises(SqueezeError, match="--exact-head 4 runs the prompt's first tokens through the exact method"):
        export_decoder(tmp_path / "no", formats=("onnx",), model_path=gguf, exact_tail=0, exact_head=4,
                       max_context=160, max_prompt=64, max_new=16)
    with pytest.raises(SqueezeError, match="--exact-head must be a whole number of tokens from 0 to --max-prompt"):
        export_decoder(tmp_path / "no", formats=("onnx",), model_path=gguf, exact_head=65,
                       max_context=160, max_prompt=64, max_new=16)
    assert not (tmp_path / "no").exists()
    # the host CLI: --exact-head shapes the selection, so --full refuses it
    rc = main(["generate", "--model", str(gguf), "--context-pack", str(tmp_path / "none.pack"), "--prompt", "ab",
               "--full", "--exact-head", "4"])
    assert rc != 0 and "--exact-head" in capsys.readouterr().err


@functools.lru_cache(maxsize=1)
def diary_generator():
    """The real model over a real 2k-token diary (own prose, RESULTS.md 3z), built once for the tests below."""
    from squeezed_attention.generation import Generator
    from squeezed_attention.pack import BuildSettings, build_context_pack

    text = (ROOT / "squeezed_attention" / "results" / "session_2026_12_06f" / "diary.txt").read_text()
    ck = real_checkpoint()
    return Generator(real_model(), ck.tokenizer, build_context_pack(real_model(), ck, text, BuildSettings()))


def test_a_question_between_a_preamble_and_an_instruction_is_answered_at_the_default_budget():
    """RESULTS.md 3zb: a 76-token prompt whose question sits between a 30-token preamble and a 23-token instruction.
    With a 16-token head (3za's default) its words selected their keys, and the answer named another password
    ("Eleanor..."); the default makes every prompt of up to 160 tokens exact, and answers as full attention does."""
    gen = diary_generator()
    prompt = ("I am writing up notes on this diary for a friend who asked me about it this morning, and there is one "
              "thing I could not find on my first read. What is the password for the reading room? Please reply with "
              "the value only, in one short sentence, and if it is not there, say that you do not know.")
    n = len(gen.prompt_ids(prompt))
    assert 16 + DEFAULT_EXACT_TAIL < n <= DEFAULT_EXACT_HEAD and exact_span(n, DEFAULT_EXACT_HEAD, DEFAULT_EXACT_TAIL) == (n, n)
    got = gen.generate(prompt, AttentionChoice("top-k", kv_budget=0.125), max_new_tokens=20)
    assert "heliotrope" in got.text, got.text
    # an exact prompt and the exact opening (16 steps) are full attention's computation: the same tokens
    full = gen.generate(prompt, AttentionChoice("full"), max_new_tokens=17)
    assert got.token_ids[:17] == full.token_ids, (got.text, full.text)


def test_a_question_written_before_a_long_instruction_is_answered_at_the_default_budget():
    """The real model and a real 2k-token diary (own prose, RESULTS.md 3z): the vault code 2% into the text, asked with
    a 37-token instruction after the question. The question's words lie before the 32-token exact tail; with only the
    tail (the default before 3za) the answer repeated "The vault code is:" without the number. A 16-token head (3za's
    default, still the head of a host prompt longer than 160 tokens) answers it."""
    gen = diary_generator()
    prompt = "What is the vault code?" + INSTRUCTION
    n = len(gen.prompt_ids(prompt))
    assert n > DEFAULT_EXACT_TAIL + 8 and exact_span(n, 16, DEFAULT_EXACT_TAIL)[0] < n
    got = gen.generate(prompt, AttentionChoice("top-k", kv_budget=0.125, exact_head=16), max_new_tokens=16)
    assert "5521904" in got.text, got.text
