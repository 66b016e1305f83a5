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
    from mmsr.eval.towers import item_matrix, user_matrix
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

    # The split, the newest items' places and the hits lost, case by case from the scores themselves.
    split, cpu = loaded.split, torch.device("cpu")
    cases = split.cases("test")
    items = item_matrix(loaded.model, loaded.feed, split.num_items, 64, cpu)
    histories = [split.history(u, p, 4) for u, p in zip(cases.users, cases.positions)]
    scores = user_matrix(loaded.model, items, histories, 4, 64, cpu).numpy() @ loaded.model.score_vectors(items).numpy().T
    older_only = 0
    for c, (user, position) in enumerate(zip(cases.users, cases.positions)):
        everything = split.items[split.offsets[user]:split.offsets[user] + position]
        target = split.items[split.offsets[user] + position]
        above = {item for item in everything if item != target and scores[c, item] > scores[c, target]}
        read = above & set(histories[c])
        assert (counts["read"][c], counts["older"][c]) == (len(read), len(above - read))
        for k, item in enumerate(everything[::-1][:3]):
            assert counts["newest_top10"][c, k] == float((scores[c] > scores[c, item]).sum() < 10)
        older_only += ranks[True][c] <= 10 < ranks[False][c] and ranks[True][c] + len(read) <= 10
    summary = own_items.summarise(counts)
    lost = (ranks[True] <= 10) & (ranks[False] > 10)
    assert summary["hits_lost"] == round(float(lost.mean()), 4)
    assert summary["hits_lost_to_older_only"] == round(older_only / len(cases.users), 4)


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
