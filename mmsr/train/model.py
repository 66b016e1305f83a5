"""Build the recommender from a config; what trains and what is saved.

    Recommender = item tower (content or ID) + user tower (sequence model), scored by inner product.

The model never reads files: a feed (`mmsr.train.feeds`) turns item ids into the item
tower's inputs (cached states, states computed from raw inputs, or the ids themselves)
before `forward` runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmsr.encoders import create_encoders
from mmsr.errors import MMSRError
from mmsr.models.fusion import create_fusion
from mmsr.models.sequence import create_sequence_model
from mmsr.models.towers import ContentItemTower, IDItemTower, UserTower
from mmsr.train.batches import PAD, Batch
from mmsr.train.config import TrainConfig
from mmsr.train.losses import LossInputs, create_loss


class Recommender(nn.Module):
    def __init__(self, items: nn.Module, user: UserTower, loss: str = "bce", train_counts: np.ndarray | None = None):
        super().__init__()
        self.items = items
        self.user = user
        self.loss = create_loss(loss, train_counts=train_counts)

    @property
    def content(self) -> bool:
        return isinstance(self.items, ContentItemTower)

    def encode_items(self, inputs) -> torch.Tensor:
        """A feed's output for some items -> their vectors."""
        return self.items.from_states(inputs) if self.content else self.items(inputs)

    def item_vectors(self, ids: torch.Tensor, feed) -> torch.Tensor:
        return self.encode_items(feed(ids))

    def user_vectors(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user(item_vectors * mask.unsqueeze(-1), mask)

    def all_item_vectors(self) -> torch.Tensor:
        """Every item's vector, for the full softmax: the ID table itself."""
        if self.content:
            raise MMSRError("the full softmax would run every item through the item tower at every step",
                            hint="use --set optim.loss=inbatch")
        return self.items.embedding.weight

    def forward(self, batch: Batch, ids: torch.Tensor, rows: torch.Tensor, item_inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed loss, number of target positions) for this process's rows.

        `ids` are the batch's distinct items and `rows` where each position's item is among
        them (`Batch.distinct_items`); `item_inputs` is the feed's output for `ids`: each item
        is encoded once.
        The user vectors at the target positions and the item vectors go to the loss
        (`mmsr.train.losses`).
        """
        vectors = self.encode_items(item_inputs)
        inputs_row, targets_row, negatives_row = rows
        in_mask = batch.inputs != PAD
        users = self.user_vectors(vectors[inputs_row] * in_mask.unsqueeze(-1), in_mask)
        mask = batch.mask
        loss = self.loss(LossInputs(users=users[mask], targets=batch.targets[mask],
                                    target_vectors=vectors[targets_row[mask]],
                                    negative_vectors=vectors[negatives_row[mask]], item_ids=ids,
                                    item_vectors=vectors, all_items=self.all_item_vectors))
        return loss, mask.sum()


def build_model(config: TrainConfig, num_items: int, encoders: dict | None = None, *,
                train_counts: np.ndarray | None = None) -> Recommender:
    """`train_counts` (the training split's item counts) is what a loss that needs item
    popularity (`inbatch-logq`) reads; training passes it, rebuilding a model to evaluate
    need not."""
    m = config.model
    if m.kind == "idsr":
        items: nn.Module = IDItemTower(num_items, m.dim)
    else:
        encoders = create_encoders(config.encoders) if encoders is None else encoders
        if not encoders:
            raise MMSRError("model.kind=mmsr needs at least one of encoders.text_model / encoders.vision_model",
                            hint="or use model.kind=idsr")
        # m.fusion is already "pool" for one modality: TrainConfig resolves the default.
        fusion = create_fusion(m.fusion, input_dims={k: e.output_size for k, e in encoders.items()}, dim=m.dim,
                               layers=m.fusion_layers, heads=m.fusion_heads, dropout=m.dropout)
        items = ContentItemTower(encoders, fusion, m.dim)
    sequence = create_sequence_model(m.sequence, dim=m.dim, max_len=config.split.max_seq_len, layers=m.sequence_layers,
                                     heads=m.sequence_heads, dropout=m.dropout)
    return Recommender(items, UserTower(sequence), loss=config.optim.loss, train_counts=train_counts)


def frozen_state_keys(model: Recommender) -> set[str]:
    """State-dict keys of the frozen lower layers: never saved, they come from the pretrained weights."""
    if not model.content:
        return set()
    lower = {id(module) for e in model.items.encoders.values() for module in e.lower_modules()}
    keys = set()
    for prefix, module in model.named_modules():
        if id(module) in lower:
            keys.update(f"{prefix}.{key}" for key in module.state_dict())
    return keys


def trainable_state(model: Recommender) -> dict[str, torch.Tensor]:
    frozen = frozen_state_keys(model)
    return {key: value for key, value in model.state_dict().items() if key not in frozen}


def parameter_groups(model: Recommender, config: TrainConfig) -> list[dict]:
    tops = set(id(p) for p in model.items.encoder_top_parameters()) if model.content else set()
    top_params = [p for p in model.parameters() if p.requires_grad and id(p) in tops]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tops]
    groups = [{"name": "downstream", "params": rest, "lr": config.optim.lr, "weight_decay": config.optim.weight_decay}]
    if top_params:
        groups.append({"name": "encoder_tops", "params": top_params, "lr": config.optim.encoder_lr,
                       "weight_decay": config.optim.encoder_weight_decay})
    return groups
