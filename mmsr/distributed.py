"""torch.distributed plumbing for torchrun: nothing home-made, just the environment it sets."""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mmsr.errors import MMSRError
from mmsr.torchrun_env import env_int


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
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    env_int("RANK", None)  # torch reads it itself, with a bare ValueError or KeyError
    local_rank = env_int("LOCAL_RANK", 0)  # a launcher other than torchrun may leave it unset
    if not dist.is_initialized():
        if device.type == "cuda":
            # NCCL binds a communicator to a device; without `device_id` every rank's first
            # collective that uses the current device (the metric sums) would pick GPU 0.
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        # Leave the group before the interpreter tears down gloo's threads (otherwise a rank
        # can abort with "terminate called without an active exception" at exit).
        atexit.register(_leave)
        _joined[0] = True
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


_joined = [False]  # this process joined a process group (and so must end through exit_after_group)


def joined_group() -> bool:
    return _joined[0]


def _leave() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_after_group(code: int) -> None:
    """End a process that joined a process group with `code`, skipping the interpreter's teardown:
    the exit handlers run (ours leaves the group: a barrier, then destroy), the standard streams
    and C's stdio buffers are flushed, then `os._exit`. Returns (a normal exit follows) when no
    group was joined. A failing rank does not leave: its barrier would wait, as long as the
    group's timeout (30 minutes by default), for ranks still inside a collective; its exit alone
    tells torchrun to stop them.

    Why: leaving the group at exit was not enough. Objects still alive at teardown (gloo's work
    objects, the DDP reducer) can hold tensors whose release takes the GIL of an interpreter being
    torn down, and the rank aborts ("terminate called without an active exception", SIGABRT)
    after its work is done, failing the whole torchrun job (seen once in CI, in a two-process
    test). Nothing is lost by skipping teardown: every file mmsr writes is written and closed
    (atomically) before a command returns.
    """
    if not _joined[0]:
        return
    if code:
        atexit.unregister(_leave)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    ctypes.CDLL(None).fflush(None)  # what C code (NCCL_DEBUG, FAISS) printed to a pipe
    os._exit(code)


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def device_problem(name: str) -> str | None:
    """Why `name` is not a device mmsr can run on, or None: the spelling alone, so that a config or
    an option is refused when it is read, not whether this machine has that device (pick_device)."""
    if name == "auto":
        return None
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        kind = None
    # torch knows more device types (mps, xpu, ...); mmsr's paths are built and tested for these two.
    return None if kind in ("cpu", "cuda") else f"is not a device mmsr runs on; use {DEVICE_NAMES}"


def pick_device(name: str = "auto") -> torch.device:
    """auto | cpu | cuda | cuda:N. "auto" and a bare "cuda" take this process's GPU under
    torchrun (LOCAL_RANK), so every rank of a node gets its own; the one picker for the cache
    build, training and evaluation."""
    problem = device_problem(name)
    if problem:
        raise MMSRError(f"device {name!r} {problem}")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    requested = name
    if name in ("auto", "cuda"):
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMSRError(f"device {requested!r} but CUDA is not available", hint="use device=auto or cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index >= count:
            raise MMSRError(f"device {str(device)!r} but this process sees {count} GPU(s)"
                            + (f" (LOCAL_RANK={os.environ['LOCAL_RANK']})" if "LOCAL_RANK" in os.environ else ""),
                            hint="start at most one torchrun process per visible GPU (--nproc-per-node), "
                                 "or name a visible device")
        # Made current, so that what takes "the current device" (pinned-memory threads, NCCL's
        # metric sums, FAISS) works on this process's GPU, not on GPU 0 in every rank.
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def collective_device() -> torch.device:
    """Where a collective's tensors must be: NCCL reduces GPU tensors only, gloo CPU ones. A
    large buffer made here from the start is not copied there (and back) a second time."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduced(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced over the ranks ("sum" or "max"), returned on the CPU; the caller never
    needs to know which backend the run joined. Without a process group (one process) the
    tensor itself."""
    if not dist.is_initialized():
        return tensor.cpu()
    out = tensor.to(collective_device())
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return out.cpu()


def all_gathered(value) -> list:
    """Every rank's `value` (any picklable object), in rank order; [value] in one process."""
    if not dist.is_initialized():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def gather_rows(tensor: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Every rank's rows of `tensor` ([N_r, ...], N_r may differ), concatenated in rank order,
    with each rank's N_r; the gradient of every row goes back to the rank that computed it. One
    process: the tensor itself. `sizes`: the N_r a gather of as many rows already returned (ids
    and their vectors, a view and the other), so they are not gathered twice. The in-batch
    losses gather their candidates with it, the contrastive term its views."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor, [len(tensor)]
    if sizes is None:
        count = torch.tensor([len(tensor)], device=tensor.device)
        counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
    padded = torch.nn.functional.pad(tensor, (0,) * (2 * (tensor.dim() - 1)) + (0, max(sizes) - len(tensor)))
    parts = _GatherEqual.apply(padded).chunk(len(sizes))
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sizes


class _GatherEqual(torch.autograd.Function):
    """all_gather of equal-sized tensors with a backward: each rank's gradient of the gathered
    tensor summed over the ranks, this rank's part kept. torch's own autograd all_gather
    (torch.distributed.nn.functional) is deprecated in the torch mmsr pins, and its replacement
    is a private module; these few lines are what it does."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]
