"""Training losses, chosen by name (`optim.loss`), like the fusions.

    loss = create_loss(name, train_counts=split.train_counts)
    summed = loss(LossInputs(...))    # summed over this process's target positions

Every loss scores a user vector (the sequence model's output at a target position) against
item vectors by inner product, as the evaluation does. Two families:

- **Sampled negative** (`bce`, `bpr`): each target position is paired with one negative drawn
  by `TrainBatches` (`optim.negatives`: unseen | any).
- **Softmax over candidates** (`inbatch`, `inbatch-logq`, `mixed`): cross-entropy of the
  target against every distinct item of the *global* batch (histories, targets, the
  per-position negatives and, for `mixed`, extra uniformly drawn items). Under DDP each
  process encodes its own items and the candidates are gathered across processes, so a
  2-process run sees the same candidates as one process. `softmax` scores every item.
  `optim.own_items` says what becomes of the user's own training items among them
  (mmsr.train.batches.OWN_ITEMS), and `optim.label_smoothing` spreads that share of the target's
  probability evenly over the candidates left (`smoothed_cross_entropy`).

An entry's `params` are the `optim.*` settings it reads; its `needs`:
  negative     the per-position sampled negative;
  batch        the batch's other items as negatives (a batch of one user has none of its own);
  popularity   the training split's item counts (`create_loss(train_counts=...)`);
  item_table   every item's vector at every step (ID models only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmsr.distributed import gather_rows
from mmsr.errors import MMSRError
from mmsr.registry import Registry
from mmsr.train.batches import OwnItems, takes_out_own

LOSSES: Registry[nn.Module] = Registry("loss")


@dataclass
class LossInputs:
    """What a loss sees of one process's rows; N target positions, C distinct items."""

    users: torch.Tensor  # [N, D] user vectors at the target positions
    targets: torch.Tensor  # [N] target item ids
    target_vectors: torch.Tensor  # [N, D]
    negative_vectors: torch.Tensor  # [N, D] the per-position sampled negatives
    item_ids: torch.Tensor  # [C] this process's distinct items, sorted
    item_vectors: torch.Tensor  # [C, D]
    all_items: Callable[[], torch.Tensor]  # [num_items, D] every item's vector (losses that need "item_table")
    # A candidate-dependent scorer (CARCA++): vectors [N, D] -> scores [N] of each position's own
    # candidate. None: the inner product with `users`.
    pair_scores: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The rows' users' training items and the [B, L] target positions the N rows above come from
    # (`optim.own_items`); None when the batch carries no OwnItems.
    own: OwnItems | None = None
    positions: torch.Tensor | None = None

    def pairs(self, vectors: torch.Tensor) -> torch.Tensor:
        """Each target position's score of its own candidate (its target or its negative)."""
        if self.pair_scores is not None:
            return self.pair_scores(vectors).float()
        return (self.users * vectors).sum(-1).float()

    def without_own(self, logits: torch.Tensor, ids: torch.Tensor, own_items: str) -> torch.Tensor:
        """`logits` [N, C] over the candidates `ids` (sorted), with the candidates `own_items`
        takes out at -inf: they get neither probability nor gradient."""
        if not takes_out_own(own_items):
            return logits
        if self.own is None or self.positions is None:
            raise MMSRError(f"optim.own_items={own_items!r} needs each row's training items, which this batch "
                            "does not carry", hint="build the batches with TrainBatches.for_config(split, config)")
        return logits.masked_fill(self.own.taken_out(own_items, ids, self.positions, self.targets), float("-inf"))


def create_loss(name: str, *, train_counts: np.ndarray | None = None, **settings) -> nn.Module:
    """`settings`: `optim.*` values by name (own_items=..., label_smoothing=...); each loss takes
    those it reads and ignores the rest, its defaults standing for any not given."""
    return LOSSES.create(name, train_counts=train_counts, **settings)


def loss_settings(optim) -> dict:
    """The `optim.*` settings `optim.loss` reads (its registry params), by name, for create_loss:
    a new loss setting reaches its loss from the config without passing through the model."""
    return {key: getattr(optim, key) for key in LOSSES.params(optim.loss)}


def loss_names() -> list[str]:
    return LOSSES.names()


def uniform_items(optim) -> int:
    """How many uniformly drawn items `TrainBatches` adds to each global batch for `optim.loss`."""
    return optim.mixed_negatives if "mixed_negatives" in LOSSES.params(optim.loss) else 0


class BCE(nn.Module):
    """Binary cross-entropy, one sampled negative per target position: the seed's loss (§4.4,
    after SASRec, Kang & McAuley, ICDM 2018) and its setting.

        sum over positions of  -log σ(u·t) - log(1 - σ(u·n))

    As the seed: the negative is uniform over items outside the user's training history
    (`optim.negatives = "unseen"`); `"any"` is RecBole's rule (any item but the target).
    """

    def forward(self, x: LossInputs) -> torch.Tensor:
        positive, negative = x.pairs(x.target_vectors), x.pairs(x.negative_vectors)
        return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive), reduction="sum") \
            + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative), reduction="sum")


class BPR(nn.Module):
    """Bayesian personalised ranking (Rendle et al., UAI 2009), RecBole's default loss for
    SASRec (`loss_type = "BPR"`):

        sum over positions of  -log σ(u·t - u·n)

    with the same per-position negative as `bce`. RecBole draws it from any item but the
    target (`optim.negatives = "any"`); the default here stays the seed's "unseen".
    """

    def forward(self, x: LossInputs) -> torch.Tensor:
        positive, negative = x.pairs(x.target_vectors), x.pairs(x.negative_vectors)
        return -F.logsigmoid(positive - negative).sum()


class InBatch(nn.Module):
    """Softmax cross-entropy over the global batch's distinct items (sampled softmax with
    in-batch negatives; e.g. Covington et al., RecSys 2016; Yi et al., RecSys 2019, without
    their correction):

        sum over positions of  -log( exp(u·t) / sum over candidates c of exp(u·c) )

    Departure from the papers, where the candidates are the batch's targets: here they are
    every distinct item of the batch (histories, targets, the per-position negatives), each
    once, so the user's own history items are negatives too. Subclasses change the logits
    (`adjust`), the candidates (`candidates`: the full softmax's are every item) or, for
    `mixed`, what `TrainBatches` puts in the batch.
    """

    def __init__(self, own_items: str = "negatives", label_smoothing: float = 0.0, **_):
        super().__init__()
        self.own_items = own_items
        self.label_smoothing = label_smoothing

    def adjust(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return logits

    def candidates(self, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted candidate ids, their vectors)."""
        return global_candidates(x.item_ids, x.item_vectors)

    def forward(self, x: LossInputs) -> torch.Tensor:
        ids, vectors = self.candidates(x)
        logits = x.without_own(self.adjust((x.users @ vectors.T).float(), ids), ids, self.own_items)
        return smoothed_cross_entropy(logits, torch.searchsorted(ids, x.targets), self.label_smoothing)


class InBatchLogQ(InBatch):
    """In-batch softmax with the logQ correction (Yi et al., "Sampling-bias-corrected neural
    modeling for large corpus item recommendations", RecSys 2019; MoRec's "debiased" CE):
    every candidate's logit becomes u·c - log q(c), q(c) the probability that c is sampled
    as a candidate, so popular items, which in-batch sampling pushes down far more often than
    the full softmax would, are not over-penalised. Scores at evaluation stay u·c.

    Departure from the paper: q is not a streaming estimate but the training split's item
    frequency, add-one smoothed so an item never seen in training has a finite one:
    q(i) = (count(i) + 1) / (sum of counts + number of items). It is a proxy: a candidate
    enters the batch through any of its roles (history, target, negative), not only as a
    target, and only once per batch.
    """

    def __init__(self, train_counts: np.ndarray | None = None, own_items: str = "negatives",
                 label_smoothing: float = 0.0, **_):
        super().__init__(own_items, label_smoothing)
        self.has_counts = train_counts is not None
        if train_counts is not None:
            counts = torch.as_tensor(np.asarray(train_counts), dtype=torch.float64)
            if counts.sum() <= 0:
                raise MMSRError("optim.loss='inbatch-logq' needs item popularity from the training split, but "
                                "the split has no training interactions",
                                hint="use --set optim.loss=inbatch, or a dataset whose users have training items")
            # A plain tensor, not a buffer: it is the training data's, rebuilt from the split, so
            # neither saved with the weights nor broadcast by DDP at every step.
            self.log_q = ((counts + 1) / (counts.sum() + len(counts))).log().float()

    def adjust(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if not self.has_counts:
            raise MMSRError("loss 'inbatch-logq' was built without the training split's item counts",
                            hint="build the model with build_model(..., train_counts=split.train_counts)")
        if self.log_q.device != logits.device:
            self.log_q = self.log_q.to(logits.device)
        return logits - self.log_q[ids]


class Mixed(InBatch):
    """Mixed negative sampling (Yang et al., "Mixed negative sampling for learning two-tower
    neural networks in recommendations", WWW 2020 companion): the in-batch softmax with
    `optim.mixed_negatives` more candidates drawn uniformly from the whole catalogue once per
    global batch, so rare and never-trained items are pushed down as negatives too, which
    in-batch sampling (popularity-proportional) almost never does.

    Departures: the uniform items are drawn with replacement and deduplicated with the
    batch's own items; no sampling-probability correction is applied to either part.
    """


class FullSoftmax(InBatch):
    """Full softmax cross-entropy over every item (RecBole's `loss_type = "CE"`; SASRec in
    RecBole, BERT4Rec's training objective):

        sum over positions of  -log( exp(u·t) / sum over all items i of exp(u·i) )

    Only for model kinds whose scored item vectors are a table (`mmsr.train.kinds.TABLE_KINDS`:
    IDs, FDSA's ID half, VQRec's codes): it scores the whole table at each step. A content model
    would have to run every item through its item tower at every step, so the config refuses it.
    """

    def candidates(self, x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        table = x.all_items()
        return torch.arange(len(table), device=table.device), table


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy summed over the rows, the target's probability `1 - smoothing` plus its share
    of `smoothing`, spread evenly over the row's candidates (Szegedy et al., CVPR 2016, "label
    smoothing regularisation"):

        (1 - smoothing) * -log p(target) + smoothing * mean over candidates c of -log p(c)

    A candidate at -inf (taken out by `optim.own_items`) is no candidate: it gets no share.
    torch's `label_smoothing` spreads over every column, which would put mass on those and make
    the loss infinite; without them the two agree.
    """
    if not smoothing:
        return F.cross_entropy(logits, target, reduction="sum")
    log_p = F.log_softmax(logits, dim=-1)
    target_term = -log_p.gather(1, target[:, None]).squeeze(1)
    kept = torch.isfinite(logits)
    uniform_term = -log_p.masked_fill(~kept, 0.0).sum(-1) / kept.sum(-1)
    return ((1 - smoothing) * target_term + smoothing * uniform_term).sum()


LOSSES.register("bce", params=("negatives",), needs=("negative",),
                help="binary cross-entropy, one sampled negative per position (the seed's)")(lambda **_: BCE())
LOSSES.register("bpr", params=("negatives",), needs=("negative",),
                help="-log σ(pos - neg), one sampled negative per position (RecBole's SASRec default)")(
    lambda **_: BPR())
LOSSES.register("inbatch", params=("own_items", "label_smoothing"), needs=("batch",),
                help="softmax cross-entropy over the global batch's distinct items")(InBatch)
LOSSES.register("inbatch-logq", params=("own_items", "label_smoothing"), needs=("batch", "popularity"),
                help="in-batch softmax with the logQ popularity correction (Yi et al. 2019)")(InBatchLogQ)
LOSSES.register("mixed", params=("mixed_negatives", "own_items", "label_smoothing"), needs=("batch",),
                help="in-batch softmax plus uniformly drawn items (Yang et al. 2020)")(Mixed)
LOSSES.register("softmax", params=("own_items", "label_smoothing"), needs=("item_table",),
                help="full softmax cross-entropy over every item (RecBole's CE); table kinds only")(FullSoftmax)


def global_candidates(ids: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct item ids, their vectors) over every process of a DDP run.

    Gathered with gradient (`mmsr.distributed.gather_rows`), so every process's loss sends
    gradient to the process that encoded the item. An item several processes encoded is kept
    once (the lowest rank's copy, identical to the others without dropout), in sorted-id order:
    the candidates one process alone would have had.
    """
    all_vectors, sizes = gather_rows(vectors)
    if len(sizes) == 1:
        return ids, vectors
    all_ids, _ = gather_rows(ids, sizes)
    unique, inverse = torch.unique(all_ids, return_inverse=True)
    position = torch.arange(len(all_ids), device=ids.device)
    first = torch.full_like(unique, len(all_ids)).scatter_reduce(0, inverse, position, reduce="amin")
    return unique, all_vectors[first]
