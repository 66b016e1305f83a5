"""Small helpers shared by the transformers families (loading offline, image normalisation)."""

from __future__ import annotations

import json
from pathlib import Path

from mmsr.encoders.image import ImageTransform, interpolation_name


def quiet_transformers() -> None:
    """mmsr draws its own progress bars; transformers' 'Loading weights' bars are noise."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def preprocessor_config(source: str) -> dict:
    """preprocessor_config.json of a local directory or a cached Hub model, or {}."""
    path = Path(source) / "preprocessor_config.json"
    if not Path(source).is_dir():  # a Hub name: look in the local Hub cache only
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "preprocessor_config.json")
        except ValueError:  # not a valid repo id
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text())


def image_transform(source: str, size: int, mean, std, interpolation: str = "bicubic") -> ImageTransform:
    """The model's own mean/std/resample where its directory says so, else the family's defaults."""
    config = preprocessor_config(source)
    return ImageTransform(
        size=size,
        mean=tuple(float(v) for v in config.get("image_mean", mean)),
        std=tuple(float(v) for v in config.get("image_std", std)),
        interpolation=interpolation_name(config.get("resample", interpolation)),
    )
