"""The exported decoder (issue: decoder export 1/2) on a tiny real GGUF: .onnx and .pte artifacts, the runtime
contract, the torch-free answer loop, and pack/artifact mismatch errors. (The real SmolLM2 export is in
test_decoder_export_real.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from squeeze_mobile.errors import SqueezeError
from squeezed_attention import testing
from squeezed_attention.decoder_export import EagerRunner, decoder_shapes, export_decoder
from squeezed_attention.exportable import DecoderShapes, ExportableDecoder
from squeezed_attention.settings import DEFAULT_EXACT_HEAD

SHAPES = dict(max_context=160, max_prompt=64, max_new=16)
TINY_TEXT = " ".join(["ab an ss abba nan sass"] * 8)  # the tiny model's 40-token vocabulary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_decoder")
    gguf = testing.write_tiny_llama_gguf(d / "tiny.gguf", layers=2, quantized=False)
    return d, gguf


@pytest.fixture(scope="module")
def exported(tiny):
    d, gguf = tiny
    out = d / "artifacts"
    (d / "doc.txt").write_text(TINY_TEXT)
    result = export_decoder(out, formats=("onnx", "pte"), model_path=gguf, attention=["squeezed", "full"],
                            kv_budget=0.3, verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    return out, result


@pytest.fixture(scope="module")
def tiny_pack(tiny, tmp_path_factory):
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.pack import BuildSettings, build_context_pack, save_context_pack
    from squeezed_attention.weights import load_checkpoint

    _, gguf = tiny
    ck = load_checkpoint(gguf)
    model = LlamaForCausalLM.from_checkpoint(ck)
    pack = build_context_pack(model, ck, TINY_TEXT, BuildSettings())
    path = tmp_path_factory.mktemp("tiny_pack") / "tiny.pack"
    save_context_pack(pack, path)
    return path, pack, model, ck


def test_every_artifact_is_verified_and_documented(exported):
    out, result = exported
    assert result.ok, result.manifest["failures"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == "squeeze-mobile/decoder-manifest/2"
    arts = {(a["format"], a["decoder"]["attention"]): a for a in manifest["artifacts"]}
    assert set(arts) == {(f, a) for f in ("onnx", "pte") for a in ("squeezed", "full")}
    for (fmt, att), a in arts.items():
        v = a["verification"]
        assert v["status"] == "pass" and v["prompts"] == 3 and v["prompts_identical"] == 3, v
        assert v["psnr_db"] >= 60
        assert (out / a["file"]).stat().st_size == a["bytes"] > 0
        methods = a["decoder"]["methods"]
        # the exact prompt tail: by default a third method of the squeezed artifacts (the host's default)
        exact = att == "squeezed"
        assert set(methods) == {"prefill", "decode"} | ({"prefill_exact"} if exact else set())
        assert a["decoder"]["exact_tail"] == (min(32, SHAPES["max_prompt"]) if exact else 0 if att == "squeezed" else None)
        names = [i["name"] for i in methods["prefill"]["inputs"]]
        assert names[:4] == ["tokens", "n_tokens", "cache_len", "context_len"]
        assert ("past_keys_0" in names) == (fmt == "onnx")      # explicit cache I/O in ONNX, state in .pte
        layers = 2
        assert sum(n.startswith(("context_keys_", "clustered_keys_")) for n in names) == layers  # one per layer
        assert ("keep_keys" in names) == (att == "squeezed")
        assert methods["prefill"]["inputs"][0]["shape"] == [SHAPES["max_prompt"]]
        assert methods["decode"]["inputs"][0]["shape"] == [1]
        if fmt == "pte":
            # one cache buffer per layer (a write into a slice of one [L, ...] buffer updates the whole buffer)
            assert a["state"] == ["cache_keys_0", "cache_values_0", "cache_keys_1", "cache_values_1"]
            assert a["delegation"]["decode"]["delegated_nodes"] > 0
            # The cache write is one index_put per layer and K/V buffer; no whole-cache `where` update per layer
            # and no copies of matmul operands (bmm): `where` only builds the step's masks, once per step, in both
            # decoders (the squeezed lookup's masks are float arithmetic inside the delegate).
            by_op = a["delegation"]["decode"]["by_operator"]
            portable = lambda op: by_op.get(op, {}).get("portable", 0)  # noqa: E731
            assert portable("aten_index_put_default") == 2 * layers
            # (+ one per layer where the followed keys' pointer marks rows with no weight: -1)
            follows = layers if a["decoder"].get("follow_keys") else 0
            assert portable("aten_where_self") <= 3 + follows and portable("aten_expand_copy_default") <= 2
        # followed keys: the host's default rule (4, where a pack keeps at least 32 keys) in every squeezed artifact
        assert (a["decoder"]["follow_keys"], a["decoder"]["follow_min_keep"]) == ((4, 32) if att == "squeezed" else
                                                                                  (None, None))
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and (out / "tokenizer.json").is_file()
    assert manifest["tokenizer"]["chat"]["suffix"].startswith("<|im_end|>")


@pytest.mark.parametrize("attention", ["squeezed", "full"])
def test_exported_graph_in_pytorch_matches_the_decoder(tiny_pack, attention):
    """The graph that is exported (static shapes, pack as inputs, in-graph lookup) gives the PyTorch decoder's
    greedy tokens for the same attention mode and kept-key count."""
    from squeezed_attention.decoder_session import GenerationLoop
    from squeezed_attention.exportable import pack_as_arrays
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.pack_arrays import decoder_context_inputs

    _, pack, model, ck = tiny_pack
    shapes = decoder_shapes(model.config, kv_budget=0.3, **SHAPES)
    module = ExportableDecoder(model, shapes, attention, state="io").eval()
    arrays = pack_as_arrays(pack)
    contract = {"shapes": shapes.to_dict(), "attention": attention, "state": "io", "kv_budget": 0.3}
    loop = GenerationLoop(EagerRunner(module), contract, arrays,
                          decoder_context_inputs(arrays, shapes.to_dict(), attention))
    ids = ck.tokenizer.encode("\n\nab nan<|im_end|>\n<|im_start|>assistant\n")
    tokens, _ = loop.greedy(ids, 12)
    choice = AttentionChoice("full") if attention == "full" else \
        AttentionChoice("top-k", keep_keys=loop.keep_keys, backend="torch", prefill_rows=loop.prefill_rows, prefill_tail=loop.prefill_tail)
    ref = Generator(model, ck.tokenizer, pack).generate("ab nan", choice, max_new_tokens=12, stop_at_eos=False)
    assert tokens == ref.token_ids
    if attention == "squeezed":
        assert 0 < loop.keep_keys < pack.num_clustered


def test_lookup_keeps_exactly_the_host_keys():
    """The in-graph ranked fill (topk + scatter-add + cumsum, no sort/searchsorted) selects the same keys as the
    host lookup's searchsorted version, padding clusters and a keep count smaller than the capacity included."""
    from squeezed_attention.lookup import ranked_fill

    g = torch.Generator().manual_seed(3)
    H, K, B = 3, 20, 40
    counts = torch.randint(0, 6, (H, K), generator=g)
    counts[:, -4:] = 0
    start = torch.cumsum(counts, -1) - counts
    scores = torch.rand(H, K, generator=g)
    rank = torch.topk(scores, K).indices
    ranked_counts = counts.gather(1, rank)
    out_start = torch.cumsum(ranked_counts, -1) - ranked_counts
    marks = torch.zeros(H, B + 1, dtype=torch.int64).scatter_add(1, out_start.clamp(max=B), torch.ones_like(out_start))
    which = torch.cumsum(marks[:, :B], -1) - 1
    rows = start.gather(1, rank.gather(1, which)) + torch.arange(B) - out_start.gather(1, which)
    keep = 25
    order = torch.arange(int(counts.sum(-1).max())).expand(H, -1)  # identity: rows are cluster-ordered already
    host = ranked_fill(scores.double(), counts, order.contiguous(), start, keep)
    assert torch.equal(rows[:, :keep], host)


def test_torch_free_generate_from_the_onnx_artifact(exported, tiny_pack):
    """`squeeze generate --artifacts DIR --format onnx` answers through onnxruntime + numpy + tokenizers, and
    PyTorch is never imported, the command's own start-up included."""
    out, _ = exported
    pack_path, *_ = tiny_pack
    code = (
        "import sys, json\n"
        "from export.cli import main\n"
        f"rc = main(['generate', '--artifacts', {str(out)!r}, '--format', 'onnx', '--context-pack', {str(pack_path)!r},"
        " '--prompt', 'ab nan', '--max-new-tokens', '6', '--json'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["context_tokens"] > 100 and 1 <= len(result["token_ids"]) <= 6
    assert set(result) >= {"text", "token_ids", "prefill_seconds", "decode_tokens_per_second", "attention"}
    # the keys each decode step followed, as on the host (the artifact's F where the pack keeps enough keys)
    assert isinstance(result["follow_keys"], int) and result["follow_keys"] >= 0
    # the answer's opening as run: the artifact's (the host's default 16, capped at its --max-new)
    assert result["exact_decode"] == min(16, SHAPES["max_new"])


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
@pytest.mark.parametrize("rows,tail", [(None, None), (1, None), (3, None), (None, 4)])
def test_artifact_answers_like_pytorch_on_a_saved_pack(exported, tiny_pack, fmt, rows, tail):
    """The artifact answers as the PyTorch decoder with the same prompt selection: the manifest's (one selection per
    question), per token (the prompt runs through decode), per 3 tokens (prefill per chunk at cache_len > 0), or the
    last 4 tokens per token (decode steps after one prefill: the host's default shape)."""
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.settings import prefill_chunks

    out, _ = exported
    pack_path, pack, model, ck = tiny_pack
    # every decode step selects and none runs again (the answer's opening and the unsure steps: their own tests)
    session = DecoderSession(out, fmt=fmt, attention="squeezed", prefill_rows=rows, prefill_tail=tail, exact_tail=0, exact_head=0,
                             exact_decode=0, exact_below=0)
    assert (session.prefill_rows, session.prefill_tail) == (rows or 0, tail or 0)
    session.attach(pack_path)
    calls, widths = [], []
    run = session.runner.run
    session.runner.run = lambda method, feed: (calls.append(method), widths.append(len(feed["tokens"])),
                                               run(method, feed))[2]
    got = session.generate("ab nan", max_new_tokens=10, stop_at_eos=False)
    chunks = prefill_chunks(len(session.prompt_ids("ab nan")), rows or 0, tail or 0)
    assert len(chunks) > 3 or rows is None and tail is None
    assert calls[:len(chunks)] == ["prefill" if b - a > 1 or len(chunks) == 1 else "decode" for a, b in chunks]
    # the prefill's token axis is dynamic in both formats: each call feeds its chunk's tokens, no padding
    assert widths[:len(chunks)] == [b - a for a, b in chunks]
    prefill = session.contract["methods"]["prefill"]["inputs"][0]
    assert prefill["name"] == "tokens" and prefill["dynamic"] == {"0": [1, SHAPES["max_prompt"]]}
    assert calls[len(chunks):] == ["decode"] * 9                    # 10 tokens: 9 decode steps
    ref = Generator(model, ck.tokenizer, pack).generate(
        "ab nan", AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch",
                                  prefill_rows=session.prefill_rows, prefill_tail=session.prefill_tail, exact_tail=0, exact_head=0,
                                  exact_decode=0, exact_below=0),
        max_new_tokens=10, stop_at_eos=False)
    session.close()
    assert got.token_ids == ref.token_ids


def test_pack_mismatches_are_one_line_errors(exported, tiny_pack, tmp_path):
    from squeezed_attention.decoder_session import DecoderSession

    out, _ = exported
    pack_path, *_ = tiny_pack
    session = DecoderSession(out, fmt="onnx", attention="squeezed")
    # tampered pack: one byte flipped inside a tensor
    data = bytearray(Path(pack_path).read_bytes())
    data[-100] ^= 0x55
    (tmp_path / "tampered.pack").write_bytes(bytes(data))
    with pytest.raises(SqueezeError, match="modified after it was built"):
        session.attach(tmp_path / "tampered.pack")
    # a pack built for other weights (the manifest names the artifact's weights)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"]["weights_sha256"] = "0" * 64
    other = tmp_path / "other"
    other.mkdir()
    for f in out.iterdir():
        (other / f.name).symlink_to(f)
    (other / "manifest.json").unlink()
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SqueezeError, match="other model weights"):
        DecoderSession(other, fmt="onnx", attention="squeezed").attach(pack_path)
    # a pack longer than the artifact's max context
    small = DecoderShapes(max_context=120, max_prompt=4, max_new=4, max_clusters=8, max_keep=8)
    from squeezed_attention.pack_arrays import decoder_context_inputs, read_pack_arrays

    with pytest.raises(SqueezeError, match="takes at most 120"):
        decoder_context_inputs(read_pack_arrays(pack_path), small.to_dict(), "squeezed")
    with pytest.raises(SqueezeError, match="no context pack attached"):
        session.generate("ab")
    session.attach(pack_path)
    with pytest.raises(SqueezeError, match="at most 64"):
        session.generate("ab " * 80)


def test_damaged_artifact_or_tokenizer_is_a_one_line_error(exported, tmp_path):
    """An artifact cut short, a folder where it belongs, or an unreadable tokenizer: one line naming the file and
    `squeeze verify` (not the runtime's traceback)."""
    from squeezed_attention.decoder_session import DecoderSession

    out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a.get("format") == "onnx" and a["decoder"]["attention"] == "squeezed"]

    def copy(name):
        d = tmp_path / name
        d.mkdir()
        for f in out.iterdir():
            if f.is_file():
                (d / f.name).symlink_to(f)
        return d

    cut = copy("cut")
    (cut / art["file"]).unlink()
    (cut / art["file"]).write_bytes((out / art["file"]).read_bytes()[:1000])
    with pytest.raises(SqueezeError, match=r"holds 1000 bytes, not the \d+ its manifest records.*squeeze verify"):
        DecoderSession(cut, fmt="onnx", attention="squeezed")
    folder = copy("folder")
    (folder / art["file"]).unlink()
    (folder / art["file"]).mkdir()
    with pytest.raises(SqueezeError, match="cannot load .*squeeze verify") as err:
        DecoderSession(folder, fmt="onnx", attention="squeezed")
    assert "\n" not in str(err.value)
    tok = copy("tok")
    (tok / "tokenizer.json").unlink()
    (tok / "tokenizer.json").write_text("{}")
    with pytest.raises(SqueezeError, match="tokenizer .* cannot be read"):
        DecoderSession(tok, fmt="onnx", attention="squeezed")


def test_bad_export_options_fail_before_any_work(tiny, tmp_path):
    _, gguf = tiny
    with pytest.raises(SqueezeError, match="exports to pte, onnx, tflite, coreml; got mlmodel"):
        export_decoder(tmp_path / "x", formats=("mlmodel",), model_path=gguf)
    with pytest.raises(SqueezeError, match="exceed the model window of 256"):
        export_decoder(tmp_path / "y", formats=("onnx",), model_path=gguf, max_context=200, max_prompt=64, max_new=16)
    assert not (tmp_path / "y").exists() and not (tmp_path / "x").exists()   # no folder left behind


def test_interrupted_first_export_leaves_no_folder(tiny, tmp_path, monkeypatch):
    """Ctrl-C during the first conversion into a new folder: the folder (its tokenizer.json) is removed; into a
    folder that already existed, only what the run wrote is kept consistent (the folder stays)."""
    from export.backends.onnx_backend import OnnxBackend

    _, gguf = tiny

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxBackend, "export_program", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_decoder(tmp_path / "new", formats=("onnx",), model_path=gguf, verify=False, **SHAPES)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_decoder(tmp_path / "mine", formats=("onnx",), model_path=gguf, verify=False, **SHAPES)
    assert (tmp_path / "mine").is_dir()


def test_cli_export_decoder_and_verify(tiny, tmp_path, capsys):
    """`squeeze export decoder` writes the artifact + contract; `squeeze verify DIR` re-runs its verification."""
    from export.cli import main

    _, gguf = tiny
    out = tmp_path / "cli_out"
    (tmp_path / "doc.txt").write_text(TINY_TEXT)
    rc = main(["export", "decoder", "--verify-text", str(tmp_path / "doc.txt"), "--formats", "onnx", "--attention", "squeezed", "--model", str(gguf),
               "--max-context", "160", "--max-prompt", "64", "--max-new", "16", "--kv-budget", "0.3", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = manifest["artifacts"]
    assert art["verification"]["status"] == "pass" and art["decoder"]["kv_budget"] == 0.3
    assert manifest["verification_inputs"]["text_file"] == str(tmp_path / "doc.txt")
    rc = main(["verify", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and f"{art['file']}: pass" in captured.out, captured.err[-2000:]
    # the text and the model moved (the folder was copied elsewhere): say where they are now, each checked by hash
    moved_model = tmp_path / "elsewhere.gguf"
    moved_model.write_bytes(Path(gguf).read_bytes())
    (tmp_path / "doc.txt").rename(tmp_path / "moved.txt")
    assert main(["verify", str(out)]) == 1
    assert "pass where it is now with `squeeze verify DIR --verify-text FILE`" in capsys.readouterr().err
    rc = main(["verify", str(out), "--verify-text", str(tmp_path / "moved.txt"), "--model", str(moved_model)])
    captured = capsys.readouterr()
    assert rc == 0 and f"{art['file']}: pass" in captured.out, captured.err[-2000:]
    (tmp_path / "other.txt").write_text(TINY_TEXT + " ab")
    assert main(["verify", str(out), "--verify-text", str(tmp_path / "other.txt")]) == 1
    assert "is not the export's (its hash differs)" in capsys.readouterr().err
    assert main(["verify", str(out), "--verify-text", str(tmp_path / "moved.txt"), "--checkpoint", str(gguf)]) == 1
    assert "--checkpoint does not apply to a decoder export; use --model and --verify-text" in capsys.readouterr().err
    (out / art["file"]).write_bytes((out / art["file"]).read_bytes()[:-10] + b"0123456789")
    assert main(["verify", str(out), "--verify-text", str(tmp_path / "moved.txt")]) == 1
    assert "sha256 differs" in capsys.readouterr().out


def test_bench_reports_squeezed_vs_full_per_runtime(exported, tmp_path):
    """`squeeze bench DIR` on a decoder directory: one row per (format, attention, context), ratios against the
    full-attention artifact of the same format, the lookup's share from each runtime's profiler, reports
    written; a second run reuses the cached pack."""
    out, _ = exported
    report_dir = tmp_path / "bench"
    cmd = [sys.executable, "-m", "export.cli", "bench", str(out), "--out", str(report_dir), "--contexts", "2048",
           "--runs", "1", "--warmup", "0", "--rounds", "1", "--decode-tokens", "3"]
    bad = subprocess.run(cmd + ["--formats", "tflite"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 1 and "holds no tflite decoder artifact" in bad.stderr
    assert not (report_dir / "report.json").exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["schema"] == "squeeze-mobile/bench-decoder/1"
    rows = {(r["format"], r["attention"]): r for r in report["rows"]}
    assert set(rows) == {(f, a) for f in ("onnx", "pte") for a in ("squeezed", "full")}
    max_context = SHAPES["max_context"]
    for (fmt, att), r in rows.items():
        assert r["status"] == "ok" and r["context_tokens"] == max_context  # 2048 capped at the artifact's
        assert r["samples"] == {"prefill": 1, "decode_steps": 3} and r["prefill_ms"] > 0 and r["peak_rss_mb"] > 0
        # the question at its own length (dynamic prefill) and a prompt of exactly max_prompt tokens
        assert r["question_tokens"] < r["prompt_tokens"] == SHAPES["max_prompt"] and r["prompt_prefill_ms"] > 0
        if att == "squeezed":
            full = rows[(fmt, "full")]
            assert r["decode_speedup_vs_full"] == pytest.approx(full["decode_ms_per_token"] / r["decode_ms_per_token"])
    # each decode step against its memory floor: the bytes the artifact's shapes make it read, at the read bandwidth
    # the probe measured for the run's thread count
    from bench import memory_floor

    bw = report["machine"]["peaks"]["read_bw"]
    assert set(bw["gops"]) == {str(t) for t in report["settings"]["threads"]}
    # measured before and after the runs; the floor uses the better
    assert all(len(v) == 2 and bw["gops"][t] == max(v) for t, v in bw["runs_gops"].items())
    manifest = json.loads((out / "manifest.json").read_text())
    contracts = {a["file"]: a["decoder"] for a in manifest["artifacts"] if "decoder" in a}
    for (fmt, att), r in rows.items():
        need = memory_floor.step_bytes(manifest["model"]["config"], contracts[r["file"]], r["weights"])
        assert r["decode_read_mb"] == pytest.approx(need["total"] / 1e6)
        gbps = bw["gops"][str(r["threads"])]
        assert gbps > 0 and r["decode_floor_ms"] == pytest.approx(need["total"] / (gbps * 1e9) * 1e3)
        assert r["decode_bandwidth_share"] == pytest.approx(r["decode_floor_ms"] / r["decode_ms_per_token"])
        if att == "squeezed":
            assert r["decode_speedup_ceiling"] == pytest.approx(rows[(fmt, "full")]["decode_read_mb"] / r["decode_read_mb"])
    assert "## Decode against the memory floor" in (report_dir / "report.md").read_text()
    # the max-prompt prefill against its arithmetic floor: its multiply-adds at the probe's fp32 peak
    from bench import arithmetic_floor

    fp32 = report["machine"]["peaks"]["fp32"]["gops"]
    for (fmt, att), r in rows.items():
        macs = arithmetic_floor.prompt_macs(manifest["model"]["config"], contracts[r["file"]], r["prompt_tokens"])
        assert r["prompt_gmacs"] == pytest.approx(macs["total"] / 1e9)
        assert r["prompt_floor_ms"] == pytest.approx(2 * macs["total"] / (fp32[str(r["threads"])] * 1e9) * 1e3)
        assert r["prompt_peak_share"] == pytest.approx(r["prompt_floor_ms"] / r["prompt_prefill_ms"])
        if att == "squeezed":
            assert r["prompt_speedup_ceiling"] == pytest.approx(rows[(fmt, "full")]["prompt_floor_ms"] / r["prompt_floor_ms"])
    assert "## Max-prompt prefill against the arithmetic floor" in (report_dir / "report.md").read_text()
    shares = {e["format"]: e for e in report["lookup_share"]}
    assert set(shares) == {"onnx", "pte"}
    for e in shares.values():
        assert e["status"] == "ok" and 0 < e["share"] < 1 and e["lookup_ms"] > 0
    assert (report_dir / "report.png").stat().st_size > 1000 and "| onnx | squeezed" in (report_dir / "report.md").read_text()
    pack = Path(report["packs"][0]["path"])
    assert pack.is_file() and pack.parent == report_dir / "packs"
    mtime = pack.stat().st_mtime_ns
    width = contracts[rows[("onnx", "squeezed")]["file"]]["exact_tail"]
    # a 16-token head (the export's default head, 64, makes its whole max prompt exact): rows with a selecting prefill
    proc = subprocess.run(cmd + ["--no-profile", "--formats", "onnx", "--prefill-tail", "0,4", "--exact-tail",
                                 f"0,{width}", "--exact-head", "16"], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and pack.stat().st_mtime_ns == mtime, proc.stderr[-2000:]
    again = json.loads((report_dir / "report.json").read_text())
    assert {r["format"] for r in again["rows"]} == {"onnx"} and again["lookup_share"] == []
    # one squeezed row per prompt tail and exact tail (the full artifact selects nothing: one row), labelled apart
    assert sorted((r["attention"], r["prefill_tail"] or 0, r["exact_tail"] or 0) for r in again["rows"]) == [
        ("full", 0, 0), ("squeezed", 0, 0), ("squeezed", 0, width), ("squeezed", 4, 0), ("squeezed", 4, width)]
    text = (report_dir / "report.md").read_text()
    assert contracts[rows[("onnx", "squeezed")]["file"]]["exact_head"] == min(DEFAULT_EXACT_HEAD, SHAPES["max_prompt"])
    head = 16
    assert all(r["exact_head"] == head for r in again["rows"] if r["attention"] == "squeezed")
    assert f"| onnx | squeezed (tail 4) (exact {width}) (head {head}) (KV budget" in text
    assert f"| onnx | squeezed (tail 4) (head {head}) (KV budget" in text
    # each row's arithmetic floor counts the prompt as that row ran it (with or without its exact tail)
    full = next(r for r in again["rows"] if r["attention"] == "full")
    for r in again["rows"]:
        if r["attention"] == "squeezed":
            macs = arithmetic_floor.prompt_macs(manifest["model"]["config"], {**contracts[r["file"]],
                                                "exact_tail": r["exact_tail"], "exact_head": r["exact_head"]},
                                                r["prompt_tokens"])
            assert r["prompt_gmacs"] == pytest.approx(macs["total"] / 1e9)
            assert r["prompt_speedup_ceiling"] == pytest.approx(full["prompt_floor_ms"] / r["prompt_floor_ms"])
    by_exact = {r["exact_tail"]: r["prompt_gmacs"] for r in again["rows"] if r["attention"] == "squeezed"}
    assert by_exact[0] != by_exact[width]
    bad = subprocess.run(cmd + ["--formats", "onnx", "--prefill-tail", "-1"], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    # a usage error (exit 2, one line) before anything runs
    assert bad.returncode == 2 and "argument --prefill-tail: must be an integer >= 0, got -1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    wide = subprocess.run(cmd + ["--formats", "onnx", "--no-profile", "--exact-tail", str(width + 1)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert wide.returncode == 1 and f"--exact-tail must be a whole number of tokens from 0 to {width} for this " \
        f"artifact (its prefill_exact method's width" in wide.stderr and f"got {width + 1}" in wide.stderr
    assert "Traceback" not in wide.stderr and len(wide.stderr.strip().splitlines()) == 1


def test_bench_with_a_relative_report_folder(exported, tmp_path, monkeypatch):
    """--out relative to the user's directory: the packs the bench builds there are found by its worker processes
    (which run from the repository root)."""
    from export.cli import main

    out, _ = exported
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(out), "--out", "rel", "--contexts", "2048", "--formats", "onnx", "--runs", "1",
                 "--warmup", "0", "--rounds", "1", "--decode-tokens", "2", "--no-profile"]) == 0
    report = json.loads((tmp_path / "rel" / "report.json").read_text())
    assert report["rows"] and all(r["status"] == "ok" for r in report["rows"]), report["rows"]


def test_second_export_merges_and_other_weights_are_refused(tiny, tmp_path):
    _, gguf = tiny
    out = tmp_path / "merged"
    for att in ("full", "squeezed"):
        result = export_decoder(out, formats=("onnx",), model_path=gguf, attention=att, kv_budget=0.3, verify=False,
                                **SHAPES)
        assert result.ok, result.manifest["failures"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(a["decoder"]["attention"] for a in manifest["artifacts"]) == ["full", "squeezed"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = testing.write_tiny_llama_gguf(tmp_path / "other.gguf", layers=2, seed=5, quantized=False)
    with pytest.raises(SqueezeError, match="other weights"):
        export_decoder(out, formats=("onnx",), model_path=other, verify=False, **SHAPES)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_int8_weights_are_quantized_and_judged_against_fp32(tiny, tmp_path):
    """--weights int8 (onnxruntime MatMulNBits): every linear becomes MatMulNBits, the file records the quantizer
    and its settings, and verification judges next-token agreement with fp32 (teacher-forced), not identity."""
    import onnx

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    result = export_decoder(tmp_path / "q", formats="onnx", model_path=gguf, attention="squeezed", weights="int8",
                            kv_budget=0.3, verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    assert art["file"].endswith("_int8.onnx") and art["weights"] == "int8"
    q = art["weight_quantization"]
    assert q["bits"] == 8 and q["block_size"] == 32 and q["matmul_nbits"] == 2 * 4 + 1   # q|k|v, o, gate|up, down per layer + head
    # read back from the written tensors: within half a quantization step of the float weights (|w| < ~0.5 here)
    assert 0 < q["max_abs_weight_error"]["MatMulNBits/8"] < 0.5 / 127, q["max_abs_weight_error"]
    from export.backends.onnx_branches import walk_nodes

    ops = {n.op_type for n in walk_nodes(onnx.load(str(tmp_path / "q" / art["file"])).graph)}
    assert "MatMulNBits" in ops and "Gemm" not in ops
    # the embedding quantized too: the tied table (the head is the embedding) read from the head's 8-bit codes
    assert "GatherBlockQuantized" in ops and q["tied_table_stored_once"] is True
    assert "head's 8-bit codes" in q["scheme"]["embedding"]
    v = art["verification"]
    assert v["status"] == "pass" and v["top1_agreement"] >= 0.9 and v["mean_kl"] <= 0.05, v
    with pytest.raises(SqueezeError, match="--weights must be one of"):
        export_decoder(tmp_path / "p", formats="onnx", model_path=gguf, weights="int2", verify=False, **SHAPES)


def test_onnx_int4_stores_a_q4_1_model_exactly(tmp_path):
    """--weights int4 for .onnx on a model loaded from a Q4_1/Q8_0 GGUF (the shipped SmolLM2's layout): the layers'
    linears as 4-bit asymmetric blocks (symmetric MatMulNBits + block offsets), the head and the embedding as 8-bit
    blocks, so the stored weights ARE the file's values (read back from the written tensors), no float zero point
    (onnxruntime's slow path), and the artifact agrees with fp32."""
    import onnx

    gguf = testing.write_tiny_llama_gguf(tmp_path / "q41.gguf", layers=2, quantized="Q4_1")
    (tmp_path / "doc.txt").write_text(TINY_TEXT)
    result = export_decoder(tmp_path / "q", formats="onnx", model_path=gguf, attention="squeezed", weights="int4",
                            kv_budget=0.3, verify_text=tmp_path / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    q = art["weight_quantization"]
    assert q["matmul_nbits"] == 2 * 4 + 1 and q["gather_block_quantized"] == 1 and q["float_matrix_elements_left"] == 0
    # the tied table (the head is the embedding) stored once: the gather reads the head's codes
    assert q["tied_table_stored_once"] is True
    errors = q["max_abs_weight_error"]
    assert set(errors) == {"MatMulNBits/4", "MatMulNBits/8", "GatherBlockQuantized/8"}, errors
    assert max(errors.values()) < 1e-5, errors
    from export.backends.onnx_branches import walk_nodes

    graph = onnx.load(str(tmp_path / "q" / art["file"])).graph
    nbits = [n for n in walk_nodes(graph) if n.op_type == "MatMulNBits"]
    bits = sorted(next(a.i for a in n.attribute if a.name == "bits") for n in nbits)
    # 2 layers x (q|k|v, o, gate|up, down), the head; in both graphs of the file (the exact prompt tail's too),
    # which read one stored copy of each weight
    assert sorted(bits) == sorted(([4] * 8 + [8]) * 2)
    assert len({n.input[1] for n in nbits}) == 9
    gathers = [n for n in walk_nodes(graph) if n.op_type == "GatherBlockQuantized"]
    assert gathers and {n.input[0] for n in gathers} <= {n.input[1] for n in nbits}
    # one 8-bit copy of the vocabulary table's codes in the file
    vocab = [i for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8 and i.dims
             and int(np.prod(i.dims)) == int(np.prod([d for d in next(j for j in graph.initializer
                                                                     if j.name == gathers[0].input[0]).dims]))]
    assert len(vocab) == 1, [(i.name, list(i.dims)) for i in vocab]
    assert not [n for n in nbits if len(n.input) > 3]   # no zero-point input
    # the 4-bit layers with float activations (accuracy_level 1), the 8-bit head with int8 ones (4: its fast path)
    levels = {(next(a.i for a in n.attribute if a.name == "bits"), next(a.i for a in n.attribute
                                                                          if a.name == "accuracy_level")) for n in nbits}
    assert levels == {(4, 1), (8, 4)} and q["accuracy_level"] == {"layers": 1, "head": 4}, levels
    v = art["verification"]
    # the weights are exact; the head's int8 activations (accuracy_level 4) leave a near-zero KL (near-ties may flip)
    assert v["status"] == "pass" and v["top1_agreement"] >= 0.9 and v["mean_kl"] < 1e-3, v
    assert q["float16_storage"]["tensors"] == 0   # this model's side tables are below the size it converts


def test_half_storage_keeps_every_value_and_onnxruntime_folds_it(tmp_path):
    """half_storage: float32 initializers that are exactly float16 (a Q4_1 / Q8_0 GGUF's block scales and offsets)
    stored in half the bytes behind a Cast at the top of the main graph, others untouched; on the tiny Q4_1 int4
    .onnx (two graphs: branches of an If that read the tables from the outer scope) onnxruntime returns bit-identical
    outputs for both branches, and its optimized graph keeps no such Cast (folded at session creation)."""
    import onnx
    import onnxruntime as ort

    from export.backends.onnx_backend import half_storage

    gguf = testing.write_tiny_llama_gguf(tmp_path / "q41.gguf", layers=2, quantized="Q4_1")
    result = export_decoder(tmp_path / "q", formats="onnx", model_path=gguf, attention="squeezed", weights="int4",
                            kv_budget=0.3, verify=False, exact_tail=4, **SHAPES)
    (art,) = result.manifest["artifacts"]
    src = tmp_path / "q" / art["file"]
    model = onnx.load(str(src))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.full(8, 0.1, np.float32), "not_a_half"))
    rec = half_storage(model, min_elements=1)
    assert rec["tensors"] > 0 and rec["bytes_saved"] > 0
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["not_a_half"].data_type == onnx.TensorProto.FLOAT        # 0.1 is no float16: left as it was
    halves = [i for i in model.graph.initializer if i.name.endswith("__float16")]
    assert len(halves) == rec["tensors"] and all(i.data_type == onnx.TensorProto.FLOAT16 for i in halves)
    assert [n.op_type for n in model.graph.node[:rec["tensors"]]] == ["Cast"] * rec["tensors"]
    onnx.checker.check_model(model)
    dst = tmp_path / "half.onnx"
    dst.write_bytes(model.SerializeToString())
    assert rec["bytes_saved"] == sum(2 * int(np.prod(i.dims)) for i in halves)   # (here less than the Casts cost)
    opt = ort.SessionOptions()
    opt.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sessions = [ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]),
                ort.InferenceSession(str(dst), opt, providers=["CPUExecutionProvider"])]
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not [n for n in optimized.graph.node if n.name.endswith("__to_float")]
    rng = np.random.default_rng(0)
    for branch in (0, 1):
        feed = {}
        for i in sessions[0].get_inputs():
            shape = [d if isinstance(d, int) else 3 for d in i.shape]
            if i.name == "branch":
                feed[i.name] = np.array([branch], np.int64)
            elif "int64" in i.type:
                feed[i.name] = np.ones(shape, np.int64)
            else:
                feed[i.name] = rng.standard_normal(shape).astype(np.float32)
        a, b = (s.run(None, feed) for s in sessions)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), branch


def test_pte_int4_weights_run_in_xnnpack_and_answer_through_the_runtime(tiny, tiny_pack, tmp_path):
    """--weights int4 for .pte (ExecuTorch's LLM recipe): every linear as XNNPACK's dynamically quantized fully
    connected (int8 activations x 4-bit weights in groups of 32), the embedding table as int8 rows read by
    ExecuTorch's quantized embedding kernel; judged teacher-forced against fp32 PyTorch; the runtime loop answers."""
    from squeezed_attention.decoder_session import DecoderSession

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    out = tmp_path / "q4"
    result = export_decoder(out, formats="pte", model_path=gguf, attention="squeezed", weights="int4", kv_budget=0.3,
                            verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    assert art["file"].endswith("_int4.pte") and art["weights"] == "int4"
    q = art["weight_quantization"]
    assert q["linear"]["count"] == 2 * 4 and "int4" in q["linear"]["weights"] and q["embedding"]["count"] == 1
    assert q["head"]["count"] == 1 and "per output channel" in q["head"]["weights"]
    # a float model rounds onto the 4-bit grid: within half a step (|w| < ~0.5 here, 15 steps per block)
    assert 0 < q["max_abs_weight_error"]["linear_int4"] < 0.5, q["max_abs_weight_error"]
    for method in ("prefill", "decode"):
        portable = art["delegation"][method]["portable_ops"]
        assert "quantized_decomposed_embedding_byte_default" in portable
        assert not [op for op in portable if "linear" in op or "addmm" in op or "_mm_" in op], portable
    v = art["verification"]
    assert v["status"] == "pass" and v["top1_agreement"] >= 0.75 and v["mean_kl"] <= 0.3, v
    pack_path, *_ = tiny_pack
    session = DecoderSession(out, fmt="pte", attention="squeezed")
    session.attach(pack_path)
    got = session.generate("ab nan", max_new_tokens=6, stop_at_eos=False)
    session.close()
    assert len(got.token_ids) == 6


def test_pte_int4_stores_a_q4_1_model_on_its_own_grid(tmp_path):
    """--weights int4 for .pte on a model read from a Q4_1 / Q8_0 GGUF (the shipped SmolLM2's layout): the layers'
    linears keep the file's 4-bit values (XNNPACK's symmetric groups hold q - 8 with the block's step, the block
    offsets add the rest; only the bf16 group scales round), the embedding keeps Q8_0's blocks exactly, and the
    quantized model (eager, the kernels' arithmetic simulated) predicts what the float model predicts."""
    from export.quantize import quantize_program_weights
    from squeezed_attention.model import LlamaForCausalLM
    from squeezed_attention.weights import load_checkpoint

    model = LlamaForCausalLM.from_checkpoint(load_checkpoint(
        testing.write_tiny_llama_gguf(tmp_path / "q41.gguf", layers=2, quantized="Q4_1")))
    modules, record = quantize_program_weights({"model": model}, "int4")
    errors = record["max_abs_weight_error"]
    assert set(errors) == {"linear_int4", "head_int8", "embedding_int8"}, errors
    steps = max(float((m.weight.detach().unflatten(1, (-1, 32)).amax(-1) - m.weight.detach().unflatten(1, (-1, 32))
                       .amin(-1)).max()) / 15 for m in model.modules() if isinstance(m, torch.nn.Linear)
                if m.out_features != 40)
    assert errors["linear_int4"] <= steps * 8 * 2 ** -8, (errors, steps)   # bf16 scales only, not a re-rounding
    assert errors["embedding_int8"] < 1e-6, errors
    assert record["linear"]["count"] == 2 * 7 and record["head"]["count"] == 1
    tokens = torch.tensor(list(range(5, 40)) * 2)
    with torch.no_grad():
        ref = model.step(tokens, model.new_cache(len(tokens)), logits="all")
        got = modules["model"].step(tokens, modules["model"].new_cache(len(tokens)), logits="all")
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9


def test_question_level_selection_decodes_over_the_prefills_rows(tiny, tiny_pack, tmp_path):
    """--decode-selection question: the prefill returns its selection, decode is a second graph (same weights and
    cache buffers) over the rows the loop gathered once (pack_arrays.held_inputs): no top-k or gather per step,
    tokens identical to the PyTorch decoder holding the same selection; other formats are refused in one line."""
    from squeezed_attention.decoder_session import DecoderSession

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    with pytest.raises(SqueezeError, match="--decode-selection question is built for pte"):
        export_decoder(tmp_path / "no", formats=("onnx",), model_path=gguf, decode_selection="question", **SHAPES)
    assert not (tmp_path / "no").exists()
    out = tmp_path / "question"
    result = export_decoder(out, formats="pte", model_path=gguf, attention="squeezed", kv_budget=0.3,
                            decode_selection="question", verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    assert "question" in art["file"] and art["decoder"]["decode_selection"] == "question"
    v = art["verification"]
    assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"] and v["psnr_db"] >= 60, v
    decode_ops = art["delegation"]["decode"]["portable_ops"]
    assert not [op for op in decode_ops if "topk" in op or "gather" in op or "index_select" in op], decode_ops
    assert "aten_topk_default" in art["delegation"]["prefill"]["portable_ops"]
    methods = art["decoder"]["methods"]
    assert methods["prefill"]["outputs"][-2:] == ["selection_rows", "selection_bias"]
    decode_inputs = {i["name"] for i in methods["decode"]["inputs"]}
    assert {"held_keys_0", "held_values_0", "held_bias_0"} <= decode_inputs and "clustered_keys_0" not in decode_inputs
    pack_path, *_ = tiny_pack
    session = DecoderSession(out, fmt="pte", attention="squeezed")
    session.attach(pack_path)
    with pytest.raises(SqueezeError, match="decodes after its prefill"):
        session.loop.step("decode", [3], 0, session.loop.new_cache())
    got = session.generate("ab nan", max_new_tokens=6, stop_at_eos=False)
    session.close()
    assert len(got.token_ids) == 6


@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_exact_prompt_tail_is_a_third_method_and_answers_like_pytorch(tiny, tiny_pack, tmp_path, fmt):
    """--exact-tail N: a method prefill_exact runs the question's last N tokens over every fixed-context row (no
    lookup) after a selecting prefill of the tokens before them (.pte: a third method; .onnx: a second graph of the
    same file, a branch of an If on the input ``branch`` that reads the same weights); the artifact passes
    verification against the PyTorch decoder with the same exact tail, answers like it at the artifact's tail and
    at 0 (no exact call), and a question-level decode (which cannot hold it) is refused in one line before anything
    is written."""
    import onnx

    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    with pytest.raises(SqueezeError, match="--exact-tail 4 is exported with per-step decode selection only"):
        export_decoder(tmp_path / "no", formats=("pte",), model_path=gguf, exact_tail=4, decode_selection="question",
                       **SHAPES)
    assert not (tmp_path / "no").exists()
    out = tmp_path / "exact"
    result = export_decoder(out, formats=fmt, model_path=gguf, attention="squeezed", kv_budget=0.3, exact_tail=4,
                            verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    contract = art["decoder"]
    assert contract["exact_tail"] == 4 and "prefill_exact" in contract["methods"]
    exact_inputs = {i["name"]: i["shape"] for i in contract["methods"]["prefill_exact"]["inputs"]}
    flat = {i["name"]: i["shape"] for i in contract["methods"]["decode"]["inputs"]}
    if fmt == "pte":
        assert "keep_keys" not in exact_inputs and "centroids_0" not in exact_inputs
        # the clustered rows per KV head, [Hkv, Nc, D]: the same rows as the lookup's flat [Hkv * Nc, D] tables
        for name in ("clustered_keys_0", "clustered_values_0"):
            hkv, nc, dim = exact_inputs[name]
            assert flat[name] == [hkv * nc, dim]
        # no lookup; the one top-k per layer is the followed keys' pointer (the default 4) over every clustered row
        by_op = art["delegation"]["prefill_exact"]["by_operator"]
        assert contract["follow_keys"] == 4
        assert {op: n["portable"] for op, n in by_op.items() if "topk" in op} == {"aten_topk_default": 2}, by_op
    else:
        # one file: both graphs are fed the same inputs, in the same shapes, plus the branch each method fixes
        fixed = {m: [i for i in contract["methods"][m]["inputs"] if i["name"] == "branch"]
                 for m in ("prefill", "decode", "prefill_exact")}
        assert {m: f[0]["value"] for m, f in fixed.items()} == {"prefill": [0], "decode": [0], "prefill_exact": [1]}
        assert {n: s for n, s in exact_inputs.items() if n != "tokens"} == {n: s for n, s in flat.items() if n != "tokens"}
        model = onnx.load(str(out / art["file"]))
        assert [n.op_type for n in model.graph.node][-1] == "If"
        from export.backends.onnx_branches import walk_nodes

        assert art["graphs"] == 2 and art["nodes"] == sum(1 for _ in walk_nodes(model.graph)) > 100
        # the weights are stored once: no initializer's bytes twice
        blobs = [bytes(i.raw_data) for i in model.graph.initializer if len(i.raw_data) > 256]
        assert len(blobs) == len(set(blobs))
        single = export_decoder(tmp_path / "single", formats=fmt, model_path=gguf, attention="squeezed",
                                kv_budget=0.3, exact_tail=0, verify=False, **SHAPES).manifest["artifacts"][0]
        weights = sum(len(i.raw_data) for i in onnx.load(str(tmp_path / "single" / single["file"])).graph.initializer)
        assert sum(len(b) for b in blobs) <= weights
    v = art["verification"]
    assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"] and v["psnr_db"] >= 60, v
    pack_path, pack, model, ck = tiny_pack
    for tail in (None, 0, 2):
        # (decode steps that select: the answer's opening is its own test)
        session = DecoderSession(out, fmt=fmt, attention="squeezed", exact_tail=tail, exact_decode=0, exact_head=0)
        session.attach(pack_path)
        calls = []
        run = session.runner.run
        session.runner.run = lambda method, feed: (calls.append((method, len(feed["tokens"]))), run(method, feed))[1]
        got = session.generate("ab nan", max_new_tokens=6, stop_at_eos=False)
        n = len(session.prompt_ids("ab nan"))
        want = 4 if tail is None else tail
        assert calls[:2] == ([("prefill", n - want), ("prefill_exact", want)] if want else [("prefill", n)]
                             + [("decode", 1)])
        ref = Generator(model, ck.tokenizer, pack).generate(
            "ab nan", AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch", exact_tail=want,
                                      exact_head=0, exact_decode=0),
            max_new_tokens=6, stop_at_eos=False)
        session.close()
        assert got.token_ids == ref.token_ids, tail
    with pytest.raises(SqueezeError, match="--exact-tail must be a whole number of tokens from 0 to 4"):
        DecoderSession(out, fmt=fmt, exact_tail=5)


def test_weight_schemes_bench_finds_the_q4_1_grid_exact(tmp_path):
    """bench.weight_schemes on a Q4_1/Q8_0 GGUF: the .onnx int4 layout changes no weight and agrees with fp32 on
    every token; onnxruntime's symmetric 4-bit blocks change weights; the report files are written."""
    from bench import weight_schemes

    gguf = testing.write_tiny_llama_gguf(tmp_path / "q41.gguf", layers=2, quantized="Q4_1")
    assert weight_schemes.main(["--model", str(gguf), "--docs", "2", "--tokens", "64", "--threads", "1",
                                "--out", str(tmp_path / "ws")]) == 0
    rows = {r["scheme"].split(" (")[0]: r for r in json.loads((tmp_path / "ws" / "report.json").read_text())["rows"]}
    exact = rows["onnx int4"]
    assert exact["max_weight_change"] < 1e-6 and exact["top1_agreement"] == 1.0 and exact["mean_kl"] < 1e-8
    assert rows["onnxruntime's 4-bit symmetric blocks of 32 everywhere"]["max_weight_change"] > 1e-3
    assert "| onnx int4" in (tmp_path / "ws" / "report.md").read_text()


def test_manifest_of_another_schema_is_refused_in_one_line(tmp_path):
    """An export whose contract differs (schema 1: one clustered_kv table per layer) is refused before any call."""
    from squeezed_attention.decoder_session import SCHEMA, read_decoder_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "squeeze-mobile/decoder-manifest/1",
                                                        "model": {"kind": "decoder"}, "artifacts": []}))
    with pytest.raises(SqueezeError, match="another version of squeeze-mobile .*re-export the decoder"):
        read_decoder_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "model": {"kind": "decoder"},
                                                        "artifacts": []}))
    assert read_decoder_manifest(tmp_path)["schema"] == SCHEMA


def test_each_method_gets_the_clustered_rows_in_its_declared_shape():
    """prefill_exact declares the flat [Hkv * Nc, D] tables as [Hkv, Nc, D]: the loop feeds views of the same rows
    (no copy), other methods get them as laid out, and a size the method does not take is refused in one line."""
    from squeezed_attention.decoder_session import GenerationLoop

    table = np.arange(3 * 5 * 4, dtype=np.float32).reshape(15, 4)
    declared = lambda shape: {"inputs": [{"name": "tokens", "shape": [8], "dynamic": {"0": [1, 8]}},  # noqa: E731
                                         {"name": "clustered_keys_0", "shape": shape}]}
    loop = GenerationLoop.__new__(GenerationLoop)
    loop.contract = {"methods": {"decode": declared([15, 4]), "prefill_exact": declared([3, 5, 4]),
                                 "odd": declared([2, 5, 4])}}
    loop.context, loop._reshape = {"clustered_keys_0": table}, {}
    exact = loop._shaped("prefill_exact", {"clustered_keys_0": table, "tokens": np.zeros(3)})
    assert exact["clustered_keys_0"].shape == (3, 5, 4) and np.shares_memory(exact["clustered_keys_0"], table)
    assert exact["tokens"].shape == (3,)
    assert loop._shaped("decode", {"clustered_keys_0": table})["clustered_keys_0"] is table
    with pytest.raises(SqueezeError, match=r"clustered_keys_0 has shape \(15, 4\) but method odd takes \[2, 5, 4\]"):
        loop._shaped("odd", {"clustered_keys_0": table})


def test_export_into_a_directory_of_an_older_decoder_schema_is_refused(tiny, tmp_path):
    """Adding artifacts to a schema-1 export would mix two contracts in one manifest: refused, nothing touched."""
    _, gguf = tiny
    old = json.dumps({"schema": "squeeze-mobile/decoder-manifest/1", "model": {"kind": "decoder"}, "artifacts": []})
    (tmp_path / "manifest.json").write_text(old)
    with pytest.raises(SqueezeError, match="exported by another version of squeeze-mobile .*fresh directory"):
        export_decoder(tmp_path, formats="onnx", model_path=gguf, attention="full", verify=False, **SHAPES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert (tmp_path / "manifest.json").read_text() == old


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_followed_keys_in_the_exported_graph_answer_like_pytorch(tiny, tiny_pack, tmp_path, fmt):
    """--follow-keys F: every method returns follow_out (the rows after the F clustered rows its last token weighed
    most), decode takes it back as follow_rows and selects F keys fewer; the artifact passes verification against
    the PyTorch decoder with the same F (SqueezedContext's rule) and the torch-free loop answers like it; with
    question-level selection it is refused in one line before anything is written."""
    from squeezed_attention.decoder_session import DecoderSession
    from squeezed_attention.generation import AttentionChoice, Generator

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    with pytest.raises(SqueezeError, match="--follow-keys 2 is exported with per-step decode selection"):
        export_decoder(tmp_path / "no", formats=(fmt,), model_path=gguf, follow_keys=2, decode_selection="question",
                       **SHAPES)
    assert not (tmp_path / "no").exists()
    out = tmp_path / "follow"
    result = export_decoder(out, formats=fmt, model_path=gguf, attention="squeezed", kv_budget=0.3, exact_tail=4,
                            follow_keys=2, verify_text=d / "doc.txt", verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    (art,) = result.manifest["artifacts"]
    contract = art["decoder"]
    assert contract["follow_keys"] == 2 and contract["follow_min_keep"] == 0   # given: every pack follows
    for method in ("prefill", "decode", "prefill_exact"):
        outputs = contract["methods"][method]["outputs"]
        assert any((o["name"] if isinstance(o, dict) else o) == "follow_out" for o in outputs), outputs
    v = art["verification"]
    assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"], v
    pack_path, pack, model, ck = tiny_pack
    session = DecoderSession(out, fmt=fmt, attention="squeezed", exact_decode=0, exact_head=0)   # every decode step follows
    session.attach(pack_path)
    keeps = []
    run = session.runner.run
    session.runner.run = lambda method, feed: (keeps.append((method, int(feed["keep_keys"][0]),
                                                             feed["follow_rows_0"].copy())), run(method, feed))[1]
    got = session.generate("ab nan", max_new_tokens=6, stop_at_eos=False)
    keep = session.loop.keep_keys
    session.close()
    assert keeps[0][1] == keep and (keeps[0][2] == -1).all()            # prefill: the whole budget, no pointer
    decodes = [k for k in keeps if k[0] == "decode"]
    assert decodes and all(k[1] == keep - 2 for k in decodes) and (decodes[0][2] >= 0).any()
    ref = Generator(model, ck.tokenizer, pack).generate(
        "ab nan", AttentionChoice("top-k", keep_keys=keep, backend="torch", exact_tail=4, exact_head=0, follow_keys=2,
                                  exact_decode=0),
        max_new_tokens=6, stop_at_eos=False)
    assert got.token_ids == ref.token_ids
    if fmt == "onnx":
        _assert_each_layer_frees_its_probabilities(out, pack_path)


def _assert_each_layer_frees_its_probabilities(directory, pack_path):
    """In ONNX Runtime's execution order of the exact prompt tail (profiled, on its optimized graph), every consumer
    of a layer's softmax probabilities runs before the next layer's softmax: the followed-key weights read from them
    are computed in their layer, so the probabilities are freed layer by layer (ONNX Runtime orders nodes by a
    depth-first walk from the outputs, which put every layer's weights after the last layer: +450-600 MB peak RSS on
    the real 7.8k artifact)."""
    import json

    import onnx
    import onnxruntime as ort

    from squeezed_attention.decoder_session import DecoderSession

    optimized = directory / "optimized.onnx.tmp"
    original = ort.InferenceSession

    class Profiled(original):
        def __init__(self, path, options=None, **kw):
            options.optimized_model_filepath = str(optimized)
            options.enable_profiling = True
            options.profile_file_prefix = str(directory / "profile")
            super().__init__(path, options, **kw)

    ort.InferenceSession = Profiled
    try:
        # (no exact head: the question's tokens before its exact tail select, so both branches run)
        session = DecoderSession(directory, fmt="onnx", attention="squeezed", exact_head=0)
    finally:
        ort.InferenceSession = original
    session.attach(pack_path)
    session.generate("ab nan", max_new_tokens=1)
    events = json.loads(Path(session.runner.session.end_profiling()).read_text())
    session.close()
    order = [e["name"][:-len("_kernel_time")] for e in events
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    graph = onnx.load(str(optimized), load_external_data=False).graph
    (branch_node,) = [n for n in graph.node if n.op_type == "If"]
    checked = 0
    for branch in (a.g for a in branch_node.attribute):   # the selecting prefill and the exact tail
        nodes = {n.name: n for n in branch.node}
        ran = []
        for name in (n for n in order if n in nodes):
            if name in ran:                                  # the branch's first call only
                break
            ran.append(name)
        where = {n: i for i, n in enumerate(ran)}
        softmaxes = [n for n in ran if nodes[n].op_type == "Softmax"]
        for this, following in zip(softmaxes, softmaxes[1:]):
            probabilities = nodes[this].output[0]
            consumers = [n for n in ran if probabilities in nodes[n].input]
            assert consumers and max(where[c] for c in consumers) < where[following], (this, consumers)
            checked += 1
    assert checked >= 2, "both branches ran, each over every layer"


def test_next_rows_map_each_clustered_row_to_the_next_positions_row(tiny_pack):
    """pack_arrays.next_rows on a real pack: the row next_rows[r] of the clustered tables holds the key of the position
    after row r's (checked against the pack's position-ordered keys), -1 for the last clustered position and for
    padding rows, every clustered position reached exactly once."""
    from squeezed_attention.pack_arrays import decoder_context_inputs, next_rows, read_pack_arrays

    path, pack, _, _ = tiny_pack
    arrays = read_pack_arrays(path)
    shapes = decoder_shapes(pack.config, max_context=SHAPES["max_context"], max_prompt=SHAPES["max_prompt"],
                            max_new=SHAPES["max_new"], kv_budget=0.3).to_dict()
    ctx = decoder_context_inputs(arrays, shapes, "squeezed")
    table = next_rows(arrays, shapes)
    keys = arrays.arrays["kv.keys"].astype(np.float32)                              # [L, H, N, D] position order
    sinks, nc = int(arrays.settings["sink_tokens"]), arrays.arrays["lookup.labels"].shape[-1]
    width = SHAPES["max_context"] - shapes["sink_tokens"] - shapes["window"]
    for li in (0, keys.shape[0] - 1):
        flat, nxt = ctx[f"clustered_keys_{li}"], table[f"next_rows_{li}"]
        for h in range(keys.shape[1]):
            rows = nxt[h * width:(h + 1) * width]
            assert (rows[nc:] == -1).all() and (rows[:nc] == -1).sum() == 1
            # the row whose next is -1 holds the last clustered position's key; the others point at p + 1
            last = np.nonzero(rows[:nc] == -1)[0][0]
            assert np.array_equal(flat[h * width + last], keys[li, h, sinks + nc - 1])
            targets = rows[:nc][rows[:nc] >= 0]
            assert sorted(targets.tolist()) == sorted(set(targets.tolist())) and len(targets) == nc - 1
            for r in range(nc):
                if rows[r] < 0:
                    continue
                p = int(np.nonzero((keys[li, h, sinks:sinks + nc] == flat[h * width + r]).all(-1))[0][0]) + sinks
                assert np.array_equal(flat[rows[r]], keys[li, h, p + 1])


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_the_answers_opening_runs_the_exact_method_and_answers_like_pytorch(tiny, tiny_pack, tmp_path, fmt):
    """--exact-decode N (contract exact_decode): the loop's first N decode steps are 1-token prefill_exact calls
    (every fixed-context row, no followed rows fed), then decode steps select, the first following the last exact
    step's pointer; the artifact passes verification against the host with the same N and answers like it with N
    and with the override 0; with a question the exact tail covers, the artifact's next-token logits equal the
    full-attention artifact's for the prefill and the N exact steps, and differ at the first selecting step."""
    from squeezed_attention.decoder_session import DecoderSession, exact_decode_of
    from squeezed_attention.generation import AttentionChoice, Generator

    d, gguf = tiny
    (d / "doc.txt").write_text(TINY_TEXT)
    with pytest.raises(SqueezeError, match="--exact-tail 0 leaves out"):
        export_decoder(tmp_path / "no", formats=(fmt,), model_path=gguf, exact_tail=0, exact_decode=2, **SHAPES)
    assert not (tmp_path / "no").exists()
    out, N = tmp_path / "opening", 3
    result = export_decoder(out, formats=fmt, model_path=gguf, attention=["squeezed", "full"], kv_budget=0.3,
                            exact_tail=32, exact_decode=N, exact_below=0, follow_keys=2, verify_text=d / "doc.txt",
                            verify_tokens=8, **SHAPES)
    assert result.ok, result.manifest["failures"]
    squeezed, full = (next(a for a in result.manifest["artifacts"] if a["decoder"]["attention"] == att)
                      for att in ("squeezed", "full"))
    assert squeezed["decoder"]["exact_decode"] == N and full["decoder"]["exact_decode"] is None
    assert any("answer's opening (exact_decode = 3" in s for s in squeezed["decoder"]["call_sequence"])
    v = squeezed["verification"]
    assert v["status"] == "pass" and v["prompts_identical"] == v["prompts"], v
    pack_path, pack, model, ck = tiny_pack
    prompt, new = "ab nan", 8
    for opening in (None, 0):
        session = DecoderSession(out, fmt=fmt, attention="squeezed", exact_decode=opening)
        session.attach(pack_path)
        calls = []
        run = session.runner.run
        session.runner.run = lambda method, feed: (calls.append((method, len(feed["tokens"]), feed["follow_rows_0"].copy())),
                                                   run(method, feed))[1]
        got = session.generate(prompt, max_new_tokens=new, stop_at_eos=False)
        n = len(session.prompt_ids(prompt))
        want = N if opening is None else opening
        assert session.loop.exact_decode == want
        assert [c[:2] for c in calls] == [("prefill_exact", n)] + [("prefill_exact", 1)] * want \
            + [("decode", 1)] * (new - 1 - want)
        assert all((c[2] == -1).all() for c in calls[:want + 1])            # exact calls follow nothing
        assert (calls[want + 1][2] >= 0).any()                              # the next step follows their pointer
        ref = Generator(model, ck.tokenizer, pack).generate(
            prompt, AttentionChoice("top-k", keep_keys=session.loop.keep_keys, backend="torch", exact_tail=32,
                                    follow_keys=2, exact_decode=want, exact_below=0), max_new_tokens=new,
            stop_at_eos=False)
        assert got.token_ids == ref.token_ids, opening
        assert ("every answer token selects" in got.attention) == (opening == 0)
        assert got.attention.endswith("unsure steps not re-run")    # this export's exact_below 0
        session.close()
    # teacher-forced along one answer: the exact calls' logits are full attention's (another graph: float rounding)
    logits = {}
    for att in ("squeezed", "full"):
        session = DecoderSession(out, fmt=fmt, attention=att)
        session.attach(pack_path)
        _, logits[att] = session.loop.greedy(session.prompt_ids(prompt), new, forced=ref.token_ids)
        session.close()
    diff = [float(np.abs(a - b).max()) for a, b in zip(logits["squeezed"], logits["full"])]
    assert max(diff[:N + 1]) < 1e-3 < diff[N + 1], diff
    # refused in one line: an opening on full attention, or on an artifact without the exact method
    with pytest.raises(SqueezeError, match="--exact-decode shapes Squeezed Attention's key selection"):
        DecoderSession(out, fmt=fmt, attention="full", exact_decode=2)
    with pytest.raises(SqueezeError, match="exported with --exact-tail 0"):
        exact_decode_of({"attention": "squeezed", "exact_tail": 0}, 2)
    with pytest.raises(SqueezeError, match="--exact-decode must be a whole number"):
        DecoderSession(out, fmt=fmt, attention="squeezed", exact_decode=-1)


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_unsure_selecting_steps_run_again_through_the_exact_method(exported, tiny_pack, fmt):
    """Contract exact_below p (export default settings.DEFAULT_EXACT_BELOW): after a selecting decode call whose top
    token is less likely than p, the loop calls the exact method with the same token and cache_len, and that call's
    logits pick the token; every other decode call stands. Per call, for p = 0, a p between the answer's own top
    probabilities, and the default; tokens and re-run counts equal the PyTorch decoder's with the same p. Refusals
    are one line."""
    from squeezed_attention.decoder_session import DecoderSession, exact_below_of
    from squeezed_attention.generation import AttentionChoice, Generator
    from squeezed_attention.settings import DEFAULT_EXACT_BELOW, top_probability

    out, result = exported
    squeezed, full = (next(a for a in result.manifest["artifacts"] if a["format"] == fmt
                           and a["decoder"]["attention"] == att) for att in ("squeezed", "full"))
    assert squeezed["decoder"]["exact_below"] == DEFAULT_EXACT_BELOW and full["decoder"]["exact_below"] is None
    assert any(s.startswith(f"unsure steps (exact_below = {DEFAULT_EXACT_BELOW:g}") for s in squeezed["decoder"]["call_sequence"])
    pack_path, pack, model, ck = tiny_pack
    prompt, new, opening = "ab nan", 12, 2

    def answer(p):
        session = DecoderSession(out, fmt=fmt, attention="squeezed", exact_decode=opening, exact_below=p)
        session.attach(pack_path)
        calls = []
        run = session.runner.run

        def record(method, feed):
            res = run(method, feed)
            calls.append((method, len(feed["tokens"]), int(feed["cache_len"][0]), top_probability(res["logits"])))
            return res
        session.runner.run = record
        got = session.generate(prompt, max_new_tokens=new, stop_at_eos=False)
        assert session.loop.exact_below == p
        session.close()
        return got, calls, session.loop

    got0, calls0, loop = answer(0.0)
    decode_probs = sorted(c[3] for c in calls0 if c[0] == "decode")
    assert len(decode_probs) == new - 1 - opening and got0.rerun_steps == 0
    mid = len(decode_probs) // 2
    between = (decode_probs[mid - 1] + decode_probs[mid]) / 2
    assert decode_probs[mid - 1] < between < decode_probs[mid]
    for p in (0.0, between, DEFAULT_EXACT_BELOW):
        got, calls, loop = answer(p)
        answer_calls = calls[1:]                  # after the question's one prefill_exact call
        i, reruns = 0, 0
        for step in range(new - 1):
            method, width, at, prob = answer_calls[i]
            if step < opening:
                assert (method, width) == ("prefill_exact", 1)
                i += 1
                continue
            assert method == "decode"
            if prob < p:                          # unsure: the same step again, exactly, at the same cache_len
                assert answer_calls[i + 1][:3] == ("prefill_exact", 1, at)
                i, reruns = i + 2, reruns + 1
            else:
                i += 1
        assert i == len(answer_calls) and got.rerun_steps == reruns == len(loop.rerun_at)
        assert (reruns == 0) == (p == 0.0) and (p != between or 0 < reruns < new - 1 - opening)
        ref = Generator(model, ck.tokenizer, pack).generate(
            prompt, AttentionChoice("top-k", keep_keys=loop.keep_keys, backend="torch", exact_tail=loop.exact_tail,
                                    follow_keys=loop.follow, exact_decode=opening, exact_below=p),
            max_new_tokens=new, stop_at_eos=False)
        assert got.token_ids == ref.token_ids and got.rerun_steps == ref.rerun_steps, p
        assert got.to_dict()["exact_below"] == p
    # refused in one line: on full attention, out of range, or without the exact method
    with pytest.raises(SqueezeError, match="--exact-below shapes Squeezed Attention's key selection"):
        DecoderSession(out, fmt=fmt, attention="full", exact_below=0.3)
    for bad in (1.0, -0.5, "0.2"):
        with pytest.raises(SqueezeError, match="--exact-below must be a probability"):
            DecoderSession(out, fmt=fmt, attention="squeezed", exact_below=bad)
    with pytest.raises(SqueezeError, match="exported with --exact-tail 0"):
        exact_below_of({"attention": "squeezed", "exact_tail": 0}, 0.3)
    assert exact_below_of({"attention": "squeezed", "exact_tail": 4}) == 0.0      # manifests before the field
