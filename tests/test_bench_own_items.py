"""bench/own_items.py on a tiny trained run: its per-case counts are the two protocols' exact ranks
taken apart, and its share of own items scored as training negatives follows the loss's
candidates and `optim.own_items`. No figure of a real model is asserted: those belong to the
benchmark."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from test_train import _config, _train, built_cache  # noqa: F401  (a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import own_items  # noqa: E402  (bench/own_items.py)

# Short inputs, so that most test cases have own items the model never reads.
IDSR = ["model.kind=idsr", "split.max_seq_len=4", "optim.loss=mixed", "optim.own_items=later-masked",
        "optim.epochs=1"]


def _with(loaded, overrides):
    """The run's split with another training config: what `training_negatives` reads of a run."""
    return SimpleNamespace(config=_config(overrides), split=loaded.split)


def test_counts_split_the_gap_between_the_protocols_exactly(built_cache, tmp_path):
    from mmsr.eval.runner import case_ranks
    from mmsr.train.run import load_run

    _train(built_cache + IDSR, tmp_path / "run")
    loaded = load_run(tmp_path / "run", device="cpu")
    counts = own_items.case_counts(loaded, "test", newest=3)
    ranks = {masked: case_ranks(loaded.model, loaded.feed, loaded.split, "test", max_k=loaded.split.num_items,
                                mask_history=masked, batch_size=64, device=torch.device("cpu"),
                                search_backend="dense").ranks
             for masked in (True, False)}
    assert np.array_equal(counts["others"] + 1, ranks[True])
    assert np.array_equal(counts["others"] + counts["read"] + counts["older"] + 1, ranks[False])
    assert counts["older"].sum() > 0 and counts["read"].sum() > 0  # both kinds occur, so the split is tested
    assert counts["read"].max() <= 4  # the model reads four items
    summary = own_items.summarise(counts)
    lost = (ranks[True] <= 10) & (ranks[False] > 10)
    assert summary["hits_lost"] == round(float(lost.mean()), 4)
    assert 0 <= summary["hits_lost_to_older_only"] <= summary["hits_lost"]
    assert len(summary["newest_in_top10"]) == 3


def test_training_negatives_follow_the_candidates_and_the_own_items_setting(built_cache, tmp_path):
    from mmsr.train.run import load_run

    _train(built_cache + IDSR, tmp_path / "run")
    loaded = load_run(tmp_path / "run", device="cpu")
    sampled = own_items.training_negatives(loaded, steps=3)
    assert 0 < sampled < 1  # the batch's candidates hold some of a position's earlier own items, not all
    everything = built_cache + ["model.kind=idsr", "split.max_seq_len=4", "optim.loss=softmax"]
    assert own_items.training_negatives(_with(loaded, everything + ["optim.own_items=negatives"]), 3) == 1.0
    # Earlier items stay negatives when only the later ones are taken out; all-masked takes out every one.
    assert own_items.training_negatives(_with(loaded, everything + ["optim.own_items=later-masked"]), 3) == 1.0
    assert own_items.training_negatives(_with(loaded, everything + ["optim.own_items=all-masked"]), 3) == 0.0
    assert own_items.training_negatives(_with(loaded, built_cache + ["optim.loss=bce"]), 3) is None
