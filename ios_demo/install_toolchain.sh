#!/usr/bin/env bash
# Installs what ios_demo/run_tests.sh needs to build and unit-test the platform-free Swift core (SqueezeCore) on
# Linux: a Debian trixie chroot under ios_demo/.toolchain/trixie/ with Debian's swiftlang (Swift 6.0.x, which
# needs glibc >= 2.38, so it cannot be installed on bookworm itself) plus libc6-dev and libstdc++-14-dev.
#   - debootstrap from the host's apt when missing
#   - `debootstrap --variant=minbase trixie` from http://deb.debian.org/debian (override: TRIXIE_MIRROR)
#   - inside the chroot: apt-get install swiftlang libc6-dev libstdc++-14-dev (~530 MB download, ~2.5 GB on disk)
# Idempotent: a finished chroot (stamp .toolchain/trixie.ok) is a quick no-op; an interrupted debootstrap is
# started over, an interrupted apt-get install is resumed. Needs root (debootstrap, chroot, mount).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLCHAIN="$HERE/.toolchain"
ROOT="$TOOLCHAIN/trixie"
STAMP="$TOOLCHAIN/trixie.ok"
MIRROR="${TRIXIE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(swiftlang libc6-dev libstdc++-14-dev)

say() { echo "install_toolchain: $*"; }

# /usr/bin/swift is an absolute symlink into the chroot's /usr/libexec/swift: test it from inside the chroot
has_swift() { [ -d "$ROOT/usr/bin" ] && chroot "$ROOT" /usr/bin/test -x /usr/bin/swift 2>/dev/null; }

if [ -f "$STAMP" ] && has_swift; then
    say "ok: $(cat "$STAMP") (chroot $ROOT)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "error: the Swift toolchain (a Debian trixie chroot) is not installed and this is not root; run: sudo $0" >&2
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

mkdir -p "$TOOLCHAIN"
# debootstrap leaves debootstrap/ inside the target until it has finished: start an interrupted one over
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ -d "$ROOT/debootstrap" ]; then
    rm -rf "$ROOT"
    keyring=()
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    say "debootstrap --variant=minbase trixie $ROOT $MIRROR (~1-3 min)"
    debootstrap --variant=minbase "${keyring[@]}" trixie "$ROOT" "$MIRROR"
fi

# apt-get inside the chroot: the host's DNS, /proc mounted for the maintainer scripts (unmounted on any exit)
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
mounted=""
cleanup() { if [ -n "$mounted" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" 2>/dev/null || true; fi; }
trap cleanup EXIT
if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc"
    mounted=1
fi
say "installing ${PACKAGES[*]} in the trixie chroot (~530 MB download)"
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get update -qq
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    apt-get install -y -qq "${PACKAGES[@]}"
chroot "$ROOT" apt-get clean
has_swift || { say "error: no /usr/bin/swift in the chroot after installing swiftlang" >&2; exit 1; }
version="$(chroot "$ROOT" /usr/bin/swift --version 2>&1 | grep -m1 -o 'Swift version [0-9.]*' || true)"
[ -n "$version" ] || { say "error: swift --version failed in the chroot: $(chroot "$ROOT" /usr/bin/swift --version 2>&1 | tail -3)" >&2; exit 1; }
echo "$version (Debian trixie swiftlang $(chroot "$ROOT" dpkg-query -W -f='${Version}' swiftlang))" > "$STAMP"
say "ok: $(cat "$STAMP") (chroot $ROOT, $(du -sh "$ROOT" 2>/dev/null | cut -f1))"
