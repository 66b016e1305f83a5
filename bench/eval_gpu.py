"""Exact full ranking on a GPU (`dense-gpu`: torch score blocks, `mmsr.eval.dense_gpu`) against the
fastest exact path on this machine's CPU (what "auto" picks for an index on the CPU), on the
same random problem, in one run. Needs a CUDA device.

    python bench/eval_gpu.py                              # 20,000 users x 1,000,000 items x 128 dims
    python bench/eval_gpu.py --users 2000 --items 100000  # seconds

Users are aimed near their targets (part of the ranks fall within max K, as a trained model's
do) and carry a 50-item history, masked. Reported: each path's
seconds (best of --repeats, after a warm-up run), the ratio, whether every rank agreed, the
GPU's and the CPU's names and the CPU threads. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.eval.search import ItemIndex, rank_targets, resolve_backend, search_k  # noqa: E402
from mmsr.machine import cpu_model  # noqa: E402


def problem(users: int, items: int, dim: int, history: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((items, dim), dtype=np.float32)
    targets = rng.integers(0, items, users)
    queries = (vectors[targets] * 0.4 + rng.standard_normal((users, dim), dtype=np.float32)).astype(np.float32)
    histories = [rng.integers(0, items, history) for _ in range(users)]
    return vectors, queries, targets, histories


def best_seconds(run, repeats: int):
    out = run()  # warm-up: CUDA context, cuBLAS handles, the CPU probe
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--max-k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/eval_gpu.py needs a CUDA device")
    vectors, queries, targets, histories = problem(args.users, args.items, args.dim, args.history)
    cpu_index, gpu_index = ItemIndex(vectors, device="cpu"), ItemIndex(vectors, device="gpu")
    lengths = np.full(args.users, args.history)
    cpu_choice = resolve_backend(cpu_index, "auto", k=search_k(args.max_k, lengths))

    def on(index, backend):
        return lambda: rank_targets(index, queries, targets, histories, max_k=args.max_k, backend=backend)

    cpu_s, cpu_ranks = best_seconds(on(cpu_index, cpu_choice), args.repeats)
    gpu_s, gpu_ranks = best_seconds(on(gpu_index, "dense-gpu"), args.repeats)
    result = {
        "benchmark": "eval_gpu", "users": args.users, "items": args.items, "dim": args.dim,
        "history": args.history, "max_k": args.max_k,
        "gpu": torch.cuda.get_device_name(), "cpu": cpu_model(), "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_backend": cpu_choice.name, "cpu_seconds": round(cpu_s, 4),
        "gpu_backend": "dense-gpu", "gpu_seconds": round(gpu_s, 4),
        "speedup": round(cpu_s / gpu_s, 2),
        "ranks_equal": bool(np.array_equal(cpu_ranks, gpu_ranks)),
        "ranks_within_max_k": round(float((cpu_ranks <= args.max_k).mean()), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
