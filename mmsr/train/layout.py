"""The files of a run directory, named once (mmsr/train/run.py draws the tree): the trainer
writes them; resume, evaluation, transfer, studies and plots read them."""

from __future__ import annotations

import os
from pathlib import Path

from mmsr.json_files import read_json_object

CONFIG_FILE = "config.json"  # the resolved training config
RUN_FILE = "run.json"  # how the run was started: item feed, processes, the dataset's content hash
INIT_FILE = "init.json"  # transfer only: what was copied from the source run
METRICS_FILE = "metrics.jsonl"  # one record per finished epoch
CHECKPOINT_DIR = "checkpoints"
# What a damaged config.json or run.json of a run is told to do.
REMAKE_RUN = "put it back from a copy, or train the run again (--overwrite)"


def read_run_json(root: str | os.PathLike, name: str) -> dict:
    """A run's config.json or run.json as its JSON object; a damaged one is named."""
    return read_json_object(Path(root) / name, remake=REMAKE_RUN)


def checkpoint_dir(root: str | os.PathLike) -> Path:
    return Path(root) / CHECKPOINT_DIR


def checkpoint_file(root: str | os.PathLike, point: str) -> Path:
    """`point`: "last" (the resume point) or "best" (the best validation epoch)."""
    return checkpoint_dir(root) / f"{point}.pt"
