"""transformers Swin Transformer (v1).

Swin has stages of blocks with patch merging (downsampling) between stages. Here a *block* is
one SwinLayer, counted across all stages (swin-tiny: 2+2+6+2 = 12 blocks); a stage's patch
merging belongs to its last block. So `top_blocks=2` is the whole last stage of swin-tiny.

    lower: patch embeddings -> blocks[:L-k]         hidden [N, h*w, C] at that stage's resolution
    upper: blocks[L-k:] -> final LayerNorm          tokens [N, (size/32)^2, C_last] (7x7 = 49 at 224)

The grid size of each stage is known from `image_size`, so upper needs nothing but the tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder, torch_dtype
from mmsr.encoders.hf_common import image_transform, quiet_transformers
from mmsr.encoders.image import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from mmsr.encoders.registry import register_family


@register_family("hf:swin", modality="image")
class SwinEncoder(SplitEncoder):
    modality = "image"
    patch_drop_refusal = "its shifted windows and patch merging need the whole patch grid"

    def __init__(self, model: nn.Module, transform: ImageTransform, *, name: str, top_blocks: int):
        super().__init__(name, sum(len(stage.blocks) for stage in model.encoder.layers), top_blocks)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.transform = transform
        self.hidden_size = self._block_dims()[self.split_layer - 1][1] if self.split_layer else model.config.embed_dim
        self.output_size = model.num_features

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        from transformers import SwinModel

        quiet_transformers()
        model = SwinModel.from_pretrained(source, dtype=torch_dtype(dtype))
        return cls(model, image_transform(source, image_size, IMAGENET_MEAN, IMAGENET_STD),
                   name=source, top_blocks=top_blocks)

    def _units(self):
        """(stage, block, is_last_block_of_stage) for every block, in order."""
        for stage in self.model.encoder.layers:
            for i, block in enumerate(stage.blocks):
                yield stage, block, i == len(stage.blocks) - 1

    def _grid(self) -> tuple[int, int]:
        patch = self.model.config.patch_size
        side = -(-self.transform.size // patch)  # the embeddings pad to a multiple of the patch size
        return side, side

    def _block_dims(self) -> list[tuple[tuple[int, int], int]]:
        """Per block: the grid it reads, and the channel count it writes (after any merging)."""
        dims, grid = [], self._grid()
        for stage, block, last in self._units():
            channels = block.layernorm_before.normalized_shape[0]
            if last and stage.downsample is not None:
                dims.append((grid, channels * 2))
                grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            else:
                dims.append((grid, channels))
        return dims

    def _run(self, start: int, stop: int, hidden: torch.Tensor) -> torch.Tensor:
        dims = self._block_dims()
        for index, (stage, block, last) in enumerate(self._units()):
            if not start <= index < stop:
                continue
            grid = dims[index][0]
            hidden = block(hidden, grid)[0]
            if last and stage.downsample is not None:
                hidden = stage.downsample(hidden, grid)
        return hidden

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def preprocess(self, raw: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(raw)}

    def lower_forward(self, batch):
        hidden, _ = self.model.embeddings(batch["pixel_values"].to(self._dtype()), interpolate_pos_encoding=True)
        hidden = self._run(0, self.split_layer, hidden)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def upper(self, hidden, mask):
        hidden = self.model.layernorm(self._run(self.split_layer, self.num_layers, hidden.to(self._dtype())))
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def full(self, batch):
        return self.model(batch["pixel_values"].to(self._dtype()), interpolate_pos_encoding=True).last_hidden_state

    def _block_modules(self, start: int, stop: int) -> list[nn.Module]:
        """Blocks start..stop-1, each followed by its stage's patch merging if it is the stage's last."""
        modules = []
        for index, (stage, block, last) in enumerate(self._units()):
            if start <= index < stop:
                modules += [block, stage.downsample] if last and stage.downsample is not None else [block]
        return modules

    def lower_modules(self):
        return [self.model.embeddings, *self._block_modules(0, self.split_layer)]

    def upper_modules(self):
        return [*self._block_modules(self.split_layer, self.num_layers), self.model.layernorm]

    def identity(self) -> dict:
        return {**self.base_identity(), "model_type": "swin", "block_unit": "SwinLayer (merging with last)",
                "image_transform": self.transform.identity()}
