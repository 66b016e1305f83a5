"""A run directory, and rebuilding a trained model from it alone (nanoGPT style).

    RUN/
      config.json          the resolved TrainConfig
      run.json             how it was trained (item feed), written at start
      metrics.jsonl        one line per epoch: loss, lr, validation metrics
      checkpoints/last.pt  latest state (resume point); best.pt: best validation NDCG@10
      eval_<split>.json    written by `mmsr eval`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mmsr import config as config_lib
from mmsr import paths
from mmsr.data.dataset import Dataset, load_dataset
from mmsr.data.split import Split, split_dataset
from mmsr.errors import MMSRError
from mmsr.train.checkpoint import load_checkpoint
from mmsr.train.config import TrainConfig
from mmsr.train.model import Recommender, build_model


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


def load_run(name_or_path: str | Path, checkpoint: str = "best", device: str = "auto") -> LoadedRun:
    from mmsr.distributed import pick_device
    from mmsr.train.recipe import open_feed

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
    model = build_model(config, dataset.num_items).to(dev)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected:
        raise MMSRError(f"checkpoint has weights this model does not: {unexpected[:3]}", where=ckpt_path)
    model.eval()
    feed, _ = open_feed(config, model, dataset, info.get("from_cache", False), dev)
    return LoadedRun(root, config, model, dataset, split, feed, dev, info | {"checkpoint": str(ckpt_path),
                                                                          "epoch": state.get("epoch")})
