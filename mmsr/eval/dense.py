"""Exact ranks by counting: one GEMM per score block, then the items strictly above the target.

Metrics need only the target's rank, and the rank is a count:

    rank = 1 + #{ item i : i != target, i not masked, score(i) > score(target) }

so there is no top-k to keep. For a block of users and a block of items this path

1. computes the float32 scores with one GEMM (`GEMMS`: torch.mm or numpy.matmul, whichever
   this machine's BLAS runs faster, measured once per process by `fastest_gemm`);
2. sets the masked entries (the user's history, paper protocol) and the target itself to -inf,
   so they can never count;
3. marks the items that may score higher: float32 score >= target - bound, where bound is the
   float32 rounding bound (`exact.rounding_bound`) for the largest item norm of the block;
   every item whose exact score beats the target's is among them. A row maximum first skips
   the users with nothing to mark (most users of a trained model, in most blocks), so their
   cost is one read-only pass; the others get one marking pass and a count;
4. decides each marked item as the FAISS path decides a candidate: by its float32 score when
   that is farther from the target's exact score than the pair's rounding bound, otherwise by
   the shared float64 re-score (`exact.exact_higher`), so ties are the same ties.

A user whose marked items could already finish it (more than `max_k` minus its count so far)
is first checked with a second pass (score > target + bound: surely higher); when that count
alone reaches `max_k` its rank is `max_k + 1` and nothing is extracted. A user whose count
reaches `max_k` leaves the user block: the following item blocks are multiplied for the
remaining users only. Ranks above `max_k` are reported as `max_k + 1`, as on the FAISS path.

Memory: a users_block x items_block float32 score buffer, a bool buffer of the same shape,
and the marked positions (8 bytes each: at most the block, only when nearly every item ties
with the target). Never a users x items matrix. The passes over a block run in row chunks on
a thread pool (numpy releases the GIL), so they scale with the cores as the GEMM does.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mmsr.eval.exact import exact_higher, target_scores

# Score block: users x items. 1024 x 4096 float32 is 16 MB (plus 4 MB of bools): large enough
# for an efficient GEMM (k = dim), small enough that the passes over it stay in cache.
USERS_BLOCK = 1024
ITEMS_BLOCK = 4096


def _gemm_torch(q: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    import torch

    torch.mm(torch.from_numpy(q), torch.from_numpy(v).T, out=torch.from_numpy(out))


def _gemm_numpy(q: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    np.matmul(q, v.T, out=out)


# name -> out[:] = q @ v.T (float32, C-contiguous). torch links MKL, numpy OpenBLAS: which one
# is faster depends on the CPU (several x either way), so it is measured, not assumed.
GEMMS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], None]] = {
    "torch": _gemm_torch,
    "numpy": _gemm_numpy,
}


def worker_threads() -> int:
    """Threads for the passes over a block: torch's setting when torch is loaded (it follows
    OMP_NUM_THREADS and `torch.set_num_threads`), else OMP_NUM_THREADS or the CPUs we may use."""
    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process (`pid`): a forked child inherits the pool object but not its threads."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mmsr-rank")


def time_gemm(name: str, dim: int, users: int = 512, items: int = ITEMS_BLOCK, repeats: int = 1) -> float:
    """Best seconds of `repeats` GEMMs of one score block (after a warm-up), on random data."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((users, dim), dtype=np.float32)
    v = rng.standard_normal((items, dim), dtype=np.float32)
    out = np.empty((users, items), dtype=np.float32)
    gemm = GEMMS[name]
    gemm(q, v, out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        gemm(q, v, out)
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def gemm_timings(dim: int, threads: int) -> dict[str, float]:
    """Seconds per score block for each GEMM, measured once per process per (dim, threads)."""
    return {name: time_gemm(name, dim) for name in GEMMS}


def fastest_gemm(dim: int) -> str:
    timings = gemm_timings(dim, worker_threads())
    return min(timings, key=timings.get)


def count_ranks(vectors: np.ndarray, norms: np.ndarray, rounding: float, tie: float, queries: np.ndarray,
                targets: np.ndarray, offsets: np.ndarray | None, history: np.ndarray | None, max_k: int, *,
                gemm: str = "auto", users_block: int = USERS_BLOCK, items_block: int = ITEMS_BLOCK,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """1-based ranks [U] (capped at max_k + 1) of each user's target among all items, exact.

    vectors [N, D] float32 and norms [N] float64: the items; `rounding`/`tie`: `exact.rounding_bound`
    / `exact.tie_bound` of D; queries [U, D] float32; offsets [U+1] / history: the masked items
    of each user in CSR form (None: nothing masked). The target is never counted, masked or not.
    """
    return ranks_by_counting(count_higher, vectors, norms, rounding, tie, queries, targets, offsets, history, max_k,
                             gemm=gemm, users_block=users_block, items_block=items_block, on_batch=on_batch)


def ranks_by_counting(count, vectors: np.ndarray, norms: np.ndarray, rounding: float, tie: float, queries: np.ndarray,
                      targets: np.ndarray, offsets: np.ndarray | None, history: np.ndarray | None, max_k: int,
                      **options) -> np.ndarray:
    """Ranks from a `count_higher` (this module's or `dense_gpu`'s, with its `options`) over the
    whole catalogue: the targets' exact scores, the capped counts, 1 + count or max_k + 1."""
    targets = np.asarray(targets, dtype=np.int64)
    counts = count(vectors, norms, rounding, tie, queries, target_scores(queries, vectors, targets), norms[targets],
                   targets, offsets, history, max_k, **options)
    return np.where(counts >= max_k, max_k + 1, counts + 1)


def count_higher(vectors: np.ndarray, norms: np.ndarray, rounding: float, tie: float, queries: np.ndarray,
                 target_score: np.ndarray, target_norm: np.ndarray, hidden_targets: np.ndarray,
                 offsets: np.ndarray | None, history: np.ndarray | None, max_k: int, *, gemm: str = "auto",
                 users_block: int = USERS_BLOCK, items_block: int = ITEMS_BLOCK,
                 on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """int64 [U]: how many of `vectors` score strictly higher than each user's target, capped at max_k.

    The items need not hold the targets: each user's exact target score and target norm are
    given (float64, `exact.target_scores`), so a slice of the catalogue can count its share and
    the shares add up (`mmsr.eval.item_shards`). `hidden_targets` [U]: the target's row in
    `vectors`, or -1 when it is not among them; `offsets`/`history`: the masked items as rows of
    `vectors` (CSR, None: nothing masked).
    """
    if gemm == "auto":
        gemm = fastest_gemm(vectors.shape[1])
    multiply = GEMMS[gemm]
    num_items = len(vectors)
    counts = np.zeros(len(queries), dtype=np.int64)
    if not num_items or not len(queries):
        return counts
    users_block = max(1, min(users_block, len(queries)))
    items_block = max(1, min(items_block, num_items))
    block_norm = np.array([norms[b:b + items_block].max() for b in range(0, num_items, items_block)])
    scores = np.empty(users_block * items_block, dtype=np.float32)
    marks = np.empty(users_block * items_block, dtype=bool)
    threads = worker_threads()
    for start in range(0, len(queries), users_block):
        stop = min(start + users_block, len(queries))
        hidden = None if offsets is None else (np.diff(offsets[start:stop + 1]), history[offsets[start]:offsets[stop]])
        block = _UserBlock(vectors, norms, rounding, tie, queries[start:stop], target_score[start:stop],
                           target_norm[start:stop], hidden_targets[start:stop], hidden, max_k)
        counts[start:stop] = block.run(multiply, items_block, block_norm, scores, marks, threads)
        if on_batch is not None:
            on_batch(stop)
    return counts


class _UserBlock:
    """One block of users, scanned over all item blocks; `count` holds the unmasked items known to
    score strictly higher than each user's target (capped at max_k)."""

    def __init__(self, vectors, norms, rounding, tie, q, target_score, target_norm, targets, hist, max_k):
        self.vectors, self.norms, self.rounding, self.tie, self.max_k = vectors, norms, rounding, tie, max_k
        self.q = np.ascontiguousarray(q)
        self.q_norms = np.linalg.norm(self.q.astype(np.float64), axis=1)
        self.target_score, self.target_norm = target_score, target_norm
        self.count = np.zeros(len(q), dtype=np.int64)
        # Entries set to -inf before counting: the history (if masked) and the target itself,
        # sorted by item so each item block finds its own with a binary search.
        targets = np.asarray(targets, dtype=np.int64)
        rows = np.flatnonzero(targets >= 0)
        items = targets[rows]
        if hist is not None:  # (lengths [B], items): this block's masked items, CSR without offsets
            lengths, history = hist
            rows = np.concatenate([rows, np.repeat(np.arange(len(q)), lengths)])
            items = np.concatenate([items, np.asarray(history, dtype=np.int64)])
        order = np.argsort(items, kind="stable")
        self.hide_rows, self.hide_items = rows[order], items[order]

    def run(self, multiply, items_block, block_norm, scores_buf, marks_buf, threads) -> np.ndarray:
        active = np.arange(len(self.q))  # users still below max_k, in block-row order
        q = self.q
        for b, start in enumerate(range(0, len(self.vectors), items_block)):
            if not len(active):
                break
            stop = min(start + items_block, len(self.vectors))
            shape = (len(active), stop - start)
            scores = scores_buf[:shape[0] * shape[1]].reshape(shape)
            marks = marks_buf[:shape[0] * shape[1]].reshape(shape)
            multiply(q, self.vectors[start:stop], scores)
            self._hide(scores, active, start, stop)
            bound = self.rounding * self.q_norms[active] * block_norm[b] + 1e-30
            low = float32_down(self.target_score[active] - bound)
            high = float32_up(self.target_score[active] + bound)
            scan = functools.partial(self._scan, scores, marks, active, low, high, start)
            chunks = _row_chunks(len(active), threads)
            if len(chunks) > 1:
                list(_pool(threads, os.getpid()).map(lambda c: scan(*c), chunks))
            else:
                scan(0, len(active))
            still = self.count[active] < self.max_k
            if not still.all():
                active = active[still]
                q = np.ascontiguousarray(self.q[active])
        return self.count

    def _hide(self, scores, active, start, stop) -> None:
        """-inf at this item block's masked entries (and targets) of the active users."""
        lo, hi = np.searchsorted(self.hide_items, [start, stop])
        if lo == hi:
            return
        position = np.full(len(self.q), -1, dtype=np.int64)
        position[active] = np.arange(len(active))
        rows = position[self.hide_rows[lo:hi]]
        keep = rows >= 0
        scores[rows[keep], self.hide_items[lo:hi][keep] - start] = -np.inf

    def _scan(self, scores, marks, active, low, high, start, r0, r1) -> None:
        """Rows r0:r1 of the score block: find, count and decide the items that may beat the target."""
        s = scores[r0:r1]
        # A row maximum (one read-only pass) clears most rows of a trained model at once: their
        # best item is below the target's score minus the bound.
        rows = np.flatnonzero(s.max(axis=1) >= low[r0:r1])
        if not len(rows):
            return
        sub = s if len(rows) == len(s) else s[rows]
        m = marks[r0:r0 + len(rows)]  # this chunk's own rows of the bool buffer
        np.greater_equal(sub, low[r0 + rows, None], out=m)
        marked = m.view(np.int8).sum(axis=1, dtype=np.int32)  # ~4x faster than count_nonzero(axis=1)
        users = active[r0 + rows]
        need = self.max_k - self.count[users]
        heavy = np.flatnonzero(marked > need)
        if len(heavy):
            # Enough marks to finish these users: count the surely-higher ones first.
            sure = (sub[heavy] > high[r0 + rows[heavy], None]).view(np.int8).sum(axis=1, dtype=np.int32)
            done = heavy[sure >= need[heavy]]
            self.count[users[done]] = self.max_k
            m[done] = False
        flat = np.flatnonzero(m)
        if not len(flat):
            return
        i, cols = np.divmod(flat, m.shape[1])
        u, items = users[i], cols + start
        diff = sub[i, cols].astype(np.float64) - self.target_score[u]
        bound = self.rounding * self.q_norms[u] * self.norms[items] + 1e-30
        higher = diff > bound
        unsure = np.flatnonzero(np.abs(diff) <= bound)
        if len(unsure):
            higher[unsure] = exact_higher(self.vectors, self.norms, self.tie, self.q, self.q_norms, self.target_score,
                                          self.target_norm, u[unsure], items[unsure])
        # Each thread owns its rows' users, so these writes never overlap.
        self.count[users] = np.minimum(self.count[users] + np.bincount(i[higher], minlength=len(rows)), self.max_k)


def _row_chunks(rows: int, threads: int, min_rows: int = 32) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per thread (none smaller than `min_rows`)."""
    parts = max(1, min(threads, rows // min_rows))
    edges = np.linspace(0, rows, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def float32_down(x: np.ndarray) -> np.ndarray:
    """float32 values <= x (a float32 comparison against them never misses a float64 crossing)."""
    y = x.astype(np.float32)
    over = y > x
    y[over] = np.nextafter(y[over], np.float32(-np.inf))
    return y


def float32_up(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32)
    under = y < x
    y[under] = np.nextafter(y[under], np.float32(np.inf))
    return y
