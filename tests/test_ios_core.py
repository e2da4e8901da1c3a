"""The Swift core of ios_demo/ (SqueezeCore: JSON/manifest reading, frame sampling, preprocessing, softmax/top-k,
latency statistics, clip building, the byte-level BPE tokenizer, and for document Q&A the context-pack reader, the
CPU centroid lookup, the decoder manifest and the generation loop), built and run with XCTest on Linux against the
same golden files the Kotlin core of android_demo/ is tested with (android_demo/core/src/test/resources/golden,
written by android_demo/tools/make_golden.py from the Python pipeline). The same run builds and tests the
platform-free part of the app's SqueezeDemoKit target (recognition and Q&A sessions, camera frame conversion) and
type-checks the Xcode app's own sources; the Xcode project file is checked here without Xcode (it parses, and
references exactly the app's sources, its Info.plist and the local package's products).

ios_demo/run_tests.sh builds the package inside a Debian trixie chroot (Swift 6.0.3 from Debian's swiftlang; Swift
is not in bookworm) and runs `swift test --disable-swift-testing`. Each Swift test method is one pytest test here
(collected from the Swift sources, results parsed from XCTest's "Test Case '...' passed/failed" lines), so pytest
fails when a Swift test fails or does not run. A missing toolchain FAILS these tests (never skips): run
ios_demo/install_toolchain.sh (as root). Cold run ~45 s (swift build on 2 busy cores), later runs ~15 s.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IOS = ROOT / "ios_demo"
PACKAGE = IOS / "SqueezeCore"
CHROOT_STAMP = IOS / ".toolchain" / "trixie.ok"
INSTALL_HINT = "the Swift toolchain is missing ({}); run ios_demo/install_toolchain.sh (as root), then re-run"
APP = IOS / "SqueezeDemo"
XCODEPROJ = IOS / "SqueezeDemo.xcodeproj" / "project.pbxproj"
# Apple-only frameworks (and ExecuTorch's Swift package): app code may use them behind `#if canImport(...)`, the core never
APPLE_ONLY = ("UIKit", "SwiftUI", "AVFoundation", "CoreML", "CoreVideo", "CoreImage", "Accelerate", "CryptoKit", "Vision",
              "ExecuTorch")


def _swift_tests():
    """(class, method) of every XCTest method in the Swift test sources, found without compiling."""
    found = []
    for path in sorted((PACKAGE / "Tests").rglob("*.swift")):
        text = path.read_text(encoding="utf-8")
        for cls in re.finditer(r"^(?:final\s+)?class\s+(\w+)\s*:\s*XCTestCase\s*\{(.*?)^\}", text, re.M | re.S):
            for fn in re.finditer(r"^\s+func\s+(test\w*)\s*\(\s*\)", cls.group(2), re.M):
                found.append((cls.group(1), fn.group(1)))
    return found


SWIFT_TESTS = _swift_tests()


def _make_golden():
    spec = importlib.util.spec_from_file_location("android_make_golden", ROOT / "android_demo" / "tools" / "make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    return make_golden


@pytest.fixture(scope="module")
def xctest_results():
    """Run ios_demo/run_tests.sh once; {(class, method): failure text or None} plus the closing totals."""
    if not CHROOT_STAMP.is_file():
        pytest.fail(INSTALL_HINT.format(CHROOT_STAMP), pytrace=False)
    make_golden = _make_golden()
    if not make_golden.TOKENIZER_JSON.is_file():  # the Swift tokenizer tests read it (run_tests.sh copies it in)
        make_golden.write_tokenizer_json()
    proc = subprocess.run([str(IOS / "run_tests.sh")], capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    results = {}
    failures = {}
    for m in re.finditer(r"^(/\S+:\d+: error: (\w+)\.(\w+) : .*)$", output, re.M):
        failures.setdefault((m.group(2), m.group(3)), []).append(m.group(1))
    for m in re.finditer(r"^Test Case '(?:[\w.]+\.)?(\w+)[./](\w+)' (passed|failed|skipped)", output, re.M):
        key = (m.group(1), m.group(2))
        if m.group(3) == "passed":
            results[key] = None
        else:
            results[key] = f"{m.group(3)}:\n" + "\n".join(failures.get(key, []))[:3000]
    if not results:
        pytest.fail(f"XCTest ran no tests (exit {proc.returncode}):\n{output[-4000:]}", pytrace=False)
    totals = re.findall(r"^Test Suite 'All tests' (?:passed|failed) at .*\n\s*Executed (\d+) tests?, with (\d+) failures?",
                        output, re.M)
    results["__totals__"] = tuple(int(x) for x in totals[-1]) if totals else None
    app_check = re.findall(r"^app sources: (\d+) files in ios_demo/SqueezeDemo type-checked on Linux: (\w+)", output, re.M)
    results["__app_check__"] = (int(app_check[-1][0]), app_check[-1][1]) if app_check else None
    results["__rc__"] = proc.returncode
    results["__output__"] = output[-4000:]
    return results


def test_swift_sources_found():
    assert len(SWIFT_TESTS) >= 69, SWIFT_TESTS
    # the package builds on Linux: no Apple-only framework outside `#if canImport(...)` (checked per file: a file that
    # imports one must guard it); the same for the Xcode app's own sources, which run_tests.sh type-checks on Linux
    offenders = []
    for path in [*(PACKAGE / "Sources").rglob("*.swift"), *APP.glob("*.swift")]:
        text = path.read_text(encoding="utf-8")
        for fw in APPLE_ONLY:
            if re.search(rf"^\s*import\s+{fw}\b", text, re.M) and f"canImport({fw})" not in text:
                offenders.append(f"{path.name}: {fw}")
    assert offenders == []


@pytest.mark.parametrize("cls,method", SWIFT_TESTS, ids=[f"{c}.{m}" for c, m in SWIFT_TESTS])
def test_swift(xctest_results, cls, method):
    assert (cls, method) in xctest_results, (
        f"XCTest did not run {cls}.{method} (compilation or discovery problem):\n{xctest_results['__output__']}")
    failure = xctest_results[(cls, method)]
    assert failure is None, f"{cls}.{method} failed in XCTest: {failure}"


def test_xctest_totals(xctest_results):
    passed = sum(1 for k, v in xctest_results.items() if isinstance(k, tuple) and v is None)
    assert xctest_results["__totals__"] == (len(SWIFT_TESTS), 0), xctest_results["__output__"]
    assert xctest_results["__rc__"] == 0 and passed == len(SWIFT_TESTS)


def test_app_sources_type_check_on_linux(xctest_results):
    """run_tests.sh type-checks ios_demo/SqueezeDemo/*.swift against the built modules (inactive #if blocks parsed)."""
    swift_files = sorted(APP.glob("*.swift"))
    assert xctest_results["__app_check__"] == (len(swift_files), "ok"), xctest_results["__output__"]


def _openstep(text):
    """The old-style (OpenStep) property list an .xcodeproj's project.pbxproj is: dicts, arrays, strings; comments."""
    tokens = [t for t in re.findall(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|[{}();=,]|[^\s{}();=,"]+', text, re.S)
              if not t.startswith(("/*", "//"))]
    pos = 0

    def value():
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t == "{":
            d = {}
            while tokens[pos] != "}":
                k = value()
                assert tokens[pos] == "=", f"expected = after {k!r}, found {tokens[pos]!r}"
                pos += 1
                d[k] = value()
                assert tokens[pos] == ";", f"expected ; after {k!r}, found {tokens[pos]!r}"
                pos += 1
            pos += 1
            return d
        if t == "(":
            items = []
            while tokens[pos] != ")":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        assert t not in "{}();=,", f"unexpected {t!r}"
        return t[1:-1].encode().decode("unicode_escape") if t.startswith('"') else t

    root = value()
    assert pos == len(tokens), f"trailing tokens {tokens[pos:pos + 5]}"
    return root


def test_xcode_project_references_the_app_sources():
    import plistlib

    proj = _openstep(XCODEPROJ.read_text(encoding="utf-8"))
    objects = proj["objects"]
    assert all(re.fullmatch(r"[0-9A-F]{24}", k) for k in objects)

    # every object id mentioned anywhere resolves
    def refs(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from refs(x)
        elif isinstance(v, list):
            for x in v:
                yield from refs(x)
        elif isinstance(v, str) and re.fullmatch(r"[0-9A-F]{24}", v):
            yield v
    dangling = sorted(set(refs(objects)) - set(objects))
    assert dangling == [] and proj["rootObject"] in objects

    project = objects[proj["rootObject"]]
    assert project["isa"] == "PBXProject"
    (target,) = [objects[t] for t in project["targets"]]
    assert target["productType"] == "com.apple.product-type.application"

    def path_of(ref_id, group_id=project["mainGroup"], prefix=IOS):
        group = objects[group_id]
        base = prefix / group["path"] if "path" in group else prefix
        for child in group.get("children", []):
            if child == ref_id:
                return base / objects[child]["path"]
            if objects[child]["isa"] == "PBXGroup":
                found = path_of(ref_id, child, base)
                if found:
                    return found
        return None

    phases = {objects[p]["isa"]: objects[p] for p in target["buildPhases"]}
    sources = sorted(path_of(objects[b]["fileRef"]) for b in phases["PBXSourcesBuildPhase"]["files"])
    assert sources == sorted(APP.glob("*.swift")), "the app target must compile exactly ios_demo/SqueezeDemo/*.swift"
    resources = [path_of(objects[b]["fileRef"]) for b in phases["PBXResourcesBuildPhase"]["files"]]
    assert resources == [APP / "models"] and (APP / "models" / "README.md").is_file()

    # the local package and the products the app links exist in Package.swift
    (pkg,) = [objects[p] for p in project["packageReferences"]]
    assert pkg["isa"] == "XCLocalSwiftPackageReference" and (IOS / pkg["relativePath"]) == PACKAGE
    manifest = (PACKAGE / "Package.swift").read_text(encoding="utf-8")
    products = sorted(objects[d]["productName"] for d in target["packageProductDependencies"])
    assert products == ["SqueezeCore", "SqueezeDemoKit"]
    for product in products:
        assert f'.library(name: "{product}"' in manifest
    linked = sorted(objects[objects[b]["productRef"]]["productName"] for b in phases["PBXFrameworksBuildPhase"]["files"])
    assert linked == products

    for cfg_id in objects[target["buildConfigurationList"]]["buildConfigurations"]:
        settings = objects[cfg_id]["buildSettings"]
        info = plistlib.loads((IOS / settings["INFOPLIST_FILE"]).read_bytes())
        assert info["NSCameraUsageDescription"] and info["UISupportedInterfaceOrientations"] == ["UIInterfaceOrientationPortrait"]
        assert settings["PRODUCT_BUNDLE_IDENTIFIER"] == "dev.squeezemobile.SqueezeDemo"
        # the package's platforms line (iOS 15) is the floor for the app
        assert settings.get("IPHONEOS_DEPLOYMENT_TARGET", "15.0") == "15.0"
