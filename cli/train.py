"""`mmsr train`: fine-tune the encoder tops, the fusion and the sequence model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from mmsr import paths
from mmsr_cli.common import SetOption, console, is_rank_zero, progress_bar


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML/YAML config (see configs/)."),
    overrides: Optional[list[str]] = SetOption,
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name or path (overrides the config)."),
    run: Optional[str] = typer.Option(None, "--run", "--run-dir", help="Run name under $MMSR_HOME/runs, or a path "
                                      "(under torchrun spell it --run-dir: torchrun reads --run as its --run-path). "
                                      "Default: DATASET-MODEL-SEQUENCE."),
    from_cache: bool = typer.Option(False, "--from-cache", help="Read the frozen layers' states from the zarr cache "
                                    "(`mmsr cache build` first). Without it the lower layers run every step."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the run afresh, deleting the old one."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (overrides the config)."),
):
    """Train a recommender; writes config.json, metrics.jsonl and checkpoints to the run directory.

    Runs under torchrun too (DDP: gloo on CPU, NCCL on GPU); the batch size is global.
    """
    from mmsr import config as config_lib
    from mmsr.errors import MMSRError
    from mmsr.train.config import TrainConfig
    from mmsr.train.recipe import train as run_training
    from mmsr.train.run import run_config

    extra = list(overrides or [])
    if dataset:
        extra.append(f"dataset={dataset}")
    if seed is not None:
        extra.append(f"seed={seed}")
    cfg = config_lib.load(TrainConfig, config, extra)
    name = run or f"{Path(cfg.dataset).name}-{cfg.model.kind}-{cfg.model.sequence}"
    run_dir = paths.runs_dir(name)
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        # torchrun --max-restarts passes the same --resume on the first start: begin afresh.
        console.print(f"no checkpoint in {run_dir} yet: starting the run") if is_rank_zero() else None
        resume = False
    if resume:
        if config is None and not extra:
            cfg = run_config(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise MMSRError("run directory already exists", where=run_dir,
                            hint="pass --resume to continue it, --overwrite to start again, or --run NAME")
        if is_rank_zero():
            shutil.rmtree(run_dir)

    best = run_training(cfg, run_dir, from_cache=from_cache, resume=resume,
                        progress=lambda description, total: progress_bar(description, total, unit="steps"),
                        log=lambda text: console.print(text) if is_rank_zero() else None)
    if is_rank_zero():
        console.print(f"[green]run {run_dir}: best epoch {best.get('epoch')} {best.get('valid')}")
