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

CONFIG = {"seed": 3, "train_batch_size": 256, "selected_features": ["class"], "MAX_ITEM_LIST_LENGTH": 50,
          "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "learning_rate": 0.001,
          "loss_type": "CE"}


class StandInTrainer:
    """What resume() touches of RecBole's Trainer: resume_checkpoint sets start_epoch and the best score."""

    def __init__(self):
        self.loaded = None

    def resume_checkpoint(self, path):
        self.loaded = Path(path)
        stored = torch.load(path, map_location="cpu", weights_only=False)
        self.start_epoch, self.best_valid_score = stored["epoch"] + 1, stored["best_valid_score"]


def _checkpoint(folder: Path, epoch: int = 21, **changed) -> Path:
    path = folder / "saved" / "FDSA-stopped.pth"
    path.parent.mkdir(parents=True)
    torch.save({"config": {**CONFIG, **changed}, "epoch": epoch, "best_valid_score": 0.0722}, path)
    return path


def test_trains_on_from_a_copy_and_leaves_the_stopped_run_alone(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped")
    before = stopped.read_bytes()
    trainer = StandInTrainer()
    state = recbole_fdsa.resume(trainer, CONFIG, stopped, tmp_path / "on" / "saved", epochs=300)
    assert trainer.loaded == tmp_path / "on" / "saved" / stopped.name
    assert trainer.loaded.read_bytes() == before and stopped.read_bytes() == before
    # epochs count from the first run's epoch 1: the checkpoint holds 22 trained epochs
    assert state["best_epoch"] == state["epochs_run"] == 22
    assert state["resumed_from"] == {"checkpoint": str(stopped.resolve()), "epoch": 22, "best_valid_score": 0.0722}


def test_refuses_the_out_folder_own_checkpoint(tmp_path):
    stopped = _checkpoint(tmp_path)
    with pytest.raises(SystemExit, match="give --out a new folder"):
        recbole_fdsa.resume(StandInTrainer(), CONFIG, stopped, stopped.parent, epochs=300)


@pytest.mark.parametrize("key, value", [("seed", 4), ("train_batch_size", 128), ("selected_features", ["class", "movie_title"])])
def test_refuses_a_checkpoint_of_other_settings_naming_the_setting(tmp_path, key, value):
    stopped = _checkpoint(tmp_path / "stopped", **{key: value})
    trainer = StandInTrainer()
    with pytest.raises(SystemExit, match=f"the checkpoint's {key} is"):
        recbole_fdsa.resume(trainer, CONFIG, stopped, tmp_path / "on" / "saved", epochs=300)
    assert trainer.loaded is None and not (tmp_path / "on").exists()


def test_refuses_a_checkpoint_with_no_epoch_left(tmp_path):
    stopped = _checkpoint(tmp_path / "stopped", epoch=21)
    with pytest.raises(SystemExit, match="nothing is left to train; --from-checkpoint tests it"):
        recbole_fdsa.resume(StandInTrainer(), CONFIG, stopped, tmp_path / "on" / "saved", epochs=22)
