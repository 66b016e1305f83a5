"""bench/recbole_fdsa.py --resume, without RecBole: which checkpoints it refuses, and that it trains
on from a copy, never from the stopped run's own file. The trainer is a stand-in that records what
RecBole's Trainer.resume_checkpoint would be given; RecBole itself lives in a throw-away venv that CI
does not have (the real resume is measured in docs/compare.md, "RecBole's seed 3 continued to its
patience")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import recbole_fdsa  # noqa: E402  (bench/recbole_fdsa.py)

# every setting the check reads, each with a value of its own; the ones the tests change are RecBole's
CONFIG = {**{key: f"value of {key}" for key in recbole_fdsa.CONFIG_KEYS}, "model": "FDSA", "dataset": "ml-100k",
          "seed": 3, "train_batch_size": 256, "selected_features": ["class"], "epochs": 300}


class StandInTrainer:
    """What resume() touches of RecBole's Trainer: resume_checkpoint sets start_epoch and the best score."""

    def __init__(self):
        self.loaded = None

    def resume_checkpoint(self, path):
        self.loaded = Path(path)
        stored = torch.load(path, map_location="cpu", weights_only=False)
        self.start_epoch, self.best_valid_score = stored["epoch"] + 1, stored["best_valid_score"]


def _checkpoint(folder: Path, epoch: int = 21, missing: str | None = None, **changed) -> Path:
    path = folder / "saved" / "FDSA-stopped.pth"
    path.parent.mkdir(parents=True)
    config = {key: value for key, value in {**CONFIG, **changed}.items() if key != missing}
    torch.save({"config": config, "epoch": epoch, "best_valid_score": 0.0722}, path)
    return path


def _with(**changed) -> dict:
    return {**CONFIG, **changed}


def test_trains_on_from_a_copy_and_leaves_the_stopped_run_alone(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped")
    before = stopped.read_bytes()
    trainer = StandInTrainer()
    # a continuation may run longer, with another patience and evaluation batch
    state = recbole_fdsa.resume(trainer, _with(epochs=400, stopping_step=20, eval_batch_size=1024), stopped,
                                tmp_path / "on" / "saved")
    assert trainer.loaded == tmp_path / "on" / "saved" / stopped.name
    assert trainer.loaded.read_bytes() == before and stopped.read_bytes() == before
    # epochs count from the first run's epoch 1: the checkpoint holds 22 trained epochs
    assert state["best_epoch"] == state["epochs_run"] == 22
    assert state["resumed_from"] == {"checkpoint": str(stopped.resolve()), "epoch": 22, "best_valid_score": 0.0722,
                                     "copy": str(trainer.loaded)}


def test_refuses_the_out_folder_own_checkpoint(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped")  # a stopped run without its result.json: killed, say
    with pytest.raises(SystemExit, match="give --out a new folder"):
        _outer(tmp_path, "--out", str(tmp_path / "stopped"), "--resume", str(stopped))


@pytest.mark.parametrize("key, value", [("seed", 4), ("train_batch_size", 128), ("selected_features", ["class", "movie_title"]),
                                        ("valid_metric", "HIT@10"), ("model", "SASRec")])
def test_refuses_a_checkpoint_of_other_settings_naming_the_setting(tmp_path, key, value):
    stopped = _checkpoint(tmp_path / "stopped", **{key: value})
    trainer = StandInTrainer()
    with pytest.raises(SystemExit, match=f"the checkpoint's {key} is"):
        recbole_fdsa.resume(trainer, CONFIG, stopped, tmp_path / "on" / "saved")
    assert trainer.loaded is None and not (tmp_path / "on").exists()


@pytest.mark.parametrize("missing", ["selected_features", "loss_type"])
def test_refuses_a_checkpoint_that_is_not_this_scripts(tmp_path, missing):
    stopped = _checkpoint(tmp_path / "stopped", missing=missing)
    with pytest.raises(SystemExit, match=f"not an FDSA checkpoint of this script \\(it has no {missing}\\)"):
        recbole_fdsa.resume(StandInTrainer(), CONFIG, stopped, tmp_path / "on" / "saved")
    weights_only = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, weights_only)
    with pytest.raises(SystemExit, match="not a RecBole checkpoint"):
        recbole_fdsa.resume(StandInTrainer(), CONFIG, weights_only, tmp_path / "on" / "saved")


def test_refuses_a_checkpoint_with_no_epoch_left_and_takes_one_with_one(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped", epoch=21)  # 22 epochs trained
    with pytest.raises(SystemExit, match="nothing is left to train; --from-checkpoint tests it"):
        recbole_fdsa.resume(StandInTrainer(), _with(epochs=22), stopped, tmp_path / "on" / "saved")
    state = recbole_fdsa.resume(StandInTrainer(), _with(epochs=23), stopped, tmp_path / "on" / "saved")
    assert state["epochs_run"] == 22


def _outer(tmp_path, *argv):
    """outer()'s checks, which run before RecBole's venv is started."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").touch()
    args = recbole_fdsa.parse(["--venv", str(venv), *argv])
    return recbole_fdsa.outer(args)


def test_refuses_before_starting_recbole(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped")
    with pytest.raises(SystemExit, match="give one of them"):
        _outer(tmp_path, "--out", str(tmp_path / "on"), "--resume", str(stopped), "--from-checkpoint", str(stopped))
    with pytest.raises(SystemExit, match="--resume: no checkpoint file at .*nowhere.pth"):
        _outer(tmp_path, "--out", str(tmp_path / "on"), "--resume", str(tmp_path / "nowhere.pth"))
    (tmp_path / "stopped" / "result.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run .*give --out a new folder"):
        _outer(tmp_path, "--out", str(tmp_path / "stopped"), "--resume", str(stopped))
