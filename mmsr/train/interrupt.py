"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a cluster pre-empting it).

The handler only records the signal; the recipe looks at it between steps, writes a
checkpoint at the current step and raises `TrainingInterrupted`, so `--resume` continues
bit for bit. A second signal while that happens aborts at once (KeyboardInterrupt): the
atomic checkpoint write keeps the previous last.pt whole either way.

Under torchrun every rank gets the signal, but not at the same step; the ranks agree
through one all-reduce per step, so all of them stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import torch

from mmsr.distributed import Dist
from mmsr.errors import Interrupted, Terminated

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Interrupted):
    """The run stopped on a signal after checkpointing; the exit status is 128 + the signal."""

    label = "stopped"


class StopRequests:
    """Context manager: records SIGINT/SIGTERM while active; restores the old handlers on exit."""

    def __init__(self, dist: Dist | None = None, device: torch.device | None = None):
        self.dist = dist
        self.device = device
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:  # asked twice: stop now, with the status of the signal that asked
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # signal() works there only
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def requested(self) -> int:
        """The signal to stop for (0: go on), the same on every rank."""
        if self.dist is None or not self.dist.enabled:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())
