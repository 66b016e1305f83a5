"""Evaluation with the catalogue split over the ranks: no rank holds every item's vector.

`mmsr eval --shard-items` under torchrun. The default evaluation shares the item tower out
(`towers.item_matrix`) but then gives every rank the whole [items, D] matrix, 15-31 GB at ten
million items (docs/scale.md). Here a rank keeps the vectors of its own items only, and:

1. embeds its items (`towers.rank_items`: the batches one process forms, so the same vectors);
2. gets the vectors its cases' user tower reads (their history windows) from the ranks that
   hold them: the union of every rank's request, filled by the owners, one all-reduce;
3. computes its cases' user vectors; one all-reduce gives every rank every case's query;
4. counts, for every case, the unmasked items *of its slice* that score strictly higher than
   the target (`dense.count_higher`: the tie rule of every other path). The target's exact
   score and norm come from the rank holding the target, by an all-reduce of float64 sums
   that are zero elsewhere, so every rank compares against the same numbers;
5. adds the counts over the ranks (one all-reduce): rank = 1 + the sum, capped at max_k + 1.
   A slice's count stops at max_k, and any slice reaching it puts the sum there too, so the
   capped sum is the capped count over the whole catalogue.

Per rank this holds its slice (items / world), the rows of step 2 (at most cases x max_seq_len),
every case's query and history mask; the ranking work is split by items instead of by cases.
The counting runs on the run's GPU when it has one and the slice's buffers fit there
(`dense_gpu.count_higher`, the same rule), else on the CPU; FAISS is not used.
"""

from __future__ import annotations

import numpy as np
import torch

from mmsr.distributed import all_gathered, all_reduced
from mmsr.errors import MMSRError
from mmsr.eval import dense_gpu
from mmsr.eval.dense import count_higher, fastest_gemm
from mmsr.eval.exact import rounding_bound, target_scores, tie_bound, vector_norms
from mmsr.eval.search import case_histories, shard_rows
from mmsr.eval.towers import ItemSlice, user_matrix

# what --search-backend may ask for here: the dense counting path ("auto": the run's GPU when it
# holds the slice, else the CPU's measured GEMM; "cpu": the CPU's measured GEMM; "gpu": dense_gpu)
GEMM_OF_BACKEND = {"auto": "auto", "dense": "auto", "dense-torch": "torch", "dense-numpy": "numpy", "dense-gpu": "gpu"}


def gemm_for(model, search_backend: str, device: torch.device, search_device: str = "auto") -> str:
    """How the slices will count ("auto", "cpu", "gpu", "torch" or "numpy"), or a clear refusal,
    before any work, of what cannot be ranked this way: a candidate-dependent scorer, a backend
    that is not dense counting, a GPU asked for where the run has none, or a CPU GEMM on the GPU."""
    if model.scorer is not None:
        raise MMSRError("--shard-items ranks by inner products; this model scores each candidate with its own "
                        "attention (a candidate-dependent scorer)", where="--shard-items",
                        hint="evaluate it without --shard-items (exact batched scoring over every item)")
    try:
        gemm = GEMM_OF_BACKEND[search_backend]
    except KeyError:
        raise MMSRError(f"--search-backend {search_backend} cannot rank a catalogue split over the ranks",
                        where="--shard-items", hint="use auto, dense, dense-torch, dense-numpy or dense-gpu with "
                                                    "--shard-items (each rank counts its slice densely; FAISS is "
                                                    "not used)") from None
    wants_gpu = gemm == "gpu" or search_device == "gpu"
    if wants_gpu and (device.type != "cuda" or search_device == "cpu" or gemm in ("torch", "numpy")):
        raise MMSRError(f"--shard-items on the GPU (--search-backend {search_backend}, --search-device "
                        f"{search_device}) counts on the run's GPU, and this run is on {device}"
                        if device.type != "cuda" else
                        f"--search-backend {search_backend} and --search-device {search_device} contradict each other",
                        where="--shard-items", hint="evaluate with --device cuda, or use auto for both")
    if wants_gpu:
        return "gpu"
    return "cpu" if search_device == "cpu" and gemm == "auto" else gemm


def ranks_over_slices(model, part: ItemSlice, split, which: str, *, max_k: int, mask_history: bool, batch_size: int,
                      device: torch.device, rank: int, world: int, gemm: str = "auto",
                      clock=None) -> tuple[np.ndarray, str]:
    """1-based ranks [cases] (capped at max_k + 1) of every case of `split`'s `which`, the same on
    every rank, and the GEMM that computed the scores. `clock`: laps "users" and "ranking" when
    given (the runner's `_Clock`)."""
    cases = split.cases(which)
    max_len = split.config.max_seq_len
    mine = shard_rows(len(cases), rank, world)
    histories = [split.history(u, p, max_len) for u, p in zip(cases.users[mine], cases.positions[mine])]
    # 2. the union of every rank's history items, in the same order everywhere
    wanted = np.unique(np.concatenate(histories)) if histories else np.zeros(0, dtype=np.int64)
    needed = np.unique(np.concatenate(all_gathered(wanted))).astype(np.int64)
    rows = part.rows_of(needed)
    # 3. this rank's queries, then everyone's
    local_histories = [np.searchsorted(needed, h) for h in histories]
    vectors = user_matrix(model, rows, local_histories, max_len, batch_size, device)
    del rows
    queries = torch.zeros(len(cases), vectors.shape[1])
    queries[torch.from_numpy(mine)] = vectors
    queries = np.ascontiguousarray(all_reduced(queries).numpy())
    if clock:
        clock.lap("users")
    # 4. this slice's count for every case
    items = np.ascontiguousarray(model.score_vectors(part.vectors).float().numpy())
    norms = vector_norms(items)
    targets = split.items[split.offsets[cases.users] + cases.positions]
    owned = part.local(targets)
    here = np.flatnonzero(owned >= 0)
    exact = torch.zeros(2, len(cases), dtype=torch.float64)  # the targets' exact scores and norms
    exact[0, here] = torch.from_numpy(target_scores(queries[here], items, owned[here]))
    exact[1, here] = torch.from_numpy(norms[owned[here]])
    target_score, target_norm = all_reduced(exact).numpy()
    offsets = history = None
    if mask_history:
        masks = case_histories(split.offsets, split.items, cases.users, cases.positions)
        offsets, history = _within(masks.offsets, part.local(masks.items))
    dim = items.shape[1]
    if gemm == "auto":
        gemm = "gpu" if device.type == "cuda" and dense_gpu.fits(len(items), dim, device)[0] else "cpu"
    if gemm == "gpu":
        counts = dense_gpu.count_higher(items, norms, rounding_bound(dim), tie_bound(dim), queries, target_score,
                                        target_norm, owned, offsets, history, max_k, device=device)
    else:
        gemm = fastest_gemm(dim) if gemm == "cpu" else gemm
        counts = count_higher(items, norms, rounding_bound(dim), tie_bound(dim), queries,
                              target_score, target_norm, owned, offsets, history, max_k, gemm=gemm)
    # 5. the whole catalogue's count
    total = all_reduced(torch.from_numpy(counts)).numpy()
    if clock:
        clock.lap("ranking")
    return np.where(total >= max_k, max_k + 1, total + 1), gemm


def _within(offsets: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CSR of global items, given as their slice rows (-1: elsewhere), cut to this slice's items."""
    keep = local >= 0
    kept = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    return kept[offsets], local[keep]
