"""Small helpers shared by the transformers families (loading offline, image normalisation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mmsr.encoders.image import ImageTransform, interpolation_name


def quiet_transformers() -> None:
    """mmsr draws its own progress bars; transformers' 'Loading weights' bars are noise."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_tower(source: str, dtype, towers: dict[str, tuple[str, str | None]]):
    """The one tower of a checkpoint a slot needs, chosen by its config's `model_type`.

    `towers` maps a model_type to (transformers class, attribute of the loaded model holding the
    tower, or None for the model itself): a full two-stream checkpoint (CLIPModel, GroupViTModel)
    serves both slots, each keeping only its own tower, so the other tower's weights are neither
    kept in memory nor part of the weights hash. The registry has already checked the type.
    """
    import transformers

    class_name, attribute = towers[transformers.AutoConfig.from_pretrained(source).model_type]
    model = getattr(transformers, class_name).from_pretrained(source, dtype=dtype)
    return getattr(model, attribute) if attribute else model


def preprocessor_config(source: str) -> dict:
    """The image processor's settings of a local directory or a cached Hub model, or {}.

    Checkpoints on the Hub carry preprocessor_config.json; transformers 5 saves a whole processor
    (`AutoProcessor.save_pretrained`, tokenizer included) as processor_config.json, with those
    settings under "image_processor". The first file found wins.
    """
    for name, part in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = _model_file(source, name)
        if path is not None:
            config = json.loads(path.read_text())
            return (config.get(part) or {}) if part else config
    return {}


def _model_file(source: str, name: str) -> Path | None:
    path = Path(source) / name
    if not Path(source).is_dir():  # a Hub name: look in the local Hub cache only
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, name)
        except ValueError:  # not a valid repo id
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    return path if path is not None and path.is_file() else None


def image_transform(source: str, size: int, mean, std, interpolation: str = "bicubic") -> ImageTransform:
    """The model's own mean/std/resample where its directory says so, else the family's defaults."""
    config = preprocessor_config(source)
    return ImageTransform(
        size=size,
        mean=tuple(float(v) for v in config.get("image_mean", mean)),
        std=tuple(float(v) for v in config.get("image_std", std)),
        interpolation=interpolation_name(config.get("resample", interpolation)),
    )


# A model input's name -> the attribute of a `tokenizers.Encoding` that holds it.
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class FixedLengthTokenizer:
    """`tokenizer(texts, padding="max_length", truncation=True, max_length=length)` as tensors,
    the same ids, mask and type ids, but straight through the Rust backend where there is one.

    transformers' `__call__` spends about a third of its time in Python bookkeeping (character
    offsets, the BatchEncoding): this path tokenises the demo's texts 1.5-1.7x faster at 16 and 32
    tokens (bench/tokenise.py). It matters where the DataLoader workers' tokenising, not the
    forward, bounds a cache build: a GPU forward, or a small encoder. `encode_batch_fast` skips
    the offsets; padding and truncation are the tokenizer's own settings (side, pad id, pad type
    id), read once. A tokenizer without a Rust backend is called as before.
    """

    def __init__(self, tokenizer, length: int):
        self.tokenizer, self.length = tokenizer, length
        self.keys = [key for key in ENCODING_FIELDS if key in tokenizer.model_input_names]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = None
        if backend is not None and tokenizer.pad_token is not None and hasattr(backend, "encode_batch_fast"):
            self.backend = type(backend).from_str(backend.to_str())  # a copy: the tokenizer's own stays as it is
            self.backend.enable_truncation(length, stride=0, strategy="longest_first",
                                           direction=tokenizer.truncation_side)
            self.backend.enable_padding(direction=tokenizer.padding_side, length=length,
                                        pad_id=tokenizer.pad_token_id, pad_type_id=tokenizer.pad_token_type_id,
                                        pad_token=tokenizer.pad_token)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.backend is None:
            encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.length,
                                     return_tensors="pt")
            return {key: encoded[key] for key in self.keys if key in encoded}
        encodings = self.backend.encode_batch_fast(texts)
        return {key: torch.from_numpy(np.array([getattr(e, ENCODING_FIELDS[key]) for e in encodings],
                                               dtype=np.int64).reshape(len(texts), self.length))
                for key in self.keys}
