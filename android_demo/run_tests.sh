#!/usr/bin/env bash
# Compile the pure-Kotlin core (android_demo/core: main + test sources) for the JVM and run its JUnit 5 tests.
# Prints a closing "N passed, N failed" line; exits non-zero when a test fails, nothing compiles, or the
# toolchain is missing (then it says to run android_demo/install_toolchain.sh).
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

REPORT="$BUILD/junit.txt"
# The real model's tokenizer.json (1.5 MB, not committed): tools/make_golden.py writes it here
# (`make_golden.py --tokenizer-only`); the tokenizer tests fail with that hint when it is missing.
QA_TOKENIZER="${SQUEEZE_QA_TOKENIZER:-$HERE/build/qa/tokenizer.json}"
java -Dsqueeze.qa.tokenizer="$QA_TOKENIZER" -jar "$CONSOLE" \
    -cp "$CLASSES:$HERE/core/src/test/resources:$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
    --scan-classpath "$CLASSES" --fail-if-no-tests \
    --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii "$@" 2>&1 | tee "$REPORT"
status=${PIPESTATUS[0]}

passed=$(sed -n 's/.*\[ *\([0-9]*\) tests successful *\].*/\1/p' "$REPORT" | tail -1)
failed=$(sed -n 's/.*\[ *\([0-9]*\) tests failed *\].*/\1/p' "$REPORT" | tail -1)
passed=${passed:-0}
failed=${failed:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # e.g. no tests found, or the launcher failed
echo "$passed passed, $failed failed"
exit "$status"
