"""Which encoders an item tower uses, and where they are split.

The same section appears in a cache build config and in a training config: a cache is
identified by it, and a trainer refuses a cache built with different values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EncoderConfig:
    # A registered short name (`mmsr models list`), a Hugging Face name or a local directory;
    # "" switches the modality off (MMSR-V has no text model, MMSR-T no vision model).
    text_model: str = "minilm"
    vision_model: str = "dinov2-s"
    # Trainable top blocks per encoder: the split layer is L - k (seed §8.2: top 2 blocks).
    text_top_blocks: int = 2
    vision_top_blocks: int = 2
    max_text_len: int = 50
    image_size: int = 224
    text_fields: list[str] = field(default_factory=lambda: ["title", "description", "category"])
    # Information volume of a picture (seed §8.4 Table XIV, after MAE): the share of patch tokens a
    # ViT-style vision encoder drops before its first block; one seeded kept set for every picture.
    # CNN and Swin encoders refuse a nonzero ratio. Both are in the cache fingerprint.
    image_mask_ratio: float = 0.0
    image_mask_seed: int = 0

    def __post_init__(self):
        if self.text_top_blocks < 0 or self.vision_top_blocks < 0:
            raise ValueError("top_blocks must be >= 0")
        if self.max_text_len < 2:
            raise ValueError("max_text_len must be >= 2")
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        if not 0.0 <= self.image_mask_ratio < 1.0:
            raise ValueError(f"image_mask_ratio must be in [0, 1) (the share of patch tokens dropped), "
                             f"got {self.image_mask_ratio}")
        if self.image_mask_seed < 0:
            raise ValueError(f"image_mask_seed must be >= 0, got {self.image_mask_seed}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, name in (("text", self.text_model), ("image", self.vision_model)) if name)
