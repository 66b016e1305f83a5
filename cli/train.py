"""`mmsr train`: fine-tune the encoder tops, the fusion and the sequence model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmsr.config import MAX_SEED
from mmsr_cli.common import SetOption, checked_by, log, progress_bar


def _empty_run_name(value: str) -> str | None:
    # "" is init_from's own "no transfer": given on the command line it would train from scratch without a word.
    return None if value.strip() else "is empty; name the run to start from (or leave --init-from out)"


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML/YAML config (see configs/); a top-level base = \"OTHER.toml\" is read first, this file over it."),
    overrides: Optional[list[str]] = SetOption,
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name or path (overrides the config)."),
    run: Optional[str] = typer.Option(None, "--run", "--run-dir", help="Run name under $MMSR_HOME/runs, or a path "
                                      "(under torchrun spell it --run-dir: torchrun reads --run as its --run-path). "
                                      "Default: DATASET-MODEL-SEQUENCE."),
    from_cache: bool = typer.Option(False, "--from-cache", help="Read the frozen layers' states from the zarr cache "
                                    "(`mmsr cache build` first). Without it the lower layers run every step."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint (after a "
                                "crash, Ctrl-C or SIGTERM: the run checkpoints the step it was on), with its "
                                "own config. --set optim.epochs=N lengthens a finished run (also "
                                "optim.decay_start_epoch, a longer early_stop_patience) when the steps taken keep "
                                "their learning rates."),
    resume_from: str = typer.Option("last", "--resume-from", help="With --resume: last | best. best when "
                                    "last.pt is damaged; the epochs after best.pt are trained again."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the run afresh, deleting the old one."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=MAX_SEED, help="Random seed (overrides the config)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", callback=checked_by(_empty_run_name), help="Start from another run's weights (best.pt, "
                                            "else last.pt; transfer; sets init_from): every tensor whose name and "
                                            "shape match is copied, listed in the run's init.json. Content kinds only "
                                            "(mmsr, morec), same encoders. Not re-applied on --resume."),
):
    """Train a recommender; writes config.json, metrics.jsonl and checkpoints to the run directory.

    Runs under torchrun too (DDP: gloo on CPU, NCCL on GPU); the batch size is global.

    All config errors are reported together before anything runs, among them a
    setting the chosen components would ignore (e.g. model.fusion_heads for gate,
    model.sequence_heads for gru4rec, optim.negatives with optim.loss=inbatch).

    One modality (encoders.vision_model="" or encoders.text_model=""): the default
    fusion becomes pool; a two-modality fusion from the file needs
    --set model.fusion=pool.

    model.kind picks the model: mmsr (default), idsr (item IDs), and the paper's
    baselines fdsa, carca, vqrec and morec (configs/baselines/; `mmsr models list`
    names every kind, fusion, sequence model, loss and score). Kinds other than mmsr
    take model.fusion* as a no-op, so one profile file drives a model and its
    baselines.

    --init-from RUN (transfer): refused before training for ID kinds, a missing
    source run or checkpoint, and encoders that differ from the source's.
    """
    # Deferred: these pull in torch (seconds), which `mmsr --help` and `mmsr data` never need.
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run

    flags = {"dataset": dataset, "seed": seed, "init_from": init_from}
    prepared = prepare_run(run, config, overrides, flags, resume=resume, resume_from=resume_from,
                           overwrite=overwrite, log=log)
    best = train(prepared.config, prepared.root, from_cache=from_cache, resume=prepared.resume,
                 resume_from=resume_from, progress=progress_bar, log=log)
    figures = "  ".join(f"{key} {value:.4f}" for key, value in (best.get("valid") or {}).items())
    log(f"[green]run {prepared.root}: best epoch {best.get('epoch')}" + (f"  {figures}" if figures else ""))
