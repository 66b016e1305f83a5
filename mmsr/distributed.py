"""torch.distributed plumbing for torchrun: nothing home-made, just the environment it sets."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from mmsr.errors import MMSRError

        raise MMSRError("device=cuda but CUDA is not available", hint="use device=auto or cpu")
    return torch.device(name)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
