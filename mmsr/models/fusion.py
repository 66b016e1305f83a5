"""Multi-modal fusion (seed §3.3, Table III), chosen by name.

Every module maps per-modality token sequences to one vector per item:

    fusion({"text": (tokens [N,Tt,Dt], mask [N,Tt]), "image": (tokens [N,Ti,Di], mask)}) -> [N, dim]

Coarse fusions (gate, film, sum, concat) work on masked-mean pooled, projected vectors;
`NAME+dnn` adds the paper's three-layer DNN on top (also after the token fusions, a departure
from the seed's Table III). Fine-grained fusions work on tokens:
`coattn` (one co-attention layer: each stream cross-attends the other, then a merging
layer) and `merge-attn` (the tokens of every stream concatenated into `layers` single-stream
transformer blocks, then pooled; with one modality, a token-level tower). `pool` serves
single-modality towers (MMSR-T, MMSR-V) by default.
The pooled fusions pool each modality by the masked mean, or by a learned attention over its
tokens (`pooling="attention"`, model.fusion_pooling).
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.errors import MMSRError
from mmsr.models.layers import Block, key_mask, masked_mean, pooled_vectors
from mmsr.registry import Registry, first_line

FUSIONS: Registry[nn.Module] = Registry("fusion")
TokenDict = dict[str, tuple[torch.Tensor, torch.Tensor]]
# How a pooled fusion turns a modality's tokens into one vector (model.fusion_pooling).
POOLINGS = ("mean", "attention")


def create_fusion(name: str, *, input_dims: dict[str, int], dim: int, layers: int = 1, heads: int = 4,
                  dropout: float = 0.1, encoders: dict | None = None, standardize: bool = False,
                  attention_dropout: float | None = None, pooling: str = "mean") -> nn.Module:
    """`encoders` ({modality: SplitEncoder}): read by fusions that come with a pretrained model
    (`flava` loads the multimodal encoder of its towers' checkpoint). `attention_dropout` (token
    fusions; None: `dropout`): see layers.Block."""
    needs = FUSIONS.needs(name)
    if needs and sorted(input_dims) != sorted(needs):
        raise MMSRError(f"fusion {name!r} needs {' and '.join(needs)}, got {sorted(input_dims)}",
                        hint="use fusion 'pool' (or 'merge-attn') for single-modality models (MMSR-T, MMSR-V)")
    return FUSIONS.create(name, input_dims=input_dims, dim=dim, layers=layers, heads=heads, dropout=dropout,
                          encoders=encoders, standardize=standardize, attention_dropout=attention_dropout,
                          pooling=pooling)


def fusion_names() -> list[str]:
    return FUSIONS.names()


# Fusions that are a pretrained model's own part and load it from their towers' checkpoint: they
# cannot be built from dimensions alone (tests build them with those towers, tests/test_vlp.py).
PRETRAINED_FUSIONS = ("flava",)


class _Pooled(nn.Module):
    """Pools each modality, layer-normalises it and projects it to `dim`.

    The norm puts encoders with very different output scales (a BERT layer without final
    norm, a ViT whose final norm leaves a few channels in the tens) on an equal footing.

    `standardize` (model.fusion_standardize) first centres and scales each channel over the
    items of the batch (a BatchNorm without affine terms; its running statistics at evaluation).
    Pretrained states share one large direction: on the demo's cache the catalogue's mean pooled
    state is 66% (MiniLM) and 82% (DINOv2-S) of a typical item's norm, and two items' pooled
    states have a mean cosine of 0.44 and 0.68, which a LayerNorm per item leaves in place.
    Measured (README, "Standardised features"): it helps the demo's text-and-picture model and
    not MovieLens's text-only one, so it is off by default.

    `pooling` (model.fusion_pooling): "mean", the masked mean; or "attention", a learned
    softmax over each modality's valid tokens, one score per token (a linear map of the
    normalised token), so that the tower can weigh a title's words above the template around
    them. The scores start at zero: a fresh attention tower pools exactly as the mean does and
    learns only what moves it away. It reads every token, so a feed cannot hand it vectors
    pooled once (towers.pooled_once) and an epoch costs more. Measured (docs/compare.md, "Four
    more levers for MMSR-T"): on MovieLens-100K's MMSR-T it lost to the mean on validation over
    four seeds, at 4.7x the epoch time; on the demo's text and pictures it won on validation
    over two, at 2x. Mean by default.
    """

    def __init__(self, input_dims: dict[str, int], dim: int, standardize: bool = False, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise MMSRError(f"unknown pooling {pooling!r}", hint="one of " + ", ".join(POOLINGS))
        self.order = sorted(input_dims)
        # The mean is the first step on each modality: a feed may pool once (towers.pooled_once).
        self.pools_first = pooling == "mean"

        def project(d: int) -> nn.Sequential:
            return nn.Sequential(*([nn.BatchNorm1d(d, affine=False)] if standardize else []), nn.LayerNorm(d),
                                 nn.Linear(d, dim))

        self.proj = nn.ModuleDict({m: project(d) for m, d in input_dims.items()})
        self.score = None
        if pooling == "attention":
            self.score = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
                                        for m, d in input_dims.items()})
            for score in self.score.values():
                nn.init.zeros_(score[1].weight)
                nn.init.zeros_(score[1].bias)

    def pooled(self, inputs: TokenDict) -> list[torch.Tensor]:
        missing = [m for m in self.order if m not in inputs]
        if missing:
            raise ValueError(f"fusion needs modalities {self.order}, missing {missing}")
        return [self.proj[m](self.pool(m, inputs[m])) for m in self.order]

    def pool(self, modality: str, state) -> torch.Tensor:
        """[N, D]: the modality's masked mean (or the vector a feed pooled once), or its tokens
        weighted by the learned attention."""
        if self.score is None:
            return pooled_vectors(state)
        tokens, mask = state
        valid = mask.bool()
        logits = self.score[modality](tokens).squeeze(-1)
        # A row with no valid token (an item without a picture) keeps finite logits, so that no
        # NaN reaches the gradient, and gives zeros, as masked_mean does.
        logits = logits.masked_fill(~valid & valid.any(-1, keepdim=True), float("-inf"))
        weights = torch.softmax(logits, dim=-1) * valid
        return torch.bmm(weights.unsqueeze(1), tokens).squeeze(1)  # no [N, T, D] temporary


class Pool(_Pooled):
    """Each present modality pooled and projected, summed: a one-modality tower (MMSR-T, MMSR-V)."""

    def forward(self, inputs: TokenDict) -> torch.Tensor:
        return torch.stack(self.pooled(inputs)).sum(0)


class Sum(_Pooled):
    """Text and picture pooled, projected and added."""

    def forward(self, inputs):
        text, image = self.pooled(inputs)
        return text + image


class Concat(_Pooled):
    """Text and picture pooled and projected, concatenated, then one linear map back to `dim`."""

    def __init__(self, input_dims, dim, standardize=False, pooling="mean"):
        super().__init__(input_dims, dim, standardize, pooling)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, inputs):
        return self.out(torch.cat(self.pooled(inputs), dim=-1))


class Gate(_Pooled):
    """g = sigmoid(W [a; b]); g * a + (1 - g) * b."""

    def __init__(self, input_dims, dim, standardize=False, pooling="mean"):
        super().__init__(input_dims, dim, standardize, pooling)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, inputs):
        a, b = self.pooled(inputs)
        g = torch.sigmoid(self.gate(torch.cat([a, b], dim=-1)))
        return g * a + (1 - g) * b


class FiLM(_Pooled):
    """The text conditions the image: gamma(text) * image + beta(text)."""

    def __init__(self, input_dims, dim, standardize=False, pooling="mean"):
        super().__init__(input_dims, dim, standardize, pooling)
        self.film = nn.Linear(dim, 2 * dim)

    def forward(self, inputs):
        image, text = self.pooled(inputs)  # sorted order: image, text
        gamma, beta = self.film(text).chunk(2, dim=-1)
        return (1 + gamma) * image + beta


class WithDNN(nn.Module):
    """A fusion followed by the paper's three-layer DNN (Coarse+ in Table III), as a
    residual branch: x + DNN(LN(x)).

    The seed stacks the DNN on the fusion's output. Stacked so, a fresh DNN's biases outweigh
    what it passes on of the items (three default-initialised layers shrink it about 20x): every
    item came out near one shared vector (mean pairwise cosine 0.62-0.92 over the four coarse
    fusions) and the Coarse+ rows trailed their fusions by 26-60% on the demo. The residual
    keeps the items apart and lets the DNN learn a correction. On the demo, Gate+ test HR@10:
    stacked 0.0850, stacked with a LayerNorm after 0.2045, residual 0.2240 (validation chose it:
    0.2385 against 0.2040); README, Table III."""

    def __init__(self, base: nn.Module, dim: int, dropout: float):
        super().__init__()
        self.base = base
        self.norm = nn.LayerNorm(dim)
        self.dnn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(dim, dim))

    @property
    def pools_first(self) -> bool:
        return getattr(self.base, "pools_first", False)

    def forward(self, inputs):
        fused = self.base(inputs)
        return fused + self.dnn(self.norm(fused))


class _Tokens(nn.Module):
    """Projects each modality's tokens to `dim` and tags them with a learned modality embedding."""

    def __init__(self, input_dims: dict[str, int], dim: int):
        super().__init__()
        self.order = sorted(input_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, dim)) for m, d in input_dims.items()})
        self.kind = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in input_dims})

    def tokens(self, inputs: TokenDict) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.proj[m](inputs[m][0]) + self.kind[m], inputs[m][1]) for m in self.order]


class MergeAttention(_Tokens):
    """Single-stream: the token sequences concatenated through `layers` transformer blocks.

    With one modality (MMSR-T, MMSR-V) this is a small transformer trained over the frozen
    encoder's tokens: a token-level item tower at the model's width, far cheaper than fine-tuning
    the encoder's own top block at its width."""

    def __init__(self, input_dims, dim, layers=1, heads=4, dropout=0.1, attention_dropout=None, **_):
        super().__init__(input_dims, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, attention_dropout=attention_dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, inputs):
        streams = self.tokens(inputs)
        x = torch.cat([t for t, _ in streams], dim=1)
        mask = torch.cat([m for _, m in streams], dim=1)
        allowed = key_mask(mask)
        for block in self.blocks:
            x = block(x, allowed)
        return masked_mean(self.norm(x), mask)


class CoAttention(_Tokens):
    """Two streams: each cross-attends the other (one layer), then a merging projection."""

    # One layer, as in the paper: `layers` unused.
    def __init__(self, input_dims, dim, layers=1, heads=4, dropout=0.1, attention_dropout=None, **_):
        super().__init__(input_dims, dim)
        self.cross = nn.ModuleList(Block(dim, heads, dropout, attention_dropout=attention_dropout) for _ in range(2))
        # A block normalises its own stream; the other stream, read as keys and values, needs its own norm.
        self.context_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.merge = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim))

    def forward(self, inputs):
        (a, mask_a), (b, mask_b) = self.tokens(inputs)
        a2 = self.cross[0](a, key_mask(mask_b), context=self.context_norm[0](b))
        b2 = self.cross[1](b, key_mask(mask_a), context=self.context_norm[1](a))
        return self.merge(torch.cat([masked_mean(a2, mask_a), masked_mean(b2, mask_b)], dim=-1))


# `params`: the knobs a fusion reads (model.fusion_layers -> layers, model.fusion_heads -> heads,
# model.fusion_attention_dropout -> attention_dropout), so
# that the config refuses a setting that would change nothing; `needs`: the modalities it cannot do without.
BOTH = ("text", "image")


def _register_with_dnn(name: str, build, params: tuple[str, ...], needs: tuple[str, ...], help: str,
                       dnn_note: str) -> None:
    """`name`, built by `build`, and `name+dnn`: the same fusion with the residual DNN on its output."""
    FUSIONS.register(name, params=params, needs=needs, help=help)(build)
    FUSIONS.register(f"{name}+dnn", params=params, needs=needs,
                     help=f"{name}, then the paper's three-layer residual DNN ({dnn_note})")(
        lambda input_dims, dim, dropout=0.1, **kwargs: WithDNN(build(input_dims, dim, dropout=dropout, **kwargs),
                                                               dim, dropout))


def _register_coarse(name: str, cls: type, needs: tuple[str, ...] = BOTH) -> None:
    _register_with_dnn(name, lambda input_dims, dim, dropout=0.1, standardize=False, pooling="mean", **_:
                       cls(input_dims, dim, standardize, pooling),
                       ("standardize", "pooling"), needs, first_line(cls.__doc__), "Coarse+, Table III")


for _name, _cls in (("sum", Sum), ("concat", Concat), ("gate", Gate), ("film", FiLM)):
    _register_coarse(_name, _cls)
_register_coarse("pool", Pool, needs=())  # any modalities: MMSR-T and MMSR-V's fusion
# Any modalities: with one, merge-attn is a trainable transformer over that encoder's frozen tokens. The
# DNN after a token fusion is not in the seed's Table III, whose DNN follows the coarse fusions only.
_register_with_dnn("merge-attn", MergeAttention, ("layers", "heads", "attention_dropout"), (),
                   first_line(MergeAttention.__doc__), "not in Table III")
_register_with_dnn("coattn", CoAttention, ("heads", "attention_dropout"), BOTH, first_line(CoAttention.__doc__),
                   "not in Table III")


@FUSIONS.register("flava", needs=BOTH, help="FLAVA's own multimodal encoder (paradigm (c)), pretrained, wholly trained")
def _flava(input_dims, dim, encoders=None, **_):
    from mmsr.models.flava_fusion import FlavaFusion  # deferred: loads a transformers checkpoint

    return FlavaFusion.from_encoders(encoders, dim)
