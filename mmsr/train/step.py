"""One training step and one validation, as plain functions: the recipe and the benchmarks
call these same two, so a benchmark times what training runs.

    result = train_step(model, batch, feed, optimizer, scheduler, dist=dist, device=device, optim=config.optim)
    metrics = validate(model, feed, split, config, device=device, dist=dist)["metrics"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from mmsr.data.split import Split
from mmsr.distributed import Dist, all_reduced
from mmsr.eval.runner import evaluate_model
from mmsr.train.batches import Batch
from mmsr.train.config import OptimConfig, TrainConfig

SELECT_METRIC = "NDCG@10"


class NonFiniteLoss(ArithmeticError):
    """A step's loss was NaN or infinite; raised before the optimizer applies it."""

    def __init__(self, value: float):
        super().__init__(f"non-finite loss {value}")
        self.value = value


@dataclass
class LossSum:
    """Summed loss and target count, over the global batch (all processes). The mean loss of a
    step, of an epoch and of an interrupted epoch all come from here."""

    loss: float = 0.0
    targets: int = 0

    @property
    def mean(self) -> float:
        return self.loss / max(self.targets, 1)

    def __iadd__(self, other: "LossSum") -> "LossSum":
        self.loss += other.loss
        self.targets += other.targets
        return self


def train_step(model, batch: Batch, feed, optimizer: torch.optim.Optimizer, scheduler=None, *, dist: Dist,
               device: torch.device, optim: OptimConfig, on_phase: Callable[[str], None] | None = None) -> LossSum:
    """Forward, backward and update on this process's share of a global batch.

    `model` is the module to call (the DDP wrapper under torchrun). The loss is the mean over
    the global batch's targets: each process sums its own and scales by world / global count,
    so DDP's gradient average is the exact global mean. `on_phase(name)` is called after
    "feed", "forward", "backward" and "update" (benchmarks time the phases through it).
    """
    mark = on_phase or (lambda _phase: None)
    total = int(batch.mask.sum())
    local = batch.shard(dist.rank, dist.world).to(device)
    ids, rows = local.distinct_items()
    item_inputs = feed(ids)  # file / cache I/O stays outside the model's forward
    mark("feed")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=optim.amp and device.type == "cuda"):
        loss_sum, _ = model(local, ids, rows, item_inputs)
    loss = loss_sum * dist.world / max(total, 1)
    mark("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark("backward")
    # The global batch's summed loss: every process's, not this one's times the processes (a
    # stand-in row's process has none), and the same on every rank, so all stop on a non-finite one.
    value = float(all_reduced(loss_sum.detach().float().reshape(1))) if dist.world > 1 else float(loss_sum.detach())
    if not math.isfinite(value):  # before the update: the weights in memory stay finite
        raise NonFiniteLoss(value)
    if optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    mark("update")
    return LossSum(value, total)


def validate(model, feed, split: Split, config: TrainConfig, *, device: torch.device, dist: Dist) -> dict:
    """Full-ranking HR/NDCG@10,20 on the validation split, under the config's `valid_protocol`:
    `mmsr.eval.runner.evaluate_model`'s result ("metrics", and "item_spread" but over item slices)."""
    return evaluate_model(model, feed, split, "valid", ks=(10, 20), batch_size=config.eval_batch_size,
                          device=device, rank=dist.rank, world=dist.world,
                          mask_history=config.valid_protocol == "paper", shard_items=config.valid_shard_items)
