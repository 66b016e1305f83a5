"""Where `mmsr train`'s memory goes: resident memory after each stage of a training run.

    MMSR_HOME=/tmp/s1m python bench/train_memory.py --config configs/demo-cpu.toml \\
        --set dataset=scale-1m --set optim.epochs=1 ... --run probe

Trains in this process (`mmsr.train.recipe.train`, as `mmsr train --from-cache` does) with its
stages wrapped: loading the dataset, splitting, building the model, opening the item feed,
preparing the items, the optimizer, the training steps (folded into one entry per epoch: their
count, seconds and the largest RSS a step left) and the validation, whose own stages (item
tower, histories, user tower, index, ranking) are listed as `bench/eval_memory.py` lists them.
Each entry has the RSS the stage leaves (VmRSS), the peak so far (VmHWM) and its seconds, in
the order they ran. The run directory is overwritten. Linux only (/proc). Prints one JSON
object last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_memory import STAGES as EVAL_STAGES  # noqa: E402  (bench/, next to this file)
from eval_memory import wrap_stages  # noqa: E402
from memory import current_rss_mb, peak_rss_mb  # noqa: E402

RECIPE = "mmsr.train.recipe"
# The recipe's own calls, in its order; then the validation's, which go through mmsr.eval.runner.
STAGES = (*((RECIPE, name) for name in ("load_dataset", "split_dataset", "build_model", "open_feed",
                                        "prepare_items", "make_optimizer", "train_step", "validate")),
          *(stage for stage in EVAL_STAGES if stage[0] == "mmsr.eval.runner"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the training config (TOML)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override k=v")
    parser.add_argument("--run", default="train-memory-probe", help="run name under $MMSR_HOME/runs (overwritten)")
    args = parser.parse_args()

    from mmsr.machine import cpu_model
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run

    record: list[dict] = []
    start_rss = current_rss_mb()
    wrap_stages(record, STAGES, repeated=("train_step",))
    prepared = prepare_run(args.run, args.config, args.overrides, overwrite=True)
    best = train(prepared.config, prepared.root, from_cache=True)
    print(json.dumps({"benchmark": "train_memory", "run": str(prepared.root), "cpu": cpu_model(),
                      "overrides": args.overrides, "rss_at_start_mb": round(start_rss, 1), "stages": record,
                      "peak_rss_mb": round(peak_rss_mb(), 1), "best": best}, indent=1))


if __name__ == "__main__":
    main()
