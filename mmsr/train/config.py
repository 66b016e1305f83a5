"""The training config: one file per run (TOML/YAML), `--set a.b=value` overrides.

Defaults are the paper's (seed §4.2, §8.2, Table XII); `configs/demo-cpu.toml` is a CPU
profile that finishes in minutes, `configs/paper-gpu.toml` the paper's settings.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Literal

from mmsr.config import build, seed_problem
from mmsr.data.split import SplitConfig
from mmsr.distributed import device_problem
from mmsr.encoders.config import SLOTS, EncoderConfig
from mmsr.models.fdsa import FEATURE_ATTENTIONS, LINEAR_INITS, SIDE_TOKENS, TOKEN_TABLES
from mmsr.models.fusion import FUSIONS, POOLINGS
from mmsr.models.scores import SCORES, LearnedCosine
from mmsr.models.sequence import SEQUENCE_MODELS
from mmsr.train.batches import OWN_ITEMS
from mmsr.train.kinds import MODEL_KINDS, TABLE_KINDS
from mmsr.train.losses import LOSSES

AUTO_FUSION = "auto"


@dataclass
class ModelConfig:
    # "mmsr": items are their content (MMSR; MMSR-T / MMSR-V by setting encoders.vision_model /
    # encoders.text_model to ""). "idsr": items are learned ID vectors (the paper's baselines).
    # Under "idsr" the encoders section and fusion* are a no-op, not an error: one profile file
    # drives an MMSR model, its IDSR baseline and `mmsr cache build`.
    # A setting the chosen fusion / sequence model does not read (e.g. fusion_heads for "gate",
    # sequence_heads for "gru4rec") is an error when it differs from its default.
    kind: str = "mmsr"  # a name in mmsr.train.kinds.MODEL_KINDS: mmsr, idsr, morec, fdsa, vqrec
    # "auto": merge-attn with two modalities, pool with one (resolved when the config is built, so
    # a saved config names the fusion trained). Named explicitly, merge-attn runs on one modality too.
    fusion: str = AUTO_FUSION
    fusion_layers: int = 1
    fusion_heads: int = 4
    # Coarse fusions and pool: standardise each modality's pooled state over the batch's items
    # before its LayerNorm (mmsr.models.fusion._Pooled); off by default, see its docstring.
    fusion_standardize: bool = False
    # Coarse fusions and pool: how each modality's tokens become one vector, "mean" (masked) or
    # "attention" (learned, starting as the mean; mmsr.models.fusion._Pooled). Mean by default:
    # attention lost on MovieLens-100K's text and won on the demo's pictures (docs/compare.md).
    fusion_pooling: str = "mean"
    # Token fusions (merge-attn, coattn): dropout on their attention probabilities; None follows
    # `dropout`, as BERT does. 0 cuts merge-attention's training step on a CPU to 0.61-0.69x
    # (README, "Attention dropout"); on the demo, one run, test HR@10 moved -2% at 0.
    fusion_attention_dropout: float | None = None
    sequence: str = "sasrec"
    sequence_layers: int | None = None  # None: SASRec 2, GRU4Rec 4, NextItNet 2
    sequence_heads: int = 2
    dim: int = 768
    dropout: float = 0.1
    # fdsa: the dataset's text fields used as bags of word tokens besides the encoders' outputs
    # ("category", "title"), each a feature of its own as RecBole's FDSA reads its token fields.
    side_features: list[str] = field(default_factory=lambda: ["category"])
    # fdsa: a side feature's word is kept only if at least this many items have it; rarer words
    # are dropped (an item left with none has a zero vector there). 1 keeps every word. A word
    # of one item alone is that item's own, like its ID: 2 keeps only the words items share.
    side_min_items: int = 1
    # fdsa: how a side feature's text becomes words (mmsr.models.fdsa.SIDE_TOKENS): "words" (lower-cased,
    # split on whitespace and | , ; >) or "recbole" (RecBole's split of a token_seq field: spaces alone,
    # case kept, so "Birdcage, The" gives "Birdcage,"). MovieLens-100K's titles: 2,495 words against 2,652;
    # with the genres and the title, "recbole" was lower on validation (two seeds; docs/compare.md).
    side_tokens: str = "words"
    # fdsa: one position table and one LayerNorm for both streams and the merged vector, as
    # RecBole's FDSA (mmsr.models.fdsa.FDSAUserTower); off: each stream its own.
    fdsa_shared: bool = False
    # fdsa: how an item's feature columns are weighed (mmsr.models.fdsa.FEATURE_ATTENTIONS):
    # "tanh-linear" (w . tanh(x) + b, mmsr's first) or "mlp" (RecBole's VanillaAttention). The
    # same with one column (the genres alone); they differ from two columns on. With the genres
    # and the title words on MovieLens-100K, mlp's validation NDCG@10 was 0.0685 against 0.0719
    # over two seeds (docs/compare.md, "The feature attention's scorer").
    fdsa_attention: str = "tanh-linear"
    # fdsa: how the side features' token tables are stored (mmsr.models.fdsa.TOKEN_TABLES): "rescaled"
    # (N(0, 0.02·√D), scaled down with the content columns: the words learn √D times slower than the ID
    # table under Adam) or "direct" (N(0, 0.02), RecBole's: at the ID table's pace). Same start. With the
    # genres and the title words on MovieLens-100K, direct's validation NDCG@10 was 0.0670 against 0.0719
    # over two seeds (docs/compare.md, "The token tables at the ID table's pace").
    fdsa_token_tables: str = "rescaled"
    # fdsa: how its own Linear layers start (mmsr.models.fdsa.LINEAR_INITS): "torch" (PyTorch's
    # defaults) or "recbole" (N(0, 0.02), zero bias, as RecBole's FDSA). On MovieLens-100K, validation
    # NDCG@10: with the genres alone 0.0695 against 0.0738 (two seeds); with the title words 0.0707
    # against 0.0692 (eight seeds, p 0.32 over the cases), so bench/movielens.py's title row takes it.
    fdsa_init: str = "torch"
    # vqrec: code indices per item (OPQ sub-vectors) and bits per code (2**bits embeddings each).
    vq_codes: int = 32
    vq_bits: int = 8
    # How a user vector scores an item vector (mmsr.models.scores): "dot" (the seed's),
    # "cosine" (both normalised, divided by `temperature`) or "cosine-learned" (the temperature
    # trained from `temperature` on). Evaluation ranks by the same rule.
    score: str = "dot"
    # cosine (cosine-learned: where it starts); 0.05 was better than 0.1 for IDSR on MovieLens-100K
    # (docs/compare.md, "A cosine score"), 0.2 for IDSR on the demo ("Lower and learned temperatures")
    temperature: float = 0.05


@dataclass
class OptimConfig:
    epochs: int = 150
    batch_size: int = 64  # global, over all processes
    lr: float = 1e-4  # fusion, sequence model, ID table
    weight_decay: float = 0.1
    encoder_lr: float = 5e-5  # trainable encoder tops
    encoder_weight_decay: float = 0.0
    decay_start_epoch: int = 120  # linear decay to final_lr_fraction from here to the end
    final_lr_fraction: float = 0.1
    # Linear warm-up of the learning rate over the first warmup_epochs (a fraction is fine),
    # from 1/warmup-steps of it to all of it. 0: none (the seed's setting).
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0  # 0 switches clipping off
    # Adam's second-moment decay: torch's and RecBole's 0.999 by default; SASRec's paper (Kang &
    # McAuley, ICDM 2018) trains with 0.98, which forgets a rare item's old gradients sooner.
    adam_beta2: float = 0.999
    # A name in mmsr.train.losses.LOSSES: bce (the seed's), bpr, inbatch, inbatch-logq, mixed,
    # softmax (ID models only).
    loss: str = "bce"
    # The per-position sampled negative of bce / bpr: "unseen" = uniform over items outside the
    # user's training history (the paper); "any" = uniform over all items but the target (RecBole).
    negatives: Literal["unseen", "any"] = "unseen"
    # mixed: items drawn uniformly from the catalogue per global batch, added to its candidates.
    mixed_negatives: int = 256
    # The softmax losses (inbatch*, mixed, softmax): what becomes of the user's own training items
    # among a position's candidates, a name of mmsr.train.batches.OWN_ITEMS: "negatives" (as every
    # paper's softmax), "later-masked" (the items the user trains on after the position are no
    # candidates) or "all-masked" (none of the user's training items is).
    own_items: str = "negatives"
    # The softmax losses: the share of each target's probability spread evenly over its candidates
    # (label smoothing; 0 = none, the papers' setting). 0.1 is the usual value elsewhere.
    label_smoothing: float = 0.0
    # A contrastive term on the user tower (mmsr.train.contrastive: each row's last state run
    # twice under dropout, NT-Xent against the batch's other views; DuoRec's unsupervised
    # augmentation): its weight against the loss (0 = none, the papers' setting; DuoRec's is 0.1)
    # and the temperature of its cosine (SimCSE's 0.05).
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.05
    # Training rows per user and epoch: "last" = the last max_seq_len + 1 items of the training
    # part (the reference code); "all" = the whole training part in windows of that length.
    windows: Literal["last", "all"] = "last"
    # With windows = "all": how far apart the windows' ends are (0 = split.max_seq_len: windows
    # that do not overlap). A smaller stride overlaps them, and a window keeps as targets only
    # its last `window_stride` items, so every item is still a target once per epoch, now with at
    # least max_seq_len - window_stride items of history (RecBole's prefixes are stride 1), at
    # max_seq_len / window_stride times the rows.
    window_stride: int = 0
    amp: bool = True  # bf16 autocast, on GPU only


# Settings and the least value that means something: {dotted key: (least, what it is)}.
_RANGES = {
    "optim.epochs": (1, "must be at least 1: a run trains at least one epoch"),
    "optim.batch_size": (1, "must be at least 1 (users per step)"),
    "optim.lr": (0.0, "must be at least 0 (a learning rate)"),
    "optim.encoder_lr": (0.0, "must be at least 0 (a learning rate)"),
    "optim.weight_decay": (0.0, "must be at least 0"),
    "optim.grad_clip": (0.0, "must be at least 0 (0 switches clipping off)"),
    "optim.contrastive_weight": (0.0, "must be at least 0 (0: no contrastive term)"),
    "model.dim": (1, "must be at least 1 (the width of item and user vectors)"),
    "model.sequence_heads": (1, "must be at least 1"),
    "model.sequence_layers": (1, "must be at least 1 (or left unset for the sequence model's own default)"),
    "model.fusion_layers": (1, "must be at least 1"),
    "model.fusion_heads": (1, "must be at least 1"),
    "eval_batch_size": (1, "must be at least 1 (items or users per batch)"),
    "eval_every": (1, "must be at least 1 (epochs between validations)"),
    "early_stop_patience": (0, "must be at least 0 (0: never stop early)"),
    "checkpoint_every_steps": (0, "must be at least 0 (0: at the end of each epoch only)"),
}


@dataclass
class TrainConfig:
    dataset: str = "demo"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Where --from-cache loads the states: auto = cuda on a GPU, else ram while they take at most
    # half the available memory, else mmap; ram is refused beyond 80% of it (docs/cache.md).
    cache_into: Literal["auto", "ram", "mmap", "cuda"] = "auto"
    eval_every: int = 1  # epochs between validations
    eval_batch_size: int = 256
    # Validation protocol for model selection: "paper" masks the history, "recbole" does not
    # (select with the protocol you will report).
    valid_protocol: Literal["paper", "recbole"] = "paper"
    # Under torchrun, validate as `mmsr eval --shard-items` does: each rank keeps only its slice of
    # the item vectors (for catalogues whose vectors do not fit in one rank); the same metrics.
    valid_shard_items: bool = False
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = never
    # An unreadable picture: error (stop, naming the item) | skip (the item has no picture) |
    # placeholder (a grey one). The same setting as `mmsr cache build`'s, and read by it from
    # this file, so the cached and the end-to-end paths see the same pixels; a cache built under
    # another policy is refused.
    on_bad_image: Literal["error", "skip", "placeholder"] = "error"
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every N steps; 0 = end of epoch only
    # Transfer (seed §7.2): a run (a name under $MMSR_HOME/runs, or a path) whose weights (best.pt,
    # else last.pt) start this one; every tensor whose name and shape match is copied (see
    # mmsr.train.run.init_from_source). Only on a fresh start: --resume continues from the run's
    # own checkpoint. "" = from scratch.
    init_from: str = ""
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        # Nothing to fuse with one modality. Resolving the default here (not in build_model) makes
        # the saved config say what was trained; a fusion named explicitly is left for check().
        if self.model.fusion == AUTO_FUSION:
            fusion = "pool" if len(self.encoders.modalities) == 1 else "merge-attn"
            self.model = replace(self.model, fusion=fusion)

    def check(self) -> list[str]:
        """Settings that the chosen components would ignore or cannot work with; mmsr.config.build
        reports them together with the other config errors, before anything runs."""
        problems = []
        if problem := device_problem(self.device):
            problems.append(f"device={self.device!r} {problem}")
        model, modalities = self.model, self.encoders.modalities
        if model.kind not in MODEL_KINDS:
            return problems + [f"model.kind={model.kind!r} is not a known model kind; choose one of "
                               + ", ".join(MODEL_KINDS.names())]
        parts = {"kind": MODEL_KINDS, "sequence": SEQUENCE_MODELS, "score": SCORES}
        # Kinds that do not read model.fusion* (idsr, the baselines) take them as a documented
        # no-op: one profile file drives an MMSR model and its baselines.
        if "fusion" in MODEL_KINDS.params(model.kind):
            parts["fusion"] = FUSIONS
        needs = MODEL_KINDS.needs(model.kind)
        if "content" in needs and not modalities:
            problems.append(f'model.kind={model.kind} needs a text or a vision model, but encoders.text_model and '
                            'encoders.vision_model are both ""; set one, or use --set model.kind=idsr')
        if "text" in needs and "text" not in modalities:
            problems.append(f'model.kind={model.kind} quantizes the items\' text, but encoders.text_model is ""; '
                            "set a text model (e.g. minilm)")
        for key in ("dropout", "fusion_attention_dropout"):
            value = getattr(model, key)
            if value is not None and not 0.0 <= value < 1.0:
                problems.append(f"model.{key}={value!r} is a probability of dropping a unit: it must be in [0, 1)")
        for key, (choices, what) in _NAMED_CHOICES.items():
            value = getattr(model, key)
            if value not in choices:
                problems.append(f"model.{key}={value!r} is not {what}; choose one of " + ", ".join(choices))
        if model.side_min_items < 1:
            problems.append(f"model.side_min_items={model.side_min_items!r} counts the items a word must appear in "
                            "to be kept: it must be 1 or more (1 keeps every word)")
        twice = sorted({f for f in model.side_features if model.side_features.count(f) > 1})
        if twice:
            problems.append(f"model.side_features names {', '.join(map(repr, twice))} more than once; name each "
                            "side feature once")
        unknown = sorted(set(model.side_features) - set(SIDE_FEATURES))
        if unknown:
            problems.append(f"model.side_features has {', '.join(map(repr, unknown))}; the known side features "
                            "are " + ", ".join(SIDE_FEATURES))
        for part, registry in parts.items():
            name = getattr(model, part)
            if name not in registry:
                problems.append(f"model.{part}={name!r} is not a known {registry.kind}; choose one of "
                                + ", ".join(registry.names()))
                continue
            for key, (owner, param) in _KNOBS.items():
                value = getattr(model, key)
                if owner == part and param not in registry.params(name) and value != _default(ModelConfig, key):
                    problems.append(f"model.{key}={value!r} is ignored by {registry.kind} {name!r}, which has no "
                                    f"{param} setting; remove it, or choose a {registry.kind} that reads it ("
                                    + ", ".join(registry.taking(param)) + ")")
        if "fusion" in parts and model.fusion in FUSIONS and modalities:
            missing = [m for m in FUSIONS.needs(model.fusion) if m not in modalities]
            if missing:
                off = " and ".join(f'{SLOTS[m]}=""' for m in missing)
                problems.append(f"model.fusion={model.fusion!r} needs " + " and ".join(FUSIONS.needs(model.fusion))
                                + f", but {off}; use --set model.fusion=pool for a single-modality model "
                                  "(or merge-attn, a token tower over its tokens)")
        if "pair_loss" in needs and self.optim.loss in LOSSES and "negative" not in LOSSES.needs(self.optim.loss):
            restore = _restoring(_ignored_loss_settings(self.optim, "bce"))  # a softmax setting a profile gave
            problems.append(f"model.kind={model.kind} scores each candidate through cross-attention, so "
                            f"optim.loss={self.optim.loss!r} (which scores every user against every candidate of "
                            "the batch) would cost users x candidates attentions per step; use --set "
                            "optim.loss=bce (the paper's) or bpr" + (f" with {restore}" if restore else ""))
        if model.score in SCORES and "temperature" in SCORES.params(model.score) and model.temperature <= 0:
            problems.append(f"model.temperature={model.temperature!r} divides the cosine: it must be above 0 "
                            "(0.05-0.2 are the usual values)")
        elif model.score == "cosine-learned" and model.temperature < LearnedCosine.MIN_TEMPERATURE:
            problems.append(f"model.temperature={model.temperature!r} starts cosine-learned below the "
                            f"{LearnedCosine.MIN_TEMPERATURE} it is kept above; start at or above it, or use "
                            "model.score=cosine for a fixed temperature")
        if "pair_loss" in needs and model.score != _default(ModelConfig, "score"):
            problems.append(f"model.score={model.score!r} rules an inner product, and model.kind={model.kind} scores "
                            "each candidate through cross-attention; remove model.score")
        if "pair_loss" in needs and self.valid_shard_items:
            problems.append(f"valid_shard_items ranks by inner products, and model.kind={model.kind} scores each "
                            "candidate through cross-attention; remove valid_shard_items (its validation scores "
                            "every item exactly, in blocks)")
        problems += self._check_loss()
        problems += self._check_windows()
        problems += self._check_ranges()
        problems += self._check_dataset()
        problems += self._check_contrastive()
        if not 0 < self.optim.adam_beta2 < 1:
            problems.append(f"optim.adam_beta2={self.optim.adam_beta2} must be above 0 and below 1 (Adam's "
                            "second-moment decay; 0.999 is torch's default, 0.98 SASRec's)")
        if not 0 <= self.optim.warmup_epochs < max(self.optim.epochs, 1):
            problems.append(f"optim.warmup_epochs={self.optim.warmup_epochs} must be at least 0 and below "
                            f"optim.epochs={self.optim.epochs}")
        return problems

    def _check_dataset(self) -> list[str]:
        """An empty name was found later, by the path lookup, which cannot say which key set it."""
        if self.dataset.strip():
            return []
        return [f"dataset={self.dataset!r} must name a dataset (a name under $MMSR_HOME/datasets, or a path)"]

    def _check_ranges(self) -> list[str]:
        """Numbers outside the range they mean anything in (a size of 0, a negative learning rate),
        refused here rather than found as a division by zero, or a run that trains nothing."""
        problems = []
        for key, (lowest, why) in _RANGES.items():
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if value is not None and value < lowest:
                problems.append(f"{key}={value!r} {why}")
        for key, value in (("seed", self.seed), ("split.seed", self.split.seed)):
            if problem := seed_problem(value):
                problems.append(f"{key}={value!r} {problem}")
        model = self.model
        # Each attention head takes an equal slice of the width, where the chosen part has heads.
        parts = [("sequence_heads", SEQUENCE_MODELS, model.sequence)]
        if model.kind in MODEL_KINDS and "fusion" in MODEL_KINDS.params(model.kind):  # others ignore model.fusion*
            parts.append(("fusion_heads", FUSIONS, model.fusion))
        for key, registry, name in parts:
            heads = getattr(model, key)
            reads_heads = name in registry and "heads" in registry.params(name)
            if reads_heads and heads >= 1 and model.dim >= 1 and model.dim % heads:
                problems.append(f"model.dim={model.dim} must be a multiple of model.{key}={heads} "
                                "(each head takes an equal slice)")
        return problems

    def _check_contrastive(self) -> list[str]:
        optim = self.optim
        if optim.contrastive_temperature <= 0:
            return [f"optim.contrastive_temperature={optim.contrastive_temperature!r} divides the views' cosine: it "
                    "must be above 0 (0.05-0.2 are the usual values)"]
        if not optim.contrastive_weight and optim.contrastive_temperature != _default(OptimConfig,
                                                                                     "contrastive_temperature"):
            return [f"optim.contrastive_temperature={optim.contrastive_temperature!r} is ignored without a "
                    "contrastive term (optim.contrastive_weight=0); set --set optim.contrastive_weight=0.1 "
                    f"(DuoRec's), or use {_restoring(['contrastive_temperature'])}"]
        return []

    def _check_windows(self) -> list[str]:
        stride, length = self.optim.window_stride, self.split.max_seq_len
        if stride and self.optim.windows != "all":
            return [f"optim.window_stride={stride} is ignored with optim.windows={self.optim.windows!r} (one "
                    "window per user); use --set optim.windows=all, or remove it"]
        if not 0 <= stride <= length:
            return [f"optim.window_stride={stride} must be between 1 and split.max_seq_len={length} (or 0 for "
                    "windows that do not overlap): a larger stride would skip items"]
        return []

    def _check_loss(self) -> list[str]:
        optim, problems = self.optim, []
        if optim.loss not in LOSSES:
            return [f"optim.loss={optim.loss!r} is not a known loss; choose one of " + ", ".join(LOSSES.names())]
        for key in _ignored_loss_settings(optim, optim.loss):
            # A profile may set it for its own loss (demo-cpu's own_items), so say how to undo it
            # from the command line, not only by editing the file.
            problems.append(f"optim.{key}={getattr(optim, key)!r} is ignored by optim.loss={optim.loss!r} "
                            f"({LOSS_SETTINGS[key]}); use {_restoring([key])} (its default), or --set optim.loss="
                            + " or ".join(LOSSES.taking(key)))
        if optim.own_items not in OWN_ITEMS:
            problems.append(f"optim.own_items={optim.own_items!r} is not known; choose one of " + ", ".join(OWN_ITEMS))
        if not 0 <= optim.label_smoothing < 1:
            problems.append(f"optim.label_smoothing={optim.label_smoothing} must be at least 0 and below 1 (the "
                            "share of the target's probability spread evenly over its candidates)")
        if "mixed_negatives" in LOSSES.params(optim.loss) and optim.mixed_negatives < 1:
            problems.append(f"optim.mixed_negatives={optim.mixed_negatives} must be at least 1 for "
                            f"optim.loss={optim.loss!r}; or use --set optim.loss=inbatch")
        needs = LOSSES.needs(optim.loss)
        if "batch" in needs and optim.batch_size < 2:
            problems.append(f"optim.loss={optim.loss!r} takes its negatives from the other users of the batch, "
                            f"but optim.batch_size={optim.batch_size}; use a larger batch, or --set optim.loss=bce")
        if "item_table" in needs and self.model.kind not in TABLE_KINDS:
            problems.append(f"optim.loss={optim.loss!r} scores every item at every step, which for "
                            f"model.kind={self.model.kind} means running the whole catalogue through the item tower "
                            "at every step; use --set optim.loss=inbatch (or model.kind " + " or ".join(TABLE_KINDS)
                            + ")")
        return problems


# model.KEY -> (the names it may take, what such a name is): settings that pick from a table of their
# module rather than from a registry.
_NAMED_CHOICES = {"fusion_pooling": (POOLINGS, "a pooling"),
                  "fdsa_attention": (FEATURE_ATTENTIONS, "a feature attention"),
                  "fdsa_token_tables": (TOKEN_TABLES, "a way to store the token tables"),
                  "fdsa_init": (LINEAR_INITS, "a way to start the Linear layers"),
                  "side_tokens": (SIDE_TOKENS, "a way to split a side feature into words")}

# model.KEY -> (the component that reads it, the registry param it feeds)
_KNOBS = {"fusion_layers": ("fusion", "layers"), "fusion_heads": ("fusion", "heads"),
          "fusion_standardize": ("fusion", "standardize"), "fusion_pooling": ("fusion", "pooling"),
          "fusion_attention_dropout": ("fusion", "attention_dropout"),
          "sequence_layers": ("sequence", "layers"), "sequence_heads": ("sequence", "heads"),
          "side_features": ("kind", "side_features"), "fdsa_shared": ("kind", "fdsa_shared"),
          "side_min_items": ("kind", "side_min_items"), "side_tokens": ("kind", "side_tokens"),
          "fdsa_attention": ("kind", "fdsa_attention"),
          "fdsa_token_tables": ("kind", "fdsa_token_tables"), "fdsa_init": ("kind", "fdsa_init"),
          "vq_codes": ("kind", "vq_codes"), "vq_bits": ("kind", "vq_bits"),
          "temperature": ("score", "temperature")}


def describe_parts() -> dict[str, dict[str, str]]:
    """Every name a config can give each registered part, with its one line (`mmsr models list`)."""
    return {"model.kind": MODEL_KINDS.describe(), "model.sequence": SEQUENCE_MODELS.describe(),
            "model.fusion": FUSIONS.describe(), "optim.loss": LOSSES.describe(), "model.score": SCORES.describe()}


# Dataset fields FDSA can take as features (model.side_features).
SIDE_FEATURES = ("category", "title")


def _default(cls: type, name: str):
    found = next(f for f in fields(cls) if f.name == name)
    return found.default_factory() if found.default is MISSING else found.default


# The loss settings only some losses read, and why a loss that does not read one ignores it.
LOSS_SETTINGS = {"negatives": "it does not pair each position with a sampled negative",
                 "mixed_negatives": "it adds no uniformly drawn items to the batch",
                 "own_items": "its one sampled negative is kept out of the user's history by optim.negatives",
                 "label_smoothing": "it has no softmax over candidates to smooth"}


def _ignored_loss_settings(optim: OptimConfig, loss: str) -> list[str]:
    """The loss settings `optim` moves off their defaults that `loss` does not read."""
    return [key for key in LOSS_SETTINGS
            if key not in LOSSES.params(loss) and getattr(optim, key) != _default(OptimConfig, key)]


def _restoring(keys: list[str]) -> str:
    """The --set's that put `keys` back to their defaults: "--set optim.K=V and --set ..."."""
    return " and ".join(f"--set optim.{key}={_default(OptimConfig, key)}" for key in keys)


TRAIN_ONLY_KEYS = ("model", "optim", "split", "eval_every", "eval_batch_size", "valid_protocol", "valid_shard_items",
                   "early_stop_patience",
                   "checkpoint_every_steps", "cache_into", "init_from")


def cache_section(data: dict, source: str = "config") -> dict:
    """A training config file, reduced to what `mmsr cache build` needs (dataset, seed, encoders,
    on_bad_image), so that one file drives both commands. The whole file is validated as a
    TrainConfig first."""
    if not any(key in data for key in TRAIN_ONLY_KEYS):
        return data
    build(TrainConfig, data, source=source)
    return {key: data[key] for key in ("dataset", "seed", "encoders", "on_bad_image") if key in data}
