"""What trimming unused token slots saves a training step (mmsr.models.layers.trim_padding, in_length_groups).

    python bench/token_trim.py [--config configs/movielens-mmsrt.toml] [--set k=v ...] [--steps 6] [--warmup 1]
                               [--groups 2,4,8]

(The MovieLens config's own fusion, `merge-attn+dnn`, reads every token.)

Builds the run as `mmsr train --from-cache` does (the dataset and its cache must exist), then takes
the recipe's own `train_step` on consecutive batches of the first epoch, each batch once per arm:
"untrimmed" (trim_padding replaced by the identity: every cached slot), "trimmed" (the batch's items
in one call, trimmed to its longest item) and "groups-K" (the items sorted by token count, in K
calls, each trimmed to its own longest item: the item tower's `length_groups`). The arms' order is
rotated every batch and reversed every other one, so that all see the same batches and machine
load. Reports each arm's median step time, the ratios, and the share of the cached token slots
each arm ran (by the cache's slot count, which tells the modalities apart). Only paths that run
tokens through something that learns gain anything: a fusion that reads tokens (merge-attn, coattn,
flava, attention pooling) or an encoder's fine-tuned top blocks; states a feed pools once are not
touched. Prints one JSON object last. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmsr.offline import stay_offline  # noqa: E402

stay_offline()

REPO = Path(__file__).resolve().parents[1]


def group_counts(text: str) -> list[int]:
    """--groups: whole numbers separated by commas (argparse names this function on bad input). An
    empty member is refused, not dropped, as mmsr.comma_lists does for the CLI's lists."""
    return [int(k) for k in text.split(",")]


def main(argv=None) -> None:
    import torch

    from mmsr.distributed import Dist
    from mmsr.machine import cpu_model
    from mmsr.models import layers
    from mmsr.models.towers import ContentItemTower
    from mmsr.train.step import train_step
    from train_profile import setup_from

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens-mmsrt.toml"))
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.fusion=merge-attn")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="steps of each kind taken first, untimed")
    parser.add_argument("--groups", type=group_counts, default=[2, 4, 8],
                        help="length-group counts to time besides one (comma-separated; default 2,4,8)")
    args = parser.parse_args(argv)

    config, device, model, feed, description, batches, (optimizer, scheduler) = setup_from(args.config, args.set)
    print(f"item feed: {description}  device: {device}  steps/epoch: {len(batches)}", file=sys.stderr)

    trim = layers.trim_padding
    towers = [m for m in model.modules() if isinstance(m, ContentItemTower)]
    before = [(tower.length_groups, tower.length_group_devices) for tower in towers]
    # Whether a run (not this bench, which times the groups on any device) groups on this device.
    groups_by_default = bool(towers) and device.type in towers[0].length_group_devices
    # Each arm: (trim on, length groups). "untrimmed" runs every cached slot, "trimmed" the
    # batch's longest item's, "groups-K" each of K groups' longest item's (in_length_groups).
    arms = {"untrimmed": (False, 1), "trimmed": (True, 1)}
    arms.update({f"groups-{k}": (True, k) for k in args.groups if k > 1})
    # Per arm and cache slot count (which tells the modalities apart): token slots run, and the
    # slots the untrimmed tower would have run on the same items.
    slots: dict[str, dict[int, list[int]]] = {arm: {} for arm in arms}
    # Calls of each modality's top per timed step (groups-K runs fewer than K calls where the
    # batch has under K * min_group_items items).
    calls: dict[str, dict[int, int]] = {arm: {} for arm in arms}

    def watched(hidden, mask, arm):
        trimmed_hidden, trimmed = trim(hidden, mask) if arms[arm][0] else (hidden, mask)
        ran = slots[arm].setdefault(mask.shape[1], [0, 0])
        ran[0] += mask.shape[0] * trimmed.shape[1]
        ran[1] += mask.shape[0] * mask.shape[1]
        calls[arm][mask.shape[1]] = calls[arm].get(mask.shape[1], 0) + 1
        return trimmed_hidden, trimmed

    def timed(arm: str, batch) -> float:
        layers.trim_padding = lambda hidden, mask: watched(hidden, mask, arm)
        for tower in towers:
            tower.length_groups, tower.length_group_devices = arms[arm][1], (device.type,)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(model, batch, feed, optimizer, scheduler, dist=Dist(), device=device, optim=config.optim)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    order = batches.order(0)
    names = list(arms)
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for round_ in range(args.warmup + args.steps):
            # Every arm on the same batch, the order rotated every round and reversed every other
            # one, so that no arm keeps the others' batches, a warmer cache or one place in line.
            batch = batches.batch(0, round_ % len(batches), order)
            shift = round_ % len(names)
            line = names[shift:] + names[:shift]
            for arm in (line if round_ % 2 == 0 else line[::-1]):
                spent = timed(arm, batch)
                if round_ >= args.warmup:
                    seconds[arm].append(spent)
    finally:
        layers.trim_padding = trim
        for tower, (groups, devices) in zip(towers, before):
            tower.length_groups, tower.length_group_devices = groups, devices
    if not slots["trimmed"]:
        sys.exit("error: no token states reached the item tower's top: this run pools every modality once, "
                 "so there is nothing to trim (use a fusion that reads tokens or fine-tune a top block)")
    median = {arm: statistics.median(s) for arm, s in seconds.items()}
    print(json.dumps({
        "bench": "token_trim", "config": args.config, "overrides": args.set, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "steps": args.steps, "item_feed": description,
        "tower_length_groups": before[0][0] if before else None, "groups_on_this_device": groups_by_default,
        # The share of the cached token slots each arm ran, by the cache's slot count.
        "slots_run_share": {arm: {str(n): round(ran / full, 3) for n, (ran, full) in sorted(by_slots.items())}
                            for arm, by_slots in slots.items()},
        "calls_per_step": {arm: {str(n): round(c / (args.warmup + args.steps), 2) for n, c in sorted(by_slots.items())}
                           for arm, by_slots in calls.items()},
        "step_seconds_median": {arm: round(s, 4) for arm, s in median.items()},
        "untrimmed_over_trimmed": round(median["untrimmed"] / median["trimmed"], 3),
        "trimmed_over_groups": {arm.split("-")[1]: round(median["trimmed"] / median[arm], 3)
                                for arm in arms if arm.startswith("groups-")},
    }))


if __name__ == "__main__":
    main()
