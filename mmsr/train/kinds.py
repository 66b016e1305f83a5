"""Model kinds, chosen by `model.kind`: what an item is, and how the user tower reads it.

| kind    | item                                                   | user tower               | score |
| ------- | ------------------------------------------------------ | ------------------------ | ----- |
| `mmsr`  | its content: encoder tops, then `model.fusion`         | `model.sequence`         | u · v |
| `idsr`  | a learned ID vector (the paper's pure ID baselines)     | `model.sequence`         | u · v |
| `morec` | MoRec++: each encoder's pooled output projected, summed | `model.sequence`         | u · v |
| `fdsa`  | [ID vector, attention-pooled content and category]     | two sequence models      | u · ID |
| `vqrec` | the sum of its frozen text's OPQ code embeddings       | `model.sequence`         | u · v |
| `carca` | ID vector + projected content (CARCA++)                | `model.sequence`         | cross-attention |

Every kind trains with the same data, losses, optimizer groups, checkpoints and evaluation,
so that a difference between two rows of a table comes from the model alone. A builder
returns (item tower, user tower); an item tower says what its feed must give it in
`inputs`: "ids", "states" (the encoders' lower-layer states, cached or computed) or
"ids+states". A builder may return a third part, a candidate-dependent scorer (CARCA++): the
losses then score each position's own candidates through it (pair losses only), and the
evaluation ranks by exact batched scoring instead of FAISS.

`morec` is a preset, not a model of its own: MMSR with the `sum` fusion (one linear
projection per modality of its masked-mean pooled output, summed; `pool` with one modality),
which is MoRec's item tower made multi-modal as seed §4.3 describes. It differs from MoRec in
pooling by masked mean where MoRec takes [CLS]; the top blocks are fine-tuned as in MMSR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmsr.encoders import create_encoders
from mmsr.encoders.config import SLOTS
from mmsr.errors import MMSRError
from mmsr.models.carca import CARCAItemTower, CrossAttentionScorer
from mmsr.models.fdsa import FDSAItemTower, FDSAUserTower, field_tokens, initialise_linears
from mmsr.models.fusion import create_fusion
from mmsr.models.sequence import create_sequence_model
from mmsr.models.towers import ContentItemTower, IDItemTower, UserTower
from mmsr.models.vqrec import VQRecItemTower
from mmsr.registry import Registry

if TYPE_CHECKING:
    from mmsr.train.config import TrainConfig

# params: the model.* knobs a kind reads beyond the sequence model's (the config refuses the
# others when set); needs: "content" (at least one encoder), "text", "pair_loss" (a loss
# that scores one candidate per position: bce, bpr), or "item_ids" (weights indexed by the
# catalogue's item ids, which mean nothing in another catalogue: `init_from` refuses them).
MODEL_KINDS: Registry = Registry("model kind")
# Kinds whose scored item vectors are a table lookup (their towers' `score_table`), so the full
# softmax (`optim.loss = "softmax"`) can score every item at every step.
TABLE_KINDS = ("idsr", "fdsa", "vqrec")
# Kinds that never read the encoders' states: no cache to build for them.
ID_ONLY_KINDS = ("idsr",)


def ties_to_item_ids(kind: str | None) -> bool:
    """Whether a kind's weights are indexed by the catalogue's item ids (needs "item_ids"): they
    mean nothing in another catalogue, so `init_from` refuses it, as a source and as a target."""
    return kind in MODEL_KINDS and "item_ids" in MODEL_KINDS.needs(kind)


@dataclass
class KindInputs:
    """What a builder may read besides the config."""

    num_items: int
    # Given built (tests), or None: created from config.encoders on first use, then kept here, so
    # that build_model's sizing pass and the build after it share one load.
    encoders: dict | None = None
    # A text field of every item by name (`Dataset.item_field`): fdsa's side features read it.
    item_field: Callable[[str], list[str]] | None = None
    # fdsa's token tables by (field, min_items, split): a pass over the catalogue each, made once.
    tokens: dict = field(default_factory=dict)

    def encoders_for(self, config: "TrainConfig") -> dict:
        if self.encoders is None:
            # Loaded for real even inside the sizing pass on the meta device (drawing on the RNG
            # where they always did: before any tower).
            with torch.device("cpu"):
                self.encoders = create_encoders(config.encoders)
        return self.encoders

    def field_tokens(self, name: str, min_items: int, split: str):
        key = (name, min_items, split)
        if key not in self.tokens:
            with torch.device("cpu"):  # a real table, even when first made inside the sizing pass
                self.tokens[key] = field_tokens(self.item_field(name), min_items=min_items, split=split, field=name)
        return self.tokens[key]


def _sequence(config: "TrainConfig") -> nn.Module:
    m = config.model
    return create_sequence_model(m.sequence, dim=m.dim, max_len=config.split.max_seq_len, layers=m.sequence_layers,
                                 heads=m.sequence_heads, dropout=m.dropout)


def _content_tower(config: "TrainConfig", encoders: dict, fusion: str) -> ContentItemTower:
    m = config.model
    if not encoders:
        raise MMSRError(f"model.kind={m.kind} needs at least one of " + " / ".join(SLOTS.values()),
                        hint="or use model.kind=idsr")
    # The model.fusion* settings belong to a kind that takes model.fusion (mmsr); for the others
    # (MoRec++: MoRec's mean-pooled sum) they are the config's documented no-op, so their fusion
    # is built with its defaults.
    knobs = m if "fusion" in MODEL_KINDS.params(m.kind) else type(m)()
    module = create_fusion(fusion, input_dims={k: e.output_size for k, e in encoders.items()}, dim=m.dim,
                           layers=knobs.fusion_layers, heads=knobs.fusion_heads, dropout=m.dropout,
                           encoders=encoders, standardize=knobs.fusion_standardize,
                           attention_dropout=knobs.fusion_attention_dropout, pooling=knobs.fusion_pooling)
    return ContentItemTower(encoders, module, m.dim)


@MODEL_KINDS.register("mmsr", params=("fusion",), needs=("content",),
                      help="MMSR: items are their text and picture (encoder tops + fusion)")
def _mmsr(config: "TrainConfig", inputs: KindInputs):
    # model.fusion is already "pool" for one modality: TrainConfig resolves the default.
    return _content_tower(config, inputs.encoders_for(config), config.model.fusion), UserTower(_sequence(config))


@MODEL_KINDS.register("idsr", needs=("item_ids",), help="ID-based sequential recommender: a learned vector per item")
def _idsr(config: "TrainConfig", inputs: KindInputs):
    return IDItemTower(inputs.num_items, config.model.dim), UserTower(_sequence(config))


@MODEL_KINDS.register("morec", needs=("content",),
                      help="MoRec++ (Yuan et al. 2023): pooled encoder outputs projected and summed (mmsr + sum)")
def _morec(config: "TrainConfig", inputs: KindInputs):
    encoders = inputs.encoders_for(config)
    return _content_tower(config, encoders, "sum" if len(encoders) > 1 else "pool"), UserTower(_sequence(config))


@MODEL_KINDS.register("fdsa", params=("side_features", "side_min_items", "side_tokens", "fdsa_shared",
                                      "fdsa_attention", "fdsa_token_tables", "fdsa_init"),
                      needs=("item_ids",),
                      help="FDSA (Zhang et al. 2019): an ID stream and a feature stream of self-attention")
def _fdsa(config: "TrainConfig", inputs: KindInputs):
    m = config.model
    if m.side_features and inputs.item_field is None:
        raise MMSRError(f"fdsa's side features ({', '.join(m.side_features)}) need the dataset's items",
                        hint="build the model with build_model(..., item_field=dataset.item_field)")
    tokens = {}
    for name in m.side_features:
        table, vocabulary = inputs.field_tokens(name, m.side_min_items, m.side_tokens)
        if len(vocabulary) == 1:
            rest = ", ".join(f"'{f}'" for f in m.side_features if f != name)
            found = "no item of this dataset has one" if m.side_min_items == 1 else \
                f"no word of it is found in {m.side_min_items} items or more (model.side_min_items)"
            raise MMSRError(f"model.side_features asks for {name!r}, but {found}",
                            hint=f"remove it: --set \"model.side_features=[{rest}]\"")
        tokens[name] = (table, len(vocabulary))
    encoders = inputs.encoders_for(config)
    if not encoders and not tokens:
        raise MMSRError("fdsa has no feature: no encoder and no side feature",
                        hint="set encoders.text_model / encoders.vision_model, or model.side_features=['category']")
    items = FDSAItemTower(inputs.num_items, m.dim, encoders, tokens, attention=m.fdsa_attention,
                          token_tables=m.fdsa_token_tables)
    user = FDSAUserTower(_sequence(config), _sequence(config), m.dim, m.dropout, shared=m.fdsa_shared)
    initialise_linears(m.fdsa_init, [items, user], keep=items.encoders)
    return items, user


@MODEL_KINDS.register("vqrec", params=("vq_codes", "vq_bits"), needs=("text", "item_ids"),
                      help="VQRec (Hou et al. 2023): items as OPQ codes of their frozen text")
def _vqrec(config: "TrainConfig", inputs: KindInputs):
    m = config.model
    return VQRecItemTower(inputs.num_items, m.dim, m.vq_codes, m.vq_bits), UserTower(_sequence(config))


@MODEL_KINDS.register("carca", needs=("pair_loss", "item_ids"),
                      help="CARCA++ (Rashed et al. 2022): candidates cross-attend to the sequence (not an inner product)")
def _carca(config: "TrainConfig", inputs: KindInputs):
    m = config.model
    items = CARCAItemTower(inputs.num_items, m.dim, inputs.encoders_for(config))
    return items, UserTower(_sequence(config)), CrossAttentionScorer(m.dim, m.dropout)


def build_towers(config: "TrainConfig", inputs: KindInputs) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(item tower, user tower, candidate-dependent scorer or None for the inner product)."""
    items, user, *scorer = MODEL_KINDS.create(config.model.kind, config=config, inputs=inputs)
    return items, user, (scorer[0] if scorer else None)


def kind_names() -> list[str]:
    return MODEL_KINDS.names()
