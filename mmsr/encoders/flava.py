"""FLAVA's text and image towers (Singh et al., CVPR 2022), a two-stream, deep-fusion VLP
(seed §6 (c); the paper used `facebook/flava-full`).

FLAVA has a text tower (BERT-sized, pre-LN layers), an image tower (ViT-B/16) and a multimodal
encoder that reads both towers' token states. mmsr splits each tower like any other encoder
(top 2 blocks train, §6.1), and the multimodal encoder is the fusion (`model.fusion = "flava"`,
`mmsr.models.flava_fusion`), pretrained and wholly trained.

    lower: embeddings -> layers[:L-k]          hidden [N, T, D], mask
    upper: layers[L-k:]                        tokens [N, T, D]: the last layer's states

The tokens are the last layer's states *before* the tower's final LayerNorm: what FLAVA's
multimodal encoder reads (`FlavaModel` projects `hidden_states[-1]`, not `last_hidden_state`).
`full` is that same output of the unsplit tower. A full FlavaModel directory serves both slots,
each keeping only its own tower; the fusion loads the multimodal encoder from it.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsr.encoders.base import torch_dtype
from mmsr.encoders.hf_common import image_transform, load_tower, quiet_transformers
from mmsr.encoders.hf_text import HFTextEncoder
from mmsr.encoders.hf_vision import HFViTEncoder
from mmsr.encoders.image import CLIP_MEAN, CLIP_STD
from mmsr.encoders.joint import check_text_positions, load_tokenizer
from mmsr.encoders.registry import register_family

PARADIGM = "two-stream-deep"


@register_family("hf:flava", "hf:flava_text_model", modality="text")
class FlavaTextEncoder(HFTextEncoder):
    paradigm = PARADIGM
    towers = {"flava": ("FlavaModel", "text_model"), "flava_text_model": ("FlavaTextModel", None)}

    def __init__(self, model, tokenizer, *, name: str, top_blocks: int, max_text_len: int):
        check_text_positions(model, max_text_len, name)
        super().__init__(model, tokenizer, name=name, top_blocks=top_blocks, max_text_len=max_text_len)

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, max_text_len: int, pretrained: bool = True):
        quiet_transformers()
        model = load_tower(source, torch_dtype(dtype), cls.towers)
        tokenizer = load_tokenizer(source, "FLAVA uses bert-base-uncased's BertTokenizer")
        return cls(model, tokenizer, name=source, top_blocks=top_blocks, max_text_len=max_text_len)

    def embedding_modules(self):
        return [self.model.embeddings]

    def embed(self, batch):
        return self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))

    def full(self, batch):
        return self.model(**batch, output_hidden_states=True).hidden_states[-1]


@register_family("hf:flava", "hf:flava_image_model", modality="image")
class FlavaImageEncoder(HFViTEncoder):
    paradigm = PARADIGM
    mean, std = CLIP_MEAN, CLIP_STD  # FlavaImageProcessor's defaults
    towers = {"flava": ("FlavaModel", "image_model"), "flava_image_model": ("FlavaImageModel", None)}

    def __init__(self, model, transform, *, name, top_blocks):
        super().__init__(model, transform, name=name, top_blocks=top_blocks)
        self.no_norm = nn.Identity()

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, image_size: int, pretrained: bool = True):
        quiet_transformers()
        model = load_tower(source, torch_dtype(dtype), cls.towers)
        return cls(model, image_transform(source, image_size, cls.mean, cls.std), name=source, top_blocks=top_blocks)

    @staticmethod
    def layers_of(model):
        return model.encoder.layer

    def embed(self, pixels):
        return self.model.embeddings(pixels, interpolate_pos_encoding=True)

    def final_norm(self):
        return self.no_norm  # the multimodal encoder reads the states before the tower's LayerNorm

    def model_output(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-1]

    def extra_identity(self):
        return {"final_norm": "none: the last layer's states, as FLAVA's multimodal encoder reads them"}
