"""bench/: statistics, the host report on a tiny real artifact (fp32, and fp32 next to a real int8 quantization of
it), Android command construction and output parsers (on recorded tool output), missing-tool errors, and GPU mode
without CUDA. The machine-peak probe has its own tests (test_peak_probe.py)."""

import json
import stat
from pathlib import Path

import pytest

from bench import android
from bench.stats import summarize
from export.cli import main
from squeezetime import SqueezeError

DATA = Path(__file__).with_name("data") / "android"


def test_summarize_percentiles():
    s = summarize([0.010, 0.012, 0.011, 0.050, 0.013], batch=2)
    assert s["runs"] == 5 and s["min_ms"] == pytest.approx(10.0) and s["max_ms"] == pytest.approx(50.0)
    assert s["p50_ms"] == pytest.approx(12.0)
    assert s["p90_ms"] == pytest.approx(35.2)  # numpy linear interpolation between 13 and 50
    assert s["clips_per_s"] == pytest.approx(2 * 1000 / 12.0)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["export", "squeezetime", "--config", "hmdb51", "--frames", "4", "--size", "64",
                 "--formats", "onnx", "--out", str(out)]) == 0
    return out


def test_host_report_on_tiny_artifact(tiny_export, tmp_path):
    from bench.host import run_host_benchmark

    report = run_host_benchmark(tiny_export, threads=(1,), runs=4, warmup=1, out_dir=tmp_path, probe_seconds=0.01)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"pytorch-eager", "pytorch-eager-rewritten", "onnx"}
    # the machine reference is the native probe's fp32 FMA peak (1 thread and every benchmarked count), not sgemm
    peaks = report["machine"]["peaks"]
    assert peaks["status"] == "ok", peaks
    assert "matmul_gflops" not in report and all("pct_of_matmul" not in r for r in rows.values())
    fma = peaks["fp32"]["gops"]["1"]
    assert fma == max(peaks["fp32"]["runs_gops"]["1"]) and len(peaks["fp32"]["runs_gops"]["1"]) == 2  # before + after
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["runs"] == 4 and r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["load_s"] > 0 and r["peak_rss_mb"] > r["rss_before_load_mb"] > 50
        assert r["achieved_gflops"] == pytest.approx(report["model"]["gflop_per_clip"] / (r["p50_ms"] / 1e3))
        assert r["precision"] == "fp32" and r["peak_reference"] == "fp32 FMA" and r["peak_gops"] == fma
        assert r["pct_of_peak"] == pytest.approx(100 * r["achieved_gflops"] / fma)
    assert rows["pytorch-eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert rows["onnx"]["speedup_vs_eager"] == pytest.approx(rows["pytorch-eager"]["p50_ms"] / rows["onnx"]["p50_ms"])
    assert rows["onnx"]["bytes"] == (tiny_export / rows["onnx"]["file"]).stat().st_size
    assert report["int8_vs_fp32"] == []  # an fp32-only export has no pairs
    # width-1.0 HMDB51 network at 4 x 64 x 64: FLOPs counted from the module
    assert 0.5 < report["model"]["gflop_per_clip"] < 1.5
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["machine"]["peaks"] == json.loads(json.dumps(peaks))
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| onnxruntime (CPU) | fp32 |" in md and "% of peak" in md and "matmul" not in md
    assert f"- fp32 FMA peak ({peaks['fp32']['isa']}, 12 independent chains): 1 thread {fma:.0f}" in md
    onnx_line = next(l for l in md.splitlines() if l.startswith("| onnxruntime (CPU) |"))
    assert f"| {rows['onnx']['pct_of_peak']:.0f}% |" in onnx_line


def _int8_copy(tiny_export, dest):
    """The tiny export plus a real int8 ONNX of the same model (onnxruntime's dynamic quantization: ConvInteger),
    described by a manifest entry like the int8 export writes, listed first so the bench must reorder."""
    import hashlib
    import os
    import shutil

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the 115 MB model as a hard link (read only here); everything else, the manifest above all, as a copy
    shutil.copytree(tiny_export, dest, copy_function=lambda src, dst: (os.link if src.endswith(".onnx") else
                                                                       shutil.copy2)(src, dst))
    manifest = json.loads((dest / "manifest.json").read_text())
    fp32 = manifest["artifacts"][0]
    model = onnx.load(str(dest / fp32["file"]))
    # the dynamo exporter's value_info trips the quantizer's shape inference ("2048 vs 51" at fc.weight)
    del model.graph.value_info[:]
    plain = dest / "plain.onnx"
    onnx.save(model, str(plain))
    int8_file = fp32["file"].replace("_fp32.onnx", "_int8.onnx")
    quantize_dynamic(str(plain), str(dest / int8_file), weight_type=QuantType.QUInt8)
    plain.unlink()
    data = (dest / int8_file).read_bytes()
    int8 = {**{k: v for k, v in fp32.items() if k != "verification"}, "file": int8_file, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "precision": "int8"}
    manifest["artifacts"] = [int8, fp32]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return fp32["file"], int8_file


def test_int8_next_to_fp32_in_one_run(tiny_export, tmp_path):
    """Two artifacts of one runtime, fp32 and a real int8 quantization: both timed in the same run, back to back,
    each against its own peak, and the int8/fp32 p50 ratio reported in the rows, the pairs and the table."""
    from bench.host import run_host_benchmark

    fp32_file, int8_file = _int8_copy(tiny_export, tmp_path / "art")
    report = run_host_benchmark(tmp_path / "art", threads=(1,), runs=3, warmup=1, out_dir=tmp_path / "rep",
                                include_eager=False, probe_seconds=0.01)
    assert [(r["name"], r["file"], r["precision"]) for r in report["rows"]] == [
        ("onnx", fp32_file, "fp32"), ("onnx-int8", int8_file, "int8")]  # fp32 first, int8 right after
    fp32, int8 = report["rows"]
    assert fp32["status"] == int8["status"] == "ok" and fp32["runtime"] == int8["runtime"] == "onnxruntime (CPU)"
    assert int8["bytes"] < fp32["bytes"] / 3  # int8 weights: ~4x smaller
    peaks = report["machine"]["peaks"]
    assert peaks["int8"]["gops"]["1"] > peaks["fp32"]["gops"]["1"] > 0
    assert fp32["peak_reference"] == "fp32 FMA" and int8["peak_reference"] == "int8 dot product"
    assert fp32["pct_of_peak"] == pytest.approx(100 * fp32["achieved_gflops"] / peaks["fp32"]["gops"]["1"])
    assert int8["pct_of_peak"] == pytest.approx(100 * int8["achieved_gflops"] / peaks["int8"]["gops"]["1"])
    ratio = int8["p50_ms"] / fp32["p50_ms"]
    assert int8["int8_fp32_latency_ratio"] == pytest.approx(ratio) and "int8_fp32_latency_ratio" not in fp32
    assert report["int8_vs_fp32"] == [{
        "runtime": "onnxruntime (CPU)", "format": "onnx", "threads": 1, "fp32_file": fp32_file, "int8_file": int8_file,
        "fp32_p50_ms": fp32["p50_ms"], "int8_p50_ms": int8["p50_ms"], "int8_fp32_latency_ratio": pytest.approx(ratio),
        "int8_speedup": pytest.approx(1 / ratio)}]
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["int8_vs_fp32"] == json.loads(json.dumps(report["int8_vs_fp32"]))
    md = (tmp_path / "rep" / "report.md").read_text()
    int8_row = next(l for l in md.splitlines() if l.startswith("| onnxruntime (CPU) | int8 |"))
    assert int8_row.endswith(f"| {int8['pct_of_peak']:.0f}% | - | {ratio:.2f} |")
    assert (f"| onnxruntime (CPU) | 1 | {fp32['p50_ms']:.1f} | {int8['p50_ms']:.1f} | {ratio:.2f} | {1 / ratio:.2f}x |"
            in md)
    assert f"- int8 dot-product peak ({peaks['int8']['isa']}" in md


def test_int8_pairs_match_runtime_threads_and_file():
    """Pairing rules on fabricated rows: same format, runtime and thread count; among several fp32 files of one
    runtime the one named like the int8 file; failed rows and unmatched precisions get no ratio."""
    from bench.host import precision_pairs

    def row(fmt, precision, file, threads, p50, status="ok", runtime=None):
        return {"name": fmt, "format": fmt, "precision": precision, "file": file, "threads": threads, "status": status,
                "p50_ms": p50, "runtime": runtime or {"pte": "ExecuTorch (XNNPACK)", "onnx": "onnxruntime (CPU)",
                                                       "tflite": "LiteRT interpreter (XNNPACK)"}[fmt]}

    rows = [row("pte", "fp32", "m_fp32_xnnpack.pte", 2, 100.0), row("pte", "fp32", "m_fp32_coreml.pte", 2, 80.0),
            row("pte", "int8", "m_int8_xnnpack.pte", 2, 40.0), row("pte", "int8", "m_int8_xnnpack.pte", 1, 70.0),
            row("pte", "fp32", "m_fp32_xnnpack.pte", 1, 140.0),
            row("onnx", "fp32", "m_fp32.onnx", 2, 50.0), row("onnx", "fp16", "m_fp16.onnx", 2, 60.0),
            row("tflite", "fp32", "m_fp32.tflite", 2, 0, status="error"), row("tflite", "int8", "m_int8.tflite", 2, 30.0)]
    pairs = precision_pairs(rows)
    assert [(p["format"], p["threads"], p["fp32_file"], p["int8_file"], p["int8_fp32_latency_ratio"]) for p in pairs] == [
        ("pte", 2, "m_fp32_xnnpack.pte", "m_int8_xnnpack.pte", pytest.approx(0.4)),
        ("pte", 1, "m_fp32_xnnpack.pte", "m_int8_xnnpack.pte", pytest.approx(0.5))]
    assert rows[2]["int8_fp32_latency_ratio"] == pytest.approx(0.4)
    assert "int8_fp32_latency_ratio" not in rows[8]  # its fp32 partner failed
    assert all("int8_fp32_latency_ratio" not in r for r in rows if r["precision"] != "int8")


def test_bench_cli_errors(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 1
    assert "has no manifest.json" in capsys.readouterr().err
    assert main(["bench", str(tmp_path), "--threads", "two"]) == 2   # a usage error, as for --runs
    assert "argument --threads: expected an integer, got 'two'" in capsys.readouterr().err


def test_parse_benchmark_model_fixture():
    r = android.parse_benchmark_model((DATA / "benchmark_model_pixel.txt").read_text())
    assert r["runs"] == 20  # the measured runs, not the 3 warm-up runs
    assert r["avg_ms"] == pytest.approx(140.611) and r["min_ms"] == pytest.approx(137.215)
    assert r["p50_ms"] == pytest.approx(139.964) and r["max_ms"] == pytest.approx(149.320)
    assert r["load_s"] == pytest.approx(0.212874) and r["peak_rss_mb"] == pytest.approx(171.254)
    with pytest.raises(SqueezeError, match="no timing line"):
        android.parse_benchmark_model("INFO: STARTING!\nSegmentation fault\n")


def test_parse_executor_runner_fixture():
    r = android.parse_executor_runner((DATA / "executor_runner_pixel.txt").read_text())
    assert r["runs"] == 20 and r["avg_ms"] == pytest.approx(135.2562)
    with pytest.raises(SqueezeError, match="did not report a successful run"):
        android.parse_executor_runner("E 00:00:00.1 executorch:executor_runner.cpp:99] Loading of program failed")


def test_command_construction():
    cmd = android.benchmark_model_command("/data/local/tmp/squeeze/benchmark_model", "/d/m.tflite", 4, 20, 3, "f0")
    assert cmd == ("taskset f0 /data/local/tmp/squeeze/benchmark_model --graph=/d/m.tflite --num_threads=4 "
                   "--num_runs=20 --warmup_runs=3 --min_secs=0 --warmup_min_secs=0 --use_xnnpack=true "
                   "--report_peak_memory_footprint=true")
    cmd = android.executor_runner_command("/d/executor_runner", "/d/m.pte", 2, 10, None)
    assert cmd == "/d/executor_runner --model_path=/d/m.pte --num_executions=10 --cpu_threads=2"


def _fake_adb(tmp_path, devices="emulator-5554\tdevice\n"):
    """An adb stand-in that records its arguments and answers like a phone with the recorded tool output."""
    log = tmp_path / "adb.log"
    script = tmp_path / "adb"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in
  devices*) printf 'List of devices attached\\n{devices}' ;;
  *getprop*) echo "Pixel 8" ;;
  *benchmark_model*) cat {DATA / 'benchmark_model_pixel.txt'} ;;
  *executor_runner*) cat {DATA / 'executor_runner_pixel.txt'} ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def test_android_end_to_end_with_recorded_phone(tmp_path, monkeypatch):
    art = tmp_path / "art"
    art.mkdir()
    (art / "m.tflite").write_bytes(b"tfl3")
    (art / "m.pte").write_bytes(b"pte")
    manifest = {"schema": "squeeze-mobile/manifest/1", "model": {"config": {"name": "k400"}},
                "input": {"format": "clip", "shape": [1, 3, 16, 224, 224]},
                "artifacts": [{"format": "tflite", "file": "m.tflite", "bytes": 4, "precision": "fp32"},
                              {"format": "pte", "file": "m.pte", "bytes": 3, "precision": "fp32"}]}
    (art / "manifest.json").write_text(json.dumps(manifest))
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "benchmark_model").write_bytes(b"\x7fELF")
    (bins / "executor_runner").write_bytes(b"\x7fELF")
    adb, log = _fake_adb(tmp_path)
    monkeypatch.setenv("ADB", str(adb))
    report = android.run_android_benchmark(art, tflite_benchmark=str(bins / "benchmark_model"),
                                           pte_runner=str(bins / "executor_runner"), threads=(4,), runs=20,
                                           warmup=3, cpu_mask="f0", out_dir=tmp_path / "rep")
    calls = log.read_text().splitlines()
    assert "-s emulator-5554 push " + str(bins / "benchmark_model") + " /data/local/tmp/squeeze/benchmark_model" in calls
    assert any(c.endswith("shell taskset f0 /data/local/tmp/squeeze/executor_runner "
                          "--model_path=/data/local/tmp/squeeze/m.pte --num_executions=20 --cpu_threads=4") for c in calls)
    rows = {r["format"]: r for r in report["rows"]}
    assert rows["tflite"]["p50_ms"] == pytest.approx(139.964) and not rows["tflite"]["p50_is_average"]
    assert rows["pte"]["p50_ms"] == pytest.approx(135.2562) and rows["pte"]["p50_is_average"]
    assert report["machine"]["device"] == "Pixel 8"
    assert "135.3*" in (tmp_path / "rep" / "report.md").read_text()


def test_android_missing_pieces(tmp_path, monkeypatch):
    art = tmp_path / "art"
    art.mkdir()
    manifest = {"schema": "squeeze-mobile/manifest/1", "model": {"config": {"name": "k400"}},
                "input": {"format": "clip", "shape": [1, 3, 16, 224, 224]},
                "artifacts": [{"format": "tflite", "file": "m.tflite", "bytes": 4, "precision": "fp32"}]}
    (art / "manifest.json").write_text(json.dumps(manifest))
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    with pytest.raises(SqueezeError, match="need --tflite-benchmark PATH"):
        android.run_android_benchmark(art)
    with pytest.raises(SqueezeError, match="--tflite-benchmark /nope does not exist"):
        android.run_android_benchmark(art, tflite_benchmark="/nope")
    # the artifacts are checked against the manifest before the phone is looked for (like `squeeze verify`)
    with pytest.raises(SqueezeError, match=r"artifact missing: m.tflite is not in .* \(nothing was run\)"):
        android.run_android_benchmark(art, tflite_benchmark=str(binary))
    (art / "m.tflite").write_bytes(b"tfl3")
    manifest["artifacts"][0]["sha256"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SqueezeError, match="m.tflite differs from the file the manifest describes"):
        android.run_android_benchmark(art, tflite_benchmark=str(binary))
    del manifest["artifacts"][0]["sha256"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SqueezeError, match="holds no pte artifact to run on a phone"):
        android.run_android_benchmark(art, tflite_benchmark=str(binary), formats=["pte"])
    monkeypatch.delenv("ADB", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SqueezeError, match="adb not found"):
        android.run_android_benchmark(art, tflite_benchmark=str(binary))
    adb, _ = _fake_adb(tmp_path, devices="")
    monkeypatch.setenv("ADB", str(adb))
    with pytest.raises(SqueezeError, match="no Android device attached"):
        android.run_android_benchmark(art, tflite_benchmark=str(binary))
    with pytest.raises(SqueezeError, match="device ZX1 is not attached"):
        android.run_android_benchmark(art, serial="ZX1", tflite_benchmark=str(binary))


def test_gpu_mode_skips_without_cuda(tmp_path, capsys):
    import torch

    from bench.gpu import run_gpu_benchmark

    if torch.cuda.is_available():
        pytest.skip("this test is about machines without CUDA")
    # the Python API stays safe to call anywhere: it writes a "skipped" report ...
    run_gpu_benchmark(out_dir=tmp_path, progress=lambda stage, message: print(message))
    out = capsys.readouterr()
    assert "skipped: no CUDA device" in out.out + out.err
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["status"] == "skipped"
    # ... while `squeeze bench --gpu` asked for a GPU benchmark: without CUDA that is an error (issue 10)
    assert main(["bench", "--gpu", "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu needs a CUDA GPU") and len(err.splitlines()) == 1
    assert not (tmp_path / "cli").exists()


def test_relative_dir_and_failing_rows(tiny_export, tmp_path, monkeypatch, capsys):
    """A relative DIR works (the workers run elsewhere); a failing row makes the exit status 1; one-line cells."""
    import shutil

    d = tmp_path / "art"
    shutil.copytree(tiny_export, d)
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "broken.tflite").write_bytes(b"not a flatbuffer\nat all")
    manifest["artifacts"].append({"format": "tflite", "file": "broken.tflite", "bytes": 24, "precision": "fp32"})
    (d / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "art", "--threads", "1", "--runs", "2", "--warmup", "0", "--no-eager"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = {r["name"]: r for r in json.loads((d / "bench" / "report.json").read_text())["rows"]}
    assert rows["onnx"]["status"] == "ok" and rows["tflite"]["status"] == "error"
    assert "\n" not in rows["tflite"]["detail"]
    table = [l for l in out.splitlines() if l.startswith("| ")]
    assert len(table) == 3 and all(l.endswith("|") for l in table)  # header + 2 rows, each on one line
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "1 of 2 benchmark row(s) failed (first: tflite at 1 thread(s)" in errors[0]
    assert not out.startswith("\n")


def test_markdown_cells_stay_on_one_line():
    from bench.report import markdown

    report = {"model": {"config": "k400", "input": {"format": "clip", "shape": [1]}}, "machine": {"cpu": "x"},
              "runs": 1, "warmup": 0, "rows": [{"name": "onnx", "file": "m.onnx", "threads": 1, "status": "error",
                                                "detail": "RuntimeError: first line\nsecond | line"}]}
    rows = [l for l in markdown(report).splitlines() if l.startswith("| onnx")]
    assert rows == ["| onnx | - | m.onnx | 1 | error: RuntimeError: first line second / line ||||||||||||"]
    header = next(l for l in markdown(report).splitlines() if l.startswith("| runtime"))
    assert header.count("|") == rows[0].count("|")  # the error row spans exactly the table's columns


def test_report_title_fits_the_figure():
    from bench.report import figure

    peaks = {"status": "ok", "fp32": {"gops": {"1": 50.0}}, "int8": {"gops": {"1": 200.0}}}
    for rows in ([{"status": "ok", "runtime": "onnxruntime (CPU)", "threads": 1, "p50_ms": 20.0, "precision": "fp32"}],
                 [{"status": "ok", "runtime": "onnxruntime (CPU)", "threads": 1, "p50_ms": 20.0, "precision": "fp32"},
                  {"status": "ok", "runtime": "onnxruntime (CPU)", "threads": 1, "p50_ms": 9.0, "precision": "int8"}]):
        fig = figure({"model": {"gflop_per_clip": 1.0}, "machine": {"peaks": peaks}, "rows": rows})
        fig.canvas.draw()
        ax = fig.axes[0]
        title = ax.title.get_window_extent()
        assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "onnxruntime (CPU)", "onnxruntime (CPU) int8"][:len(rows)]  # one bar per runtime and precision
        # the compute bounds: 1 GFLOP at 50 GFLOP/s (fp32) and, with an int8 row, at 200 GOP/s (int8)
        assert sorted(line.get_ydata()[0] for line in ax.get_lines()) == pytest.approx([5.0, 20.0][2 - len(rows):])


@pytest.fixture(scope="module")
def ckpt_export(tmp_path_factory):
    """A small checkpoint (10 classes, width 0.25) exported to ONNX at 4 x 32 x 32: (checkpoint, export dir)."""
    import torch

    import squeezetime

    torch.manual_seed(7)
    ckpt = tmp_path_factory.mktemp("ckpt") / "small.pth"
    squeezetime.save_checkpoint(squeezetime.build_model("k400", frames=4, width=0.25, num_classes=10).eval(), ckpt)
    out = tmp_path_factory.mktemp("small_export")
    assert main(["export", "squeezetime", "--checkpoint", str(ckpt), "--size", "32", "--formats", "onnx",
                 "--out", str(out)]) == 0
    return ckpt, out


def _copy_export(src, dest, extra_tflite=False):
    import shutil

    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if extra_tflite:  # a second format in the manifest, one that cannot run (it must not be run with --formats onnx)
        (dest / "m.tflite").write_bytes(b"not a flatbuffer")
        manifest["artifacts"].append({"format": "tflite", "file": "m.tflite", "bytes": 16, "precision": "fp32"})
        (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest, manifest


def test_bench_formats_selects_rows(ckpt_export, tmp_path, capsys):
    """--formats benchmarks only those formats' artifacts (the eager reference follows --no-eager)."""
    d, _ = _copy_export(ckpt_export[1], tmp_path / "art", extra_tflite=True)
    assert main(["bench", str(d), "--formats", "onnx", "--no-eager", "--threads", "1", "--runs", "2", "--warmup",
                 "0"]) == 0
    capsys.readouterr()
    rows = json.loads((d / "bench" / "report.json").read_text())["rows"]
    assert [(r["format"], r["status"]) for r in rows] == [("onnx", "ok")]


def test_bench_checks_artifacts_against_the_manifest(ckpt_export, tmp_path):
    """Like `squeeze verify`: an artifact that differs from its manifest record (sha256) or is missing fails its rows
    with one line, without being run (no runtime log); the others still run."""
    from bench.host import run_host_benchmark

    d, manifest = _copy_export(ckpt_export[1], tmp_path / "art", extra_tflite=True)
    onnx = d / manifest["artifacts"][0]["file"]
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    (d / "m.tflite").unlink()
    report = run_host_benchmark(d, threads=(1,), runs=2, warmup=0, out_dir=tmp_path / "rep", include_eager=False,
                                probe_seconds=0.01)
    rows = {r["format"]: r for r in report["rows"]}
    assert rows["onnx"]["status"] == rows["tflite"]["status"] == "error"
    assert rows["onnx"]["detail"] == (f"{onnx.name} differs from the file the manifest describes (sha256 differs from "
                                      "the manifest); re-export it")
    assert rows["tflite"]["detail"] == f"artifact missing: m.tflite is not in {d}"


def test_bench_interrupted_leaves_no_report_folder(ckpt_export, tmp_path):
    from bench.host import run_host_benchmark

    d, _ = _copy_export(ckpt_export[1], tmp_path / "art")

    def interrupt(stage, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_host_benchmark(d, threads=(1,), runs=2, warmup=0, progress=interrupt)
    assert not (d / "bench").exists()


def test_bench_eager_rows_with_a_moved_checkpoint(ckpt_export, tmp_path):
    """The eager rows rebuild the model from the recorded checkpoint: gone -> one-line row error that names
    --checkpoint; --checkpoint PATH (the same sha256) -> they run; another file -> refused before anything runs."""
    import shutil

    from bench.host import run_host_benchmark

    ckpt, out = ckpt_export
    d, manifest = _copy_export(out, tmp_path / "art")
    manifest["model"]["source"]["path"] = str(tmp_path / "gone.pth")
    (d / "manifest.json").write_text(json.dumps(manifest))
    kw = dict(threads=(1,), runs=2, warmup=0, out_dir=tmp_path / "rep", probe_seconds=0.01)
    rows = {r["name"]: r for r in run_host_benchmark(d, **kw)["rows"]}
    assert rows["pytorch-eager"]["status"] == "error" and "is gone" in rows["pytorch-eager"]["detail"]
    assert "--checkpoint PATH" in rows["pytorch-eager"]["detail"] and rows["onnx"]["status"] == "ok"
    moved = tmp_path / "moved.pth"
    shutil.copyfile(ckpt, moved)
    rows = {r["name"]: r for r in run_host_benchmark(d, checkpoint=moved, **kw)["rows"]}
    assert {n: r["status"] for n, r in rows.items()} == {"pytorch-eager": "ok", "pytorch-eager-rewritten": "ok",
                                                          "onnx": "ok"}
    other = tmp_path / "other.pth"
    other.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(SqueezeError, match="is not the checkpoint this export came from"):
        run_host_benchmark(d, checkpoint=other, **kw)
    # the CLI has the option
    assert main(["bench", str(d), "--checkpoint", str(other)]) == 1


def test_decode_memory_floor_counts_the_bytes_a_step_reads():
    """bench/memory_floor.py on the real SmolLM2-135M shapes of an exported 7.8k decoder (worked out by hand):
    weights 134,479,872 parameters in the linears and the head; a key + value row of all 30 layers x 3 KV heads x 64
    dims in float32 is 46,080 bytes; full attention reads 7808 context rows, a selecting squeezed step 4 sinks + 100
    window + 566 kept + 4 followed + 770 cluster summaries, an exact step every row."""
    from bench import memory_floor

    config = {"hidden_size": 576, "intermediate_size": 1536, "head_dim": 64, "num_heads": 9, "num_kv_heads": 3,
              "num_layers": 30, "vocab_size": 49152}
    shapes = {"max_context": 7808, "max_prompt": 128, "max_new": 256, "sink_tokens": 4, "window": 100,
              "max_clusters": 770, "max_keep": 566}
    full = memory_floor.step_bytes(config, {"attention": "full", "shapes": shapes}, "fp32")
    squeezed = {"attention": "squeezed", "shapes": shapes, "follow_keys": 4}
    sel = memory_floor.step_bytes(config, squeezed, "fp32")
    exact = memory_floor.step_bytes(config, squeezed, "fp32", "exact")
    assert full["weights"] == sel["weights"] == 134_479_872 * 4
    assert full["context"] == 7808 * 46_080 and exact["context"] == 7808 * 46_080
    assert sel["context"] == (4 + 100 + 566 + 4 + 770) * 46_080
    assert full["cache"] == sel["cache"] == 384 * 46_080
    assert full["total"] == full["weights"] + full["context"] + full["cache"]
    assert memory_floor.step_bytes(config, squeezed, "int4")["weights"] == 134_479_872 / 2
    # fp32 at 7.8k: full attention's step reads 1.47x the squeezed step's bytes, so no kernel makes the squeezed
    # decode more than 1.47x faster on any machine; int4 weights leave the context a larger share (2.94x)
    assert full["total"] / sel["total"] == pytest.approx(1.4714, abs=1e-3)
    full4 = memory_floor.step_bytes(config, {"attention": "full", "shapes": shapes}, "int4")
    assert full4["total"] / memory_floor.step_bytes(config, squeezed, "int4")["total"] == pytest.approx(2.94, abs=0.01)
    assert memory_floor.floor_ms(47e9, 47.0) == pytest.approx(1000.0)
    peaks = {"status": "ok", "read_bw": {"gops": {"2": 40.0}}}   # peak_probe.machine_peaks' shape
    assert memory_floor.bandwidth_for(peaks, 2) == 40.0 and memory_floor.bandwidth_for(peaks, 1) is None
    assert memory_floor.bandwidth_for({"status": "unavailable", "note": "no cc"}, 2) is None
    row = {"threads": 2, "weights": "fp32", "decode_ms_per_token": 30.0, "opening_ms_per_token": 35.0}
    memory_floor.annotate(row, config, squeezed, peaks)
    assert row["decode_floor_ms"] == pytest.approx(sel["total"] / 40e9 * 1e3)
    assert row["decode_bandwidth_share"] == pytest.approx(row["decode_floor_ms"] / 30.0)
    assert row["opening_floor_ms"] == pytest.approx(exact["total"] / 40e9 * 1e3)    # the opening's exact steps


def test_prompt_arithmetic_floor_counts_the_multiply_adds_of_a_prompt():
    """bench/arithmetic_floor.py on the same real 7.8k shapes, a 128-token prompt (worked out by hand): the linears
    3,538,944 weights per layer x 30 layers per token plus the 28,311,552-weight head once; a key + value row costs 2 x
    64 multiply-adds per query head, 30 x 9 x 128 = 34,560 over the model. Full attention: every token over 7808 context
    rows + 384 cache rows + the call's 128; squeezed: 96 selecting tokens over 1444 rows + 384 + 96, the 32-token exact
    tail over 7808 + 384 + 32. So the 128-token prefill cannot gain more than 1.73x over full attention (2.26x without
    the exact tail), and a question inside the exact tail gains nothing."""
    from bench import arithmetic_floor

    config = {"hidden_size": 576, "intermediate_size": 1536, "head_dim": 64, "num_heads": 9, "num_kv_heads": 3,
              "num_layers": 30, "vocab_size": 49152}
    shapes = {"max_context": 7808, "max_prompt": 128, "max_new": 256, "sink_tokens": 4, "window": 100,
              "max_clusters": 770, "max_keep": 566}
    full_c = {"attention": "full", "shapes": shapes}
    squeezed_c = {"attention": "squeezed", "shapes": shapes, "follow_keys": 4, "exact_tail": 32}
    full = arithmetic_floor.prompt_macs(config, full_c, 128)
    sq = arithmetic_floor.prompt_macs(config, squeezed_c, 128)
    assert full["weights"] == sq["weights"] == 128 * 3_538_944 * 30 + 28_311_552
    assert full["attention"] == 128 * (7808 + 384 + 128) * 34_560
    assert sq["attention"] == (96 * (1444 + 384 + 96) + 32 * (7808 + 384 + 32)) * 34_560
    assert full["total"] / sq["total"] == pytest.approx(1.7330, abs=1e-3)
    no_tail = arithmetic_floor.prompt_macs(config, {**squeezed_c, "exact_tail": 0}, 128)
    assert full["total"] / no_tail["total"] == pytest.approx(2.2641, abs=1e-3)
    q20 = arithmetic_floor.prompt_macs(config, squeezed_c, 20)
    assert q20["total"] == arithmetic_floor.prompt_macs(config, full_c, 20)["total"]
    # the floor: weights at the int8 peak when quantized, attention at the fp32 peak (GOP/s, an FMA is 2 ops)
    peaks = {"status": "ok", "fp32": {"gops": {"2": 200.0}}, "int8": {"gops": {"2": 800.0}}}
    assert arithmetic_floor.floor_ms(full, "fp32", peaks, 2) == pytest.approx(2 * full["total"] / 200e9 * 1e3)
    assert arithmetic_floor.floor_ms(full, "int4", peaks, 2) == pytest.approx(
        (2 * full["weights"] / 800e9 + 2 * full["attention"] / 200e9) * 1e3)
    assert arithmetic_floor.floor_ms(full, "fp32", peaks, 1) is None
    assert arithmetic_floor.floor_ms(full, "fp32", {"status": "unavailable"}, 2) is None
    row = {"threads": 2, "weights": "fp32", "prompt_tokens": 128, "prompt_prefill_ms": 700.0}
    arithmetic_floor.annotate(row, config, full_c, peaks)
    assert row["prompt_gmacs"] == pytest.approx(full["total"] / 1e9)
    assert row["prompt_peak_share"] == pytest.approx(row["prompt_floor_ms"] / 700.0)
