"""Fixes for what the stop-46 sweeps left open: casts of the video model, exit codes, and the like."""

import json

import pytest
import torch

from squeeze_mobile.errors import SqueezeError


@pytest.fixture(scope="module")
def small_seeded():
    from squeezetime.model import seeded_model

    return lambda: seeded_model("hmdb51", seed=3, frames=4, width=0.25)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double"])
def test_predict_video_takes_a_cast_model(small_seeded, real_video, cast):
    """A model cast with .half() / .bfloat16() / .double() ended in PyTorch's 'Input type (float) and bias type should
    be the same'; it now classifies, with the float32 model's top classes."""
    from squeezetime.predict import predict_video

    ref = predict_video(small_seeded(), real_video, top=3)
    out = predict_video(getattr(small_seeded(), cast)(), real_video, top=3)
    assert [p.index for p in out][:1] == [p.index for p in ref][:1]
    assert out[0].probability == pytest.approx(ref[0].probability, abs=0.02)
    assert all(isinstance(p.probability, float) for p in out)


def test_a_model_of_mixed_dtypes_is_one_line(small_seeded, real_video):
    from squeezetime.predict import predict_video

    model = small_seeded()
    model.cls_head.fc_cls.half()
    with pytest.raises(SqueezeError, match=r"several dtypes or devices \(float16 on cpu, float32 on cpu\)"):
        predict_video(model, real_video)


def test_export_of_a_half_model_exports_its_float32_copy(small_seeded, tmp_path):
    from export.pipeline import export_squeezetime
    from squeezetime.rewrite import InputSpec

    model = small_seeded().half()
    result = export_squeezetime(model, tmp_path / "o", formats="onnx", spec=InputSpec(frames=4, size=64))
    assert result.ok, result.failures
    assert next(model.parameters()).dtype == torch.float16   # the user's model is left as it was
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [a["verification"]["status"] for a in manifest["artifacts"]] == ["pass"]


def _kept_fractions(gen, fractions, hierarchical, per_query_head):
    from squeezed_attention.generation import AttentionChoice, make_context

    ids = torch.tensor(gen.prompt_ids("What is the pass key? Answer with the number only."))
    out = []
    for f in fractions:
        ctx = make_context(gen.pack, AttentionChoice("threshold", keep_fraction=f, prefill_tail=0, exact_tail=0, exact_head=0,
                                                     hierarchical=hierarchical, per_query_head=per_query_head), gen.tables)
        gen.model.step(ids, gen.model.new_cache(len(ids)), position_offset=gen.pack.num_tokens, context=ctx)
        out.append(ctx.stats.mean_kept() / gen.pack.num_clustered)
    return out


@pytest.mark.parametrize("per_query_head", [False, True])
def test_hierarchical_threshold_mode_keeps_about_the_asked_fraction(per_query_head):
    """Threshold mode with the hierarchical lookup used the flat lookup's thresholds, whose scores are normalised over
    every centroid, not over the level-1 ones: it kept 0.26 of the keys at --threshold-keep 0.1 and 0.42 at 0.2. Its
    own thresholds are now calibrated at build; it keeps what the flat lookup keeps, within a small factor, and more
    at a larger fraction."""
    from squeezed_attention.testing import small_generator

    gen = small_generator(hierarchical=True)
    assert gen.pack.l1_thresholds_group is not None and gen.pack.l1_thresholds_head is not None
    for table in (gen.pack.l1_thresholds_group, gen.pack.l1_thresholds_head):
        assert bool((table[1:] <= table[:-1]).all())   # non-increasing with the keep fraction
    fractions = [0.1, 0.2, 0.33]
    kept = _kept_fractions(gen, fractions, True, per_query_head)
    assert all(0.5 * f < k < 1.4 * f for f, k in zip(fractions, kept)), kept
    assert kept == sorted(kept), kept


def test_a_pack_without_hierarchical_thresholds_refuses_threshold_with_hierarchical(tmp_path):
    import dataclasses

    from squeezed_attention.generation import AttentionChoice, make_context
    from squeezed_attention.pack import read_context_pack, save_context_pack
    from squeezed_attention.testing import small_pack

    pack = dataclasses.replace(small_pack(hierarchical=True), l1_thresholds_group=None, l1_thresholds_head=None)
    path = save_context_pack(pack, tmp_path / "old.pack")   # as packs built before the calibration were
    again = read_context_pack(path)
    assert again.l1_thresholds_group is None and again.l1_centroids is not None
    with pytest.raises(SqueezeError, match="no thresholds calibrated for the hierarchical lookup"):
        make_context(again, AttentionChoice("threshold", keep_fraction=0.2, hierarchical=True))
    make_context(again, AttentionChoice("threshold", keep_fraction=0.2))   # the flat lookup still works
    stored = save_context_pack(small_pack(hierarchical=True), tmp_path / "new.pack")
    assert torch.equal(read_context_pack(stored).l1_thresholds_head, small_pack(hierarchical=True).l1_thresholds_head)


def test_a_crlf_context_gives_one_pack_whichever_way_it_is_read(tmp_path):
    """A pack built from a CRLF file as a Path kept the CRs; checked against open(f).read() (which drops them) it was
    refused as 'built from a different context text', and the other way round."""
    from squeezed_attention.pack_arrays import check_context_hash, context_text_of, text_sha256

    lf = "First line of the manual.\nSecond line.\n\nThird paragraph.\n"
    (tmp_path / "crlf.txt").write_bytes(lf.replace("\n", "\r\n").encode())
    (tmp_path / "cr.txt").write_bytes(lf.replace("\n", "\r").encode())
    forms = [tmp_path / "crlf.txt", open(tmp_path / "crlf.txt").read(), open(tmp_path / "crlf.txt", newline="").read(),
             tmp_path / "cr.txt", lf]
    assert {context_text_of(f) for f in forms} == {lf}
    for f in forms:
        check_context_hash(text_sha256(lf), f)


def test_the_sweep_leaves_temporaries_of_writers_on_other_hosts(tmp_path):
    """A leftover's pid was checked on this machine whoever wrote it: a folder on a network mount (or a volume shared
    by containers) lost a live writer's temporary when its pid meant no process here. Temporaries now carry a tag of
    the writer's host, boot and PID namespace, and only this one's dead writers are swept."""
    import subprocess
    import sys

    from squeeze_mobile.atomic import _writer_tag, atomic_path, sweep_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f".model.partial-{_writer_tag()}-{dead.pid}-abcd1234.onnx"
    other_host = tmp_path / f".model.partial-h0000000-{dead.pid}-abcd1234.onnx"
    older_version = tmp_path / f".model.partial-{dead.pid}-abcd1234.onnx"   # names written before the tag
    for p in (mine, other_host, older_version):
        p.write_bytes(b"x")
    assert sweep_partials(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [other_host.name]
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert tmp.name.startswith(f".a.partial-{_writer_tag()}-")
        tmp.write_text("a")


@pytest.mark.parametrize("which", ["INT", "TERM"])
def test_an_ignored_signal_stays_ignored(tmp_path, which):
    """A command started with SIGINT ignored (`cmd &` in a script) or SIGTERM ignored (trap '' TERM) was stopped by it:
    the CLI's handlers replaced the ignore. Held signals (DeferredSignals) and sigterm_raises now leave it ignored."""
    import os
    import signal
    import subprocess
    import sys

    code = f"""
import os, signal, time
from squeeze_mobile.signals import DeferredSignals, sigterm_raises
with sigterm_raises():
    with DeferredSignals() as held:
        os.kill(os.getpid(), signal.SIG{which})
        time.sleep(0.2)
        held.check()
print("still running", held.pending)
"""
    ignore = getattr(signal, f"SIG{which}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(ignore, signal.SIG_IGN),
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0 and "still running False" in proc.stdout, proc.stderr


def test_a_truncated_pack_in_the_bench_cache_is_rebuilt(tmp_path):
    """`squeeze bench DIR` caches its prose packs in DIR/bench/packs; one cut short (a full disk, a killed copy) made
    every later bench fail: the rebuild refused to overwrite a file that is not a context pack."""
    from bench.decoder import bench_packs
    from squeezed_attention.pack_arrays import read_pack_arrays
    from squeezed_attention.testing import write_tiny_llama_gguf
    from squeezed_attention.weights import load_checkpoint

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    ck = load_checkpoint(gguf)
    manifest = {"model": {"source": str(gguf), "weights_sha256": ck.weights_sha256,
                          "tokenizer_sha256": ck.tokenizer.fingerprint()},
                "artifacts": [{"file": "d.onnx", "decoder": {"shapes": {"max_context": 200}}}]}
    packs = tmp_path / "bench" / "packs"
    (first,) = bench_packs(manifest, [200], packs, lambda *a: None)
    whole = packs / "prose_200.pack"
    data = whole.read_bytes()
    for cut in (5, len(data) // 3):   # too short to hold its header (refused as 'not a context pack'); cut later
        whole.write_bytes(data[:cut])
        (again,) = bench_packs(manifest, [200], packs, lambda *a: None)
        assert again["path"] == first["path"] and whole.stat().st_size == len(data)
        read_pack_arrays(whole).check_model(ck.weights_sha256, ck.tokenizer.fingerprint())


def test_verify_refuses_the_other_models_options(tmp_path, capsys):
    from export.cli import main

    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "squeeze-mobile/manifest/1", "artifacts": []}))
    assert main(["verify", str(tmp_path), "--model", "m.gguf", "--verify-text", "doc.txt"]) == 1
    err = capsys.readouterr().err
    assert "--model and --verify-text do not apply to a SqueezeTime export; use --checkpoint and --verify-video" in err
