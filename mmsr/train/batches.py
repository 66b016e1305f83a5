"""Training batches: the paper's "every prefix position is a target" with one sampled negative.

With `windows="last"` (the reference code's choice) a user contributes one row per epoch:
the last `max_seq_len + 1` items of their training part. With `windows="all"` the whole
training part is cut, from the end backwards, into rows of up to `max_seq_len + 1` items that
overlap by one, so every training item after a user's first is a target once per epoch
(long histories, e.g. MovieLens, are not thrown away). With a `stride` below `max_seq_len` the
rows' ends are `stride` items apart and each row keeps only its last `stride` targets: every
item is still a target once, with at least `max_seq_len - stride` items before it in its row
(a non-overlapping window's first targets see almost no history). In a row, inputs are
items[:-1] and targets items[1:], left-padded to `max_seq_len`. Negatives are drawn uniformly
from items outside the user's training history. For the `mixed` loss a global batch also
carries `mixed_negatives` items drawn uniformly from the whole catalogue, and for an
`optim.own_items` other than "negatives" each row carries its user's training items
(`OwnItems`). All randomness comes from generators seeded by (seed, epoch) and (seed, epoch,
step), so an interrupted epoch replays exactly and every process of a distributed run draws the
same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # [M] items drawn uniformly for the whole global batch (the `mixed` loss's extra
    # candidates); they belong to no row.
    uniform: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    # Each row's user's training items, for the softmax losses' `optim.own_items`; None when
    # the loss does not take them out.
    own: "OwnItems | None" = None

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True)
                       for t in (self.inputs, self.targets, self.negatives, self.mask, self.uniform)),
                     own=None if self.own is None else self.own.to(device))

    def rows(self, index: slice | np.ndarray) -> "Batch":
        """Some rows, with all the uniform items."""
        return Batch(self.inputs[index], self.targets[index], self.negatives[index], self.mask[index], self.uniform,
                     own=None if self.own is None else self.own.rows(index))

    def shard(self, rank: int, world: int) -> "Batch":
        """One process's share of a global batch: every world-th row, and every world-th uniform
        item (the in-batch losses gather the candidates back, so each is encoded once).

        A batch with fewer rows than processes (an epoch's last) leaves the later processes none:
        each gets a stand-in, the first row with no target, so that it still runs the forward and
        takes part in the gathers and in DDP's gradient average (an empty share crashed every
        rank). Its items are the first row's, which the candidates already hold once; it adds no
        target, no loss and no contrastive view."""
        if rank >= len(self.inputs):
            first = slice(0, 1)
            return Batch(self.inputs[first], self.targets[first], self.negatives[first],
                         torch.zeros_like(self.mask[first]), self.uniform[rank::world],
                         own=None if self.own is None else self.own.rows(first))
        part = slice(rank, None, world)
        return Batch(self.inputs[part], self.targets[part], self.negatives[part], self.mask[part], self.uniform[part],
                     own=None if self.own is None else self.own.rows(part))

    def distinct_items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(every item id of the batch once, sorted, uniform items included; [3, B, L]
        positions of inputs, targets and negatives in that list, 0 where padded). The model
        encodes each distinct item once."""
        flat = torch.cat([part.flatten() for part in (self.inputs, self.targets, self.negatives)])
        valid = flat != PAD
        unique, inverse = torch.unique(torch.cat([flat[valid], self.uniform]), return_inverse=True)
        rows = torch.zeros_like(flat)
        rows[valid] = inverse[:int(valid.sum())]
        return unique, rows.view(3, *self.inputs.shape)


_NO_ITEM = torch.iinfo(torch.int64).max  # pads OwnItems.items: sorts last, equals no item id

# optim.own_items -> which candidates a target position loses, from (which candidates its user
# trains on [N, C], where each occurs last in the user's sequence [N, C], where the position's
# target sits [N, 1]); None: the loss keeps them all as negatives (every paper's softmax).
OWN_ITEMS = {
    "negatives": None,
    "later-masked": lambda owned, last, at: last > at,  # positives further on, not negatives
    "all-masked": lambda owned, last, at: owned,  # as the paper's protocol ranks none of them
}


def takes_out_own(mode: str) -> bool:
    """Whether `optim.own_items = mode` takes any of the user's items out (the batches then carry them)."""
    return OWN_ITEMS[mode] is not None


@dataclass
class OwnItems:
    """Each row's user's training items, so a softmax loss can take them out of that row's
    candidates (`optim.own_items`). `items` [B, S]: the distinct items, sorted, padded with
    _NO_ITEM; `last` [B, S]: where each occurs last in the user's training sequence; `at` [B, L]:
    where each target position's target sits in it (PAD where none)."""

    items: torch.Tensor
    last: torch.Tensor
    at: torch.Tensor

    def to(self, device) -> "OwnItems":
        return OwnItems(*(t.to(device, non_blocking=True) for t in (self.items, self.last, self.at)))

    def rows(self, index) -> "OwnItems":
        return OwnItems(self.items[index], self.last[index], self.at[index])

    def taken_out(self, mode: str, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[N, C]: which of the candidates `ids` (sorted) each target position of `mask` loses by
        the rule OWN_ITEMS[mode]. Never the position's own target."""
        rows = mask.nonzero(as_tuple=True)[0]
        if self.items.shape[1] == 0:
            return torch.zeros(len(rows), len(ids), dtype=torch.bool, device=ids.device)
        candidates = ids.expand(len(self.items), -1).contiguous()
        # A process's share of the rows (Batch.shard, every world-th) is a strided view.
        at = torch.searchsorted(self.items.contiguous(), candidates).clamp_max(self.items.shape[1] - 1)
        owned = self.items.gather(1, at) == candidates  # [B, C]
        last = torch.where(owned, self.last.gather(1, at), -1)
        out = OWN_ITEMS[mode](owned[rows], last[rows], self.at[mask][:, None])
        return out & (ids[None, :] != targets[:, None])


class TrainBatches:
    def __init__(self, split: Split, batch_size: int, seed: int, negatives: str = "unseen", windows: str = "last",
                 uniform_items: int = 0, stride: int = 0, own_items: bool = False):
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}")
        if windows not in WINDOW_MODES:
            raise ValueError(f"windows must be one of {WINDOW_MODES}")
        if uniform_items < 0:
            raise ValueError("uniform_items must be non-negative")
        self.negatives = negatives
        self.own_items = own_items
        self.uniform_items = uniform_items
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.max_len = split.config.max_seq_len
        self.stride = stride or self.max_len
        if not 1 <= self.stride <= self.max_len:
            raise ValueError("stride must be between 1 and max_seq_len (0: max_seq_len)")
        lengths = split.lengths() - 2
        users = np.flatnonzero(lengths >= 2)  # a target needs an input before it
        # One row per (user, end): the row is train_sequence(user)[end - max_len - 1:end].
        ends = [[n] if windows == "last" else list(range(n, 1, -self.stride)) for n in lengths[users]]
        self.row_users = np.repeat(users, [len(e) for e in ends]).astype(np.int64)
        self.row_ends = np.asarray([end for row in ends for end in row], dtype=np.int64)
        # user -> (the sorted distinct items of their training sequence, where each occurs last):
        # "unseen" negatives avoid them, `optim.own_items` takes them out of the candidates. Kept
        # once computed: a user's rows recur in every epoch, and recomputing the items was 7% of an
        # MMSR-T epoch on MovieLens-100K.
        self._owned: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def for_config(cls, split: Split, config) -> "TrainBatches":
        """The batches a TrainConfig trains on, with what its loss needs drawn."""
        from mmsr.train.losses import uniform_items  # deferred: mmsr.train.losses imports OwnItems from here

        o = config.optim
        return cls(split, o.batch_size, config.seed, o.negatives, o.windows, uniform_items=uniform_items(o),
                   stride=o.window_stride, own_items=takes_out_own(o.own_items))

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
            kept = min(n, self.stride)  # the earlier targets belong to the row before (overlapping windows)
            inputs[row, -n:] = seq[:-1]
            targets[row, -kept:] = seq[-kept:]
            negatives[row, -kept:] = self._negatives(user, seq[-kept:], rng)
        mask = targets != PAD
        # Its own generator: the per-position negatives stay the same draws whatever the loss.
        uniform = np.random.default_rng([self.seed, epoch, step, 2]).integers(
            self.split.num_items, size=self.uniform_items)
        return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(negatives),
                     torch.from_numpy(mask), torch.from_numpy(uniform.astype(np.int64)),
                     own=self._own_items(users, ends, mask) if self.own_items else None)

    def _own_items(self, users: np.ndarray, ends: np.ndarray, mask: np.ndarray) -> OwnItems:
        owned = [self._owned_by(user) for user in users]
        width = max((len(items) for items, _ in owned), default=0)
        items = np.full((len(users), width), _NO_ITEM, dtype=np.int64)
        last = np.full((len(users), width), -1, dtype=np.int64)
        at = np.full(mask.shape, PAD, dtype=np.int64)
        for row, ((distinct, where), end) in enumerate(zip(owned, ends)):
            items[row, :len(distinct)], last[row, :len(distinct)] = distinct, where
            kept = int(mask[row].sum())  # the row's targets are the sequence's items end - kept .. end - 1
            at[row, self.max_len - kept:] = np.arange(end - kept, end)
        return OwnItems(torch.from_numpy(items), torch.from_numpy(last), torch.from_numpy(at))

    def _owned_by(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(the user's distinct training items, sorted; where each occurs last in the sequence)."""
        owned = self._owned.get(user)
        if owned is None:
            sequence = self.split.train_sequence(user)
            distinct, first_from_end = np.unique(sequence[::-1], return_index=True)
            owned = self._owned[user] = (distinct, len(sequence) - 1 - first_from_end)
        return owned

    def _negatives(self, user: int, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative per target: "unseen" avoids the user's whole training history (the
        paper's rule); "any" avoids only that position's target (RecBole's rule)."""
        exclude = self._owned_by(user)[0] if self.negatives == "unseen" else None
        out = rng.integers(self.split.num_items, size=len(targets))
        if self.split.num_items - (len(exclude) if exclude is not None else 1) < 1:
            return out  # nothing left to draw from: keep the draw rather than loop forever

        def forbidden(rows: np.ndarray) -> np.ndarray:
            if exclude is None:
                return out[rows] == targets[rows]
            if not len(exclude):
                return np.zeros(len(rows), dtype=bool)
            at = np.minimum(np.searchsorted(exclude, out[rows]), len(exclude) - 1)
            return exclude[at] == out[rows]

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
