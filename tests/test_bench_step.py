"""bench/step_flops.py, bench/train_profile.py and bench/grad_norms.py on the tiny encoders: the
first counts every batch of the first epoch as the trainer builds them, following the model's
shape; the second profiles the recipe's own steps; the third measures those steps' gradient norms
before clipping. No timing is asserted: the figures belong to the benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_train import built_cache  # noqa: F401  (a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _run(bench, overrides, capsys, *extra):
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo-cpu.toml")]
    for override in overrides:
        argv += ["--set", override]
    bench.main(argv + list(extra))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _count(overrides, capsys, *extra):
    import step_flops

    return _run(step_flops, overrides, capsys, *extra)


def test_step_flops_counts_each_batch_and_follows_the_model(tiny_overrides, capsys):
    import zarr

    from mmsr import config as config_lib
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches
    from mmsr.train.config import TrainConfig

    one = _count(tiny_overrides, capsys, "--epoch-seconds", "2.0", "4.0")
    config = config_lib.load(TrainConfig, None, tiny_overrides)
    batches = TrainBatches.for_config(split_dataset(load_dataset(config.dataset), config.split), config)
    assert one["steps"] == len(batches)
    spread = one["distinct_items_per_step"]
    assert 0 < spread["min"] <= spread["median"] <= spread["max"] <= one["items"]
    # The states per item it counts are the ones the cache holds (text: at most its budget).
    cache = build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0).path
    held = {m: zarr.open_array(cache / "store.zarr" / m / "hidden", mode="r").shape[1] for m in one["tokens"]}
    assert one["tokens"] == held
    # An epoch measured twice as long achieved half the rate.
    fast, slow = one["achieved_tflop_per_s"]
    assert fast > 0 and fast == pytest.approx(2 * slow, rel=1e-2)

    # One more fine-tuned vision block: twice the vision top's arithmetic per item, the rest as it was.
    two = _count(tiny_overrides + ["encoders.vision_top_blocks=2"], capsys)
    image_one, image_two = one["per_item_forward_gflop"]["image"], two["per_item_forward_gflop"]["image"]
    assert image_two["upper"] == pytest.approx(2 * image_one["upper"], rel=1e-3)
    assert two["per_item_forward_gflop"]["text"] == one["per_item_forward_gflop"]["text"]
    assert two["step_gflop_median"] > one["step_gflop_median"]


def test_train_profile_splits_the_recipes_steps_by_phase_and_operator_kind(built_cache, capsys):
    import train_profile

    report = _run(train_profile, built_cache, capsys, "--steps", "2", "--warmup", "1", "--top", "5")
    assert report["steps"] == 2 and report["device"] == "cpu" and report["time_measured"] == "self CPU time"
    phases = report["phase_seconds_median"]
    assert set(phases) == {"step", "feed", "forward", "backward", "optimizer"}
    assert all(seconds > 0 for seconds in phases.values())
    shares = report["share_by_kind"]
    # AdamW's element-wise ops run inside its step: counted as the optimizer's, not as "other".
    assert shares["matmul and attention"] > 0 and shares["optimizer"] > 0.001
    assert 0 < report["busy_share"] <= 1.05
    assert len(report["top_operators"]) == 5 and all(op["calls_per_step"] > 0 for op in report["top_operators"])
    calls = report["top_calls_by_shape"]
    assert len(calls) == 5 and all(call["ms_per_call"] > 0 for call in calls)
    # Calls on tensors say their shapes, the others "-". Which call is largest depends on the machine's
    # load (a preempted small op can top the list: seen in CI), so no position is asserted.
    assert all(call["input_shapes"].startswith("[") or call["input_shapes"] == "-" for call in calls)
    assert any(call["input_shapes"].startswith("[") for call in calls)
    assert train_profile.kind_of("aten::addmm") == "matmul and attention"
    assert train_profile.kind_of("aten::_to_copy") == "copies and casts"
    assert train_profile.kind_of("aten::relu") == "other"


def test_token_trim_times_the_step_with_and_without_the_trim(tiny_overrides, capsys):
    """bench/token_trim.py on a token-level fusion: every arm runs, the trimmed ones on fewer
    text slots than the cache holds, the length groups on no more than one trimmed call; the
    picture's patches are never trimmed; the trim is restored after."""
    import token_trim

    from mmsr import config as config_lib
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.models import layers
    from mmsr.train.config import TrainConfig

    overrides = tiny_overrides + ["encoders.max_text_len=60", "model.fusion=merge-attn"]
    config = config_lib.load(TrainConfig, None, overrides)
    build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0)
    trim = layers.trim_padding
    report = _run(token_trim, overrides, capsys, "--steps", "1", "--warmup", "0", "--groups", "2")
    assert layers.trim_padding is trim
    assert set(report["step_seconds_median"]) == {"trimmed", "untrimmed", "groups-2"}
    assert all(seconds > 0 for seconds in report["step_seconds_median"].values())
    share = report["slots_run_share"]
    # The tiny DINOv2's 17 patch tokens, all used; the small demo's texts leave some of 60 slots.
    assert all(share[arm]["17"] == 1.0 for arm in share)
    assert share["untrimmed"]["60"] == 1.0 and 0 < share["groups-2"]["60"] < share["trimmed"]["60"] < 1.0
    calls = report["calls_per_step"]
    assert calls["groups-2"]["60"] == 2 * calls["trimmed"]["60"] and calls["groups-2"]["17"] == calls["groups-2"]["60"]
    assert report["untrimmed_over_trimmed"] > 0 and report["trimmed_over_groups"]["2"] > 0


def test_token_trim_reads_its_group_counts_and_refuses_an_empty_member():
    import token_trim

    assert token_trim.group_counts("2, 4,8") == [2, 4, 8]
    for text in ("2,,4", "4,", "two"):
        with pytest.raises(ValueError):  # argparse turns it into "invalid group_counts value"
            token_trim.group_counts(text)


def test_grad_norms_measures_unclipped_norms_without_moving_the_weights(built_cache, capsys, tmp_path):
    """bench/grad_norms.py: the same batches give the same norms at every call (no weight moves), a
    checkpoint's weights give their own, the clipped share follows the config's clip, and a
    checkpoint of another model is refused by name."""
    import grad_norms
    import torch

    first = _run(grad_norms, built_cache, capsys, "--batches", "2")["points"]["initial"]
    again = _run(grad_norms, built_cache, capsys, "--batches", "2")["points"]["initial"]
    assert first == again and first["batches"] == 2
    assert 0 < first["min"] <= first["median"] <= first["max"]
    below = _run(grad_norms, built_cache + [f"optim.grad_clip={first['min'] / 2}"], capsys, "--batches", "2")
    above = _run(grad_norms, built_cache + [f"optim.grad_clip={first['max'] * 2}"], capsys, "--batches", "2")
    assert below["points"]["initial"]["share_clipped"] == 1.0 and above["points"]["initial"]["share_clipped"] == 0.0
    # Norms before clipping: the clip setting does not change them.
    assert below["points"]["initial"]["median"] == first["median"]

    config, _device, model, *_ = grad_norms.setup_from(str(Path(__file__).resolve().parents[1] / "configs" /
                                                         "demo-cpu.toml"), built_cache)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    scaled = tmp_path / "scaled.pt"
    torch.save({"model": model.state_dict()}, scaled)
    points = _run(grad_norms, built_cache, capsys, "--batches", "2", "--checkpoint", str(scaled))["points"]
    assert points["initial"] == first and points[str(scaled)]["median"] != first["median"]
    # As `mmsr train` writes it: the trainable tensors only, the frozen pretrained ones left out.
    from mmsr.train.model import trainable_state

    trained = tmp_path / "trained.pt"
    torch.save({"model": trainable_state(model)}, trained)
    assert len(trainable_state(model)) < len(model.state_dict())  # this model has frozen tensors to leave out
    points = _run(grad_norms, built_cache, capsys, "--batches", "2", "--checkpoint", str(trained))["points"]
    assert points["initial"] == first and points[str(trained)]["median"] != first["median"]  # loaded, not refused

    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"not.a.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(SystemExit, match="foreign.pt is not a checkpoint of this config's model"):
        _run(grad_norms, built_cache, capsys, "--checkpoint", str(foreign))
