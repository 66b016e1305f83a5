"""The trainer: every component trains, cache == end-to-end, resume, and DDP == one process."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsr import config as config_lib
from mmsr.models.fusion import PRETRAINED_FUSIONS, fusion_names
from mmsr.models.sequence import sequence_model_names
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig


def _config(overrides):
    return config_lib.load(TrainConfig, None, overrides)


def _loss(model, batch, feed):
    """(summed loss, targets) of a batch, fed as the training step feeds it."""
    ids, rows = batch.distinct_items()
    return model(batch, ids, rows, feed(ids))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def built_cache(tiny_overrides):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config = _config(tiny_overrides)
    build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0)
    return tiny_overrides


def _train(overrides, run_dir, from_cache=True, **kwargs):
    from mmsr.train.recipe import train

    return train(_config(overrides), run_dir, from_cache=from_cache, log=lambda *_: None, **kwargs)


def _fits_a_batch(overrides, steps=40, lr=0.001):
    """Loss on one fixed batch (the one the recipe draws first) before and after a few AdamW
    steps on it (no dropout)."""
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches
    from mmsr.train.model import build_model, parameter_groups
    from mmsr.train.feeds import open_feed, prepare_items

    config = _config(overrides + ["model.dropout=0.0", f"optim.lr={lr}"])
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts,
                        item_field=dataset.item_field)
    feed, _ = open_feed(config, model, dataset, True, torch.device("cpu"))
    prepare_items(model, config, dataset, True, torch.device("cpu"))
    batch = TrainBatches.for_config(split, config).batch(0, 0)
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    losses = []
    for _ in range(steps + 1):
        total, count = _loss(model, batch, feed)
        loss = total / count
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses


@pytest.mark.parametrize("fusion", [f for f in fusion_names() if f != "pool" and f not in PRETRAINED_FUSIONS])
def test_every_fusion_learns(built_cache, fusion):  # FLAVA's trains with its own towers in test_vlp
    losses = _fits_a_batch(built_cache + [f"model.fusion={fusion}"])
    assert losses[-1] < 0.95 * losses[0], losses


def test_a_standardized_fusion_learns_and_its_checkpoint_keeps_the_statistics(built_cache, tmp_path):
    """model.fusion_standardize: the item statistics are learnt in training, saved with the
    weights and used by a fresh `mmsr eval`-style load (eval mode), which must score as the
    trainer's own validation did."""
    from mmsr.eval.runner import evaluate_run
    from mmsr.train.run import load_run

    overrides = built_cache + ["model.fusion=gate", "model.fusion_standardize=true", "eval_batch_size=3"]
    losses = _fits_a_batch(overrides)
    assert losses[-1] < 0.95 * losses[0], losses
    best = _train(overrides, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    means = [value for key, value in state.items() if key.endswith("running_mean")]
    assert len(means) == 2 and all(bool(m.abs().sum() > 0) for m in means)  # text and image, updated
    loaded = load_run(tmp_path / "run", checkpoint="best")
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in loaded.model.modules())
    config = _config(overrides)
    # With no batch size asked, at the run's own (3: several batches), as its validation ran.
    again = evaluate_run(tmp_path / "run", "valid", ks=(10, 20), protocol=config.valid_protocol)
    assert again["batch_size"] == config.eval_batch_size == 3 and again["metrics"] == best["valid"]


@pytest.mark.parametrize("sequence", sequence_model_names())
def test_every_sequence_model_learns(built_cache, sequence):
    losses = _fits_a_batch(built_cache + [f"model.sequence={sequence}", "model.fusion=gate"])
    assert losses[-1] < 0.95 * losses[0], losses


def test_recipe_trains_and_validates(built_cache, tmp_path):
    best = _train(built_cache + ["model.fusion=merge-attn"], tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0], losses
    assert 0.0 <= best["valid"]["HR@10"] <= 1.0 and best["epoch"] >= 1
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("variant,extra", [
    ("IDSR", ["model.kind=idsr"]),
    ("MMSR-T", ["encoders.vision_model="]),
    ("MMSR-V", ["encoders.text_model="]),
])
def test_variants_run(tiny_overrides, tmp_path, variant, extra):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    overrides = tiny_overrides + extra
    config = _config(overrides)
    if config.model.kind == "mmsr":
        build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0)
    _train(overrides, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0], (variant, losses)


def test_another_encoder_config_looks_for_its_own_cache_and_says_how_to_build_it(built_cache, tmp_path):
    """The encoder config names its cache (a hash of it): another split point finds none, and the
    error gives the build command with that setting (a mismatched cache in the same place is
    refused by its fingerprint: test_cache_stage.py::test_mismatched_fingerprint_is_refused)."""
    from mmsr_store.errors import StoreError

    with pytest.raises(StoreError, match="cache not found") as error:
        _train(built_cache + ["encoders.text_top_blocks=2"], tmp_path / "run")
    # The command builds the asked-for cache: text_top_blocks=2 is the default, so it is no --set,
    # and the built cache's 1 is gone; the other settings are the run's.
    message = str(error.value)
    assert "mmsr cache build" in message and "encoders.vision_top_blocks=1" in message
    assert "text_top_blocks" not in message


def assert_cached_item_vectors_equal_end_to_end(config, dataset, every: int = 7):
    """A model without dropout gives the same item vectors from the float16 cache as from raw
    inputs (up to float16), and not bit-identical ones. Returns (model, cache feed, raw feed)."""
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model

    torch.manual_seed(0)
    model = build_model(config, dataset.num_items).eval()
    cache_feed, _ = open_feed(config, model, dataset, True, torch.device("cpu"))
    raw_feed, _ = open_feed(config, model, dataset, False, torch.device("cpu"))
    ids = torch.arange(0, dataset.num_items, every)
    with torch.no_grad():
        cached = model.item_vectors(ids, cache_feed)
        raw = model.item_vectors(ids, raw_feed)
    torch.testing.assert_close(cached, raw, atol=2e-2, rtol=2e-2)  # float16 cache
    assert (cached - raw).abs().max() > 0  # the cache really is float16, not a copy of the raw path
    return model, cache_feed, raw_feed


def test_cached_path_equals_end_to_end(built_cache):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches

    config = _config(built_cache + ["model.dropout=0.0"])
    dataset = load_dataset(config.dataset)
    model, cache_feed, raw_feed = assert_cached_item_vectors_equal_end_to_end(config, dataset)
    batch = TrainBatches(split_dataset(dataset, config.split), 16, 0).batch(0, 0)
    with torch.no_grad():
        loss_cached, n1 = _loss(model, batch, cache_feed)
        loss_raw, n2 = _loss(model, batch, raw_feed)
    assert n1 == n2
    torch.testing.assert_close(loss_cached / n1, loss_raw / n2, atol=1e-2, rtol=1e-2)


def _pooled_and_states_agree(overrides: list[str], pooled: list[str]):
    """Builds the cache and a model for `overrides`; checks that the feed pools `pooled` once and
    that a training batch's loss and every gradient equal those from the states to the bit."""
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.models.layers import PooledState
    from mmsr.train.batches import TrainBatches
    from mmsr.train.feeds import open_feed, open_states_feed
    from mmsr.train.model import build_model

    config = _config(overrides + ["model.dropout=0.0"])
    dataset = load_dataset(config.dataset)
    build_cache(dataset, config.encoders, batch_size=64, num_workers=0)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items, item_field=dataset.item_field)
    assert sorted(model.items.pooled_once()) == sorted(pooled)
    pooled_feed, description = open_feed(config, model, dataset, True, torch.device("cpu"))
    states_feed, _ = open_states_feed(config, model.encoders, dataset, True, torch.device("cpu"))
    if model.item_inputs == "ids+states":
        from mmsr.train.feeds import WithIds

        states_feed = WithIds(states_feed)
    assert f"{', '.join(model.items.pooled_once())} pooled once" in description
    given = pooled_feed(torch.arange(5))
    given = given.get("states", given)
    assert all(isinstance(given[m], PooledState) == (m in pooled) for m in model.encoders)

    batch = TrainBatches.for_config(split_dataset(dataset, config.split), config).batch(0, 0)
    results = []
    # As training runs: some backward kernels (an embedding's scatter-add) sum in thread order.
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for feed in (pooled_feed, states_feed):
            model.zero_grad()
            total, count = _loss(model, batch, feed)
            total.backward()
            results.append((total.detach(),
                            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    finally:
        torch.use_deterministic_algorithms(before)
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    assert [name for name in grads_a if not torch.equal(grads_a[name], grads_b[name])] == []
    return dataset


def test_a_fixed_encoder_top_is_pooled_once_and_trains_as_from_its_states(tiny_overrides):
    """With no text block fine-tuned and a fusion that pools first, the feed hands over each
    item's pooled text, computed once: the loss and every gradient equal the states' to the bit.
    The vision encoder's top block learns, so its states still come every step."""
    dataset = _pooled_and_states_agree(tiny_overrides + ["encoders.text_top_blocks=0", "model.fusion=gate+dnn"],
                                       ["text"])
    for sets in (["encoders.text_top_blocks=1"], ["model.fusion=merge-attn"],
                 ["model.fusion=gate+dnn", "model.fusion_pooling=attention"]):
        other = _config(tiny_overrides + ["encoders.text_top_blocks=0", *sets])
        assert build_model_for(other, dataset).items.pooled_once() == []


def test_morec_pools_by_the_mean_whatever_fusion_pooling_says(tiny_overrides):
    """MoRec++ pools as MoRec does; model.fusion_pooling, like every fusion knob, is read only by a
    kind that takes model.fusion (mmsr)."""
    from mmsr.data.dataset import load_dataset

    morec = _config(tiny_overrides + ["model.kind=morec", "model.fusion_pooling=attention"])
    dataset = load_dataset(morec.dataset)
    assert build_model_for(morec, dataset).items.fusion.score is None
    standardized = _config(tiny_overrides + ["model.kind=morec", "model.fusion_standardize=true"])
    proj = build_model_for(standardized, dataset).items.fusion.proj["text"]
    assert not any(isinstance(layer, torch.nn.BatchNorm1d) for layer in proj)  # every fusion knob alike
    mmsr = _config(tiny_overrides + ["model.fusion=gate", "model.fusion_pooling=attention"])
    assert build_model_for(mmsr, dataset).items.fusion.score is not None


@pytest.mark.parametrize("kind", ["fdsa", "carca"])
def test_the_baselines_given_features_are_pooled_once_when_no_top_block_runs(tiny_overrides, kind):
    """FDSA's and CARCA++'s content is given (frozen): with no top block, each modality's pooled
    state is the same at every step, pooled once, with the states' loss and gradients."""
    # FDSA's states memory-mapped: pooled in one pass that hands the mapped pages back as training does.
    sets = ["encoders.text_top_blocks=0", "encoders.vision_top_blocks=0", f"model.kind={kind}",
            f"cache_into={'mmap' if kind == 'fdsa' else 'ram'}"]
    dataset = _pooled_and_states_agree(tiny_overrides + sets + (["optim.loss=bce"] if kind == "carca" else []),
                                       ["image", "text"])
    other = _config(tiny_overrides + [f"model.kind={kind}", "encoders.vision_top_blocks=0"]
                    + (["optim.loss=bce"] if kind == "carca" else []))
    assert build_model_for(other, dataset).items.pooled_once() == ["image"]


@pytest.mark.parametrize("fusion", ["merge-attn", "coattn", "gate"])
def test_token_slots_no_item_of_the_batch_uses_are_trimmed_and_change_nothing(tiny_overrides, fusion):
    """The top blocks and the fusion run only on the token slots some item of the batch uses:
    states widened by unused slots (garbage behind the mask) give the same item vectors, and the
    text encoder's top block sees the trimmed width."""
    model, states = _model_and_cached_states(tiny_overrides + [f"model.fusion={fusion}"], 12)
    text, mask = states["text"]
    longest = int(mask.sum(1).max())
    widened = dict(states, text=(torch.cat([text, torch.full((12, 7, text.shape[2]), 1e3, dtype=text.dtype)], 1),
                                 torch.cat([mask, mask.new_zeros(12, 7)], 1)))
    encoder = model.encoders["text"]
    widths = _widths_seen_by(encoder)
    with torch.no_grad():
        torch.testing.assert_close(model.items(widened), model.items(states), atol=1e-5, rtol=1e-5)
    assert widths == [longest, longest]


@pytest.mark.parametrize("fusion", ["merge-attn", "pool+dnn"])
def test_items_of_like_length_run_in_groups_and_give_the_vectors_of_one_call(tiny_overrides, fusion):
    """The item tower cuts a batch sorted by token count into length groups: the same vectors as
    one call, in the items' order; the text top sees each group's own longest item. A tower with
    batch statistics in training (model.fusion_standardize) runs its batch whole."""
    standardize = fusion == "pool+dnn"
    model, states = _model_and_cached_states(
        tiny_overrides + [f"model.fusion={fusion}", "encoders.text_top_blocks=1", "encoders.max_text_len=60",
                          f"model.fusion_standardize={str(standardize).lower()}"], 40)
    lengths = states["text"][1].sum(1)
    tower = model.items
    widths = _widths_seen_by(model.encoders["text"])
    tower.length_groups, tower.min_group_items = 1, 1
    with torch.no_grad():
        whole = model.items(states)
        tower.length_groups = 4
        widths.clear()
        grouped = model.items(states)
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    assert widths == [int(group.max()) for group in lengths.sort().values.chunk(4)]
    assert len(set(widths)) > 1  # the tiny dataset's texts differ in length
    tower.length_group_devices = ()  # a device the groups were not measured on (a GPU): one call
    widths.clear()
    with torch.no_grad():
        model.items(states)
    assert widths == [int(lengths.max())]
    tower.length_group_devices = ("cpu",)
    if standardize:
        model.train()
        widths.clear()
        model.items(states)
        assert widths == [int(lengths.max())]  # BatchNorm's statistics need the whole batch


def _model_and_cached_states(overrides, items: int):
    """A tiny model in eval mode and the cached states of its dataset's first `items` items."""
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.train.feeds import open_states_feed

    config = _config(overrides)
    dataset = load_dataset(config.dataset)
    build_cache(dataset, config.encoders, batch_size=64, num_workers=0)
    torch.manual_seed(0)
    model = build_model_for(config, dataset).eval()
    feed, _ = open_states_feed(config, model.encoders, dataset, True, torch.device("cpu"))
    return model, feed(torch.arange(items))


def _widths_seen_by(encoder) -> list[int]:
    """The token widths `encoder.upper` is called with from now on, in call order."""
    widths = []
    upper = encoder.upper
    encoder.upper = lambda hidden, mask: widths.append(hidden.shape[1]) or upper(hidden, mask)
    return widths


def build_model_for(config, dataset):
    from mmsr.train.model import build_model

    return build_model(config, dataset.num_items, item_field=dataset.item_field)


# The commands these tests start check CPU behaviour (bit-identical resumes, gloo DDP of two
# processes): they see no GPU, so a GPU node runs them as CI does. tests/test_gpu.py gives it back.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


def _cli(args, home, env_extra=None, module=("-m", "mmsr_cli.app")):
    env = dict(os.environ, MMSR_HOME=str(home), MMSR_NO_PROGRESS="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               **{**CPU_ONLY, **(env_extra or {})})
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, env=env, timeout=600)


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


_SIGNAL_AT_STEP = """
import contextlib, os, signal, sys
import mmsr_cli.train
from mmsr_cli.app import main

signum, at_step, steps = int(sys.argv[1]), int(sys.argv[2]), [0]

bars = mmsr_cli.train.progress_bar

@contextlib.contextmanager
def signalling_progress(description, total, unit="items"):
    with bars(description, total, unit) as draw:  # the real bars, drawn unless MMSR_NO_PROGRESS
        def advance(n=1):
            draw(n)
            steps[0] += n
            if steps[0] == at_step and os.environ.get("RANK", "0") == os.environ.get("SIGNAL_RANK", "0"):
                os.kill(os.getpid(), signum)  # a real signal, delivered to the training process
        yield advance

mmsr_cli.train.progress_bar = signalling_progress
sys.argv = ["mmsr", "train", *sys.argv[3:]]
main()
"""
# What the signalled command exits with: killed outright, or stopped cleanly with 128 + signal.
EXPECTED_STATUS = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 128 + signal.SIGTERM,
                   signal.SIGINT: 128 + signal.SIGINT}


def kill_and_resume(overrides, kill_at: int, home, signum: int = signal.SIGKILL, whole: Path | None = None,
                    env_extra: dict | None = None):
    """Train run "whole" uninterrupted, and run "killed" through the CLI, hit by `signum` after
    global step `kill_at`, then resumed with `--resume`. Returns both last checkpoints and both
    last metrics.jsonl records (and, through `kill_and_resume.stderr`, what the signalled run said).
    `whole`: a run already trained uninterrupted with `overrides`, copied instead of trained again.
    `env_extra`: the commands' environment beyond `_cli`'s."""
    if whole is not None:
        shutil.copytree(whole, home / "runs" / "whole")
    else:
        trained = _cli(["train", "--run", "whole", *_sets(overrides)], home, env_extra)
        assert trained.returncode == 0, trained.stderr
    # The signal comes from the test's side: a progress callback that signals its own process
    # after that step (the recipe calls it after the step's checkpoint).
    killed = _cli([str(int(signum)), str(kill_at), "--run", "killed", *_sets(overrides)], home, env_extra,
                  module=("-c", _SIGNAL_AT_STEP))
    assert killed.returncode == EXPECTED_STATUS[signum], killed.stderr[-2000:]
    kill_and_resume.stderr = killed.stderr
    resumed = _cli(["train", "--run", "killed", "--resume"], home, env_extra)
    assert resumed.returncode == 0, resumed.stderr
    checkpoints = [torch.load(home / f"runs/{run}/checkpoints/last.pt", weights_only=True) for run in ("whole", "killed")]
    last = [json.loads((home / f"runs/{run}/metrics.jsonl").read_text().splitlines()[-1]) for run in ("whole", "killed")]
    return checkpoints, last


def test_kill_mid_epoch_then_resume_equals_uninterrupted(small_demo, mmsr_home):
    # Every random stream a step draws from must be restored: dropout's, the per-position
    # negatives' and the `mixed` loss's uniform items (BCE's resume: tests/test_faults_train.py).
    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=2", "optim.batch_size=32",
                 "checkpoint_every_steps=2", "model.dropout=0.2", "optim.loss=mixed", "optim.mixed_negatives=16"]
    (a, b), last = kill_and_resume(overrides, 9, mmsr_home)  # mid-epoch: 7 steps per epoch
    assert a["global_step"] == b["global_step"] == 14
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert last[0]["loss"] == last[1]["loss"] and last[0]["valid"] == last[1]["valid"]


TORCHRUN = ("-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "localhost:0", "-m", "mmsr_cli.app")


def assert_two_processes_train_as_one(overrides, home, single: str | None = None):
    """Train run "single" in one process and run "ddp" under a 2-process torchrun: same weights.
    `single`: a run under `home` already trained in one process with `overrides`, used instead."""
    if single is None:
        single = "single"
        trained = _cli(["train", "--run", single, *_sets(overrides)], home)
        assert trained.returncode == 0, trained.stderr
    ddp = _cli(["train", "--run-dir", "ddp", *_sets(overrides)], home, module=TORCHRUN)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(home / f"runs/{single}/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(home / "runs/ddp/checkpoints/last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_two_process_ddp_matches_one_process(small_demo, mmsr_home):
    """The same weights, and the same validation with each rank keeping only its slice of the
    item vectors (`valid_shard_items`). `mmsr eval` under torchrun against one process:
    tests/test_docker.py, through the recipe."""
    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "optim.batch_size=32",
                 "model.dropout=0.0", "valid_shard_items=true"]
    assert_two_processes_train_as_one(overrides, mmsr_home)
    valid = [json.loads((mmsr_home / f"runs/{run}/metrics.jsonl").read_text().splitlines()[-1])["valid"]
             for run in ("single", "ddp")]
    assert valid[0] == pytest.approx(valid[1], abs=1e-6) and valid[0]["HR@20"] > 0


def test_sharded_validation_is_refused_for_a_candidate_dependent_scorer():
    from mmsr.config import build
    from mmsr.errors import MMSRError
    from mmsr.train.config import TrainConfig

    with pytest.raises(MMSRError, match="valid_shard_items ranks by inner products"):
        build(TrainConfig, {"model": {"kind": "carca"}, "optim": {"loss": "bce"}, "valid_shard_items": True})


@pytest.mark.parametrize("mode", ["unseen", "any"])
def test_negatives_follow_their_rule(small_demo, mode):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import PAD, TrainBatches

    split = split_dataset(load_dataset(small_demo))
    batches = TrainBatches(split, 64, 0, negatives=mode)
    batch = batches.batch(0, 0)
    users = batches.users_of(batches.order(0)[:64])
    assert ((batch.negatives == PAD) == ~batch.mask).all()
    assert (batch.negatives[batch.mask] != batch.targets[batch.mask]).all()
    seen_drawn = 0
    for row, user in enumerate(users):
        drawn = batch.negatives[row][batch.mask[row]].numpy()
        seen = set(split.train_sequence(user).tolist())
        seen_drawn += sum(int(item) in seen for item in drawn)
    if mode == "unseen":
        assert seen_drawn == 0
    else:  # RecBole's rule draws seen items too (about 4% of draws here; seeded, so deterministic)
        assert seen_drawn > 0


@pytest.mark.parametrize("windows,stride", [("last", 0), ("all", 0), ("all", 1), ("all", 3)])
def test_training_windows(small_demo, windows, stride):
    from collections import Counter

    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import SplitConfig, split_dataset
    from mmsr.train.batches import TrainBatches

    split = split_dataset(load_dataset(small_demo), SplitConfig(max_seq_len=4))
    batches = TrainBatches(split, 16, 0, windows=windows, stride=stride)
    order = batches.order(0)
    seen = Counter()
    for step in range(len(batches)):
        batch = batches.batch(0, step, order)
        users = batches.users_of(order[step * 16:(step + 1) * 16])
        for row, user in enumerate(users):
            train = split.train_sequence(user)
            for position in np.flatnonzero(batch.mask[row].numpy()):
                seen[int(user), int(batch.targets[row, position])] += 1
                # the input before a target is the item before it in the user's sequence, so a
                # row holds the target's true history; with a stride, at least 4 - stride items of it
                history = batch.inputs[row, :position + 1].numpy()
                history = history[history != -1]
                end = int(np.flatnonzero(train == int(batch.targets[row, position]))[-1])
                assert list(history) == list(train[max(0, end - 4):end])[-len(history):]
                assert len(history) >= min(end, 4 - (stride or 4) + 1)
            assert (batch.negatives[row] != -1).tolist() == batch.mask[row].tolist()
    expected = Counter()
    for user in np.unique(batches.row_users):
        train = split.train_sequence(user)
        targets = train[1:] if windows == "all" else train[1:][-4:]
        expected.update((int(user), int(t)) for t in targets)
    assert seen == expected  # "all": every training item after the first is a target once, whatever the stride
    if stride:
        assert len(batches.row_users) > len(TrainBatches(split, 16, 0, windows="all").row_users)


def test_a_resumed_run_keeps_its_early_stop(small_demo, mmsr_home):
    """An early-stopped run that is resumed (a study killed before it recorded the run) trains
    no further epoch: the count of validations since the best one is carried over."""
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run

    # lr 0: every validation equals the first, so epochs 2 and 3 do not improve and patience 2 stops at 3.
    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=6", "optim.batch_size=32",
                 "optim.lr=0.0", "early_stop_patience=2"]
    prepared = prepare_run("stopped", None, overrides, log=lambda text: None)
    best = train(prepared.config, prepared.root, from_cache=False, log=lambda text: None)
    metrics = (prepared.root / "metrics.jsonl").read_text()
    assert best["epoch"] == 1 and len(metrics.splitlines()) == 3
    resumed = prepare_run("stopped", resume=True, log=lambda text: None)
    assert resumed.resume
    assert train(resumed.config, resumed.root, from_cache=False, resume=True, log=lambda text: None) == best
    assert (prepared.root / "metrics.jsonl").read_text() == metrics


def test_a_resume_that_lengthens_the_run_equals_the_longer_run(small_demo, mmsr_home):
    """`--resume --set optim.epochs=N` on a finished run trains on, step for step, as a run
    started with N epochs: same weights, same records; the run's config says N afterwards."""
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run, run_config

    quiet = lambda text: None  # noqa: E731
    base = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.batch_size=32", "model.dropout=0.2",
            "optim.decay_start_epoch=2"]  # the longer run decays over its third epoch, after the steps taken
    longer = prepare_run("longer", None, base + ["optim.epochs=3"], log=quiet)
    train(longer.config, longer.root, from_cache=False, log=quiet)
    short = prepare_run("short", None, base + ["optim.epochs=2"], log=quiet)
    train(short.config, short.root, from_cache=False, log=quiet)
    assert len((short.root / "metrics.jsonl").read_text().splitlines()) == 2

    resumed = prepare_run("short", None, ["optim.epochs=3"], resume=True, log=quiet)  # on the run's own config
    said = []
    train(resumed.config, resumed.root, from_cache=False, resume=True, log=said.append)
    assert any("optim.epochs 2 -> 3" in line for line in said)
    a, b = (torch.load(run.root / "checkpoints/last.pt", weights_only=True) for run in (longer, short))
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    records = [[_without_seconds(line) for line in (run.root / "metrics.jsonl").read_text().splitlines()]
               for run in (longer, short)]
    assert len(records[0]) == 3 and records[0] == records[1]
    assert run_config(short.root) == longer.config

    again = prepare_run("short", resume=True, log=quiet)  # finished: nothing left, and it says so
    said.clear()
    train(again.config, again.root, from_cache=False, resume=True, log=said.append)
    assert any(line.startswith("nothing to train: the run finished at epoch 3") for line in said)


def _without_seconds(line: str) -> dict:
    record = json.loads(line)
    record.pop("epoch_seconds")
    return record


@pytest.mark.parametrize("change,taken,expected", [
    (["model.dim=32"], 14, "model.dim 16 -> 32"),
    (["optim.epochs=6"], 21, "changes the learning rate of step 16 (epoch 3)"),  # the decay was under way
    (["optim.decay_start_epoch=1"], 14, "changes the learning rate of step 9 (epoch 2)"),
    (["early_stop_patience=2"], 14, "a shorter patience could have stopped the run"),
])
def test_a_resume_that_would_change_steps_taken_is_refused(change, taken, expected, tmp_path):
    from mmsr.errors import MMSRError
    from mmsr.train.schedule import resumed_length_change

    saved = ["model.dim=16", "optim.epochs=4", "optim.decay_start_epoch=2", "early_stop_patience=5"]
    with pytest.raises(MMSRError, match=re.escape(expected)):
        resumed_length_change(_config(saved), _config(saved + change), taken, 7, where=tmp_path)


def test_item_spread_is_what_the_items_differ_by_over_their_length(monkeypatch):
    import mmsr.eval.towers as towers
    from mmsr.eval.towers import item_spread

    assert item_spread(torch.ones(5, 3)) == 0.0  # one vector for every item
    vectors = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)) + 3
    whole = vectors.double()
    expected = float((whole - whole.mean(0)).norm(dim=1).mean() / whole.norm(dim=1).mean())
    monkeypatch.setattr(towers, "_SPREAD_ROWS", 7)  # summed over blocks, as a large catalogue is
    assert item_spread(vectors) == pytest.approx(expected, rel=1e-12)
    assert item_spread(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)  # nothing shared
    shared = torch.tensor([[10.0, 1.0], [10.0, -1.0]])
    assert item_spread(shared) == pytest.approx(1 / np.hypot(10, 1))


def test_validation_records_the_item_spread_and_warns_when_the_items_collapse(small_demo, mmsr_home, monkeypatch):
    import mmsr.train.recipe as recipe
    from mmsr.train.run import prepare_run

    real = recipe.validate
    spreads = iter([None, 0.02])  # epoch 1 as measured, epoch 2 as a collapsed tower would give

    def validate(*args, **kwargs):
        result = real(*args, **kwargs)
        forced = next(spreads)
        return result if forced is None else {**result, "item_spread": forced}

    monkeypatch.setattr(recipe, "validate", validate)
    prepared = prepare_run("spread", None, [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16",
                                            "optim.epochs=2", "optim.batch_size=32"], log=lambda text: None)
    said = []
    recipe.train(prepared.config, prepared.root, from_cache=False, log=said.append)
    records = [json.loads(line) for line in (prepared.root / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["item_spread"] > 0.1 and records[1]["item_spread"] == 0.02
    warnings = [line for line in said if "nearly collapsed" in line]
    assert len(warnings) == 1 and "2.0% of their length" in warnings[0] and "optim.warmup_epochs" in warnings[0]


def test_warmup_ramps_the_learning_rate_then_hands_over_to_the_decay():
    from mmsr.train.schedule import lr_factor

    # 7 steps an epoch: half an epoch of warm-up is 4 steps; the decay starts at epoch 2 of 3.
    factor = lr_factor(_config(["optim.epochs=3", "optim.decay_start_epoch=2", "optim.warmup_epochs=0.5",
                                "optim.final_lr_fraction=0.1"]), 7)
    assert [factor(step) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert factor(14) == 1.0 and factor(21) == pytest.approx(0.1)
    plain = lr_factor(_config(["optim.epochs=3", "optim.decay_start_epoch=2"]), 7)
    assert [plain(step) for step in range(22)][4:] == [factor(step) for step in range(22)][4:]
    assert plain(0) == 1.0  # none by default: the seed's schedule, unchanged
    for bad in ("-1", "3"):
        with pytest.raises(MMSRError, match="optim.warmup_epochs"):
            _config(["optim.epochs=3", f"optim.warmup_epochs={bad}"])


def test_adam_beta2_reaches_every_group_and_a_bad_one_is_refused():
    from torch import nn

    from mmsr.train.schedule import make_optimizer

    model = nn.Module()  # what parameter_groups reads of a recommender: its encoders and item tower
    model.encoders, model.items = nn.ModuleDict(), nn.Linear(3, 2)
    for overrides, beta2 in (([], 0.999), (["optim.adam_beta2=0.98"], 0.98)):
        optimizer, _ = make_optimizer(model, _config(overrides), 5)
        assert [group["betas"] for group in optimizer.param_groups] == [(0.9, beta2)] * len(optimizer.param_groups)
    for bad in ("0", "1", "1.5"):
        with pytest.raises(MMSRError, match="optim.adam_beta2"):
            _config([f"optim.adam_beta2={bad}"])


def test_a_resume_may_change_the_length_and_lengthen_the_patience_only(tmp_path):
    from mmsr.train.schedule import resumed_length_change

    saved = ["optim.epochs=4", "optim.decay_start_epoch=2", "early_stop_patience=5"]
    assert resumed_length_change(_config(saved), _config(saved), 14, 7, where=tmp_path) == {}
    # Before the decay starts, the length may move both ways; a longer patience, or none, is allowed.
    longer = saved + ["optim.epochs=8", "optim.decay_start_epoch=6", "early_stop_patience=0"]
    assert resumed_length_change(_config(saved), _config(longer), 14, 7, where=tmp_path) == {
        "early_stop_patience": (5, 0), "optim.decay_start_epoch": (2, 6), "optim.epochs": (4, 8)}
    assert resumed_length_change(_config(saved), _config(saved + ["optim.epochs=3"]), 7, 7, where=tmp_path) == {
        "optim.epochs": (4, 3)}


@pytest.mark.parametrize("overrides,expected", [
    (["optim.window_stride=5"], "optim.window_stride=5 is ignored with optim.windows='last'"),
    (["optim.windows=all", "split.max_seq_len=10", "optim.window_stride=11"], "between 1 and split.max_seq_len=10"),
    (["optim.windows=all", "optim.window_stride=-1"], "between 1 and split.max_seq_len"),
])
def test_a_window_stride_that_cannot_work_is_refused(overrides, expected):
    from mmsr.errors import MMSRError

    with pytest.raises(MMSRError, match=expected):
        config_lib.load(TrainConfig, None, overrides)
    config_lib.load(TrainConfig, None, ["optim.windows=all", "split.max_seq_len=10", "optim.window_stride=10"])


def test_a_resume_that_reads_items_another_way_than_the_run_started_says_so(tmp_path):
    from mmsr.train.recipe import _say_if_feed_changed
    from mmsr.train.run import run_info

    said = []
    (tmp_path / "run.json").write_text(json.dumps({"from_cache": True}))
    started = run_info(tmp_path).get("from_cache")
    _say_if_feed_changed(started, True, said.append)
    assert said == []
    _say_if_feed_changed(started, False, said.append)
    assert len(said) == 1 and "resume with --from-cache" in said[0]


def test_a_run_whose_dataset_was_regenerated_is_refused_not_evaluated_on_other_data(tmp_path, mmsr_home):
    from mmsr.data.demo import generate_demo
    from mmsr.train.recipe import train
    from mmsr.train.run import load_run, prepare_run

    root = tmp_path / "shop"
    generate_demo(root, name="shop", items=80, users=60, seed=0, image_size=32)
    sets = [f"dataset={root}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "optim.batch_size=32"]
    prepared = prepare_run("r", None, sets, log=lambda text: None)
    train(prepared.config, prepared.root, from_cache=False, log=lambda text: None)
    assert load_run("r", "best", "cpu").dataset.num_items == 80  # the same data: loads

    generate_demo(root, name="shop", items=80, users=60, seed=1, image_size=32, overwrite=True)  # same ids
    with pytest.raises(MMSRError, match="dataset shop has changed since this run trained on it"):
        load_run("r", "best", "cpu")
    resumed = prepare_run("r", None, sets, resume=True, log=lambda text: None)
    with pytest.raises(MMSRError, match="has changed since this run trained"):
        train(resumed.config, resumed.root, from_cache=False, resume=True, log=lambda text: None)


def test_a_missing_cache_names_the_build_command_that_makes_exactly_it(tiny_overrides, tmp_path):
    """The hint is a command line: run as given, it builds the cache this training run reads."""
    import shlex

    from mmsr.cache_stage import load_build_config
    from mmsr.caches import cache_path
    from mmsr.data.dataset import load_dataset
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model

    config = _config(tiny_overrides + ["encoders.image_size=48", "encoders.text_fields=[title]",
                                       "on_bad_image=skip"])
    dataset = load_dataset(config.dataset)
    model = build_model(config, dataset.num_items)
    from mmsr_store import StoreError

    with pytest.raises(StoreError, match="cache not found") as error:
        open_feed(config, model, dataset, True, torch.device("cpu"))
    command = shlex.split(error.value.hint.split(": ", 1)[1])
    assert command[:4] == ["mmsr", "cache", "build", "--dataset"]
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    built = load_build_config(None, sets, dataset=command[4])
    assert built.encoders == config.encoders and built.on_bad_image == "skip"
    assert cache_path(load_dataset(command[4]), built.encoders) == Path(error.value.where)
