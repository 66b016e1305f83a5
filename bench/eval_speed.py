"""Full-ranking evaluation speed: the exact paths (FAISS top-k, dense counting) vs the reference
protocol, dense torch top-k, and the GEMM floor; which path "auto" picks here.

    .venv/bin/python bench/eval_speed.py                      # 10,000 users x 50,000 items x 384 dims
    .venv/bin/python bench/eval_speed.py --quick              # 2,000 users x 10,000 items x 64 dims, seconds
    .venv/bin/python bench/eval_speed.py --paths-only --users 2000 --items 1000000   # exact paths vs floor only

Measured in one run, on the same random data (timings are ratios within the run):
- faiss:      `mmsr.eval.full_ranking_metrics(backend="faiss")` end to end: index build, search,
              history masking, exact re-scoring and metrics.
- count:      the same call with each dense counting backend (`dense-torch`, `dense-numpy`:
              GEMM score blocks, items strictly above the target counted, near-ties re-scored).
              Users whose count reaches max K leave early; `count_all_in_range` times the
              chosen one on users aimed at their targets (every rank <= max K), where none
              leaves: the worst case relative to the floor.
- auto:       the backend `mmsr eval` picks on this machine (`mmsr.eval.backends`), its probe's
              timings and one-off cost, and the chosen path's time over the floor.
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
- peak RSS:   the FAISS path and the chosen path alone, in fresh subprocesses at two user counts
              (--rss-users), to show that memory does not grow with the number of users. glibc's dynamic
              mmap threshold lets the heap fragment across batches (tens of MB more at 8x the
              users); MALLOC_MMAP_THRESHOLD_=131072 in the environment removes most of that.

All threads are used unless OMP_NUM_THREADS / --threads says otherwise. numpy and faiss-cpu
use OpenBLAS, whose kernel choice an OPENBLAS_CORETYPE setting overrides; torch uses MKL.
The environment value and the CPU model are reported. The last line printed is one JSON object.
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

from mmsr.machine import cpu_model  # noqa: E402


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


def time_faiss(item_vectors, user_vectors, targets, offsets, history, ks, batch_size, backend="faiss"):
    """(index, metrics, index build seconds, total seconds) of one `full_ranking_metrics` call."""
    from mmsr.eval import ItemIndex, full_ranking_metrics

    t0 = time.perf_counter()
    index = ItemIndex(item_vectors, device="auto")
    t1 = time.perf_counter()
    metrics = full_ranking_metrics(index, user_vectors, targets, (offsets, history), ks=ks, batch_size=batch_size,
                                   backend=backend)
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
    """Run only one ranking path (in a fresh process) and report memory."""
    data = make_problem(args.users, args.items, args.dim, args.hist, args.seed)
    if args.rss_backend == "dense-torch":  # torch's import (hundreds of MB) is no part of the eval's peak
        __import__("torch")
    try:  # reset VmHWM, so that the data generation's temporaries do not count as the eval's peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = current_rss_mb()
    _, metrics, _, seconds = time_faiss(*data, args.ks, args.batch_size, backend=args.rss_backend)
    peak = peak_rss_mb()
    return {"users": args.users, "backend": args.rss_backend, "rss_before_eval_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1),
            "eval_increment_mb": round(peak - before, 1),
            "seconds": round(seconds, 3)}


# The floor's output buffers (one per library) hold at most this many floats (512 MB each): at a
# million items, --floor-chunk users would need gigabytes.
FLOOR_BUFFER_FLOATS = 128 * 1024 * 1024

# --quick: the sizes of a smoke run (explicit options still win)
QUICK = {"users": 2000, "items": 10_000, "dim": 64, "repeats": 1, "ref_sample": 50, "batched_sample": 32}


def aim_users(item_vectors, targets, dim: int, seed: int) -> np.ndarray:
    """Users pointing at their targets (every rank <= max K in practice): no one leaves a count early."""
    rng = np.random.default_rng(seed + 2)
    return item_vectors[targets] * np.float32(4.0) + rng.standard_normal((len(targets), dim), dtype=np.float32)


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
    parser.add_argument("--paths-only", action="store_true",
                        help="time only FAISS, the chosen path and the floor (large --items / --users runs)")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 users x 10,000 items x 64 dims, one round, small samples: a smoke run in seconds")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rss-backend", default="faiss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):  # explicit options win
                setattr(args, name, value)
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

    # 0. The backend `mmsr eval` picks here: its probe runs once per process, timed once.
    from mmsr.eval import ItemIndex, resolve_backend
    from mmsr.eval.dense import GEMMS
    from mmsr.eval.search import search_k

    probe_index = ItemIndex(item_vectors, device="auto")
    t0 = time.perf_counter()
    choice = resolve_backend(probe_index, "auto", k=search_k(max_k, np.diff(offsets)))
    probe_s = time.perf_counter() - t0
    del probe_index
    counts = [f"dense-{gemm}" for gemm in GEMMS]
    aimed = aim_users(item_vectors, targets, args.dim, args.seed)

    # 1. The exact paths (FAISS and each dense count), the chosen one on aimed users, the floor
    #    (torch.mm and numpy) and a bare FAISS search, interleaved --repeats times, best of each:
    #    the machine is shared, and interleaving lets a burst of load hit every method alike.
    #    --paths-only: FAISS, the chosen path (also on aimed users) and the floor only.
    chosen_count = [choice.name] if choice.name in counts else []
    timed_counts = chosen_count if args.paths_only else counts
    best = dict.fromkeys(("faiss", "faiss_search_only", *counts, "chosen_all_in_range", "torch", "numpy"), None)
    count_metrics = {}

    def keep(name, seconds):
        best[name] = seconds if best[name] is None else min(best[name], seconds)

    for backend in ("faiss", *timed_counts):  # warm-up
        time_faiss(item_vectors, user_vectors[:256], targets[:256], offsets[:257], history[:offsets[256]], args.ks,
                   args.batch_size, backend=backend)
    floor_chunk = min(args.floor_chunk, max(16, FLOOR_BUFFER_FLOATS // args.items))
    for _ in range(args.repeats):
        index, metrics, build_s, seconds = time_faiss(item_vectors, user_vectors, targets, offsets, history, args.ks,
                                                      args.batch_size)
        keep("faiss", seconds)
        if not args.paths_only:
            t0 = time.perf_counter()
            for start in range(0, args.users, args.batch_size):
                index.search(user_vectors[start:start + args.batch_size], max_k + 1)
            keep("faiss_search_only", time.perf_counter() - t0)
        for backend in timed_counts:
            _, count_metrics[backend], _, seconds = time_faiss(item_vectors, user_vectors, targets, offsets, history,
                                                               args.ks, args.batch_size, backend=backend)
            keep(backend, seconds)
        _, aimed_metrics, _, seconds = time_faiss(item_vectors, aimed, targets, offsets, history, args.ks,
                                                  args.batch_size, backend=choice.name)
        keep("chosen_all_in_range", seconds)
        for name, value in gemm_floor(item_vectors, user_vectors, floor_chunk, repeats=1).items():
            keep(name, value)
    faiss_s = best["faiss"]
    chosen_s = best[choice.name if choice.name in best else "faiss"]
    floors = {"torch": best["torch"], "numpy": best["numpy"]}
    floor_s = min(floors.values())
    others = {} if args.paths_only else compare_others(args, choice, counts, item_vectors, user_vectors, targets,
                                                       offsets, history, index, max_k)
    other = others.get
    if others:
        others["exact_batched"]["ratio_to_faiss"] = round(others["exact_batched"]["inner_product_rows_all_users_s"]
                                                          / faiss_s, 2)

    def rounded(x, digits=3):
        return None if x is None else round(x, digits)

    def ratio(a, b, digits=3):
        return None if a is None or b is None else round(a / b, digits)

    result = {
        "bench": "eval_speed",
        "problem": {"users": args.users, "items": args.items, "dim": args.dim, "mean_history": args.hist,
                    "ks": list(args.ks), "gemm_gflop": round(gflop, 1)},
        "cpu": cpu_model(),
        "backend": index.backend,
        "auto": {**choice.as_dict(), "probe_once_s": round(probe_s, 3), "eval_s": round(chosen_s, 3),
                 "ratio_to_floor": round(chosen_s / floor_s, 3),
                 "ratio_all_in_range_to_floor": ratio(best["chosen_all_in_range"], floor_s),
                 "ratio_with_probe_to_floor": round((chosen_s + probe_s) / floor_s, 3)},
        "paths_only": args.paths_only,
        "threads": {"torch": torch.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads(),
                    "cpus": os.cpu_count()},
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "seconds": {
            "faiss_eval": round(faiss_s, 3),
            "faiss_index_build": round(build_s, 3),
            "faiss_search_only_top_maxk_plus_1": rounded(best["faiss_search_only"]),
            "reference_extrapolated": rounded(other("reference_s"), 2),
            "dense_torch_topk": rounded(other("dense_s")),
            **{f"count_{backend.split('-')[1]}": rounded(best[backend]) for backend in counts},
            "chosen_all_in_range": rounded(best["chosen_all_in_range"]),
            "floor_gemm": round(floor_s, 3),
            "gemm_torch_mm": round(floors["torch"], 3),
            "gemm_numpy": round(floors["numpy"], 3),
        },
        "floor_chunk_users": floor_chunk,
        "gflops": {
            "faiss_eval_effective": round(gflop / faiss_s, 1),
            "chosen_eval_effective": round(gflop / chosen_s, 1),
            "torch_mm": round(gflop / floors["torch"], 1),
            "numpy": round(gflop / floors["numpy"], 1),
        },
        "timing": f"best of {args.repeats} interleaved rounds for faiss/count/floor; "
                  + (f"reference extrapolated from {other('sample_users')} users" if others else "no reference (--paths-only)"),
        "reference_sample_users": other("sample_users"),
        "reference_seconds_per_user": rounded(other("ref_per_user"), 5),
        "exact_batched": other("exact_batched"),
        "speedup_vs_reference": ratio(other("reference_s"), faiss_s, 1),
        "speedup_vs_dense_torch": ratio(other("dense_s"), faiss_s, 2),
        "ratio_to_floor": round(faiss_s / floor_s, 3),
        "ratio_search_only_to_floor": ratio(best["faiss_search_only"], floor_s),
        "targets": {"speedup_vs_reference>=30": None if "reference_s" not in others else others["reference_s"] / faiss_s >= 30,
                    "ratio_to_floor<=1.3": faiss_s / floor_s <= 1.3,
                    "chosen_ratio_to_floor<=1.3": chosen_s / floor_s <= 1.3},
        "agreement": {"reference_sample": other("ref_agree"), "dense_all_users": other("dense_agree"),
                      "count_metrics_equal_faiss": {b: m == metrics for b, m in count_metrics.items()}},
        "metrics_all_in_range": {k: round(v, 5) for k, v in aimed_metrics.items()},
        "metrics": {k: round(v, 5) for k, v in metrics.items()},
        "peak_rss_mb": other("peak_rss_mb"),
    }
    print(json.dumps(result))


def compare_others(args, choice, counts, item_vectors, user_vectors, targets, offsets, history, index, max_k) -> dict:
    """Sections 2-5: the reference protocol, dense torch top-k, exact batched scoring and peak RSS."""
    import torch

    from mmsr.eval import rank_targets

    ranks = rank_targets(index, user_vectors, targets, (offsets, history), max_k=max_k, batch_size=args.batch_size,
                         backend="faiss")

    # 2. Reference protocol on a sample of users, extrapolated.
    item_t, user_t = torch.from_numpy(item_vectors), torch.from_numpy(user_vectors)
    sample = np.random.default_rng(args.seed + 1).choice(args.users, min(args.ref_sample, args.users), replace=False)
    reference_ranks(item_t, user_t, targets, offsets, history, sample[:5])  # warm-up
    t0 = time.perf_counter()
    ref = reference_ranks(item_t, user_t, targets, offsets, history, sample)
    ref_per_user = (time.perf_counter() - t0) / len(sample)
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

    # 5. Peak RSS of the FAISS path and of the chosen path alone at two user counts (fresh processes).
    rss_users = [int(x) for x in args.rss_users.split(",")] if args.rss_users else [max(1, args.users // 2), args.users]
    rss = {}
    for backend in dict.fromkeys(("faiss", choice.name if choice.name in counts else "faiss")):
        rss[backend] = []
        for n in rss_users:
            cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", "--rss-backend", backend, "--users", str(n),
                   "--items", str(args.items), "--dim", str(args.dim), "--hist", str(args.hist),
                   "--ks", ",".join(map(str, args.ks)), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rss[backend].append(json.loads(out.strip().splitlines()[-1]))
    return {
        "reference_s": ref_per_user * args.users,
        "ref_per_user": ref_per_user,
        "sample_users": int(len(sample)),
        "ref_agree": f"{ref_agree}/{len(sample)}",
        "dense_s": dense_s,
        "dense_agree": f"{dense_agree}/{args.users}",
        "exact_batched": {
            "inner_product_rows_all_users_s": round(batched_s, 3),
            "ratio_to_faiss": None,  # the caller's FAISS time
            "agreement_with_faiss": f"{batched_agree}/{args.users}",
            "carca_scorer_seconds_per_user": round(carca_per_user, 5),
            "carca_scorer_extrapolated_s": round(carca_per_user * args.users, 1),
            "carca_user_item_pairs_per_s": round(args.items / carca_per_user),
            "carca_sample_users": carca_sample,
        },
        "peak_rss_mb": {"main_process_all_methods": round(main_peak, 1), "faiss_only": rss["faiss"],
                        "chosen_only": rss[choice.name if choice.name in counts else "faiss"]},
    }


if __name__ == "__main__":
    main()
