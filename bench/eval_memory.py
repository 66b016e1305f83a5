"""Where `mmsr eval`'s memory goes: resident memory after each of its stages, on a trained run.

    MMSR_HOME=/tmp/scale-hm python bench/eval_memory.py scale-hm-ram --split test
    MMSR_HOME=H torchrun --nproc-per-node 2 bench/eval_memory.py RUN [--shard-items]   (one JSON per rank)

Runs the evaluation in this process (`mmsr.eval.runner.evaluate_splits`, as `mmsr eval` does)
with its stages wrapped: loading the dataset, splitting, building the model, opening the item
feed, the item tower, the cases' histories, the user tower, the index and the ranking (with
--shard-items: the slice, the history rows gathered, the user tower and the slice's count). Each
stage reports the RSS it leaves (VmRSS), the peak so far (VmHWM) and its seconds, in the order
they ran; a stage that runs twice (one per split) is reported each time. Linux only (/proc).
Writes the run's eval_<split>.json as `mmsr eval` does. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import current_rss_mb, peak_rss_mb  # noqa: E402  (bench/, next to this file)

# (module, function) pairs, in the order `mmsr eval` calls them.
STAGES = (("mmsr.train.run", "load_dataset"), ("mmsr.train.run", "split_dataset"), ("mmsr.train.run", "build_model"),
          ("mmsr.train.run", "open_feed"), ("mmsr.eval.runner", "item_matrix"),
          ("mmsr.eval.runner", "case_histories"), ("mmsr.eval.runner", "user_matrix"),
          ("mmsr.eval.runner", "ItemIndex"), ("mmsr.eval.runner", "rank_targets"),
          ("mmsr.eval.runner", "batched_ranks"),
          # --shard-items (mmsr.eval.item_shards)
          ("mmsr.eval.runner", "item_slice"), ("mmsr.eval.item_shards", "case_histories"),
          ("mmsr.eval.item_shards", "user_matrix"), ("mmsr.eval.item_shards", "count_higher"))


def wrap_stages(record: list[dict], stages=STAGES, repeated: tuple[str, ...] = ()) -> None:
    """Wrap each (module, function) so that every call appends its seconds, the RSS it leaves and
    the peak so far to `record`. Consecutive calls of a stage in `repeated` (a training step)
    are folded into one entry: their count, total seconds and the largest RSS they left."""
    import importlib

    for module_name, name in stages:
        module = importlib.import_module(module_name)
        inner = getattr(module, name)

        @functools.wraps(inner)
        def timed(*args, _inner=inner, _name=name, **kwargs):
            start = time.perf_counter()
            out = _inner(*args, **kwargs)
            seconds, rss = time.perf_counter() - start, round(current_rss_mb(), 1)
            last = record[-1] if record else {}
            folded = _name in repeated and last.get("stage") == _name
            if folded:
                last.update(calls=last["calls"] + 1, seconds=round(last["seconds"] + seconds, 3), rss_mb=rss,
                            max_rss_mb=max(last["max_rss_mb"], rss), peak_rss_mb=round(peak_rss_mb(), 1))
            else:
                record.append({"stage": _name, "seconds": round(seconds, 3), "rss_mb": rss,
                               "peak_rss_mb": round(peak_rss_mb(), 1)})
                if _name in repeated:
                    record[-1].update(calls=1, max_rss_mb=rss)
            if not folded or record[-1]["calls"] % 100 == 0:  # a folded stage: every 100th call
                print(f"[memory] {record[-1]}", file=sys.stderr, flush=True)
            return out

        setattr(module, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run (name under $MMSR_HOME/runs, or a path)")
    parser.add_argument("--split", default="test", help="split(s) to evaluate, comma-separated (default: test)")
    parser.add_argument("--shard-items", action="store_true", help="as `mmsr eval --shard-items` (under torchrun)")
    # 512: the batch docs/scale.md's and docs/eval.md's peaks were measured at (`mmsr eval`'s default
    # then; now it takes the run's eval_batch_size, 256 unless the run set another).
    parser.add_argument("--batch-size", type=int, default=512, help="the towers' batch (default 512)")
    args = parser.parse_args()

    from mmsr.eval.runner import evaluate_splits
    from mmsr.machine import cpu_model

    record: list[dict] = []
    start_rss = current_rss_mb()
    wrap_stages(record)
    results = evaluate_splits(args.run, args.split, shard_items=args.shard_items, batch_size=args.batch_size)
    print(json.dumps({"benchmark": "eval_memory", "run": args.run, "cpu": cpu_model(), "batch_size": args.batch_size,
                      "rss_at_start_mb": round(start_rss, 1), "stages": record, "peak_rss_mb": round(peak_rss_mb(), 1),
                      "seconds": {split: result["seconds"] for split, result in results.items()},
                      "metrics": {split: result["metrics"] for split, result in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
