"""The training config: one file per run (TOML/YAML), `--set a.b=value` overrides.

Defaults are the paper's (seed §4.2, §8.2, Table XII); `configs/demo-cpu.toml` is a CPU
profile that finishes in minutes, `configs/paper-gpu.toml` the paper's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmsr.data.split import SplitConfig
from mmsr.encoders.config import EncoderConfig


@dataclass
class ModelConfig:
    # "mmsr": items are their content (MMSR; MMSR-T / MMSR-V by setting encoders.vision_model /
    # encoders.text_model to ""). "idsr": items are learned ID vectors (the paper's baselines).
    kind: Literal["mmsr", "idsr"] = "mmsr"
    fusion: str = "merge-attn"
    fusion_layers: int = 1
    fusion_heads: int = 4
    sequence: str = "sasrec"
    sequence_layers: int | None = None  # None: SASRec 2, GRU4Rec 4, NextItNet 2
    sequence_heads: int = 2
    dim: int = 768
    dropout: float = 0.1


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
    grad_clip: float = 1.0  # 0 switches clipping off
    loss: Literal["bce", "inbatch"] = "bce"
    # BCE negatives: "unseen" = uniform over items outside the user's training history (the
    # paper); "any" = uniform over all items but the target (RecBole).
    negatives: Literal["unseen", "any"] = "unseen"
    # Training rows per user and epoch: "last" = the last max_seq_len + 1 items of the training
    # part (the reference code); "all" = the whole training part in windows of that length.
    windows: Literal["last", "all"] = "last"
    amp: bool = True  # bf16 autocast, on GPU only


@dataclass
class TrainConfig:
    dataset: str = "demo"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cache_into: Literal["auto", "ram", "mmap", "cuda"] = "auto"
    eval_every: int = 1  # epochs between validations
    eval_batch_size: int = 256
    # Validation protocol for model selection: "paper" masks the history, "recbole" does not
    # (select with the protocol you will report).
    valid_protocol: Literal["paper", "recbole"] = "paper"
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = never
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every N steps; 0 = end of epoch only
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


TRAIN_ONLY_KEYS = ("model", "optim", "split", "eval_every", "eval_batch_size", "valid_protocol", "early_stop_patience",
                   "checkpoint_every_steps", "cache_into")


def cache_section(data: dict, source: str = "config") -> dict:
    """A training config file, reduced to what `mmsr cache build` needs (dataset, seed, encoders),
    so that one file drives both commands. The whole file is validated as a TrainConfig first."""
    if not any(key in data for key in TRAIN_ONLY_KEYS):
        return data
    from mmsr.config import build

    build(TrainConfig, data, source=source)
    return {key: data[key] for key in ("dataset", "seed", "encoders") if key in data}
