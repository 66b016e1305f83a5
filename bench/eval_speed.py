"""Full-ranking evaluation speed: FAISS path vs the reference protocol, dense torch, and the GEMM floor.

    .venv/bin/python bench/eval_speed.py                      # 10,000 users x 50,000 items x 384 dims
    .venv/bin/python bench/eval_speed.py --users 2000 --items 10000 --dim 64   # quick

Measured in one run, on the same random data (timings are ratios within the run):
- faiss:      `mmsr.eval.full_ranking_metrics` end to end: index build, search, history masking, exact
              re-scoring and metrics (the number `mmsr eval --faiss` pays after embedding).
- reference:  the research code's protocol, per user: a score vector over all items, history
              set to -inf, a full argsort, the target's position. A Python loop; timed on a
              sample of users (--ref-sample) and extrapolated linearly to all users.
- dense:      torch matmul of a user batch against all items + history masking + topk(max K),
              batched (memory grows with batch x items).
- floor:      users x items x dims GEMM at the best throughput this machine reached, the
              faster of torch.mm and numpy.matmul, timed over the same problem in user chunks.
- exact batched: the backend of candidate-dependent scorers (`mmsr eval` for CARCA++): the
              ranking rule on exact inner-product score rows for all users (its agreement with
              FAISS is reported), and CARCA++'s cross-attention scorer (random weights) on a
              sample of users (--batched-sample), extrapolated.
- peak RSS:   the FAISS path alone, in fresh subprocesses at two user counts (--rss-users),
              to show that memory does not grow with the number of users. glibc's dynamic
              mmap threshold lets the heap fragment across batches (tens of MB more at 8x the
              users); MALLOC_MMAP_THRESHOLD_=131072 in the environment removes most of that.

All threads are used unless OMP_NUM_THREADS / --threads says otherwise. numpy and faiss-cpu
use OpenBLAS, whose kernel choice an OPENBLAS_CORETYPE setting overrides; torch uses MKL.
The environment value is reported. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory import current_rss_mb, peak_rss_mb  # noqa: E402  (bench/, next to this file)


def make_problem(users: int, items: int, dim: int, hist: int, seed: int):
    """Items ~ N(0,1); each user vector = its target's vector + noise (so metrics are non-trivial)."""
    rng = np.random.default_rng(seed)
    item_vectors = rng.standard_normal((items, dim), dtype=np.float32)
    targets = rng.integers(0, items, users)
    user_vectors = item_vectors[targets] * np.float32(0.2) + rng.standard_normal((users, dim), dtype=np.float32)
    lengths = rng.integers(max(1, hist // 4), hist * 7 // 4 + 1, users)
    offsets = np.zeros(users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    history = rng.integers(0, items, int(offsets[-1]))
    return item_vectors, user_vectors, targets, offsets, history


def time_faiss(item_vectors, user_vectors, targets, offsets, history, ks, batch_size):
    from mmsr.eval import ItemIndex, full_ranking_metrics, rank_targets

    t0 = time.perf_counter()
    index = ItemIndex(item_vectors, device="auto")
    t1 = time.perf_counter()
    metrics = full_ranking_metrics(index, user_vectors, targets, (offsets, history), ks=ks, batch_size=batch_size)
    t2 = time.perf_counter()
    return index, metrics, t1 - t0, t2 - t0


def time_batched_rule(item_t, user_t, targets, offsets, history, max_k, faiss_ranks, block=256):
    """`ranks_from_scores` over exact inner-product score rows, all users: the exact-batched
    backend with the cheapest scorer, so the rule's own cost shows."""
    from mmsr.eval.search import Histories, ranks_from_scores

    hist = Histories(offsets, history)
    t0 = time.perf_counter()
    ranks = np.empty(len(user_t), dtype=np.int64)
    for start in range(0, len(user_t), block):
        rows = np.arange(start, min(len(user_t), start + block))
        scores = (user_t[start:start + len(rows)] @ item_t.T).numpy()
        ranks[rows] = ranks_from_scores(scores, targets[rows], hist.take(rows), max_k)
    seconds = time.perf_counter() - t0
    return seconds, int((ranks == faiss_ranks).sum())


def time_carca_scorer(item_t, sample: int, seed: int, length: int = 20):
    """CARCA++'s cross-attention scorer (random weights): seconds per user to score every item."""
    import torch

    from mmsr.eval.runner import SCORE_CASES, SCORE_ITEMS
    from mmsr.models.carca import CrossAttentionScorer

    torch.manual_seed(seed)
    scorer = CrossAttentionScorer(item_t.shape[1]).eval()
    users = min(sample, SCORE_CASES * 4)
    contexts = torch.randn(users, length, item_t.shape[1])
    key_mask = torch.ones(users, length, dtype=torch.bool)
    with torch.no_grad():
        scorer.matrix(contexts[:2], key_mask[:2], item_t[:256])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, users, SCORE_CASES):
            for a in range(0, len(item_t), SCORE_ITEMS):
                scorer.matrix(contexts[start:start + SCORE_CASES], key_mask[start:start + SCORE_CASES],
                              item_t[a:a + SCORE_ITEMS])
    return (time.perf_counter() - t0) / users, users


def reference_ranks(item_t, user_t, targets, offsets, history, rows):
    """The research code's loop: per-user scores, history -> -inf, full argsort, target position."""
    import torch

    ranks = []
    for u in rows:
        scores = item_t @ user_t[u]
        hist = torch.from_numpy(history[offsets[u]:offsets[u + 1]])
        hist = hist[hist != int(targets[u])]
        scores[hist] = -float("inf")
        order = torch.argsort(scores, descending=True)
        ranks.append(int((order == int(targets[u])).nonzero()[0, 0]) + 1)
    return np.array(ranks, dtype=np.int64)


def dense_topk(item_t, user_t, targets, offsets, history, max_k, batch):
    """Batched dense scores + masking + topk; rank = 1 + #topk values strictly above the target's."""
    import torch

    ranks = np.empty(len(user_t), dtype=np.int64)
    targets_t = torch.from_numpy(targets)
    for start in range(0, len(user_t), batch):
        stop = min(start + batch, len(user_t))
        scores = user_t[start:stop] @ item_t.T
        target_scores = scores.gather(1, targets_t[start:stop, None])
        lo, hi = offsets[start], offsets[stop]
        rows = torch.from_numpy(np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1])))
        cols = torch.from_numpy(history[lo:hi])
        keep = cols != targets_t[start:stop][rows]
        scores[rows[keep], cols[keep]] = -float("inf")
        top = torch.topk(scores, max_k, dim=1).values
        ranks[start:stop] = (1 + (top > target_scores).sum(1)).numpy()
    return ranks


def gemm_floor(item_vectors, user_vectors, chunk, repeats=2):
    """Seconds for the full users x items x dims GEMM (in user chunks, output buffer reused), best of each."""
    import torch

    n_users = len(user_vectors)
    out = {}
    item_t, user_t = torch.from_numpy(item_vectors), torch.from_numpy(user_vectors)
    buf_t = torch.empty(min(chunk, n_users), len(item_vectors))
    buf_n = np.empty((min(chunk, n_users), len(item_vectors)), dtype=np.float32)
    item_nt = np.ascontiguousarray(item_vectors.T)
    for name in ("torch", "numpy"):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, n_users, chunk):
                stop = min(start + chunk, n_users)
                if name == "torch":
                    torch.mm(user_t[start:stop], item_t.T, out=buf_t[:stop - start])
                else:
                    np.matmul(user_vectors[start:stop], item_nt, out=buf_n[:stop - start])
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def rss_child(args) -> dict:
    """Run only the FAISS path (in a fresh process) and report memory."""
    data = make_problem(args.users, args.items, args.dim, args.hist, args.seed)
    try:  # reset VmHWM, so that the data generation's temporaries do not count as the eval's peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = current_rss_mb()
    _, metrics, _, seconds = time_faiss(*data, args.ks, args.batch_size)
    peak = peak_rss_mb()
    return {"users": args.users, "rss_before_eval_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "eval_increment_mb": round(peak - before, 1),
            "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hist", type=int, default=20, help="mean history length (uniform in [hist/4, 7hist/4])")
    parser.add_argument("--ks", default="10,20,50")
    parser.add_argument("--batch-size", type=int, default=4096, help="users per FAISS call")
    parser.add_argument("--dense-batch", type=int, default=1024, help="users per dense torch matmul")
    parser.add_argument("--floor-chunk", type=int, default=2048, help="users per GEMM call for the floor")
    parser.add_argument("--ref-sample", type=int, default=200, help="users timed in the reference loop")
    parser.add_argument("--batched-sample", type=int, default=64,
                        help="users timed with CARCA++'s cross-attention scorer (extrapolated)")
    parser.add_argument("--rss-users", default=None, help="two user counts for the peak-RSS runs (default users/2,users)")
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of faiss/floor timing (best of)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from mmsr.eval import parse_ks

    args.ks = parse_ks(args.ks)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.rss_child:  # no torch here: its import alone is hundreds of MB
        print(json.dumps(rss_child(args)))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    max_k = max(args.ks)
    item_vectors, user_vectors, targets, offsets, history = make_problem(args.users, args.items, args.dim, args.hist, args.seed)
    gflop = 2.0 * args.users * args.items * args.dim / 1e9

    # 1. FAISS path, the floor (torch.mm and numpy) and a bare FAISS search, interleaved
    #    --repeats times, best of each: the machine is shared, and interleaving lets a burst of
    #    load hit every method alike instead of one of them.
    from mmsr.eval import ItemIndex, rank_targets

    best = {"faiss": float("inf"), "faiss_search_only": float("inf"), "torch": float("inf"), "numpy": float("inf")}
    time_faiss(item_vectors, user_vectors[:256], targets[:256], offsets[:257], history[:offsets[256]], args.ks,
               args.batch_size)  # warm-up
    for _ in range(args.repeats):
        index, metrics, build_s, seconds = time_faiss(item_vectors, user_vectors, targets, offsets, history, args.ks, args.batch_size)
        best["faiss"] = min(best["faiss"], seconds)
        t0 = time.perf_counter()
        for start in range(0, args.users, args.batch_size):
            index.search(user_vectors[start:start + args.batch_size], max_k + 1)
        best["faiss_search_only"] = min(best["faiss_search_only"], time.perf_counter() - t0)
        for name, value in gemm_floor(item_vectors, user_vectors, args.floor_chunk, repeats=1).items():
            best[name] = min(best[name], value)
    faiss_s = best["faiss"]
    floors = {"torch": best["torch"], "numpy": best["numpy"]}
    floor_s = min(floors.values())
    ranks = rank_targets(index, user_vectors, targets, (offsets, history), max_k=max_k, batch_size=args.batch_size)

    # 2. Reference protocol on a sample of users, extrapolated.
    item_t, user_t = torch.from_numpy(item_vectors), torch.from_numpy(user_vectors)
    sample = np.random.default_rng(args.seed + 1).choice(args.users, min(args.ref_sample, args.users), replace=False)
    reference_ranks(item_t, user_t, targets, offsets, history, sample[:5])  # warm-up
    t0 = time.perf_counter()
    ref = reference_ranks(item_t, user_t, targets, offsets, history, sample)
    ref_per_user = (time.perf_counter() - t0) / len(sample)
    reference_s = ref_per_user * args.users
    ref_agree = int((np.minimum(ref, max_k + 1) == ranks[sample]).sum())

    # 3. Dense torch matmul + topk, batched.
    dense_topk(item_t, user_t[:64], targets[:64], offsets[:65], history, max_k, args.dense_batch)  # warm-up
    t0 = time.perf_counter()
    dense = dense_topk(item_t, user_t, targets, offsets, history, max_k, args.dense_batch)
    dense_s = time.perf_counter() - t0
    dense_agree = int((dense == ranks).sum())

    # 4. Exact batched scoring (candidate-dependent scorers): the one ranking rule on score rows,
    #    with inner-product rows for all users (agreement with FAISS), and CARCA++'s
    #    cross-attention scorer (random weights, sequences of 20) on a sample, extrapolated.
    batched_s, batched_agree = time_batched_rule(item_t, user_t, targets, offsets, history, max_k, ranks)
    carca_per_user, carca_sample = time_carca_scorer(item_t, args.batched_sample, args.seed)

    main_peak = peak_rss_mb()
    del item_t, user_t, dense, ref

    # 5. Peak RSS of the FAISS path alone at two user counts (fresh processes).
    rss_users = [int(x) for x in args.rss_users.split(",")] if args.rss_users else [max(1, args.users // 2), args.users]
    rss = []
    for n in rss_users:
        cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", "--users", str(n), "--items", str(args.items),
               "--dim", str(args.dim), "--hist", str(args.hist), "--ks", ",".join(map(str, args.ks)),
               "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rss.append(json.loads(out.strip().splitlines()[-1]))

    result = {
        "bench": "eval_speed",
        "problem": {"users": args.users, "items": args.items, "dim": args.dim, "mean_history": args.hist,
                    "ks": list(args.ks), "gemm_gflop": round(gflop, 1)},
        "backend": index.backend,
        "threads": {"torch": torch.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads(),
                    "cpus": os.cpu_count()},
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "seconds": {
            "faiss_eval": round(faiss_s, 3),
            "faiss_index_build": round(build_s, 3),
            "faiss_search_only_top_maxk_plus_1": round(best["faiss_search_only"], 3),
            "reference_extrapolated": round(reference_s, 2),
            "dense_torch_topk": round(dense_s, 3),
            "floor_gemm": round(floor_s, 3),
            "gemm_torch_mm": round(floors["torch"], 3),
            "gemm_numpy": round(floors["numpy"], 3),
        },
        "gflops": {
            "faiss_eval_effective": round(gflop / faiss_s, 1),
            "torch_mm": round(gflop / floors["torch"], 1),
            "numpy": round(gflop / floors["numpy"], 1),
        },
        "timing": f"best of {args.repeats} interleaved rounds for faiss/floor; reference extrapolated from {len(sample)} users",
        "reference_sample_users": int(len(sample)),
        "reference_seconds_per_user": round(ref_per_user, 5),
        "exact_batched": {
            "inner_product_rows_all_users_s": round(batched_s, 3),
            "ratio_to_faiss": round(batched_s / faiss_s, 2),
            "agreement_with_faiss": f"{batched_agree}/{args.users}",
            "carca_scorer_seconds_per_user": round(carca_per_user, 5),
            "carca_scorer_extrapolated_s": round(carca_per_user * args.users, 1),
            "carca_user_item_pairs_per_s": round(args.items / carca_per_user),
            "carca_sample_users": carca_sample,
        },
        "speedup_vs_reference": round(reference_s / faiss_s, 1),
        "speedup_vs_dense_torch": round(dense_s / faiss_s, 2),
        "ratio_to_floor": round(faiss_s / floor_s, 3),
        "ratio_search_only_to_floor": round(best["faiss_search_only"] / floor_s, 3),
        "targets": {"speedup_vs_reference>=30": reference_s / faiss_s >= 30, "ratio_to_floor<=1.3": faiss_s / floor_s <= 1.3},
        "agreement": {"reference_sample": f"{ref_agree}/{len(sample)}", "dense_all_users": f"{dense_agree}/{args.users}"},
        "metrics": {k: round(v, 5) for k, v in metrics.items()},
        "peak_rss_mb": {"main_process_all_methods": round(main_peak, 1), "faiss_only": rss},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
