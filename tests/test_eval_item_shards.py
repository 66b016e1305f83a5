"""`--shard-items`: the catalogue split over the ranks gives the ranks of the whole catalogue.

A toy model on small-integer vectors (float32 arithmetic exact, ties everywhere) over a real
`Split`; the sharded ranks must equal brute force and the default path, in one process and
in two gloo processes, and a rank must embed and keep its own items only.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmsr.data.split import SplitConfig, make_split
from mmsr.errors import MMSRError
from mmsr.eval.item_shards import gemm_for, ranks_over_slices
from mmsr.eval.towers import ItemSlice, item_slice
from mmsr.eval.runner import evaluate_model
from test_eval import brute_force_ranks


class _IntegerModel(torch.nn.Module):
    """Item i is a row of small integers; a user is the sum of its history window. Records which
    items its item tower embedded."""

    scorer = None

    def __init__(self, num_items: int, dim: int = 6, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        table = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
        table[5] = table[2]  # two identical items: an exact tie
        self.table = torch.nn.Parameter(torch.from_numpy(table))
        self.embedded: list[int] = []

    def item_vectors(self, ids, feed):
        self.embedded.extend(ids.tolist())
        return self.table[ids]

    def last_user_vectors(self, vectors, mask):
        return (vectors * mask[..., None]).sum(1)

    def score_vectors(self, vectors):
        return vectors


def _split(num_items=90, num_users=40, seed=1, max_seq_len=4):
    """Users with 5-14 interactions drawn from a skewed catalogue, repeats allowed (a target can
    sit in its own history)."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(min(rng.zipf(1.3), num_items) - 1), t) for u in range(num_users) for t in range(rng.integers(5, 15))]
    users, items, times = (np.array(column) for column in zip(*rows))
    return make_split(users, items, times.astype(float), num_items, [f"u{u}" for u in range(num_users)],
                      SplitConfig(max_seq_len=max_seq_len))


def _expected(model, split, which, mask_history, max_k):
    """Brute force from the toy model's own rule."""
    cases = split.cases(which)
    table = model.table.detach().numpy()
    windows = [split.history(u, p, split.config.max_seq_len) for u, p in zip(cases.users, cases.positions)]
    queries = np.stack([table[w].sum(0) if len(w) else np.zeros(table.shape[1], np.float32) for w in windows])
    histories = [split.history(u, p) for u, p in zip(cases.users, cases.positions)]
    targets = split.items[split.offsets[cases.users] + cases.positions]
    return brute_force_ranks(table, queries.astype(np.float32), targets, histories, mask_history, max_k)


@pytest.mark.parametrize("mask_history", [True, False])
@pytest.mark.parametrize("which", ["test", "valid"])
def test_one_slice_ranks_as_brute_force_and_as_the_default_path(which, mask_history):
    split, model = _split(), _IntegerModel(90)
    part = item_slice(model, None, split.num_items, 16, torch.device("cpu"), 0, 1)
    ranks, gemm = ranks_over_slices(model, part, split, which, max_k=10, mask_history=mask_history, batch_size=8,
                                    device=torch.device("cpu"), rank=0, world=1)
    assert gemm in ("torch", "numpy")  # the GEMM that ran, not "auto"
    np.testing.assert_array_equal(ranks, _expected(model, split, which, mask_history, 10))
    kwargs = dict(ks=(1, 5, 10), mask_history=mask_history, batch_size=8)
    sharded = evaluate_model(model, None, split, which, shard_items=True, **kwargs)
    default = evaluate_model(model, None, split, which, search_backend="dense", **kwargs)
    assert sharded["metrics"] == default["metrics"]
    assert sharded["backend"]["name"] == "dense-item-shards" and sharded["backend"]["item_shards"] == 1


def test_a_slice_finds_its_rows_and_nothing_else():
    part = ItemSlice(np.array([3, 4, 9, 10]), torch.zeros(4, 2), 12)
    np.testing.assert_array_equal(part.local(np.array([9, 0, 3, 11, 10])), [2, -1, 0, -1, 3])
    np.testing.assert_array_equal(ItemSlice(np.zeros(0, np.int64), torch.zeros(0, 0), 12).local([1, 2]), [-1, -1])


def test_what_cannot_be_ranked_over_slices_is_refused_before_any_work():
    split, model = _split(), _IntegerModel(90)
    with pytest.raises(MMSRError, match="dense"):
        evaluate_model(model, None, split, "test", shard_items=True, search_backend="faiss")
    model.scorer = object()  # a candidate-dependent scorer (CARCA++)
    with pytest.raises(MMSRError, match="candidate-dependent"):
        evaluate_model(model, None, split, "test", shard_items=True)
    assert model.embedded == []


# (items, batch): several batches, rank 1 short of one; and a single batch, so rank 1 holds nothing
_CASES = [(90, 16), (12, 16)]


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for items, batch in _CASES:
            split, model = _split(num_items=items), _IntegerModel(items)
            result = evaluate_model(model, None, split, "test", ks=(1, 5, 10), batch_size=batch, rank=rank,
                                    world=world, shard_items=True)
            part = item_slice(_IntegerModel(items), None, items, batch, torch.device("cpu"), rank, world)
            ranks, _ = ranks_over_slices(model, part, split, "valid", max_k=10, mask_history=True,
                                         batch_size=batch, device=torch.device("cpu"), rank=rank, world=world)
            np.save(f"{out_dir}/{items}-{rank}.npy", np.array([result, ranks, sorted(set(model.embedded)),
                                                               len(part.vectors)], dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()


def test_two_ranks_each_keep_their_own_items_and_get_the_whole_catalogues_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for items, batch in _CASES:
        split, model = _split(num_items=items), _IntegerModel(items)
        alone = evaluate_model(model, None, split, "test", ks=(1, 5, 10), batch_size=batch, search_backend="dense")
        expected_valid = _expected(model, split, "valid", True, 10)
        embedded = []
        for rank in range(2):
            result, ranks, mine, kept = np.load(tmp_path / f"{items}-{rank}.npy", allow_pickle=True)
            assert result["metrics"] == alone["metrics"]  # exactly: every rank, the global metrics
            assert result["backend"]["item_shards"] == 2
            np.testing.assert_array_equal(ranks, expected_valid)
            own = [i for i in range(items) if (i // batch) % 2 == rank]
            assert mine == own and kept == len(own)  # its own batches only, and it keeps only those
            embedded += mine
        assert sorted(embedded) == list(range(items))


def test_how_slices_count_follows_the_search_device_and_backend_and_refuses_contradictions():
    """`gemm_for` before any work: the CPU when asked, the GPU only on a run that has one, and a
    refusal naming both options where they contradict each other."""
    model, cpu, gpu = SimpleNamespace(scorer=None), torch.device("cpu"), torch.device("cuda", 0)
    assert gemm_for(model, "auto", cpu) == "auto" and gemm_for(model, "dense", gpu) == "auto"
    assert gemm_for(model, "auto", gpu, "cpu") == "cpu" and gemm_for(model, "dense-numpy", gpu) == "numpy"
    assert gemm_for(model, "dense-gpu", gpu) == "gpu" and gemm_for(model, "auto", gpu, "gpu") == "gpu"
    for backend, device, search_device, message in [
        ("dense-gpu", cpu, "auto", "counts on the run's GPU, and this run is on cpu"),
        ("auto", cpu, "gpu", "counts on the run's GPU, and this run is on cpu"),
        ("dense-torch", gpu, "gpu", "--search-backend dense-torch and --search-device gpu contradict"),
        ("dense-gpu", gpu, "cpu", "--search-backend dense-gpu and --search-device cpu contradict"),
    ]:
        with pytest.raises(MMSRError, match=message):
            gemm_for(model, backend, device, search_device)
