"""Exact full ranking: ranks of targets (`rank_targets`), metrics (`full_ranking_metrics`), top-k (`top_k`).

Score = inner product. Every item is ranked for every user (no sampling), in batches of
users, so memory is bounded by the batch size and never holds a users x items matrix.
Two paths apply the same rule below and return the same ranks: FAISS `IndexFlatIP` top-k
search (this module; the GPU path, and `top_k` for `mmsr recommend`) and dense counting
(`mmsr.eval.dense`: score blocks, count strictly higher). `backend="auto"` runs whichever is
faster on this machine (`mmsr.eval.backends`, measured once per process).

The rank of a target (see docs/eval.md for the two protocols and the tie rule):

    rank = 1 + #{ item i : i != target, i not masked, score(i) > score(target) }

- Masked items are the user's history items (the paper's protocol, `mask_history=True`),
  except the target itself, which is never masked even when it also occurs in the history.
  `mask_history=False` is RecBole's protocol: nothing is masked.
- Ties count in the target's favour: only *strictly* higher scores push it down.
- How FAISS computes it: FAISS returns the top `m = max_k + 1 + |history|` items of each user.
  The target's score is computed exactly (float64 products of the float32 inputs). A
  candidate is compared by its FAISS score when that score is farther from the target's than
  the float32 rounding bound of an inner product (D * 2^-24 * |q| * |v|, which covers any
  summation order); otherwise (near-ties, identical items) it is re-scored by the same float64
  routine as the target, so an item identical to the target ties with it exactly. On the GPU
  (whose GEMM may run in reduced precision) every candidate is re-scored. Since at most
  |history| candidates are masked and at most one is the target, at least `max_k` unmasked
  candidates remain; if fewer than `max_k` of them beat the target, every item outside the
  candidates scores no higher than one that does not, so the count is complete and the
  rank exact.
- Ranks above `max_k` are not computed: every such rank is reported as `max_k + 1`, which
  is exact for any metric with K <= max_k. The only approximation is FAISS's float32
  ordering of items *outside* the candidate list whose scores are within about 1e-6 relative
  of the m-th candidate's: the same rounding a brute-force float32 scorer has.

Users are processed in order of history length, so each FAISS call asks for a nearly
uniform `m` (FAISS takes one k per call), and queries are batched (FAISS switches to BLAS
from about 20 queries per call).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mmsr.errors import MMSRError
from mmsr.eval import dense
from mmsr.eval.backends import Choice, resolve_backend
from mmsr.eval.exact import exact_higher, rounding_bound, target_scores, tie_bound, vector_norms
from mmsr.eval.metrics import (
    DEFAULT_KS,
    distributed_info,
    finalize,
    metric_sums,
    parse_ks,
    reduce_metric_sums,
)
from mmsr.torchrun_env import env_int

# The largest k a FAISS GPU flat index accepts in one search; bigger searches fall back to the CPU.
GPU_MAX_K = 2048
DEFAULT_BATCH_SIZE = 4096
# Items per BLAS block in FAISS's CPU search (its default is 1024). Larger blocks make larger,
# more efficient GEMMs: ~1.3-1.5x faster at 50k items x 384 dims on 2 cores. The block buffer
# is min(queries, 4096) x this many floats: 64 MB at 4096.
FAISS_DATABASE_BLOCK = 4096


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise MMSRError("FAISS is not installed", hint="pip install faiss-cpu (or faiss-gpu-cu12 on GPU nodes)") from None
    return faiss


def faiss_has_gpu() -> bool:
    """True when this FAISS build has GPU support and sees at least one CUDA device."""
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken CUDA driver
        return False


def _torch_gpu():
    """This process's GPU, or None without CUDA: under torchrun its rank's (LOCAL_RANK, modulo the
    GPUs it sees), as the trainer picks it; else the current one (`--device cuda:N` makes it so)."""
    import torch  # deferred: an index on the CPU needs no torch start-up

    if not torch.cuda.is_available():
        return None
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", env_int("LOCAL_RANK", None) % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


def as_float32_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    """numpy or torch [N, D] -> C-contiguous float32 numpy, with shape and finiteness checks."""
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise MMSRError(f"{name} must be a 2-D [count, dim] array, got shape {x.shape}", where=name)
    if dim is not None and x.shape[1] != dim:
        raise MMSRError(f"{name} have dimension {x.shape[1]}, the items have {dim}", where=name,
                        hint="user and item vectors must come from the same model")
    finite = all(np.isfinite(x[i:i + 8192]).all() for i in range(0, len(x), 8192))  # bounded temporaries
    if not finite:
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise NonFiniteVectors(f"{name} contain NaN or infinite values (first at row {bad})", where=f"{name}[{bad}]",
                               hint="the model diverged or the inputs are corrupt; check the checkpoint")
    return x


class NonFiniteVectors(MMSRError):
    """User or item vectors with NaN or infinity: a diverged model (training says so in its own words)."""


SEARCH_DEVICES = ("auto", "cpu", "gpu")


class ItemIndex:
    """An exact inner-product index over item vectors (FAISS `IndexFlatIP`).

    `device`: "auto" (a GPU when one is present, else the CPU), "cpu" or "gpu" (an error
    without CUDA). On a GPU, FAISS's GPU index when this FAISS build has one, and in any case
    `gpu`, the torch device that the dense GPU path (`mmsr.eval.dense_gpu`) counts on (this
    process's current GPU: its own under torchrun). `backend` names the FAISS index:
    "faiss-gpu" or "faiss-cpu". The float32 vectors are kept for exact re-scoring of
    candidates and for the dense paths; the FAISS CPU index (a second copy of them) is built
    on its first search, so an evaluation that counts densely never holds it.
    """

    def __init__(self, item_vectors, device: str = "auto"):
        if device not in SEARCH_DEVICES:
            raise MMSRError(f"unknown search device {device!r}", hint="use " + ", ".join(SEARCH_DEVICES))
        faiss = _faiss()
        self.vectors = as_float32_matrix(item_vectors, "item vectors")
        if len(self.vectors) == 0:
            raise MMSRError("there are no items to rank", where="item vectors")
        self.num_items, self.dim = self.vectors.shape
        self._cpu = None
        self._gpu = None
        self._gpu_resources = None
        self.device = device  # as asked: "gpu" makes a GPU path that cannot run an error, not the CPU
        self.gpu = _torch_gpu() if device != "cpu" else None
        if device == "gpu" and self.gpu is None:
            raise MMSRError("a GPU index was asked for, but this process sees no CUDA device",
                            hint="run on a GPU node, or use --search-device cpu")
        if self.gpu is not None and faiss_has_gpu():
            self.gpu_id = self.gpu.index
            self._gpu_resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, self.gpu_id, self.cpu_index())
        self.backend = "faiss-gpu" if self._gpu is not None else "faiss-cpu"
        self.norms = vector_norms(self.vectors)
        # |float32 score - exact score| <= rounding * |q| * |v| (mmsr.eval.exact). None: no bound is
        # trusted (a GPU GEMM may run in reduced precision), FAISS candidates are all re-scored.
        self.rounding = None if self._gpu is not None else rounding_bound(self.dim)
        self.tie = tie_bound(self.dim)

    def cpu_index(self):
        """FAISS's CPU `IndexFlatIP`, built on first use."""
        if self._cpu is None:
            self._cpu = _faiss().IndexFlatIP(self.dim)
            self._cpu.add(self.vectors)
        return self._cpu

    def __repr__(self) -> str:
        return f"ItemIndex(items={self.num_items}, dim={self.dim}, backend={self.backend!r})"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores float32 [B, k], ids int64 [B, k]); k is capped at the catalogue."""
        k = min(int(k), self.num_items)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._gpu is not None and k <= GPU_MAX_K:
            return self._gpu.search(queries, k)
        faiss = _faiss()
        saved = faiss.cvar.distance_compute_blas_database_bs
        faiss.cvar.distance_compute_blas_database_bs = FAISS_DATABASE_BLOCK
        try:
            return self.cpu_index().search(queries, k)
        finally:
            faiss.cvar.distance_compute_blas_database_bs = saved


@dataclass
class Histories:
    """Per-user item lists in CSR form: user u's items are `items[offsets[u]:offsets[u+1]]`."""

    offsets: np.ndarray  # int64 [U+1]
    items: np.ndarray  # int64 [offsets[-1]]

    @classmethod
    def from_lists(cls, lists: Iterable[Sequence[int]]) -> Histories:
        arrays = [np.asarray(x, dtype=np.int64).ravel() for x in lists]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(offsets, items.astype(np.int64, copy=False))

    @classmethod
    def coerce(cls, value, num_users: int, num_items: int) -> Histories:
        """Accept a Histories, an (offsets, items) pair, or a list of per-user sequences; validate."""
        if isinstance(value, Histories):
            hist = value
        elif isinstance(value, tuple) and len(value) == 2 and np.ndim(value[0]) == 1 and np.ndim(value[1]) == 1:
            hist = cls(np.asarray(value[0], dtype=np.int64), np.asarray(value[1], dtype=np.int64))
        else:
            hist = cls.from_lists(value)
        offsets, items = hist.offsets, hist.items
        if offsets.shape != (num_users + 1,):
            raise MMSRError(f"history offsets must have {num_users + 1} entries (users + 1), got {offsets.shape[0]}",
                            where="histories")
        if offsets[0] != 0 or offsets[-1] != len(items) or np.any(np.diff(offsets) < 0):
            raise MMSRError("history offsets must start at 0, never decrease and end at len(items)", where="histories")
        if len(items) and (items.min() < 0 or items.max() >= num_items):
            bad = int(np.flatnonzero((items < 0) | (items >= num_items))[0])
            user = int(np.searchsorted(offsets, bad, side="right") - 1)
            raise MMSRError(f"history item {int(items[bad])} is outside the catalogue of {num_items} items",
                            where=f"histories, user {user}", hint="the histories and the item vectors must come from the same dataset")
        return hist

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Histories:
        """The histories of `rows`, in that order, as a new CSR."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths()[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return Histories(offsets, self.items[starts + np.arange(offsets[-1], dtype=np.int64)])


def _masked(ids: np.ndarray, rows: np.ndarray, hist: Histories, num_items: int) -> np.ndarray:
    """bool like `ids`: ids[j] is in the history of row rows[j]. Keys row * num_items + item keep rows apart."""
    history_keys = np.repeat(np.arange(len(hist.offsets) - 1, dtype=np.int64), hist.lengths()) * num_items + hist.items
    return np.isin(rows.astype(np.int64) * num_items + ids, history_keys)


def _strictly_higher(index: ItemIndex, q: np.ndarray, t: np.ndarray, faiss_scores: np.ndarray,
                     ids: np.ndarray) -> np.ndarray:
    """bool [B, M]: candidate ids[b, j] scores strictly higher than target t[b] (exact target score)."""
    t_scores = target_scores(q, index.vectors, t)
    q_norms = np.linalg.norm(q.astype(np.float64), axis=1)
    target_norms = index.norms[t]

    def rescore(r, c):  # the float64 routine every path shares (mmsr.eval.exact)
        return exact_higher(index.vectors, index.norms, index.tie, q, q_norms, t_scores, target_norms, r, ids[r, c])

    if index.rounding is None:
        r, c = np.indices(ids.shape).reshape(2, -1)
        return rescore(r, c).reshape(ids.shape)
    tolerance = index.rounding * q_norms[:, None] * index.norms[ids] + 1e-30
    diff = faiss_scores.astype(np.float64) - t_scores[:, None]
    higher = diff > tolerance
    unsure = np.abs(diff) <= tolerance
    if unsure.any():
        r, c = np.nonzero(unsure)
        higher[r, c] = rescore(r, c)
    return higher


def rank_targets(
    item_vectors,
    user_vectors,
    targets,
    histories=None,
    *,
    mask_history: bool = True,
    max_k: int = 50,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    backend: str | Choice = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """1-based ranks [U] int64 of each user's target among all items; ranks > max_k come back as max_k + 1.

    item_vectors: [N, D] float32 (numpy or torch) or an `ItemIndex` (reuse one across splits).
    user_vectors: [U, D]; targets: [U] item indices; histories: CSR `(offsets [U+1], items)`,
    a `Histories`, a list of per-user sequences, or None (nothing to mask).
    mask_history: True = the paper's protocol (history masked), False = RecBole's (not masked).
    backend: "auto" (the faster exact path here), "faiss", "dense", a backend name, or a `Choice`
    from `resolve_backend` (which also says what ran); every one gives the same ranks.
    on_batch: called with the number of users finished after each batch (for progress bars).
    """
    index = item_vectors if isinstance(item_vectors, ItemIndex) else ItemIndex(item_vectors, device=device)
    queries = as_float32_matrix(user_vectors, "user vectors", dim=index.dim)
    num_users = len(queries)
    targets = np.asarray(targets, dtype=np.int64).ravel()
    if len(targets) != num_users:
        raise MMSRError(f"{len(targets)} targets for {num_users} user vectors", where="targets")
    if num_users and (targets.min() < 0 or targets.max() >= index.num_items):
        bad = int(np.flatnonzero((targets < 0) | (targets >= index.num_items))[0])
        raise MMSRError(f"target item {int(targets[bad])} is outside the catalogue of {index.num_items} items",
                        where=f"targets[{bad}]")
    if max_k < 1:
        raise MMSRError(f"max_k must be positive, got {max_k}")
    if batch_size < 1:
        raise MMSRError(f"batch_size must be positive, got {batch_size}")

    hist = None
    if mask_history and histories is not None:
        hist = Histories.coerce(histories, num_users, index.num_items)
    lengths = hist.lengths() if hist is not None else np.zeros(num_users, dtype=np.int64)
    if not num_users:
        return np.zeros(0, dtype=np.int64)
    choice = resolve_backend(index, backend, k=search_k(max_k, lengths))
    return _RANKERS[choice.name](index, queries, targets, hist, max_k, batch_size, on_batch)


def search_k(max_k: int, lengths: np.ndarray) -> int:
    """The top-k a FAISS search asks for on a typical case: max_k + 1 + its history length."""
    return max_k + 1 + (int(np.median(lengths)) if len(lengths) else 0)


def _faiss_ranks(index: ItemIndex, queries: np.ndarray, targets: np.ndarray, hist: Histories | None, max_k: int,
                 batch_size: int, on_batch) -> np.ndarray:
    """The FAISS path: top `max_k + 1 + |history|` candidates per user, counted (module docstring)."""
    lengths = hist.lengths() if hist is not None else np.zeros(len(queries), dtype=np.int64)
    order = np.argsort(lengths, kind="stable")  # nearly uniform k per FAISS call
    ranks = np.empty(len(queries), dtype=np.int64)
    done = 0
    for start in range(0, len(queries), batch_size):
        rows = order[start:start + batch_size]
        q = queries[rows]
        t = targets[rows]
        m = min(index.num_items, max_k + 1 + int(lengths[rows].max()))
        faiss_scores, ids = index.search(q, m)
        higher = _strictly_higher(index, q, t, faiss_scores, ids)
        higher &= ids != t[:, None]
        if hist is not None and higher.any():
            r, c = np.nonzero(higher)  # only candidates that would count need the mask test
            higher[r, c] = ~_masked(ids[r, c], r, hist.take(rows), index.num_items)
        count = higher.sum(axis=1)
        ranks[rows] = np.where(count >= max_k, max_k + 1, count + 1)
        done += len(rows)
        if on_batch is not None:
            on_batch(done)
    return ranks


def _dense_ranks(gemm: str):
    """The dense path (`mmsr.eval.dense`) with one GEMM; user blocks no larger than `batch_size`."""
    def run(index: ItemIndex, queries, targets, hist: Histories | None, max_k: int, batch_size: int, on_batch):
        offsets, items = (hist.offsets, hist.items) if hist is not None else (None, None)
        # rounding_bound, not index.rounding: these scores come from the CPU GEMM even when the
        # index lives on a GPU.
        return dense.count_ranks(index.vectors, index.norms, rounding_bound(index.dim), index.tie, queries, targets,
                                 offsets, items, max_k, gemm=gemm, users_block=min(batch_size, dense.USERS_BLOCK),
                                 on_batch=on_batch)
    return run


def _dense_gpu_ranks(index: ItemIndex, queries, targets, hist: Histories | None, max_k: int, batch_size: int,
                     on_batch):
    """The dense path on the index's GPU (`mmsr.eval.dense_gpu`): the same ranks, the blocks on the device."""
    from mmsr.eval import dense_gpu  # deferred: imports torch, which the CPU paths never need

    offsets, items = (hist.offsets, hist.items) if hist is not None else (None, None)
    return dense_gpu.count_ranks(index.vectors, index.norms, rounding_bound(index.dim), index.tie, queries, targets,
                                 offsets, items, max_k, device=index.gpu,
                                 users_block=min(batch_size, dense_gpu.USERS_BLOCK), on_batch=on_batch)


# backend name (mmsr.eval.backends) -> ranks(index, queries, targets, hist, max_k, batch_size, on_batch)
_RANKERS = {
    "faiss-cpu": _faiss_ranks,
    "faiss-gpu": _faiss_ranks,
    **{f"dense-{gemm}": _dense_ranks(gemm) for gemm in dense.GEMMS},
    "dense-gpu": _dense_gpu_ranks,
}


def shard_rows(num_rows: int, rank: int, world_size: int) -> np.ndarray:
    """The rows a rank evaluates: rank, rank + world, ... (balanced within one row)."""
    return np.arange(rank, num_rows, world_size, dtype=np.int64)


def full_ranking_metrics(
    item_vectors,
    user_vectors,
    targets,
    histories=None,
    *,
    ks: str | Iterable[int] = DEFAULT_KS,
    mask_history: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    backend: str | Choice = "auto",
    shard: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics {"HR@10": ..., "NDCG@10": ..., ...}, means in [0, 1] over all users.

    Under torch.distributed (if a process group is initialised) the metric sums are
    all-reduced, so every rank returns the global metrics. With `shard=True` every rank is
    given all users and evaluates its share (`shard_rows`); with `shard=False` each rank
    passes only its own users. Without a process group both mean "all users, here".
    `backend`: as in `rank_targets`; the metrics do not depend on it.
    """
    ks = parse_ks(ks)
    rank, world = distributed_info()
    if world > 1 and shard:
        rows = shard_rows(len(targets), rank, world)
        if histories is not None:
            histories = Histories.coerce(histories, len(targets), _num_items(item_vectors)).take(rows)
        user_vectors = user_vectors[rows] if not hasattr(user_vectors, "detach") else user_vectors[rows.tolist()]
        targets = np.asarray(targets)[rows]
    ranks = rank_targets(item_vectors, user_vectors, targets, histories, mask_history=mask_history,
                         max_k=max(ks), batch_size=batch_size, device=device, backend=backend, on_batch=on_batch)
    sums = metric_sums(ranks, ks)
    if world > 1:
        sums = reduce_metric_sums(sums)
    return finalize(sums)


def _num_items(item_vectors) -> int:
    return item_vectors.num_items if isinstance(item_vectors, ItemIndex) else len(item_vectors)


def top_k(
    item_vectors,
    user_vectors,
    k: int = 10,
    exclude=None,
    *,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per user, excluding each user's `exclude` items (e.g. the history).

    user_vectors: [B, D] or one [D] vector; exclude: as `histories` in `rank_targets`
    (for one user, a flat list of ids is accepted). Returns (ids int64 [B, k], scores
    float32 [B, k]), best first; when fewer than k items remain, the rest is -1 / -inf.
    Any item with a vector is rankable, including items never seen in training.
    """
    index = item_vectors if isinstance(item_vectors, ItemIndex) else ItemIndex(item_vectors, device=device)
    single = np.ndim(user_vectors) == 1
    if single:
        user_vectors = np.asarray(user_vectors)[None, :] if not hasattr(user_vectors, "detach") else user_vectors[None, :]
        if exclude is not None and (len(exclude) == 0 or np.ndim(exclude[0]) == 0):
            exclude = [exclude]
    queries = as_float32_matrix(user_vectors, "user vectors", dim=index.dim)
    if k < 1:
        raise MMSRError(f"k must be positive, got {k}", where="-k")
    hist = Histories.coerce(exclude, len(queries), index.num_items) if exclude is not None else None
    extra = int(hist.lengths().max()) if hist is not None and len(queries) else 0
    scores, ids = index.search(queries, k + extra)
    if hist is not None:
        rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
        drop = _masked(ids, rows, hist, index.num_items)
        # Stable-partition each row: kept items first, in score order.
        keep_order = np.argsort(drop, axis=1, kind="stable")
        ids = np.take_along_axis(ids, keep_order, axis=1)
        scores = np.take_along_axis(scores, keep_order, axis=1)
        dropped = np.take_along_axis(drop, keep_order, axis=1)
        ids = np.where(dropped, -1, ids)
        scores = np.where(dropped, -np.inf, scores).astype(np.float32)
    ids, scores = ids[:, :k], scores[:, :k]
    if ids.shape[1] < k:  # catalogue smaller than k
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    if single:
        return ids[0], scores[0]
    return ids, scores


def case_histories(offsets: np.ndarray, items: np.ndarray, users: np.ndarray, positions: np.ndarray) -> Histories:
    """The full history (all items before the target) of each evaluation case, as a CSR.

    `offsets`/`items` are a split's user sequences (`mmsr.data.split.Split`), `users`/`positions`
    its `EvalCases`: case c's target is `items[offsets[users[c]] + positions[c]]`. The mask
    uses the whole history, not just the last `max_seq_len` items the model reads.
    """
    users = np.asarray(users, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    starts = np.asarray(offsets, dtype=np.int64)[users]
    out = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(positions, out=out[1:])
    flat = np.repeat(starts - out[:-1], positions) + np.arange(out[-1], dtype=np.int64)
    return Histories(out, np.asarray(items, dtype=np.int64)[flat])


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, histories: Histories | None,
                      max_k: int = 50) -> np.ndarray:
    """The ranking rule on exact score rows [U, N] (one per case): the same rule `rank_targets`
    applies to FAISS's candidates, for scorers no index can serve (CARCA++).

        rank = 1 + #{ item i : i != target, i not in the history, score(i) > score(target) }

    Ties count in the target's favour; `histories=None` masks nothing (RecBole's protocol);
    ranks above `max_k` come back as `max_k + 1`. The target's score is its entry of the same
    row, so rounding cannot make it differ from itself.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(scores))
    higher = scores > scores[rows, targets][:, None]
    higher[rows, targets] = False
    if histories is not None and len(histories.items):
        users = np.repeat(rows, histories.lengths())
        higher[users, histories.items] = False
    count = higher.sum(axis=1)
    return np.where(count >= max_k, max_k + 1, count + 1)
