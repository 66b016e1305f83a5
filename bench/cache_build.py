"""Benchmark the encoder stage: the full `mmsr cache build` path against the bare `lower` forward.

    python bench/cache_build.py [--items 3000] [--batch-size 64] [--num-workers 2] [--device auto]

Generates the demo dataset in a temporary $MMSR_HOME (or --home), builds the cache with the
default offline models (minilm + dinov2-s), then times `encoder.lower` alone on the same
batches, preprocessed beforehand, in the same process. Prints one JSON object on its last
line: items/s of both, their ratio (target >= 0.9), and bytes per item on disk per modality
against the raw float16 size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.offline import stay_offline  # noqa: E402

stay_offline()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000, help="demo items (the full demo has 3000)")
    parser.add_argument("--users", type=int, default=None, help="demo users (default: 2/3 of the items)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="alternate bare/full runs; the best of each counts")
    parser.add_argument("--home", default=None, help="data root to use (default: a temporary directory)")
    args = parser.parse_args(argv)

    home = Path(args.home or tempfile.mkdtemp(prefix="mmsr-bench-"))
    os.environ["MMSR_HOME"] = str(home)
    os.environ.setdefault("MMSR_NO_PROGRESS", "1")

    import torch

    from mmsr.caches import cache_path
    from mmsr.cache_stage import build_cache, preprocessed_batches, to_device
    from mmsr.data.dataset import load_dataset
    from mmsr.data.demo import generate_demo
    from mmsr.distributed import pick_device
    from mmsr.encoders import create_encoders
    from mmsr.encoders.config import SLOT_FIELDS, EncoderConfig
    from mmsr_store import inspect_cache

    root = home / "datasets" / f"demo-{args.items}"
    if not root.exists():
        generate_demo(root, name=root.name, items=args.items, users=args.users or max(50, args.items * 2 // 3), seed=0)
    dataset = load_dataset(root, check_images=False)
    config = EncoderConfig()
    device = pick_device(args.device)
    encoders = create_encoders(config)
    for encoder in encoders.values():
        encoder.to(device).eval()
    path = cache_path(dataset, config)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # The bare lower forward runs on the same batches, preprocessed beforehand (not timed).
    prepared = {modality: preprocessed_batches(dataset, encoder, modality, config, batch_size=args.batch_size,
                                               device=device)
                for modality, encoder in sorted(encoders.items())}

    # Warm-up (kernel selection, allocator) so neither timing below pays for it.
    for modality, encoder in encoders.items():
        encoder.lower(to_device(prepared[modality][0], device))
    sync()

    def bare() -> dict[str, float]:
        seconds = {}
        for modality, encoder in sorted(encoders.items()):
            sync()
            t0 = time.perf_counter()
            for inputs in prepared[modality]:
                encoder.lower(to_device(inputs, device))
            sync()
            seconds[modality] = time.perf_counter() - t0
        return seconds

    def full():
        # DataLoader workers, lower, float16 conversion, chunk writes, manifest: the whole stage.
        t0 = time.perf_counter()
        report = build_cache(dataset, config, batch_size=args.batch_size, num_workers=args.num_workers,
                             device=args.device, cache_dir=path, encoders=encoders, overwrite=True)
        sync()
        assert report.complete
        return time.perf_counter() - t0, report

    # Alternate the two and keep the best of each: this machine may be shared and noisy.
    lower_runs, build_runs = [], []
    for _ in range(args.repeats):
        lower_runs.append(bare())
        build_runs.append(full())
    lower_best = {m: min(run[m] for run in lower_runs) for m in encoders}
    build_s, report = min(build_runs, key=lambda run: run[0])
    modality_build = {m: min(run[1].modalities[m].seconds for run in build_runs) for m in encoders}
    lower_total = sum(lower_best.values())

    out = {"items": dataset.num_items, "device": str(device), "torch_threads": torch.get_num_threads(),
           "batch_size": args.batch_size, "num_workers": args.num_workers, "repeats": args.repeats,
           "modalities": {}}
    info = inspect_cache(path)
    for modality in sorted(encoders):
        r, m = report.modalities[modality], info["modalities"][modality]
        out["modalities"][modality] = {
            "model": getattr(config, SLOT_FIELDS[modality][0]),
            "tokens": r.tokens, "dim": r.dim, "chunk_items": r.chunk_items,
            "build_s": round(modality_build[modality], 3), "lower_s": round(lower_best[modality], 3),
            "build_items_per_s": round(dataset.num_items / modality_build[modality], 2),
            "lower_items_per_s": round(dataset.num_items / lower_best[modality], 2),
            "ratio": round(lower_best[modality] / modality_build[modality], 3),
            # Same time window, so immune to a noisy machine: share of the build spent inside lower().
            "lower_share_inside_build": round(r.lower_seconds / r.seconds, 3),
            "disk_bytes_per_item": m["bytes_per_item"], "raw_float16_bytes_per_item": m["raw_bytes_per_item"],
            "disk_vs_raw": round(m["bytes_per_item"] / m["raw_bytes_per_item"], 3),
        }
    out.update({
        "build_wall_s": round(build_s, 3), "build_s": round(sum(modality_build.values()), 3), "lower_s": round(lower_total, 3),
        "build_items_per_s": round(dataset.num_items / build_s, 2),
        "lower_items_per_s": round(dataset.num_items / lower_total, 2),
        "ratio": round(lower_total / build_s, 3), "target_ratio": 0.9, "cache": str(path),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
