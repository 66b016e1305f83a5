"""`mmsr eval` under torchrun: do N ranks finish an evaluation N times sooner than one process?

    python bench/eval_ranks.py --run RUN [--home H] [--nproc 2] [--split test] [--repeats 2]

The same `mmsr eval --run RUN --split S --json`, alternated within each round:
- alone: one process, one thread;
- ranks: `torchrun --nproc-per-node N`, one thread per rank, gloo;
- sharded: the same with `--shard-items` (no rank holds every item's vector);
- threads: one process, N threads (the other way to use N cores).

Each way also reports `peak_rss_mb`: the largest peak RSS of any one of its processes (a
rank, or the one process), read from getrusage(RUSAGE_CHILDREN) in a fresh parent per run.

Each result's "seconds" (rank 0's item tower, user tower and ranking) and the command's wall
time (start-up included) are kept; the JSON gives their medians ("medians": the seconds and
peak_rss_mb) and, per stage, `ranks_over_alone`, `sharded_over_alone` and `threads_over_alone`.
The user tower and the ranking are split by cases over the ranks (by items with --shard-items); the item tower is shared by batches (`mmsr.eval.towers.item_matrix`),
so on N free cores every stage's ratio should approach 1/N (less where the cores are
hyperthreads). Every way must report the same metrics (`max_metric_diff`: the metric sums are
reduced in another order, so a last-digit difference is possible). The CPU model is
reported; timings are this machine's. Prints one JSON object last. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.machine import cpu_model  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run (name under $MMSR_HOME/runs, or a path)")
    p.add_argument("--home", help="MMSR_HOME for the commands (default: the environment's)")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2)")
    p.add_argument("--split", default="test")
    p.add_argument("--repeats", type=int, default=2, help="rounds, each running every way (default 2)")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs argv, then prints the largest peak RSS (KB) among its descendants: a fresh parent per
# run, so one run's peak never shows in another's.
PEAK_RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)")


def evaluate(args, ranks: int, threads: int = 1, shard_items: bool = False) -> dict:
    command = [sys.executable, "-m", "mmsr_cli.app"]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "mmsr_cli.app"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MMSR_NO_PROGRESS="1", GLOO_SOCKET_IFNAME="lo")
    if args.home:
        env["MMSR_HOME"] = args.home
    started = time.perf_counter()
    # --run-dir: torchrun's own parser would take --run for an abbreviation of its --run-path.
    command = [sys.executable, "-c", PEAK_RSS, *command, "eval", "--run-dir", args.run, "--split", args.split, "--json"]
    done = subprocess.run(command + (["--shard-items"] if shard_items else []), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"eval with {ranks} process(es) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak_mb = int(done.stderr.strip().splitlines()[-1]) / 1024
    return {"wall_s": round(wall, 2), **result["seconds"], "peak_rss_mb": round(peak_mb), "metrics": result["metrics"],
            "backend": result["backend"]}


def main() -> None:
    args = parse()
    if args.nproc < 2:
        sys.exit("--nproc must be at least 2")
    # (processes, threads each, --shard-items)
    ways = {"alone": (1, 1, False), "ranks": (args.nproc, 1, False), "sharded": (args.nproc, 1, True),
            "threads": (1, args.nproc, False)}
    runs = {way: [] for way in ways}
    for round_ in range(args.repeats):
        # Alternate the order, so that a drift in the machine's load hits every way.
        order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
        for way in order:
            result = evaluate(args, *ways[way])
            runs[way].append(result)
            print(f"round {round_ + 1} {way}: " + ", ".join(f"{k} {v}" for k, v in result.items()
                                                         if k not in ("metrics", "backend")), flush=True)
    stages = [k for k in runs["alone"][0] if k not in ("metrics", "backend")]
    medians = {way: {k: statistics.median(r[k] for r in results) for k in stages} for way, results in runs.items()}

    def over_alone(way):
        return {k: round(medians[way][k] / medians["alone"][k], 3) if medians["alone"][k] else None for k in stages}

    metrics = [r["metrics"] for results in runs.values() for r in results]
    diff = max(abs(m[k] - metrics[0][k]) for m in metrics for k in metrics[0])
    print(json.dumps({"benchmark": "eval_ranks", "run": args.run, "split": args.split, "nproc": args.nproc,
                      "processes_threads": ways, "cpu": cpu_model(), "cpus": os.cpu_count(),
                      "backends": {way: results[0]["backend"] for way, results in runs.items()},
                      "medians": medians, "ranks_over_alone": over_alone("ranks"),
                      "sharded_over_alone": over_alone("sharded"), "threads_over_alone": over_alone("threads"),
                      "max_metric_diff": diff, "metrics": metrics[0], "runs": runs}))


if __name__ == "__main__":
    main()
