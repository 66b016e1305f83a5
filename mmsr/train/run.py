"""A run directory, and rebuilding a trained model from it alone (nanoGPT style).

    RUN/
      config.json          the resolved TrainConfig
      run.json             how it was trained (item feed), written at start
      init.json            with `init_from`: the source run and checkpoint, and which tensors
                           were copied from it and which not (missing there, other shape)
      metrics.jsonl        one line per epoch: loss, lr, validation metrics
      checkpoints/last.pt  latest state (resume point); best.pt: best validation NDCG@10
      eval_<split>.json    written by `mmsr eval`

`prepare_run` decides which directory and which config a `mmsr train` uses; `load_run`
rebuilds the trained model from the directory; `transfer_source` and `init_from_source`
start a model from another run's weights (`init_from`, transfer learning, seed §7.2).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmsr import config as config_lib
from mmsr import paths
from mmsr.atomic import atomic_write_text, refuse_foreign
from mmsr.data.dataset import Dataset, load_dataset
from mmsr.data.split import Split, split_dataset
from mmsr.distributed import init_from_env, pick_device
from mmsr.encoders.config import SLOT_FIELDS
from mmsr.errors import MMSRError
from mmsr.locks import output_lock
from mmsr.progress import to_stderr
from mmsr.train.checkpoint import load_checkpoint
from mmsr.train.config import TrainConfig
from mmsr.train.feeds import open_feed
from mmsr.train.kinds import ties_to_item_ids
from mmsr.train.layout import CONFIG_FILE, INIT_FILE, RUN_FILE, checkpoint_dir, checkpoint_file, read_run_json
from mmsr.train.model import Recommender, build_model, load_weights, trainable_state


RESUME_POINTS = ("last", "best")
# The encoders settings that decide what a trained top block means: which pretrained model it
# sits on, and where that model is split (top block i is layer L - k + i). The others (text
# length and fields, image size, image masking) change what the encoders read, not what their
# weights mean, so they may differ: adapting to such a change is what fine-tuning is for.
# Per modality: its model, its top blocks and (joint) the picture representation it reads.
_TRANSFER_KEYS = {modality: (model, top) + (("joint_vision", "joint_vision_model") if modality == "joint" else ())
                  for modality, (model, top) in SLOT_FIELDS.items()}
TRANSFER_ENCODER_KEYS = tuple(key for keys in _TRANSFER_KEYS.values() for key in keys)


@dataclass
class PreparedRun:
    root: Path
    config: TrainConfig
    resume: bool  # continue from checkpoints/last.pt (False: a fresh run)


@dataclass
class LoadedRun:
    root: Path
    config: TrainConfig
    model: Recommender
    dataset: Dataset
    split: Split
    feed: object
    device: torch.device
    info: dict

    def towers_batch(self, asked: int | None = None) -> int:
        """The item and user towers' batch: `asked`, or by default the run's own `eval_batch_size`,
        the one its training log's validation was computed with. An item tower's vectors can differ
        in their last bits with the batch (MMSR-T's token tower trims each batch, on a CPU each
        length group of it, to its longest item: up to 9e-8 between 256 and 512), and that can turn
        a near-tie: one validation case of 943 crossed rank 10 on MovieLens-100K. At the run's own
        size, with its validation protocol, device and process count, the logged figures come back."""
        return self.config.eval_batch_size if asked is None else asked


def config_as_json(config: TrainConfig) -> dict:
    """`config` as its JSON file holds it (tuples as lists), for comparing with a saved one."""
    return json.loads(json.dumps(asdict(config)))


def save_config(path: Path, config: TrainConfig) -> None:
    """Write a training config as `run_config` and `mmsr train --config` read it back."""
    atomic_write_text(path, json.dumps(asdict(config), indent=2) + "\n")


def run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MMSRError("not a run directory (no config.json)", where=run_dir, hint="train one with `mmsr train`")
    return config_lib.build(TrainConfig, read_run_json(run_dir, CONFIG_FILE), source=f"config {path}")


def default_run_name(config: TrainConfig) -> str:
    return f"{Path(config.dataset).name}-{config.model.kind}-{config.model.sequence}"


def prepare_run(run: str | Path | None = None, config_path: str | Path | None = None,
                overrides: list[str] | None = None, flags: dict[str, Any] | None = None, *, resume: bool = False,
                resume_from: str = "last", overwrite: bool = False,
                log: Callable[[str], None] = print) -> PreparedRun:
    """The directory and the config of a training run, before any training.

    - config: defaults <- `config_path` <- `overrides` (--set) <- `flags` (dotted keys, None = not given).
    - directory: `run` (a name under $MMSR_HOME/runs, or a path); default DATASET-KIND-SEQUENCE.
    - `resume`: continue from checkpoints/last.pt, with the run's saved config (under any override
      or flag) unless a file is given. With no checkpoint yet the run starts afresh in the same
      directory: torchrun --max-restarts passes the same --resume on the first start too, and a
      run that died before its first checkpoint must restart from a plain rerun.
    - Otherwise an existing non-empty directory is refused, or deleted (by rank 0) with `overwrite`.
    """
    config = config_lib.load(TrainConfig, config_path, overrides, flags)
    root = paths.runs_dir(run or default_run_name(config))
    if resume and overwrite:
        raise MMSRError("--resume and --overwrite together", hint="--resume continues the run, --overwrite deletes "
                                                                 "it and starts again: give one")
    if resume_from not in RESUME_POINTS:
        raise MMSRError(f"--resume-from {resume_from!r}", hint=f"use one of {', '.join(RESUME_POINTS)}")
    checkpoint = checkpoint_file(root, resume_from)
    if resume and config_path is None and (root / CONFIG_FILE).is_file():
        # The run's own config, with any --set or flag on top (a resume may lengthen the run:
        # mmsr.train.schedule); a config file replaces it and must match it.
        saved = config_as_json(run_config(root))
        config = config_lib.load(TrainConfig, None, overrides, flags, base=saved)
    if resume and resume_from != "last" and not checkpoint.is_file():
        raise MMSRError("checkpoint not found", where=checkpoint, hint="resume from last, or start again with "
                                                                        "--overwrite")
    restart = resume and not checkpoint.is_file()  # stopped before its first checkpoint
    resume = resume and not restart
    if config.init_from and not resume:  # refused before --overwrite deletes anything
        transfer_source(config, root)
    # Joins the process group under torchrun, on the device the trainer will use.
    dist = init_from_env(pick_device(config.device))
    if restart and dist.main:
        log(f"no checkpoint in {root} yet: starting the run")
    if not resume and root.exists() and any(root.iterdir()):
        if not overwrite and not restart:  # a restart loses nothing: there is no checkpoint
            raise MMSRError("run directory already exists", where=root,
                            hint="pass --resume to continue it, --overwrite to start again, or --run NAME")
        refuse_foreign(root, CONFIG_FILE, "deleted")  # --run-dir pointed at a folder of the user's own
        if dist.main:
            with output_lock(root, "training run"):  # never delete a run that is being trained
                shutil.rmtree(root)
    return PreparedRun(root, config, resume)


# run.json's record of the dataset a run trained on (its meta.json content_hash).
DATASET_HASH_KEY = "dataset_content_hash"


def run_info(root: Path) -> dict:
    """run.json: how the run was trained (its item feed, its dataset's content hash); {} if absent."""
    path = Path(root) / RUN_FILE
    return read_run_json(root, RUN_FILE) if path.is_file() else {}


def trained_config(root: Path, trained: dict | None) -> TrainConfig:
    """The config a checkpoint was `trained` with (its "config"); config.json's for checkpoints
    written before they held one."""
    if trained is None:
        return run_config(root)
    return config_lib.build(TrainConfig, trained, source=f"the config in {root}'s checkpoint")


def check_same_dataset(root: Path, dataset, info: dict) -> None:
    """Refuse a run whose dataset has changed since it started (regenerated or re-imported under
    the same name): its split, its cases and its items would silently be other ones. `info`:
    its `run_info`. Runs from before the record existed are not checked."""
    trained_on, now = info.get(DATASET_HASH_KEY), dataset.meta.get("content_hash")
    if trained_on and now and trained_on != now:
        raise MMSRError(f"dataset {dataset.name} has changed since this run trained on it (content hash "
                        f"{trained_on[:12]} then, {now[:12]} now)", where=root,
                        hint="restore the dataset the run was trained on, or train the run again on this one "
                             "(--overwrite)")


# What a loaded run's weights may come from: its checkpoints/NAME.pt.
CHECKPOINTS = ("best", "last")


def _run_dataset(root: Path, config: TrainConfig, info: dict) -> Dataset:
    """The dataset a run was trained on; a moved or renamed one is named as the run's (the plain
    "create it with mmsr data demo" would make another dataset, which the content hash refuses)."""
    where = paths.dataset_dir(config.dataset)
    if not where.exists():
        trained_on = info.get(DATASET_HASH_KEY)
        raise MMSRError(f"the dataset this run was trained on ({config.dataset}"
                        + (f", content hash {trained_on[:12]}" if trained_on else "") + ") is not there",
                        where=where, hint=f"put it back at {where} (a copy or a link), or run "
                                          f"`mmsr data list` to see what is there; the run reads no other dataset")
    return load_dataset(config.dataset)


def load_run(name_or_path: str | Path, checkpoint: str = "best", device: str = "auto",
             log: Callable[[str], None] = to_stderr) -> LoadedRun:
    """A run rebuilt from its directory alone: its config, the `checkpoint`'s weights, its dataset
    and split, and an item feed that streams its cache (`mmsr eval`, `recommend`, the plots).
    `log` says when best.pt is missing and last.pt ranks in its place, or run.json is (stderr: --json
    stays clean)."""
    root = paths.runs_dir(name_or_path)
    config = run_config(root)
    info = run_info(root)
    if checkpoint not in CHECKPOINTS:
        raise MMSRError(f"unknown checkpoint {checkpoint!r}", where="--checkpoint",
                        hint="use best (the best validation epoch; last.pt where there is none) or last")
    best, last = checkpoint_file(root, "best"), checkpoint_file(root, "last")
    fell_back = checkpoint == "best" and not best.is_file() and last.is_file()
    ckpt_path = last if checkpoint == "last" or fell_back else best
    state = load_checkpoint(ckpt_path, hint=f"use --checkpoint best, or continue the training from it with `mmsr "
                                            f"train --run {root} --resume --resume-from best`" if best.is_file() else
                                            f"the run has no checkpoint left: train it again with `mmsr train --run "
                                            f"{root} --overwrite`")
    if fell_back:
        log(f"note: {root} has no best.pt: ranking with last.pt (epoch {state.get('epoch')})")
    if not info:
        log(f"note: {root} has no {RUN_FILE} (a run from before it was written, or a copy without it): the dataset "
            "is not checked against the one the run trained on, and items are encoded from their inputs, as for a "
            "run trained without a cache")
    dev = pick_device(device)
    dataset = _run_dataset(root, config, info)
    check_same_dataset(root, dataset, info)
    split = split_dataset(dataset, config.split)
    model = build_model(config, dataset.num_items, item_field=dataset.item_field).to(dev)
    load_weights(model, state["model"], ckpt_path)
    model.eval()
    # A loaded run embeds each item at most once: its cache is streamed, never loaded whole.
    feed, _ = open_feed(config, model, dataset, info.get("from_cache", False), dev, stream=True)
    return LoadedRun(root, config, model, dataset, split, feed, dev, info | {"checkpoint": str(ckpt_path),
                                                                          "epoch": state.get("epoch")})


@dataclass
class TransferSource:
    name: str  # as given in init_from
    root: Path
    config: TrainConfig
    checkpoint: Path


def transfer_source(config: TrainConfig, run_dir: str | Path | None = None) -> TransferSource:
    """The run `config.init_from` names, checked before anything trains: refused when this
    model's (or the source's) items are tied to item ids, when the source run or its checkpoint
    is missing, when it is `run_dir` itself, or when its encoders differ in what decides the
    meaning of their weights (`TRANSFER_ENCODER_KEYS`)."""
    name = config.init_from
    _refuse_id_kind(config.model.kind, "model.kind", f"init_from={name}")
    root = paths.runs_dir(name)
    if run_dir is not None and root.resolve() == Path(run_dir).resolve():
        raise MMSRError("a run cannot be initialised from itself", where=root,
                        hint="name another run with --init-from, or --resume to continue this one")
    if not (root / CONFIG_FILE).is_file():
        raise MMSRError(f"init_from={name}: no such run (no config.json)", where=root,
                        hint="train the source run first, or name it as `mmsr train --run` did (or give its path)")
    source = run_config(root)
    checkpoint = next((checkpoint_file(root, point) for point in ("best", "last")
                       if checkpoint_file(root, point).is_file()), None)
    if checkpoint is None:
        raise MMSRError(f"init_from={name}: the run has no checkpoint", where=checkpoint_dir(root),
                        hint="let the source run finish at least one epoch (or --resume it)")
    _refuse_id_kind(source.model.kind, "the source run's model.kind", str(root / CONFIG_FILE))
    differing = [f"encoders.{key} {getattr(source.encoders, key)!r} there, {getattr(config.encoders, key)!r} here"
                 for key in _encoder_keys(source, config)
                 if getattr(source.encoders, key) != getattr(config.encoders, key)]
    if differing:
        raise MMSRError(f"init_from={name}: its encoders differ from this run's: " + "; ".join(differing),
                        where=root / CONFIG_FILE,
                        hint="use the source run's encoders settings, or train without --init-from")
    return TransferSource(name, root, source, checkpoint)


def _refuse_id_kind(kind: str, what: str, where: str) -> None:
    if ties_to_item_ids(kind):
        raise MMSRError(f"{what}={kind}: item-ID embeddings cannot transfer to another catalogue", where=where,
                        hint="transfer a content model (model.kind=mmsr or morec), or train without --init-from")


def _encoder_keys(source: TrainConfig, target: TrainConfig) -> list[str]:
    """TRANSFER_ENCODER_KEYS, less a modality's keys but its model where neither run has that modality."""
    keys = []
    for model, *rest in _TRANSFER_KEYS.values():
        used = any(getattr(config.encoders, model) for config in (source, target))
        keys += [model, *rest] if used else [model]
    return keys


def init_from_source(model: Recommender, source: TransferSource) -> dict:
    """Copy into `model` every tensor of the source's checkpoint whose name and shape match one
    of its saved (trainable) tensors; the others keep their fresh initialisation. Returns the
    record written to init.json. Copying consumes no randomness, so a run started this way is
    as reproducible as one from scratch."""
    state = load_checkpoint(source.checkpoint, hint="train the source run again, or choose another")
    weights = state["model"]
    target = trainable_state(model)
    copied = [key for key, value in target.items() if key in weights and weights[key].shape == value.shape]
    if not copied:
        raise MMSRError(f"init_from={source.name}: no tensor of its checkpoint matches this model in name and shape",
                        where=source.checkpoint, hint="use the source run's model settings (model.*), or train "
                                                      "without --init-from")
    model.load_state_dict({key: weights[key] for key in copied}, strict=False)
    return {
        "init_from": source.name, "run": str(source.root), "checkpoint": str(source.checkpoint),
        "epoch": state.get("epoch"),
        "copied": copied,
        "missing_in_source": [key for key in target if key not in weights],
        "shape_mismatch": {key: {"source": list(weights[key].shape), "here": list(value.shape)}
                           for key, value in target.items() if key in weights and weights[key].shape != value.shape},
        "source_only": [key for key in weights if key not in target],
        "total": len(target),
    }


def init_summary(record: dict) -> str:
    """One line: how much was copied, and what was not (first few names)."""
    skipped = record["missing_in_source"] + list(record["shape_mismatch"])
    text = f"copied {len(record['copied'])} of {record['total']} tensors from {record['init_from']}"
    if not skipped:
        return text + "; all matched"
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return text + f"; not copied: {', '.join(skipped[:3])}{more} (see {INIT_FILE})"
