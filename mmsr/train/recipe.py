"""The training recipe: a plain function, read top to bottom (torchtune style).

    dataset -> split -> model (+ cache feed) [-> weights from init_from] -> AdamW groups
            -> epochs of steps -> validation
            -> atomic checkpoints (last.pt, best.pt) and metrics.jsonl in the run directory
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import numpy as np
import torch

from mmsr.atomic import atomic_write_text
from mmsr.data.dataset import load_dataset
from mmsr.data.split import split_dataset
from mmsr.distributed import Dist, barrier, init_from_env, pick_device
from mmsr.errors import MMSRError
from mmsr.eval.search import NonFiniteVectors
from mmsr.locks import output_lock
from mmsr.progress import ProgressFactory, no_progress
from mmsr.train.batches import TrainBatches
from mmsr.train.checkpoint import gather_rng_states, load_checkpoint, restore_rng, save_checkpoint
from mmsr.train.config import TrainConfig
from mmsr.train.feeds import open_feed, prepare_items
from mmsr.train.interrupt import StopRequests, TrainingInterrupted
from mmsr.train.model import TRAINING_COPIES, allocation_failed, build_model, load_weights, out_of_memory, \
    trainable_state
from mmsr.train.metrics_file import append_record, reconcile
from mmsr.train.layout import CONFIG_FILE, INIT_FILE, METRICS_FILE, RUN_FILE, checkpoint_dir, checkpoint_file
from mmsr.train.run import (DATASET_HASH_KEY, check_same_dataset, config_as_json,
                            init_from_source, init_summary, run_config, run_info, save_config, trained_config,
                            transfer_source)
from mmsr.train.schedule import make_optimizer, resumed_length_change
from mmsr.train.step import SELECT_METRIC, LossSum, NonFiniteLoss, train_step, validate


def train(config: TrainConfig, run_dir: Path, *, from_cache: bool = True, resume: bool = False,
          resume_from: str = "last", progress: ProgressFactory = no_progress, log=print) -> dict:
    """Train, validate and checkpoint. Returns the best validation record.

    `resume_from`: the checkpoint `resume` continues from, "last" or "best" (when last.pt is
    damaged; the epochs after best.pt's are trained again). `progress(description, total,
    unit=...)` returns a context manager yielding `advance(n)` (see `mmsr.progress`); one bar
    per epoch, closed when the epoch ends.

    Faults: SIGINT/SIGTERM checkpoint the current step and raise TrainingInterrupted; a NaN or
    infinite loss raises MMSRError before it reaches the weights or a checkpoint; a second
    process training the same run directory is refused (`mmsr.locks`).
    """
    device = pick_device(config.device)
    dist = init_from_env(device)
    with contextlib.ExitStack() as held:
        if dist.main:
            held.enter_context(output_lock(Path(run_dir), "training run"))
        return _train(config, Path(run_dir), device, dist, held, from_cache=from_cache, resume=resume,
                      resume_from=resume_from, progress=progress, log=log)


def use_training_kernels(device: torch.device) -> None:
    """The kernels training runs on `device` (benchmarks that time training call this too)."""
    if device.type == "cpu":
        # Some multi-threaded CPU kernels (the scatter-adds in the backward of a gather) sum in
        # an order that depends on thread timing; without this, two 2-thread runs of the same
        # config drift apart by ~1e-5 within a few epochs. The deterministic kernels kept the
        # demo-cpu epoch within noise (13.7-13.9 s against 12.6-14.5 s, AMD EPYC, 2 threads).
        torch.use_deterministic_algorithms(True)
        # That mode also fills every new uninitialised tensor with NaN, a guard against kernels
        # that read memory before writing it, which no kernel here does: it cost 5% of an FDSA or
        # MMSR-T epoch on MovieLens-100K and changes no result (the deterministic kernels stay).
        torch.utils.deterministic.fill_uninitialized_memory = False


def _train(config: TrainConfig, run_dir: Path, device: torch.device, dist: Dist, held: contextlib.ExitStack, *,
           from_cache: bool, resume: bool, resume_from: str, progress: ProgressFactory, log) -> dict:
    use_training_kernels(device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # Checked before the dataset loads; never on resume: the run's own checkpoint holds the
    # weights it started from and all it learnt since, and the source may be gone by then.
    source = transfer_source(config, run_dir) if config.init_from and not resume else None
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    # On a GPU the CPU holds the weights once, while they are built.
    model = build_model(config, dataset.num_items, train_counts=split.train_counts, item_field=dataset.item_field,
                        copies=TRAINING_COPIES if device.type == "cpu" else 1).to(device)
    feed, feed_desc = open_feed(config, model, dataset, from_cache, device)
    if not resume:  # a resumed run gets them back with the weights
        prepare_items(model, config, dataset, from_cache, device)
    torch.manual_seed(config.seed)  # the same initial RNG whatever building the encoders consumed
    init = init_from_source(model, source) if source else None  # before the optimizer holds any state

    batches = TrainBatches.for_config(split, config)
    steps_per_epoch = len(batches)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch)
    ddp = _wrap(model, dist, device)

    start_epoch, start_step, global_step, best, partial = 0, 0, 0, {}, {}
    if resume:
        info = run_info(run_dir)
        check_same_dataset(run_dir, dataset, info)
        resumed = checkpoint_file(run_dir, resume_from)
        state = load_checkpoint(resumed, hint=_resume_hint(resume_from, run_dir))
        _adopt_resumed_config(run_dir, trained_config(run_dir, state.get("config")), config, state["global_step"],
                              steps_per_epoch, dist, log)
        load_weights(model, state["model"], resumed)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state, dist.rank, device)
        start_epoch, start_step, global_step, best = state["epoch"], state["step"], state["global_step"], state["best"]
        # A checkpoint taken after an epoch's last step but before its validation resumes into
        # an epoch with no steps left: the loop below still validates and records it.
        partial = state["extra"]  # the interrupted epoch's running loss
        if dist.main:
            # The records past the checkpoint (an earlier one, or a kill between a record and
            # its checkpoint) are trained again; a record cut short would glue onto the next.
            if note := reconcile(run_dir / METRICS_FILE, start_epoch):
                log(f"note: {note}")
            _say_if_feed_changed(info.get("from_cache"), from_cache, log)
    elif dist.main:
        _start_run_dir(run_dir, config, {"from_cache": from_cache, "item_feed": feed_desc, "world_size": dist.world,
                                         DATASET_HASH_KEY: dataset.meta.get("content_hash")}, init)
        if init:
            log(init_summary(init))
    barrier()
    if dist.main:
        log(f"items: {dataset.num_items:,}  users: {split.num_users:,}  steps/epoch: {steps_per_epoch}  "
            f"item feed: {feed_desc}  device: {device}  processes: {dist.world}")

    def checkpoint(epoch: int, step: int, point: str = "last", extra: dict | None = None) -> None:
        rng = gather_rng_states(device)  # every rank calls this: a collective under torchrun
        if dist.main:
            save_checkpoint(checkpoint_file(run_dir, point), model_state=trainable_state(model), optimizer=optimizer,
                            scheduler=scheduler, epoch=epoch, step=step, global_step=global_step, best=best,
                            extra=extra, rng=rng, config=config_as_json(config))

    # Carried over a resume, so that a run stopped early (or killed after its early stop) does
    # not train again, and a resumed run stops where the uninterrupted one does.
    bad_validations = _validations_since_best(config, best, start_epoch)
    if resume and (_early_stopped(config, bad_validations) or start_epoch >= config.optim.epochs):
        if dist.main:
            log(f"nothing to train: the run {'stopped early' if start_epoch < config.optim.epochs else 'finished'} "
                f"at epoch {start_epoch} (best {best.get('epoch')}); lengthen it with --resume --set "
                "optim.epochs=N (and early_stop_patience)")
        barrier()
        return best
    stops = held.enter_context(StopRequests(dist, device))  # from here on a signal stops after the step
    for epoch in range(start_epoch, config.optim.epochs):
        ddp.train()
        order = batches.order(epoch)
        first = start_step if epoch == start_epoch else 0
        running = LossSum(partial.get("loss", 0.0), partial.get("count", 0)) if first else LossSum()
        started = time.perf_counter() - (partial.get("seconds", 0.0) if first else 0.0)

        def mid_epoch() -> dict:  # what a mid-epoch checkpoint keeps of the interrupted epoch
            return {"loss": running.loss, "count": running.targets, "seconds": time.perf_counter() - started}

        with progress(f"epoch {epoch + 1}/{config.optim.epochs}", steps_per_epoch - first, unit="steps") as advance:
            for step in range(first, steps_per_epoch):
                batch = batches.batch(epoch, step, order)
                try:
                    running += train_step(ddp, batch, feed, optimizer, scheduler, dist=dist, device=device,
                                          optim=config.optim)
                except NonFiniteLoss as error:
                    raise TrainingDiverged(f"training diverged: loss {error.value} at epoch {epoch + 1}, step "
                                           f"{step + 1} (global step {global_step + 1}); no checkpoint was written "
                                           "with it", where=run_dir, hint=_diverged_hint(run_dir)) from None
                except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
                    if not out_of_memory(error):
                        raise
                    raise MMSRError(f"out of memory at epoch {epoch + 1}, step {step + 1}: {allocation_failed(error)}",
                                    where=run_dir, hint=_step_memory_hint(config, device)) from None
                global_step += 1
                signum = stops.requested()
                if signum or (config.checkpoint_every_steps and (step + 1) % config.checkpoint_every_steps == 0):
                    checkpoint(epoch, step + 1, extra=mid_epoch())
                advance(1)
                if signum:
                    barrier()  # no rank leaves (and makes torchrun stop the rest) before rank 0 has saved
                    raise TrainingInterrupted(
                        signum, f"{signal.Signals(signum).name} at epoch {epoch + 1}, step {step + 1} of "
                                f"{steps_per_epoch}: checkpoint saved", where=run_dir,
                        hint=_continue_hint(run_dir, from_cache, dist.world))
        record = {"epoch": epoch + 1, "step": global_step, "loss": running.mean,
                  "lr": scheduler.get_last_lr()[0], "epoch_seconds": round(time.perf_counter() - started, 3),
                  **model.score.trained()}
        validating = _validates(config, epoch + 1)
        improved = False
        if validating:
            try:
                validation = validate(model, feed, split, config, device=device, dist=dist)
            except NonFiniteVectors as error:  # a finite loss can still leave the towers' outputs infinite
                raise TrainingDiverged(f"training diverged: {error.message} at epoch {epoch + 1}'s validation; no "
                                       "checkpoint was written with it", where=run_dir,
                                       hint=_diverged_hint(run_dir)) from None
            except (RuntimeError, MemoryError) as error:
                if not out_of_memory(error):
                    raise
                raise MMSRError(f"out of memory at epoch {epoch + 1}'s validation: {allocation_failed(error)}",
                                where=run_dir, hint=_validation_memory_hint(config, run_dir)) from None
            record["valid"] = metrics = validation["metrics"]
            if "item_spread" in validation:
                record["item_spread"] = validation["item_spread"]
                if dist.main and validation["item_spread"] < COLLAPSED_SPREAD:
                    log(_collapse_warning(validation["item_spread"], config))
            improved = not best or metrics[SELECT_METRIC] > best["valid"][SELECT_METRIC]
            if improved:
                best = {"epoch": epoch + 1, "valid": metrics}
                bad_validations = 0
            else:
                bad_validations += 1
        if dist.main:  # before the checkpoints: a kill between the two loses no record (metrics_file)
            append_record(run_dir / METRICS_FILE, record)
        if improved:
            checkpoint(epoch + 1, 0, "best")
        checkpoint(epoch + 1, 0)
        if dist.main:
            log(_format_record(record))
        if validating and _early_stopped(config, bad_validations):
            if dist.main:
                log(f"early stop: no {SELECT_METRIC} improvement in {bad_validations} validations")
            break
    barrier()
    return best


# Below this share of their length the items differ by (towers.item_spread), the item tower has
# collapsed: a four-layer merge-attention fusion at lr 1e-3 fell from 0.56 to 0.04 in its first
# 16 steps and its validation stayed at chance (README, "Warm-up").
COLLAPSED_SPREAD = 0.1


def _collapse_warning(spread: float, config: TrainConfig) -> str:
    return (f"warning: the item vectors have nearly collapsed onto one (they differ by {spread:.1%} of "
            f"their length): if validation stays near chance, lower optim.lr (now {config.optim.lr:g}) or set "
            "optim.warmup_epochs")


def _validates(config: TrainConfig, epoch: int) -> bool:
    """Whether the trainer validates after `epoch` (1-based)."""
    return epoch % config.eval_every == 0 or epoch == config.optim.epochs


def _validations_since_best(config: TrainConfig, best: dict, completed: int) -> int:
    """How many validations after the best one the first `completed` epochs made."""
    return sum(_validates(config, epoch) for epoch in range(best.get("epoch", 0) + 1, completed + 1))


def _early_stopped(config: TrainConfig, bad_validations: int) -> bool:
    return bool(config.early_stop_patience) and bad_validations >= config.early_stop_patience


def _continue_hint(run_dir: Path, from_cache: bool, world: int) -> str:
    """How to continue a run stopped by a signal. Under torchrun the option is --run-dir: its
    launcher takes `--run` for its own `--run-path`."""
    command = f"mmsr train {'--run-dir' if world > 1 else '--run'} {run_dir} --resume{' --from-cache' if from_cache else ''}"
    return f"continue with `{command}`" + (" under the same torchrun options" if world > 1 else "")


def _resume_hint(resume_from: str, run_dir: Path) -> str:
    if resume_from == "last":
        return (f"continue from the best checkpoint instead: `mmsr train --run {run_dir} --resume --resume-from "
                "best` (the epochs after it are trained again)")
    return f"no usable checkpoint is left: start again with `mmsr train --run {run_dir} --overwrite`"


class TrainingDiverged(MMSRError):
    """Training met a non-finite loss or non-finite vectors. The hint speaks of `mmsr train`'s
    options; a caller that trains for another command (a study) says its own."""


def _step_memory_hint(config: TrainConfig, device: torch.device) -> str:
    """What frees memory for a training step. A resume keeps the batch and the model (their
    steps are in the optimizer's state); it may move the cached states off the GPU."""
    said = f"lower optim.batch_size (now {config.optim.batch_size}) and start again with --overwrite"
    if device.type == "cuda" and config.cache_into in ("auto", "cuda"):
        said += "; or go on from the last epoch saved with --resume --set cache_into=ram (the cached states leave " \
                "the GPU)"
    return said


def _validation_memory_hint(config: TrainConfig, run_dir: Path) -> str:
    """A resume may change eval_batch_size: the weights never see it."""
    setting = f"--set eval_batch_size={max(1, config.eval_batch_size // 2)} (now {config.eval_batch_size})"
    return _resume_or_again(run_dir, f"go on from the last epoch saved with --resume {setting}", setting)


def _diverged_hint(run_dir: Path) -> str:
    return "lower optim.lr, keep optim.grad_clip > 0, or check the data; " + _resume_or_again(
        run_dir, "checkpoints/last.pt and best.pt hold the last finite weights (resume with --resume)")


def _resume_or_again(run_dir: Path, resume: str, setting: str = "") -> str:
    """`resume` where an epoch was saved, else starting again (with `setting`, if any)."""
    if checkpoint_file(run_dir, "last").is_file():
        return resume
    return "no epoch was saved before it: start again with --overwrite" + (f" {setting}" if setting else "")


def _wrap(model, dist: Dist, device: torch.device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _start_run_dir(run_dir: Path, config: TrainConfig, info: dict, init: dict | None) -> None:
    checkpoint_dir(run_dir).mkdir(parents=True, exist_ok=True)
    save_config(run_dir / CONFIG_FILE, config)
    atomic_write_text(run_dir / RUN_FILE, json.dumps(info, indent=2) + "\n")
    if init:
        atomic_write_text(run_dir / INIT_FILE, json.dumps(init, indent=2) + "\n")
    # A restart in the same directory (no checkpoint yet) must not keep the last start's records.
    stale = [run_dir / METRICS_FILE] + ([] if init else [run_dir / INIT_FILE])
    for path in stale:
        if path.exists():
            path.unlink()


def _adopt_resumed_config(run_dir: Path, trained: TrainConfig, config: TrainConfig, steps_taken: int,
                          steps_per_epoch: int, dist: Dist, log) -> None:
    """`config` (config.json with any --set) against the config the checkpoint was `trained`
    with: a key given by --set or written into the file by hand passes the same checks (a hand
    edit of another key was half applied before: the dropout took, the learning rate stayed in
    the optimizer's state).
    Rebuilt, not compared raw: a run saved before a config field existed (e.g. init_from) holds
    its default, and must still resume."""
    changed = resumed_length_change(trained, config, steps_taken, steps_per_epoch, where=run_dir / CONFIG_FILE)
    if dist.main and config_as_json(config) != config_as_json(run_config(run_dir)):
        # The run is now the new config's run, step for step; its config says so.
        save_config(run_dir / CONFIG_FILE, config)
    if changed and dist.main:
        shown = ", ".join(f"{key} {a} -> {b}" for key, (a, b) in changed.items())
        log(f"resuming with {shown}: the {steps_taken:,} steps taken keep their learning rates, so the run "
            "continues as one started with the new length")


def _say_if_feed_changed(started: bool | None, from_cache: bool, log) -> None:
    """A resumed run may read its items another way than it `started` (run.json's from_cache; the
    two are the same model), but end-to-end runs the frozen layers every step: say so rather than
    be silently slower."""
    if started is True and not from_cache:
        log("note: this run started from the cache and resumes end-to-end (the frozen layers every step, "
            "much slower); stop and resume with --from-cache to read the cache again")
    elif started is False and from_cache:
        log("note: this run started end-to-end and resumes from the cache")


def _format_record(record: dict) -> str:
    text = f"epoch {record['epoch']}: loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['epoch_seconds']:.1f}s"
    if "temperature" in record:  # a learned one (model.score = "cosine-learned")
        text += f"  temperature {record['temperature']:.4f}"
    for key, value in record.get("valid", {}).items():
        text += f"  {key} {value:.4f}"
    return text
