"""How a user vector scores an item vector, chosen by name (`model.score`), like the fusions.

    score = create_score(name, temperature=...)    # the settings its entry reads (`params`)
    logits = score.users(users) @ score.items(item_vectors).T

Both sides go through their rule before anything is scored: the training losses, validation,
`mmsr eval` (FAISS or exact, sharded or not) and `mmsr recommend` all see the same vectors, so
an inner-product index over `items(...)` ranks exactly as the model was trained to.

A score has no parameters (the temperature is a setting), so checkpoints do not depend on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmsr.registry import Registry

SCORES: Registry[nn.Module] = Registry("score")


class Dot(nn.Module):
    """The inner product u·i: the seed's score, SASRec's and RecBole's."""

    def __init__(self, **_):
        super().__init__()

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors


class Cosine(nn.Module):
    """Cosine similarity over a temperature, cos(u, i) / τ (the normalised, temperature-scaled
    softmax of two-tower retrieval: Yi et al., RecSys 2019; for sequential recommenders with
    content towers, UniSRec, Hou et al., KDD 2022; why τ matters for sampled softmax: Wu et al.,
    "On the effectiveness of sampled softmax loss for item recommendation", 2022).

    Why it can matter here: under the inner product an item's norm is a free per-item bias, which
    an ID table can fit to popularity and a content tower has to infer from text; normalising takes
    that away from both, and τ sets how sharply the softmax losses separate the candidates.
    Ranks depend only on the items' directions (a user's own scale, 1/τ included, changes none).
    """

    def __init__(self, temperature: float, **_):  # its default is model.temperature's, kept there
        super().__init__()
        self.temperature = float(temperature)

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1)

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) / self.temperature


SCORES.register("dot", help="inner product (the seed's)")(Dot)
SCORES.register("cosine", params=("temperature",),
                help="cosine similarity / model.temperature, item and user vectors normalised")(Cosine)


def create_score(name: str, **settings) -> nn.Module:
    return SCORES.create(name, **settings)
