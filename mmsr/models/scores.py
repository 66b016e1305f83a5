"""How a user vector scores an item vector, chosen by name (`model.score`), like the fusions.

    score = create_score(name, temperature=...)    # the settings its entry reads (`params`)
    logits = score.users(users) @ score.items(item_vectors).T

Both sides go through their rule before anything is scored: the training losses, validation,
`mmsr eval` (FAISS or exact, sharded or not) and `mmsr recommend` all see the same vectors, so
an inner-product index over `items(...)` ranks exactly as the model was trained to.

`dot` and `cosine` have no parameters (the temperature is a setting); `cosine-learned` holds one,
its temperature, which the checkpoint keeps like any other weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmsr.registry import Registry

SCORES: Registry["Score"] = Registry("score")


class Score(nn.Module):
    """What every score offers: its rule for item vectors and for user vectors, and what of it
    training changed (none but for a learned temperature), for the epoch's record."""

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trained(self) -> dict[str, float]:
        return {}


class Dot(Score):
    """The inner product u·i: the seed's score, SASRec's and RecBole's."""

    def __init__(self, **_):
        super().__init__()

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors


class Cosine(Score):
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


class LearnedCosine(Cosine):
    """Cosine similarity over a temperature that is trained with the model: CLIP's learnable
    logit scale (Radford et al., ICML 2021), kept as log(1/τ) so a step changes it by a ratio.
    It starts at `model.temperature` and stays at or above 0.01, CLIP's clamp (a scale of 100),
    so that a softmax loss cannot sharpen the logits without bound on a training set it fits.
    Ranks do not depend on it (see Cosine); only training does. It sits in the downstream
    optimizer group with the sequence model, at its learning rate and weight decay.

    Measured: it follows the training loss, not what generalises. On the demo IDSR's validation
    wanted 0.2, and from 0.05 it went to 0.049; on MovieLens-100K it rose to about 0.06
    (docs/compare.md, "Lower and learned temperatures").
    """

    MIN_TEMPERATURE = 0.01

    def __init__(self, temperature: float, **_):
        super().__init__(temperature)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.temperature)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=1.0 / self.MIN_TEMPERATURE)

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) * self.scale().to(vectors.dtype)

    def trained(self) -> dict[str, float]:
        return {"temperature": round(float(1.0 / self.scale().detach()), 5)}


SCORES.register("dot", help="inner product (the seed's)")(Dot)
SCORES.register("cosine", params=("temperature",),
                help="cosine similarity / model.temperature, item and user vectors normalised")(Cosine)
SCORES.register("cosine-learned", params=("temperature",),
                help="cosine similarity over a trained temperature that starts at model.temperature")(LearnedCosine)


def create_score(name: str, **settings) -> Score:
    return SCORES.create(name, **settings)
