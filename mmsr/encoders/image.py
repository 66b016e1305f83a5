"""The image transform shared by the vision families: resize, center-crop, normalise.

The shorter side is resized to `size` (so nothing is cut from a square product photo), the
center `size` x `size` square is cropped, and each channel is normalised with the model's
mean and std. Pure CPU work on PIL images, safe in DataLoader workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}
_PIL_CODES = {code: name for name, code in _RESAMPLE.items()}


def interpolation_name(value) -> str:
    """'bicubic' from a name or a PIL resample code (as in preprocessor_config.json)."""
    if isinstance(value, int):
        return _PIL_CODES.get(value, "bicubic")
    return value if value in _RESAMPLE else "bicubic"


@dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: str = "shorter-side-then-center-crop"

    def one(self, image) -> np.ndarray:
        image = image.convert("RGB")
        width, height = image.size
        scale = self.size / min(width, height)
        new = (max(self.size, round(width * scale)), max(self.size, round(height * scale)))
        if new != (width, height):
            image = image.resize(new, resample=_RESAMPLE[self.interpolation])
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return array.transpose(2, 0, 1)

    def __call__(self, images: list) -> torch.Tensor:
        """list of PIL images -> float32 [N, 3, size, size]."""
        return torch.from_numpy(np.stack([self.one(image) for image in images]))

    def identity(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out
