#!/usr/bin/env bash
# mmsr-torchrun: the multi-node recipe. Run the same line on every node (docs/docker.md):
#
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 mmsr-torchrun train --run-dir r1 --from-cache --config r1.toml --resume
#
# which is
#   torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT \
#            --rdzv-id ID --max-restarts R -m mmsr_cli.app ARGS...
# NNODES may be MIN:MAX for an elastic job. MMSR_TORCHRUN_SCRIPT replaces `-m mmsr_cli.app`
# by a script path (the tests use it). TORCHRUN names the torchrun executable.
set -euo pipefail

NNODES="${NNODES:-1}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
RDZV_ENDPOINT="${RDZV_ENDPOINT:-127.0.0.1:29500}"
RDZV_ID="${RDZV_ID:-mmsr}"
MAX_RESTARTS="${MAX_RESTARTS:-0}"

if [[ -n "${MMSR_TORCHRUN_SCRIPT:-}" ]]; then
    target=("${MMSR_TORCHRUN_SCRIPT}")
else
    target=(-m mmsr_cli.app)
fi

exec "${TORCHRUN:-torchrun}" \
    --nnodes "${NNODES}" \
    --nproc-per-node "${NPROC_PER_NODE}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${RDZV_ENDPOINT}" \
    --rdzv-id "${RDZV_ID}" \
    --max-restarts "${MAX_RESTARTS}" \
    "${target[@]}" "$@"
