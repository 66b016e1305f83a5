#!/usr/bin/env bash
# Installs mmsr into .venv and runs the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tests run in parallel, one worker per core (pytest-xdist), a whole file per worker so that a
# module's shared fixtures are built once; MMSR_TEST_WORKERS=0 runs them in this one process.
WORKERS=${MMSR_TEST_WORKERS:-$(.venv/bin/python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile "$@"
