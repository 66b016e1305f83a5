#!/usr/bin/env bash
# Installs mmsr into .venv and runs the main job on the embedded demo dataset:
# data -> cache -> train -> eval, with the CPU demo profile (configs/demo-cpu.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MMSR=.venv/bin/mmsr
$MMSR data demo --name demo
$MMSR data info demo
if $MMSR cache --help >/dev/null 2>&1; then
  $MMSR models prepare
  $MMSR cache build --dataset demo --config configs/demo-cpu.toml
fi
if $MMSR train --help >/dev/null 2>&1; then
  $MMSR train --from-cache --config configs/demo-cpu.toml --run demo-cpu --overwrite
  $MMSR eval --run demo-cpu --faiss --split test
  $MMSR eval --run demo-cpu --faiss --split cold
fi
