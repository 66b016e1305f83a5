"""The training recipe: a plain function, read top to bottom (torchtune style).

    dataset -> split -> model (+ cache feed) -> AdamW groups -> epochs of steps -> validation
            -> atomic checkpoints (last.pt, best.pt) and metrics.jsonl in the run directory
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mmsr.atomic import atomic_write_text
from mmsr.data.dataset import load_dataset
from mmsr.data.split import split_dataset
from mmsr.distributed import Dist, barrier, init_from_env, pick_device
from mmsr.errors import MMSRError
from mmsr.eval.runner import evaluate
from mmsr.train.batches import TrainBatches
from mmsr.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from mmsr.train.config import TrainConfig
from mmsr.train.model import CacheFeed, RawFeed, build_model, parameter_groups, trainable_state

SELECT_METRIC = "NDCG@10"


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """1 until `decay_start_epoch`, then linear down to `final_lr_fraction` at the last step."""
    o = config.optim
    start = min(o.decay_start_epoch, o.epochs) * steps_per_epoch
    end = o.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < start or end <= start:
            return 1.0
        return 1.0 - (1.0 - o.final_lr_fraction) * min(1.0, (step - start) / (end - start))

    return factor


def open_feed(config: TrainConfig, model, dataset, from_cache: bool, device: torch.device):
    """The item feed: the zarr cache (checked against this model's fingerprint) or raw inputs."""
    if not model.content:
        return None, "ids"
    encoders = dict(model.items.encoders.items())
    if not from_cache:
        return RawFeed(dataset, encoders, config.encoders.text_fields, device), "end-to-end (lower layers every step)"
    from mmsr.cache_stage import cache_path, expected_fingerprint
    from mmsr_store import open_cache

    path = cache_path(dataset.root, config.encoders)
    cache = open_cache(path)
    cache.check({m: expected_fingerprint(e, dataset, config.encoders) for m, e in encoders.items()})
    into = config.cache_into
    if into == "auto":
        into = "cuda" if device.type == "cuda" else "ram"
    states = {m: cache.load(m, into=into) for m in encoders}
    return CacheFeed(states, device), f"cache {path} ({into})"


def _no_progress(description: str, total: int):
    return contextlib.nullcontext(lambda n=1: None)


def train(config: TrainConfig, run_dir: Path, *, from_cache: bool = True, resume: bool = False,
          progress=_no_progress, log=print) -> dict:
    """Train, validate and checkpoint. Returns the best validation record.

    `progress(description, total)` returns a context manager yielding `advance(n)` (as
    `mmsr_cli.common.progress_bar` does); one bar per epoch, closed when the epoch ends.
    """
    device = pick_device(config.device)
    dist = init_from_env(device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    model = build_model(config, dataset.num_items).to(device)
    feed, feed_desc = open_feed(config, model, dataset, from_cache, device)
    torch.manual_seed(config.seed)  # the same initial RNG whatever building the encoders consumed

    batches = TrainBatches(split, config.optim.batch_size, config.seed, config.optim.negatives,
                            config.optim.windows)
    steps_per_epoch = len(batches)
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    ddp = _wrap(model, dist, device)

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, start_step, global_step, best, partial = 0, 0, 0, {}, {}
    if resume:
        state = load_checkpoint(ckpt_dir / "last.pt")
        _check_same_config(run_dir, config)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state)
        start_epoch, start_step, global_step, best = state["epoch"], state["step"], state["global_step"], state["best"]
        partial = state["extra"]  # the interrupted epoch's running loss
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
    elif dist.main:
        _start_run_dir(run_dir, config, {"from_cache": from_cache, "item_feed": feed_desc, "world_size": dist.world})
    barrier()
    if dist.main:
        log(f"items: {dataset.num_items:,}  users: {split.num_users:,}  steps/epoch: {steps_per_epoch}  "
            f"item feed: {feed_desc}  device: {device}  processes: {dist.world}")

    def checkpoint(epoch: int, step: int, name: str = "last.pt", extra: dict | None = None) -> None:
        if dist.main:
            save_checkpoint(ckpt_dir / name, model_state=trainable_state(model), optimizer=optimizer,
                            scheduler=scheduler, epoch=epoch, step=step, global_step=global_step, best=best,
                            extra=extra)

    kill_at = int(os.environ.get("MMSR_TEST_KILL_AT_STEP", "0"))  # tests: a real SIGKILL mid-epoch
    bad_validations = 0
    for epoch in range(start_epoch, config.optim.epochs):
        ddp.train()
        order = batches.order(epoch)
        first = start_step if epoch == start_epoch else 0
        epoch_loss, epoch_count = (partial.get("loss", 0.0), partial.get("count", 0)) if first else (0.0, 0)
        started = time.perf_counter() - (partial.get("seconds", 0.0) if first else 0.0)
        with progress(f"epoch {epoch + 1}/{config.optim.epochs}", steps_per_epoch - first) as advance:
            for step in range(first, steps_per_epoch):
                batch = batches.batch(epoch, step, order)
                total = int(batch.mask.sum())  # global target count: exact mean over the global batch
                local = batch.rows(slice(dist.rank, None, dist.world)).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.optim.amp and device.type == "cuda"):
                    loss_sum, _ = ddp(local, feed)
                loss = loss_sum * dist.world / max(total, 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                global_step += 1
                epoch_loss += float(loss_sum.detach()) * dist.world
                epoch_count += total
                advance(1)
                if config.checkpoint_every_steps and (step + 1) % config.checkpoint_every_steps == 0:
                    checkpoint(epoch, step + 1, extra={"loss": epoch_loss, "count": epoch_count,
                                                       "seconds": time.perf_counter() - started})
                if kill_at and global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        record = {"epoch": epoch + 1, "step": global_step, "loss": epoch_loss / max(epoch_count, 1),
                  "lr": scheduler.get_last_lr()[0], "epoch_seconds": round(time.perf_counter() - started, 3)}
        validate = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.optim.epochs
        improved = False
        if validate:
            result = evaluate(model, feed, split, "valid", ks=(10, 20), batch_size=config.eval_batch_size,
                              device=device, rank=dist.rank, world=dist.world,
                              mask_history=config.valid_protocol == "paper")
            record["valid"] = result["metrics"]
            improved = not best or result["metrics"][SELECT_METRIC] > best["valid"][SELECT_METRIC]
            if improved:
                best = {"epoch": epoch + 1, "valid": result["metrics"]}
                bad_validations = 0
            else:
                bad_validations += 1
        if improved:
            checkpoint(epoch + 1, 0, "best.pt")
        checkpoint(epoch + 1, 0)
        if dist.main:
            _append_metrics(run_dir, record)
            log(_format_record(record))
        if validate and config.early_stop_patience and bad_validations >= config.early_stop_patience:
            if dist.main:
                log(f"early stop: no {SELECT_METRIC} improvement in {bad_validations} validations")
            break
    barrier()
    return best


def _wrap(model, dist: Dist, device: torch.device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _start_run_dir(run_dir: Path, config: TrainConfig, info: dict) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(config), indent=2) + "\n")
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    if saved != json.loads(json.dumps(asdict(config))):
        raise MMSRError("--resume with a config that differs from the run's", where=run_dir / "config.json",
                        hint="resume with the same config (or none: the run's own is used)")


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _format_record(record: dict) -> str:
    text = f"epoch {record['epoch']}: loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['epoch_seconds']:.1f}s"
    for key, value in record.get("valid", {}).items():
        text += f"  {key} {value:.4f}"
    return text
