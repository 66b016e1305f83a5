"""A contrastive term on the user tower: two dropout views of each training row's last state
(`optim.contrastive_weight`, `optim.contrastive_temperature`).

This is DuoRec's unsupervised augmentation (Qiu et al., "Contrastive learning for
representation degeneration problem in sequential recommendation", WSDM 2022), itself SimCSE's
dropout views (Gao et al., EMNLP 2021): the same sequence run twice through the user tower under
different dropout masks gives two views of one user; NT-Xent (Chen et al., ICML 2020) pulls them
together and pushes them from every other view of the batch, which spreads the user vectors over
the sphere instead of letting them collapse towards a few directions.

    total loss = softmax loss + weight * sum over rows of (the row's target positions) * NT-Xent(row)

Departures from DuoRec:
- the first view is the state the softmax loss already computed; only the second is a new
  pass, through the user tower alone (the item vectors are shared, so a content model's item
  dropout is the same in both views);
- the similarity is the cosine over a temperature (SimCSE's, DuoRec takes the inner product at
  temperature 1), the scale mmsr's cosine score uses;
- each row's term weighs as many target positions as the row has, so after the trainer's mean
  over target positions it is a mean over them, exact under DDP without a global row count;
- DuoRec's supervised positives (another sequence with the same target) are not built.

The negatives are the global batch's: under DDP every process gathers the others' views with
their gradient (`mmsr.distributed.gather_rows`, as the in-batch losses gather their candidates),
so two processes train as one. Without dropout (`model.dropout = 0`) the two views are equal and
the term only pushes users apart.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from mmsr.distributed import gather_rows


class ViewContrast(nn.Module):
    def __init__(self, weight: float, temperature: float):
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    def forward(self, first: torch.Tensor, second: torch.Tensor, targets_per_row: torch.Tensor) -> torch.Tensor:
        """`first`, `second` [B, D]: this process's rows' two views. The weighted term, summed
        over the rows (what the trainer adds to the summed softmax loss)."""
        return self.weight * (nt_xent(first, second, self.temperature) * targets_per_row).sum()


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B]: each row's NT-Xent, the mean of its two directions. A view's candidates are every
    view of the global batch but itself; its positive is its row's other view."""
    every_first, sizes = gather_rows(first)
    every_second, _ = gather_rows(second, sizes)
    start = sum(sizes[:torch_dist.get_rank()]) if len(sizes) > 1 else 0
    rows = len(every_first)
    # In float32 under bf16 autocast too: at temperature 0.05 the logits reach 20, where bf16's
    # steps are 0.125.
    with torch.autocast(first.device.type, enabled=False):
        views = F.normalize(torch.cat([every_first, every_second]).float(), dim=-1)  # [2R, D]
        own = torch.arange(start, start + len(first), device=first.device)
        queries, positives = torch.cat([own, own + rows]), torch.cat([own + rows, own])
        logits = (views[queries] @ views.T) / temperature  # [2B, 2R]
        logits[torch.arange(len(queries), device=first.device), queries] = float("-inf")  # not itself
        both = F.cross_entropy(logits, positives, reduction="none")
    return (both[:len(first)] + both[len(first):]) / 2
