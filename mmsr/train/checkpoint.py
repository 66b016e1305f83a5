"""Atomic checkpoints that make `--resume` continue as if the run had never stopped.

A checkpoint holds the trainable weights (never the frozen lower layers: they come from
the pretrained model, whose identity is recorded in the run), the optimizer, the scheduler,
the torch RNG state, and the position (epoch, step within the epoch, global step).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from mmsr.atomic import atomic_write_bytes
from mmsr.errors import MMSRError


def save_checkpoint(path: Path, *, model_state: dict, optimizer=None, scheduler=None, epoch: int, step: int,
                    global_step: int, best: dict | None = None, extra: dict | None = None) -> None:
    state = {
        "model": model_state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "best": best or {},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise MMSRError("checkpoint not found", where=path, hint="train first, or drop --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated file cannot happen with atomic writes, but a copied one can
        raise MMSRError(f"cannot read checkpoint: {type(error).__name__}: {error}", where=path) from None


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
