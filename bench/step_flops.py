"""How much arithmetic one epoch of training from the cache asks for, and what a measured epoch achieved.

    python bench/step_flops.py [--config configs/paper-gpu.toml] [--set k=v ...] [--epoch-seconds S ...]

Builds the profile's model and its first epoch's batches exactly as `mmsr train --from-cache` does
(the dataset must exist: `mmsr data demo` for the default), counts each batch's distinct items
(each is run through the trainable encoder blocks and the fusion once), and applies
bench/train_step.py's FLOP count (`predict`: the matmuls of the fine-tuned encoder blocks, the
fusion, the sequence model and the loss; backward taken as twice the forward) to every batch.
Nothing is trained or timed here, so it runs on any machine: the arithmetic depends on the shapes
only. The first epoch's batches stand for every epoch (later epochs shuffle them; their distinct
item counts differ by a few percent).

`--epoch-seconds` takes the `epoch_seconds` of a run's metrics.jsonl (measured anywhere, e.g. on
a GPU node) and reports the rate that epoch achieved, and its share of `--peak-tflops` (default
989: an H100/H200's dense bf16 figure from NVIDIA's data sheet). Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import predict  # noqa: E402  (bench/, next to this file)

from mmsr.offline import stay_offline  # noqa: E402

stay_offline()

REPO = Path(__file__).resolve().parents[1]


def epoch_flops(config) -> dict:
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches
    from mmsr.train.model import build_model

    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts,
                        item_field=dataset.item_field)
    tokens = {m: _tokens(config, m, e) for m, e in model.items.encoders.items()}
    batches = TrainBatches.for_config(split, config)
    steps = []
    for step in range(len(batches)):
        batch = batches.batch(0, step)
        rows, positions = batch.inputs.shape
        distinct = len(batch.distinct_items()[0])
        steps.append((distinct, predict(model, config, tokens, distinct, rows, positions)["cache_step_gflop"]))
    first = predict(model, config, tokens, steps[0][0], *batches.batch(0, 0).inputs.shape)
    return {"items": dataset.num_items, "steps": len(steps), "tokens": tokens,
            "distinct_items_per_step": {"mean": round(statistics.mean(d for d, _ in steps), 1),
                                        "median": statistics.median(d for d, _ in steps),
                                        "min": min(d for d, _ in steps), "max": max(d for d, _ in steps)},
            "per_item_forward_gflop": first["per_item_forward_gflop"],
            "fusion_per_item_forward_gflop": first["fusion_per_item_forward_gflop"],
            "step_gflop_median": round(statistics.median(g for _, g in steps), 1),
            "epoch_tflop": round(sum(g for _, g in steps) / 1e3, 4)}


def _tokens(config, modality: str, encoder) -> int:
    """States per item in the cache, as the cache build sizes them (one probe of `lower`)."""
    import torch

    from mmsr.cache_stage import probe_shape

    with torch.no_grad():
        return probe_shape(encoder, modality, config.encoders, torch.device("cpu"))[0]


def main(argv=None) -> None:
    from mmsr import config as config_lib
    from mmsr.errors import MMSRError
    from mmsr.machine import cpu_model
    from mmsr.train.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "paper-gpu.toml"))
    parser.add_argument("--set", action="append", default=[], help="override, e.g. optim.batch_size=128")
    parser.add_argument("--epoch-seconds", type=float, nargs="*", default=[],
                        help="measured epoch times (metrics.jsonl's epoch_seconds) to turn into TFLOP/s")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's peak, for the share")
    args = parser.parse_args(argv)

    config = config_lib.load(TrainConfig, args.config, args.set)
    try:
        counted = epoch_flops(config)
    except MMSRError as error:  # no dataset yet: the error says which command makes it
        sys.exit(f"error: {error}")
    report = {"bench": "step_flops", "config": args.config, "overrides": args.set, "counted_on": cpu_model(),
              **counted}
    if args.epoch_seconds:
        rates = [report["epoch_tflop"] / s for s in args.epoch_seconds]
        report["achieved_tflop_per_s"] = [round(r, 3) for r in rates]
        report["share_of_peak"] = [round(r / args.peak_tflops, 3) for r in rates]
        report["peak_tflops"] = args.peak_tflops
    print(json.dumps(report))


if __name__ == "__main__":
    main()
