"""bench/peak_probe.py: the native probe of this machine's fp32 FMA and int8 dot-product peaks compiles, picks the
instruction set the CPU has, reports positive finite rates with the documented keys, is cached, and degrades to
a one-line note without a compiler; the host report takes its "% of peak" from it."""

import math
import platform
from pathlib import Path

import pytest

from bench import peak_probe, report

CPU_FLAGS = set(peak_probe.cpu_signature().split())
X86 = platform.machine() in ("x86_64", "AMD64")
needs_cc = pytest.mark.skipif(peak_probe.find_compiler() is None, reason="no C compiler on this machine")


def _check_run(out, threads):
    assert out["schema"] == peak_probe.SCHEMA
    for kind in ("fp32", "int8"):
        section = out[kind]
        assert set(section) == {"isa", "chains", "ops_per_iteration", "iterations", "results"}
        assert section["chains"] == (8 if section["isa"].startswith("avx2 vpmaddubsw") else 12)
        assert section["iterations"] > 0
        assert [r["threads"] for r in section["results"]] == list(threads)
        for r in section["results"]:
            assert math.isfinite(r["gops"]) and r["gops"] > 0
            assert len(r["per_thread_gops"]) == r["threads"]
            assert all(math.isfinite(g) and g > 0 for g in r["per_thread_gops"])
            # the run's rate is the threads' total over the wall time: at most the sum of the per-thread rates
            assert r["gops"] <= sum(r["per_thread_gops"]) * 1.0001
    # the read bandwidth: each thread streams its own buffer, far larger than a last-level cache
    bw = out["read_bw"]
    assert bw["ops_per_iteration"] >= 64 * 2 ** 20 and bw["iterations"] >= 1
    assert [r["threads"] for r in bw["results"]] == list(threads)
    for r in bw["results"]:
        assert 0.1 < r["gops"] < 5000 and len(r["per_thread_gops"]) == r["threads"]   # GB/s
        assert r["gops"] <= sum(r["per_thread_gops"]) * 1.0001


@needs_cc
def test_probe_compiles_caches_and_measures(tmp_path):
    first = peak_probe.build(cache=tmp_path)
    assert not first["cached"] and Path(first["path"]).is_file() and Path(first["path"]).parent.parent == tmp_path
    again = peak_probe.build(cache=tmp_path)
    assert again["cached"] and again["path"] == first["path"]
    assert not list(tmp_path.rglob(".peak_probe.*"))  # no temporary left behind
    out = peak_probe.run((1, 2), seconds=0.01, reps=1, binary=first)
    _check_run(out, (1, 2))
    assert out["build"] == {"compiler": first["compiler"], "flags": first["flags"]}
    # the instruction set matches what the CPU says it has (-march=native), and the op counts match the width:
    # 12 chains x lanes x 2 (an FMA is 2 flops, a MAC 2 ops)
    if X86 and "avx512f" in CPU_FLAGS:
        assert out["fp32"]["isa"] == "avx512f vfmadd231ps zmm" and out["fp32"]["ops_per_iteration"] == 12 * 16 * 2
    elif X86 and "avx2" in CPU_FLAGS and "fma" in CPU_FLAGS:
        assert out["fp32"]["isa"] == "avx2 vfmadd231ps ymm" and out["fp32"]["ops_per_iteration"] == 12 * 8 * 2
    if X86 and {"avx512f", "avx512_vnni"} <= CPU_FLAGS:
        assert out["int8"]["isa"] == "avx512_vnni vpdpbusd zmm" and out["int8"]["ops_per_iteration"] == 12 * 64 * 2
    elif X86 and "avx_vnni" in CPU_FLAGS:
        assert out["int8"]["isa"] == "avx_vnni vpdpbusd ymm"
    if X86 and "amx_int8" in CPU_FLAGS and "int8_amx" in out:
        assert out["int8_amx"]["ops_per_iteration"] == 4 * 16 * 16 * 64 * 2


@needs_cc
@pytest.mark.skipif(not (X86 and {"avx2", "fma"} <= CPU_FLAGS), reason="needs an x86 CPU with AVX2 and FMA")
def test_probe_fallback_instruction_sets(tmp_path):
    """The AVX2 paths (FMA; vpmaddubsw + vpmaddwd + vpaddd for int8), AVX-VNNI and the plain-C path, built as for
    CPUs without AVX-512."""
    avx2 = peak_probe.run((1,), seconds=0.01, reps=1, binary=peak_probe.build(flag_sets=[["-O2", "-march=x86-64-v3"]],
                                                                             cache=tmp_path))
    _check_run(avx2, (1,))
    assert avx2["fp32"]["isa"] == "avx2 vfmadd231ps ymm" and avx2["fp32"]["ops_per_iteration"] == 12 * 8 * 2
    assert avx2["int8"]["isa"] == "avx2 vpmaddubsw + vpmaddwd + vpaddd ymm"
    assert avx2["int8"]["ops_per_iteration"] == 8 * 32 * 2 and "int8_amx" not in avx2  # 8 chains: 16 ymm registers
    if "avx_vnni" in CPU_FLAGS:  # the 256-bit dot product of CPUs without AVX-512 (e.g. Alder Lake)
        vnni = peak_probe.run((1,), seconds=0.01, reps=1,
                              binary=peak_probe.build(flag_sets=[["-O2", "-march=alderlake"]], cache=tmp_path))
        _check_run(vnni, (1,))
        assert vnni["int8"]["isa"] == "avx_vnni vpdpbusd ymm" and vnni["int8"]["ops_per_iteration"] == 12 * 32 * 2
    plain = peak_probe.run((1,), seconds=0.01, reps=1, binary=peak_probe.build(flag_sets=[["-O2", "-march=x86-64"]],
                                                                              cache=tmp_path))
    _check_run(plain, (1,))
    assert plain["fp32"]["isa"].startswith("generic C") and plain["int8"]["isa"].startswith("generic C")


def test_machine_peaks_keeps_the_best_of_several_probes():
    a = {"build": {"compiler": "cc 1", "flags": ["-O2"]},
         "fp32": {"isa": "x", "chains": 12, "results": [{"threads": 1, "gops": 100.0}, {"threads": 2, "gops": 150.0}]},
         "int8": {"isa": "y", "chains": 12, "results": [{"threads": 1, "gops": 400.0}, {"threads": 2, "gops": 790.0}]}}
    a["read_bw"] = {"isa": "z", "chains": 4, "results": [{"threads": 1, "gops": 40.0}, {"threads": 2, "gops": 70.0}]}
    b = {**a, "fp32": {**a["fp32"], "results": [{"threads": 1, "gops": 90.0}, {"threads": 2, "gops": 198.0}]},
         "read_bw": {**a["read_bw"], "results": [{"threads": 1, "gops": 45.0}, {"threads": 2, "gops": 60.0}]}}
    peaks = peak_probe.machine_peaks((1, 2), [a, b])
    assert peaks["read_bw"]["gops"] == {"1": 45.0, "2": 70.0}   # the read bandwidth too (GB/s): best per thread count
    assert "- memory read bandwidth (z, " in "\n".join(report.peaks_lines(peaks))
    assert peaks["status"] == "ok" and peaks["threads"] == [1, 2]
    assert peaks["fp32"]["gops"] == {"1": 100.0, "2": 198.0} and peaks["int8"]["gops"] == {"1": 400.0, "2": 790.0}
    assert peaks["fp32"]["runs_gops"] == {"1": [100.0, 90.0], "2": [150.0, 198.0]}
    assert "int8_amx" not in peaks


def test_no_compiler_is_a_note_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    peaks = peak_probe.measure_machine_peaks((1,))
    assert peaks == {"status": "unavailable", "note": f"no C compiler found (tried $CC={tmp_path / 'no-such-cc'}); "
                     "install gcc (or set CC) to measure this machine's fp32 FMA and int8 dot-product peaks"}
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(peak_probe.ProbeUnavailable, match=r"^no C compiler found \(tried cc, gcc, clang\)"):
        peak_probe.build(cache=tmp_path)


def test_compiler_errors_are_one_line(tmp_path):
    bad = tmp_path / "cc"
    bad.write_text("#!/bin/sh\necho 'peak_probe.c:1:1: error: this compiler refuses everything' >&2\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(peak_probe.ProbeUnavailable) as info:
        peak_probe.build(compiler=str(bad), cache=tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("the peak probe did not compile")
    assert msg.count("error: this compiler refuses everything") == len(peak_probe.FLAG_SETS)  # every flag set tried
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-built left


def test_report_takes_percentages_from_the_probe_not_sgemm():
    """The host report's "% of peak" per precision, the machine section, and the missing-compiler note."""
    from bench.host import add_peak_shares
    from bench.report import markdown

    peaks = {"status": "ok", "compiler": "cc 12", "flags": ["-O2", "-march=native"],
             "fp32": {"isa": "avx512f vfmadd231ps zmm", "chains": 12, "gops": {"1": 200.0, "2": 400.0}},
             "int8": {"isa": "avx512_vnni vpdpbusd zmm", "chains": 12, "gops": {"1": 800.0, "2": 1600.0}},
             "int8_amx": {"isa": "amx_int8 tdpbusd 16x64", "chains": 4, "gops": {"1": 3000.0, "2": 6000.0}}}

    def rows():
        return [{"name": "onnx", "runtime": "onnxruntime (CPU)", "precision": "fp32", "file": "m_fp32.onnx",
                 "threads": 2, "status": "ok", "achieved_gflops": 100.0, "p50_ms": 10.0, "clips_per_s": 100.0,
                 "bytes": 4_000_000},
                {"name": "onnx-fp16", "runtime": "onnxruntime (CPU)", "precision": "fp16", "file": "m_fp16.onnx",
                 "threads": 1, "status": "ok", "achieved_gflops": 50.0, "p50_ms": 20.0, "clips_per_s": 50.0,
                 "bytes": 2_000_000},
                {"name": "onnx-int8", "runtime": "onnxruntime (CPU)", "precision": "int8", "file": "m_int8.onnx",
                 "threads": 2, "status": "ok", "achieved_gflops": 200.0, "p50_ms": 5.0, "clips_per_s": 200.0,
                 "bytes": 1_000_000, "int8_fp32_latency_ratio": 0.5}]

    ok_rows = rows()
    add_peak_shares(ok_rows, peaks)
    assert [(r["peak_reference"], r["peak_gops"], r["pct_of_peak"]) for r in ok_rows] == [
        ("fp32 FMA", 400.0, pytest.approx(25.0)), ("fp32 FMA", 200.0, pytest.approx(25.0)),
        ("int8 dot product", 1600.0, pytest.approx(12.5))]
    report = {"model": {"config": "k400", "input": {"format": "clip", "shape": [1, 3, 16, 224, 224]},
                        "gflop_per_clip": 1.0},
              "machine": {"cpu": "x", "peaks": peaks}, "runs": 3, "warmup": 1, "rows": ok_rows,
              "int8_vs_fp32": [{"runtime": "onnxruntime (CPU)", "threads": 2, "fp32_p50_ms": 10.0, "int8_p50_ms": 5.0,
                                "int8_fp32_latency_ratio": 0.5, "int8_speedup": 2.0}]}
    md = markdown(report)
    assert "matmul" not in md and "sgemm" not in md
    assert "- fp32 FMA peak (avx512f vfmadd231ps zmm, 12 independent chains): 1 thread 200, 2 threads 400" in md
    assert "- int8 dot-product peak (avx512_vnni vpdpbusd zmm, 12 independent chains): 1 thread 800, 2 threads 1600" in md
    assert "int8 AMX tiles (amx_int8 tdpbusd 16x64; recorded, not the reference" in md
    table = [l for l in md.splitlines() if l.startswith("| onnxruntime (CPU) |")]
    assert table[0].endswith("| 100 | 25% | - | - |") and table[2].endswith("| 200 | 12% | - | 0.50 |")
    assert "| onnxruntime (CPU) | 2 | 10.0 | 5.0 | 0.50 | 2.00x |" in md

    # no compiler: the rows keep their rates, the percentages stay empty, and the report says why
    bare = rows()
    note = "no C compiler found (tried cc, gcc, clang); install gcc (or set CC) to measure ..."
    add_peak_shares(bare, peak_probe.unavailable(note))
    assert all("pct_of_peak" not in r and r["peak_reference"] for r in bare)
    md = markdown({**report, "rows": bare, "machine": {"cpu": "x", "peaks": peak_probe.unavailable(note)}})
    assert f"Machine peaks: not measured ({note}); the % of peak column stays empty." in md
    assert next(l for l in md.splitlines() if l.startswith("| onnxruntime (CPU) | fp32")).endswith("| 100 | - | - | - |")


def test_probe_source_has_no_cache_in_the_repository():
    """The compiled probe lives in the per-user cache, never next to the source."""
    source_dir = peak_probe.SOURCE.parent
    assert sorted(p.name for p in source_dir.iterdir() if not p.name.startswith(".")) == ["peak_probe.c"]
