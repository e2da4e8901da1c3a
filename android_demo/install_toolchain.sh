#!/usr/bin/env bash
# Installs what android_demo/run_tests.sh needs to compile and unit-test the pure-Kotlin core on the JVM:
#   - kotlinc (JetBrains Kotlin compiler 2.x with kotlin-test), from npm, into android_demo/.toolchain/
#   - JUnit 5 (console launcher + jupiter API), from the Debian package junit5
#   - a Java 17+ runtime (Debian default-jre-headless) when no java is on PATH
#   - for the ONNX Runtime JNI bridge (android_demo/jni/ort_bridge.c, built by run_tests.sh against the onnxruntime
#     PyPI wheel's libonnxruntime.so): gcc, a JDK's jni.h (openjdk-17-jdk-headless when missing) and ONNX Runtime's
#     C header from Debian trixie's libonnxruntime-dev (downloaded with apt-get download through a temporary,
#     private apt configuration, unpacked with dpkg-deb -x into android_demo/.toolchain/onnxruntime/, not installed)
#   - for the app check (android_demo/check_app.sh): Debian's aapt and android-framework-res (the platform's
#     framework-res.apk, Android 10 / API 29), which stand in for the Android SDK's build tools and android.jar
# Idempotent: anything already present is left alone. apt-get needs root (it is run as root on CI).
set -euo pipefail

KOTLIN_VERSION="${KOTLIN_VERSION:-2.4.20}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLCHAIN="$HERE/.toolchain"
KOTLINC="$TOOLCHAIN/node_modules/kotlin-compiler/bin/kotlinc"
JUNIT_JAR=/usr/share/java/junit-platform-console-standalone.jar

say() { echo "install_toolchain: $*"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        say "error: $* missing and not root; run: sudo apt-get install -y $*" >&2
        exit 1
    fi
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Java runtime (kotlinc and the JUnit launcher both run on it)
if ! command -v java >/dev/null 2>&1; then
    say "installing a Java runtime (default-jre-headless)"
    apt_install default-jre-headless
fi

# JUnit 5
if ! dpkg -s junit5 >/dev/null 2>&1 || [ ! -f "$JUNIT_JAR" ]; then
    say "installing junit5 (Debian)"
    apt_install junit5
fi

# kotlinc from npm, project-local
if [ -x "$KOTLINC" ] && grep -q "\"version\": \"$KOTLIN_VERSION\"" "$TOOLCHAIN/node_modules/kotlin-compiler/package.json" 2>/dev/null; then
    say "kotlinc $KOTLIN_VERSION already in $TOOLCHAIN"
else
    if ! command -v npm >/dev/null 2>&1; then
        say "installing npm (Debian)"
        apt_install npm
    fi
    say "installing kotlin-compiler@$KOTLIN_VERSION from npm into $TOOLCHAIN"
    mkdir -p "$TOOLCHAIN"
    [ -f "$TOOLCHAIN/package.json" ] || echo '{"name": "android-demo-toolchain", "private": true}' > "$TOOLCHAIN/package.json"
    npm install --prefix "$TOOLCHAIN" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION"
fi
chmod +x "$TOOLCHAIN"/node_modules/kotlin-compiler/bin/* 2>/dev/null || true

# --- ONNX Runtime JNI bridge: gcc, jni.h, onnxruntime_c_api.h
if ! command -v gcc >/dev/null 2>&1 || [ ! -f /usr/include/stdio.h ]; then
    say "installing gcc (Debian)"
    apt_install gcc libc6-dev
fi
jni_include() {  # the include dir of the JDK that owns javac (or any JDK under /usr/lib/jvm)
    local javac h
    javac="$(command -v javac 2>/dev/null)" && h="$(dirname "$(dirname "$(readlink -f "$javac")")")/include" \
        && [ -f "$h/jni.h" ] && { echo "$h"; return; }
    h="$(ls -d /usr/lib/jvm/*/include 2>/dev/null | while read -r d; do [ -f "$d/jni.h" ] && echo "$d"; done | head -1)"
    [ -n "$h" ] && echo "$h"
}
if [ -z "$(jni_include)" ]; then
    say "installing a JDK for jni.h (openjdk-17-jdk-headless)"
    apt_install openjdk-17-jdk-headless
fi
JNI_INCLUDE="$(jni_include)"
[ -n "$JNI_INCLUDE" ] || { say "error: no jni.h found after installing openjdk-17-jdk-headless" >&2; exit 1; }

ORT_DEV="$TOOLCHAIN/onnxruntime"
ORT_SUITE="${ORT_DEB_SUITE:-trixie}"
if [ -f "$ORT_DEV/include/onnxruntime_c_api.h" ]; then
    say "ONNX Runtime C header already in $ORT_DEV ($(cat "$ORT_DEV/source" 2>/dev/null))"
else
    say "downloading libonnxruntime-dev from Debian $ORT_SUITE (header only; not installed)"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts" "$tmp/deb"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $ORT_SUITE main" > "$tmp/sources.list"
    # a private apt configuration: the machine's sources, lists and package state are left untouched
    apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
              -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "Dir::State::status=/dev/null"
              -o "APT::Architecture=$(dpkg --print-architecture)" -o "Acquire::Languages=none"
              -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
    apt-get "${apt_opts[@]}" -qq update \
        || { say "error: apt-get update for Debian $ORT_SUITE (deb.debian.org) failed" >&2; exit 1; }
    (cd "$tmp/deb" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev) \
        || { say "error: apt-get download libonnxruntime-dev from Debian $ORT_SUITE failed" >&2; exit 1; }
    deb="$(ls "$tmp"/deb/libonnxruntime-dev_*.deb)"
    dpkg-deb -x "$deb" "$tmp/x"
    [ -f "$tmp/x/usr/include/onnxruntime/onnxruntime_c_api.h" ] \
        || { say "error: $(basename "$deb") has no usr/include/onnxruntime/onnxruntime_c_api.h" >&2; exit 1; }
    rm -rf "$ORT_DEV.partial" && mkdir -p "$ORT_DEV.partial"
    cp -r "$tmp/x/usr/include/onnxruntime" "$ORT_DEV.partial/include"
    basename "$deb" > "$ORT_DEV.partial/source"
    rm -rf "$ORT_DEV" && mv "$ORT_DEV.partial" "$ORT_DEV"
    rm -rf "$tmp"
    trap - EXIT
fi
# --- app check: aapt + the platform's framework resources (Debian; no Android SDK or Google Maven here)
FRAMEWORK_RES=/usr/share/android-framework-res/framework-res.apk
if ! command -v aapt >/dev/null 2>&1 || [ ! -f "$FRAMEWORK_RES" ]; then
    say "installing aapt and android-framework-res (Debian) for check_app.sh"
    if [ "$(id -u)" -ne 0 ]; then
        say "error: aapt or $FRAMEWORK_RES missing and not root; run: sudo apt-get install -y aapt android-framework-res" >&2
        exit 1
    fi
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq || { say "error: apt-get update failed" >&2; exit 1; }
        _APT_UPDATED=1
    fi
    for pkg in aapt android-framework-res; do
        candidate="$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
        if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
            say "error: the Debian package $pkg is not available from this machine's apt sources; the app check" \
                "(check_app.sh) needs aapt and android-framework-res (both in Debian bookworm main)" >&2
            exit 1
        fi
    done
    apt_install aapt android-framework-res
    [ -f "$FRAMEWORK_RES" ] || { say "error: android-framework-res installed no $FRAMEWORK_RES" >&2; exit 1; }
fi

ORT_API="$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$ORT_DEV/include/onnxruntime_c_api.h")"

# The header's C API version must be one the onnxruntime wheel's library serves (the C API is backward compatible:
# an older header is fine). Checked here when the project's venv already has onnxruntime, else by run_tests.sh.
PY="$HERE/../.venv/bin/python"
if [ -x "$PY" ] && ORT_PKG="$("$PY" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null)"; then
    lib="$(ls "$ORT_PKG"/capi/libonnxruntime.so.* 2>/dev/null | head -1)"
    [ -n "$lib" ] || { say "error: no libonnxruntime.so.* in $ORT_PKG/capi (the onnxruntime wheel)" >&2; exit 1; }
    tmp="$(mktemp -d)"
    ln -s "$lib" "$tmp/libonnxruntime.so.1"
    printf '%s\n' '#include <stdio.h>' '#include "onnxruntime_c_api.h"' \
        'int main(void) { const OrtApiBase *b = OrtGetApiBase();' \
        '  if (b->GetApi(ORT_API_VERSION) == NULL) { printf("library %s lacks C API %d\n", b->GetVersionString(), ORT_API_VERSION); return 1; }' \
        '  printf("%s\n", b->GetVersionString()); return 0; }' > "$tmp/check.c"
    if gcc -o "$tmp/check" -I"$ORT_DEV/include" "$tmp/check.c" "$tmp/libonnxruntime.so.1" -Wl,-rpath,"$tmp" 2>"$tmp/err" \
       && ORT_LIB_VERSION="$("$tmp/check")"; then
        rm -rf "$tmp"
        say "ONNX Runtime library $ORT_LIB_VERSION ($lib) serves the header's C API $ORT_API"
    else
        say "error: the ONNX Runtime header ($(cat "$ORT_DEV/source"), C API $ORT_API) does not work with $lib: $(cat "$tmp/err" 2>/dev/null) ${ORT_LIB_VERSION:-$("$tmp/check" 2>&1)}" >&2
        rm -rf "$tmp"
        exit 1
    fi
else
    say "note: no onnxruntime in $PY yet; run_tests.sh checks the C API version when it builds the bridge"
fi
say "ok: $("$KOTLINC" -version 2>&1 | tail -1); junit $(dpkg-query -W -f='${Version}' junit5); jni.h in $JNI_INCLUDE; ONNX Runtime header C API $ORT_API; aapt $(dpkg-query -W -f='${Version}' aapt) + $FRAMEWORK_RES"
