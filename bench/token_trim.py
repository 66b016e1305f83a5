"""What trimming the batch's unused token slots saves a training step (mmsr.models.layers.trim_padding).

    python bench/token_trim.py --config configs/movielens-mmsrt.toml --set model.fusion=merge-attn
        [--steps 6] [--warmup 1]

Builds the run as `mmsr train --from-cache` does (the dataset and its cache must exist), then
takes the recipe's own `train_step` on consecutive batches of the first epoch, alternating a
step with the trim and a step without it (trim_padding replaced by the identity), so that both
see the same machine load; reports each one's median step time and their ratio, and the token
slots the item tower ran on. Only paths that run tokens through something that learns gain
anything: a fusion that reads tokens (merge-attn, coattn, flava, attention pooling) or an
encoder's fine-tuned top blocks; states a feed pools once are not touched. Prints one JSON
object last. Not a test.
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


def main(argv=None) -> None:
    import torch

    from mmsr import config as config_lib
    from mmsr.distributed import Dist
    from mmsr.errors import MMSRError
    from mmsr.machine import cpu_model
    from mmsr.models import layers
    from mmsr.train.config import TrainConfig
    from mmsr.train.step import train_step
    from mmsr_store import StoreError
    from train_profile import setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens-mmsrt.toml"))
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.fusion=merge-attn")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="steps of each kind taken first, untimed")
    args = parser.parse_args(argv)

    config = config_lib.load(TrainConfig, args.config, args.set)
    try:
        device, model, feed, description, batches, (optimizer, scheduler) = setup(config)
    except (MMSRError, StoreError) as error:  # no dataset or no cache yet: say which command makes it
        sys.exit(f"error: {error}")
    print(f"item feed: {description}  device: {device}  steps/epoch: {len(batches)}", file=sys.stderr)

    trim = layers.trim_padding
    widths: dict[str, list[tuple[int, int]]] = {}

    def watched(hidden, mask, kind):
        out = trim(hidden, mask) if kind == "trimmed" else (hidden, mask)
        widths.setdefault(kind, []).append((mask.shape[1], out[1].shape[1]))
        return out

    order = batches.order(0)
    seconds: dict[str, list[float]] = {"trimmed": [], "untrimmed": []}
    index = 0
    for round_ in range(args.warmup + args.steps):
        for kind in ("trimmed", "untrimmed"):
            layers.trim_padding = lambda hidden, mask, kind=kind: watched(hidden, mask, kind)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            train_step(model, batches.batch(0, index % len(batches), order), feed, optimizer, scheduler,
                       dist=Dist(), device=device, optim=config.optim)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= args.warmup:
                seconds[kind].append(time.perf_counter() - start)
            index += 1
    layers.trim_padding = trim
    if not widths:
        sys.exit("error: no token states reached the item tower's top: this run pools every modality once, "
                 "so there is nothing to trim (use a fusion that reads tokens or fine-tune a top block)")
    median = {kind: statistics.median(s) for kind, s in seconds.items()}
    slots, kept = zip(*widths["trimmed"])
    print(json.dumps({
        "bench": "token_trim", "config": args.config, "overrides": args.set, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "steps": args.steps, "item_feed": description,
        "token_slots": max(slots), "slots_kept_mean": round(sum(kept) / len(kept), 1),
        "step_seconds_median": {kind: round(s, 4) for kind, s in median.items()},
        "untrimmed_over_trimmed": round(median["untrimmed"] / median["trimmed"], 3),
    }))


if __name__ == "__main__":
    main()
