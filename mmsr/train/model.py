"""Build the recommender from a config, and feed it item inputs (cache, raw, or IDs).

    Recommender = item tower (content or ID) + user tower (sequence model), scored by inner product.

A *feed* turns item ids into what the item tower reads:
  CacheFeed  - slices of the cached lower-layer states, held in RAM, memory-mapped or on GPU;
  RawFeed    - the frozen lower layers run on the fly (end-to-end mode: eval mode, no grad);
  None       - IDSR reads ids directly.
Both content feeds produce the same states, so the cached and end-to-end paths share one
code path from `upper` onwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmsr.models.fusion import create_fusion
from mmsr.models.sequence import create_sequence_model
from mmsr.models.towers import ContentItemTower, IDItemTower, UserTower
from mmsr.train.batches import PAD, Batch
from mmsr.train.config import TrainConfig


class CacheFeed:
    def __init__(self, states: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device):
        self.states = states
        self.device = device

    def __call__(self, ids: torch.Tensor):
        out = {}
        for modality, (hidden, mask) in self.states.items():
            index = ids.to(hidden.device)
            out[modality] = (hidden[index].to(self.device, non_blocking=True), mask[index].to(self.device))
        return out


class RawFeed:
    """Runs each encoder's frozen lower layers on raw text and pictures, every call."""

    def __init__(self, dataset, encoders: dict, text_fields: list[str], device: torch.device):
        self.dataset = dataset
        self.encoders = encoders
        self.text_fields = text_fields
        self.device = device

    def raw(self, modality: str, ids: list[int]):
        if modality == "text":
            return [self.dataset.item_text(i, self.text_fields) for i in ids]
        from mmsr.cache_stage import load_picture
        from mmsr.errors import MMSRError

        pictures = []
        for i in ids:
            picture, problem = load_picture(self.dataset, i)
            if problem:
                raise MMSRError(problem, hint="restore the file, or re-import the dataset with --on-bad-image "
                                              "skip|placeholder")
            pictures.append(picture)
        return pictures

    def __call__(self, ids: torch.Tensor):
        id_list = ids.tolist()
        out = {}
        for modality, encoder in self.encoders.items():
            raw = self.raw(modality, id_list)
            present = [k for k, value in enumerate(raw) if value is not None]
            batch = encoder.preprocess([raw[k] for k in present])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            with torch.no_grad():
                hidden, mask = encoder.lower_forward(batch)
            if len(present) < len(raw):  # items without a picture: zeros, nothing valid (as in the cache)
                full = hidden.new_zeros((len(raw),) + hidden.shape[1:])
                full_mask = mask.new_zeros((len(raw),) + mask.shape[1:])
                full[present], full_mask[present] = hidden, mask
                hidden, mask = full, full_mask
            out[modality] = (hidden, mask)
        return out


class Recommender(nn.Module):
    def __init__(self, items: nn.Module, user: UserTower, loss: str = "bce"):
        super().__init__()
        self.items = items
        self.user = user
        self.loss_kind = loss

    @property
    def content(self) -> bool:
        return isinstance(self.items, ContentItemTower)

    def item_vectors(self, ids: torch.Tensor, feed=None) -> torch.Tensor:
        if self.content:
            return self.items.from_states(feed(ids))
        return self.items(ids)

    def user_vectors(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.user(item_vectors * mask.unsqueeze(-1), mask)

    def forward(self, batch: Batch, feed=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (summed loss, number of target positions) for this process's rows."""
        parts = (batch.inputs, batch.targets, batch.negatives)
        flat = torch.cat([part.flatten() for part in parts])
        valid = flat != PAD
        unique, inverse = torch.unique(flat[valid], return_inverse=True)
        vectors = self.item_vectors(unique, feed)  # each distinct item encoded once
        rows = torch.zeros_like(flat)
        rows[valid] = inverse  # row of `vectors` per position (0 where padded, then zeroed)
        inputs_row, targets_row, negatives_row = rows.view(3, *batch.inputs.shape)

        def gather(row, ids):
            return vectors[row] * (ids != PAD).unsqueeze(-1)

        in_mask = batch.inputs != PAD
        users = self.user_vectors(gather(inputs_row, batch.inputs), in_mask)
        mask = batch.mask
        count = mask.sum()
        if self.loss_kind == "inbatch":
            logits = users[mask] @ vectors.T
            return F.cross_entropy(logits.float(), targets_row[mask], reduction="sum"), count
        positive = (users * gather(targets_row, batch.targets)).sum(-1)[mask].float()
        negative = (users * gather(negatives_row, batch.negatives)).sum(-1)[mask].float()
        loss = F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive), reduction="sum") \
            + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative), reduction="sum")
        return loss, count


def build_model(config: TrainConfig, num_items: int, encoders: dict | None = None) -> Recommender:
    m = config.model
    if m.kind == "idsr":
        items: nn.Module = IDItemTower(num_items, m.dim)
    else:
        from mmsr.errors import MMSRError

        from mmsr.cache_stage import create_encoders

        encoders = create_encoders(config.encoders) if encoders is None else encoders
        if not encoders:
            raise MMSRError("model.kind=mmsr needs at least one of encoders.text_model / encoders.vision_model",
                            hint="or use model.kind=idsr")
        fusion_name = m.fusion if len(encoders) == 2 else "pool"
        fusion = create_fusion(fusion_name, input_dims={k: e.output_size for k, e in encoders.items()}, dim=m.dim,
                               layers=m.fusion_layers, heads=m.fusion_heads, dropout=m.dropout)
        items = ContentItemTower(encoders, fusion, m.dim)
    sequence = create_sequence_model(m.sequence, dim=m.dim, max_len=config.split.max_seq_len, layers=m.sequence_layers,
                                     heads=m.sequence_heads, dropout=m.dropout)
    return Recommender(items, UserTower(sequence), loss=config.optim.loss)


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
