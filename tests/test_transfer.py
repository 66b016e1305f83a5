"""`init_from` (transfer, seed §7.2): a content model starts from a run trained on another
catalogue, exactly, reproducibly, once; what cannot transfer is refused before training."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig


def _tiny(models: dict, dataset) -> list[str]:
    """conftest's tiny_overrides, for module-scoped fixtures (the source run is trained once)."""
    return [f"dataset={dataset}", f"encoders.text_model={models['text']}",
            f"encoders.vision_model={models['vision']}", "encoders.text_top_blocks=1",
            "encoders.vision_top_blocks=1", "encoders.max_text_len=16", "encoders.image_size=32",
            "model.dim=32", "optim.batch_size=32", "optim.lr=0.003", "optim.epochs=1",
            "split.sample_users=64", "eval_batch_size=128"]


def _config(overrides) -> TrainConfig:
    return config_lib.load(TrainConfig, None, overrides)


def _train(overrides, run_dir, **kwargs):
    from mmsr.train.recipe import train

    logged = []
    train(_config(overrides), run_dir, from_cache=False, log=logged.append, **kwargs)
    return logged


def _weights(run_dir, name="last.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def other_domain(tmp_path_factory):
    """Dataset B: demo domain 1, another catalogue (other items, ids and size) than small_demo."""
    from mmsr.data.demo import generate_demo

    root = tmp_path_factory.mktemp("datasets") / "demo-d1"
    generate_demo(root, name="demo-d1", items=240, users=150, seed=0, domain=1, image_size=64)
    return root


@pytest.fixture(scope="module")
def source(tiny_models, small_demo, tmp_path_factory):
    """A content run trained one epoch on small_demo (dataset A); its path and overrides."""
    overrides = _tiny(tiny_models, small_demo)
    root = tmp_path_factory.mktemp("runs") / "source"
    _train(overrides, root)
    return root, overrides


def _target(source_overrides, dataset, source_root, *extra) -> list[str]:
    return [*source_overrides, f"dataset={dataset}", f"init_from={source_root}", *extra]


def test_content_model_transfers_whole_to_another_catalogue(source, other_domain, tmp_path):
    root, overrides = source
    run = tmp_path / "target"
    # lr 0 (AdamW's decay is scaled by lr too): after an epoch the weights are still the init.
    logged = _train(_target(overrides, other_domain, root, "optim.lr=0", "optim.encoder_lr=0"), run)
    init = json.loads((run / "init.json").read_text())
    source_weights = _weights(root, "best.pt")["model"]
    assert init["checkpoint"] == str(root / "checkpoints" / "best.pt")
    assert init["missing_in_source"] == [] and init["shape_mismatch"] == {} and init["source_only"] == []
    assert sorted(init["copied"]) == sorted(source_weights) and init["total"] == len(source_weights)
    assert any(f"copied {len(source_weights)} of {len(source_weights)} tensors" in line for line in logged)
    target_weights = _weights(run)["model"]
    assert target_weights.keys() == source_weights.keys()
    for key, value in source_weights.items():
        assert torch.equal(target_weights[key], value), key
    assert json.loads((run / "config.json").read_text())["init_from"] == str(root)


def test_init_is_reproducible_and_not_reapplied_on_resume(source, other_domain, tmp_path):
    import contextlib

    root, overrides = source
    target = _target(overrides, other_domain, root, "optim.epochs=2", "optim.batch_size=16",
                     "checkpoint_every_steps=1")
    _train(target, tmp_path / "a")
    _train(target, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    class Stop(Exception):
        pass

    stop_at = a["global_step"] - 2  # in the second epoch
    left = [stop_at]

    @contextlib.contextmanager
    def stop_after_step(description, total, unit="items"):
        def advance(n=1):
            left[0] -= n
            if left[0] == 0:
                raise Stop  # after the step's checkpoint (checkpoint_every_steps=1)
        yield advance

    with pytest.raises(Stop):
        _train(target, tmp_path / "c", progress=stop_after_step)
    assert _weights(tmp_path / "c")["global_step"] == stop_at and stop_at > a["global_step"] // 2
    moved = root.with_name("source-away")
    shutil.move(root, moved)  # the resumed run needs nothing from the source
    try:
        _train(target, tmp_path / "c", resume=True)
    finally:
        shutil.move(moved, root)
    c = _weights(tmp_path / "c")
    assert c["global_step"] == a["global_step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], c["model"][key]), key
    assert (tmp_path / "c" / "metrics.jsonl").read_text() != ""
    last = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("a", "c")]
    assert last[0]["loss"] == last[1]["loss"] and last[0]["valid"] == last[1]["valid"]


def test_other_model_settings_copy_what_matches(source, other_domain):
    from mmsr.data.dataset import load_dataset
    from mmsr.train.model import build_model
    from mmsr.train.run import init_from_source, init_summary, transfer_source

    root, overrides = source
    config = _config(_target(overrides, other_domain, root, "model.fusion=gate", "model.sequence_layers=1"))
    dataset = load_dataset(other_domain)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items)
    record = init_from_source(model, transfer_source(config))
    source_weights = _weights(root, "best.pt")["model"]
    assert record["copied"] and record["missing_in_source"] and record["source_only"]
    assert all(key.startswith("items.fusion.") for key in record["missing_in_source"])
    assert any(key.startswith("user.") for key in record["source_only"])  # the second SASRec layer
    assert any(key.startswith("items.encoders.") for key in record["copied"])
    state = model.state_dict()
    for key in record["copied"]:
        assert torch.equal(state[key], source_weights[key]), key
    summary = init_summary(record)
    assert summary.startswith(f"copied {len(record['copied'])} of {record['total']} tensors from {root}")
    assert "; not copied: items.fusion." in summary


def test_input_settings_may_differ(source, other_domain):
    from mmsr.train.run import transfer_source

    root, overrides = source
    config = _config(_target(overrides, other_domain, root, "encoders.max_text_len=12", "encoders.image_size=48",
                             "encoders.text_fields=[title]"))
    assert transfer_source(config).checkpoint.name == "best.pt"


@pytest.mark.parametrize("extra,message", [
    (["model.kind=idsr"], "model.kind=idsr: item-ID embeddings cannot transfer to another catalogue"),
    (["model.kind=vqrec"], "model.kind=vqrec: item-ID embeddings"),
    (["encoders.text_top_blocks=2"], "encoders.text_top_blocks 1 there, 2 here"),
    (["encoders.vision_model="], "encoders.vision_model"),
])
def test_refusals_before_training(source, other_domain, tmp_path, extra, message):
    root, overrides = source
    with pytest.raises(MMSRError, match=message) as error:
        _train(_target(overrides, other_domain, root, *extra), tmp_path / "target")
    assert error.value.hint and error.value.where
    assert not (tmp_path / "target" / "metrics.jsonl").exists() and not (tmp_path / "target" / "config.json").exists()


def test_missing_source_refused(small_demo, tmp_path, mmsr_home):
    from mmsr.train.run import transfer_source

    with pytest.raises(MMSRError, match="init_from=nope: no such run") as error:
        transfer_source(_config([f"dataset={small_demo}", "init_from=nope"]))
    assert str(error.value.where) == str(mmsr_home / "runs" / "nope")
    empty = mmsr_home / "runs" / "untrained"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text(json.dumps({"dataset": str(small_demo)}))
    with pytest.raises(MMSRError, match="the run has no checkpoint"):
        transfer_source(_config([f"dataset={small_demo}", "init_from=untrained"]))
    with pytest.raises(MMSRError, match="initialised from itself"):
        transfer_source(_config([f"dataset={small_demo}", "init_from=untrained"]), empty)


def test_id_source_refused(small_demo, tmp_path):
    from mmsr.train.run import transfer_source

    ids = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "optim.batch_size=64",
           "split.sample_users=32"]
    _train(ids, tmp_path / "ids")
    with pytest.raises(MMSRError, match="the source run's model.kind=idsr: item-ID embeddings"):
        transfer_source(_config([f"dataset={small_demo}", f"init_from={tmp_path / 'ids'}"]))


def test_id_flag_matches_the_item_towers(tiny_models, small_demo):
    """`needs=("item_ids",)` in MODEL_KINDS says what the built item tower reads."""
    from mmsr.data.dataset import load_dataset
    from mmsr.train.kinds import MODEL_KINDS
    from mmsr.train.model import build_model

    dataset = load_dataset(small_demo)
    for kind in MODEL_KINDS.names():
        config = _config(_tiny(tiny_models, small_demo) + [f"model.kind={kind}"])
        model = build_model(config, dataset.num_items, item_field=dataset.item_field)
        assert ("item_ids" in MODEL_KINDS.needs(kind)) == ("ids" in model.item_inputs), kind


def test_flag_and_set_are_one_setting(small_demo, mmsr_home):
    from mmsr.train.run import prepare_run

    (mmsr_home / "runs" / "src" / "checkpoints").mkdir(parents=True)
    base = [f"dataset={small_demo}", "model.kind=idsr"]
    with pytest.raises(MMSRError, match="item-ID"):  # the flag reaches the config, and is checked
        prepare_run("t", None, base, {"init_from": "src"}, log=lambda *_: None)
    with pytest.raises(MMSRError, match="item-ID"):
        prepare_run("t", None, base + ["init_from=src"], log=lambda *_: None)
    prepared = prepare_run("t", None, [f"dataset={small_demo}"], {"init_from": None}, log=lambda *_: None)
    assert prepared.config.init_from == ""


def test_refusal_keeps_an_existing_run(small_demo, mmsr_home):
    """--overwrite deletes nothing when the init is refused."""
    existing = mmsr_home / "runs" / "kept"
    existing.mkdir(parents=True)
    (existing / "config.json").write_text("{}")
    env = dict(os.environ, MMSR_HOME=str(mmsr_home), MMSR_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "mmsr_cli.app", "train", "--run", "kept", "--overwrite",
                             "--init-from", "nope", "--set", f"dataset={small_demo}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "init_from=nope: no such run" in lines[0], result.stderr
    assert (existing / "config.json").is_file()


def test_runs_saved_before_init_from_still_resume(source):
    from mmsr.train.run import run_config
    from mmsr.train.schedule import resumed_length_change

    root, overrides = source
    saved = json.loads((root / "config.json").read_text())
    older = root.with_name("older")
    older.mkdir(exist_ok=True)
    (older / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "init_from"}))
    # Rebuilt with the missing key's default, the saved config is the config the resume gives.
    assert resumed_length_change(run_config(older), _config(overrides), 0, 1, where=older) == {}
