"""Exact full-ranking evaluation: metrics by hand, FAISS ranks vs brute-force torch, distributed sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsr.errors import MMSRError
from mmsr.eval import (
    Histories,
    ItemIndex,
    case_histories,
    compute_metrics,
    full_ranking_metrics,
    metric_sums,
    parse_ks,
    rank_targets,
    reduce_metric_sums,
    top_k,
)


def brute_force_ranks(items, users, targets, histories, mask_history, max_k):
    """Dense torch scoring, the obvious way: mask the history (not the target), count strictly higher."""
    scores = torch.from_numpy(users) @ torch.from_numpy(items).T
    ranks = []
    for u in range(len(users)):
        row = scores[u].clone()
        target = int(targets[u])
        if mask_history and histories is not None:
            hist = [i for i in histories[u] if i != target]
            row[hist] = -math.inf
        ranks.append(1 + int((row > row[target]).sum()))
    return np.minimum(np.array(ranks, dtype=np.int64), max_k + 1)


def integer_problem(seed, num_items=400, num_users=150, dim=8, low=-2, high=3, max_hist=30):
    """Small-integer vectors: float32 arithmetic is exact, and ties are everywhere."""
    rng = np.random.default_rng(seed)
    items = rng.integers(low, high, size=(num_items, dim)).astype(np.float32)
    items[7] = items[3]  # identical items tie exactly
    users = rng.integers(low, high, size=(num_users, dim)).astype(np.float32)
    targets = rng.integers(0, num_items, size=num_users)
    histories = [rng.integers(0, num_items, size=rng.integers(0, max_hist)) for _ in range(num_users)]
    histories[0] = np.array([targets[0], 3, 7])  # the target inside its own history is not masked
    return items, users, targets, histories


# --- metrics by hand -------------------------------------------------------------------------

def test_metrics_hand_computed():
    ranks = np.array([1, 2, 10, 11, 50, 51])
    metrics = compute_metrics(ranks, ks=(1, 10, 50))
    assert list(metrics) == ["HR@1", "NDCG@1", "HR@10", "NDCG@10", "HR@50", "NDCG@50"]
    assert metrics["HR@1"] == pytest.approx(1 / 6)
    assert metrics["NDCG@1"] == pytest.approx(1 / 6)  # rank 1 -> 1/log2(2) = 1
    assert metrics["HR@10"] == pytest.approx(3 / 6)  # rank 10 is inside, 11 outside
    assert metrics["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert metrics["HR@50"] == pytest.approx(5 / 6)
    assert metrics["NDCG@50"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(51)) / 6)
    assert metric_sums(ranks, (10,))["count"] == 6


def test_standard_errors_are_the_cases_sample_spread_and_add_up_over_batches():
    from mmsr.eval.metrics import finalize, standard_errors

    ranks = np.random.default_rng(0).integers(1, 80, size=997)
    halves = [metric_sums(part, (10, 20)) for part in (ranks[:400], ranks[400:])]
    summed = {key: halves[0][key] + halves[1][key] for key in halves[0]}  # as batches and ranks add them
    errors = standard_errors(summed)
    assert list(errors) == list(finalize(summed)) == ["HR@10", "NDCG@10", "HR@20", "NDCG@20"]
    for k in (10, 20):
        hits = (ranks <= k).astype(float)
        gains = np.where(ranks <= k, 1 / np.log2(ranks + 1.0), 0.0)
        assert errors[f"HR@{k}"] == pytest.approx(hits.std(ddof=1) / math.sqrt(len(ranks)), rel=1e-9)
        assert errors[f"NDCG@{k}"] == pytest.approx(gains.std(ddof=1) / math.sqrt(len(ranks)), rel=1e-9)
    assert errors["HR@10"] > 0
    assert standard_errors(metric_sums(np.array([3]), (10,))) == {"HR@10": 0.0, "NDCG@10": 0.0}  # one case
    assert standard_errors(metric_sums(np.full(5, 4), (10,)))["NDCG@10"] == pytest.approx(0.0, abs=1e-12)


def test_parse_ks():
    assert parse_ks("20, 10,50,10") == (10, 20, 50)
    assert parse_ks(5) == (5,)
    for bad in ("10,x", "0", ""):
        with pytest.raises(MMSRError):
            parse_ks(bad)
    assert parse_ks("10,2147483647") == (10, 2147483647)
    with pytest.raises(MMSRError, match="cutoff 99999999999999999999 is past any catalogue"):  # an OverflowError
        parse_ks("10,99999999999999999999")


def test_ranks_by_hand_ties_rank1_outside_k_and_masking():
    # One user looking along the x axis: item scores are 5, 3, 3, 4, 1.
    items = np.array([[5, 0], [3, 1], [3, -1], [4, 0], [1, 0]], dtype=np.float32)
    user = np.array([[1, 0]], dtype=np.float32)

    def rank(target, history=None, mask=True, max_k=50):
        hist = None if history is None else [history]
        return int(rank_targets(items, user, [target], hist, mask_history=mask, max_k=max_k)[0])

    assert rank(0) == 1  # best item: rank 1
    assert rank(2) == 3  # items 0 and 3 beat it; item 1 ties and does not count
    assert rank(1) == 3  # the tie is symmetric
    assert rank(4) == 5
    assert rank(2, history=[0]) == 2  # masked history item no longer counts
    assert rank(2, history=[0], mask=False) == 3  # RecBole's protocol: nothing masked
    assert rank(2, history=[2, 3]) == 2  # the target in its own history is never masked
    assert rank(4, max_k=2) == 3  # outside the cut-off: reported as max_k + 1
    m = compute_metrics([rank(2, history=[0])], ks=(1, 2))
    assert m == {"HR@1": 0.0, "NDCG@1": 0.0, "HR@2": 1.0, "NDCG@2": pytest.approx(1 / math.log2(3))}


# --- FAISS vs brute force ---------------------------------------------------------------------

@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("max_k", [5, 50, 1000])
def test_faiss_ranks_equal_brute_force_with_ties(mask_history, max_k):
    items, users, targets, histories = integer_problem(seed=max_k)
    expected = brute_force_ranks(items, users, targets, histories, mask_history, max_k)
    got = rank_targets(items, users, targets, histories, mask_history=mask_history, max_k=max_k,
                       batch_size=32, device="cpu", backend="faiss")
    np.testing.assert_array_equal(got, expected)
    assert (expected <= max_k).any()  # the test exercises both sides of the cut-off
    if max_k < 1000:
        assert (expected == max_k + 1).any()


def test_faiss_ranks_equal_float64_brute_force_on_gaussian_data():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 32)).astype(np.float32)
    users = rng.standard_normal((200, 32)).astype(np.float32)
    targets = rng.integers(0, 3000, 200)
    hist = Histories.from_lists([rng.integers(0, 3000, rng.integers(1, 40)) for _ in range(200)])
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    expected = []
    for u in range(200):
        row = scores[u].copy()
        h = hist.items[hist.offsets[u]:hist.offsets[u + 1]]
        row[h[h != targets[u]]] = -np.inf
        expected.append(1 + int((row > row[targets[u]]).sum()))
    expected = np.minimum(expected, 21)
    got = rank_targets(torch.from_numpy(items), users, targets, (hist.offsets, hist.items), max_k=20, batch_size=64,
                       backend="faiss")
    np.testing.assert_array_equal(got, expected)


def test_full_ranking_metrics_match_metrics_of_brute_force_ranks():
    items, users, targets, histories = integer_problem(seed=3)
    expected = compute_metrics(brute_force_ranks(items, users, targets, histories, True, 20), ks=(5, 10, 20))
    index = ItemIndex(items)
    assert index.backend in ("faiss-cpu", "faiss-gpu")
    got = full_ranking_metrics(index, users, targets, histories, ks="5,10,20", batch_size=50)
    assert got == pytest.approx(expected)


def test_demo_split_histories(small_demo):
    """Random vectors on the demo data's real test cases and histories: equal to brute force."""
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset

    split = split_dataset(load_dataset(small_demo, check_images=False))
    cases = split.cases("test")
    hist = case_histories(split.offsets, split.items, cases.users, cases.positions)
    targets = split.items[split.offsets[cases.users] + cases.positions]
    u = int(cases.users[5])
    np.testing.assert_array_equal(hist.items[hist.offsets[5]:hist.offsets[6]], split.sequence(u)[:-1])
    rng = np.random.default_rng(0)
    items = rng.integers(-2, 3, (split.num_items, 8)).astype(np.float32)
    users = rng.integers(-2, 3, (len(cases), 8)).astype(np.float32)
    lists = [hist.items[hist.offsets[i]:hist.offsets[i + 1]] for i in range(len(cases))]
    expected = brute_force_ranks(items, users, targets, lists, True, 50)
    np.testing.assert_array_equal(rank_targets(items, users, targets, hist, batch_size=37), expected)


def test_top_k_excludes_history_and_matches_brute_force():
    items, users, _, histories = integer_problem(seed=4, num_users=20)
    items = items + np.random.default_rng(0).standard_normal(items.shape).astype(np.float32) * 1e-2  # no ties
    ids, scores = top_k(items, users, k=10, exclude=histories)
    dense = users.astype(np.float64) @ items.astype(np.float64).T
    for u in range(len(users)):
        dense[u, histories[u]] = -np.inf
        np.testing.assert_array_equal(ids[u], np.argsort(-dense[u], kind="stable")[:10])
        assert not set(ids[u]) & set(histories[u].tolist())
    one_ids, _ = top_k(items, users[0], k=3, exclude=list(histories[0]))
    np.testing.assert_array_equal(one_ids, ids[0][:3])
    small_ids, small_scores = top_k(items[:4], users[:1], k=6, exclude=[[0]])
    assert list(small_ids[0][3:]) == [-1, -1, -1] and np.isneginf(small_scores[0][3:]).all()


def test_histories_take():
    hist = Histories.from_lists([[1, 2], [], [3, 4, 5], [6]])
    sub = hist.take(np.array([2, 0, 1]))
    assert sub.offsets.tolist() == [0, 3, 5, 5] and sub.items.tolist() == [3, 4, 5, 1, 2]


def test_user_errors():
    items = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(MMSRError, match="dimension"):
        rank_targets(items, np.zeros((2, 3), np.float32), [0, 1])
    with pytest.raises(MMSRError, match="outside the catalogue"):
        rank_targets(items, np.zeros((2, 4), np.float32), [0, 5])
    with pytest.raises(MMSRError, match="NaN"):
        rank_targets(items, np.full((2, 4), np.nan, np.float32), [0, 1])
    with pytest.raises(MMSRError, match="history item 9"):
        rank_targets(items, np.zeros((2, 4), np.float32), [0, 1], [[1], [9]])
    with pytest.raises(MMSRError, match="2 targets"):
        rank_targets(items, np.zeros((3, 4), np.float32), [0, 1])


# --- distributed ------------------------------------------------------------------------------

def _distributed_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        summed = reduce_metric_sums({"HR@10": float(rank + 1), "count": 10.0 * (rank + 1)})
        items, users, targets, histories = integer_problem(seed=5)
        metrics = full_ranking_metrics(items, users, targets, histories, ks=(5, 10), batch_size=16, device="cpu")
        try:
            reduce_metric_sums({f"HR@{10 + rank}": 1.0, "count": 1.0})
            mismatch = "no error"
        except MMSRError as error:
            mismatch = str(error)
        np.save(f"{out_dir}/rank{rank}.npy", np.array([summed, metrics, mismatch], dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()


def test_distributed_two_process_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    items, users, targets, histories = integer_problem(seed=5)
    expected = full_ranking_metrics(items, users, targets, histories, ks=(5, 10), device="cpu")
    for rank in range(2):
        summed, metrics, mismatch = np.load(tmp_path / f"rank{rank}.npy", allow_pickle=True)
        assert summed == {"HR@10": 3.0, "count": 30.0}
        assert metrics == pytest.approx(expected)  # every rank sees the global metrics
        assert "disagree" in mismatch  # both ranks raise, neither hangs


class _RecordingTower(torch.nn.Module):
    """An item tower with fixed random weights that records which items it embedded."""

    def __init__(self, num_items: int):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.table = torch.nn.Parameter(torch.randn(num_items, 8, generator=generator))
        self.proj = torch.nn.Parameter(torch.randn(8, 6, generator=generator))
        self.embedded: list[int] = []

    def item_vectors(self, ids, feed):
        self.embedded.extend(ids.tolist())
        return torch.tanh(self.table[ids] @ self.proj)


# (items, batch size, items each rank embeds): five batches, the last one short (rank 0 takes
# batches 0, 2 and 4); and one batch, so rank 1 gets none
_SHARED_TOWER_CASES = [(37, 8, [8 + 8 + 5, 8 + 8]), (5, 8, [5, 0])]


def _shared_item_tower_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from mmsr.eval.towers import item_matrix

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for items, batch, _ in _SHARED_TOWER_CASES:
            tower = _RecordingTower(items)
            vectors = item_matrix(tower, None, items, batch, torch.device("cpu"), rank=rank, world=world)
            np.save(f"{out_dir}/{items}-rank{rank}.npy", vectors.numpy())
            np.save(f"{out_dir}/{items}-rank{rank}-embedded.npy", np.array(tower.embedded))
    finally:
        dist.destroy_process_group()


def test_torchrun_ranks_share_the_item_tower_and_each_gets_the_single_process_matrix(tmp_path):
    """Each rank embeds only its own batches, and the all-reduce gives every rank exactly (to
    the bit) the matrix one process computes."""
    import torch.multiprocessing as mp

    from mmsr.eval.towers import item_matrix

    mp.spawn(_shared_item_tower_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    for items, batch, shares in _SHARED_TOWER_CASES:
        alone = item_matrix(_RecordingTower(items), None, items, batch, torch.device("cpu")).numpy()
        embedded = [np.load(tmp_path / f"{items}-rank{rank}-embedded.npy") for rank in range(2)]
        assert sorted(np.concatenate(embedded).tolist()) == list(range(items))  # each item once, by one rank
        assert [len(done) for done in embedded] == shares
        for rank in range(2):
            np.testing.assert_array_equal(np.load(tmp_path / f"{items}-rank{rank}.npy"), alone)


def test_rescore_every_candidate_path_agrees():
    """The GPU path trusts no rounding bound and re-scores every candidate; same ranks."""
    items, users, targets, histories = integer_problem(seed=6)
    index = ItemIndex(items, device="cpu")
    fast = rank_targets(index, users, targets, histories, max_k=20, batch_size=40, backend="faiss")
    index.rounding = None
    slow = rank_targets(index, users, targets, histories, max_k=20, batch_size=40, backend="faiss")
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast, brute_force_ranks(items, users, targets, histories, True, 20))


@pytest.mark.skipif(not __import__("mmsr.eval", fromlist=["faiss_has_gpu"]).faiss_has_gpu(),
                    reason="FAISS without GPU support or no CUDA device")
def test_gpu_index_equals_brute_force():
    items, users, targets, histories = integer_problem(seed=7)
    index = ItemIndex(items, device="gpu")
    assert index.backend == "faiss-gpu"
    got = rank_targets(index, users, targets, histories, max_k=20, backend="faiss")
    np.testing.assert_array_equal(got, brute_force_ranks(items, users, targets, histories, True, 20))


@pytest.mark.parametrize("parse, text, where", [
    ("mmsr.eval.metrics:parse_ks", "10,,20", "--k"),
    ("mmsr.eval.runner:parse_splits", "test,", "--split"),
    ("mmsr.eval.recommend:parse_history", "i00001,,i00002", "--history"),
])
def test_an_empty_member_of_a_comma_list_is_refused_not_dropped(parse, text, where):
    import importlib

    module, name = parse.split(":")
    with pytest.raises(MMSRError, match="an empty member") as error:
        getattr(importlib.import_module(module), name)(text)
    assert error.value.where == where
