"""open_clip visual towers (ViT): `open_clip:ViT-B-32@/path/to/open_clip_model.safetensors`.

    lower: patch conv + [CLS] + position embedding + ln_pre (-> kept patches) -> resblocks[:L-k]
    upper: resblocks[L-k:] -> ln_post on every token       tokens [N, 1+P, width]

The output is the token sequence before the contrastive projection (`proj` maps [CLS] to the
joint space; `tokens[:, 0] @ visual.proj` equals open_clip's image embedding). The weights after
`@` are a local file or a pretrained tag already in the local Hub cache (nothing is downloaded).
Towers with attentional pooling (CoCa) or timm trunks are not supported. `image_mask_ratio`
drops patches where open_clip's own (training-only, random) patch dropout sits.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder
from mmsr.encoders.image import CLIP_MEAN, CLIP_STD, ImageTransform, interpolation_name
from mmsr.encoders.registry import register_family
from mmsr.errors import MMSRError

PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@register_family("open_clip", modality="image")
class OpenCLIPVisualEncoder(SplitEncoder):
    modality = "image"
    # CLIP-style image towers. mmsr reads no open_clip text tower: for paradigm (a) with both towers
    # of one checkpoint, give a transformers CLIP directory as both text_model and vision_model.
    paradigm = "two-stream-shallow"
    patch_drop_refusal = None

    def __init__(self, visual: nn.Module, transform: ImageTransform, *, name: str, top_blocks: int):
        super().__init__(name, len(visual.transformer.resblocks), top_blocks)
        self.visual = visual
        self.transform = transform
        # Not registered (the parameters live in `visual`): a module view so they freeze by module.
        object.__setattr__(self, "_embedding_params", _Params(visual.class_embedding, visual.positional_embedding))
        self.hidden_size = self.output_size = visual.transformer.width

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        import open_clip
        from open_clip.transformer import VisionTransformer

        name, _, weights = source.partition("@")
        if pretrained and not weights:
            raise MMSRError(f"open_clip:{name} names no weights", hint=f"use open_clip:{name}@/path/to/weights "
                            f"or open_clip:{name}@TAG for a tag already in the local Hub cache")
        try:
            model = open_clip.create_model(name, pretrained=weights if pretrained else None,
                                           precision=PRECISION.get(dtype, dtype), force_image_size=image_size)
        except (RuntimeError, OSError, ValueError) as error:
            raise MMSRError(f"open_clip cannot build {source!r}: {str(error).splitlines()[0]}",
                            hint="check the model name (open_clip.list_models()) and the weights path") from None
        visual = model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise MMSRError(f"open_clip:{name}: only plain ViT visual towers are supported",
                            hint="use timm:NAME for CNNs")
        config = getattr(visual, "preprocess_cfg", {}) or {}
        transform = ImageTransform(size=image_size, mean=tuple(config.get("mean", CLIP_MEAN)),
                                   std=tuple(config.get("std", CLIP_STD)),
                                   interpolation=interpolation_name(config.get("interpolation", "bicubic")))
        return cls(visual, transform, name=source, top_blocks=top_blocks)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def _dtype(self):
        return self.visual.conv1.weight.dtype

    def _run(self, blocks, hidden):
        batch_first = self.visual.transformer.batch_first
        hidden = hidden if batch_first else hidden.transpose(0, 1)
        for block in blocks:
            hidden = block(hidden, attn_mask=None)
        return hidden if batch_first else hidden.transpose(0, 1)

    def preprocess(self, raw: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(raw)}

    def patch_grid(self, pixels):
        rows, columns = self.visual.patch_size
        return pixels.shape[-2] // rows, pixels.shape[-1] // columns

    def lower_forward(self, batch):
        pixels = batch["pixel_values"].to(self._dtype())
        hidden = self._run(self.blocks[: self.split_layer], self.keep_patches(self.visual._embeds(pixels), pixels))
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def upper(self, hidden, mask):
        hidden = self._run(self.blocks[self.split_layer:], hidden.to(self._dtype()))
        return self.visual.ln_post(hidden), mask

    def full(self, batch):
        visual, pixels = self.visual, batch["pixel_values"].to(self._dtype())
        # ln_pre acts per token, so dropping at patch_dropout equals dropping after ln_pre (as lower does).
        with self.patches_dropped_after(visual.patch_dropout, pixels):
            return visual.ln_post(visual.transformer(visual._embeds(pixels)))

    def lower_modules(self):
        v = self.visual
        return [self._embedding_params, v.conv1, v.patch_dropout, v.ln_pre,
                *self.blocks[: self.split_layer]]

    def upper_modules(self):
        return [*self.blocks[self.split_layer:], self.visual.ln_post]

    def identity(self) -> dict:
        return {**self.base_identity(), "model_type": "open_clip_vit", "image_transform": self.transform.identity(),
                "output": "tokens after ln_post, before proj"}


class _Params(nn.Module):
    """A module view of loose parameters (class and position embeddings), so they freeze by module."""

    def __init__(self, *parameters: nn.Parameter):
        super().__init__()
        self._loose = list(parameters)  # a plain list: not registered twice in the state dict

    def parameters(self, recurse: bool = True):
        yield from self._loose
