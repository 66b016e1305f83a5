"""FDSA: Feature-level Deeper Self-Attention (Zhang et al., "Feature-level Deeper Self-Attention
Network for Sequential Recommendation", IJCAI 2019), the seed's "ID + side features" baseline.

    item i  -> [ ID embedding e_i | feature vector f_i ]            (FDSAItemTower)
    f_i     =  vanilla attention over the item's features, each projected to D
    users   =  LN(W [ SASRec(e_1..e_t) | SASRec(f_1..f_t) ])        (FDSAUserTower)
    score   =  user · e_i                                           (the ID half only)

The features are the item's content, the same MMSR sees: each encoder's output (its frozen
lower layers from the cache, then its top blocks, *frozen* here: FDSA takes features as given),
masked-mean pooled; and, as RecBole's FDSA does with its token fields, the dataset's text fields
named in `model.side_features` (`category`, `title`), each a bag of word tokens with its own table.

The features' vanilla attention scores each column with `model.fdsa_attention`: w . tanh(x) + b
by default, or RecBole's Linear-ReLU-Linear ("mlp").

Departures from the paper: the features are dense pretrained vectors rather than categorical
attributes only (the seed's multi-modal setting, §4.3); the two streams share the sequence
model family (SASRec blocks, learned positions) and the config's layers and heads; the merged
user vector is layer-normalised and dropped out, as RecBole's FDSA does.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from mmsr.errors import MMSRError
from mmsr.models.layers import pooled_upper
from mmsr.models.sequence import SASRec

States = dict[str, tuple[torch.Tensor, torch.Tensor]]
_TOKEN_SPLIT = re.compile(r"[|,;>]+|\s+")
_LIST_SPLIT = re.compile(r",?\s+")
_SPACES = re.compile(r"\s+")


class TanhLinear(nn.Linear):
    """A feature's attention score as w . tanh(x) + b: mmsr's first scorer, kept as the default so that
    runs before `model.fdsa_attention` existed are what they were (one Linear: its checkpoint key
    `attention.weight` and its initial draw are unchanged)."""

    def __init__(self, dim: int):
        super().__init__(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.tanh(x))


class ReLUMLP(nn.Sequential):
    """A feature's attention score as RecBole 1.2.1's VanillaAttention computes it: Linear(D, D),
    ReLU, Linear(D, 1). (PyTorch's initialisation, not RecBole's N(0, 0.02): docs/compare.md,
    "RecBole's initialisation of every Linear".)"""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))


# How the feature columns of an item are weighed before they are summed (model.fdsa_attention).
# With one column (the genres alone) every scorer gives it weight 1: they differ from two columns on.
FEATURE_ATTENTIONS = {"tanh-linear": TanhLinear, "mlp": ReLUMLP}

# How a side feature's token table is stored (model.fdsa_token_tables): the gain its pooled column is
# multiplied by before the columns are stacked. Every choice starts the features at the ID table's scale;
# they differ in pace. Adam steps each stored weight by about the learning rate whatever its gradient's
# size, so a table stored g times wider and multiplied back by 1/g moves g times slower in use.
#   "rescaled": stored at N(0, 0.02·√D) and brought to scale by the features' D^-0.5, as the content
#               columns are: its words move √D times slower than the ID table (mmsr's first; the default).
#   "direct":   stored at N(0, 0.02), as RecBole's FDSA starts its tables, and used at that scale: its words
#               learn at the ID table's pace.
# With the genres and the title words on MovieLens-100K, "direct" was lower on validation (two seeds;
# docs/compare.md, "The token tables at the ID table's pace").
TOKEN_TABLES = {"rescaled": lambda dim: 1.0, "direct": lambda dim: dim ** 0.5}


def _normal_linears(modules: list[nn.Module]) -> None:
    for module in modules:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# How FDSA's own Linear layers start (model.fdsa_init), given the towers' modules in order (the
# encoders' pretrained tops left out). Embeddings and LayerNorms start alike under both.
#   "torch":   each layer's PyTorch default (Kaiming-uniform, fan-in scaled); mmsr's first, the default.
#   "recbole": every weight N(0, 0.02) and every bias 0, as RecBole's `_init_weights` starts its FDSA.
# On MovieLens-100K "recbole" was lower on validation with the genres alone (two seeds) and higher with
# the genres and the title words (eight seeds, not resolved over the cases; docs/compare.md, "RecBole's
# initialisation of every Linear").
LINEAR_INITS = {"torch": lambda modules: None, "recbole": _normal_linears}


def initialise_linears(name: str, towers: list[nn.Module], keep: nn.Module) -> None:
    """Start the Linear layers of `towers` by LINEAR_INITS[name], but those of `keep` (the item
    tower's pretrained encoders, which FDSA takes as given)."""
    if name not in LINEAR_INITS:
        raise MMSRError(f"unknown initialisation {name!r}", where="model.fdsa_init",
                        hint="one of " + ", ".join(LINEAR_INITS))
    kept = {id(m) for m in keep.modules()}
    LINEAR_INITS[name]([m for tower in towers for m in tower.modules() if id(m) not in kept])


def _words(field: str, text: str) -> list[str]:
    return _TOKEN_SPLIT.split(text.lower())


def _recbole(field: str, text: str) -> list[str]:
    # The importers join a list field's values with ", " (docs/importers.md), where RecBole's
    # atomic file had spaces: undo that for the category. A title's own commas stay in its words.
    return (_LIST_SPLIT if field == "category" else _SPACES).split(text.strip())


# How a side feature's text becomes word tokens (model.side_tokens): (field name, text) -> tokens.
#   "words":   lower-cased, split on whitespace and | , ; > (mmsr's first; the default). On MovieLens-100K
#              the titles give 2,495 words.
#   "recbole": as RecBole 1.2.1 splits a token_seq field: on spaces alone, case kept, so "Birdcage, The"
#              is "Birdcage," and "The", and "Birdcage," is not "Birdcage". The titles give 2,652 words,
#              RecBole's own count; 385 of them carry a comma. The category's words are the
#              same either way on MovieLens-100K but for their case.
# With the genres and the title on MovieLens-100K, "recbole" was lower on validation (0.0688 against
# 0.0719, two seeds; docs/compare.md, "The title split as RecBole splits it").
SIDE_TOKENS: dict[str, Callable[[str, str], list[str]]] = {"words": _words, "recbole": _recbole}


def field_tokens(texts: list[str], min_items: int = 1, split: str = "words",
                 field: str = "") -> tuple[torch.Tensor, list[str]]:
    """Per item, the ids of the tokens of one text field ([items, T] padded with 0) and the
    vocabulary (index 0 is padding), in order of first appearance. `split` names how a text
    becomes tokens (SIDE_TOKENS), told which `field` it reads. A token found in fewer than
    `min_items` items is dropped."""
    tokenize = SIDE_TOKENS[split]
    split_texts = [[t for t in tokenize(field, str(text or "")) if t] for text in texts]
    items_with = Counter(t for tokens in split_texts for t in set(tokens))
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(t, len(vocab) + 1) for t in tokens if items_with[t] >= min_items]
            for tokens in split_texts]
    width = max([1] + [len(r) for r in rows])
    table = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return table, ["<pad>", *vocab]


def given_features(encoders: nn.ModuleDict, project: nn.ModuleDict, states: States) -> list[torch.Tensor]:
    """Per modality, [N, D]: the encoder's output run frozen on its cached lower-layer states,
    masked-mean pooled, then projected. The baselines that take content as given attributes
    (FDSA, CARCA++) read it this way."""
    columns = []
    for modality, encoder in encoders.items():
        with torch.no_grad():  # the feed may have pooled it once already (`fixed_features`)
            pooled = pooled_upper(encoder, states[modality])
        columns.append(project[modality](pooled))
    return columns


def fixed_features(encoders: nn.ModuleDict) -> list[str]:
    """The modalities whose given features are the same at every step, which a feed may pool once
    (`ContentItemTower.pooled_once` says why): the encoders are frozen here, and with no top
    block nothing in `upper` drops units in training mode."""
    return [modality for modality, encoder in encoders.items() if encoder.top_blocks == 0]


class FDSAItemTower(nn.Module):
    """Item ids and content states -> [ID embedding | attention-pooled feature vector], 2D wide.

    `encoders`: the split encoders whose outputs are features (frozen here); `tokens`: per side
    feature (`category`, `title`), its (token table of `field_tokens`, vocabulary size), each a
    feature column of its own, as RecBole's FDSA embeds each token field on its own; `attention`:
    the columns' scorer, a name of FEATURE_ATTENTIONS; `token_tables`: how the token tables are stored,
    a name of TOKEN_TABLES. Needs the ids and the states: its feed is `inputs = "ids+states"`."""

    inputs = "ids+states"

    def __init__(self, num_items: int, dim: int, encoders: dict, tokens: dict[str, tuple[torch.Tensor, int]],
                 attention: str = "tanh-linear", token_tables: str = "rescaled"):
        super().__init__()
        if attention not in FEATURE_ATTENTIONS:
            raise MMSRError(f"unknown feature attention {attention!r}", where="model.fdsa_attention",
                            hint="one of " + ", ".join(FEATURE_ATTENTIONS))
        if token_tables not in TOKEN_TABLES:
            raise MMSRError(f"unknown token-table storage {token_tables!r}", where="model.fdsa_token_tables",
                            hint="one of " + ", ".join(TOKEN_TABLES))
        self.dim = dim
        self.embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.encoders = nn.ModuleDict(encoders)
        for parameter in self.encoders.parameters():  # FDSA's features are given, not learned
            parameter.requires_grad_(False)
        self.project = nn.ModuleDict({m: nn.Linear(e.output_size, dim) for m, e in encoders.items()})
        self.side_features = list(tokens)
        self.token_gain = TOKEN_TABLES[token_tables](dim)
        for name, (table, vocabulary_size) in tokens.items():
            # The token tables are the dataset's: rebuilt from it, so not saved with the weights.
            # Attribute names `<field>_tokens` / `<field>_embedding` keep the category table's
            # checkpoint key (`category_embedding.weight`) as it was before titles came in.
            self.register_buffer(f"{name}_tokens", table, persistent=False)
            embedding = nn.EmbeddingBag(vocabulary_size, dim, mode="mean", padding_idx=0)
            # At the ID table's scale once `self.scale` below is applied (N(0, 0.02), as RecBole starts
            # its tables); nn.EmbeddingBag's own N(0, 1) put the genres 6x above it. On MovieLens-100K
            # it left validation level and raised test 8% (docs/compare.md, "The category table").
            nn.init.normal_(embedding.weight, std=0.02 * dim ** 0.5 / self.token_gain)
            with torch.no_grad():
                embedding.weight[0].zero_()  # the padding row stays zero
            setattr(self, f"{name}_embedding", embedding)
        self.attention = FEATURE_ATTENTIONS[attention](dim)  # vanilla attention over the features
        self.scale = dim ** -0.5  # feature vectors at the scale of the ID table (see ContentItemTower)

    def tokens(self, name: str) -> torch.Tensor:
        """The [items, T] token table of side feature `name`."""
        return getattr(self, f"{name}_tokens")

    @property
    def columns(self) -> list[str]:
        """The feature columns' names, in the order `features` stacks them."""
        return [*self.encoders, *self.side_features]

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def pooled_once(self) -> list[str]:
        return fixed_features(self.encoders)

    def features(self, ids: torch.Tensor, states: States) -> torch.Tensor:
        columns = given_features(self.encoders, self.project, states)
        for name in self.side_features:
            column = getattr(self, f"{name}_embedding")(self.tokens(name)[ids])
            columns.append(column * self.token_gain)  # exact for "rescaled": x * 1.0 is x
        stacked = torch.stack(columns, dim=1)  # [N, F, D]
        weights = torch.softmax(self.attention(stacked), dim=1)
        return (weights * stacked).sum(1) * self.scale

    def forward(self, inputs: dict) -> torch.Tensor:
        ids = inputs["ids"]
        return torch.cat([self.embedding(ids), self.features(ids, inputs["states"])], dim=-1)

    def score_part(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors[..., : self.dim]

    def score_table(self) -> torch.Tensor:
        """Every item's scored vector at once: the ID table (the full softmax, RecBole's FDSA loss)."""
        return self.embedding.weight


class FDSAUserTower(nn.Module):
    """Two sequence models, one over the ID half and one over the feature half, concatenated,
    projected back to D, then layer-normalised and dropped out.

    The norm and dropout after the projection are RecBole 1.2.1's (the paper's FDSA scores the
    projection itself). On MovieLens-100K with the genres they raised validation NDCG@10 on
    every seed tried (docs/compare.md, "FDSA against RecBole's FDSA").

    `shared` (model.fdsa_shared): as in RecBole's FDSA, the two self-attention streams (SASRec's
    layouts) share one position table, and one LayerNorm serves both streams and the merged
    vector: the streams' output norm (pre-norm) or input norm (post-norm, RecBole's layout).
    `position` and `norm` are then owned here and lent to the streams. Off by default: on
    MovieLens-100K its validation NDCG@10 over four seeds was 0.0741 against 0.0752, so validation
    did not choose it, nor with the title words (0.0696 against 0.0719, two seeds; docs/compare.md,
    "One position table and one LayerNorm", with and without the title)."""

    def __init__(self, id_stream: nn.Module, feature_stream: nn.Module, dim: int, dropout: float = 0.0,
                 shared: bool = False):
        super().__init__()
        self.id_stream = id_stream
        self.feature_stream = feature_stream
        self.merge = nn.Linear(2 * dim, dim)
        if shared and not (isinstance(id_stream, SASRec) and isinstance(feature_stream, SASRec)):
            raise MMSRError("model.fdsa_shared shares the streams' position table, which only self-attention "
                            "streams have", where="model.sequence",
                            hint="use model.sequence=sasrec or sasrec-postnorm, or model.fdsa_shared=false")
        if shared:
            self.position = feature_stream.position = id_stream.position
            place = "input_norm" if id_stream.post_norm else "norm"
            norm = self.norm = getattr(id_stream, place)
            setattr(feature_stream, place, norm)
        else:
            norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(norm, nn.Dropout(dropout))
        self.dim = dim

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, features = item_vectors[..., : self.dim], item_vectors[..., self.dim:]
        merged = self.merge(torch.cat([self.id_stream(ids, mask), self.feature_stream(features, mask)], dim=-1))
        return self.out(merged)
