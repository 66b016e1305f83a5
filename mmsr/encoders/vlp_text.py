"""Text towers of two-stream, shallow-fusion VLPs (seed §6, Table VI (a)): CLIP and GroupViT.

Both are CLIP's text transformer (GroupViT copied it): token + position embeddings, causal
pre-LayerNorm blocks, a final LayerNorm.

    lower: embeddings -> layers[:L-k]                      hidden [N, T, D], mask = attention mask [N, T]
    upper: layers[L-k:] -> final_layer_norm on every token  tokens [N, T, D]

- A token attends to the tokens before it and never to padding; `upper` rebuilds that causal
  mask from the padding mask, so the cache stores what it stores for BERT: states and a mask.
- The output equals the model's `last_hidden_state`. The end-of-text token's state is the
  model's pooled text output (its `text_projection` maps that into the joint space); mmsr
  keeps every token and leaves the projection out, as the item tower pools and projects itself.
- T = `max_text_len`, at most the position table (77 for the released CLIP and GroupViT).
- The checkpoint's own tokenizer (CLIP's lower-cased BPE, `<|startoftext|> ... <|endoftext|>`),
  padding on the right.

A full CLIPModel / GroupViTModel directory serves the text slot (this tower) and the image slot
(`hf_vision.CLIPVisionEncoder`, `groupvit_vision`); a text-only one serves the text slot only.
"""

from __future__ import annotations

import torch

from mmsr.encoders.base import torch_dtype
from mmsr.encoders.hf_common import load_tower, quiet_transformers
from mmsr.encoders.hf_text import HFTextEncoder
from mmsr.encoders.registry import register_family
from mmsr.errors import MMSRError


@register_family("hf:clip_text_model", "hf:clip", modality="text")
class CLIPTextEncoder(HFTextEncoder):
    paradigm = "two-stream-shallow"
    # model_type -> (transformers class, attribute holding the text tower)
    towers = {"clip_text_model": ("CLIPTextModel", None), "clip": ("CLIPModel", "text_model")}

    def __init__(self, model, tokenizer, *, name: str, top_blocks: int, max_text_len: int):
        positions = model.config.max_position_embeddings
        if max_text_len > positions:
            raise MMSRError(f"encoders.max_text_len={max_text_len} but this text tower has {positions} positions",
                            where=name, hint=f"set encoders.max_text_len to at most {positions}")
        # Left padding would put a padding token first; under the causal mask it would see no
        # token at all (a fully masked attention row).
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:  # padded positions are masked out, so any id serves; CLIP pads with EOS
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(model, tokenizer, name=name, top_blocks=top_blocks, max_text_len=max_text_len)

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, max_text_len: int, pretrained: bool = True):
        from transformers import AutoTokenizer

        quiet_transformers()
        model = load_tower(source, torch_dtype(dtype), cls.towers)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as error:
            raise MMSRError(f"no tokenizer next to this text tower: {str(error).splitlines()[0]}", where=source,
                            hint="save the checkpoint's tokenizer into the directory "
                                 "(tokenizer.save_pretrained(path)); CLIP and GroupViT use CLIPTokenizer") from None
        return cls(model, tokenizer, name=source, top_blocks=top_blocks, max_text_len=max_text_len)

    # -- family hooks (see HFTextEncoder)
    def layers(self):
        return self.model.encoder.layers

    def embedding_modules(self):
        return [self.model.embeddings]

    def embed(self, batch):
        return self.model.embeddings(input_ids=batch["input_ids"])

    def _run(self, layers, hidden, mask):
        from transformers.masking_utils import create_causal_mask

        # Positional: the fourth parameter (no cache) is `cache` in transformers 5.25 and
        # `past_key_values` in 5.17, a GPU node's image.
        attention = create_causal_mask(self.model.config, hidden, mask.to(torch.long), None)
        for layer in layers:
            # As the model's own forward: with SDPA and no padding the mask above is None and
            # `is_causal` alone makes the attention causal.
            out = layer(hidden, attention, is_causal=True)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    # -- the contract (what differs from HFTextEncoder)
    def preprocess(self, raw):
        batch = super().preprocess(raw)
        batch.pop("token_type_ids", None)
        return batch

    def upper(self, hidden, mask):
        hidden, mask = super().upper(hidden, mask)
        return self.model.final_layer_norm(hidden), mask

    def upper_modules(self):
        return [*self.upper_layers, self.model.final_layer_norm]

    def identity(self) -> dict:
        identity = super().identity()
        identity["tokenizer"]["padding_side"] = "right"
        return {**identity, "attention": "causal", "final_norm": "final_layer_norm on every token"}


@register_family("hf:groupvit_text_model", "hf:groupvit", modality="text")
class GroupViTTextEncoder(CLIPTextEncoder):
    """GroupViT's text tower: CLIP's (12 layers, 256-d in nvidia/groupvit-gcc-yfcc)."""

    towers = {"groupvit_text_model": ("GroupViTTextModel", "text_model"), "groupvit": ("GroupViTModel", "text_model")}
