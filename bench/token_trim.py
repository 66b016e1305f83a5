"""What trimming the batch's unused token slots saves a training step (mmsr.models.layers.trim_padding).

    python bench/token_trim.py [--config configs/movielens-mmsrt.toml] [--set k=v ...] [--steps 6] [--warmup 1]

(The MovieLens config's own fusion, `merge-attn`, reads every token.)

Builds the run as `mmsr train --from-cache` does (the dataset and its cache must exist), then takes
the recipe's own `train_step` on consecutive batches of the first epoch, each batch once with the
trim and once without it (trim_padding replaced by the identity), the order swapped every batch, so
that both see the same batches and machine load; reports each one's median step time and their
ratio, and the token slots the item tower ran on (the mean kept, by the cache's slot count). Only
paths that run tokens through something that learns gain anything: a fusion that reads tokens
(merge-attn, coattn, flava, attention pooling) or an encoder's fine-tuned top blocks; states a feed
pools once are not touched. Prints one JSON object last. Not a test.
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

    from mmsr.distributed import Dist
    from mmsr.machine import cpu_model
    from mmsr.models import layers
    from mmsr.train.step import train_step
    from train_profile import setup_from

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens-mmsrt.toml"))
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.fusion=merge-attn")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="steps of each kind taken first, untimed")
    args = parser.parse_args(argv)

    config, device, model, feed, description, batches, (optimizer, scheduler) = setup_from(args.config, args.set)
    print(f"item feed: {description}  device: {device}  steps/epoch: {len(batches)}", file=sys.stderr)

    trim = layers.trim_padding
    # The slots the trimmed steps kept, by the cache's slot count, which tells the modalities apart.
    kept: dict[int, list[int]] = {}

    def watched(hidden, mask, kind):
        if kind == "untrimmed":
            return hidden, mask
        hidden, trimmed = trim(hidden, mask)
        kept.setdefault(mask.shape[1], []).append(trimmed.shape[1])
        return hidden, trimmed

    def timed(kind: str, batch) -> float:
        layers.trim_padding = lambda hidden, mask: watched(hidden, mask, kind)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(model, batch, feed, optimizer, scheduler, dist=Dist(), device=device, optim=config.optim)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    order = batches.order(0)
    seconds: dict[str, list[float]] = {"trimmed": [], "untrimmed": []}
    try:
        for round_ in range(args.warmup + args.steps):
            # Both kinds on the same batch, the one going first swapped every round (ABBA), so that
            # neither gets the other's batches or a warmer cache.
            batch = batches.batch(0, round_ % len(batches), order)
            kinds = ("trimmed", "untrimmed") if round_ % 2 == 0 else ("untrimmed", "trimmed")
            for kind in kinds:
                spent = timed(kind, batch)
                if round_ >= args.warmup:
                    seconds[kind].append(spent)
    finally:
        layers.trim_padding = trim
    if not kept:
        sys.exit("error: no token states reached the item tower's top: this run pools every modality once, "
                 "so there is nothing to trim (use a fusion that reads tokens or fine-tune a top block)")
    median = {kind: statistics.median(s) for kind, s in seconds.items()}
    print(json.dumps({
        "bench": "token_trim", "config": args.config, "overrides": args.set, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "steps": args.steps, "item_feed": description,
        "slots_kept_mean": {str(slots): round(sum(w) / len(w), 1) for slots, w in sorted(kept.items())},
        "step_seconds_median": {kind: round(s, 4) for kind, s in median.items()},
        "untrimmed_over_trimmed": round(median["untrimmed"] / median["trimmed"], 3),
    }))


if __name__ == "__main__":
    main()
