"""The optimizer, its learning-rate schedule, and the one config change a resumed run may make.

A run resumed with a different config would be neither the old run nor the new one. The exception
is the run's length: `optim.epochs` and `optim.decay_start_epoch`, when every step already taken
had the same learning rate under both configs, and a longer `early_stop_patience` (or none),
which cannot have stopped the run any earlier. The resumed run is then, step for step, the run
the new config would have trained from the start. That is how a run that hit its epoch cap, or
its patience, while still improving is lengthened (`mmsr train --run R --resume --set
optim.epochs=60`) without paying again for the epochs it has.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig
from mmsr.train.model import parameter_groups

# What a resume may change (within the limits above); anything else changes steps already taken.
LENGTH_KEYS = ("optim.epochs", "optim.decay_start_epoch", "early_stop_patience")
# What a resume may change freely, by --set or in config.json: where the run goes on (device, the
# cache's place, the evaluation's batch) and where its dataset lies (the resume compares the
# dataset's content, `mmsr.train.run.check_same_dataset`). Nothing the weights or the optimizer hold.
MOVABLE_KEYS = ("device", "cache_into", "eval_batch_size", "dataset")


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """Up linearly over `warmup_epochs` (step s of W at (s + 1) / W), 1 until `decay_start_epoch`,
    then linear down to `final_lr_fraction` at the last step."""
    o = config.optim
    start = min(o.decay_start_epoch, o.epochs) * steps_per_epoch
    end = o.epochs * steps_per_epoch
    warmup = round(o.warmup_epochs * steps_per_epoch)

    def decay(step: int) -> float:
        if step < start or end <= start:
            return 1.0
        return 1.0 - (1.0 - o.final_lr_fraction) * min(1.0, (step - start) / (end - start))

    def factor(step: int) -> float:
        # A fresh transformer's first Adam steps move every weight by about lr at once; with
        # inputs that share one large direction (pretrained token states do) that can collapse
        # every item onto one vector before anything item-specific is learnt (README, "Warm-up").
        return decay(step) * ((step + 1) / warmup if step < warmup else 1.0)

    return factor


def make_optimizer(model, config: TrainConfig, steps_per_epoch: int):
    """AdamW over the two parameter groups, and the linear-decay schedule stepped once per step."""
    optimizer = torch.optim.AdamW(parameter_groups(model, config), betas=(0.9, config.optim.adam_beta2))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))


def resumed_length_change(saved: TrainConfig, given: TrainConfig, steps_taken: int, steps_per_epoch: int,
                          where: Path) -> dict[str, tuple]:
    """The lengths a resume changes, {key: (saved, given)}: empty, or `LENGTH_KEYS` only
    (`MOVABLE_KEYS` may differ too, and are not returned). `saved`: the config the checkpoint was
    trained with; `given`: config.json with any --set, so that a key edited by hand in the file
    is checked as a --set is.

    Refused, naming the keys, when any other key differs; refused when the patience shrinks;
    refused, naming the first such step, when the new length changes the learning rate of a step
    already taken. The step the checkpoint resumes at counts as taken: its rate was set, and
    saved, with the optimizer."""
    old, new = config_lib.flatten(asdict(saved)), config_lib.flatten(asdict(given))
    changed = {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key) and key not in MOVABLE_KEYS}
    fixed = [key for key in changed if key not in LENGTH_KEYS]
    if fixed:
        shown = ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in fixed)
        raise MMSRError(f"differs from the config its checkpoint was trained with: {shown}", where=where,
                        hint="resume with the run's own config: no --config or --set of other keys, and its "
                             f"config.json as it was if it was edited; only {', '.join(LENGTH_KEYS)} may change, to "
                             f"lengthen or shorten the run (and {', '.join(MOVABLE_KEYS)}, to move it)")
    patience = changed.get("early_stop_patience")
    if patience and patience[1] and (not patience[0] or patience[1] < patience[0]):
        raise MMSRError(f"--resume with early_stop_patience {patience[0]} -> {patience[1]}: a shorter patience "
                        "could have stopped the run before the epochs it has trained", where=where,
                        hint="resume with the same patience, a longer one, or 0 (none)")
    if changed:
        before, after = lr_factor(saved, steps_per_epoch), lr_factor(given, steps_per_epoch)
        moved = next((step for step in range(steps_taken + 1) if before(step) != after(step)), None)
        if moved is not None:
            shown = ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items())
            raise MMSRError(f"--resume with {shown} changes the learning rate of step {moved + 1} (epoch "
                            f"{moved // steps_per_epoch + 1}), which the run has already taken "
                            f"({before(moved):.4g}x -> {after(moved):.4g}x)", where=where,
                            hint="only a change that leaves the steps taken alone can resume: with a decay "
                                 "already under way, start a new run with the new schedule")
    return changed
