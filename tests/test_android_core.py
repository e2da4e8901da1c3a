"""The Kotlin core of android_demo/ (frame sampling, preprocessing, manifest reading, softmax/top-k, latency
statistics; for document Q&A the tokenizer, context-pack reader, CPU lookup and generation loop), compiled for the
JVM and run with JUnit 5 against golden files the Python pipeline writes.

Each Kotlin @Test is one pytest test here (collected from the Kotlin sources, results read from JUnit's XML
report), so pytest counts them. A missing toolchain FAILS these tests (never skips): run
android_demo/install_toolchain.sh. Two more tests rebuild the video and the Q&A golden files from the Python pipeline
and compare them, so the Kotlin tests can never pass against stale goldens. The real model's tokenizer.json
(not committed) is written to android_demo/build/qa/ before the Kotlin tests run when it is missing, and so is the
reduced SqueezeTime .onnx (android_demo/build/ort/, make_golden.py --model-only) that OrtJniRuntimeTest runs through
ONNX Runtime's C library (the onnxruntime wheel's libonnxruntime.so) via the JNI bridge android_demo/jni/ort_bridge.c,
and the tiny decoder's .onnx with Python DecoderSession's tokens on the qa_pack golden (android_demo/build/qa_decoder/,
make_golden.py --decoder-only; rewritten when the pack golden changed) that OrtJniDecoderTest runs in the core's
generation loop (run_tests.sh passes -Dsqueeze.ort.decoder; missing files fail there, never skip).
Cold run: ~15-50 s (kotlinc); later runs reuse the compiled classes when no .kt file changed (a few seconds).

The Android app itself (android_demo/app) cannot be built here (no Android Gradle plugin, SDK or Google Maven):
android_demo/check_app.sh compiles its manifest and resources with Debian's aapt against the platform's framework
resources and checks the R references and manifest components of its Kotlin (run_tests.sh counts it as one test;
the tests below also prove it rejects broken copies), and the Gradle version catalog is checked against the build
scripts that use it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
CORE = DEMO / "core" / "src"
KOTLINC = DEMO / ".toolchain" / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
JUNIT = Path("/usr/share/java/junit-platform-console-standalone.jar")
ORT_HEADER = DEMO / ".toolchain" / "onnxruntime" / "include" / "onnxruntime_c_api.h"  # for the JNI bridge
FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")  # aapt's platform resources (check_app.sh)
APP_MAIN = DEMO / "app" / "src" / "main"
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
    missing = [str(p) for p in (KOTLINC, JUNIT, ORT_HEADER, FRAMEWORK_RES) if not p.exists()]
    missing += [tool for tool in ("gcc", "aapt") if shutil.which(tool) is None]
    missing += [] if list(Path("/usr/lib/jvm").glob("*/include/jni.h")) else ["a JDK's jni.h (/usr/lib/jvm/*/include)"]
    if missing:
        pytest.fail(INSTALL_HINT.format(", ".join(missing)), pytrace=False)
    make_golden = _make_golden()
    if not make_golden.TOKENIZER_JSON.is_file():  # the Kotlin tokenizer tests read it (run_tests.sh passes its path)
        make_golden.write_tokenizer_json()
    if not make_golden.model_onnx_path().is_file():  # the ONNX Runtime end-to-end tests run it (~50 s to export)
        make_golden.write_model_onnx()
    if not make_golden.decoder_onnx_current():  # OrtJniDecoderTest runs it (tiny decoder .onnx + Python's tokens, ~1 min)
        make_golden.write_decoder_onnx()
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
    # run_tests.sh counts the app check (check_app.sh) as one more test
    assert junit_results["__closing__"] == f"{len(KOTLIN_TESTS) + 1} passed, 0 failed"
    assert junit_results["__rc__"] == 0 and passed == len(KOTLIN_TESTS)


def _check_app(*args) -> subprocess.CompletedProcess:
    if shutil.which("aapt") is None or not FRAMEWORK_RES.is_file():
        pytest.fail(INSTALL_HINT.format(f"aapt, {FRAMEWORK_RES}"), pytrace=False)
    return subprocess.run(["bash", str(DEMO / "check_app.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_app_manifest_and_resources_pass_aapt():
    proc = _check_app()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("app check: ok") and "API 29" in line, line
    # both screens are declared and every R reference of the app's Kotlin resolved
    assert "the manifest's 2 components have classes" in line, line
    refs = set(re.findall(r"(?<![.\w])R\.\w+\.\w+", "\n".join(p.read_text() for p in APP_MAIN.rglob("*.kt"))))
    assert {"R.layout.activity_qa", "R.id.answer", "R.id.open_qa"} <= refs
    assert f"{len(refs)} R references resolve" in line, line


# (what breaks, file under app/src/main, old text, new text, what the error must name)
BROKEN_APP = [
    ("unknown string in the manifest", "AndroidManifest.xml", "@string/qa_title", "@string/qa_titel", "qa_titel"),
    ("library attribute in a layout", "res/layout/activity_qa.xml", 'android:fitsSystemWindows="true">',
     'android:fitsSystemWindows="true" xmlns:app="http://schemas.android.com/apk/res-auto" '
     'app:layout_constraintTop_toTopOf="parent">', "layout_constraintTop_toTopOf"),
    ("malformed layout XML", "res/layout/activity_main.xml", "</FrameLayout>", "</FrameLayot>", "activity_main.xml"),
    ("bad attribute value", "res/layout/activity_qa.xml", 'android:inputType="number"', 'android:inputType="numbr"',
     "numbr"),
    ("R reference without a resource", "kotlin/dev/squeezemobile/demo/QaActivity.kt", "R.id.answer_scroll",
     "R.id.answer_scrol", "R.id.answer_scrol is used in"),
    ("manifest activity without a class", "AndroidManifest.xml", '".QaActivity"', '".GhostActivity"',
     "dev.squeezemobile.demo.GhostActivity"),
]


@pytest.mark.parametrize("what,path,old,new,named", BROKEN_APP, ids=[b[0] for b in BROKEN_APP])
def test_app_check_rejects_a_broken_copy(tmp_path, what, path, old, new, named):
    copy = tmp_path / "main"
    shutil.copytree(APP_MAIN, copy)
    target = copy / path
    text = target.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is no longer in {path}: update this case"
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    proc = _check_app("--manifest", copy / "AndroidManifest.xml", "--res", copy / "res", "--sources", copy / "kotlin")
    assert proc.returncode == 1, f"{what}: accepted\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.strip().splitlines()[-1] == "app check: FAILED"
    assert named in proc.stderr, proc.stderr
    # the unbroken copy passes (the case tests the edit, not the copy)
    target.write_text(text, encoding="utf-8")
    again = _check_app("--manifest", copy / "AndroidManifest.xml", "--res", copy / "res", "--sources", copy / "kotlin")
    assert again.returncode == 0, again.stdout + again.stderr


def test_gradle_version_catalog_matches_the_build_scripts():
    """Every libs.* accessor the Gradle Kotlin DSL uses is in gradle/libs.versions.toml, every catalog entry is used,
    and every version.ref names a version (Gradle resolves none of this here)."""
    catalog = tomllib.loads((DEMO / "gradle" / "libs.versions.toml").read_text(encoding="utf-8"))
    libraries = {k.replace("-", ".") for k in catalog["libraries"]}
    plugins = {k.replace("-", ".") for k in catalog["plugins"]}
    scripts = "".join(p.read_text(encoding="utf-8") for p in DEMO.rglob("*.gradle.kts") if ".toolchain" not in p.parts)
    used_plugins = set(re.findall(r"libs\.plugins\.([\w.]+?)\)", scripts))
    used_libraries = set(re.findall(r"libs\.(?!plugins\.)([\w.]+?)\)", scripts))
    assert used_plugins == plugins, (used_plugins, plugins)
    assert used_libraries == libraries, (used_libraries ^ libraries)
    # (tomllib reads `version.ref = "x"` as {"version": {"ref": "x"}})
    refs = [e["version"]["ref"] for e in list(catalog["libraries"].values()) + list(catalog["plugins"].values())
            if isinstance(e.get("version"), dict)]
    assert refs and set(refs) <= set(catalog["versions"]), set(refs) - set(catalog["versions"])
    assert set(catalog["versions"]) <= set(refs), set(catalog["versions"]) - set(refs)  # no stale versions


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
    assert total < 2_100_000, f"golden files take {total} bytes"   # 2.0 MB with the followed keys' runs


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


def test_literal_tokenizer_goldens_cover_written_special_tokens():
    """The literal-encoding goldens (user text: written special-token strings stay text, as
    squeezed_attention.tokenizer.encode_literal) hold whole, glued and partial markers and plain text, chat questions
    whose ids change (DecoderSession.prompt_ids), and a tokenizer with a non-special added token; the Kotlin and Swift
    tokenizer tests compare their literal mode with them."""
    import gzip
    import json

    make_golden = _make_golden()
    golden = json.loads(gzip.decompress((make_golden.GOLDEN / "qa_tokenizer.json.gz").read_bytes()))
    texts = [c["text"] for c in golden["literal_cases"]]
    for marker in ("<|im_end|>", "<|endoftext|>", "<|im_start|>assistant", "<|im_end|><|im_end|>"):
        assert any(marker in t for t in texts), marker
    assert any("<|im_en " in t for t in texts) and any("<|" not in t and t for t in texts)  # partial marker, plain text
    for c in golden["literal_cases"]:
        assert (c["ids"] != c["ids_matched"]) == any(m in c["text"] for m in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"))
    assert golden["prompt_cases"]["chat"]["suffix"].startswith("<|im_end|>")
    changed = [c for c in golden["prompt_cases"]["cases"] if c["ids"] != c["ids_matched"]]
    assert any("<|im_end|>" in c["prompt"] for c in changed)
    assert any(c["ids"] == c["ids_matched"] and "<|" not in c["prompt"] for c in golden["prompt_cases"]["cases"])
    added = json.loads(golden["literal_added"]["tokenizer"])["added_tokens"]
    assert any(not t["special"] for t in added) and any(c["ids"] != c["ids_matched"] for c in golden["literal_added"]["cases"])


def test_golden_comparison_tolerates_float_rounding_only(tmp_path):
    """Goldens rebuilt on another CPU differ in the last bits of their floats and are still current; a value moved
    beyond rounding, an integer, a string or a shape is a changed golden."""
    import json

    import numpy as np
    from safetensors.numpy import save

    make_golden = _make_golden()
    gz = make_golden._gz
    blob = np.linspace(-3, 3, 50, dtype=np.float32)
    path = tmp_path / "x_f32le.bin.gz"
    path.write_bytes(gz(blob.astype("<f4").tobytes()))
    assert make_golden.same_golden(path, gz(np.nextafter(blob, np.float32(9)).astype("<f4").tobytes()))
    assert not make_golden.same_golden(path, gz((blob * 1.01).astype("<f4").tobytes()))
    assert not make_golden.same_golden(path, gz(blob[:-1].astype("<f4").tobytes()))
    meta = {"tokens": [1, 2, 3], "scale": 0.125, "text": "ab", "context_sha256": "aa", "weights_sha256": "cc",
            "logits": {"dtype": "float32", "sha256": "dd"}, "ids": {"dtype": "int64", "sha256": "ee"}}
    path = tmp_path / "x.json.gz"
    path.write_bytes(gz(json.dumps(meta).encode()))
    near = {**meta, "scale": 0.125000001, "context_sha256": "bb", "logits": {"dtype": "float32", "sha256": "ff"}}
    assert make_golden.same_golden(path, gz(json.dumps(near).encode()))
    for changed in ({"tokens": [1, 2, 4]}, {"scale": 0.13}, {"text": "ac"}, {"extra": 1}, {"weights_sha256": "cd"},
                    {"ids": {"dtype": "int64", "sha256": "ef"}}):
        assert not make_golden.same_golden(path, gz(json.dumps({**meta, **changed}).encode())), changed
    keys = np.linspace(-8, 8, 64, dtype=np.float16).reshape(8, 8)
    labels = np.arange(8, dtype=np.int32)
    path = tmp_path / "pack.safetensors"
    path.write_bytes(save({"keys": keys, "labels": labels}, metadata={"n": "8"}))
    near = keys.copy()
    near[0, 0] = np.nextafter(near[0, 0], np.float16(9))
    assert make_golden.same_golden(path, save({"labels": labels, "keys": near}, metadata={"n": "8"}))
    assert not make_golden.same_golden(path, save({"keys": keys, "labels": labels[::-1].copy()}, metadata={"n": "8"}))
    assert not make_golden.same_golden(path, save({"keys": keys + 1, "labels": labels}, metadata={"n": "8"}))
    assert not make_golden.same_golden(path, save({"keys": keys, "labels": labels}, metadata={"n": "9"}))
