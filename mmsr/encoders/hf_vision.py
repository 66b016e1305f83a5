"""transformers vision transformers: ViT, ViT-MAE, DINOv2 and the CLIP vision tower.

All four are `embeddings -> blocks -> final LayerNorm` over [CLS] + patch tokens:

    lower: embeddings (+ CLIP's pre-LayerNorm) -> blocks[:L-k]    hidden [N, 1+P, D], mask all True
    upper: blocks[L-k:] -> final LayerNorm                        tokens [N, 1+P, D]

Position embeddings are interpolated to `image_size`. With `encoders.image_mask_ratio` > 0 the
embedded tokens lose the masked patches before the first block (`SplitEncoder.keep_patches`),
so T = 1 + kept patches. Differences are small hooks per class:
- ViT-MAE masks 75% of the patches (in random order) on every forward by default. Here its own
  masking is OFF: `mask_ratio=0` and the patches kept in their natural order (noise = arange).
  The identity says so (`"mae_mask_ratio": 0.0`). `image_mask_ratio` then drops patches as for
  every other ViT: the same as MAE's own masking with a fixed noise (a test checks this).
- CLIP's `last_hidden_state` has no final norm (`post_layernorm` is applied to [CLS] only);
  here the post-LayerNorm is applied to every token, so `tokens[:, 0]` equals CLIP's pooled output.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder, torch_dtype
from mmsr.encoders.hf_common import image_transform, quiet_transformers
from mmsr.encoders.image import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from mmsr.encoders.registry import register_family


class HFViTEncoder(SplitEncoder):
    modality = "image"
    model_class = "ViTModel"
    patch_drop_refusal = None
    mean, std = HALF, HALF

    def __init__(self, model: nn.Module, transform: ImageTransform, *, name: str, top_blocks: int):
        super().__init__(name, len(self.layers_of(model)), top_blocks)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: the item tower pools the tokens itself
        self.model = model
        self.transform = transform
        self.hidden_size = self.output_size = model.config.hidden_size

    @classmethod
    def load(cls, source: str, dtype: torch.dtype) -> nn.Module:
        import transformers

        return getattr(transformers, cls.model_class).from_pretrained(source, dtype=dtype)

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        quiet_transformers()
        model = cls.load(source, torch_dtype(dtype))
        transform = image_transform(source, image_size, cls.mean, cls.std)
        return cls(model, transform, name=source, top_blocks=top_blocks)

    # -- family hooks
    @staticmethod
    def layers_of(model: nn.Module) -> nn.ModuleList:
        return model.layers

    def embedding_modules(self) -> list[nn.Module]:
        return [self.model.embeddings]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixels, interpolate_pos_encoding=True)

    def final_norm(self) -> nn.Module:
        return self.model.layernorm

    def model_output(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels, interpolate_pos_encoding=True).last_hidden_state

    def extra_identity(self) -> dict:
        return {}

    def patch_grid(self, pixels):
        patch = self.model.config.patch_size
        rows, columns = (patch, patch) if isinstance(patch, int) else patch
        return pixels.shape[-2] // rows, pixels.shape[-1] // columns

    # -- the contract
    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.layers_of(self.model))

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, raw: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(raw)}

    def _run(self, blocks, hidden):
        for block in blocks:
            out = block(hidden, **_no_mask(type(block)))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def lower_forward(self, batch):
        pixels = batch["pixel_values"].to(self._dtype())
        hidden = self._run(self.blocks[: self.split_layer], self.keep_patches(self.embed(pixels), pixels))
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def upper(self, hidden, mask):
        hidden = self._run(self.blocks[self.split_layer:], hidden.to(self._dtype()))
        return self.final_norm()(hidden), mask

    def full(self, batch):
        pixels = batch["pixel_values"].to(self._dtype())
        # CLIP's pre-LayerNorm acts per token, so dropping before it equals dropping after it.
        with self.patches_dropped_after(self.model.embeddings, pixels):
            return self.model_output(pixels)

    def lower_modules(self):
        return [*self.embedding_modules(), *self.blocks[: self.split_layer]]

    def upper_modules(self):
        return [*self.blocks[self.split_layer:], self.final_norm()]

    def identity(self) -> dict:
        return {**self.base_identity(), "model_type": self.model.config.model_type,
                "image_transform": self.transform.identity(), **self.extra_identity()}


register_family("hf:vit", modality="image")(HFViTEncoder)


@functools.cache
def _no_mask(layer_class: type) -> dict:
    """The keyword that says "no attention mask" to this transformers layer class. CLIP's and
    SigLIP's layers require it, ViT's takes it, DINOv2's takes it in transformers 5.25 but takes no
    mask at all in 5.17 (a GPU node's image failed on the positional None this replaced)."""
    return {"attention_mask": None} if "attention_mask" in inspect.signature(layer_class.forward).parameters else {}


@register_family("hf:dinov2", modality="image")
class Dinov2Encoder(HFViTEncoder):
    model_class = "Dinov2Model"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    @staticmethod
    def layers_of(model):
        return model.encoder.layer

    def embed(self, pixels):
        return self.model.embeddings(pixels)  # always interpolates the position embeddings

    def model_output(self, pixels):
        return self.model(pixels).last_hidden_state


@register_family("hf:vit_mae", modality="image")
class ViTMAEEncoder(HFViTEncoder):
    """Runs unmasked: mask_ratio=0, patches in natural order (see the module docstring)."""

    model_class = "ViTMAEModel"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, model, transform, *, name, top_blocks):
        model.config.mask_ratio = 0.0  # the embeddings read it on every forward
        super().__init__(model, transform, name=name, top_blocks=top_blocks)

    @staticmethod
    def _noise(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
        patches = (pixels.shape[-2] // patch_size) * (pixels.shape[-1] // patch_size)
        return torch.arange(patches, dtype=torch.float32, device=pixels.device).expand(pixels.shape[0], -1)

    def embed(self, pixels):
        noise = self._noise(pixels, self.model.config.patch_size)
        return self.model.embeddings(pixels, noise=noise, interpolate_pos_encoding=True)[0]

    def model_output(self, pixels):
        noise = self._noise(pixels, self.model.config.patch_size)
        return self.model(pixels, noise=noise, interpolate_pos_encoding=True).last_hidden_state

    def extra_identity(self):
        return {"mae_mask_ratio": 0.0, "mae_patch_order": "natural (unmasked, noise=arange)"}


@register_family("hf:clip_vision_model", "hf:clip", modality="image")
class CLIPVisionEncoder(HFViTEncoder):
    model_class = "CLIPVisionModel"
    paradigm = "two-stream-shallow"
    mean, std = CLIP_MEAN, CLIP_STD

    @classmethod
    def load(cls, source, dtype):
        import transformers

        config = transformers.AutoConfig.from_pretrained(source)
        if config.model_type == "clip":  # a full CLIP checkpoint: keep the vision tower only
            return transformers.CLIPModel.from_pretrained(source, dtype=dtype).vision_model
        return transformers.CLIPVisionModel.from_pretrained(source, dtype=dtype)

    @staticmethod
    def layers_of(model):
        return model.encoder.layers

    def embedding_modules(self):
        return [self.model.embeddings, self.model.pre_layrnorm]

    def embed(self, pixels):
        return self.model.pre_layrnorm(self.model.embeddings(pixels, interpolate_pos_encoding=True))

    def final_norm(self):
        return self.model.post_layernorm

    def model_output(self, pixels):
        return self.model.post_layernorm(self.model(pixels, interpolate_pos_encoding=True).last_hidden_state)

    def extra_identity(self):
        return {"final_norm": "post_layernorm on every token"}
