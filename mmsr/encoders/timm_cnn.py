"""timm ResNets as grid-feature encoders: `timm:resnet50` or `timm:resnet50@/path/weights.safetensors`.

A *block* is a ResNet stage (layer1..layer4), as in the paper: with `top_blocks=1` the last
stage is trainable, and at 224 px its 7x7 map gives 49 tokens.

    lower: stem -> stages[:4-k]       map [N, C, h, w] -> hidden [N, h*w, C]
    upper: stages[4-k:]               -> tokens [N, (size/32)^2, 2048]

The maps are square (images are center-cropped squares), so upper recovers h = w = sqrt(T).
BatchNorm in the lower stages runs in eval mode with the pretrained statistics; in the upper
stages it follows the trainer's train/eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder, torch_dtype
from mmsr.encoders.image import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, interpolation_name
from mmsr.encoders.registry import register_family
from mmsr.errors import MMSRError


def to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor) -> torch.Tensor:
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise MMSRError(f"{tokens.shape[1]} grid tokens do not form a square map")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


@register_family("timm", modality="image")
class TimmResNetEncoder(SplitEncoder):
    modality = "image"
    patch_drop_refusal = "a CNN convolves the whole picture; it has no patch tokens to drop"

    def __init__(self, model: nn.Module, transform: ImageTransform, *, name: str, top_blocks: int):
        super().__init__(name, 4, top_blocks)
        self.model = model
        self.transform = transform
        channels = [model.conv1.out_channels if isinstance(model.conv1, nn.Conv2d) else model.bn1.num_features]
        channels += [info["num_chs"] for info in model.feature_info[1:]]
        self.hidden_size = channels[self.split_layer]
        self.output_size = model.num_features

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        import timm
        from timm.models.resnet import ResNet

        name, _, weights = source.partition("@")
        options = {"pretrained_cfg_overlay": {"file": weights}} if weights else {}
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **options)
        except (RuntimeError, OSError, ValueError) as error:
            raise MMSRError(f"timm cannot build {source!r}: {str(error).splitlines()[0]}",
                            hint=f"offline, give the weights file: timm:{name}@/path/to/weights.safetensors") from None
        if not isinstance(model, ResNet):
            raise MMSRError(f"timm:{name} is not a ResNet", hint="the timm family supports ResNet-style CNNs")
        config = model.pretrained_cfg
        transform = ImageTransform(size=image_size, mean=tuple(config.get("mean", IMAGENET_MEAN)),
                                   std=tuple(config.get("std", IMAGENET_STD)),
                                   interpolation=interpolation_name(config.get("interpolation", "bicubic")))
        return cls(model.to(torch_dtype(dtype)), transform, name=source, top_blocks=top_blocks)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4]

    def _stem(self) -> list[nn.Module]:
        return [self.model.conv1, self.model.bn1, self.model.act1, self.model.maxpool]

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def preprocess(self, raw: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(raw)}

    def lower_forward(self, batch):
        x = batch["pixel_values"].to(self._dtype())
        for module in [*self._stem(), *self.stages[: self.split_layer]]:
            x = module(x)
        hidden = to_tokens(x)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def upper(self, hidden, mask):
        x = to_map(hidden.to(self._dtype()))
        for stage in self.stages[self.split_layer:]:
            x = stage(x)
        tokens = to_tokens(x)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def full(self, batch):
        return to_tokens(self.model.forward_features(batch["pixel_values"].to(self._dtype())))

    def lower_modules(self):
        return [*self._stem(), *self.stages[: self.split_layer]]

    def upper_modules(self):
        return list(self.stages[self.split_layer:])

    def identity(self) -> dict:
        return {**self.base_identity(), "model_type": "timm_resnet", "block_unit": "ResNet stage",
                "image_transform": self.transform.identity()}
