"""ViLT (Kim et al., ICML 2021), a one-stream VLP: text tokens and 32x32 pixel patches through
one ViT (seed §6 (b); the paper used `dandelin/vilt-b32-mlm`).

    lower: ViLT's embeddings (text + patches + modality type) -> layers[:L-k]
    upper: layers[L-k:] -> final LayerNorm on every token          = ViltModel's last_hidden_state

ViLT's patch embedding draws a random order of the patches on every forward (a training
augmentation that can also drop patches, `max_image_length`). Attention does not care about
the order, since positions are added first, but a cache must: an item's states would depend on
the batch it was encoded in. So the draw runs under a fixed seed and the picture tokens are put
back in raster order (class token first); `full` puts the unsplit model's output in the same
order, which is the same computation because the layers are permutation-equivariant.
"""

from __future__ import annotations

import torch

from mmsr.encoders.base import torch_dtype
from mmsr.encoders.hf_common import image_transform, quiet_transformers
from mmsr.encoders.image import HALF
from mmsr.encoders.joint import OneStreamEncoder, check_text_positions, load_tokenizer
from mmsr.encoders.registry import register_family

PATCH_ORDER_SEED = 0


@register_family("hf:vilt", modality="joint")
class ViltEncoder(OneStreamEncoder):
    def __init__(self, model, tokenizer, transform, *, name: str, top_blocks: int, max_text_len: int):
        check_text_positions(model, max_text_len, name)
        super().__init__(model, tokenizer, name=name, top_blocks=top_blocks, max_text_len=max_text_len)
        self.transform = transform

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, max_text_len: int, image_size: int,
                    vision: str = "", vision_model: str = "", pretrained: bool = True):
        from transformers import ViltModel

        quiet_transformers()
        model = ViltModel.from_pretrained(source, dtype=torch_dtype(dtype))
        tokenizer = load_tokenizer(source, "ViLT uses bert-base-uncased's BertTokenizer")
        # ViltImageProcessor normalises with mean = std = 0.5; a directory's own settings win.
        transform = image_transform(source, image_size, HALF, HALF)
        return cls(model, tokenizer, transform, name=source, top_blocks=top_blocks, max_text_len=max_text_len)

    # -- family hooks
    def embedding_modules(self):
        return [self.model.embeddings]

    def preprocess_pictures(self, pictures):
        pixels = self.transform(pictures)
        return {"pixel_values": pixels, "pixel_mask": torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)}

    def _inputs(self, batch):
        return {key: batch.get(key) for key in ("input_ids", "attention_mask", "token_type_ids", "pixel_values",
                                                 "pixel_mask")}

    def _visual_embed(self, batch):
        """ViLT's patch embedding under the fixed seed: (tokens, mask, raster order of the draw)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PATCH_ORDER_SEED)
            tokens, mask, (patch_index, (_, width)) = self.model.embeddings.visual_embed(
                batch["pixel_values"], batch["pixel_mask"], max_image_length=self.model.config.max_image_length)
        return tokens, mask, (patch_index[..., 0] * width + patch_index[..., 1]).argsort(dim=1)

    def _patch_order(self, batch) -> torch.Tensor:
        """[N, patches kept]: where each picture token of this batch's draw goes in raster order."""
        return self._visual_embed(batch)[2]

    def _raster(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Reorder the picture tokens (after the text and the picture's class token) by `order`."""
        before = tokens.shape[1] - order.shape[1]
        index = torch.cat([torch.arange(before, device=tokens.device).expand(order.shape[0], -1), order + before], 1)
        if tokens.dim() == 3:
            index = index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        return tokens.gather(1, index)

    def embed_joint(self, batch):
        # ViltEmbeddings.forward, with the patches embedded once: it would discard the patch order
        # the raster reordering needs, and a second draw would run the patch convolution again.
        embeddings = self.model.embeddings
        image, image_mask, order = self._visual_embed(batch)
        text = embeddings.text_embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        text_mask = batch["attention_mask"]
        text = text + embeddings.token_type_embeddings(torch.zeros_like(text_mask, dtype=torch.long))
        image = image + embeddings.token_type_embeddings(torch.ones_like(image_mask, dtype=torch.long))
        hidden, mask = torch.cat([text, image], dim=1), torch.cat([text_mask.bool(), image_mask.bool()], dim=1)
        return self._raster(hidden, order), self._raster(mask, order)

    def picture_identity(self):
        return {"transform": self.transform.identity(), "patch_order": "raster (class token first)",
                "max_image_length": self.model.config.max_image_length}

    # -- the contract
    def upper(self, hidden, mask):
        tokens, mask = super().upper(hidden, mask)
        return self.model.layernorm(tokens), mask

    def upper_modules(self):
        return [*super().upper_modules(), self.model.layernorm]

    def full(self, batch):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PATCH_ORDER_SEED)
            out = self.model(**self._inputs(batch)).last_hidden_state
        return self._raster(out, self._patch_order(batch))
