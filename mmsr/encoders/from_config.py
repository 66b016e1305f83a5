"""The encoders an `EncoderConfig` names, one per enabled modality.

The cache build, the trainer and the benchmarks all build encoders here, so a cache and
the model that reads it are split at the same layer with the same preprocessing.
"""

from __future__ import annotations

from mmsr.encoders.base import SplitEncoder
from mmsr.encoders.config import SLOT_FIELDS, EncoderConfig
from mmsr.encoders.registry import create_encoder


def create_encoders(encoder_config: EncoderConfig, only: tuple[str, ...] | None = None) -> dict[str, SplitEncoder]:
    """{modality: SplitEncoder} for the modalities the config enables ("" switches one off),
    or for those of them in `only`."""
    out = {}
    for modality in encoder_config.modalities:
        if only is not None and modality not in only:
            continue
        name, top = (getattr(encoder_config, key) for key in SLOT_FIELDS[modality])
        joint = dict(vision=encoder_config.joint_vision,
                     vision_model=encoder_config.joint_vision_model) if modality == "joint" else {}
        out[modality] = create_encoder(name, modality, top, max_text_len=encoder_config.max_text_len,
                                       image_size=encoder_config.image_size,
                                       image_mask_ratio=encoder_config.image_mask_ratio,
                                       image_mask_seed=encoder_config.image_mask_seed, **joint)
    return out

