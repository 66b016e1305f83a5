"""VisualBERT (Li et al., 2019), a one-stream VLP: BERT over text tokens and visual features
from a separate vision model (seed §6 (b); the paper used `uclanlp/visualbert-vqa-coco-pre`).

    lower: picture representation (frozen, whole) -> VisualBERT's embeddings -> layers[:L-k]
    upper: layers[L-k:]                                  = VisualBertModel's last_hidden_state

The visual features come from one of the four representations of seed §6.1 (Table VII),
`encoders.joint_vision`: region (Faster R-CNN RoI features of the top 49 boxes; `region-c5`
describes the same boxes at the 2048 width of Detectron's features), grid (ResNet-50 7x7),
patch-emb (CLIP-ViT's patch embedding) or patch-vit (the whole CLIP-ViT), with weights from
`encoders.joint_vision_model` (`mmsr.encoders.visual_features`). The representation is part of
the frozen lower part, so it runs once per item, at cache time, and its weights are in the
encoder's weights hash. Its width must be the checkpoint's `visual_embedding_dim` (2048 for the
released COCO checkpoints: region and grid features of a ResNet-50 trunk).
"""

from __future__ import annotations

import torch

from mmsr.encoders.base import torch_dtype
from mmsr.encoders.hf_common import quiet_transformers
from mmsr.encoders.joint import OneStreamEncoder, check_text_positions, load_tokenizer
from mmsr.encoders.registry import register_family
from mmsr.encoders.visual_features import create_visual_features
from mmsr.errors import MMSRError


@register_family("hf:visual_bert", modality="joint")
class VisualBertEncoder(OneStreamEncoder):
    vision_representations = ("region", "region-c5", "grid", "patch-emb", "patch-vit")

    def __init__(self, model, tokenizer, features, *, name: str, top_blocks: int, max_text_len: int):
        check_text_positions(model, max_text_len, name)
        if model.config.bypass_transformer:
            raise MMSRError("this VisualBERT runs its text through the transformer without the picture "
                            "(bypass_transformer=True): not a one-stream model", where=name,
                            hint="use a checkpoint with bypass_transformer=False (every released one)")
        width = model.config.visual_embedding_dim
        if features.feature_dim != width:
            raise MMSRError(f"the {features.name} representation gives {features.feature_dim}-wide features but this "
                            f"VisualBERT takes {width}-wide ones (visual_embedding_dim)", where=name,
                            hint="choose the representation and weights the checkpoint was trained on (2048: "
                                 "region-c5 or grid from a ResNet-50), or a checkpoint of the features' width")
        super().__init__(model, tokenizer, name=name, top_blocks=top_blocks, max_text_len=max_text_len)
        self.features = features

    @classmethod
    def from_source(cls, source: str, *, top_blocks: int, dtype: str, max_text_len: int, image_size: int,
                    vision: str = "", vision_model: str = "", pretrained: bool = True):
        from transformers import VisualBertModel

        quiet_transformers()
        model = VisualBertModel.from_pretrained(source, dtype=torch_dtype(dtype))
        tokenizer = load_tokenizer(source, "VisualBERT uses bert-base-uncased's BertTokenizer")
        features = create_visual_features(vision, vision_model, image_size=image_size, dtype=dtype)
        return cls(model, tokenizer, features, name=source, top_blocks=top_blocks, max_text_len=max_text_len)

    # -- family hooks
    def embedding_modules(self):
        return [self.features, self.model.embeddings]

    def preprocess_pictures(self, pictures):
        return {"pixel_values": self.features.preprocess(pictures)}

    def _visual(self, batch):
        visual, visual_mask = self.features(batch["pixel_values"])
        return visual.to(next(self.model.parameters()).dtype), visual_mask.bool()

    def embed_joint(self, batch):
        visual, visual_mask = self._visual(batch)
        hidden = self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"),
                                       visual_embeds=visual, visual_token_type_ids=torch.ones_like(visual_mask, dtype=torch.long))
        return hidden, torch.cat([batch["attention_mask"].bool(), visual_mask], 1)

    def picture_identity(self):
        return {"representation": self.features.identity()}

    def full(self, batch):
        visual, visual_mask = self._visual(batch)
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch.get("token_type_ids"), visual_embeds=visual,
                          visual_attention_mask=visual_mask.long(),
                          visual_token_type_ids=torch.ones_like(visual_mask, dtype=torch.long)).last_hidden_state
