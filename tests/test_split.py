"""The paper's protocol on hand-made sequences."""

import numpy as np
import pytest

from mmsr.data.split import SplitConfig, make_split
from mmsr.errors import MMSRError


def _split(rows, num_items, **config):
    """rows: (user, item, time) in file order."""
    users = sorted({u for u, _, _ in rows}, key=[u for u, _, _ in rows].index)
    index = {u: i for i, u in enumerate(users)}
    return make_split(np.array([index[u] for u, _, _ in rows]), np.array([i for _, i, _ in rows]),
                      np.array([t for _, _, t in rows], dtype=float), num_items, users, SplitConfig(**config))


def test_chronological_order_with_stable_ties_and_leave_one_out():
    rows = [("a", 3, 30), ("a", 1, 10), ("a", 2, 20), ("a", 5, 20), ("a", 4, 40), ("a", 0, 50)]
    split = _split(rows, 6)
    # time order; the tie at t=20 keeps file order (2 before 5)
    assert split.sequence(0).tolist() == [1, 2, 5, 3, 4, 0]
    assert split.train_sequence(0).tolist() == [1, 2, 5, 3]
    test, valid = split.cases("test"), split.cases("valid")
    assert split.target(0, int(test.positions[0])) == 0
    assert split.target(0, int(valid.positions[0])) == 4
    assert split.history(0, int(test.positions[0])).tolist() == [1, 2, 5, 3, 4]


def test_users_below_min_interactions_are_dropped():
    rows = [("short", i, i) for i in range(4)] + [("long", i, i) for i in range(5)]
    split = _split(rows, 5)
    assert split.user_ids == ["long"]
    assert _split(rows, 5, min_interactions=4).user_ids == ["short", "long"]


def test_max_seq_len_truncates_histories_from_the_left():
    rows = [("a", i, i) for i in range(8)]
    split = _split(rows, 8, max_seq_len=3)
    assert split.history(0, 7, max_len=3).tolist() == [4, 5, 6]


def test_cold_items_count_only_the_training_part():
    # item 9 is in every user's test position: 0 training occurrences -> cold.
    # item 7 appears in training of 3 users -> cold at threshold 4, warm at threshold 3.
    rows = []
    for u in range(3):
        rows += [(f"u{u}", 7, 0), (f"u{u}", u, 1), (f"u{u}", 3 + u, 2), (f"u{u}", 8, 3), (f"u{u}", 9, 4)]
    split = _split(rows, 10, cold_threshold=4)
    assert split.cold_items[9] and split.cold_items[7] and split.cold_items[8]
    assert split.train_counts[7] == 3 and split.train_counts[9] == 0 and split.train_counts[8] == 0
    warm = _split(rows, 10, cold_threshold=3)
    assert not warm.cold_items[7] and warm.cold_items[9]


def test_cold_cases_are_prefixes_ending_in_a_cold_item():
    rows = []
    for u in range(3):
        rows += [(f"u{u}", 7, 0), (f"u{u}", u, 1), (f"u{u}", 3 + u, 2), (f"u{u}", 8, 3), (f"u{u}", 9, 4)]
    split = _split(rows, 10, cold_threshold=3)
    cold = split.cases("cold")
    targets = [split.target(u, p) for u, p in zip(cold.users, cold.positions)]
    assert all(split.cold_items[t] for t in targets)
    # item 7 is warm (3 training occurrences); position 0 has no history so never counts
    assert (cold.positions >= 1).all()
    # per user: items u, 3+u, 8, 9 are cold (each < 3 training occurrences) at positions 1..4
    assert len(cold) == 3 * 4
    assert sorted(set(targets)) == [0, 1, 2, 3, 4, 5, 8, 9]


def test_sample_users_is_seeded():
    rows = [(f"u{u}", i, i) for u in range(20) for i in range(5)]
    a = _split(rows, 5, sample_users=5, seed=1)
    b = _split(rows, 5, sample_users=5, seed=1)
    c = _split(rows, 5, sample_users=5, seed=2)
    assert a.user_ids == b.user_ids and len(a.user_ids) == 5
    assert a.user_ids != c.user_ids


def test_no_user_left_is_a_clear_error():
    with pytest.raises(MMSRError, match="min_interactions"):
        _split([("a", 0, 0), ("a", 1, 1)], 2)


def test_stats_on_demo(small_demo):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset

    dataset = load_dataset(small_demo)
    split = split_dataset(dataset)
    stats = split.stats()
    assert stats["users"] == 200 and stats["interactions"] == len(dataset.inter_item)
    assert 0 < stats["cold_items"] <= 300
    lengths = split.lengths()
    assert lengths.min() >= 5 and lengths.max() <= 40


def test_new_cases_are_test_targets_without_any_training_interaction():
    # u0's test item 9 is never trained on; u1's test item 1 is in u0's training part;
    # u2's test item 8 is only ever a validation target (u0's), which is not training either.
    rows = [("u0", 0, 0), ("u0", 1, 1), ("u0", 2, 2), ("u0", 8, 3), ("u0", 9, 4),
            ("u1", 3, 0), ("u1", 4, 1), ("u1", 5, 2), ("u1", 6, 3), ("u1", 1, 4),
            ("u2", 5, 0), ("u2", 6, 1), ("u2", 7, 2), ("u2", 2, 3), ("u2", 8, 4)]
    split = _split(rows, 10, min_interactions=5)
    new = split.cases("new")
    assert [split.user_ids[u] for u in new.users] == ["u0", "u2"]
    assert [split.target(int(u), int(p)) for u, p in zip(new.users, new.positions)] == [9, 8]
    assert split.stats()["new_test_cases"] == 2
    assert split.stats()["new_items"] == 2  # items 8 and 9: in no user's training part (0-2, 3-5, 5-7)
    with pytest.raises(MMSRError, match="use test, valid, cold, new"):
        split.cases("warm")


def test_cold_test_cases_are_the_held_out_part_of_the_cold_set():
    """The paper's cold set includes prefixes ending inside the training part (targets the
    model trains on); cold-test keeps the test cases whose target is cold, nothing else."""
    # Item 7 is seen once in training (u0), so cold at threshold 2; item 1 is seen three times.
    rows = [("u0", 1, 0), ("u0", 7, 1), ("u0", 1, 2), ("u0", 2, 3), ("u0", 4, 4),
            ("u1", 1, 0), ("u1", 4, 1), ("u1", 5, 2), ("u1", 6, 3), ("u1", 7, 4),
            ("u2", 1, 0), ("u2", 4, 1), ("u2", 5, 2), ("u2", 6, 3), ("u2", 4, 4)]
    split = _split(rows, 10, min_interactions=5, cold_threshold=2, cold_min_history=1)
    cold_test = split.cases("cold-test")
    assert [split.user_ids[u] for u in cold_test.users] == ["u1"]
    assert [split.target(int(u), int(p)) for u, p in zip(cold_test.users, cold_test.positions)] == [7]
    cold = {(int(u), int(p)) for u, p in zip(split.cases("cold").users, split.cases("cold").positions)}
    assert {(int(u), int(p)) for u, p in zip(cold_test.users, cold_test.positions)} < cold
    assert (0, 1) in cold  # u0's training interaction with item 7: in the paper's cold set only
    assert split.stats()["cold_test_cases"] == 1


def test_a_negative_cold_threshold_is_refused():
    with pytest.raises(ValueError, match="cold_threshold must be 0 or more"):
        SplitConfig(cold_threshold=-5)
