"""Which exact ranking path an evaluation runs: FAISS top-k search or dense counting, on a GPU when
there is one, else by measurement on the CPU.

Every path gives the same ranks (the rule and tie rule in `mmsr.eval.search`); they differ
only in speed. On the CPU which is faster depends on the CPU and its BLAS: faiss-cpu and numpy
use OpenBLAS, torch uses MKL; on a Xeon with AVX-512 torch's GEMM ran ~7x faster than
faiss-cpu's, on an AMD EPYC OpenBLAS's ran faster than MKL's (docs/eval.md). So "auto" times a
score block of each CPU path on this machine, once per process (about half a second on one
core, less on more), and runs the fastest; no CPU-name rules.

    name          what runs                                              when "auto" picks it
    faiss-gpu     FAISS GPU IndexFlatIP top-k, candidates re-scored      the index is on a GPU
    dense-gpu     torch score blocks on the GPU, count strictly higher   a GPU, no FAISS GPU, items fit
    faiss-cpu     FAISS CPU IndexFlatIP top-k, near-ties re-scored       its probe is the fastest
    dense-torch   torch.mm score blocks, count strictly higher           its probe is the fastest
    dense-numpy   numpy.matmul score blocks, count strictly higher       its probe is the fastest

A request is "auto", "faiss" (the index's own: faiss-gpu or faiss-cpu), "dense" (dense-gpu on
a GPU that holds it, else the faster CPU GEMM) or one of the names above. `top_k` (mmsr recommend) always
uses FAISS.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from mmsr.errors import MMSRError
from mmsr.eval import dense
from mmsr.eval.exact import rounding_bound, tie_bound

# The probe: one score block of this many users (x dense.ITEMS_BLOCK items, the real dim). FAISS
# is several times less efficient per flop with a few hundred queries per call than with the
# thousands an evaluation gives it (measured on an AMD EPYC), so the probe must not be smaller.
PROBE_USERS = 1024
PROBE_ROUNDS = 2


@dataclass(frozen=True)
class Choice:
    """A resolved backend, with the probe's seconds per block when "auto" measured them."""

    name: str
    requested: str
    probe_seconds: dict[str, float] = field(default_factory=dict, hash=False)

    def as_dict(self) -> dict:
        out = {"name": self.name, "requested": self.requested}
        if self.probe_seconds:
            out["probe_seconds_per_block"] = {k: round(v, 5) for k, v in self.probe_seconds.items()}
        return out


def _probe_problem(dim: int):
    """Users whose targets rank near the top (a trained model's case: no user leaves a count early)."""
    rng = np.random.default_rng(0)
    items = rng.standard_normal((dense.ITEMS_BLOCK, dim), dtype=np.float32)
    targets = rng.integers(0, len(items), PROBE_USERS)
    users = items[targets] * np.float32(4.0) + rng.standard_normal((PROBE_USERS, dim), dtype=np.float32)
    return items, users, targets


def _probe_search(dim: int, k: int):
    """Items and users for FAISS, whose top-k heaps fill with the block's first k items (every user
    scores them highest), as they fill early over a large catalogue: one block of a fresh heap
    would pay ~k ln(block / k) heap updates per user, several times its share of the real run."""
    rng = np.random.default_rng(0)
    common = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)
    items = rng.standard_normal((dense.ITEMS_BLOCK, dim), dtype=np.float32)
    items[:k] += common * np.float32(40 * np.sqrt(dim))
    users = rng.standard_normal((PROBE_USERS, dim), dtype=np.float32) + common * np.float32(np.sqrt(dim))
    return items, users


def _faiss_run(dim: int, k: int):
    from mmsr.eval.search import ItemIndex  # deferred: search imports this module

    items, users = _probe_search(dim, min(k, dense.ITEMS_BLOCK // 2))
    index = ItemIndex(items, device="cpu")
    return lambda: index.search(users, k)


def _dense_run(gemm: str, dim: int, k: int):
    items, users, targets = _probe_problem(dim)
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    return lambda: dense.count_ranks(items, norms, rounding_bound(dim), tie_bound(dim), users, targets, None, None,
                                     max(1, k - 1), gemm=gemm)


@functools.lru_cache(maxsize=None)
def probe(dim: int, k: int, threads: int) -> dict[str, float]:
    """Best seconds per score block of each CPU path at this dim and top-k size, measured once per
    process per (dim, k, threads). The rounds interleave the paths, so that a burst of load on a
    shared machine hits them alike instead of deciding the choice."""
    runs = {"faiss-cpu": _faiss_run(dim, k), **{f"dense-{gemm}": _dense_run(gemm, dim, k) for gemm in dense.GEMMS}}
    for run in runs.values():
        run()  # warm-up: the FAISS index, thread pools, BLAS buffers
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(PROBE_ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _auto(index, k: int) -> Choice:
    if index.backend == "faiss-gpu":
        return Choice("faiss-gpu", "auto")
    if _gpu_holds(index):
        return Choice("dense-gpu", "auto")
    # FAISS's cost grows with k (its heaps): measure at the next power of two, so that nearby
    # k share one probe.
    seconds = probe(index.dim, 1 << max(0, int(k - 1).bit_length()), dense.worker_threads())
    return Choice(min(seconds, key=seconds.get), "auto", dict(seconds))


def _gpu_holds(index) -> bool:
    """The index has a GPU whose free memory holds dense-gpu's buffers (else the CPU paths rank,
    unless the GPU was asked for by name: then that is an error, not a quiet CPU run)."""
    if index.gpu is None:
        return False
    from mmsr.eval import dense_gpu  # deferred: imports torch, which a CPU-only index never needs

    holds, why = dense_gpu.fits(index.num_items, index.dim, index.gpu)
    if not holds and index.device == "gpu":
        raise MMSRError(f"ranking on the GPU (--search-device gpu) needs {why}",
                        hint="rank on the CPU (--search-device cpu, or auto to fall back by itself)")
    return holds


def _dense_gpu(index, k: int) -> Choice:
    if index.gpu is None:
        raise MMSRError("the dense-gpu ranking backend needs a GPU, and this index is on the CPU",
                        hint="run on a GPU node with --search-device auto or gpu, or pick a CPU backend")
    return Choice("dense-gpu", "dense-gpu")


# request -> resolver(index, k) -> Choice
_REQUESTS = {
    "auto": _auto,
    "faiss": lambda index, k: Choice(index.backend, "faiss"),
    "dense": lambda index, k: Choice("dense-gpu" if _gpu_holds(index) else f"dense-{dense.fastest_gemm(index.dim)}",
                                     "dense"),
    **{f"dense-{g}": (lambda g: lambda index, k: Choice(f"dense-{g}", f"dense-{g}"))(g) for g in dense.GEMMS},
    "dense-gpu": _dense_gpu,
}


def requests() -> list[str]:
    return list(_REQUESTS)


_INDEX_BACKENDS = ("faiss-cpu", "faiss-gpu")  # named for the index they must match (resolve_backend)


def check_request(backend: str | Choice) -> None:
    """Refuse an unknown backend name; called before a run loads (it was found after the item tower)."""
    if not isinstance(backend, Choice) and backend not in (*_REQUESTS, *_INDEX_BACKENDS):
        raise MMSRError(f"unknown ranking backend {backend!r}", where="--search-backend",
                        hint="choose one of " + ", ".join((*requests(), *_INDEX_BACKENDS)))


def resolve_backend(index, backend: str | Choice = "auto", *, k: int = 51) -> Choice:
    """The backend that ranks against `index` (an `ItemIndex`); `k`: the top-k FAISS would ask for
    (max_k + 1 + typical history length)."""
    if isinstance(backend, Choice):
        return backend
    check_request(backend)
    if backend in _INDEX_BACKENDS:
        if backend != index.backend:
            raise MMSRError(f"backend {backend} asked for, but the index is {index.backend}",
                            hint="use device=cpu|gpu for the index, or backend=faiss")
        return Choice(backend, backend)
    return _REQUESTS[backend](index, k)
