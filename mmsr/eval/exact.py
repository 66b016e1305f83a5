"""The tie rule's arithmetic, shared by every inner-product ranking path (FAISS and dense counting).

A float32 inner product, summed in any order, is within `rounding_bound(dim) * |q| * |v|` of
the exact one. A candidate whose float32 score is farther than that from the target's exact
score is decided by it; a nearer one is re-scored by `exact_higher`, the one float64 routine
both paths use, so an item identical to the target ties with it on every path.
"""

from __future__ import annotations

import numpy as np

# Floats gathered at once for exact re-scoring (bounds those buffers to ~32 MB each).
RESCORE_FLOATS = 8 * 1024 * 1024
# Rows per block of the item norms (a 16 MB temporary at 384 dims).
NORM_BLOCK = 1 << 16


def rounding_bound(dim: int) -> float:
    """|float32 score - exact score| <= this * |q| * |v| in any summation order (with a 1% margin).

    The margin also makes every float32 decision agree with the float64 rule: a score beyond
    the bound is beyond it by far more than `tie_bound`."""
    return 1.01 * dim * 2.0**-24


def tie_bound(dim: int) -> float:
    """Exact (float64) scores closer than this (times |q| * |v|) are ties: float64 summation in
    another order could swap them. Far below what float32 inputs can resolve."""
    return 2.0 * dim * 2.0**-53


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """float64 [N]: each float32 row's norm, as every path bounds its rounding with it. In blocks:
    np.linalg.norm squares the whole matrix first (512 MB more at 1M items x 128)."""
    return np.concatenate([np.linalg.norm(vectors[start:start + NORM_BLOCK], axis=1)
                           for start in range(0, len(vectors), NORM_BLOCK)] or [np.zeros(0)]).astype(np.float64)


def target_scores(q: np.ndarray, vectors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """float64 [B]: each query's exact score for its target (every float32 product is exact in float64).
    The targets' vectors are gathered a bounded block at a time: callers pass every case at once
    (200,000 at HM's size, a 100 MB gather at dim 128 otherwise)."""
    targets = np.asarray(targets, dtype=np.int64)
    out = np.empty(len(targets), dtype=np.float64)
    step = max(1, RESCORE_FLOATS // max(1, q.shape[1]))
    for lo in range(0, len(targets), step):
        out[lo:lo + step] = np.einsum("bd,bd->b", q[lo:lo + step], vectors[targets[lo:lo + step]], dtype=np.float64)
    return out


def exact_higher(vectors: np.ndarray, norms: np.ndarray, tie: float, q: np.ndarray, q_norms: np.ndarray,
                 target_score: np.ndarray, target_norm: np.ndarray, rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """bool [n]: item cand[j] scores strictly higher than row rows[j]'s target, in float64.

    `q`, `q_norms`, `target_score` (from `target_scores`), `target_norm` are per row; `norms`
    per item (float64). Scores within `tie` * |q| * max(|v|, |v_target|) of the target's tie.
    """
    out = np.empty(len(rows), dtype=bool)
    step = max(1, RESCORE_FLOATS // max(1, vectors.shape[1]))  # bounded gather buffers
    for lo in range(0, len(rows), step):
        rr, cc = rows[lo:lo + step], cand[lo:lo + step]
        exact = np.einsum("nd,nd->n", q[rr], vectors[cc], dtype=np.float64)
        margin = tie * q_norms[rr] * np.maximum(norms[cc], target_norm[rr])
        out[lo:lo + step] = exact - target_score[rr] > margin
    return out
