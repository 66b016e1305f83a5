"""The split-encoder contract every encoder family implements.

    batch  = encoder.preprocess(raw)           # list[str] or list[PIL.Image] -> dict of tensors
    hidden, mask = encoder.lower(batch)        # frozen layers 0..L-k: [N,T,D], [N,T] bool
    tokens, mask = encoder.upper(hidden, mask) # trainable top k blocks + final norm: [N,T',D'], [N,T'] bool
    encoder.full(batch)                        # the unsplit pretrained model's last hidden state

`upper(*lower(b))` equals `full(b)` (tests prove it for every registered family).
`preprocess` is pure CPU work, safe to run in DataLoader workers. `lower` runs in eval mode
under `torch.inference_mode`; freezing is done by module (`lower_modules`), never by
parameter index.

Image mask ratio (`encoders.image_mask_ratio`, seed §8.4 Table XIV, after MAE): a ViT-style
family drops a fixed share of its patch tokens right after the patch and position embedding,
before the first block; class and register tokens are always kept. `full` is then the
pretrained model's own forward with the same tokens dropped at that point.
"""

from __future__ import annotations

import functools
import hashlib
import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from mmsr.encoders.config import SLOT_FIELDS
from mmsr.errors import MMSRError
from mmsr.encoders.model_key import model_key

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise MMSRError(f"unknown dtype {name!r}", hint=f"one of {sorted(DTYPES)}")
    return DTYPES[name]


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict, in sorted key order, with names, dtypes and shapes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_image_mask(ratio: float, seed: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise MMSRError(f"encoders.image_mask_ratio={ratio} is out of range",
                        hint="give the share of patch tokens to drop, in [0, 1); 0 keeps every patch")
    if seed < 0:
        raise MMSRError(f"encoders.image_mask_seed={seed} is negative", hint="give an integer >= 0")


def patches_kept(num_patches: int, ratio: float) -> int:
    """round((1 - ratio) * num_patches), halves rounded up, and at least one patch."""
    return max(1, math.floor((1.0 - ratio) * num_patches + 0.5))


@functools.lru_cache(maxsize=64)
def kept_patch_indices(num_patches: int, ratio: float, seed: int) -> tuple[int, ...]:
    """The patch positions kept, in their natural (raster) order.

    One pattern for every picture. `lower` sees a batch of pixels and never the item ids, and
    the cache build and the end-to-end feed batch items differently, so a pattern drawn per
    picture of a batch would give one item different tokens in the two paths; one pattern per
    (seed, grid) gives identical states in both. Patches are ranked by a hash of (seed, index)
    rather than by a torch/numpy generator, whose streams may change between versions, so a
    cache fingerprinted by (ratio, seed) means the same patches everywhere. The ranking is
    shared by every ratio, so with one seed the patches kept at 0.75 are a subset of those
    kept at 0.5: a ratio sweep removes information, it does not move it.
    """
    rank = sorted(range(num_patches),
                  key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
    return tuple(sorted(rank[: patches_kept(num_patches, ratio)]))


class SplitEncoder(nn.Module):
    modality: str = ""  # "text" or "image"
    # What kind of pretrained model the family is: a key of `registry.PARADIGMS`.
    paradigm: str = "unimodal"
    # Why this family cannot drop patch tokens (None: it can, see `keep_patches`). Families opt
    # in, so a new family refuses image_mask_ratio until someone checks it can drop tokens.
    patch_drop_refusal: str | None = "it has no patch tokens to drop"
    image_mask_ratio: float = 0.0
    image_mask_seed: int = 0
    # The picture representations a one-stream (joint) family reads (`encoders.joint_vision`, see
    # mmsr.encoders.visual_features); empty: it embeds pixels itself, or it is not a joint family.
    vision_representations: tuple[str, ...] = ()

    def __init__(self, name: str, num_layers: int, top_blocks: int):
        super().__init__()
        if not 0 <= top_blocks <= num_layers:
            setting = f"encoders.{SLOT_FIELDS[self.modality][1]}" if self.modality in SLOT_FIELDS else "top_blocks"
            raise MMSRError(f"{setting}={top_blocks}, but {name} has {num_layers} blocks",
                            hint=f"choose 0..{num_layers} trainable top blocks")
        self.name = name
        self.num_layers = num_layers
        self.top_blocks = top_blocks
        self.split_layer = num_layers - top_blocks
        self.spec = name  # what the user asked for (create_encoder sets it)
        self.family = ""  # the registry key (create_encoder sets it)
        self._weights_sha256: str | None = None

    # -- to implement per family
    hidden_size: int  # D of lower's output
    output_size: int  # D' of upper's output

    def preprocess(self, raw: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def lower_forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def upper(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def full(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def patch_grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of patch tokens the embedding makes of `pixels` (families that drop patches)."""
        raise NotImplementedError

    def lower_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def upper_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def upper_is_fixed(self) -> bool:
        """Whether `upper` runs none of the model's modules (no top block, no final norm): then
        it is a fixed function of the cached states, the same at every training step."""
        return not self.upper_modules()

    def identity(self) -> dict:
        """What makes cached states valid: model identity and weights hash, split layer,
        tokenizer and max length or image transform. Goes into the cache fingerprint."""
        raise NotImplementedError

    # -- shared behaviour
    def weights_sha256(self) -> str:
        """Hash of the weights as loaded (computed once, at creation, before any training)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = state_dict_sha256(self)
        return self._weights_sha256

    def base_identity(self) -> dict:
        return {
            "family": self.family, "model": model_key(self.spec), "modality": self.modality,
            "weights_sha256": self.weights_sha256(), "num_layers": self.num_layers,
            "split_layer": self.split_layer, "top_blocks": self.top_blocks,
            "hidden_size": self.hidden_size, "output_size": self.output_size,
            "dtype": str(next(self.parameters()).dtype).removeprefix("torch."),
            **self.image_mask_identity(),
        }

    # -- image mask ratio (seed §8.4 Table XIV)
    @classmethod
    def check_image_mask_support(cls, ratio: float, seed: int, family: str = "") -> None:
        """Refuse a bad ratio, or a nonzero one this family cannot apply (before any weights load)."""
        check_image_mask(ratio, seed)
        if ratio and cls.patch_drop_refusal:
            raise MMSRError(f"{family or cls.__name__} cannot use encoders.image_mask_ratio={ratio}: "
                            f"{cls.patch_drop_refusal}",
                            hint="set encoders.image_mask_ratio=0, or choose a ViT-style vision model "
                                 "(ViT, DINOv2, ViT-MAE, CLIP, open_clip ViT)")

    @classmethod
    def check_vision(cls, vision: str, vision_model: str, family: str = "") -> None:
        """Refuse a picture representation this joint family does not take (before any weights load)."""
        name = family or cls.__name__
        if not cls.vision_representations:
            if vision or vision_model:
                raise MMSRError(f"{name} embeds the pixels of the picture itself and takes no picture representation "
                                f"(encoders.joint_vision={vision!r}, encoders.joint_vision_model={vision_model!r})",
                                hint='remove encoders.joint_vision and encoders.joint_vision_model, or set them to ""')
            return
        if vision not in cls.vision_representations:
            raise MMSRError(f"{name} reads a picture representation, and encoders.joint_vision={vision!r} is not one "
                            "it takes", hint="set encoders.joint_vision to one of "
                                             + ", ".join(cls.vision_representations))
        if not vision_model:
            raise MMSRError(f"{name} with encoders.joint_vision={vision!r} needs the weights of that representation's "
                            "model in encoders.joint_vision_model",
                            hint="e.g. torchvision:fasterrcnn_resnet50_fpn@/path/weights.pth (region), "
                                 "torchvision:resnet50@/path/weights.pth (grid), a CLIP directory (patch-emb, patch-vit)")

    def set_image_mask(self, ratio: float, seed: int = 0) -> None:
        self.check_image_mask_support(ratio, seed, self.family)
        self.image_mask_ratio, self.image_mask_seed = float(ratio), int(seed)

    def image_mask_identity(self) -> dict:
        # Absent at ratio 0, so caches built before the setting existed keep their fingerprint;
        # a masked cache carries these keys and an unmasked reader refuses it, and vice versa.
        if not self.image_mask_ratio:
            return {}
        return {"image_mask_ratio": self.image_mask_ratio, "image_mask_seed": self.image_mask_seed,
                "image_mask_pattern": "one kept set for every picture: patches ranked by "
                                      "blake2b(seed:index), round((1-ratio)*patches) kept in raster order; "
                                      "class and register tokens kept"}

    def keep_patches(self, tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """[N, prefix + P, D] embedded tokens -> [N, prefix + kept, D]: the prefix (class and
        register tokens) and the kept patches, in order. Identity at ratio 0."""
        if not self.image_mask_ratio:
            return tokens
        rows, columns = self.patch_grid(pixels)
        patches = rows * columns
        prefix = tokens.shape[1] - patches
        if prefix < 0:
            raise MMSRError(f"{self.family}: {tokens.shape[1]} tokens for a {rows}x{columns} patch grid")
        kept = torch.tensor(kept_patch_indices(patches, self.image_mask_ratio, self.image_mask_seed),
                            device=tokens.device) + prefix
        index = torch.cat([torch.arange(prefix, device=tokens.device), kept])
        return tokens.index_select(1, index)

    @contextmanager
    def patches_dropped_after(self, module: nn.Module, pixels: torch.Tensor) -> Iterator[None]:
        """While inside, `module`'s output tokens (or the first item of its output tuple) lose
        the masked patches: how `full` runs the unmodified pretrained forward on the kept tokens."""
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (self.keep_patches(output[0], pixels), *output[1:])
            return self.keep_patches(output, pixels)

        handle = module.register_forward_hook(hook) if self.image_mask_ratio else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def freeze_lower(self) -> None:
        for module in self.lower_modules():
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        # Parameters in no upper module (e.g. open_clip's unused `proj`) cannot learn either.
        trainable = {id(p) for module in self.upper_modules() for p in module.parameters()}
        for parameter in self.parameters():
            if id(parameter) not in trainable:
                parameter.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.lower_modules():  # frozen layers never run dropout
            module.eval()
        return self

    def lower(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            hidden, mask = self.lower_forward(batch)
        # Inference tensors cannot enter autograd; a clone outside inference mode is a normal
        # tensor, so `upper(*lower(x))` also works when the upper blocks are being trained.
        return hidden.clone(), mask.clone()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """End-to-end: frozen lower layers (no grad) then trainable upper blocks."""
        with torch.no_grad():
            hidden, mask = self.lower_forward(batch)
        return self.upper(hidden, mask)
