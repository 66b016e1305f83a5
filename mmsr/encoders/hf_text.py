"""transformers text encoders: BERT (and MiniLM), RoBERTa, ELECTRA, MPNet, XLM-RoBERTa.

    lower: embeddings -> layers[:L-k]          hidden [N, T, D], mask = attention mask [N, T]
    upper: layers[L-k:]                        tokens [N, T, D] (post-LN models: no final norm)

Text is padded / truncated to exactly `max_text_len` tokens, so every item has the same T.
An empty text (or None) becomes the tokenizer's special tokens only (`[CLS] [SEP]` for BERT),
which is a defined, non-empty representation.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from mmsr.encoders.base import SplitEncoder, torch_dtype
from mmsr.encoders.hf_common import FixedLengthTokenizer, quiet_transformers
from mmsr.encoders.model_key import model_key
from mmsr.encoders.registry import register_family


@register_family("hf:bert", "hf:roberta", "hf:xlm-roberta", "hf:electra", modality="text")
class HFTextEncoder(SplitEncoder):
    modality = "text"

    def __init__(self, model: nn.Module, tokenizer, *, name: str, top_blocks: int, max_text_len: int):
        super().__init__(name, model.config.num_hidden_layers, top_blocks)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: the item tower pools the tokens itself
        self.model = model
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.tokenise = FixedLengthTokenizer(tokenizer, max_text_len)
        self.hidden_size = self.output_size = model.config.hidden_size

    @property
    def lower_layers(self) -> list[nn.Module]:  # plain lists: the modules are registered once, in `model`
        return list(self.layers()[: self.split_layer])

    @property
    def upper_layers(self) -> list[nn.Module]:
        return list(self.layers()[self.split_layer:])

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, max_text_len: int, pretrained: bool = True):
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        model = AutoModel.from_pretrained(source, dtype=torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(source)
        return cls(model, tokenizer, name=source, top_blocks=top_blocks, max_text_len=max_text_len)

    # -- family hooks (MPNet overrides them)
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def embedding_modules(self) -> list[nn.Module]:
        return [m for m in (self.model.embeddings, getattr(self.model, "embeddings_project", None)) if m is not None]

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        if getattr(self.model, "embeddings_project", None) is not None:  # ELECTRA: embedding_size != hidden_size
            hidden = self.model.embeddings_project(hidden)
        return hidden

    def layer_extras(self, hidden: torch.Tensor) -> dict:
        return {}

    # -- the contract
    def preprocess(self, raw: list[str | None]) -> dict[str, torch.Tensor]:
        texts = ["" if text is None else str(text) for text in raw]
        return self.tokenise(texts)

    def _run(self, layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                              attention_mask=mask.to(torch.long))
        extras = self.layer_extras(hidden)
        for layer in layers:
            out = layer(hidden, attention, **extras)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def lower_forward(self, batch):
        mask = batch["attention_mask"].bool()
        return self._run(self.lower_layers, self.embed(batch), mask), mask

    def upper(self, hidden, mask):
        hidden = hidden.to(next(self.model.parameters()).dtype)
        return self._run(self.upper_layers, hidden, mask), mask

    def full(self, batch):
        return self.model(**batch).last_hidden_state

    def lower_modules(self):
        return [*self.embedding_modules(), *self.lower_layers]

    def upper_modules(self):
        return list(self.upper_layers)

    def identity(self) -> dict:
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()
        return {**self.base_identity(), "model_type": self.model.config.model_type,
                "tokenizer": {"name": model_key(self.spec), "class": type(self.tokenizer).__name__,
                              "vocab_sha256": hashlib.sha256(vocab).hexdigest(), "max_length": self.max_text_len,
                              "padding": "max_length", "truncation": True, "empty_text": "special tokens only"}}


@register_family("hf:mpnet", modality="text")
class MPNetTextEncoder(HFTextEncoder):
    """MPNet adds a relative position bias shared by all layers; it stays frozen with the lower part."""

    def embedding_modules(self):
        return [self.model.embeddings, self.model.encoder.relative_attention_bias]

    def embed(self, batch):
        return self.model.embeddings(input_ids=batch["input_ids"])

    def layer_extras(self, hidden):
        return {"position_bias": self.model.encoder.compute_position_bias(hidden)}

    def preprocess(self, raw):
        batch = super().preprocess(raw)
        batch.pop("token_type_ids", None)
        return batch
