"""Small building blocks shared by the fusion modules and SASRec."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens; a row with no valid token gives zeros."""
    if (tokens.device.type == "cpu" and tokens.dtype in (torch.float32, torch.float64) and tokens.shape[1]
            and bool(mask.all())):
        # Every token valid (a ViT's patches always are): the product by ones is the identity,
        # bit for bit, and skipping it saves two passes over [N, T, D], forward and backward
        # (a fifth of the demo profile's CPU step, docs/bench-train.md). Not on a GPU: asking
        # would stop the host until the device caught up, and there the pass is cheap. Not in
        # half precision: there the weighted form's denominator is T rounded (bfloat16 holds 257
        # as 256), which dividing by the exact T would not reproduce.
        return tokens.sum(1) / tokens.shape[1]
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1.0)


class PooledState(NamedTuple):
    """A modality's items as a feed pooled them once, [N, D]: the masked mean of the encoder's
    `upper` output, given in place of the (hidden, mask) states where nothing before the
    pooling learns (`ContentItemTower.pooled_once`), so every step would compute it alike."""

    vectors: torch.Tensor


def trim_padding(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the trailing token slots that no row of the batch uses.

    A cache holds every text at `encoders.max_text_len` slots (50), padded at the end, while
    MovieLens-100K's longest title takes 33 tokens and its median 14: every block and fusion
    after the cache would otherwise run a third of its work, and more of its attention, on
    padding. Masked slots change no valid token's output, so only the arithmetic's rounding
    (and which random draws dropout spends where) differs. A modality with every slot used (a
    ViT's patches), or with none (a batch of items without pictures), is returned as it is. On a
    GPU the length is read back to the host, one small synchronisation per modality and step."""
    slots = mask.shape[-1]
    if mask.dim() != 2 or slots == 0:
        return hidden, mask
    # 1 + the last used slot, in one read-back; 0 when no item of the batch has the modality.
    used = int((mask.any(0) * torch.arange(1, slots + 1, device=mask.device)).max())
    if used in (0, slots):
        # Nothing to gain, or nothing to keep: a batch of items all without a picture keeps its
        # shape, which a Swin or a CNN top reshapes to the patch grid.
        return hidden, mask
    return hidden[:, :used], mask[:, :used]


def in_length_groups(run, states: dict, groups: int, min_items: int) -> torch.Tensor:
    """`run(states) -> [N, D]`, on the items sorted by their token count and cut into up to
    `groups` groups of equal size (at least `min_items` each), then put back in their order.

    Trimming (trim_padding) keeps the slots of the batch's longest item for every item: with
    MovieLens-100K's titles (median 14 tokens, longest 33) most of what a token tower runs is
    still padding. Sorted into eight groups, each trimmed to its own longest item, a batch of its
    items runs about half the token slots and 0.3x the attention pairs of one trimmed batch.
    `run` must treat every item alone (nothing computed across the items of a batch, such as a
    BatchNorm's statistics in training): the outputs are then those of one call, up to the
    arithmetic's rounding and which random draws dropout spends where. States a feed pooled
    once (PooledState) are cut alongside and weigh nothing in the order."""
    items = len(next(iter(states.values()))[0]) if states else 0  # either kind's first entry is [N, ...]
    groups = min(groups, items // max(min_items, 1))
    if groups < 2:
        return run(states)
    lengths = None
    for state in states.values():
        if isinstance(state, PooledState):
            continue
        mask = state[1]
        counts = mask.sum(-1)
        # A modality each item has whole or not at all (a ViT's patches, a picture missing) has
        # nothing to trim: it would only sort the items without it first, whatever their text.
        # One read-back per modality, as the trim's.
        if bool(((counts > 0) & (counts < mask.shape[-1])).any()):
            lengths = counts if lengths is None else lengths + counts
    if lengths is None or bool(lengths.min() == lengths.max()):
        return run(states)
    order = torch.argsort(lengths, stable=True)
    ordered = {m: _rows(s, order) for m, s in states.items()}  # one gather; the groups are slices of it
    bounds = [items * g // groups for g in range(groups + 1)]
    parts = [run({m: _rows(s, slice(a, b)) for m, s in ordered.items()}) for a, b in zip(bounds, bounds[1:])]
    return torch.cat(parts)[torch.argsort(order)]


def _rows(state, index):
    """The items `index` of a (hidden, mask) pair or of a PooledState, as the same kind."""
    rows = [part[index] for part in state]
    return PooledState(*rows) if isinstance(state, PooledState) else tuple(rows)


def upper_tokens(encoder, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`encoder.upper` on cached lower-layer states (hidden of any float dtype), the batch's
    unused trailing slots trimmed first."""
    hidden, mask = trim_padding(hidden, mask)
    return encoder.upper(hidden.float(), mask)


def pooled_upper(encoder, state) -> torch.Tensor:
    """[N, D]: a feed's `PooledState` as it is, else `encoder.upper` on the cached lower-layer
    states (hidden of any float dtype, mask), masked-mean pooled."""
    if isinstance(state, PooledState):
        return state.vectors.float()
    return masked_mean(*upper_tokens(encoder, *state))


def pooled_vectors(state) -> torch.Tensor:
    """[N, D] per item: a feed's `PooledState` as it is, else the masked mean of (tokens, mask)."""
    return state.vectors.float() if isinstance(state, PooledState) else masked_mean(*state)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head attention with a boolean `allowed` mask [B, 1|H, Lq, Lk] (True = may attend)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, allowed: torch.Tensor | None = None):
        context = x if context is None else context
        batch, length, dim = x.shape
        width = dim // self.heads  # not -1, which cannot be inferred for a batch of no rows
        q = self.q(x).view(batch, length, self.heads, width).transpose(1, 2)
        k, v = self.kv(context).view(batch, context.shape[1], 2, self.heads, width).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block; with `context` it is a cross-attention block.

    `attention_dropout` (None: `dropout`, as BERT does) drops attention probabilities. On a CPU it
    is not free: scaled_dot_product_attention has no fused kernel with dropout there and falls
    back to materialising the attention matrix and its mask (README, "Attention dropout").
    `post_norm`: normalise after each residual sum instead (the original Transformer's order,
    and RecBole's SASRec and FDSA); self-attention only."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4,
                 attention_dropout: float | None = None, post_norm: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout if attention_dropout is None else attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, allowed=None, context=None):
        if self.post_norm:
            x = self.norm1(x + self.dropout(self.attn(x, x, allowed)))
            return self.norm2(x + self.mlp(x))
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, context if context is not None else h, allowed))
        return x + self.mlp(self.norm2(x))


def key_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, Lk] validity -> [B, 1, 1, Lk] attention mask; rows with no valid key may attend to all
    (their output is ignored downstream) so that softmax never sees an empty row."""
    empty = ~mask.any(dim=1, keepdim=True)
    return (mask | empty)[:, None, None, :]
