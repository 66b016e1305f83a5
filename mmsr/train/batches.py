"""Training batches: the paper's "every prefix position is a target" with one sampled negative.

With `windows="last"` (the reference code's choice) a user contributes one row per epoch:
the last `max_seq_len + 1` items of their training part. With `windows="all"` the whole
training part is cut, from the end backwards, into rows of up to `max_seq_len + 1` items that
overlap by one, so every training item after a user's first is a target once per epoch
(long histories, e.g. MovieLens, are not thrown away). In a row, inputs are items[:-1] and
targets items[1:], left-padded to `max_seq_len`. Negatives are drawn uniformly
from items outside the user's training history. All randomness comes from generators seeded
by (seed, epoch) and (seed, epoch, step), so an interrupted epoch replays exactly and every
process of a distributed run draws the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmsr.data.split import Split

PAD = -1
NEGATIVE_MODES = ("unseen", "any")
WINDOW_MODES = ("last", "all")


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, L] item ids, PAD where padded
    targets: torch.Tensor  # [B, L]
    negatives: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, L] bool: a real input with a real target

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.inputs, self.targets, self.negatives, self.mask)))

    def rows(self, index: slice | np.ndarray) -> "Batch":
        return Batch(self.inputs[index], self.targets[index], self.negatives[index], self.mask[index])


class TrainBatches:
    def __init__(self, split: Split, batch_size: int, seed: int, negatives: str = "unseen", windows: str = "last"):
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}")
        if windows not in WINDOW_MODES:
            raise ValueError(f"windows must be one of {WINDOW_MODES}")
        self.negatives = negatives
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.max_len = split.config.max_seq_len
        lengths = split.lengths() - 2
        users = np.flatnonzero(lengths >= 2)  # a target needs an input before it
        # One row per (user, end): the row is train_sequence(user)[end - max_len - 1:end].
        ends = [[n] if windows == "last" else list(range(n, 1, -self.max_len)) for n in lengths[users]]
        self.row_users = np.repeat(users, [len(e) for e in ends]).astype(np.int64)
        self.row_ends = np.asarray([end for row in ends for end in row], dtype=np.int64)

    def __len__(self) -> int:
        return -(-len(self.row_users) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """This epoch's order of the rows."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.row_users))

    def users_of(self, rows: np.ndarray) -> np.ndarray:
        return self.row_users[rows]

    def batch(self, epoch: int, step: int, order: np.ndarray | None = None) -> Batch:
        order = self.order(epoch) if order is None else order
        rows = order[step * self.batch_size:(step + 1) * self.batch_size]
        users, ends = self.row_users[rows], self.row_ends[rows]
        rng = np.random.default_rng([self.seed, epoch, step, 1])
        size = len(users)
        inputs = np.full((size, self.max_len), PAD, dtype=np.int64)
        targets = np.full((size, self.max_len), PAD, dtype=np.int64)
        negatives = np.full((size, self.max_len), PAD, dtype=np.int64)
        for row, (user, end) in enumerate(zip(users, ends)):
            seq = self.split.train_sequence(user)[max(0, end - self.max_len - 1):end]
            n = len(seq) - 1
            inputs[row, -n:] = seq[:-1]
            targets[row, -n:] = seq[1:]
            negatives[row, -n:] = self._negatives(user, seq[1:], rng)
        mask = targets != PAD
        return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(negatives),
                     torch.from_numpy(mask))

    def _negatives(self, user: int, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative per target: "unseen" avoids the user's whole training history (the
        paper's rule); "any" avoids only that position's target (RecBole's rule)."""
        exclude = np.unique(self.split.train_sequence(user)) if self.negatives == "unseen" else None
        out = rng.integers(self.split.num_items, size=len(targets))
        if self.split.num_items - (len(exclude) if exclude is not None else 1) < 1:
            return out  # nothing left to draw from: keep the draw rather than loop forever

        def forbidden(rows: np.ndarray) -> np.ndarray:
            return np.isin(out[rows], exclude) if exclude is not None else out[rows] == targets[rows]

        rows = np.flatnonzero(forbidden(np.arange(len(out))))
        while len(rows):  # rejection sampling; histories are a tiny part of the catalogue
            out[rows] = rng.integers(self.split.num_items, size=len(rows))
            rows = rows[forbidden(rows)]
        return out


def left_pad(sequences: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories -> ([B, L] ids with PAD, [B, L] mask), keeping the last max_len items."""
    length = max(1, min(max_len, max((len(s) for s in sequences), default=1)))
    ids = np.full((len(sequences), length), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if len(seq):
            ids[row, -len(seq):] = seq
    ids_t = torch.from_numpy(ids)
    return ids_t, ids_t != PAD
