"""One-stream, deep-fusion VLPs (seed §6 (b), Table VI): one transformer over an item's text
tokens and picture tokens together. The shared part of ViLT and VisualBERT.

    raw item:  (text, picture)                      the picture is never missing: see below
    lower: joint embeddings -> layers[:L-k]         hidden [N, Tt + Ti, D], mask [N, Tt + Ti]
    upper: layers[L-k:] (-> final norm)             tokens [N, Tt + Ti, D]

The cache stores these states as the `joint` modality: one array per item covering both
inputs, fingerprinted by the tokenizer, the picture transform and, for VisualBERT, the picture
representation. What turns the picture into tokens is family-specific (`embed_joint`).

- Text is padded / truncated to exactly `max_text_len` tokens, so T is the same for every item.
- A one-stream model has no way to leave the picture out, so an item without a readable picture
  gets the grey placeholder (`mmsr.data.dataset.placeholder_picture`), in the cache and end to end
  alike; the cache's fingerprint says so.
- The layers are post-LN BERT layers (VisualBERT) or pre-LN ViT layers (ViLT); both take the
  bidirectional attention mask `HFTextEncoder._run` builds.
"""

from __future__ import annotations

import torch

from mmsr.encoders.hf_text import HFTextEncoder
from mmsr.errors import MMSRError


class OneStreamEncoder(HFTextEncoder):
    modality = "joint"
    paradigm = "one-stream-deep"
    patch_drop_refusal = "its picture tokens are made inside the one-stream model"

    # -- family hooks
    def preprocess_pictures(self, pictures: list) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def embed_joint(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text and picture tokens, embedded and concatenated: [N, Tt + Ti, D] and a bool mask."""
        raise NotImplementedError

    def picture_identity(self) -> dict:
        raise NotImplementedError

    # -- the contract
    def preprocess(self, raw: list[tuple]) -> dict[str, torch.Tensor]:
        """[(text, picture), ...] -> the tokenizer's tensors and the picture's."""
        if any(not isinstance(pair, tuple) or len(pair) != 2 or pair[1] is None for pair in raw):
            raise MMSRError(f"{self.family or type(self).__name__} takes (text, picture) pairs, every picture given",
                            hint="the cache build and the end-to-end feed pass the placeholder picture for an item "
                                 "without one")
        return {**super().preprocess([text for text, _ in raw]),
                **self.preprocess_pictures([picture for _, picture in raw])}

    def lower_forward(self, batch):
        hidden, mask = self.embed_joint(batch)
        return self._run(self.lower_layers, hidden, mask), mask

    def identity(self) -> dict:
        return {**super().identity(), "picture": self.picture_identity()}


def check_text_positions(model, max_text_len: int, name: str) -> None:
    positions = model.config.max_position_embeddings
    if max_text_len > positions:
        raise MMSRError(f"encoders.max_text_len={max_text_len} but this model has {positions} text positions",
                        where=name, hint=f"set encoders.max_text_len to at most {positions}")


def load_tokenizer(source: str, expected: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        raise MMSRError(f"no tokenizer next to this model: {str(error).splitlines()[0]}", where=source,
                        hint=f"save the checkpoint's tokenizer into the directory (tokenizer.save_pretrained(path)); "
                             f"{expected}") from None
