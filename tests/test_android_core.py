"""The Kotlin core of android_demo/ (frame sampling, preprocessing, manifest reading, softmax/top-k, latency
statistics; for document Q&A the tokenizer, context-pack reader, CPU lookup and generation loop), compiled for the
JVM and run with JUnit 5 against golden files the Python pipeline writes.

Each Kotlin @Test is one pytest test here (collected from the Kotlin sources, results read from JUnit's XML
report), so pytest counts them. A missing toolchain FAILS these tests (never skips): run
android_demo/install_toolchain.sh. Two more tests rebuild the video and the Q&A golden files from the Python pipeline
and compare them, so the Kotlin tests can never pass against stale goldens. The real model's tokenizer.json
(not committed) is written to android_demo/build/qa/ before the Kotlin tests run when it is missing, and so is the
reduced SqueezeTime .onnx (android_demo/build/ort/, make_golden.py --model-only) that OrtJniRuntimeTest runs through
ONNX Runtime's C library (the onnxruntime wheel's libonnxruntime.so) via the JNI bridge android_demo/jni/ort_bridge.c.
Cold run: ~15-50 s (kotlinc); later runs reuse the compiled classes when no .kt file changed (a few seconds).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
CORE = DEMO / "core" / "src"
KOTLINC = DEMO / ".toolchain" / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
JUNIT = Path("/usr/share/java/junit-platform-console-standalone.jar")
ORT_HEADER = DEMO / ".toolchain" / "onnxruntime" / "include" / "onnxruntime_c_api.h"  # for the JNI bridge
INSTALL_HINT = "the Kotlin toolchain is missing ({}); run android_demo/install_toolchain.sh (as root), then re-run"


def _kotlin_tests():
    """(class, method) of every @Test in the Kotlin test sources, found without compiling."""
    found = []
    for path in sorted((CORE / "test" / "kotlin").rglob("*.kt")):
        text = path.read_text(encoding="utf-8")
        package = re.search(r"^package\s+([\w.]+)", text, re.M)
        for cls in re.finditer(r"^class\s+(\w+)[^\n]*\{(.*?)^\}", text, re.M | re.S):
            for fn in re.finditer(r"@Test\s+fun\s+(\w+)\s*\(", cls.group(2)):
                found.append((f"{package.group(1)}.{cls.group(1)}" if package else cls.group(1), fn.group(1)))
    return found


KOTLIN_TESTS = _kotlin_tests()


def _make_golden():
    spec = importlib.util.spec_from_file_location("android_make_golden", DEMO / "tools" / "make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    return make_golden


@pytest.fixture(scope="module")
def junit_results(tmp_path_factory):
    """Run android_demo/run_tests.sh once; {(class, method): failure text or None}."""
    missing = [str(p) for p in (KOTLINC, JUNIT, ORT_HEADER) if not p.exists()]
    missing += ["gcc"] if shutil.which("gcc") is None else []
    missing += [] if list(Path("/usr/lib/jvm").glob("*/include/jni.h")) else ["a JDK's jni.h (/usr/lib/jvm/*/include)"]
    if missing:
        pytest.fail(INSTALL_HINT.format(", ".join(missing)), pytrace=False)
    make_golden = _make_golden()
    if not make_golden.TOKENIZER_JSON.is_file():  # the Kotlin tokenizer tests read it (run_tests.sh passes its path)
        make_golden.write_tokenizer_json()
    if not make_golden.model_onnx_path().is_file():  # the ONNX Runtime end-to-end tests run it (~50 s to export)
        make_golden.write_model_onnx()
    reports = tmp_path_factory.mktemp("junit")
    proc = subprocess.run([str(DEMO / "run_tests.sh"), f"--reports-dir={reports}"], capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    closing = [line for line in output.splitlines() if re.fullmatch(r"\d+ passed, \d+ failed", line.strip())]
    if not closing:
        pytest.fail(f"android_demo/run_tests.sh gave no closing 'N passed, N failed' line (exit {proc.returncode}):\n"
                    f"{output[-4000:]}", pytrace=False)
    results = {}
    for xml in reports.glob("*.xml"):
        for case in ET.parse(xml).getroot().iter("testcase"):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if case.find("skipped") is not None:
                text = "skipped by JUnit"
            else:
                text = None if bad is None else (bad.get("message") or "") + "\n" + (bad.text or "")[:3000]
            results[(case.get("classname"), case.get("name").split("(")[0])] = text
    if not results:
        pytest.fail(f"JUnit ran no tests (exit {proc.returncode}):\n{output[-4000:]}", pytrace=False)
    results["__closing__"] = closing[-1].strip()
    results["__rc__"] = proc.returncode
    return results


def test_kotlin_sources_found():
    assert len(KOTLIN_TESTS) >= 30, KOTLIN_TESTS
    # the core is platform-free: compiling without android.jar enforces it; say so plainly when it breaks
    offenders = [p.name for p in (CORE / "main").rglob("*.kt") if re.search(r"^import\s+android", p.read_text(), re.M)]
    assert offenders == []


@pytest.mark.parametrize("cls,method", KOTLIN_TESTS, ids=[f"{c.rsplit('.', 1)[-1]}.{m}" for c, m in KOTLIN_TESTS])
def test_kotlin(junit_results, cls, method):
    assert (cls, method) in junit_results, f"JUnit did not run {cls}.{method} (compilation or discovery problem)"
    failure = junit_results[(cls, method)]
    assert failure is None, f"{cls}.{method} failed in JUnit:\n{failure}"


def test_junit_totals(junit_results):
    passed = sum(1 for k, v in junit_results.items() if isinstance(k, tuple) and v is None)
    assert junit_results["__closing__"] == f"{len(KOTLIN_TESTS)} passed, 0 failed"
    assert junit_results["__rc__"] == 0 and passed == len(KOTLIN_TESTS)


def test_golden_files_match_the_python_pipeline():
    """Rebuild the video golden files (decode, sample, resize, crop, normalise: ~4 s) and compare bytes."""
    make_golden = _make_golden()
    fresh = make_golden.video_goldens()
    golden = make_golden.GOLDEN
    stale = [name for name, data in fresh.items() if not (golden / name).is_file() or (golden / name).read_bytes() != data]
    assert stale == [], f"golden files differ from the Python pipeline: {stale}; run android_demo/tools/make_golden.py"
    # the export goldens exist and the whole set stays small enough to live in the repository
    for name in ("manifest.json", "labels.txt", "logits.json"):
        assert (golden / name).is_file(), name
    total = sum(p.stat().st_size for p in golden.iterdir())
    assert total < 2_000_000, f"golden files take {total} bytes"


def test_qa_golden_files_match_the_python_pipeline():
    """Rebuild the document Q&A goldens (the real tokenizer's ids on real texts; the tiny model's pack, lookup
    indices, context inputs and generation calls: ~25 s) and compare them."""
    make_golden = _make_golden()
    fresh = make_golden.tokenizer_goldens(make_golden.write_tokenizer_json())
    fresh.update(make_golden.qa_goldens())
    golden = make_golden.GOLDEN
    stale = [name for name, data in fresh.items() if not make_golden.same_golden(golden / name, data)]
    assert stale == [], f"Q&A golden files differ from the Python pipeline: {stale}; run android_demo/tools/make_golden.py"
    assert (golden / "qa_decoder_manifest.json").is_file()  # written by the full run (a real decoder export)
    qa = sum(p.stat().st_size for p in golden.glob("qa_*"))
    assert qa < 1_000_000, f"Q&A golden files take {qa} bytes"
