"""The files of a run directory, named once (mmsr/train/run.py draws the tree): the trainer
writes them; resume, evaluation, transfer, studies and plots read them."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.json"  # the resolved training config
RUN_FILE = "run.json"  # how the run was started: item feed, processes, the dataset's content hash
INIT_FILE = "init.json"  # transfer only: what was copied from the source run
METRICS_FILE = "metrics.jsonl"  # one record per finished epoch
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(root: str | os.PathLike) -> Path:
    return Path(root) / CHECKPOINT_DIR


def checkpoint_file(root: str | os.PathLike, point: str) -> Path:
    """`point`: "last" (the resume point) or "best" (the best validation epoch)."""
    return checkpoint_dir(root) / f"{point}.pt"
