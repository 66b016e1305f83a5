"""Benchmark the trainer: one training step from the cache against the same step end-to-end.

    python bench/train_step.py [--items 16] [--users 12] [--batch-users 8] [--max-len 20]
                               [--repeats 5] [--profile configs/demo-cpu.toml] [--home DIR]
                               [--image-mask-ratio R | --mask-ratios 0,0.5,0.75]

Model (issue 5): MiniLM with its top 2 blocks trainable, DINOv2-S with its top 2 blocks at
224 px, merge-attention fusion with 1 layer, SASRec; BCE with one negative; AdamW.

1. Step time, in one process, for the same model and the same batch, alternating the two:
     (a) cache:      cached lower states -> upper -> fusion -> SASRec -> loss -> backward -> AdamW
     (b) end-to-end: raw text and pictures -> preprocess -> frozen lower layers (eval, no grad) -> same
   Reports the fastest and median steps, the ratio (b)/(a) of the fastest (other load only adds
   time; per-round, median and CPU-time ratios beside it), the ratio that counting FLOPs predicts for this
   model and batch, and measured / predicted (target >= 0.9). Preprocessing (tokenising,
   decoding and resizing pictures) is timed on its own and kept out of the FLOP prediction.
2. Peak RSS of training from the cache: a fresh subprocess that only trains from the cache.
3. Seconds per epoch on the demo dataset with the CPU demo profile (`--profile`), in a
   subprocess running the recipe's own `train()` for one epoch (`--epoch-steps N`: time only
   the first N steps and extrapolate, labelled as such; `--epoch-steps -1`: skip).

The compute of a step grows with the number of *distinct* items in the batch (each is encoded
once), so a small catalogue (`--items`) keeps a step practical on a CPU; that number is reported.
`--image-mask-ratio R` runs all of the above with `encoders.image_mask_ratio = R`.
`--mask-ratios 0,0.5,0.75` instead times only the step from the cache, once per ratio (one
cache and one model each, the same batch and initial weights), the ratios taking turns within
each round, and reports each ratio's step time relative to the first (seed §8.4 Table XIV:
fewer picture tokens make the vision top blocks and the merge-attention fusion cheaper).

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import current_rss_mb, peak_rss_mb, reset_peak_rss  # noqa: E402  (bench/, next to this file)
from train_profile import setup as recipe_setup  # noqa: E402  (bench/, next to this file)

from mmsr.machine import cpu_model  # noqa: E402

from mmsr.offline import stay_offline  # noqa: E402

stay_offline()

REPO = Path(__file__).resolve().parents[1]


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- setup


def bench_config(args):
    """The issue's model: paper defaults (minilm top 2, dinov2-s top 2 at 224 px, merge-attn x1, SASRec)."""
    from mmsr.data.split import SplitConfig
    from mmsr.encoders.config import EncoderConfig
    from mmsr.train.config import ModelConfig, OptimConfig, TrainConfig

    return TrainConfig(
        dataset=str(demo_root(args.home, args.items, args.users)), seed=args.seed, device=args.device,
        encoders=EncoderConfig(text_model="minilm", vision_model="dinov2-s", text_top_blocks=2, vision_top_blocks=2,
                               image_size=224, image_mask_ratio=args.image_mask_ratio),
        split=SplitConfig(max_seq_len=args.max_len),
        model=ModelConfig(kind="mmsr", fusion="merge-attn", fusion_layers=1, sequence="sasrec", dim=args.dim),
        optim=OptimConfig(batch_size=args.batch_users))


def demo_root(home, items: int, users: int) -> Path:
    return Path(home) / "datasets" / f"demo-{items}x{users}"


def ensure_demo(root: Path, items: int, users: int) -> None:
    from mmsr.data.demo import generate_demo

    if not root.exists():
        t0 = time.perf_counter()
        generate_demo(root, name=root.name, items=items, users=users, seed=0)
        log(f"generated {root} ({items} items, {users} users) in {time.perf_counter() - t0:.1f}s")


def ensure_cache(dataset, encoder_config, encoders=None) -> None:
    """Build (or finish) the cache; a complete one is reused (build_cache skips finished chunks)."""
    from mmsr.cache_stage import build_cache

    t0 = time.perf_counter()
    report = build_cache(dataset, encoder_config, batch_size=16, num_workers=1, encoders=encoders)
    assert report.complete, report.remaining_chunks
    log(f"cache {report.path}: ready in {time.perf_counter() - t0:.1f}s")


def setup(args, from_cache_only: bool, end_to_end: bool = True):
    """Dataset, split, model, feeds, the one batch and the optimizer, as the recipe builds them."""
    import torch

    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.distributed import pick_device
    from mmsr.encoders import create_encoders
    from mmsr.train.batches import TrainBatches
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model
    from mmsr.train.recipe import make_optimizer

    config = bench_config(args)
    device = pick_device(config.device)
    ensure_demo(Path(config.dataset), args.items, args.users)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    encoders = create_encoders(config.encoders)
    if not from_cache_only:
        ensure_cache(dataset, config.encoders, encoders)
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.num_items, encoders=encoders, train_counts=split.train_counts).to(device)
    feeds = {"cache": open_feed(config, model, dataset, True, device)[0]}
    if not from_cache_only and end_to_end:
        feeds["end_to_end"] = open_feed(config, model, dataset, False, device)[0]
    batches = TrainBatches.for_config(split, config)
    batch = batches.batch(0, 0)
    distinct, _ = batch.distinct_items()
    optimizer, scheduler = make_optimizer(model, config, len(batches))
    model.train()
    return config, dataset, model, feeds, batch, distinct, (optimizer, scheduler), device


def train_step(model, feed, batch, optimizer, config, device, sync) -> dict:
    """One step of the recipe's own `mmsr.train.step.train_step` (single process), timed by phase."""
    from mmsr.distributed import Dist
    from mmsr.train.step import train_step as recipe_step

    marks = {}

    def on_phase(name: str) -> None:
        sync()
        marks[name] = time.perf_counter()

    optimizer, scheduler = optimizer
    sync()
    c0 = time.process_time()  # CPU seconds of all this process's threads: less hurt by other processes
    t0 = time.perf_counter()
    result = recipe_step(model, batch, feed, optimizer, scheduler, dist=Dist(), device=device, optim=config.optim,
                         on_phase=on_phase)
    return {"step_s": marks["update"] - t0, "cpu_s": time.process_time() - c0, "feed_s": marks["feed"] - t0,
            "forward_after_feed_s": marks["forward"] - marks["feed"], "backward_s": marks["backward"] - marks["forward"],
            "optimizer_s": marks["update"] - marks["backward"], "loss": result.mean}


def preprocess_seconds(feed, ids) -> float:
    """The raw feed's CPU preprocessing alone: read texts and pictures, tokenise, decode, resize."""
    id_list = ids.tolist()
    t0 = time.perf_counter()
    for modality, encoder in feed.encoders.items():
        raw = feed.raw(modality, id_list)
        encoder.preprocess([value for value in raw if value is not None])
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- FLOP counting


def block_flops(tokens: int, dim: int, mlp: int) -> int:
    """Forward FLOPs of one transformer block on one sequence: q,k,v,o and MLP matmuls, plus
    QK^T and AV (multiply-add = 2 FLOPs; norms, softmax and activations left out)."""
    return 2 * tokens * (4 * dim * dim + 2 * dim * mlp) + 4 * tokens * tokens * dim


def encoder_flops(encoder, tokens: int) -> dict:
    """Forward FLOPs per item of `lower` and `upper` at `tokens` tokens (hf BERT-like and ViT-like)."""
    cfg = encoder.model.config
    dim = cfg.hidden_size
    mlp = getattr(cfg, "intermediate_size", None) or int(dim * cfg.mlp_ratio)
    block = block_flops(tokens, dim, mlp)
    embed = 0
    if encoder.modality == "image":  # the patch-embedding convolution: every patch, masked ones too
        patch = cfg.patch_size
        embed = 2 * (encoder.transform.size // patch) ** 2 * (cfg.num_channels * patch * patch) * dim
    return {"tokens": tokens, "dim": dim, "layers": encoder.num_layers, "lower_blocks": encoder.split_layer,
            "upper_blocks": encoder.top_blocks, "lower": embed + encoder.split_layer * block,
            "upper": encoder.top_blocks * block}


def predict(model, config, tokens: dict[str, int], distinct: int, rows: int, positions: int) -> dict:
    """Forward FLOPs of each part for this batch, and the step-time ratio they predict.

    cache step      = 3 x trainable forward          (backward ~ 2 x forward, trainable part only)
    end-to-end step = lower forward + 3 x trainable forward
    """
    m = config.model
    enc = {mod: encoder_flops(e, tokens[mod]) for mod, e in model.items.encoders.items()}
    fusion_tokens = sum(tokens.values())
    fusion = sum(2 * tokens[mod] * e.output_size * m.dim for mod, e in model.items.encoders.items())  # projections
    fusion += m.fusion_layers * block_flops(fusion_tokens, m.dim, 4 * m.dim)
    sequence = rows * model.user.sequence.blocks.__len__() * block_flops(positions, m.dim, 4 * m.dim)
    loss = 2 * 2 * rows * positions * m.dim
    lower = distinct * sum(e["lower"] for e in enc.values())
    upper = distinct * sum(e["upper"] for e in enc.values())
    trainable = upper + distinct * fusion + sequence + loss
    out = {
        "per_item_forward_gflop": {mod: {k: (round(v / 1e9, 4) if k in ("lower", "upper") else v) for k, v in e.items()}
                                   for mod, e in enc.items()},
        "fusion_per_item_forward_gflop": round(fusion / 1e9, 4),
        "step_forward_gflop": {"lower": round(lower / 1e9, 2), "encoder_tops": round(upper / 1e9, 2),
                               "fusion": round(distinct * fusion / 1e9, 2), "sasrec_and_loss": round((sequence + loss) / 1e9, 3)},
        "cache_step_gflop": round(3 * trainable / 1e9, 2),
        "end_to_end_step_gflop": round((lower + 3 * trainable) / 1e9, 2),
        "predicted_ratio": (lower + 3 * trainable) / (3 * trainable),
        # The figure: the encoders alone (no fusion, no sequence model).
        "predicted_ratio_encoders_only": (lower + 3 * upper) / (3 * upper),
    }
    if "image" in enc:
        image = enc["image"]
        out["predicted_ratio_vision_encoder_only"] = (image["lower"] + 3 * image["upper"]) / (3 * image["upper"])
    return out


# ----------------------------------------------------------------------------- the three parts


def step_benchmark(args) -> dict:
    import torch

    config, dataset, model, feeds, batch, distinct, optimizer, device = setup(args, from_cache_only=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    tokens = {m: int(feeds["cache"].states[m][0].shape[1]) for m in model.items.encoders}
    rows, positions = batch.inputs.shape
    log(f"batch: {rows} users x {positions} positions, {int(batch.mask.sum())} targets, "
        f"{len(distinct)} distinct items (of {dataset.num_items}); tokens {tokens}; threads {torch.get_num_threads()}")

    runs = {"cache": [], "end_to_end": []}
    prep = []
    for round_ in range(args.warmup + args.repeats):
        order = ["cache", "end_to_end"] if round_ % 2 == 0 else ["end_to_end", "cache"]
        for mode in order:
            result = train_step(model, feeds[mode], batch, optimizer, config, device, sync)
            tag = "warm-up" if round_ < args.warmup else "timed"
            log(f"round {round_} {mode:>10}: {result['step_s']:.2f}s ({tag})")
            if round_ >= args.warmup:
                runs[mode].append(result)
        if round_ >= args.warmup:
            prep.append(preprocess_seconds(feeds["end_to_end"], distinct.cpu()))

    def medians(results):
        return {k: round(statistics.median(r[k] for r in results), 4) for k in results[0] if k != "loss"}

    a, b = medians(runs["cache"]), medians(runs["end_to_end"])
    prep_s = statistics.median(prep)
    flops = predict(model, config, tokens, len(distinct), rows, positions)
    # The machine is shared and other load only ever adds time, so the headline is the fastest
    # step of each mode (as bench/cache_build.py keeps the best of each). The other estimators
    # are reported beside it: per-round pairs, medians, CPU seconds.
    paired = [e["step_s"] / c["step_s"] for c, e in zip(runs["cache"], runs["end_to_end"])]
    fastest = {mode: min(r["step_s"] for r in results) for mode, results in runs.items()}
    measured = fastest["end_to_end"] / fastest["cache"]
    measured_no_prep = (fastest["end_to_end"] - prep_s) / fastest["cache"]
    predicted = flops["predicted_ratio"]
    return {
        "model": {"text": "minilm (top 2 of 6 blocks trainable)", "image": "dinov2-s (top 2 of 12 blocks trainable, 224 px)",
                  "fusion": "merge-attn x1", "sequence": "sasrec x2", "dim": config.model.dim,
                  "max_text_len": config.encoders.max_text_len, "image_mask_ratio": config.encoders.image_mask_ratio},
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "dataset": {"items": dataset.num_items, "users": args.users},
        "batch": {"users": rows, "positions": positions, "targets": int(batch.mask.sum()),
                  "distinct_items": len(distinct), "tokens_per_item": tokens},
        "repeats": args.repeats, "warmup": args.warmup,
        "cache_step": a, "end_to_end_step": b,
        "end_to_end_preprocess_s": round(prep_s, 4),
        "measured_ratio": round(measured, 3),
        "measured_ratio_estimator": "fastest end-to-end step / fastest cache step",
        "ratio_per_round": [round(r, 3) for r in paired],
        "ratio_per_round_median": round(statistics.median(paired), 3),
        "ratio_of_median_steps": round(b["step_s"] / a["step_s"], 3),
        "ratio_of_median_cpu_seconds": round(b["cpu_s"] / a["cpu_s"], 3),
        "step_s_all": {mode: [round(r["step_s"], 2) for r in results] for mode, results in runs.items()},
        "measured_ratio_without_preprocess": round(measured_no_prep, 3),
        "predicted_ratio": round(predicted, 3),
        "measured_over_predicted": round(measured / predicted, 3),
        "measured_over_predicted_without_preprocess": round(measured_no_prep / predicted, 3),
        "target_measured_over_predicted": 0.9,
        "predicted_ratio_encoders_only": round(flops["predicted_ratio_encoders_only"], 3),
        "predicted_ratio_vision_encoder_only": round(flops.get("predicted_ratio_vision_encoder_only", 0), 3),
        "achieved_gflop_per_s": {"cache": round(flops["cache_step_gflop"] / a["step_s"], 1),
                                 "end_to_end_without_preprocess": round(flops["end_to_end_step_gflop"] / (b["step_s"] - prep_s), 1)},
        "flops": flops,
    }


def mask_ratio_benchmark(args) -> dict:
    """The cache step at each image mask ratio: same batch, same initial weights, turns taken."""
    import torch

    setups = {}
    for ratio in args.mask_ratios:
        one = argparse.Namespace(**{**vars(args), "image_mask_ratio": ratio})
        config, dataset, model, feeds, batch, distinct, optimizer, device = setup(one, from_cache_only=False,
                                                                                  end_to_end=False)
        tokens = {m: int(feeds["cache"].states[m][0].shape[1]) for m in model.items.encoders}
        rows, positions = batch.inputs.shape
        setups[ratio] = (config, model, feeds["cache"], batch, optimizer, device, tokens,
                         predict(model, config, tokens, len(distinct), rows, positions))
        log(f"ratio {ratio}: tokens {tokens}, {len(distinct)} distinct items")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {ratio: [] for ratio in args.mask_ratios}
    for round_ in range(args.warmup + args.repeats):
        # Each ratio runs first, middle and last equally often, so slow drift in the machine's
        # load spreads over all of them.
        shift = round_ % len(args.mask_ratios)
        order = args.mask_ratios[shift:] + args.mask_ratios[:shift]
        for ratio in order:
            config, model, feed, batch, optimizer, device, _, _ = setups[ratio]
            result = train_step(model, feed, batch, optimizer, config, device, sync)
            log(f"round {round_} ratio {ratio}: {result['step_s']:.2f}s ({'warm-up' if round_ < args.warmup else 'timed'})")
            if round_ >= args.warmup:
                runs[ratio].append(result)

    base = args.mask_ratios[0]
    fastest = {ratio: min(r["step_s"] for r in results) for ratio, results in runs.items()}
    median = {ratio: statistics.median(r["step_s"] for r in results) for ratio, results in runs.items()}
    cpu = {ratio: statistics.median(r["cpu_s"] for r in results) for ratio, results in runs.items()}
    per_ratio = {}
    for ratio, results in runs.items():
        tokens, flops = setups[ratio][6], setups[ratio][7]
        base_flops = setups[base][7]
        per_ratio[str(ratio)] = {
            "tokens_per_item": tokens,
            "step": {k: round(statistics.median(r[k] for r in results), 4) for k in results[0] if k != "loss"},
            "step_s_fastest": round(fastest[ratio], 3),
            "step_s_all": [round(r["step_s"], 2) for r in results],
            "measured_step_ratio": round(fastest[ratio] / fastest[base], 3),
            "measured_step_ratio_of_medians": round(median[ratio] / median[base], 3),
            "per_round_ratio_median": round(statistics.median(
                r["step_s"] / b["step_s"] for r, b in zip(results, runs[base])), 3),
            # CPU seconds of this process: what a busy shared machine distorts least.
            "measured_cpu_ratio_of_medians": round(cpu[ratio] / cpu[base], 3),
            "predicted_step_ratio": round(flops["cache_step_gflop"] / base_flops["cache_step_gflop"], 3),
            "cache_step_gflop": flops["cache_step_gflop"],
            "step_forward_gflop": flops["step_forward_gflop"],
            "vision_lower_gflop_per_item": flops["per_item_forward_gflop"]["image"]["lower"],
        }
    config = setups[base][0]
    return {
        "benchmark": "train step from the cache at each encoders.image_mask_ratio",
        "model": {"text": "minilm (top 2 of 6 blocks trainable)",
                  "image": f"dinov2-s (top {config.encoders.vision_top_blocks} of 12 blocks trainable, 224 px)",
                  "fusion": "merge-attn x1", "sequence": "sasrec x2", "dim": config.model.dim,
                  "image_mask_seed": config.encoders.image_mask_seed},
        "cpu": cpu_model(), "device": str(setups[base][5]), "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup,
        "measured_step_ratio_estimator": f"fastest step at the ratio / fastest step at ratio {base}",
        "ratios": per_ratio,
    }


def rss_child(args) -> dict:
    """Train from the cache only (a fresh process, so nothing end-to-end is in its peak RSS)."""
    import torch

    t0 = time.perf_counter()
    config, dataset, model, feeds, batch, distinct, optimizer, device = setup(args, from_cache_only=True)
    ready_rss, setup_peak = current_rss_mb(), peak_rss_mb()
    reset = reset_peak_rss()
    cache_mb = sum(h.numel() * h.element_size() + m.numel() for h, m in feeds["cache"].states.values()) / 2**20
    steps = []
    for _ in range(args.rss_steps):
        steps.append(train_step(model, feeds["cache"], batch, optimizer, config, device, lambda: None)["step_s"])
    steps_peak = peak_rss_mb()
    return {"peak_rss_mb": round(max(setup_peak, steps_peak), 1), "rss_after_setup_mb": round(ready_rss, 1),
            "peak_rss_setup_mb": round(setup_peak, 1),
            "peak_rss_during_steps_mb": round(steps_peak, 1) if reset else None,
            "cache_in_ram_mb": round(cache_mb, 1),
            "parameters_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "steps": len(steps), "step_s_median": round(statistics.median(steps), 3), "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - t0, 1)}


def epoch_child(args) -> dict:
    """Seconds per epoch with the CPU demo profile, from the cache, through the recipe itself."""
    import torch

    from mmsr import config as config_lib
    from mmsr.data.dataset import load_dataset
    from mmsr.train.config import TrainConfig

    overrides = ["optim.epochs=1"] + list(args.set or [])
    config = config_lib.load(TrainConfig, args.profile, overrides)
    if config.dataset == "demo" and (args.epoch_items, args.epoch_users) != (3000, 2000):
        config.dataset = str(demo_root(args.home, args.epoch_items, args.epoch_users))  # not the standard demo
    from mmsr import paths

    root = paths.dataset_dir(config.dataset)
    if Path(config.dataset).name.startswith("demo"):
        ensure_demo(root, args.epoch_items, args.epoch_users)
    dataset = load_dataset(config.dataset)
    ensure_cache(dataset, config.encoders)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-epoch-", dir=Path(args.home)))
    out = {"profile": str(args.profile), "overrides": overrides, "dataset": {"name": dataset.name, "items": dataset.num_items},
           "torch_threads": torch.get_num_threads()}
    if args.epoch_steps == 0:
        from mmsr.train.recipe import train

        t0 = time.perf_counter()
        train(config, run_dir, from_cache=True, log=log)
        wall = time.perf_counter() - t0
        record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        out.update({"epoch_seconds": record["epoch_seconds"], "measured": "one full epoch (recipe train())",
                    "wall_s_with_setup_and_validation": round(wall, 1), "loss": record["loss"],
                    "valid": record.get("valid")})
    else:
        out.update(_partial_epoch(config, args.epoch_steps))
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def _partial_epoch(config, steps: int) -> dict:
    """The first `steps` steps of epoch 0, built as the recipe builds them; extrapolated to an epoch."""
    device, model, feed, _, batches, optimizer = recipe_setup(config)
    order = batches.order(0)
    times = []
    for step in range(min(steps, len(batches))):
        t0 = time.perf_counter()
        batch = batches.batch(0, step, order)
        train_step(model, feed, batch, optimizer, config, device, lambda: None)
        times.append(time.perf_counter() - t0)
        log(f"epoch step {step}: {times[-1]:.2f}s")
    per_step = sum(times) / len(times)
    return {"epoch_seconds": round(per_step * len(batches), 1), "steps_per_epoch": len(batches),
            "measured": f"EXTRAPOLATED from the first {len(times)} of {len(batches)} steps (mean step {per_step:.2f}s)"}


def run_child(kind: str, args) -> dict:
    """Run this script as a fresh process in `kind` mode; its last stdout line is its JSON."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind] + args.argv
    log(f"subprocess: {kind}")
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    if done.returncode:
        return {"error": f"child {kind} exited {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="demo catalogue for the step benchmark (bounds distinct items)")
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--batch-users", type=int, default=8, help="users (rows) in the one batch")
    parser.add_argument("--max-len", type=int, default=20, help="positions per row (split.max_seq_len)")
    parser.add_argument("--dim", type=int, default=768, help="model dim (paper: 768)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds of both, not timed")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of both, alternating order; medians")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-mask-ratio", type=float, default=0.0,
                        help="encoders.image_mask_ratio of the step benchmark's model")
    parser.add_argument("--mask-ratios", type=lambda text: [float(v) for v in text.split(",")],
                        help="comma-separated ratios: time only the cache step at each (the first is the baseline)")
    parser.add_argument("--profile", default=str(REPO / "configs" / "demo-cpu.toml"), help="CPU demo profile")
    parser.add_argument("--set", action="append", help="override for the profile, e.g. optim.batch_size=64")
    parser.add_argument("--epoch-items", type=int, default=3000, help="demo items for the epoch (the `mmsr data demo` default)")
    parser.add_argument("--epoch-users", type=int, default=2000)
    parser.add_argument("--epoch-steps", type=int, default=0, help="0: a full epoch; N: first N steps, extrapolated; -1: skip")
    parser.add_argument("--rss-steps", type=int, default=2, help="steps of the from-cache RSS subprocess")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--home", default=None, help="data root to use (default: a temporary directory)")
    parser.add_argument("--child", choices=["rss", "epoch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.home is None:
        args.home = tempfile.mkdtemp(prefix="mmsr-bench-train-")
        argv += ["--home", args.home]
    args.argv = [a for a in argv]
    os.environ["MMSR_HOME"] = str(args.home)
    os.environ.setdefault("MMSR_NO_PROGRESS", "1")

    if args.child:
        print(json.dumps(rss_child(args) if args.child == "rss" else epoch_child(args)))
        return

    t0 = time.perf_counter()
    if args.mask_ratios:
        out = mask_ratio_benchmark(args)
        out["home"], out["wall_s"] = str(args.home), round(time.perf_counter() - t0, 1)
        print(json.dumps(out))
        return
    out = step_benchmark(args)
    if not args.skip_rss:
        out["train_from_cache_rss"] = run_child("rss", args)
        # For contrast: this process held both feeds and ran the end-to-end steps too.
        out["bench_process_peak_rss_mb"] = round(peak_rss_mb(), 1)
    if args.epoch_steps >= 0:
        if Path(args.profile).is_file():
            out["demo_epoch"] = run_child("epoch", args)
        else:
            out["demo_epoch"] = {"error": f"profile {args.profile} not found"}
    out["home"] = str(args.home)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
