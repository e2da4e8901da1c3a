#!/usr/bin/env bash
# Build the platform-free Swift core (ios_demo/SqueezeCore) and run its XCTest tests on Linux, inside the Debian
# trixie chroot install_toolchain.sh made (Swift 6.0 needs trixie's glibc). Copies the package and the golden files
# (android_demo/core/src/test/resources/golden, every .gz decompressed; plus the real model's tokenizer.json from
# android_demo/build/qa/, override with SQUEEZE_QA_TOKENIZER) into the chroot's /work, mounts /proc for the run and
# unmounts it on any exit, runs `swift test --disable-swift-testing` (XCTest; without the flag swift-testing's
# runner prints "0 tests"), and exits with its status. Build products stay in the chroot (/work/build, i.e.
# ios_demo/.toolchain/trixie/work/build). Extra arguments go to swift test (e.g. --filter JsonTests).
# The package's SqueezeDemoKit target (the app's screens, camera, Core ML runtime; Apple-only code behind
# `#if canImport(...)`) is built with it; the Xcode app's own sources (ios_demo/SqueezeDemo/*.swift) are then
# type-checked against the built modules (`swiftc -typecheck`: inactive `#if` blocks are parsed, so syntax errors in
# Apple-only code fail here too), closing with one "app sources: ..." line. Exit status: swift test's, else the check's.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/.toolchain/trixie"
GOLDEN_SRC="$HERE/../android_demo/core/src/test/resources/golden"
QA_TOKENIZER="${SQUEEZE_QA_TOKENIZER:-$HERE/../android_demo/build/qa/tokenizer.json}"
WORK="$ROOT/work"

if [ ! -f "$HERE/.toolchain/trixie.ok" ] || ! chroot "$ROOT" /usr/bin/test -x /usr/bin/swift 2>/dev/null; then
    echo "error: the Swift toolchain (Debian trixie chroot at $ROOT) is missing; run ios_demo/install_toolchain.sh (as root)" >&2
    exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "error: run_tests.sh needs root (chroot, mount)" >&2; exit 2; }
[ -d "$GOLDEN_SRC" ] || { echo "error: no golden files at $GOLDEN_SRC; run android_demo/tools/make_golden.py" >&2; exit 2; }

# the package: copied with its mtimes (swift build then recompiles only what changed); old files removed
mkdir -p "$WORK/SqueezeCore" "$WORK/golden" "$WORK/build"
rm -rf "$WORK/SqueezeCore"
cp -a "$HERE/SqueezeCore" "$WORK/SqueezeCore"
rm -rf "$WORK/SqueezeCore/.build"
rm -rf "$WORK/SqueezeDemo"
mkdir -p "$WORK/SqueezeDemo"
cp -p "$HERE"/SqueezeDemo/*.swift "$WORK/SqueezeDemo/"

# the golden files, decompressed (Foundation on Linux reads no gzip); rewritten every run (2 MB, well under a second)
rm -rf "$WORK/golden" && mkdir -p "$WORK/golden"
for f in "$GOLDEN_SRC"/*; do
    name="$(basename "$f")"
    case "$name" in
        *.gz) gzip -dc "$f" > "$WORK/golden/${name%.gz}" || { echo "error: cannot decompress $f" >&2; exit 2; } ;;
        *) cp "$f" "$WORK/golden/$name" ;;
    esac
done
if [ -f "$QA_TOKENIZER" ]; then
    cp -p "$QA_TOKENIZER" "$WORK/tokenizer.json"
else
    rm -f "$WORK/tokenizer.json"  # the tokenizer tests then fail with a hint
fi

mounted=""
cleanup() {
    if [ -n "$mounted" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc" || { echo "error: cannot mount proc in $ROOT" >&2; exit 2; }
    mounted=1
fi

chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    SQUEEZE_GOLDEN_DIR=/work/golden SQUEEZE_QA_TOKENIZER=/work/tokenizer.json \
    /bin/sh -c 'cd /work/SqueezeCore && exec swift test --disable-swift-testing --scratch-path /work/build "$@"' swift-test "$@" 2>&1
status=$?

# the Xcode app's own sources against the modules swift test just built (a few seconds)
app_files=$(cd "$WORK" && ls SqueezeDemo/*.swift | wc -l)
chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    /bin/sh -c 'cd /work && exec swiftc -typecheck -I /work/build/debug/Modules SqueezeDemo/*.swift' 2>&1
check=$?
if [ "$check" -eq 0 ]; then
    echo "app sources: $app_files files in ios_demo/SqueezeDemo type-checked on Linux: ok"
else
    echo "app sources: $app_files files in ios_demo/SqueezeDemo type-checked on Linux: FAILED (exit $check)"
fi
[ "$status" -ne 0 ] && exit "$status"
exit "$check"
