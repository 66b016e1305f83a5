"""Which encoders an item tower uses, and where they are split.

The same section appears in a cache build config and in a training config: a cache is
identified by it, and a trainer refuses a cache built with different values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Per modality, the EncoderConfig fields that name its model and its trainable top blocks.
# "joint": one model over an item's text and picture together (one-stream VLPs); its cached
# states cover both inputs.
SLOT_FIELDS = {"text": ("text_model", "text_top_blocks"), "image": ("vision_model", "vision_top_blocks"),
               "joint": ("joint_model", "joint_top_blocks")}
MODALITIES = tuple(SLOT_FIELDS)
# How a config file or --set names each modality's model (the hints of errors).
SLOTS = {modality: f"encoders.{model}" for modality, (model, _) in SLOT_FIELDS.items()}
# What each modality's encoder reads of an item: its text, its picture, or both.
READS_TEXT = ("text", "joint")
READS_PICTURE = ("image", "joint")


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
    # A one-stream, deep-fusion VLP (seed §6 (b): ViLT, VisualBERT): one transformer over an item's
    # text and picture tokens together, cached as the "joint" modality. It reads both inputs, so
    # text_model and vision_model must be "" beside it.
    joint_model: str = ""
    joint_top_blocks: int = 4  # seed §6.1: the last 4 blocks of the single stream train
    # VisualBERT's picture input, computed once at cache time (mmsr.encoders.visual_features):
    # region | region-c5 | grid | patch-emb | patch-vit, and the weights of that representation's model.
    # ViLT embeds its own patches and takes neither.
    joint_vision: str = ""
    joint_vision_model: str = ""

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
        if self.joint_top_blocks < 0:
            raise ValueError("joint_top_blocks must be >= 0")
        if self.joint_model and (self.text_model or self.vision_model):
            raise ValueError('joint_model reads both the text and the picture of an item, so text_model and '
                             'vision_model must be "" beside it (set encoders.text_model="" and '
                             'encoders.vision_model="")')
        if (self.joint_vision or self.joint_vision_model) and not self.joint_model:
            raise ValueError("joint_vision and joint_vision_model feed a joint model's picture input; set "
                             "encoders.joint_model too, or remove them")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, (model, _) in SLOT_FIELDS.items() if getattr(self, model))

    def identity(self) -> dict:
        """The fields that name this config's cache. Settings left at a default that changes
        nothing are left out, so caches built before those settings existed keep their name."""
        identity = asdict(self)
        if not identity["image_mask_ratio"]:  # unmasked states do not depend on the seed
            del identity["image_mask_ratio"], identity["image_mask_seed"]
        if not identity["joint_model"]:
            for key in JOINT_KEYS:
                del identity[key]
        return identity


JOINT_KEYS = ("joint_model", "joint_top_blocks", "joint_vision", "joint_vision_model")
