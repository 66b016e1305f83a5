"""Exact ranks by counting on a GPU (torch): `mmsr.eval.dense`'s rule with the score blocks on the device.

Why a torch path: FAISS's GPU wheels on PyPI are built for CUDA 12 (faiss-gpu-cu12 loads
libcublas.so.12), and an image built on CUDA 13 has none, so a GPU node may have no FAISS GPU
index at all; torch, which trains the model, always has the GPU. A GPU counts a score block so
fast that no top-k is worth keeping.

The rule (`mmsr.eval.search`) and its arithmetic (`mmsr.eval.exact`) are the CPU paths':

1. one float32 GEMM per users block x items block, with TF32 off (the rounding bound assumes
   float32 products and sums, in any order);
2. the masked entries (the history under the paper's protocol) and the target itself at -inf;
3. on the device, per user: the items surely higher (score > target + bound, the bound taken for
   the block's largest item norm) are counted, and the near ones (within the bound) are listed;
4. the near ones, few for a trained model, are copied to the host and decided as the CPU paths
   decide a candidate: by the pair's own bound, else by the shared float64 re-score
   (`exact.exact_higher`), so identical items tie on every path.

So the ranks are the CPU paths' ranks, case by case, whatever the GPU's summation order. Memory
on the device: the item vectors (N x D float32), one users_block x items_block score block with
three boolean masks of its shape (512 MB + 3 x 128 MB at the defaults) and a chunk of near
pairs (64 MB); `auto` takes this path only when
they fit in MEMORY_SHARE of the GPU's free memory, and asked for by name it says when they do not. The code is device-agnostic torch:
tests run it on the CPU, where it must give the same ranks.

`count_ranks` ranks against the whole catalogue (`mmsr eval`'s `dense-gpu`); `count_higher`
counts against a slice of it, as `dense.count_higher` does (`--shard-items`:
`mmsr.eval.item_shards`, each rank on its own GPU).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mmsr.errors import MMSRError
from mmsr.eval.dense import float32_down, float32_up, ranks_by_counting
from mmsr.eval.exact import exact_higher
from mmsr_store.memory import human_bytes

# 4096 x 32768 float32: a 512 MB score block, large enough to keep an H200 busy per launch.
USERS_BLOCK = 4096
ITEMS_BLOCK = 32768
# The share of the GPU's free memory the item vectors and the block buffers may take: the rest
# is the model's, and the allocator's slack.
MEMORY_SHARE = 0.8


# Near pairs (within the rounding bound of the target) taken off the device at once: a trained
# model has few, but items that tie (the same text, no picture) can make a whole block near.
NEAR_PAIRS = 1 << 22


def device_need(num_items: int, dim: int, users_block: int = USERS_BLOCK, items_block: int = ITEMS_BLOCK) -> int:
    """Bytes on the device: the item vectors, a block of queries, the float32 score block with
    three boolean masks of its shape (the near mask and two comparisons' temporaries), and one
    chunk of near pairs' indices."""
    items_block = min(items_block, num_items)
    return 4 * (num_items + users_block) * dim + users_block * items_block * (4 + 3) + 16 * NEAR_PAIRS


def fits(num_items: int, dim: int, device: torch.device) -> tuple[bool, str]:
    """(whether this path's buffers fit in MEMORY_SHARE of `device`'s free memory, a sentence on it).
    Free: the driver's, plus what torch's allocator holds without using it."""
    if device.type != "cuda":
        return True, ""
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    need, free = device_need(num_items, dim), int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    return need <= MEMORY_SHARE * free, f"{human_bytes(need)} of item vectors and buffers, {human_bytes(free)} free on {device}"


@contextlib.contextmanager
def ieee_float32(device: torch.device):
    """float32 matrix products in IEEE float32 (no TF32) for the duration, restored after, and
    checked on `device`. Through the legacy setter, which sets the old and the new TF32 flags
    alike (the new API's alone leaves an earlier `set_float32_matmul_precision("high")` in
    force); the check catches what no flag controls (NVIDIA_TF32_OVERRIDE)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        _check_ieee(device)
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _check_ieee(device: torch.device) -> None:
    """A product whose exact result TF32's 10-bit inputs cannot give: 1 + 2^-20 times the identity."""
    if device.type != "cuda":
        return
    a = torch.full((512, 512), 1 + 2.0**-20, device=device)
    if not bool((a @ torch.eye(512, device=device) == a).all()):
        raise MMSRError(f"float32 matrix products on {device} are not IEEE float32 (TF32 or another reduced "
                        "precision), so the ranking's rounding bound would not hold", where=str(device),
                        hint="unset NVIDIA_TF32_OVERRIDE and TORCH_ALLOW_TF32_CUBLAS_OVERRIDE, or rank on the CPU "
                             "(--search-device cpu)")


def count_ranks(vectors: np.ndarray, norms: np.ndarray, rounding: float, tie: float, queries: np.ndarray,
                targets: np.ndarray, offsets: np.ndarray | None, history: np.ndarray | None, max_k: int, *,
                device: torch.device, users_block: int = USERS_BLOCK, items_block: int = ITEMS_BLOCK,
                on_batch=None) -> np.ndarray:
    """1-based ranks [U] (capped at max_k + 1), as `mmsr.eval.dense.count_ranks` returns them,
    with the score blocks computed and counted on `device`."""
    return ranks_by_counting(count_higher, vectors, norms, rounding, tie, queries, targets, offsets, history, max_k,
                             device=device, users_block=users_block, items_block=items_block, on_batch=on_batch)


def count_higher(vectors: np.ndarray, norms: np.ndarray, rounding: float, tie: float, queries: np.ndarray,
                 target_score: np.ndarray, target_norm: np.ndarray, hidden_targets: np.ndarray,
                 offsets: np.ndarray | None, history: np.ndarray | None, max_k: int, *, device: torch.device,
                 users_block: int = USERS_BLOCK, items_block: int = ITEMS_BLOCK, on_batch=None) -> np.ndarray:
    """int64 [U]: how many of `vectors` score strictly higher than each user's target, capped at
    max_k: `mmsr.eval.dense.count_higher`'s arguments and result (a slice of the catalogue
    included: `hidden_targets` -1 where the target is not among `vectors`), counted on `device`."""
    counts = np.zeros(len(queries), dtype=np.int64)
    if not len(vectors) or not len(queries):
        return counts
    ok, why = fits(len(vectors), vectors.shape[1], device)
    if not ok:
        raise MMSRError(f"ranking on the GPU needs {why}", where=str(device),
                        hint="rank on the CPU (--search-device cpu), or spread the items over (more) torchrun "
                             "ranks (--shard-items)")
    exact = _Exact(vectors, norms, rounding, tie, queries, target_score, target_norm)
    hidden_targets = np.asarray(hidden_targets, dtype=np.int64)
    users_block = max(1, min(users_block, len(queries)))
    items_block = max(1, min(items_block, len(vectors)))
    with ieee_float32(device):
        items = torch.from_numpy(vectors).to(device)
        block_norms = [float(norms[b:b + items_block].max()) for b in range(0, len(vectors), items_block)]
        for start in range(0, len(queries), users_block):
            stop = min(start + users_block, len(queries))
            hidden = _hidden(hidden_targets, offsets, history, start, stop)
            counts[start:stop] = _count_block(items, block_norms, items_block, exact, start, stop, hidden, device,
                                              max_k)
            if on_batch is not None:
                on_batch(stop)
    return counts


class _Exact:
    """The host-side float64 arithmetic of the rule, for every user at once."""

    def __init__(self, vectors, norms, rounding, tie, queries, target_score, target_norm):
        self.vectors, self.norms, self.rounding, self.tie, self.queries = vectors, norms, rounding, tie, queries
        self.target_score, self.target_norm = target_score, target_norm
        self.q_norms = np.linalg.norm(queries.astype(np.float64), axis=1)

    def higher(self, users: np.ndarray, items: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """bool: each (user, item) pair's float32 `scores` decided as the CPU paths decide a
        candidate: beyond the pair's rounding bound, by the score; within it, by float64."""
        diff = scores.astype(np.float64) - self.target_score[users]
        bound = self.rounding * self.q_norms[users] * self.norms[items] + 1e-30
        out = diff > bound
        unsure = np.flatnonzero(np.abs(diff) <= bound)
        if len(unsure):
            out[unsure] = exact_higher(self.vectors, self.norms, self.tie, self.queries, self.q_norms,
                                       self.target_score, self.target_norm, users[unsure], items[unsure])
        return out


def _hidden(targets, offsets, history, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows within the block, items) set to -inf: each user's target where it is among the items
    (>= 0) and, when masked, the history."""
    rows = np.flatnonzero(targets[start:stop] >= 0)
    items = targets[start:stop][rows]
    if offsets is not None:
        lengths = np.diff(offsets[start:stop + 1])
        rows = np.concatenate([rows, np.repeat(np.arange(stop - start), lengths)])
        items = np.concatenate([items, np.asarray(history[offsets[start]:offsets[stop]], dtype=np.int64)])
    order = np.argsort(items, kind="stable")
    return rows[order], items[order]


def _count_block(items: torch.Tensor, block_norms: list[float], items_block: int, exact: _Exact, start: int,
                 stop: int, hidden: tuple[np.ndarray, np.ndarray], device: torch.device, max_k: int) -> np.ndarray:
    """The capped counts of users start:stop over every item block."""
    q = torch.from_numpy(np.ascontiguousarray(exact.queries[start:stop])).to(device)
    target = exact.target_score[start:stop]
    q_norms = exact.q_norms[start:stop]
    hide_rows, hide_items = hidden
    sure = torch.zeros(stop - start, dtype=torch.int64, device=device)
    near = np.zeros(stop - start, dtype=np.int64)
    for b, first in enumerate(range(0, len(items), items_block)):
        last = min(first + items_block, len(items))
        scores = q @ items[first:last].T
        lo, hi = np.searchsorted(hide_items, [first, last])
        if lo < hi:
            rows = torch.from_numpy(hide_rows[lo:hi]).to(device)
            scores[rows, torch.from_numpy(hide_items[lo:hi] - first).to(device)] = -torch.inf
        bound = exact.rounding * q_norms * block_norms[b] + 1e-30
        low = torch.from_numpy(float32_down(target - bound)).to(device)[:, None]
        high = torch.from_numpy(float32_up(target + bound)).to(device)[:, None]
        sure += (scores > high).sum(dim=1)
        is_near = scores >= low
        is_near &= scores <= high
        for r0, r1 in _near_chunks(is_near.sum(dim=1).cpu().numpy()):
            r, c = torch.nonzero(is_near[r0:r1], as_tuple=True)
            rows, cols = r.cpu().numpy() + r0, c.cpu().numpy()
            decided = exact.higher(rows + start, cols + first, scores[r + r0, c].cpu().numpy())
            near += np.bincount(rows[decided], minlength=stop - start)
    return np.minimum(sure.cpu().numpy() + near, max_k)


def _near_chunks(per_row: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive row ranges, each holding at most NEAR_PAIRS near pairs (a single row more), that
    cover every row with one."""
    ends = np.cumsum(per_row)
    total = int(ends[-1]) if len(ends) else 0
    chunks, start, taken = [], 0, 0
    while taken < total:
        stop = max(int(np.searchsorted(ends, taken + NEAR_PAIRS, side="right")), start + 1)
        chunks.append((start, stop))
        start, taken = stop, int(ends[stop - 1])
    return chunks
