"""What attention dropout costs a token fusion's training step on this machine.

    python bench/fusion_step.py [--fusions merge-attn:1,merge-attn:4,coattn] [--attention-dropout 0.1,0]
                                [--items 1700] [--repeats 5] [--threads N]

One forward and backward of the fusion alone (train mode), on the demo profile's shapes
(configs/demo-cpu.toml: MiniLM's 32 text tokens and DINOv2-S's 65 picture tokens, both 384
wide, fusion dim 128), for `--items` distinct items: a demo training step encodes about that
many (1,650-1,760 over an epoch's full batches: the histories, targets and negatives of 128
users plus the `mixed` loss's 256 uniform items). The inputs are random (the time does not depend on the values); the text masks leave a
quarter of each row as padding, like the demo's titles.

For each fusion, every `--attention-dropout` value (model.fusion_attention_dropout) gets the same
initial weights and inputs, and the values take turns within each round, so machine noise hits
them alike. Reports each variant's median seconds and its ratio to the first value's. Why it
matters: on a CPU, scaled_dot_product_attention has a fused kernel only without dropout; with
dropout it materialises the attention matrix and a random mask of the same size.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.machine import cpu_model  # noqa: E402
from mmsr.models.fusion import create_fusion  # noqa: E402

TEXT_TOKENS, IMAGE_TOKENS, WIDTH, DIM = 32, 65, 384, 128


def inputs(items: int, generator: torch.Generator) -> dict:
    text_mask = torch.arange(TEXT_TOKENS).expand(items, -1) < int(TEXT_TOKENS * 0.75)
    return {"text": (torch.randn(items, TEXT_TOKENS, WIDTH, generator=generator), text_mask),
            "image": (torch.randn(items, IMAGE_TOKENS, WIDTH, generator=generator),
                      torch.ones(items, IMAGE_TOKENS, dtype=torch.bool))}


def step(fusion: torch.nn.Module, batch: dict) -> float:
    started = time.perf_counter()
    fusion(batch).square().mean().backward()
    fusion.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def measure(name: str, layers: int, rates: list[float], batch: dict, repeats: int) -> dict:
    built = {}
    for rate in rates:
        torch.manual_seed(0)  # the same initial weights for every rate
        built[rate] = create_fusion(name, input_dims={"text": WIDTH, "image": WIDTH}, dim=DIM, layers=layers,
                                    dropout=0.1, attention_dropout=rate).train()
        step(built[rate], batch)  # warm-up
    times = {rate: [] for rate in rates}
    for _ in range(repeats):
        for rate in rates:
            times[rate].append(step(built[rate], batch))
    medians = {rate: statistics.median(t) for rate, t in times.items()}
    first = medians[rates[0]]
    return {"fusion": name, "layers": layers,
            "variants": [{"attention_dropout": rate, "median_s": round(medians[rate], 4),
                          "min_s": round(min(times[rate]), 4), "over_first": round(medians[rate] / first, 3)}
                         for rate in rates]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusions", default="merge-attn:1,merge-attn:4,coattn",
                        help="NAME[:LAYERS] token fusions, comma-separated")
    parser.add_argument("--attention-dropout", default="0.1,0",
                        help="model.fusion_attention_dropout values; ratios are to the first")
    parser.add_argument("--items", type=int, default=1700, help="distinct items in the step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.attention_dropout.split(",")]
    batch = inputs(args.items, torch.Generator().manual_seed(0))
    results = []
    for spec in args.fusions.split(","):
        name, _, layers = spec.partition(":")
        result = measure(name, int(layers or 1), rates, batch, args.repeats)
        print(" ".join(f"{result['fusion']}:{result['layers']} attention_dropout={v['attention_dropout']}: "
                       f"{v['median_s']:.3f} s ({v['over_first']:.2f}x)" for v in result["variants"]),
              file=sys.stderr, flush=True)
        results.append(result)
    print(json.dumps({"benchmark": "fusion_step", "cpu": cpu_model(), "threads": torch.get_num_threads(),
                      "items": args.items, "text_tokens": TEXT_TOKENS, "image_tokens": IMAGE_TOKENS, "width": WIDTH,
                      "dim": DIM, "repeats": args.repeats, "results": results}))


if __name__ == "__main__":
    main()
