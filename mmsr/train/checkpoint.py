"""Atomic checkpoints that make `--resume` continue as if the run had never stopped.

A checkpoint holds the trainable weights (never the frozen lower layers: they come from
the pretrained model, whose identity is recorded in the run), the optimizer, the scheduler,
the torch RNG state, the position (epoch, step within the epoch, global step) and the config
it was trained with.

Reading one never runs code: `torch.load(weights_only=True)` accepts tensors and plain data
only, so a run directory from someone else cannot execute anything on `mmsr eval` or
`--resume`. torch writes a zip archive with a CRC-32 per member; those are checked before
loading, so a truncated or bit-flipped file is refused by name instead of loading garbage.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist

from mmsr.atomic import atomic_write_bytes
from mmsr.errors import MMSRError


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator and, on a GPU, its own device's."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def gather_rng_states(device: torch.device) -> list[dict]:
    """Every rank's `rng_state`, in rank order (collective under torch.distributed): a checkpoint
    written by rank 0 must give each rank back its own stream, since ranks draw differently
    (dropout over batches of other shapes) and each GPU has its own generator."""
    mine = rng_state(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def save_checkpoint(path: Path, *, model_state: dict, optimizer=None, scheduler=None, epoch: int, step: int,
                    global_step: int, best: dict | None = None, extra: dict | None = None,
                    rng: list[dict] | None = None, config: dict | None = None) -> None:
    """`rng`: every rank's `rng_state` (`gather_rng_states`); default: this process's, on the CPU.
    `config`: the config the weights were trained with, as config.json holds it (a resume checks
    that the file still says so)."""
    bad = [name for name, tensor in model_state.items() if tensor.is_floating_point() and not bool(
        torch.isfinite(tensor).all())]
    if bad:  # never overwrite a good checkpoint with weights that cannot be used
        raise MMSRError(f"refusing to save non-finite weights ({', '.join(bad[:3])})", where=path,
                        hint="the run diverged; lower optim.lr or keep optim.grad_clip > 0, and resume "
                             "from the checkpoint that is there")
    state = {
        "model": model_state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng if rng is not None else [rng_state(torch.device("cpu"))],
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "best": best or {},
        "extra": extra or {},
        "config": config,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, hint: str | None = None) -> dict:
    """The checkpoint's state, weights only; MMSRError naming the file when it is missing,
    truncated, corrupted or holds anything but tensors and plain data. `hint`: what to do then."""
    path = Path(path)
    if not path.is_file():
        raise MMSRError("checkpoint not found", where=path, hint=hint or "train first, or drop --resume")
    data = path.read_bytes()  # read once: checked, then loaded from memory
    damage = _damage(io.BytesIO(data))
    if damage:
        raise MMSRError(f"damaged checkpoint: {damage}", where=path,
                        hint=hint or "restore the file from a copy, or train again")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types; the message names the cause
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise MMSRError(f"refusing to load: the checkpoint holds more than weights and plain data ({first})",
                            where=path, hint="only load checkpoints written by mmsr; a pickled object "
                                             "could run code") from None
        raise MMSRError(f"cannot read checkpoint: {type(error).__name__}: {first}", where=path,
                        hint=hint) from None


def _damage(archive_file: io.BytesIO) -> str | None:
    """What is wrong with the archive (truncated, bad CRC), or None."""
    try:
        with zipfile.ZipFile(archive_file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        return f"not a complete checkpoint archive (truncated?): {error}"
    except Exception as error:  # noqa: BLE001 - zipfile raises zlib/struct errors on garbage
        return f"unreadable archive: {type(error).__name__}: {error}"
    return f"checksum mismatch in {bad}" if bad else None


def restore_rng(state: dict, rank: int = 0, device: torch.device = torch.device("cpu")) -> None:
    """Give this rank its own random state back. Resumed with another number of ranks, rank r
    takes saved rank r mod the saved count: the run continues, no longer bit-identically."""
    if "rng" not in state:  # written before per-rank states: rank 0's CPU state, every GPU's as rank 0 saw them
        torch.set_rng_state(state["rng_cpu"])
        saved = state.get("rng_cuda") or []
        index = device.index or 0
        if device.type == "cuda" and index < len(saved):
            torch.cuda.set_rng_state(saved[index], device)
        return
    mine = state["rng"][rank % len(state["rng"])]
    torch.set_rng_state(mine["cpu"])
    if mine["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
