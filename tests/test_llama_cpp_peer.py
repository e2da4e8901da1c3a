"""The llama.cpp peer (bench/llama_cpp_peer.py) on the real SmolLM2 GGUF and a small real-prose context.

llama-cpp-python is optional (requirements-llamacpp.txt): without it the real checks skip with one reason line,
and the CLI / the decoder-benchmark hook are checked to step aside in one line."""

import sys

import numpy as np
import pytest

from bench import llama_cpp_peer as peer

KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2  # SmolLM2-135M: 30 layers x (K, V) x 3 KV heads x 64 dims x fp16


def test_state_round_trip_measurement_and_decoder_rows(tmp_path):
    pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed (optional: {peer.INSTALL_HINT})")
    from squeezed_attention.weights import default_gguf_path

    gguf = default_gguf_path()
    ctx = peer.prose_contexts([256], gguf, prompt_room=64, decode_tokens=4)[0]
    tokenizer, _ = peer._tokenizer(gguf)
    q = peer.question_ids(tokenizer, ctx["question"])
    ids = ctx["context_ids"]
    assert ctx["context_tokens"] == len(ids) == 256
    n_ctx = len(ids) + 64 + 4 + peer.SLACK_TOKENS
    # reference: context then question in one context, no state file
    llm = peer.open_llama(gguf, n_ctx, threads=1)
    llm.eval(ids)
    llm.eval(q)
    reference = peer.last_logits(llm)
    llm.close()
    # the app's path: evaluate the context, save it, restore it into a fresh context, then the question
    llm = peer.open_llama(gguf, n_ctx, threads=1)
    llm.eval(ids)
    state_bytes = peer.save_state_file(llm, tmp_path / "ctx.state", ids)
    llm.close()
    assert state_bytes >= len(ids) * KV_BYTES_PER_TOKEN  # the whole fp16 KV cache of the context is in the file
    llm = peer.open_llama(gguf, n_ctx, threads=1)
    assert peer.load_state_file(llm, tmp_path / "ctx.state") == ids
    assert llm.n_tokens == len(ids)
    llm.eval(q)
    restored = peer.last_logits(llm)
    llm.close()
    assert reference.shape == restored.shape == (49152,)
    np.testing.assert_array_equal(restored, reference)  # bit-identical: the KV cache comes back exactly
    assert int(np.argmax(restored)) == int(np.argmax(reference))

    prompt = peer.padded_prompt_ids(tokenizer, q, 64)
    assert len(prompt) == 64 and prompt[-len(q):] == q
    res = peer.measure_peer(gguf, ids, q, threads=1, decode_tokens=4, rounds=1, warmup=0, prompt_ids=prompt,
                            tokenizer=tokenizer, answer=ctx["answer"], state_dir=tmp_path)
    assert res["status"] == "ok" and res["format"] == "llama.cpp" and res["attention"] == "full (state restored)"
    assert res["generated_ids"][0] == int(np.argmax(reference))  # first token after the restore = un-saved run's
    assert len(res["generated_ids"]) == 5 and isinstance(res["text"], str)
    assert res["samples"] == {"prefill": 1, "decode_steps": 4}
    assert res["context_tokens"] == 256 and res["question_tokens"] == len(q) and res["prompt_tokens"] == 64
    for key in ("prefill_ms", "prompt_prefill_ms", "decode_ms_per_token", "decode_tok_s", "state_save_s",
                "state_load_s", "context_prefill_s", "load_s", "peak_rss_mb"):
        assert res[key] > 0, key
    assert res["decode_tok_s"] == pytest.approx(1e3 / res["decode_ms_per_token"])
    assert res["state_bytes"] == state_bytes
    assert not list(tmp_path.glob("llama_cpp_peer_*"))  # the state file's folder is removed afterwards

    # the hook for bench/decoder.py (own process): rows in its shape, rendered by its own Markdown table
    from bench.decoder import decoder_markdown

    rows = peer.peer_rows([ctx], threads=(1,), decode_tokens=2, rounds=1, warmup=0, model=gguf, prompt_tokens=None)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("detail")
    assert (row["format"], row["attention"], row["threads"], row["context_tokens"]) == (
        "llama.cpp", "full (state restored)", 1, 256)
    assert row["samples"] == {"prefill": 1, "decode_steps": 2} and row["prompt_prefill_ms"] is None
    assert row["decode_tokens_per_s"] == pytest.approx(1e3 / row["decode_ms_per_token"])
    report = {"model": "SmolLM2", "precision": None, "machine": {}, "rows": rows, "lookup_share": [],
              "settings": {"rounds": 1, "runs": 1, "decode_tokens": 2}}
    assert "| llama.cpp | full (state restored) | 256 | 1 |" in decoder_markdown(report)


def test_steps_aside_in_one_line_without_llama_cpp(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails as if not installed
    assert peer.main(["--contexts", "2048"]) == peer.SKIPPED_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llama-cpp-python is not installed" in err[0] and peer.INSTALL_HINT in err[0]
    said = []
    assert peer.peer_rows([{"context_tokens": 2048, "context_ids": [1], "question": "?"}],
                          progress=lambda a, b: said.append(b)) == []
    assert len(said) == 1 and peer.INSTALL_HINT in said[0]


def test_a_model_that_is_not_gguf_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed (optional: {peer.INSTALL_HINT})")
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not a gguf")
    out = tmp_path / "report"
    assert peer.main(["--model", str(model), "--contexts", "512", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a .gguf file" in err[0]
    assert not out.exists()
