"""Sequence models (seed §3.5): item vectors in, one user vector per position out.

    model(items [B, L, D], mask [B, L] bool) -> users [B, L, D]

Sequences are LEFT-padded: the most recent item is at position L-1. Every model is causal:
the output at position t depends only on items 0..t, so every prefix position is a
training target. A user vector scores items by inner product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmsr.models.layers import Block
from mmsr.registry import Registry

# Each registration declares the knobs it reads (model.sequence_layers -> layers, model.sequence_heads ->
# heads); the config refuses the others. Every model accepts both, so one call builds any of them.
SEQUENCE_MODELS: Registry[nn.Module] = Registry("sequence model")
DEFAULT_LAYERS = {"sasrec": 2, "gru4rec": 4, "nextitnet": 2}


def create_sequence_model(name: str, *, dim: int, max_len: int, layers: int | None = None, heads: int = 2,
                          dropout: float = 0.1) -> nn.Module:
    layers = DEFAULT_LAYERS.get(name, 2) if layers is None else layers
    return SEQUENCE_MODELS.create(name, dim=dim, max_len=max_len, layers=layers, heads=heads, dropout=dropout)


def sequence_model_names() -> list[str]:
    return SEQUENCE_MODELS.names()


@SEQUENCE_MODELS.register("sasrec", params=("layers", "heads"))
class SASRec(nn.Module):
    """Causal transformer with learned positions (Kang & McAuley 2018); padding keys are masked."""

    post_norm = False

    def __init__(self, dim: int, max_len: int, layers: int = 2, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)
        nn.init.normal_(self.position.weight, std=0.02)  # at the scale of the item vectors
        self.dropout = nn.Dropout(dropout)
        self.input_norm = nn.LayerNorm(dim) if self.post_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, post_norm=self.post_norm) for _ in range(layers))
        self.norm = nn.Identity() if self.post_norm else nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, allowed = self._inputs(items, mask)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def last_state(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`forward(items, mask)[:, -1]`, the state evaluation scores, with the last block run for
        the last position alone: its keys still read every position (as the block's own
        normalised input), but its query, output projection and MLP run once, not L times
        (about 1.7x less work for two blocks at L = 20). Equal to forward's up to float rounding."""
        x, allowed = self._inputs(items, mask)
        *lower, top = self.blocks
        for block in lower:
            x = block(x, allowed)
        return self.norm(top(x[:, -1:], allowed[:, :, -1:], context=top.norm1(x)))[:, 0]

    def _inputs(self, items: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} > max_len {self.max_len}")
        # Positions count back from the most recent item, so left padding does not shift them.
        position = torch.arange(self.max_len - length, self.max_len, device=items.device)
        x = self.dropout(self.input_norm(items + self.position(position))) * mask.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        # A padded position may always see itself, so no softmax row is empty.
        allowed = (causal & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=items.device)
        return x, allowed.unsqueeze(1)


@SEQUENCE_MODELS.register("sasrec-postnorm", params=("layers", "heads"))
class PostNormSASRec(SASRec):
    """SASRec in the layout RecBole 1.2.1 gives SASRec and FDSA: a LayerNorm on the item vectors
    plus positions going in, post-norm blocks (normalised after each residual sum), no final
    norm. `sasrec` is pre-norm with a final norm, the layout that trains deeper stacks stably;
    this one is here to compare with RecBole's models layer for layer (docs/compare.md, FDSA).
    Its evaluation runs the whole stack (no last-position shortcut)."""

    post_norm = True

    def last_state(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward(items, mask)[:, -1]


def last_state(model: nn.Module, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`model(items, mask)[:, -1]`, through the model's own `last_state` shortcut where it has
    one (SASRec, and the towers that wrap a sequence model): what evaluation scores."""
    shortcut = getattr(model, "last_state", None)
    return shortcut(items, mask) if shortcut is not None else model(items, mask)[:, -1]


@SEQUENCE_MODELS.register("gru4rec", params=("layers",))
class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al., ICLR 2016) as RecBole runs it: stacked GRUs over the item vectors
    (the seed's 4 layers), then a linear map into the item space.

    Departure: a LayerNorm on the item vectors going in. They come at the scale of an ID table
    (std 0.02; content towers are scaled to match) and a GRU normalises nothing, so its biases
    (±1/sqrt(dim)) drown such inputs within a layer or two and the model learns little beyond
    popularity. SASRec needs none (its pre-norm blocks normalise what they read); NextItNet has
    the same departure.
    """

    def __init__(self, dim: int, max_len: int, layers: int = 4, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(dim, dim)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.dropout(self.input_norm(items) * mask.unsqueeze(-1)))
        return self.out(hidden)


class _ResidualDilatedBlock(nn.Module):
    """NextItNet's residual block: two causal dilated convolutions (dilation d, then 2d)."""

    def __init__(self, dim: int, dilation: int, kernel: int = 3, dropout: float = 0.1):
        super().__init__()
        self.kernel = kernel
        self.dilations = (dilation, 2 * dilation)
        self.conv1 = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.norm1 = nn.LayerNorm(dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel, dilation=2 * dilation)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def _causal(self, conv: nn.Conv1d, x: torch.Tensor, dilation: int) -> torch.Tensor:
        pad = (self.kernel - 1) * dilation
        return conv(F.pad(x.transpose(1, 2), (pad, 0))).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self._causal(self.conv1, x, self.dilations[0])))
        h = F.relu(self.norm2(self._causal(self.conv2, h, self.dilations[1])))
        return x + self.dropout(h)


@SEQUENCE_MODELS.register("nextitnet", params=("layers",))
class NextItNet(nn.Module):
    """NextItNet (Yuan et al., WSDM 2019): residual blocks of causal dilated convolutions
    (dilations 1, 2 then 4, 8, ...), the seed's 2 blocks. Departure: a LayerNorm on the item
    vectors going in, for the reason GRU4Rec has one: at an ID table's scale the convolutions'
    biases would drown the items in the residual stream."""

    def __init__(self, dim: int, max_len: int, layers: int = 2, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(_ResidualDilatedBlock(dim, 2 ** (2 * i), dropout=dropout) for i in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(items) * mask.unsqueeze(-1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
