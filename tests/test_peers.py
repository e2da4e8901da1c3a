"""bench/peers.py: the real peer builders against published sizes, export + run agreement in a fresh process,
Conv3d failures recorded as data, and the table's ratio arithmetic (plus one tiny end-to-end run)."""

import json

import pytest
import torch

from bench import peers
from bench.peers import (PAPER_SQUEEZETIME, PEERS, build_peer, count_gmacs, count_params, export_and_check,
                         latency_ratios, ordering_notes, temporal_shift)
from squeezetime import SqueezeError


# Parameter counts of the real builders at the paper's settings (400 classes). Published: pytorchvideo's model
# zoo lists X3D-XS at 3.79 M; the SqueezeTime paper lists R(2+1)D-R18 33.5, C2D-R34 21.5, TSM-R18 11.2 (the
# last one without its classifier: 11.38 - 0.205 = 11.18).
@pytest.mark.parametrize("key,params,gmacs,setting", [
    ("x3d_xs", 3_794_274, 0.839, (4, 182)),
    ("r2plus1d_r18", 33_432_945, 30.33, (8, 256)),
    ("tsm_r18", 11_381_712, 14.51, (8, 224)),
    ("c2d_r34", 21_489_872, 17.70, (8, 224)),
])
def test_real_builders_match_published_sizes(key, params, gmacs, setting):
    info = PEERS[key]
    assert (info.paper_frames, info.paper_size) == setting
    model = info.build(*setting).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    counted = count_params(model)
    paper = info.paper.params_m
    got = counted["params_without_classifier_m"] if key == "tsm_r18" else counted["params_m"]
    assert got == pytest.approx(paper, rel=0.01)
    assert count_gmacs(model, torch.randn(1, 3, *setting[:1], setting[1], setting[1])) == pytest.approx(gmacs, abs=0.01)


def test_movinet_a0_parameters():
    model = PEERS["movinet_a0"].build(50, 172)
    assert sum(p.numel() for p in model.parameters()) == 2_701_999
    # the paper's 3.1 M is MoViNet's 600-class (K600) figure: 200 more outputs on the 2048-wide last layer
    assert (2_701_999 + 2048 * 200 + 200) / 1e6 == pytest.approx(PEERS["movinet_a0"].paper.params_m, abs=0.05)


def test_paper_gflops_are_macs_at_the_paper_settings():
    # C2D and R(2+1)D reproduce the paper's GFLOPs column as multiply-accumulates within 1%
    assert count_gmacs(PEERS["c2d_r34"].build(8, 224).eval(), torch.randn(1, 3, 8, 224, 224)) == pytest.approx(17.8, rel=0.01)
    # TSM-R18's 19.0 is 8 frames at 256 x 256 (its test config crops 224)
    assert count_gmacs(PEERS["tsm_r18"].build(8, 256).eval(), torch.randn(1, 3, 8, 256, 256)) == pytest.approx(19.0, rel=0.01)


def test_measured_setting_is_the_papers_unless_the_export_spec_refuses_it():
    from squeezetime.rewrite import InputSpec

    for info in PEERS.values():
        try:
            InputSpec(frames=info.paper_frames, size=info.paper_size)
            expected = info.paper_size
        except SqueezeError:  # round down to a size the spec takes: never more work for the peer
            expected = info.paper_size // 32 * 32
        assert (info.frames, info.size) == (info.paper_frames, expected)
    assert [(p.paper_frames, p.paper_size) for p in PEERS.values()] == [(4, 182), (8, 256), (8, 224), (8, 224), (50, 172)]


def test_temporal_shift_moves_one_eighth_each_way():
    t, c = 3, 16
    x = torch.arange(t * c, dtype=torch.float32).reshape(t, c, 1, 1) + 1  # one clip, frame-major
    y = temporal_shift(x, t).reshape(t, c)
    x = x.reshape(t, c)
    assert torch.equal(y[:2, :2], x[1:, :2]) and torch.equal(y[2, :2], torch.zeros(2))  # from the next frame
    assert torch.equal(y[1:, 2:4], x[:2, 2:4]) and torch.equal(y[0, 2:4], torch.zeros(2))  # from the previous
    assert torch.equal(y[:, 4:], x[:, 4:])


def test_build_peer_tiny_and_errors():
    a, b = build_peer("tsm_r18@4x64"), build_peer("tsm_r18@4x64")
    assert not a.training
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == (2, 400) and torch.equal(ya, yb)  # seeded
    assert 0.01 < ya.abs().max() < 100  # calibrated BatchNorm keeps activations in range
    with pytest.raises(SqueezeError, match="unknown peer"):
        build_peer("i3d")
    with pytest.raises(SqueezeError, match="FRAMESxSIZE"):
        build_peer("tsm_r18@big")


@pytest.mark.parametrize("name", ["x3d_xs@4x64", "movinet_a0@8x64", "r2plus1d_r18@4x64", "tsm_r18@4x64", "c2d_r34@4x64"])
def test_no_branch_is_left_constant(name):
    # pytorchvideo zero-inits each block's last BN scale and MoViNet its ReZero alphas: left alone, whole residual
    # branches output constants and converters fold them away
    model = build_peer(name)
    assert not [n for n, p in model.named_parameters() if not n.endswith("bias") and not p.any()]
    taps = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(lambda mod, i, o: taps.append(o))
    with torch.no_grad():
        model(torch.randn(1, 3, *peers.parse_peer_name(name)[1:2], 64, 64))
        n = len(taps)
        model(torch.randn(1, 3, *peers.parse_peer_name(name)[1:2], 64, 64))
    assert n > 10 and all(not torch.equal(a, b) for a, b in zip(taps[:n], taps[n:]))  # every BN output moves


def test_export_and_run_agree_for_one_peer(tmp_path):
    dest = tmp_path / "x3d.onnx"
    res = export_and_check({"model": "peer", "name": "x3d_xs@4x64"}, "onnx", dest)
    assert res["export"]["ok"], res
    assert res["export"]["bytes"] == dest.stat().st_size > 14_000_000  # 3.79 M fp32 weights
    run = res["run"]
    assert run["ok"] and run["shape"] == [1, 400] and run["argmax_equal"]
    assert run["max_abs"] < 1e-4 and run["rel"] < 1e-5 and run["output_spread"] > 1e-2
    assert not list(tmp_path.glob(".*partial*"))


def test_conv3d_runtime_failure_is_recorded_not_raised(tmp_path):
    res = export_and_check({"model": "conv3d_probe", "frames": 4, "size": 32}, "pte", tmp_path / "probe.pte")
    assert res["export"]["ok"], res  # ExecuTorch writes the program (Conv3d left to the portable kernels) ...
    assert res["run"]["ok"] is False  # ... which cannot execute a 5-D convolution
    assert "3-D or 4-D" in res["run"]["error"] and "\n" not in res["run"]["error"]
    # a model that cannot even be built is an export failure with its one-line reason
    bad = export_and_check({"model": "peer", "name": "c2d_r34@3x64"}, "onnx", tmp_path / "odd.onnx")
    assert bad["export"]["ok"] is False and "even number of frames" in bad["export"]["error"] and bad["run"] is None
    assert not (tmp_path / "odd.onnx").exists()


def _row(key, title, paper_ms, lat):
    return {"key": key, "title": title, "frames": 8, "size": 224, "paper_frames": 8, "paper_size": 224,
            "paper": {"params_m": 1.0, "gflops": 1.0, "cpu_ms": paper_ms, "v100_clips_s": 1.0, "top1": 60.0},
            "params_m": 1.0, "params_without_classifier_m": 0.9, "gmacs": 1.0, "gmacs_paper_setting": None,
            "formats": {}, "latency": {"2": {rt: {"status": "ok", "p50_ms": v} for rt, v in lat.items()}}}


def test_ratio_arithmetic_and_ordering_notes():
    rows = [_row("squeezetime", "SqueezeTime", 123, {"pytorch": 80.0, "onnx": 40.0}),
            _row("tsm_r18", "TSM-R18", 186, {"pytorch": 120.0, "onnx": 30.0})]
    rows[1]["latency"]["2"]["tflite"] = {"status": "does not run", "detail": "x"}
    latency_ratios(rows, 2)
    st, tsm = rows
    assert st["latency"]["2"]["onnx"]["vs_squeezetime"] == 1.0
    assert tsm["latency"]["2"]["pytorch"]["vs_squeezetime"] == pytest.approx(1.5)
    assert tsm["latency"]["2"]["onnx"]["vs_squeezetime"] == pytest.approx(0.75)
    assert "vs_squeezetime" not in tsm["latency"]["2"]["tflite"]
    assert tsm["paper_cpu_vs_squeezetime"] == pytest.approx(186 / PAPER_SQUEEZETIME.cpu_ms)
    report = {"rows": rows, "threads": [2], "runtimes": ["pytorch", "onnx"], "formats": []}
    notes = ordering_notes(report)
    assert any(n.startswith("TSM-R18 is faster than SqueezeTime in onnxruntime") and "0.75x" in n for n in notes)
    assert not any("faster than SqueezeTime in PyTorch eager" in n for n in notes)


def test_reuse_only_matching_intact_artifacts(tmp_path):
    from bench.peers import _reusable

    dest, record = tmp_path / "m.onnx", tmp_path / "m.onnx.check.json"
    dest.write_bytes(b"x" * 10)
    key = {"ref": {"model": "peer", "name": "tsm_r18"}, "format": "onnx", "tools": {"onnx": "1.23.2"}}
    result = {"export": {"ok": True, "bytes": 10}, "run": {"ok": True, "max_abs": 0.0}}
    record.write_text(json.dumps({**key, "result": result}))
    assert _reusable(record, key, dest) == result
    assert _reusable(record, {**key, "tools": {"onnx": "1.24.0"}}, dest) is None  # other tool versions
    assert _reusable(record, {**key, "format": "tflite"}, dest) is None
    dest.write_bytes(b"x" * 11)  # artifact changed since
    assert _reusable(record, key, dest) is None
    assert _reusable(tmp_path / "missing.json", key, dest) is None


def test_tiny_end_to_end_report(tmp_path):
    report = peers.run_peers_benchmark(tmp_path, formats=("onnx",), threads=(1,), runs=2, warmup=0,
                                       peers=("tsm_r18@4x64",), squeezetime_input=(4, 64))
    st, tsm = report["rows"]
    assert (st["key"], tsm["key"]) == ("squeezetime", "tsm_r18")
    for row in (st, tsm):
        assert row["formats"]["onnx"]["run"]["ok"], row["formats"]
        for rt in ("pytorch", "onnx"):
            assert row["latency"]["1"][rt]["status"] == "ok", row["latency"]
    assert tsm["latency"]["1"]["onnx"]["vs_squeezetime"] == pytest.approx(
        tsm["latency"]["1"]["onnx"]["p50_ms"] / st["latency"]["1"]["onnx"]["p50_ms"])
    # SqueezeTime K400: 28.887 M backbone + 0.82 M head at 16 frames; 4 frames shrink the 5x5 stem from 48 to 12
    # input channels (36 x 64 x 25 weights fewer). TSM-R18's parameters do not depend on the input.
    assert st["params_m"] == pytest.approx(28.887 + 0.8204 - 36 * 64 * 25 / 1e6, abs=2e-3)
    assert tsm["params_m"] == pytest.approx(11.381712)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| TSM-R18 | 4x64 (paper 8x224) |" in md and "reduced input" in md
