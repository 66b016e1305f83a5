"""Build the recommender from a config; what trains and what is saved.

    Recommender = item tower + user tower, scored by inner product after the score's rule
    (`model.score`, `mmsr.models.scores`: dot or cosine / τ); `model.kind` picks the towers
    (`mmsr.train.kinds`: MMSR, IDSR and the paper's baselines).

The model never reads files: a feed (`mmsr.train.feeds`) turns item ids into the item
tower's inputs (cached states, states computed from raw inputs, or the ids themselves)
before `forward` runs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mmsr.errors import MMSRError
from mmsr.models.scores import Score, create_score
from mmsr.models.sequence import last_state
from mmsr.torchrun_env import env_int
from mmsr.train.batches import PAD, Batch
from mmsr.train.config import TrainConfig
from mmsr.train.contrastive import ViewContrast
from mmsr.train.kinds import KindInputs, build_towers
from mmsr.train.losses import LossInputs, create_loss, loss_settings
from mmsr_store.memory import available_memory, human_bytes


class Recommender(nn.Module):
    def __init__(self, items: nn.Module, user: nn.Module, loss: nn.Module, scorer: nn.Module | None = None,
                 score: Score | None = None, contrast: ViewContrast | None = None):
        super().__init__()
        self.items = items
        self.user = user
        self.loss = loss  # mmsr.train.losses: build_model creates it from the config
        self.scorer = scorer  # None: inner product (FAISS); else candidate-dependent (CARCA++)
        self.score = score if score is not None else create_score("dot")
        self.contrast = contrast  # None: no contrastive term (mmsr.train.contrastive)

    @property
    def item_inputs(self) -> str:
        """What the item feed must give the item tower: "ids", "states" or "ids+states"."""
        return self.items.inputs

    @property
    def encoders(self) -> dict:
        """The split encoders the item tower reads states for (none for ID-only towers)."""
        return dict(getattr(self.items, "encoders", {}) or {})

    def encode_items(self, inputs) -> torch.Tensor:
        """A feed's output for some items -> their vectors (what the user tower reads)."""
        return self.items(inputs)

    def score_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Item vectors -> what a user vector is scored against (FDSA: the ID half), after the
        score's rule (`model.score`)."""
        part = getattr(self.items, "score_part", None)
        return self.score.items(part(vectors) if part is not None else vectors)

    def item_vectors(self, ids: torch.Tensor, feed) -> torch.Tensor:
        return self.encode_items(feed(ids))

    def user_vectors(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user(item_vectors * mask.unsqueeze(-1), mask)

    def last_user_vectors(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each sequence's state after its last item, [B, D]: what evaluation scores. A user
        tower that can compute that position alone (`last_state`, SASRec) skips the others.
        After the score's rule, so an inner product with `score_vectors` is the model's score."""
        return self.score.users(last_state(self.user, item_vectors * mask.unsqueeze(-1), mask))

    def all_item_vectors(self) -> torch.Tensor:
        """Every item's scored vector, for the full softmax: only towers whose scored part is a
        table (`score_table`) can afford it at every step."""
        table = getattr(self.items, "score_table", None)
        if table is None:
            raise MMSRError("the full softmax would run every item through the item tower at every step",
                            hint="use --set optim.loss=inbatch")
        return self.score.items(table())

    def forward(self, batch: Batch, ids: torch.Tensor, rows: torch.Tensor, item_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed loss, number of target positions) for this process's rows.

        `ids` are the batch's distinct items and `rows` where each position's item is among
        them (`Batch.distinct_items`); `item_inputs` is the feed's output for `ids`: each item
        is encoded once.
        The user vectors at the target positions and the item vectors go to the loss
        (`mmsr.train.losses`); with `optim.contrastive_weight`, the contrastive term on each row's
        last state is added (`mmsr.train.contrastive`), in training only.
        """
        vectors = self.encode_items(item_inputs)
        scored = self.score_vectors(vectors)
        inputs_row, targets_row, negatives_row = rows
        in_mask = batch.inputs != PAD
        users = self.user_vectors(vectors[inputs_row] * in_mask.unsqueeze(-1), in_mask)
        mask = batch.mask
        loss = self.loss(LossInputs(users=self.score.users(users[mask]), targets=batch.targets[mask],
                                    target_vectors=scored[targets_row[mask]],
                                    negative_vectors=scored[negatives_row[mask]], item_ids=ids,
                                    item_vectors=scored, all_items=self.all_item_vectors,
                                    pair_scores=self._pair_scorer(users, in_mask, mask),
                                    own=batch.own, positions=mask))
        if self.contrast is not None and self.training:
            # Rows are left-padded: position -1 is every row's last input. The second view is
            # the user tower run again, under other dropout masks. A row without targets (a
            # process's stand-in, Batch.shard) is no view.
            second = last_state(self.user, vectors[inputs_row] * in_mask.unsqueeze(-1), in_mask)
            rows_in = mask.any(1)
            loss = loss + self.contrast(users[rows_in, -1], second[rows_in], mask.sum(1)[rows_in])
        return loss, mask.sum()

    def _pair_scorer(self, users: torch.Tensor, in_mask: torch.Tensor, mask: torch.Tensor):
        """For a candidate-dependent scorer: each target position's candidate attends to the
        sequence states up to that position (causal, as the inner product's user vector is)."""
        if self.scorer is None:
            return None
        rows, positions = mask.nonzero(as_tuple=True)
        seen = torch.arange(users.shape[1], device=users.device)[None, :] <= positions[:, None]
        context, key_mask = users[rows], in_mask[rows] & seen
        return lambda vectors: self.scorer.pairs(context, key_mask, vectors)

    def score_matrix(self, contexts: torch.Tensor, key_mask: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Exact scores [U, N] of every item for each case's sequence states (candidate-dependent scorer)."""
        return self.scorer.matrix(contexts, key_mask, items)


# Training holds each new weight four times: itself, its gradient and Adam's two moments.
TRAINING_COPIES = 4


def build_model(config: TrainConfig, num_items: int, encoders: dict | None = None, *,
                train_counts: np.ndarray | None = None,
                item_field: Callable[[str], list[str]] | None = None, copies: int = 1) -> Recommender:
    """The `model.kind`'s towers (`mmsr.train.kinds`) with the config's loss.

    `train_counts` (the training split's item counts) is what a loss that needs item
    popularity (`inbatch-logq`) reads; training passes it, rebuilding a model to evaluate
    need not. `item_field` (`Dataset.item_field`) gives the text fields FDSA's side features read.
    `copies`: how many times the process will hold the new weights (`TRAINING_COPIES` to train
    on the CPU); a model that cannot fit so is refused before any weight is allocated.
    """
    inputs = KindInputs(num_items, encoders, item_field)
    _check_fits(config, inputs, copies)
    try:
        items, user, scorer = build_towers(config, inputs)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not out_of_memory(error):
            raise
        raise _too_big(config, num_items, allocation_failed(error)) from None
    loss = create_loss(config.optim.loss, train_counts=train_counts, **loss_settings(config.optim))
    optim = config.optim
    contrast = ViewContrast(optim.contrastive_weight, optim.contrastive_temperature) \
        if optim.contrastive_weight > 0 else None
    return Recommender(items, user, loss, scorer=scorer,
                       score=create_score(config.model.score, temperature=config.model.temperature),
                       contrast=contrast)


def _check_fits(config: TrainConfig, inputs: KindInputs, copies: int) -> None:
    """Refuse a model that cannot fit in the memory left (`mmsr_store.memory.available_memory`:
    MemAvailable or a cgroup's headroom, shared by the torchrun processes on the node), sized by
    building the towers on the meta device (no storage; draws nothing from the RNG).
    Without it a huge model.dim is not an error but a kill: Linux reserves the tensor lazily and
    the kernel's OOM killer ends the process, without a word, while the tensor is initialised."""
    if available_memory() is None:  # another OS: nothing to compare with, so no sizing pass
        return
    try:
        with torch.device("meta"):
            towers = [tower for tower in build_towers(config, inputs) if tower is not None]
    except RuntimeError as error:
        if "Storage size calculation overflowed" not in str(error):  # torch's words past 2^63 bytes
            raise
        raise _too_big(config, inputs.num_items, "one of its tensors would hold more bytes than a 64-bit "
                                                 "machine can address") from None
    weights, needed = _sizes(towers, copies)
    # Read after the pass: the encoders it loaded for real are already out of what is left.
    processes = max(1, env_int("LOCAL_WORLD_SIZE", 1))
    available = (available_memory() or 0) // processes
    if needed > available:
        to_train = f" ({human_bytes(needed)} to train: gradients and Adam's moments)" if copies > 1 else ""
        each = f" for each of the {processes} processes on this machine" if processes > 1 else ""
        raise _too_big(config, inputs.num_items, f"its new weights need {human_bytes(weights)}{to_train}; "
                                                 f"{human_bytes(available)} is available{each}")


def _sizes(towers: list[nn.Module], copies: int) -> tuple[int, int]:
    """(bytes of the new weights, bytes training them takes). A trainable weight is held `copies`
    times, a frozen one and a buffer once; a pretrained encoder's weights (real tensors already
    loaded) count only for what training adds to its trainable ones."""
    weights = needed = 0
    for tower in towers:
        for tensor in itertools.chain(tower.parameters(), tower.buffers()):
            size = tensor.numel() * tensor.element_size()
            trains = isinstance(tensor, nn.Parameter) and tensor.requires_grad
            if tensor.is_meta:
                weights += size
                needed += size * (copies if trains else 1)
            elif trains:
                needed += size * (copies - 1)
    return weights, needed


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed (CPU or CUDA), not another RuntimeError."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


def allocation_failed(error: BaseException) -> str:
    """An allocator's failure in a few words (its CUDA text is a paragraph of advice on fragmentation)."""
    asked = re.search(r"allocate (\d+) bytes", str(error))  # the CPU allocator's wording
    if asked:
        return f"one of its tensors asked for {human_bytes(int(asked.group(1)))} at once"
    # CUDA's: what was asked and what is free, then (one line) usage, fragmentation, a URL.
    sentences = re.split(r"(?<=\.)\s+", (str(error).splitlines() or ["an allocation failed"])[0])
    return " ".join(sentences[:3])


def _too_big(config: TrainConfig, num_items: int, why: str) -> MMSRError:
    """A model too large for the machine, said by its settings: the allocator's traceback names
    only a byte count, deep inside an nn.Embedding or nn.Linear."""
    return MMSRError(f"the model does not fit in memory: {why}",
                     where=f"model.dim = {config.model.dim:,} ({num_items:,} items)",
                     hint="model.dim sets the width of every layer (the ID table alone holds items x dim numbers, "
                          "a layer dim x dim); lower it: the configs in configs/ use 64 to 768")


def frozen_state_keys(model: Recommender) -> set[str]:
    """State-dict keys of the encoders' frozen modules (the lower layers; for FDSA, whose
    features are given, every encoder module): never saved, they come from the pretrained weights."""
    frozen = {id(module) for e in model.encoders.values() for module in e.lower_modules() + e.upper_modules()
              if not any(p.requires_grad for p in module.parameters())}
    keys = set()
    for prefix, module in model.named_modules():
        if id(module) in frozen:
            keys.update(f"{prefix}.{key}" for key in module.state_dict())
    return keys


def load_weights(model: Recommender, weights: dict[str, torch.Tensor], where) -> None:
    """A checkpoint's weights into `model`, which must hold exactly the checkpoint's tensors
    besides the frozen pretrained ones (never saved). A checkpoint written by another version
    of a model's modules is refused, naming the tensors, rather than loaded in part."""
    own = model.state_dict()
    # torch reports a shape that differs (another model.dim in a hand-edited config.json) with a
    # multi-line RuntimeError after loading the rest: named here first, with the other misfits.
    reshaped = [f"{key} {tuple(value.shape)} where this model has {tuple(own[key].shape)}"
                for key, value in weights.items() if key in own and value.shape != own[key].shape]
    missing, unexpected = ([], []) if reshaped else model.load_state_dict(weights, strict=False)
    frozen = frozen_state_keys(model)
    missing = [key for key in missing if key not in frozen]
    if unexpected or missing or reshaped:
        found = ", ".join(part for part in (
            f"weights of another shape: {reshaped[:2]}" if reshaped else "",
            f"weights this model does not have: {unexpected[:3]}" if unexpected else "",
            f"no weights for {missing[:3]}" if missing else "") if part)
        raise MMSRError(f"the checkpoint does not fit this model ({found})", where=where,
                        hint="it was written by a model with other modules (another mmsr version, or other "
                             "model.* settings): train the run again with --overwrite, or load it with the "
                             "mmsr that wrote it")


def trainable_state(model: Recommender) -> dict[str, torch.Tensor]:
    frozen = frozen_state_keys(model)
    return {key: value for key, value in model.state_dict().items() if key not in frozen}


def parameter_groups(model: Recommender, config: TrainConfig) -> list[dict]:
    """The pretrained parameters that train (the encoders' tops, and a pretrained fusion's such as
    FLAVA's multimodal encoder) take encoder_lr; the freshly initialised rest takes lr."""
    pretrained = [m for e in model.encoders.values() for m in e.upper_modules()]
    fusion = getattr(model.items, "fusion", None)
    pretrained += list(getattr(fusion, "pretrained_modules", list)())
    tops = {id(p) for m in pretrained for p in m.parameters()}
    top_params = [p for p in model.parameters() if p.requires_grad and id(p) in tops]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tops]
    groups = [{"name": "downstream", "params": rest, "lr": config.optim.lr, "weight_decay": config.optim.weight_decay}]
    if top_params:
        groups.append({"name": "encoder_tops", "params": top_params, "lr": config.optim.encoder_lr,
                       "weight_decay": config.optim.encoder_weight_decay})
    return groups
