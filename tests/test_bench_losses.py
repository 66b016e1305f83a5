"""bench/losses.py's --seeds: one run per seed, named apart for `mmsr compare`, and a row of
means ± sample standard deviations. The training itself is stubbed: its figures belong to the
benchmark, and what is checked here is the bookkeeping around it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import losses  # noqa: E402  (bench/losses.py)

HR = {None: 0.10, 2020: 0.10, 1: 0.12, 2: 0.14}  # None: the profile's own seed


def _figures(seed):
    one = {"HR@10": HR[seed], "NDCG@10": HR[seed] / 2, "cases": 943}
    return {"valid": dict(one), **{f"{s}_{p}": dict(one) for s, p in losses.SPLITS["ml-100k"]}}


def _bench(monkeypatch, capsys, tmp_path, *argv, fail=()):
    calls = []

    def run_one(dataset, model, loss, sets, env, home, log, seed=None, resume=False):
        calls.append((model, loss, seed) + (("resume",) if resume else ()))
        return {"error": "the trainer refused it"} if seed in fail else _figures(seed)

    monkeypatch.setattr(losses, "run_one", run_one)
    monkeypatch.setattr(losses, "prepare", lambda *args: {"users": 943})
    losses.main(["--datasets", "ml-100k", "--models", "idsr", "--losses", "mixed", "--home", str(tmp_path), *argv])
    return calls, json.loads(capsys.readouterr().out.strip().splitlines()[-1])["datasets"]["ml-100k"]


def test_every_seed_runs_and_a_row_gives_their_mean_and_spread(monkeypatch, capsys, tmp_path):
    calls, printed = _bench(monkeypatch, capsys, tmp_path, "--seeds", "2020,1,2")
    assert calls == [("idsr", "mixed", 2020), ("idsr", "mixed", 1), ("idsr", "mixed", 2)]
    runs = printed["runs"]
    assert [k for k in runs] == ["idsr/mixed, seed 2020", "idsr/mixed, seed 1", "idsr/mixed, seed 2",
                                 "idsr/mixed, mean ± sd of 3 seeds"]
    summary = runs["idsr/mixed, mean ± sd of 3 seeds"]
    # mean of 0.10, 0.12, 0.14 is 0.12; sample sd sqrt((0.02² + 0 + 0.02²) / 2) = 0.02
    assert summary["test_recbole"]["HR@10"] == 0.12 and summary["test_recbole"]["HR@10_sd"] == 0.02
    assert summary["valid"]["NDCG@10"] == 0.06 and summary["valid"]["NDCG@10_sd"] == 0.01
    assert summary["seeds"] == 3 and summary["failed"] == 0
    row = next(line for line in printed["table"].splitlines() if "mean ± sd" in line)
    assert "0.1200 ± 0.0200 / 0.0600 ± 0.0100" in row


def test_a_failed_seed_is_left_out_of_the_mean_and_counted(monkeypatch, capsys, tmp_path):
    _, printed = _bench(monkeypatch, capsys, tmp_path, "--seeds", "2020,1,2", fail=(1,))
    summary = printed["runs"]["idsr/mixed, mean ± sd of 3 seeds"]
    assert summary["seeds"] == 2 and summary["failed"] == 1
    assert summary["test_paper"]["HR@10"] == 0.12  # (0.10 + 0.14) / 2
    assert "no result: the trainer refused it" in printed["table"]


def test_without_seeds_one_run_keeps_its_old_name(monkeypatch, capsys, tmp_path):
    calls, printed = _bench(monkeypatch, capsys, tmp_path)
    assert calls == [("idsr", "mixed", None)] and list(printed["runs"]) == ["idsr/mixed"]


def test_a_seed_run_is_named_for_its_seed_and_overrides_a_seed_in_the_sets(monkeypatch, tmp_path):
    seen = {}

    def train_and_evaluate(run, config, overrides, splits, env, home, log, resume=False):
        seen.update(run=run, overrides=overrides)
        return {}

    monkeypatch.setattr(losses, "train_and_evaluate", train_and_evaluate)
    losses.run_one("ml-100k", "idsr", "mixed", ["seed=5"], {}, tmp_path, print, seed=1)
    assert seen["run"] == "bench-losses-ml-100k-idsr-mixed-seed1"
    assert seen["overrides"][-1] == "seed=1" and "seed=5" in seen["overrides"]  # the last --set wins


def test_the_content_cache_is_built_for_the_runs_encoder_settings(monkeypatch, tmp_path):
    """A --set of the encoders asks for another cache than the profile's: it is built with them
    (and only them: the loss and the seed do not key a cache)."""
    commands = []
    monkeypatch.setattr(losses, "sh", lambda command, env, log: commands.append(command))
    monkeypatch.setattr(losses, "train_and_evaluate", lambda *args, **kwargs: {})
    losses.run_one("ml-100k", "content", "mixed", ["encoders.text_top_blocks=1", "model.dropout=0.3"], {},
                   tmp_path, print, seed=1)
    build = commands[-1]
    assert build[-6:] == ["cache", "build", "--config", "configs/movielens-mmsrt.toml", "--set",
                          "encoders.text_top_blocks=1"]


def test_resume_continues_each_run_instead_of_starting_it_again(monkeypatch, capsys, tmp_path):
    import movielens

    calls, _ = _bench(monkeypatch, capsys, tmp_path, "--seeds", "2020,1", "--resume")
    assert calls == [("idsr", "mixed", 2020, "resume"), ("idsr", "mixed", 1, "resume")]
    commands = []

    def sh(command, env, log):  # the train command is all this checks: stop there
        commands.append(command)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(movielens, "sh", sh)
    for resume in (True, False):
        movielens.train_and_evaluate("r", "configs/movielens-idsr.toml", [], [], {}, tmp_path, print, resume=resume)
    assert "--resume" in commands[0] and "--overwrite" not in commands[0]
    assert "--overwrite" in commands[1] and "--resume" not in commands[1]


def test_seeds_that_are_not_numbers_are_refused(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        _bench(monkeypatch, capsys, tmp_path, "--seeds", "1,two")
    assert stopped.value.code == 2 and "--seeds takes whole numbers" in capsys.readouterr().err


@pytest.mark.parametrize("dataset,model", [(d, m) for d in losses.PROFILES for m in losses.PROFILES[d]])
def test_every_loss_row_is_a_config_the_trainer_accepts(dataset, model):
    """Each row changes the loss alone: a profile's setting for its own loss (IDSR's
    `own_items`, the `negatives="any"` of BCE) must not get another loss's row refused."""
    from mmsr import config as config_lib
    from mmsr.errors import MMSRError
    from mmsr.train.config import TrainConfig
    from mmsr.train.losses import LOSSES

    for loss in losses.LOSSES:
        path, overrides = losses.loss_overrides(dataset, model, loss, [], seed=3)
        if loss == "softmax" and model == "content":  # refused by design, reported as the row's error
            with pytest.raises(MMSRError, match="every item"):
                config_lib.load(TrainConfig, path, overrides)
            continue
        config = config_lib.load(TrainConfig, path, overrides)
        assert (config.optim.loss, config.seed) == (loss, 3)
