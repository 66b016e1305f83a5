"""torch.distributed plumbing for torchrun: nothing home-made, just the environment it sets."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mmsr.errors import MMSRError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # Leave the group before the interpreter tears down gloo's threads (otherwise a rank
        # can abort with "terminate called without an active exception" at exit).
        atexit.register(_leave)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _leave() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def pick_device(name: str = "auto") -> torch.device:
    """auto | cpu | cuda | cuda:N. "auto" and a bare "cuda" take this process's GPU under
    torchrun (LOCAL_RANK), so every rank of a node gets its own; the one picker for the cache
    build, training and evaluation."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    requested = name
    if name in ("auto", "cuda"):
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MMSRError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMSRError(f"device {requested!r} but CUDA is not available", hint="use device=auto or cpu")
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
