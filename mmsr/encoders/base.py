"""The split-encoder contract every encoder family implements.

    batch  = encoder.preprocess(raw)           # list[str] or list[PIL.Image] -> dict of tensors
    hidden, mask = encoder.lower(batch)        # frozen layers 0..L-k: [N,T,D], [N,T] bool
    tokens, mask = encoder.upper(hidden, mask) # trainable top k blocks + final norm: [N,T',D'], [N,T'] bool
    encoder.full(batch)                        # the unsplit pretrained model's last hidden state

`upper(*lower(b))` equals `full(b)` (tests prove it for every registered family).
`preprocess` is pure CPU work, safe to run in DataLoader workers. `lower` runs in eval mode
under `torch.inference_mode`; freezing is done by module (`lower_modules`), never by
parameter index.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

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


class SplitEncoder(nn.Module):
    modality: str = ""  # "text" or "image"

    def __init__(self, name: str, num_layers: int, top_blocks: int):
        super().__init__()
        if not 0 <= top_blocks <= num_layers:
            raise MMSRError(f"{name}: top_blocks={top_blocks} but the model has {num_layers} blocks",
                            hint=f"choose 0..{num_layers}")
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

    def lower_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def upper_modules(self) -> list[nn.Module]:
        raise NotImplementedError

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
        }

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
