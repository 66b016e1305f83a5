"""Where a training step from the cache spends its time: phases, and operators by kind (torch.profiler).

    python bench/train_profile.py [--config configs/paper-gpu.toml] [--set k=v ...] [--steps 10] [--warmup 3]

Builds the run as `mmsr train --from-cache` does (the dataset and its cache must exist: `mmsr data
demo` and `mmsr cache build --config ...` first), then takes `--warmup` steps untimed and
`--steps` steps of the recipe's own `train_step` on consecutive batches of the first epoch:

1. phases, timed with the device synchronised at each boundary: feed (gathering the batch's
   cached states), forward, backward, optimizer;
2. the same steps under torch.profiler: each operator's self time on the device (CUDA) or on the
   CPU, summed into kinds (matmul and attention, copies and casts, indexing, normalisation,
   optimizer, other), the top operators by name, and the top calls by name and input shapes
   (which single calls are large).

Made to find why the paper profile's step reaches a few percent of an H200's peak (docs/gpu.md):
run it there. Prints the top operators on stderr and one JSON object last. Not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.offline import stay_offline  # noqa: E402

stay_offline()

REPO = Path(__file__).resolve().parents[1]

# An operator's kind by its name, first match wins (aten names; CUDA kernels are summed per operator).
KINDS = (
    ("matmul and attention", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_dot_product|scaled_dot_product"
                             r"|_efficient_attention|_flash_attention|_cudnn_attention|convolution|cudnn_convolution)"),
    ("copies and casts", r"^aten::(copy_|_to_copy|to|contiguous|clone|cat|stack|_local_scalar_dense|fill_|zero_)"),
    ("indexing", r"^aten::(index|index_select|gather|embedding|scatter|unique|_unique|masked_|nonzero|take)"),
    ("normalisation and softmax", r"^aten::(native_layer_norm|layer_norm|_softmax|softmax|log_softmax|_log_softmax"
                                  r"|native_layer_norm_backward|_softmax_backward|_log_softmax_backward)"),
    ("optimizer", r"^aten::(_foreach|_fused_adam)"),
)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.match(pattern, name):
            return kind
    return "other"


def _kind(event) -> str:
    """An operator event's kind: "optimizer" inside the optimizer's step, else by its name."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        parent = parent.cpu_parent
    return kind_of(event.name)


def _shapes(event) -> str:
    """An event's input shapes, e.g. "[1786, 65, 384] x [1786, 65, 1]" (scalars and None left out)."""
    return " x ".join(str(list(shape)) for shape in (event.input_shapes or []) if shape) or "-"


def setup(config):
    """Model, feed, batches and optimizer, as the recipe builds them for a run from the cache."""
    import torch

    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.distributed import pick_device
    from mmsr.train.batches import TrainBatches
    from mmsr.train.feeds import open_feed, prepare_items
    from mmsr.train.model import build_model
    from mmsr.train.recipe import use_training_kernels
    from mmsr.train.schedule import make_optimizer

    device = pick_device(config.device)
    use_training_kernels(device)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts,
                        item_field=dataset.item_field).to(device)
    feed, description = open_feed(config, model, dataset, True, device)
    prepare_items(model, config, dataset, True, device)
    batches = TrainBatches.for_config(split, config)
    optimizer = make_optimizer(model, config, len(batches))
    model.train()
    return device, model, feed, description, batches, optimizer


def setup_from(config_path: str, sets: list[str]):
    """(config, *`setup`'s) for a config file and --set overrides; a missing dataset or cache ends
    the bench with the error, which names the command that makes it."""
    from mmsr import config as config_lib
    from mmsr.errors import MMSRError
    from mmsr.train.config import TrainConfig
    from mmsr_store import StoreError

    config = config_lib.load(TrainConfig, config_path, sets)
    try:
        return (config, *setup(config))
    except (MMSRError, StoreError) as error:
        sys.exit(f"error: {error}")


def main(argv=None) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mmsr.distributed import Dist
    from mmsr.machine import cpu_model
    from mmsr.train.step import train_step

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "paper-gpu.toml"))
    parser.add_argument("--set", action="append", default=[], help="override, e.g. optim.batch_size=128")
    parser.add_argument("--steps", type=int, default=10, help="steps timed by phase, then profiled")
    parser.add_argument("--warmup", type=int, default=3, help="steps taken first, untimed")
    parser.add_argument("--top", type=int, default=15, help="operators listed by name")
    args = parser.parse_args(argv)

    config, device, model, feed, description, batches, (optimizer, scheduler) = setup_from(args.config, args.set)
    log(f"item feed: {description}  device: {device}  steps/epoch: {len(batches)}")
    on_gpu = device.type == "cuda"

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    order = batches.order(0)
    steps = iter(range(10**9))

    def step(on_phase=None) -> None:
        index = next(steps) % len(batches)
        train_step(model, batches.batch(0, index, order), feed, optimizer, scheduler, dist=Dist(), device=device,
                   optim=config.optim, on_phase=on_phase)

    for _ in range(args.warmup):
        step()
    phases = []
    for _ in range(args.steps):
        marks = {}

        def on_phase(name: str) -> None:
            sync()
            marks[name] = time.perf_counter()

        sync()
        start = time.perf_counter()
        step(on_phase)
        phases.append({"step": marks["update"] - start, "feed": marks["feed"] - start,
                       "forward": marks["forward"] - marks["feed"], "backward": marks["backward"] - marks["forward"],
                       "optimizer": marks["update"] - marks["backward"]})
    median = {name: round(statistics.median(p[name] for p in phases), 4) for name in phases[0]}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, record_shapes=True) as prof:
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        profiled_s = time.perf_counter() - started
    # Self time: an operator's own time, without the operators it calls, so kinds add up. An
    # operator run inside the optimizer's step is the optimizer's, whatever its name (on a CPU
    # AdamW runs element-wise aten ops one tensor at a time).
    attribute = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    spent: dict[tuple[str, str], list[float]] = {}
    # The same by input shapes: which single calls are large (how the mask product of the demo's
    # pooling was found, docs/bench-train.md).
    by_shape: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        if event.name.startswith("aten::"):
            t = getattr(event, attribute)
            for table, key in ((spent, (event.name, _kind(event))), (by_shape, (event.name, _shapes(event)))):
                row = table.setdefault(key, [0.0, 0])
                row[0] += t
                row[1] += 1
    total = sum(t for t, _ in spent.values()) or 1.0
    kinds: dict[str, float] = {}
    for (_, kind), (t, _) in spent.items():
        kinds[kind] = kinds.get(kind, 0.0) + t
    top = sorted(spent.items(), key=lambda item: -item[1][0])[:args.top]
    log(f"{'operator':<48} {'kind':<26} {'share':>6} {'calls/step':>10}")
    for (name, kind), (t, count) in top:
        log(f"{name[:48]:<48} {kind:<26} {t / total:6.1%} {count / args.steps:10.1f}")
    calls = sorted(by_shape.items(), key=lambda item: -item[1][0])[:args.top]
    log(f"\n{'operator':<30} {'share':>6} {'ms/call':>8}  input shapes")
    for (name, shapes), (t, count) in calls:
        log(f"{name[:30]:<30} {t / total:6.1%} {t / count / 1e3:8.2f}  {shapes[:90]}")
    print(json.dumps({
        "bench": "train_profile", "config": args.config, "overrides": args.set, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_gpu else cpu_model(),
        "threads": torch.get_num_threads(), "steps": args.steps, "item_feed": description,
        "phase_seconds_median": median,
        "time_measured": "self device time" if on_gpu else "self CPU time",
        # The operators' time over the profiled steps' wall time: on a GPU, how busy it was kept.
        "busy_share": round(total / 1e6 / profiled_s, 4),
        "share_by_kind": {kind: round(t / total, 4) for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_operators": [{"name": name, "kind": kind, "share": round(t / total, 4),
                           "calls_per_step": round(count / args.steps, 1)} for (name, kind), (t, count) in top],
        "top_calls_by_shape": [{"name": name, "input_shapes": shapes, "share": round(t / total, 4),
                                "ms_per_call": round(t / count / 1e3, 3)} for (name, shapes), (t, count) in calls],
    }))


if __name__ == "__main__":
    main()
