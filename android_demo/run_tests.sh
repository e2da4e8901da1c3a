#!/usr/bin/env bash
# Compile the pure-Kotlin core (android_demo/core: main + test sources) for the JVM and run its JUnit 5 tests, and
# check the app's manifest and resources with aapt (check_app.sh: counted as one more test).
# Prints a closing "N passed, N failed" line; exits non-zero when a test or the app check fails, nothing compiles,
# or the toolchain is missing (then it says to run android_demo/install_toolchain.sh).
# Compiling without android.jar is deliberate: an android.* import in core/ fails the build here.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KOTLIN_HOME="$HERE/.toolchain/node_modules/kotlin-compiler"
KOTLINC="$KOTLIN_HOME/bin/kotlinc"
JAVA_LIB=/usr/share/java
CONSOLE="$JAVA_LIB/junit-platform-console-standalone.jar"
BUILD="$HERE/build/core"
CLASSES="$BUILD/classes"

missing=()
[ -x "$KOTLINC" ] || missing+=("kotlinc ($KOTLINC)")
command -v java >/dev/null 2>&1 || missing+=("java")
for jar in "$CONSOLE" "$JAVA_LIB/junit-jupiter-api.jar" "$JAVA_LIB/junit-platform-commons.jar" "$JAVA_LIB/opentest4j.jar" "$JAVA_LIB/apiguardian-api.jar"; do
    [ -f "$jar" ] || missing+=("$jar")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: the Kotlin toolchain is missing: ${missing[*]}; run android_demo/install_toolchain.sh" >&2
    echo "0 passed, 1 failed"
    exit 2
fi

COMPILE_CP="$JAVA_LIB/junit-jupiter-api.jar:$JAVA_LIB/junit-platform-commons.jar:$JAVA_LIB/opentest4j.jar:$JAVA_LIB/apiguardian-api.jar"
SOURCES=("$HERE/core/src/main/kotlin" "$HERE/core/src/test/kotlin")
STAMP="$BUILD/.compiled"

# Recompile only when a source file changed since the last successful compile (kotlinc costs ~15 s cold).
if [ ! -f "$STAMP" ] || [ -n "$(find "${SOURCES[@]}" -name '*.kt' -newer "$STAMP" -print -quit)" ] \
   || [ "$(find "${SOURCES[@]}" -name '*.kt' | sort | md5sum)" != "$(cat "$BUILD/.sources" 2>/dev/null)" ]; then
    rm -rf "$CLASSES" "$STAMP"
    mkdir -p "$CLASSES"
    echo "compiling core (main + test) with $("$KOTLINC" -version 2>&1 | grep -o 'kotlinc-jvm [0-9.]*')"
    # C1-only JIT and the serial GC: a short compile job on few cores finishes ~35% sooner (61 s -> 39 s here)
    if ! JAVA_OPTS="${JAVA_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}" "$KOTLINC" -jvm-target 17 -no-reflect -Werror -cp "$COMPILE_CP" -d "$CLASSES" "${SOURCES[@]}" 2>&1; then
        echo "error: compilation failed" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    find "${SOURCES[@]}" -name '*.kt' | sort | md5sum > "$BUILD/.sources"
    touch "$STAMP"
fi

# The ONNX Runtime JNI bridge (jni/ort_bridge.c) for the end-to-end tests (OrtJniRuntimeTest): built against the
# onnxruntime PyPI wheel's libonnxruntime.so (linked as libonnxruntime.so.1 from build/ort/lib, found by rpath) and
# the C header install_toolchain.sh unpacked; rebuilt only when the source, header or library changes. When it
# cannot be built the other tests still run and the ORT tests fail with the reason (never skip).
ORT_BUILD="$HERE/build/ort"
ORT_BRIDGE="$ORT_BUILD/libort_bridge.so"
ORT_HEADER_DIR="$HERE/.toolchain/onnxruntime/include"
ORT_MODEL="${SQUEEZE_ORT_MODEL:-$ORT_BUILD/squeezetime_hmdb51_4x64_frames_uint8_fp32.onnx}"
# the tiny decoder export + Python's reference tokens for OrtJniDecoderTest (make_golden.py --decoder-only)
ORT_DECODER="${SQUEEZE_ORT_DECODER:-$HERE/build/qa_decoder}"
ORT_ERROR=""
build_bridge() {
    local py="$HERE/../.venv/bin/python" pkg lib javac jni cmd stamp
    command -v gcc >/dev/null 2>&1 || { ORT_ERROR="gcc missing; run android_demo/install_toolchain.sh"; return 1; }
    [ -f "$ORT_HEADER_DIR/onnxruntime_c_api.h" ] \
        || { ORT_ERROR="ONNX Runtime C header missing ($ORT_HEADER_DIR); run android_demo/install_toolchain.sh"; return 1; }
    javac="$(command -v javac 2>/dev/null)" && jni="$(dirname "$(dirname "$(readlink -f "$javac")")")/include"
    [ -f "${jni:-/nonexistent}/jni.h" ] || jni="$(dirname "$(ls /usr/lib/jvm/*/include/jni.h 2>/dev/null | head -1)")"
    [ -f "$jni/jni.h" ] || { ORT_ERROR="no JDK jni.h; run android_demo/install_toolchain.sh"; return 1; }
    pkg="$("$py" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null)" \
        || { ORT_ERROR="no onnxruntime in $py (the project's venv)"; return 1; }
    lib="$(ls "$pkg"/capi/libonnxruntime.so.* 2>/dev/null | head -1)"
    [ -n "$lib" ] || { ORT_ERROR="no libonnxruntime.so.* in $pkg/capi"; return 1; }
    mkdir -p "$ORT_BUILD/lib"
    [ "$(readlink "$ORT_BUILD/lib/libonnxruntime.so.1")" = "$lib" ] || ln -sfn "$lib" "$ORT_BUILD/lib/libonnxruntime.so.1"
    cmd=(gcc -shared -fPIC -O2 -Wall -Werror -std=c11 -I"$jni" -I"$jni/linux" -I"$ORT_HEADER_DIR" -o "$ORT_BRIDGE"
         "$HERE/jni/ort_bridge.c" "$ORT_BUILD/lib/libonnxruntime.so.1" -Wl,-rpath,"$ORT_BUILD/lib")
    # the stamp: the command line plus size.mtime of the library, the source and the header
    stamp="${cmd[*]} $(stat -c %s.%Y "$lib" "$HERE/jni/ort_bridge.c" "$ORT_HEADER_DIR/onnxruntime_c_api.h" | tr '\n' ' ')"
    if [ -f "$ORT_BRIDGE" ] && [ "$stamp" = "$(cat "$ORT_BUILD/.bridge" 2>/dev/null)" ]; then
        return 0
    fi
    echo "building the ONNX Runtime JNI bridge against $(basename "$lib")"
    rm -f "$ORT_BRIDGE" "$ORT_BUILD/.bridge"
    if ! "${cmd[@]}" > "$ORT_BUILD/gcc.txt" 2>&1; then
        cat "$ORT_BUILD/gcc.txt" >&2
        ORT_ERROR="building jni/ort_bridge.c failed: $(head -c 1500 "$ORT_BUILD/gcc.txt")"
        return 1
    fi
    echo "$stamp" > "$ORT_BUILD/.bridge"
}
if ! build_bridge; then
    echo "error: the ONNX Runtime JNI bridge is not available: $ORT_ERROR (the OrtJniRuntime tests will fail)" >&2
fi

# The app: manifest + resources through aapt against the platform's framework resources (no Android SDK here).
if bash "$HERE/check_app.sh"; then app_ok=1; else app_ok=0; fi

REPORT="$BUILD/junit.txt"
# The real model's tokenizer.json (1.5 MB, not committed): tools/make_golden.py writes it here
# (`make_golden.py --tokenizer-only`); the tokenizer tests fail with that hint when it is missing.
QA_TOKENIZER="${SQUEEZE_QA_TOKENIZER:-$HERE/build/qa/tokenizer.json}"
java -Dsqueeze.qa.tokenizer="$QA_TOKENIZER" -Dsqueeze.ort.bridge="$ORT_BRIDGE" -Dsqueeze.ort.model="$ORT_MODEL" \
    -Dsqueeze.ort.decoder="$ORT_DECODER" \
    -Dsqueeze.ort.error="$ORT_ERROR" -jar "$CONSOLE" \
    -cp "$CLASSES:$HERE/core/src/test/resources:$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
    --scan-classpath "$CLASSES" --fail-if-no-tests \
    --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii "$@" 2>&1 | tee "$REPORT"
status=${PIPESTATUS[0]}

passed=$(sed -n 's/.*\[ *\([0-9]*\) tests successful *\].*/\1/p' "$REPORT" | tail -1)
failed=$(sed -n 's/.*\[ *\([0-9]*\) tests failed *\].*/\1/p' "$REPORT" | tail -1)
passed=${passed:-0}
failed=${failed:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # e.g. no tests found, or the launcher failed
if [ "$app_ok" -eq 1 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi
echo "$passed passed, $failed failed"
exit "$status"
