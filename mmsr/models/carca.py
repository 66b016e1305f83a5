"""CARCA++ (Rashed et al., "Context and Attribute-Aware Sequential Recommendation via
Cross-Attention", RecSys 2022; made multi-modal as seed §4.3 describes).

    item i   ->  ID embedding + projected, masked-mean pooled content of each modality
    sequence ->  causal self-attention (SASRec blocks)                  -> H [L, D]
    score    ->  the candidate attends to H (cross-attention); what it reads, times the
                 candidate, through a linear read-out: NOT an inner product

Because the score depends on the candidate inside the attention, no index can rank for it:
the evaluation scores every item for every user in blocks (`mmsr.eval.search.batched_ranks`).

Departures from the paper (the scorer's own are in `CrossAttentionScorer`): one attention
head in the decoder; no context features (the demo and MovieLens carry no per-interaction
context); the content features are the encoders' outputs with their top blocks frozen (CARCA
takes attributes as given).
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.models.fdsa import fixed_features, given_features


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

    def pooled_once(self) -> list[str]:
        return fixed_features(self.encoders)

    def forward(self, inputs: dict) -> torch.Tensor:
        vectors = self.embedding(inputs["ids"])
        for column in given_features(self.encoders, self.project, inputs["states"]):
            vectors = vectors + column * self.scale
        return vectors


class CrossAttentionScorer(nn.Module):
    """score(candidate, H) = w · (attention(c, H) ⊙ c), c = LN(candidate): each candidate
    queries the encoded sequence, and what it reads there is multiplied by the candidate
    before the linear read-out (the authors' decoder with its multiplicative residual,
    `use_res`, which their code sets for Beauty and Video Games; Q, K and V through a leaky
    ReLU as there). `key_mask` says which positions of H a candidate may see.

    Two departures. The candidate is normalised first: item vectors come at an ID table's
    scale (std 0.02) and the sequence states out of a LayerNorm, and unnormalised the query
    left every attention weight uniform (a fresh scorer told users apart 15x more than
    candidates). And the decoder is causal in training (position t reads H up to t); the
    authors' reads the whole sequence. An additive residual, LN(c + attention(c, H)) with a
    feed-forward read-out, learnt little beyond popularity here: demo test HR@10 0.033, 0.043
    with the candidate norm, against 0.135 with the multiplicative form (README, Table V)."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.candidate_norm = nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.activation = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout(dropout)
        self.read_out = nn.Linear(dim, 1)
        self.dim = dim

    def _score(self, candidates: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor,
               pattern: str) -> torch.Tensor:
        queries = self.activation(self.query(candidates))
        keys, values = self.activation(self.key(context)), self.activation(self.value(context))  # [N, L, D]
        logits = torch.einsum(pattern, queries, keys) / self.dim ** 0.5  # [N, M, L]
        logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
        weights = self.dropout(torch.softmax(logits, dim=-1))
        attended = torch.einsum("nml,nld->nmd", weights, values)
        return self.read_out(attended * candidates).squeeze(-1)  # [N, M]

    def pairs(self, context: torch.Tensor, key_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """context [N, L, D], key_mask [N, L], one candidate per row [N, D] -> scores [N]."""
        return self._score(self.candidate_norm(candidates)[:, None], context, key_mask, "nmd,nld->nml")[:, 0]

    def matrix(self, context: torch.Tensor, key_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """context [N, L, D], key_mask [N, L], shared candidates [M, D] -> scores [N, M]."""
        return self._score(self.candidate_norm(candidates), context, key_mask, "md,nld->nml")
