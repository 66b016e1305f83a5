"""Benchmark: a training step whose frozen modality the feed pooled once, against the same step
from that modality's cached states (README, Training, "Pooled once").

    MMSR_HOME=H python bench/pooled_once.py --set model.fusion=pool+dnn [--steps 30]
                                            [--config configs/movielens-mmsrt.toml] [--set key=value ...]

(The MovieLens config's own fusion, `merge-attn+dnn`, reads every token, so nothing of it is pooled
once: the figures in docs/bench-train.md name `pool+dnn`, its fusion then.)

The config's dataset and its cache must exist under $MMSR_HOME (`mmsr data import` / `mmsr cache
build`, as bench/movielens.py runs them). Two copies of one model (same initial weights, same
optimizer) train on the same first `--steps` batches of epoch 0, the two feeds taking turns
step by step: (a) `open_feed`, which hands the tower's `pooled_once()` modalities over pooled;
(b) `open_states_feed` without pooling, the states every step. Reports each path's median step,
the ratio (b)/(a), the one-off cost of pooling at feed opening, and whether every step's loss
came out the same to the bit (it must). Prints one JSON object on its last line. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/movielens-mmsrt.toml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    args = parser.parse_args()

    import numpy as np
    import torch

    from mmsr import config as config_lib
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.distributed import Dist
    from mmsr.machine import cpu_model
    from mmsr.train.batches import TrainBatches
    from mmsr.train.config import TrainConfig
    from mmsr.train.feeds import WithIds, open_feed, open_states_feed
    from mmsr.train.model import build_model
    from mmsr.train.schedule import make_optimizer
    from mmsr.train.step import train_step

    config = config_lib.load(TrainConfig, args.config, args.sets)
    device = torch.device("cpu")
    torch.use_deterministic_algorithms(True)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts,
                        item_field=dataset.item_field)
    pooled_modalities = model.items.pooled_once() if hasattr(model.items, "pooled_once") else []
    if not pooled_modalities:
        raise SystemExit(f"{args.config}: no modality is pooled once (an encoder top learns, or the fusion "
                         "does not pool first): nothing to compare; name a fusion that pools first, "
                         "e.g. --set model.fusion=pool+dnn")
    opened = {}
    start = time.perf_counter()
    pooled_feed, description = open_feed(config, model, dataset, True, device)
    opened["pooled"] = time.perf_counter() - start
    start = time.perf_counter()
    states_feed, _ = open_states_feed(config, model.encoders, dataset, True, device)
    if model.item_inputs == "ids+states":  # FDSA, CARCA++: the ids beside the states, as open_feed gives them
        states_feed = WithIds(states_feed)
    opened["states"] = time.perf_counter() - start

    batches = TrainBatches.for_config(split, config)
    steps = min(args.steps, len(batches))
    order = batches.order(0)
    runs = {}
    for name, feed in (("pooled", pooled_feed), ("states", states_feed)):
        twin = copy.deepcopy(model).train()
        optimizer, scheduler = make_optimizer(twin, config, len(batches))
        runs[name] = {"model": twin, "feed": feed, "optimizer": optimizer, "scheduler": scheduler,
                      "seconds": [], "losses": []}
    for step in range(steps):
        batch = batches.batch(0, step, order)
        for name in (("pooled", "states") if step % 2 == 0 else ("states", "pooled")):
            run = runs[name]
            torch.manual_seed(step)  # the same dropout masks for both
            start = time.perf_counter()
            loss = train_step(run["model"], batch, run["feed"], run["optimizer"], run["scheduler"], dist=Dist(),
                              device=device, optim=config.optim)
            run["seconds"].append(time.perf_counter() - start)
            run["losses"].append(loss.loss)

    median = {name: statistics.median(run["seconds"]) for name, run in runs.items()}
    result = {
        "config": args.config, "sets": args.sets, "dataset": str(config.dataset), "feed": description,
        "pooled_modalities": pooled_modalities, "steps": steps, "threads": torch.get_num_threads(),
        "cpu": cpu_model(), "median_step_s": median,
        "ratio_states_over_pooled": median["states"] / median["pooled"],
        "feed_open_s": opened,
        "losses_equal": bool(np.array_equal(runs["pooled"]["losses"], runs["states"]["losses"])),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
