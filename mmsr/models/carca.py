"""CARCA++ (Rashed et al., "Context and Attribute-Aware Sequential Recommendation via
Cross-Attention", RecSys 2022; made multi-modal as seed §4.3 describes).

    item i   ->  ID embedding + projected, masked-mean pooled content of each modality
    sequence ->  causal self-attention (SASRec blocks)                  -> H [L, D]
    score    ->  the candidate attends to H (cross-attention), then a feed-forward layer
                 and a linear read-out: NOT an inner product

Because the score depends on the candidate inside the attention, no index can rank for it:
the evaluation scores every item for every user in blocks (`mmsr.eval.search.batched_ranks`).

Departures from the paper: one attention head in the decoder; no context features (the
demo and MovieLens carry no per-interaction context); the content features are the encoders'
outputs with their top blocks frozen (CARCA takes attributes as given).
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.models.fdsa import given_features


class CARCAItemTower(nn.Module):
    """Item ids and content states -> ID embedding + the sum of projected content features."""

    inputs = "ids+states"

    def __init__(self, num_items: int, dim: int, encoders: dict):
        super().__init__()
        self.embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.encoders = nn.ModuleDict(encoders)
        for parameter in self.encoders.parameters():  # attributes are given, not learned
            parameter.requires_grad_(False)
        self.project = nn.ModuleDict({m: nn.Linear(e.output_size, dim) for m, e in encoders.items()})
        self.scale = dim ** -0.5  # content at the scale of the ID table (see ContentItemTower)

    def forward(self, inputs: dict) -> torch.Tensor:
        vectors = self.embedding(inputs["ids"])
        for column in given_features(self.encoders, self.project, inputs["states"]):
            vectors = vectors + column * self.scale
        return vectors


class CrossAttentionScorer(nn.Module):
    """score(candidate, H) = w · FFN(LN(c + attention(c, H))), c = LN(candidate): each candidate
    queries the encoded sequence; `key_mask` says which positions of H it may see.

    The candidate is normalised first (not in the paper). Item vectors come at an ID table's
    scale (std 0.02, norm ~0.2) and the sequence states out of a LayerNorm (norm ~sqrt(D)):
    unnormalised, the candidate's query left every attention weight uniform and its residual
    vanished in LN(c + attended), so a fresh scorer told users apart 15x more than candidates
    and the model learnt little beyond popularity (demo test HR@10 0.033; README Table V)."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.candidate_norm = nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.read_out = nn.Linear(dim, 1)
        self.dim = dim

    def _score(self, queries: torch.Tensor, candidates: torch.Tensor, context: torch.Tensor,
               key_mask: torch.Tensor, pattern: str) -> torch.Tensor:
        keys, values = self.key(context), self.value(context)  # [N, L, D]
        logits = torch.einsum(pattern, queries, keys) / self.dim ** 0.5  # [N, M, L]
        logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
        attended = torch.einsum("nml,nld->nmd", torch.softmax(logits, dim=-1), values)
        h = self.norm(candidates + attended)
        return self.read_out(h + self.ffn(h)).squeeze(-1)  # [N, M]

    def pairs(self, context: torch.Tensor, key_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """context [N, L, D], key_mask [N, L], one candidate per row [N, D] -> scores [N]."""
        candidates = self.candidate_norm(candidates)
        return self._score(self.query(candidates)[:, None], candidates[:, None], context, key_mask,
                           "nmd,nld->nml")[:, 0]

    def matrix(self, context: torch.Tensor, key_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """context [N, L, D], key_mask [N, L], shared candidates [M, D] -> scores [N, M]."""
        candidates = self.candidate_norm(candidates)
        queries = self.query(candidates)
        return self._score(queries, candidates.expand(len(context), -1, -1), context, key_mask, "md,nld->nml")
