"""A run directory, and rebuilding a trained model from it alone (nanoGPT style).

    RUN/
      config.json          the resolved TrainConfig
      run.json             how it was trained (item feed), written at start
      metrics.jsonl        one line per epoch: loss, lr, validation metrics
      checkpoints/last.pt  latest state (resume point); best.pt: best validation NDCG@10
      eval_<split>.json    written by `mmsr eval`

`prepare_run` decides which directory and which config a `mmsr train` uses; `load_run`
rebuilds the trained model from the directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmsr import config as config_lib
from mmsr import paths
from mmsr.data.dataset import Dataset, load_dataset
from mmsr.distributed import init_from_env, pick_device
from mmsr.data.split import Split, split_dataset
from mmsr.errors import MMSRError
from mmsr.locks import output_lock
from mmsr.train.checkpoint import load_checkpoint
from mmsr.train.config import TrainConfig
from mmsr.train.feeds import open_feed
from mmsr.train.model import Recommender, build_model


RESUME_POINTS = ("last", "best")


@dataclass
class PreparedRun:
    root: Path
    config: TrainConfig
    resume: bool  # continue from checkpoints/last.pt (False: a fresh run)


@dataclass
class LoadedRun:
    root: Path
    config: TrainConfig
    model: Recommender
    dataset: Dataset
    split: Split
    feed: object
    device: torch.device
    info: dict


def run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise MMSRError("not a run directory (no config.json)", where=run_dir, hint="train one with `mmsr train`")
    return config_lib.build(TrainConfig, json.loads(path.read_text()), source=f"config {path}")


def default_run_name(config: TrainConfig) -> str:
    return f"{Path(config.dataset).name}-{config.model.kind}-{config.model.sequence}"


def prepare_run(run: str | Path | None = None, config_path: str | Path | None = None,
                overrides: list[str] | None = None, flags: dict[str, Any] | None = None, *, resume: bool = False,
                resume_from: str = "last", overwrite: bool = False,
                log: Callable[[str], None] = print) -> PreparedRun:
    """The directory and the config of a training run, before any training.

    - config: defaults <- `config_path` <- `overrides` (--set) <- `flags` (dotted keys, None = not given).
    - directory: `run` (a name under $MMSR_HOME/runs, or a path); default DATASET-KIND-SEQUENCE.
    - `resume`: continue from checkpoints/last.pt, with the run's saved config unless a file, an
      override or a flag is given. With no checkpoint yet the run starts afresh in the same
      directory: torchrun --max-restarts passes the same --resume on the first start too, and a
      run that died before its first checkpoint must restart from a plain rerun.
    - Otherwise an existing non-empty directory is refused, or deleted (by rank 0) with `overwrite`.
    """
    config = config_lib.load(TrainConfig, config_path, overrides, flags)
    root = paths.runs_dir(run or default_run_name(config))
    if resume_from not in RESUME_POINTS:
        raise MMSRError(f"--resume-from {resume_from!r}", hint=f"use one of {', '.join(RESUME_POINTS)}")
    checkpoint = root / "checkpoints" / f"{resume_from}.pt"
    given = config_path is not None or bool(overrides) or any(v is not None for v in (flags or {}).values())
    if resume and not given and (root / "config.json").is_file():
        config = run_config(root)
    if resume and resume_from != "last" and not checkpoint.is_file():
        raise MMSRError("checkpoint not found", where=checkpoint, hint="resume from last, or start again with "
                                                                        "--overwrite")
    restart = resume and not checkpoint.is_file()  # stopped before its first checkpoint
    resume = resume and not restart
    # Joins the process group under torchrun, on the device the trainer will use.
    dist = init_from_env(pick_device(config.device))
    if restart and dist.main:
        log(f"no checkpoint in {root} yet: starting the run")
    if not resume and root.exists() and any(root.iterdir()):
        if not overwrite and not restart:  # a restart loses nothing: there is no checkpoint
            raise MMSRError("run directory already exists", where=root,
                            hint="pass --resume to continue it, --overwrite to start again, or --run NAME")
        if dist.main:
            with output_lock(root, "training run"):  # never delete a run that is being trained
                shutil.rmtree(root)
    return PreparedRun(root, config, resume)


def load_run(name_or_path: str | Path, checkpoint: str = "best", device: str = "auto") -> LoadedRun:
    root = paths.runs_dir(name_or_path)
    config = run_config(root)
    info = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
    ckpt_path = root / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not ckpt_path.is_file():
        ckpt_path = root / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt_path)
    dev = pick_device(device)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    model = build_model(config, dataset.num_items, categories=dataset.item_categories()).to(dev)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected:
        raise MMSRError(f"checkpoint has weights this model does not: {unexpected[:3]}", where=ckpt_path)
    model.eval()
    feed, _ = open_feed(config, model, dataset, info.get("from_cache", False), dev)
    return LoadedRun(root, config, model, dataset, split, feed, dev, info | {"checkpoint": str(ckpt_path),
                                                                          "epoch": state.get("epoch")})
