#!/usr/bin/env bash
# Installs mmsr into .venv and runs the main job on the embedded demo dataset:
# data -> cache -> train -> eval (+ one recommendation), with the CPU demo profile
# (configs/demo-cpu.toml). Reruns reuse what is already there: the dataset, the converted
# model, finished cache chunks; the training run is started afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MMSR=.venv/bin/mmsr
CONFIG=configs/demo-cpu.toml
$MMSR data demo --name demo
$MMSR data info demo
$MMSR models prepare
$MMSR cache build --dataset demo --config "$CONFIG"
$MMSR train --from-cache --config "$CONFIG" --run demo-cpu --overwrite
$MMSR eval --run demo-cpu --faiss --split test,cold,cold-test,new  # one pass of the item tower for all four
$MMSR recommend --run demo-cpu --history i00001,i00002,i00003 -k 5
