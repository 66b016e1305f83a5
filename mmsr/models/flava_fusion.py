"""FLAVA's multimodal encoder as the fusion (seed §6 (c): two streams, deep fusion).

    fusion({"text": (tokens, mask), "image": (tokens, mask)}) -> [N, dim]

The towers' token states (`mmsr.encoders.flava`: the last layer's, before the final norm) are
projected into the multimodal width (`image_to_mm_projection`, `text_to_mm_projection`), joined
picture first as `FlavaModel` does, and run through the multimodal encoder with its class token;
its pooled output (`multimodal_output.pooler_output`), projected to `dim`, is the item vector.
All of it is pretrained, loaded from the towers' own checkpoint, and trains (at encoder_lr, as
the encoder tops do: `pretrained_modules`); only the last projection is new. On the towers'
unsplit output it equals FlavaModel's own pooled multimodal output (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.flava import PARADIGM
from mmsr.encoders.model_key import model_key
from mmsr.errors import MMSRError


class FlavaFusion(nn.Module):
    def __init__(self, flava, dim: int):
        super().__init__()
        self.image_to_mm = flava.image_to_mm_projection
        self.text_to_mm = flava.text_to_mm_projection
        self.multimodal = flava.multimodal_model
        self.project = nn.Linear(flava.config.multimodal_config.hidden_size, dim)

    @classmethod
    def from_encoders(cls, encoders: dict | None, dim: int) -> "FlavaFusion":
        from transformers import AutoConfig, FlavaModel

        families = {m: getattr(e, "paradigm", None) == PARADIGM for m, e in (encoders or {}).items()}
        if set(families) != {"text", "image"} or not all(families.values()):
            raise MMSRError("model.fusion=flava is FLAVA's multimodal encoder: it reads FLAVA's own text and image "
                            "towers", hint="give one FlavaModel directory as both encoders.text_model and "
                                           "encoders.vision_model, or choose another fusion")
        text, image = encoders["text"], encoders["image"]
        if model_key(text.name) != model_key(image.name):
            raise MMSRError("model.fusion=flava needs both towers from one FLAVA checkpoint, but the text tower is "
                            f"{text.name} and the image tower {image.name}",
                            hint="give the same FlavaModel directory as encoders.text_model and encoders.vision_model")
        config = AutoConfig.from_pretrained(text.name)
        if config.model_type != "flava":
            raise MMSRError("model.fusion=flava needs a whole FlavaModel checkpoint (its multimodal encoder), not a "
                            "single tower", where=text.name, hint="save the full model with FlavaModel.save_pretrained")
        dtype = next(text.parameters()).dtype
        if torch.get_default_device().type == "meta":  # build_model's sizing pass: the shapes, no weights read
            return cls(FlavaModel._from_config(config, dtype=dtype), dim)
        return cls(FlavaModel.from_pretrained(text.name, dtype=dtype), dim)

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.image_to_mm, self.text_to_mm, self.multimodal]

    def pooled(self, inputs) -> torch.Tensor:
        """FLAVA's pooled multimodal output, [N, multimodal hidden size]."""
        (image, image_mask), (text, text_mask) = inputs["image"], inputs["text"]
        joined = torch.cat([self.image_to_mm(image), self.text_to_mm(text)], dim=1)
        # The multimodal encoder prepends its own class token (when its config has one): always attended.
        cls_mask = [torch.ones_like(image_mask[:, :1])] if self.multimodal.use_cls_token else []
        mask = torch.cat([*cls_mask, image_mask, text_mask], dim=1).long()
        return self.multimodal(joined, attention_mask=mask).pooler_output

    def forward(self, inputs) -> torch.Tensor:
        return self.project(self.pooled(inputs))
