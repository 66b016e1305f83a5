"""The item tower and the user tower.

Item tower: an item's modalities -> one vector. Either from cached lower-layer states
(`upper` blocks -> fusion), from raw inputs (the whole split encoder -> fusion; end-to-end
mode), or from an ID embedding table (IDSR, the paper's ID baselines).
User tower: a sequence model over item vectors -> one vector per position.
Score: inner product.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder
from mmsr.models.layers import PooledState, in_length_groups, upper_tokens
from mmsr.models.sequence import last_state

States = dict[str, tuple[torch.Tensor, torch.Tensor]]


class ContentItemTower(nn.Module):
    inputs = "states"  # what its feed gives it (see mmsr.train.kinds)
    # The batch's items go through the tops and the fusion in up to this many groups of similar
    # token count, each trimmed to its own longest item (layers.in_length_groups); a group holds
    # at least `min_group_items`, so that small batches stay one call. 1 turns it off.
    # Measured in bench/token_trim.py (docs/bench-train.md, "Length groups").
    length_groups = 8
    min_group_items = 64
    # Measured on a CPU only. On a GPU each group adds its kernel launches and the trim's host
    # read-backs, against arithmetic a GPU does fast: off there until measured (docs/gpu.md,
    # "Still unchecked"; bench/token_trim.py times the groups on whatever device it runs on).
    length_group_devices = ("cpu",)

    def __init__(self, encoders: dict[str, SplitEncoder], fusion: nn.Module, dim: int):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        # Fusion outputs have entries of order 1 and the user tower ends in a LayerNorm (norm
        # sqrt(dim)), so raw scores would start with a spread of sqrt(dim) and saturate the
        # loss. A constant 1/sqrt(dim) puts item vectors at the scale of an ID embedding
        # table; being a constant, it neither starves the fusion of gradient nor changes ranks.
        self.scale = dim ** -0.5

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def pooled_once(self) -> list[str]:
        """The modalities a feed may hand over pooled (`PooledState`) instead of as states: the
        fusion begins by pooling each modality, and the encoder's `upper` runs nothing that
        learns (no top block, no final norm: MiniLM with text_top_blocks = 0), so each item's
        pooled vector is the same at every step. On MovieLens-100K's MMSR-T that pooling and
        its [items, tokens, 384] copies were two thirds of an epoch."""
        if not getattr(self.fusion, "pools_first", False):
            return []
        return [modality for modality, encoder in self.encoders.items() if encoder.upper_is_fixed()]

    def from_states(self, states: States) -> torch.Tensor:
        """Cached lower-layer states (any float dtype), or a feed's `PooledState` -> item vectors."""
        devices = {state[0].device.type for state in states.values()}
        if self._statistics_across_items() or not devices <= set(self.length_group_devices):
            return self._from_states(states)
        return in_length_groups(self._from_states, states, self.length_groups, self.min_group_items)

    def _statistics_across_items(self) -> bool:
        """A BatchNorm in training (model.fusion_standardize, a CNN's upper stages) makes each
        item's vector depend on the batch it is in: such a tower runs its batch whole."""
        # Asked at each call (115 us over MovieLens's 140-module tower, against a 0.4 s step),
        # not cached: a module swapped in later (a SyncBatchNorm) is then never missed.
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modules())

    def _from_states(self, states: States) -> torch.Tensor:
        tokens = {}
        for modality, encoder in self.encoders.items():
            state = states[modality]
            if isinstance(state, PooledState):  # the fusion pools first: it takes the vectors as they are
                tokens[modality] = state
            else:
                tokens[modality] = upper_tokens(encoder, *state)
        return self.fusion(tokens) * self.scale

    forward = from_states


class IDItemTower(nn.Module):
    """IDSR: a learned vector per item id, no content."""

    inputs = "ids"

    def __init__(self, num_items: int, dim: int):
        super().__init__()
        self.num_items = num_items
        self.embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def score_table(self) -> torch.Tensor:
        """Every item's vector at once (the full softmax)."""
        return self.embedding.weight


class UserTower(nn.Module):
    def __init__(self, sequence_model: nn.Module):
        super().__init__()
        self.sequence = sequence_model

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.sequence(item_vectors, mask)

    def last_state(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return last_state(self.sequence, item_vectors, mask)
