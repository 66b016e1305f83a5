"""The two towers over a catalogue and a split's cases: every item's vector, every case's user vector.

Both fill one preallocated CPU tensor batch by batch (`_filled`), so an evaluation of a million
items or 200,000 users never holds a list of batches plus their concatenation. Under torchrun
the ranks share the item tower (`item_matrix`, `rank_items`).
"""

from __future__ import annotations

import numpy as np
import torch

from mmsr.distributed import all_reduced, collective_device
from mmsr.train.batches import left_pad


def item_matrix(model, feed, num_items: int, batch_size: int, device: torch.device, progress=None, *,
                rank: int = 0, world: int = 1) -> torch.Tensor:
    """Every item's vector, [num_items, D] float32 on the CPU.

    Under torchrun (`world` > 1) the ranks share the item tower, most of an evaluation's time
    on a large catalogue (73.6 s against 5.2 s of ranking at a million items, docs/scale.md),
    instead of each rank embedding every item: rank r embeds batches r, r + world, ... and one
    all-reduce hands every rank the whole matrix (`ItemSlice.rows_of`). The batches are the ones
    a single process forms, so each vector is computed as there, and adding the other ranks'
    zeros changes no value."""
    if world == 1:
        return item_vectors_of(model, feed, np.arange(num_items), batch_size, device, progress)
    return item_slice(model, feed, num_items, batch_size, device, rank, world, progress).rows_of(np.arange(num_items))


@torch.no_grad()
def item_vectors_of(model, feed, ids, batch_size: int, device: torch.device, progress=None) -> torch.Tensor:
    """The vectors of the items `ids`, in that order: a plot's sample need not embed the catalogue."""
    model.eval()
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)

    def batches():
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size].to(device)
            yield start, model.item_vectors(batch, feed)
            if progress:
                progress(len(batch))

    return _filled(len(ids), 0, batches())


def rank_items(num_items: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """The items rank `rank` of `world` embeds, ascending: batch b (items b*batch_size ...) is
    rank b % world's. Its batches back to back, chunked by batch_size again, are the same
    batches (only the catalogue's last one is short, and it comes last), so every vector is
    computed as one process computes it."""
    items = np.arange(num_items, dtype=np.int64)
    return items[(items // batch_size) % world == rank]


def _filled(rows: int, empty_width: int, batches) -> torch.Tensor:
    """[rows, D] float32 on the CPU from (start, [B, D]) batches, written into one tensor made at
    the first batch. Not a list then torch.cat, which holds the vectors twice at the end (512 MB
    more for a million items at dim 128), and not kept batch outputs, which may be views holding
    far more: a kept `states[:, -1]` (on CPU, .float().cpu() copies nothing) held its batch's
    whole [B, L, D] states, 2.4 GB for HM's 200,000 users before user_matrix was written so."""
    out = torch.zeros(0, empty_width)
    for start, vectors in batches:
        if start == 0:
            out = torch.empty(rows, vectors.shape[-1])
        out[start:start + len(vectors)] = vectors
    return out


@torch.no_grad()
def user_matrix(model, items: torch.Tensor, histories: list[np.ndarray], max_len: int, batch_size: int,
                device: torch.device) -> torch.Tensor:
    model.eval()
    items_dev = items.to(device)

    def batches():
        for start in range(0, len(histories), batch_size):
            ids, mask = left_pad(histories[start:start + batch_size], max_len)
            ids, mask = ids.to(device), mask.to(device)
            yield start, model.last_user_vectors(items_dev[ids.clamp_min(0)], mask)

    return _filled(len(histories), items.shape[1], batches())


class ItemSlice:
    """One rank's items (`ids`, ascending) and their item-tower vectors [len(ids), D] on the CPU.

    The shared item matrix is every slice's rows gathered (`rows_of` over the catalogue);
    `mmsr eval --shard-items` keeps the slice and gathers only the rows the user tower reads."""

    def __init__(self, ids: np.ndarray, vectors: torch.Tensor, num_items: int):
        self.ids, self.vectors, self.num_items = np.asarray(ids, dtype=np.int64), vectors, num_items

    def local(self, items: np.ndarray) -> np.ndarray:
        """Each global item's row in this slice, or -1 where another rank holds it."""
        items = np.asarray(items, dtype=np.int64)
        if not len(self.ids):
            return np.full(items.shape, -1, dtype=np.int64)
        rows = np.searchsorted(self.ids, items).clip(max=len(self.ids) - 1)
        return np.where(self.ids[rows] == items, rows, -1)

    def rows_of(self, items: np.ndarray) -> torch.Tensor:
        """[len(items), D]: the vectors of `items` (the same list on every rank), from their owners.
        The zero-filled buffer is made on the collective's device, so a rank holds the result
        once on the CPU; when `items` take the whole slice, it is scattered without a copy."""
        out = torch.zeros(len(items), self.vectors.shape[1], device=collective_device())
        local = self.local(items)
        mine = np.flatnonzero(local >= 0)
        if len(mine):
            rows = local[mine]
            whole = len(rows) == len(self.vectors) and np.array_equal(rows, np.arange(len(rows)))
            source = self.vectors if whole else self.vectors[torch.from_numpy(rows)]
            out[torch.from_numpy(mine).to(out.device)] = source.to(out.device, torch.float32)
        return all_reduced(out)


def item_slice(model, feed, num_items: int, batch_size: int, device: torch.device, rank: int,
               world: int, progress=None) -> ItemSlice:
    """This rank's items through the item tower (the batches `towers.item_matrix` gives it)."""
    ids = rank_items(num_items, batch_size, rank, world)
    vectors = item_vectors_of(model, feed, ids, batch_size, device, progress)  # on the CPU
    # A rank given no batch (fewer batches than ranks) learns the width from the others.
    width = int(all_reduced(torch.tensor([vectors.shape[1]]), "max"))
    return ItemSlice(ids, vectors if len(ids) else torch.zeros(0, width), num_items)


# Rows per block of `item_spread`'s float64 sums.
_SPREAD_ROWS = 65_536


def item_spread(vectors: torch.Tensor) -> float:
    """How far apart the items are: the mean length of the vectors less their common mean, over
    their mean length (0: every item the same vector; a trained tower sits near 1). A common part
    shifts every score of a user alike, so only the rest ranks; an item tower whose rest has
    shrunk to a few percent has collapsed (the trainer warns: `mmsr.train.recipe`)."""
    if len(vectors) == 0:
        return 0.0
    # Two passes over row blocks, summed in float64: a whole float64 copy of a million-item
    # matrix would be gigabytes, and evaluation's memory is bounded by its blocks.
    blocks = vectors.split(_SPREAD_ROWS)
    total, length = torch.zeros(vectors.shape[1], dtype=torch.float64), 0.0
    for part in blocks:
        block = part.double()
        total += block.sum(0)
        length += float(block.norm(dim=1).sum())
    mean = total / len(vectors)
    rest = sum(float((block.double() - mean).norm(dim=1).sum()) for block in blocks)
    return rest / length if length > 0 else 0.0
