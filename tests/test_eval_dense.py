"""Dense counting (mmsr.eval.dense) and the backend choice (mmsr.eval.backends): the same ranks as
FAISS and as float64 brute force, ties included, with score blocks of bounded size."""

from __future__ import annotations

import numpy as np
import pytest

from mmsr.errors import MMSRError
from mmsr.eval import Histories, ItemIndex, full_ranking_metrics, rank_targets, resolve_backend
from mmsr.eval import backends, dense
from mmsr.eval.exact import rounding_bound, tie_bound

DENSE = [f"dense-{g}" for g in dense.GEMMS]


def reference_ranks(items, users, targets, histories, mask_history, max_k):
    """float64 numpy brute force: history masked (never the target), strictly higher counted."""
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    ranks = []
    for u, row in enumerate(scores):
        row = row.copy()
        if mask_history and histories is not None:
            hist = np.asarray(histories[u], dtype=np.int64)
            row[hist[hist != targets[u]]] = -np.inf
        ranks.append(1 + int((row > row[targets[u]]).sum()))
    return np.minimum(np.array(ranks, dtype=np.int64), max_k + 1)


def tie_problem(seed, num_items=300, num_users=120, dim=6):
    """Small integers (float32 arithmetic exact, ties everywhere), duplicated items, repeated history
    items and targets inside their own history."""
    rng = np.random.default_rng(seed)
    items = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
    items[7] = items[3]
    items[11] = items[3]
    users = rng.integers(-2, 3, size=(num_users, dim)).astype(np.float32)
    targets = rng.integers(0, num_items, size=num_users)
    targets[:3] = 3  # its duplicates 7 and 11 tie with it
    histories = [rng.integers(0, num_items, size=rng.integers(0, 25)) for _ in range(num_users)]
    histories[0] = np.array([3, 7, 7, 7, 11])  # the target (never masked), repeated history items
    histories[1] = np.array([7, 7, 5, 5])
    histories[2] = np.array([], dtype=np.int64)
    return items, users, targets, histories


def gaussian_problem(seed, num_items=2500, num_users=300, dim=24):
    """Real-valued scores; every 50th item duplicates a target, every user aims near its target."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((num_items, dim)).astype(np.float32)
    targets = rng.integers(0, num_items, num_users)
    items[::50] = items[targets[: len(items[::50])]]
    users = (items[targets] * rng.uniform(0, 2, (num_users, 1)) + rng.standard_normal((num_users, dim))).astype(np.float32)
    histories = [rng.integers(0, num_items, rng.integers(0, 30)) for _ in range(num_users)]
    return items, users, targets, histories


def count(items, users, targets, histories, mask_history, max_k, **kw):
    """`dense.count_ranks` directly, so block sizes can be set."""
    hist = Histories.from_lists(histories) if mask_history else None
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    dim = items.shape[1]
    return dense.count_ranks(items, norms, rounding_bound(dim), tie_bound(dim), users, np.asarray(targets),
                             None if hist is None else hist.offsets, None if hist is None else hist.items, max_k, **kw)


@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("max_k", [3, 10, 1000])
def test_dense_equals_faiss_and_float64_with_ties(mask_history, max_k):
    items, users, targets, histories = tie_problem(seed=max_k)
    expected = reference_ranks(items, users, targets, histories, mask_history, max_k)
    index = ItemIndex(items, device="cpu")
    faiss = rank_targets(index, users, targets, histories, mask_history=mask_history, max_k=max_k, backend="faiss")
    np.testing.assert_array_equal(faiss, expected)
    for backend in DENSE:
        got = rank_targets(index, users, targets, histories, mask_history=mask_history, max_k=max_k, batch_size=50,
                           backend=backend)
        np.testing.assert_array_equal(got, expected, err_msg=backend)
    assert (expected <= max_k).any()
    if max_k < 1000:
        assert (expected == max_k + 1).any()


@pytest.mark.parametrize("blocks", [(1, 1), (7, 33), (64, 512), (4096, 4096)])
def test_block_sizes_do_not_change_ranks(blocks):
    """Item blocks of one item, users leaving mid-scan, blocks larger than the problem: same ranks."""
    items, users, targets, histories = tie_problem(seed=5, num_items=120, num_users=40)
    for mask in (True, False):
        expected = reference_ranks(items, users, targets, histories, mask, 5)
        got = count(items, users, targets, histories, mask, 5, gemm="numpy", users_block=blocks[0],
                    items_block=blocks[1])
        np.testing.assert_array_equal(got, expected)


def test_gaussian_duplicates_of_the_target_tie():
    items, users, targets, histories = gaussian_problem(seed=2)
    index = ItemIndex(items, device="cpu")
    for mask in (True, False):
        expected = reference_ranks(items, users, targets, histories, mask, 50)
        faiss = rank_targets(index, users, targets, histories, mask_history=mask, max_k=50, backend="faiss")
        np.testing.assert_array_equal(faiss, expected)
        for backend in DENSE:
            got = rank_targets(index, users, targets, histories, mask_history=mask, max_k=50, backend=backend)
            np.testing.assert_array_equal(got, expected, err_msg=backend)
        got = count(items, users, targets, histories, mask, 50, gemm="numpy", users_block=64, items_block=256)
        np.testing.assert_array_equal(got, expected)
    assert len(set(expected)) > 10  # ranks spread over the range, not all capped


def test_near_ties_are_rescored_not_trusted_to_float32():
    """Items a hair (below float32 rounding of the GEMM) above or below the target: only the float64
    re-score can order them, and it must agree with FAISS's."""
    rng = np.random.default_rng(4)
    dim = 64
    base = rng.standard_normal(dim).astype(np.float64)
    items = np.repeat(base[None, :], 40, axis=0)
    items[1:, 0] += np.linspace(-1e-6, 1e-6, 39)  # exact scores straddle the target's
    items = items.astype(np.float32)
    users = np.repeat(np.abs(rng.standard_normal((1, dim))).astype(np.float32) + 1, 3, axis=0)
    targets = np.array([0, 20, 39])
    expected = reference_ranks(items, users, targets, None, False, 50)
    index = ItemIndex(items, device="cpu")
    np.testing.assert_array_equal(rank_targets(index, users, targets, backend="faiss", max_k=50), expected)
    for backend in DENSE:
        np.testing.assert_array_equal(rank_targets(index, users, targets, backend=backend, max_k=50), expected)


def test_threads_split_rows_without_changing_ranks(monkeypatch):
    items, users, targets, histories = gaussian_problem(seed=3, num_users=200)
    expected = reference_ranks(items, users, targets, histories, True, 20)
    monkeypatch.setattr(dense, "worker_threads", lambda: 3)
    got = count(items, users, targets, histories, True, 20, gemm="numpy", users_block=200, items_block=500)
    np.testing.assert_array_equal(got, expected)


def test_score_blocks_are_bounded_and_finished_users_leave(monkeypatch):
    """Every GEMM writes at most users_block x items_block floats; users at max_k stop being scored."""
    shapes = []

    def spy(q, v, out):
        shapes.append(out.shape)
        np.matmul(q, v.T, out=out)

    monkeypatch.setitem(dense.GEMMS, "spy", spy)
    rng = np.random.default_rng(0)
    items = rng.standard_normal((1000, 8)).astype(np.float32)
    users = rng.standard_normal((300, 8)).astype(np.float32)  # random users: most ranks >> max_k
    targets = rng.integers(0, 1000, 300)
    got = count(items, users, targets, None, False, 5, gemm="spy", users_block=128, items_block=100)
    np.testing.assert_array_equal(got, reference_ranks(items, users, targets, None, False, 5))
    assert all(rows <= 128 and cols <= 100 for rows, cols in shapes)
    assert sum(rows * cols for rows, cols in shapes) < 300 * 1000 / 2  # early exit did most of the saving


def test_resolve_backend_names_and_errors():
    items, users, targets, histories = tie_problem(seed=1)
    index = ItemIndex(items, device="cpu")
    assert resolve_backend(index, "faiss").name == "faiss-cpu"
    assert resolve_backend(index, "dense").name in DENSE
    assert resolve_backend(index, "dense-numpy").name == "dense-numpy"
    auto = resolve_backend(index, "auto", k=11)
    assert auto.name in ["faiss-cpu", *DENSE]
    assert auto.name in auto.probe_seconds and "faiss-cpu" in auto.probe_seconds
    hits = backends.probe.cache_info().hits
    assert resolve_backend(index, "auto", k=12).name == auto.name  # same power-of-two k: cached, not re-measured
    assert backends.probe.cache_info().hits == hits + 1
    assert auto.as_dict()["name"] == auto.name
    with pytest.raises(MMSRError):
        resolve_backend(index, "brute")
    with pytest.raises(MMSRError):
        resolve_backend(index, "faiss-gpu")  # a CPU index
    metrics = {b: full_ranking_metrics(index, users, targets, histories, ks="5,10", backend=b)
               for b in ("faiss", "dense", auto)}
    assert metrics["faiss"] == metrics["dense"] == metrics[auto]


def test_dense_backend_never_builds_the_faiss_index():
    items, users, targets, histories = tie_problem(seed=2)
    index = ItemIndex(items, device="cpu")
    rank_targets(index, users, targets, histories, backend="dense-numpy")
    assert index._cpu is None  # no second copy of the vectors
    rank_targets(index, users, targets, histories, backend="faiss")
    assert index._cpu is not None


# ----------------------------------------------------------------- the GPU path's rule, on any device


def count_on_device(items, users, targets, histories, mask_history, max_k, device="cpu", **kw):
    """`dense_gpu.count_ranks` directly: its torch code runs on the CPU here and on a GPU in
    tests/test_gpu.py, and must give the float64 ranks on both."""
    import torch

    from mmsr.eval import dense_gpu

    hist = Histories.from_lists(histories) if mask_history and histories is not None else None
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    dim = items.shape[1]
    return dense_gpu.count_ranks(items, norms, rounding_bound(dim), tie_bound(dim), users, np.asarray(targets),
                                 None if hist is None else hist.offsets, None if hist is None else hist.items, max_k,
                                 device=torch.device(device), **kw)


def gpu_rule_problems():
    """(name, items, users, targets, histories): exact ties everywhere, real-valued duplicates of the
    targets, and near-ties below float32's resolution."""
    yield "ties", *tie_problem(seed=7)
    yield "gaussian", *gaussian_problem(seed=2)
    rng = np.random.default_rng(4)
    base = rng.standard_normal(64)
    items = np.repeat(base[None, :], 40, axis=0)
    items[1:, 0] += np.linspace(-1e-6, 1e-6, 39)
    users = np.repeat(np.abs(rng.standard_normal((1, 64))).astype(np.float32) + 1, 3, axis=0)
    yield "near-ties", items.astype(np.float32), users, np.array([0, 20, 39]), None


@pytest.mark.parametrize("blocks", [(16, 61), (4096, 32768)])
@pytest.mark.parametrize("mask_history", [True, False])
def test_the_gpu_counting_rule_gives_float64_ranks(blocks, mask_history):
    for name, items, users, targets, histories in gpu_rule_problems():
        for max_k in (3, 50):
            expected = reference_ranks(items, users, targets, histories, mask_history, max_k)
            got = count_on_device(items, users, targets, histories, mask_history, max_k, users_block=blocks[0],
                                  items_block=blocks[1])
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} max_k={max_k}")


def test_dense_gpu_is_refused_for_an_index_on_the_cpu():
    items, users, targets, histories = tie_problem(seed=1)
    index = ItemIndex(items, device="cpu")
    assert index.gpu is None
    with pytest.raises(MMSRError, match="dense-gpu ranking backend needs a GPU"):
        rank_targets(index, users, targets, histories, backend="dense-gpu")


def test_a_catalogue_too_big_for_the_gpu_is_refused_by_name_and_left_to_the_cpu_by_auto(monkeypatch):
    """The GPU's free memory as torch would report it: 1 MiB is too little for the item vectors and
    the block buffers, so `auto` ranks on the CPU and `dense-gpu` asked for by name says why."""
    import torch

    items, users, targets, histories = tie_problem(seed=1)
    index = ItemIndex(items, device="cpu")
    index.gpu = torch.device("cuda", 0)  # as on a GPU node whose FAISS has no GPU build
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 1 << 30))
    assert resolve_backend(index, "auto", k=11).name in ["faiss-cpu", *DENSE]
    assert resolve_backend(index, "dense").name in DENSE
    with pytest.raises(MMSRError, match=r"ranking on the GPU needs .* of item vectors and buffers, 1\.0 MB free "
                                        r"on cuda:0") as error:
        rank_targets(index, users, targets, histories, backend="dense-gpu")
    assert "--search-device cpu" in error.value.hint
    index.device = "gpu"  # the GPU asked for by name: no quiet fall back to the CPU
    with pytest.raises(MMSRError, match=r"ranking on the GPU \(--search-device gpu\) needs .* 1\.0 MB free"):
        resolve_backend(index, "auto")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (16 << 30, 16 << 30))
    assert resolve_backend(index, "auto").name == "dense-gpu"
    assert resolve_backend(index, "dense").name == "dense-gpu"


def test_the_gpu_rule_counts_a_slice_of_the_catalogue_as_the_cpu_does():
    assert_slices_count_as_on_the_cpu("cpu")


def assert_slices_count_as_on_the_cpu(device: str) -> None:
    """`dense_gpu.count_higher` on `device`, on slices (targets elsewhere: -1; history cut to the
    slice), as `--shard-items` calls it: each slice's counts equal `dense.count_higher`'s, and the
    capped sums over the slices give float64 brute force's ranks (tests/test_gpu.py: on a GPU)."""
    import torch

    from mmsr.eval import dense_gpu
    from mmsr.eval.exact import target_scores

    items, users, targets, histories = gaussian_problem(seed=5)
    max_k = 20
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    dim = items.shape[1]
    score, norm = target_scores(users, items, targets), norms[targets]
    hist = Histories.from_lists(histories)
    total = np.zeros(len(users), dtype=np.int64)

    def local(ids, a, b):  # the slice's rows, -1 elsewhere
        return np.where((ids >= a) & (ids < b), ids - a, -1)

    for a, b in ((0, 900), (900, 1700), (1700, len(items))):
        keep = local(hist.items, a, b) >= 0
        offsets = np.concatenate([[0], np.cumsum(keep)])[hist.offsets]
        args = (items[a:b], norms[a:b], rounding_bound(dim), tie_bound(dim), users, score, norm,
                local(targets, a, b), offsets, local(hist.items, a, b)[keep], max_k)
        on_cpu = dense.count_higher(*args, gemm="numpy", users_block=64, items_block=200)
        got = dense_gpu.count_higher(*args, device=torch.device(device), users_block=64, items_block=200)
        np.testing.assert_array_equal(got, on_cpu, err_msg=f"slice {a}:{b}")
        total += got
    ranks = np.where(total >= max_k, max_k + 1, total + 1)
    np.testing.assert_array_equal(ranks, reference_ranks(items, users, targets, histories, True, max_k))


def test_the_gpu_path_turns_tf32_off_for_its_products_and_back_after():
    """An earlier `set_float32_matmul_precision("high")` (TF32 allowed) is "highest" inside and
    restored after: through the legacy setter, which moves the new API's flag too."""
    import torch

    from mmsr.eval import dense_gpu

    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with dense_gpu.ieee_float32(torch.device("cpu")):
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_near_pairs_leave_the_device_in_bounded_chunks(monkeypatch):
    """With room for 3 near pairs at a time (every other pair of the tie problem is near), the
    chunks hold at most 3 pairs or one row, cover every row with one, and the ranks are exact."""
    from mmsr.eval import dense_gpu

    monkeypatch.setattr(dense_gpu, "NEAR_PAIRS", 3)
    per_row = np.array([0, 2, 5, 0, 1, 1, 1, 0, 0])
    chunks = dense_gpu._near_chunks(per_row)
    assert chunks[0][0] == 0 and all(b == c for (_, b), (c, _) in zip(chunks, chunks[1:]))
    assert chunks[-1][1] >= 7 and all(per_row[a:b].sum() <= 3 or b - a == 1 for a, b in chunks)
    assert dense_gpu._near_chunks(np.zeros(4, dtype=np.int64)) == []
    items, users, targets, histories = tie_problem(seed=3)
    for mask in (True, False):
        expected = reference_ranks(items, users, targets, histories, mask, 10)
        np.testing.assert_array_equal(count_on_device(items, users, targets, histories, mask, 10), expected)
