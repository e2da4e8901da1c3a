#!/usr/bin/env bash
# Installs what android_demo/run_tests.sh needs to compile and unit-test the pure-Kotlin core on the JVM:
#   - kotlinc (JetBrains Kotlin compiler 2.x with kotlin-test), from npm, into android_demo/.toolchain/
#   - JUnit 5 (console launcher + jupiter API), from the Debian package junit5
#   - a Java 17+ runtime (Debian default-jre-headless) when no java is on PATH
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
say "ok: $("$KOTLINC" -version 2>&1 | tail -1); junit $(dpkg-query -W -f='${Version}' junit5)"
