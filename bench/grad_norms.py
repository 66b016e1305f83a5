"""Does `optim.grad_clip` act? The global gradient norm of a run's own training batches, before clipping.

    python bench/grad_norms.py --config C [--set k=v ...] [--checkpoint RUN/checkpoints/best.pt ...] [--batches 20]

Builds the run as `mmsr train` does (`bench/train_profile.py`'s setup: the dataset, and the cache
where the config reads one, must exist), then runs the recipe's own `train_step` (the same mean
loss, the same batches) on the first `--batches` batches of epoch 0 with clipping off and an
optimizer that does not step, so the weights never move: at the initial weights, then at each
`--checkpoint`'s weights (`mmsr train` writes `best.pt` and `last.pt`). For each point: the norms'
median, range, and the share of batches whose norm is above the config's `optim.grad_clip`
(those the trainer scales down, each by clip / norm).

Made for issue 12: RecBole's FDSA clips nothing, mmsr's config clips at 1.0, and whether that
acts depends on how many targets a batch holds (docs/compare.md, "Every prefix with the title").
Prints one JSON object last. Not a test; nothing is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_profile import setup_from  # noqa: E402  (also puts the repo on the path, offline)


class _HeldStill:
    """An optimizer that keeps the gradients `train_step` leaves and never moves a weight."""

    def __init__(self, params):
        self.params = list(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        pass


def gradient_norms(model, feed, batches, device, optim, count: int) -> list[float]:
    """The global L2 norm of the gradient of each of the first `count` batches of epoch 0, unclipped."""
    from torch.nn.utils import get_total_norm

    from mmsr.distributed import Dist
    from mmsr.train.step import train_step

    unclipped = dataclasses.replace(optim, grad_clip=0.0)
    held = _HeldStill(model.parameters())
    order = batches.order(0)
    norms = []
    for index in range(min(count, len(batches))):
        train_step(model, batches.batch(0, index, order), feed, held, dist=Dist(), device=device, optim=unclipped)
        # The norm clip_grad_norm_ compares with the clip (torch's own, one sync a batch).
        norms.append(float(get_total_norm([p.grad for p in held.params if p.grad is not None])))
    return norms


def summary(norms: list[float], clip: float) -> dict:
    return {"median": round(statistics.median(norms), 4), "min": round(min(norms), 4), "max": round(max(norms), 4),
            "share_clipped": round(sum(n > clip for n in norms) / len(norms), 4) if clip > 0 else 0.0,
            "batches": len(norms)}


def main(argv=None) -> None:
    from mmsr.errors import MMSRError
    from mmsr.machine import cpu_model
    from mmsr.train.checkpoint import load_checkpoint
    from mmsr.train.model import load_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's config file (e.g. configs/baselines/movielens-fdsa.toml)")
    parser.add_argument("--set", action="append", default=[], help="override, as given to the run, e.g. optim.window_stride=1")
    parser.add_argument("--checkpoint", action="append", default=[], type=Path,
                        help="a checkpoint of that run (repeatable); its weights are measured after the initial ones")
    parser.add_argument("--batches", type=int, default=20, help="batches of epoch 0 measured at each point")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches must be at least 1")

    config, device, model, feed, _description, batches, _optimizer = setup_from(args.config, args.set)
    clip = config.optim.grad_clip
    points = {"initial": summary(gradient_norms(model, feed, batches, device, config.optim, args.batches), clip)}
    for path in args.checkpoint:
        try:  # mmsr's own reader: weights only, a missing or damaged file named
            state = load_checkpoint(path, hint="mmsr train writes RUN/checkpoints/best.pt and last.pt")
        except MMSRError as error:
            sys.exit(f"error: {error}")
        try:  # as mmsr loads its runs: the frozen pretrained tensors are not in a checkpoint
            load_weights(model, state.get("model", {}), where=path)
        except MMSRError as error:
            sys.exit(f"error: {path} is not a checkpoint of this config's model ({error.args[0]}); "
                     "pass the --set overrides the run was trained with")
        points[str(path)] = summary(gradient_norms(model, feed, batches, device, config.optim, args.batches), clip)
    print(json.dumps({"bench": "grad_norms", "cpu": cpu_model(), "config": args.config, "overrides": args.set,
                      "grad_clip": clip, "targets_per_batch": int(batches.batch(0, 0).mask.sum()), "points": points}))


if __name__ == "__main__":
    main()
