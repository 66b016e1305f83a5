"""Tiny, deterministic stand-in encoders for the cache tests, and a command line to run a
build in a subprocess (so a test can SIGKILL it or run two shards side by side).

    python tests/cache_helpers.py DATASET_ROOT CACHE_DIR [--shard i/n] [--sleep S] [--chunk-items K]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsr.encoders.base import SplitEncoder  # noqa: E402
from mmsr.encoders.config import EncoderConfig  # noqa: E402

DIM = 16
REPO = Path(__file__).resolve().parents[1]


def repo_pythonpath() -> str:
    """PYTHONPATH for a subprocess: this checkout first, then what this process was given (a node
    whose packages come from PYTHONPATH rather than an installed environment keeps them)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


class _Blocks(nn.Module):
    def __init__(self, layers: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def run(self, hidden, layers):
        for layer in layers:
            hidden = torch.tanh(layer(hidden)) + hidden
        return hidden


class FakeTextEncoder(SplitEncoder):
    """Bytes of the text as tokens, an embedding table, then residual tanh-linear blocks."""

    modality = "text"

    def __init__(self, top_blocks: int = 1, max_text_len: int = 12, seed: int = 0, sleep: float = 0.0):
        super().__init__("fake-text", 3, top_blocks)
        torch.manual_seed(seed)
        self.embed = nn.Embedding(257, DIM)
        self.blocks = _Blocks(3, DIM)
        self.max_text_len = max_text_len
        self.hidden_size = self.output_size = DIM
        self.sleep = sleep
        self.spec = self.family = "fake-text"

    def preprocess(self, raw):
        ids = torch.zeros((len(raw), self.max_text_len), dtype=torch.long)
        mask = torch.zeros((len(raw), self.max_text_len), dtype=torch.bool)
        for row, text in enumerate(raw):
            data = [256] + list((text or "").encode("utf-8"))[: self.max_text_len - 1]
            ids[row, : len(data)] = torch.tensor(data)
            mask[row, : len(data)] = True
        return {"input_ids": ids, "attention_mask": mask}

    def lower_forward(self, batch):
        if self.sleep:
            time.sleep(self.sleep)
        hidden = self.blocks.run(self.embed(batch["input_ids"]), self.blocks.layers[: self.split_layer])
        return hidden, batch["attention_mask"].bool()

    def upper(self, hidden, mask):
        return self.blocks.run(hidden, self.blocks.layers[self.split_layer:]), mask

    def full(self, batch):
        return self.blocks.run(self.embed(batch["input_ids"]), self.blocks.layers)

    def lower_modules(self):
        return [self.embed, *self.blocks.layers[: self.split_layer]]

    def upper_modules(self):
        return list(self.blocks.layers[self.split_layer:])

    def identity(self):
        return {**self.base_identity(), "tokenizer": {"kind": "bytes", "max_length": self.max_text_len}}


class FakeImageEncoder(SplitEncoder):
    """8x8-pixel patches of a resized picture, a linear patch embedding, residual blocks."""

    modality = "image"

    def __init__(self, top_blocks: int = 1, image_size: int = 32, seed: int = 1, sleep: float = 0.0):
        super().__init__("fake-image", 3, top_blocks)
        torch.manual_seed(seed)
        self.image_size = image_size
        self.patch = nn.Linear(3 * 8 * 8, DIM)
        self.blocks = _Blocks(3, DIM)
        self.hidden_size = self.output_size = DIM
        self.sleep = sleep
        self.spec = self.family = "fake-image"

    def preprocess(self, raw):
        arrays = [np.asarray(p.convert("RGB").resize((self.image_size, self.image_size)), np.float32) / 255.0
                  for p in raw]
        return {"pixel_values": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()}

    def _patches(self, pixels):
        n = pixels.shape[0]
        patches = pixels.unfold(2, 8, 8).unfold(3, 8, 8)  # n, 3, h, w, 8, 8
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, 3 * 64)

    def lower_forward(self, batch):
        if self.sleep:
            time.sleep(self.sleep)
        hidden = self.blocks.run(self.patch(self._patches(batch["pixel_values"])), self.blocks.layers[: self.split_layer])
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool)

    def upper(self, hidden, mask):
        return self.blocks.run(hidden, self.blocks.layers[self.split_layer:]), mask

    def full(self, batch):
        return self.blocks.run(self.patch(self._patches(batch["pixel_values"])), self.blocks.layers)

    def lower_modules(self):
        return [self.patch, *self.blocks.layers[: self.split_layer]]

    def upper_modules(self):
        return list(self.blocks.layers[self.split_layer:])

    def identity(self):
        return {**self.base_identity(), "transform": {"size": self.image_size, "resize": "squash"}}


def fake_config() -> EncoderConfig:
    return EncoderConfig(text_model="fake-text", vision_model="fake-image", text_top_blocks=1, vision_top_blocks=1,
                         max_text_len=12, image_size=32)


def fake_encoders(sleep: float = 0.0, text_seed: int = 0) -> dict:
    return {"text": FakeTextEncoder(seed=text_seed, sleep=sleep), "image": FakeImageEncoder(sleep=sleep)}


def joint_setup(path: str, sleep: float = 0.0) -> tuple[EncoderConfig, dict]:
    """A real (tiny) one-stream encoder, its lower part slowed by `sleep` per batch so a test can
    kill the build between chunks."""
    from mmsr.encoders import create_encoder

    config = EncoderConfig(text_model="", vision_model="", joint_model=path, joint_top_blocks=1, max_text_len=12,
                           image_size=32)
    encoder = create_encoder(path, "joint", 1, max_text_len=12, image_size=32)
    if sleep:
        lower = encoder.lower_forward

        def slow(batch):
            time.sleep(sleep)
            return lower(batch)
        encoder.lower_forward = slow
    return config, {"joint": encoder}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("cache_dir")
    parser.add_argument("--shard", default=None)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--chunk-items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--joint", help="a one-stream model directory: build its joint cache instead of the fakes")
    parser.add_argument("--cli-signals", action="store_true",
                        help="take SIGTERM as `mmsr` does; a stopped build exits with the CLI's status")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.cli_signals:
        from mmsr_cli.app import _terminate

        signal.signal(signal.SIGTERM, _terminate)
        try:
            return _build(args)
        except KeyboardInterrupt as stop:
            from mmsr.errors import interrupt_status

            print("stopped", type(stop).__name__, file=sys.stderr, flush=True)
            sys.exit(interrupt_status(stop))
    _build(args)


def _build(args) -> None:
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config, encoders = (joint_setup(args.joint, args.sleep) if args.joint
                        else (fake_config(), fake_encoders(args.sleep)))
    report = build_cache(load_dataset(args.dataset), config, batch_size=args.batch_size,
                         num_workers=args.num_workers, shard=args.shard, device="cpu", chunk_items=args.chunk_items,
                         cache_dir=args.cache_dir, encoders=encoders)
    print({m: r.encoded_items for m, r in report.modalities.items()}, flush=True)


if __name__ == "__main__":
    main()
