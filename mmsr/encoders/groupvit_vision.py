"""GroupViT's vision tower (seed §6, Table VI (a): two streams, shallow fusion).

GroupViT is a ViT in stages. A stage appends learned *group tokens* to the image tokens, runs
its transformer layers over both, then (except in the last stage) a grouping block assigns
every image token to a group: the groups become the next stage's image tokens.
nvidia/groupvit-gcc-yfcc: depths 6+3+3, 64 then 8 group tokens, so at 224 px

    stage 0: 196 patches + 64 group tokens -> 6 layers -> grouping -> 64 tokens
    stage 1:  64 tokens  +  8 group tokens -> 3 layers -> grouping ->  8 tokens
    stage 2:   8 tokens                    -> 3 layers                         -> final LayerNorm

A *block* is one transformer layer, counted across stages (12). A stage's group tokens (and
the projector that derives them from the previous stage's) go with its first layer, its
grouping block with its last layer, as Swin's patch merging goes with its stage's last layer.
Every layer boundary is an honest split: the cached state is what the next layer reads, so
`upper(*lower(x))` is the model's own computation (a test checks every split):

    split inside a stage (after o >= 1 of its layers): image tokens + that stage's group tokens
    split before stage s: its inputs, the image tokens + stage s-1's group tokens where stage s
        projects them (none before the last stage of the released model)

`top_blocks=2` (the paper's) trains the last two layers of the last stage; the cache holds 8
tokens per picture whatever the image size. Reaching into a grouping stage trains its grouping
block too; in train mode that block assigns tokens with Gumbel noise, as GroupViT trains.

`encoders.image_mask_ratio` drops patch tokens after the patch and position embedding, before
the first stage (GroupViT has no class token). The grouping block's assignment attention reads
any number of image tokens, so the stages run unchanged; from the first grouping on, the token
count no longer depends on the ratio (the groups summarise fewer patches).
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder, torch_dtype
from mmsr.encoders.hf_common import image_transform, load_tower, quiet_transformers
from mmsr.encoders.image import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from mmsr.encoders.registry import register_family


@register_family("hf:groupvit_vision_model", "hf:groupvit", modality="image")
class GroupViTVisionEncoder(SplitEncoder):
    modality = "image"
    paradigm = "two-stream-shallow"
    patch_drop_refusal = None
    # model_type -> (transformers class, attribute holding the GroupViTVisionTransformer)
    towers = {"groupvit_vision_model": ("GroupViTVisionModel", "vision_model"),
              "groupvit": ("GroupViTModel", "vision_model")}

    def __init__(self, model: nn.Module, transform: ImageTransform, *, name: str, top_blocks: int):
        super().__init__(name, sum(len(stage.layers) for stage in model.encoder.stages), top_blocks)
        self.model = model
        self.transform = transform
        self.hidden_size = self.output_size = model.config.hidden_size
        self.cut_stage, self.cut_offset = self._locate(self.split_layer)

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        quiet_transformers()
        model = load_tower(source, torch_dtype(dtype), cls.towers)
        # GroupViT trained with ImageNet statistics; a directory's preprocessor_config.json wins.
        return cls(model, image_transform(source, image_size, IMAGENET_MEAN, IMAGENET_STD),
                   name=source, top_blocks=top_blocks)

    @property
    def stages(self) -> list[nn.Module]:
        return list(self.model.encoder.stages)

    def _locate(self, split: int) -> tuple[int, int]:
        """(stage, layers of it in lower) of the split; (number of stages, 0) after the last layer."""
        start = 0
        for index, stage in enumerate(self.stages):
            if split < start + len(stage.layers):
                return index, split - start
            start += len(stage.layers)
        return len(self.stages), 0

    def _groups_carried(self) -> int:
        """How many of the previous stage's group tokens ride in the state at a split before a
        stage (its group projector reads them); 0 inside a stage or when nothing reads them."""
        stage = self.cut_stage
        if self.cut_offset or stage in (0, len(self.stages)) or self.stages[stage].group_projector is None:
            return 0
        return self.stages[stage - 1].num_group_token

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def patch_grid(self, pixels):
        patch = self.model.config.patch_size
        rows, columns = (patch, patch) if isinstance(patch, int) else patch
        return pixels.shape[-2] // rows, pixels.shape[-1] // columns

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.keep_patches(self.model.embeddings(pixels, interpolate_pos_encoding=True), pixels)

    # -- the contract
    def preprocess(self, raw: list) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(raw)}

    def lower_forward(self, batch):
        pixels = batch["pixel_values"].to(self._dtype())
        hidden, groups = self._embed(pixels), None
        for stage in self.stages[: self.cut_stage]:
            hidden, groups = stage(hidden, groups)[:2]
        if self.cut_offset:  # the head of GroupViTStage.forward, then the stage's lower layers
            stage = self.stages[self.cut_stage]
            own = None
            if stage.with_group_token:
                own = stage.group_token.expand(hidden.shape[0], -1, -1)
                if stage.group_projector is not None:
                    own = own + stage.group_projector(groups)
            hidden = stage.concat_x(hidden, own)
            for layer in stage.layers[: self.cut_offset]:
                hidden = layer(hidden, attention_mask=None)
        elif self._groups_carried():
            hidden = torch.cat([hidden, groups], dim=1)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def upper(self, hidden, mask):
        hidden, groups, first = hidden.to(self._dtype()), None, self.cut_stage
        if self.cut_offset:  # the stage's upper layers, then the tail of GroupViTStage.forward
            stage = self.stages[self.cut_stage]
            for layer in stage.layers[self.cut_offset:]:
                hidden = layer(hidden, attention_mask=None)
            hidden, groups = stage.split_x(hidden)
            if stage.downsample is not None:
                hidden = stage.downsample(hidden, groups)[0]
            first += 1
        elif carried := self._groups_carried():
            hidden, groups = hidden[:, :-carried], hidden[:, -carried:]
        for stage in self.stages[first:]:
            hidden, groups = stage(hidden, groups)[:2]
        hidden = self.model.layernorm(hidden)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    def full(self, batch):
        # GroupViTVisionTransformer.forward calls its embeddings without `interpolate_pos_encoding`,
        # so it only takes pictures of the checkpoint's size; this runs its three parts with the
        # position embedding interpolated (at the checkpoint's size it equals forward; a test checks).
        pixels = batch["pixel_values"].to(self._dtype())
        encoded = self.model.encoder(hidden_states=self._embed(pixels), return_dict=True).last_hidden_state
        return self.model.layernorm(encoded)

    def lower_modules(self):
        modules = [self.model.embeddings, *self.stages[: self.cut_stage]]
        if self.cut_offset:
            # The stage's own group tokens are a bare parameter: freeze_lower freezes it as part of no upper module.
            stage = self.stages[self.cut_stage]
            modules += [m for m in (stage.group_projector,) if m is not None] + list(stage.layers[: self.cut_offset])
        return modules

    def upper_modules(self):
        modules, first = [], self.cut_stage
        if self.cut_offset:
            stage = self.stages[self.cut_stage]
            modules += [*stage.layers[self.cut_offset:], *([stage.downsample] if stage.downsample is not None else [])]
            first += 1
        return [*modules, *self.stages[first:], self.model.layernorm]

    def identity(self) -> dict:
        return {**self.base_identity(), "model_type": self.model.config.model_type, "image_transform": self.transform.identity(),
                "block_unit": "transformer layer across stages (group tokens with a stage's first layer, "
                              "grouping with its last)"}
