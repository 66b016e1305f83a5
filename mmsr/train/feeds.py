"""Item feeds: item ids -> what the item tower reads. All file and cache I/O happens here,
outside the model's `forward`.

    CacheFeed  slices of the cached lower-layer states, held in RAM, memory-mapped or on GPU;
    RawFeed    the frozen lower layers run on raw text and pictures (end-to-end mode: eval, no grad);
    IdFeed     IDSR: the ids themselves.

Both content feeds produce the same states (hidden [N,T,D], mask [N,T] per modality), so the
cached and end-to-end paths share one code path from `upper` onwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Union

import torch

from mmsr.caches import cache_path, open_checked_cache
from mmsr.data.dataset import BadImagePolicy, Dataset
from mmsr.errors import MMSRError
from mmsr.models.layers import masked_mean
from mmsr.train.config import TrainConfig

States = dict[str, tuple[torch.Tensor, torch.Tensor]]
ItemInputs = Union[States, torch.Tensor]  # states for content towers, ids for the ID tower


class ItemFeed(Protocol):
    def __call__(self, ids: torch.Tensor) -> ItemInputs: ...


class IdFeed:
    """IDSR's feed: an ID item tower reads the ids."""

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return ids


class CacheFeed:
    def __init__(self, states: States, device: torch.device):
        self.states = states
        self.device = device

    def __call__(self, ids: torch.Tensor) -> States:
        out = {}
        for modality, (hidden, mask) in self.states.items():
            index = ids.to(hidden.device)
            out[modality] = (hidden[index].to(self.device, non_blocking=True), mask[index].to(self.device))
        return out


class RawFeed:
    """Runs each encoder's frozen lower layers on raw text and pictures, every call.

    Pictures follow `on_bad_image` as in the cache build: "error" stops with the item named,
    "skip" leaves the item without a picture, "placeholder" gives it a grey one.
    """

    def __init__(self, dataset: Dataset, encoders: dict, text_fields: list[str], device: torch.device,
                 on_bad_image: BadImagePolicy = "error", image_size: int = 224):
        self.dataset = dataset
        self.encoders = encoders
        self.text_fields = text_fields
        self.device = device
        self.on_bad_image = on_bad_image
        self.image_size = image_size

    def raw(self, modality: str, ids: list[int]) -> list:
        """Texts, or pictures (None for an item without one)."""
        if modality == "text":
            return [self.dataset.item_text(i, self.text_fields) for i in ids]
        pictures = []
        for i in ids:
            picture, problem = self.dataset.load_picture(i, self.on_bad_image, self.image_size)
            if problem and self.on_bad_image == "error":
                raise MMSRError(problem, hint="restore the file, or train with --set on_bad_image=skip|placeholder "
                                              "(as `mmsr cache build` does)")
            pictures.append(picture)
        return pictures

    def __call__(self, ids: torch.Tensor) -> States:
        id_list = ids.tolist()
        out = {}
        for modality, encoder in self.encoders.items():
            raw = self.raw(modality, id_list)
            present = [k for k, value in enumerate(raw) if value is not None]
            batch = encoder.preprocess([raw[k] for k in present])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            with torch.no_grad():
                hidden, mask = encoder.lower_forward(batch)
            if len(present) < len(raw):  # items without a picture: zeros, nothing valid (as in the cache)
                full = hidden.new_zeros((len(raw),) + hidden.shape[1:])
                full_mask = mask.new_zeros((len(raw),) + mask.shape[1:])
                full[present], full_mask[present] = hidden, mask
                hidden, mask = full, full_mask
            out[modality] = (hidden, mask)
        return out


class WithIds:
    """For towers that read both (FDSA): {"ids": ids, "states": the content feed's states}."""

    def __init__(self, states: "ItemFeed | None"):
        self.states = states

    def __call__(self, ids: torch.Tensor) -> dict:
        return {"ids": ids, "states": self.states(ids) if self.states is not None else {}}


def open_feed(config: TrainConfig, model, dataset: Dataset, from_cache: bool,
              device: torch.device) -> tuple[ItemFeed, str]:
    """The model's item feed and a description of it, by what its item tower reads
    (`model.item_inputs`): ids, the zarr cache (checked against this model's fingerprints,
    loaded in bulk into `config.cache_into`), raw inputs, or ids with either."""
    if model.item_inputs == "ids":
        return IdFeed(), "ids"
    encoders = model.encoders
    states, description = (open_states_feed(config, encoders, dataset, from_cache, device) if encoders
                           else (None, "no content"))
    if model.item_inputs == "ids+states":
        return WithIds(states), f"ids and {description}"
    return states, description


def open_states_feed(config: TrainConfig, encoders: dict, dataset: Dataset, from_cache: bool,
                     device: torch.device) -> tuple[ItemFeed, str]:
    """The lower-layer states of `encoders`: from the cache, or computed from raw inputs."""
    if not from_cache:
        return (RawFeed(dataset, encoders, config.encoders.text_fields, device, on_bad_image=config.on_bad_image,
                        image_size=config.encoders.image_size), "end-to-end (lower layers every step)")
    path: Path = cache_path(dataset, config.encoders)
    cache = open_checked_cache(path, encoders, dataset, config.encoders)
    built_with = cache.build_options.get("on_bad_image", "error")
    if "image" in encoders and built_with != config.on_bad_image:
        raise MMSRError(f"the cache was built with on_bad_image={built_with}, this run says "
                        f"{config.on_bad_image}", where=path,
                        hint=f"train with --set on_bad_image={built_with}, or rebuild the cache with "
                             f"--set on_bad_image={config.on_bad_image} --overwrite")
    into = config.cache_into
    if into == "auto":
        into = "cuda" if device.type == "cuda" else "ram"
    states = {m: cache.load(m, into=into) for m in encoders}
    return CacheFeed(states, device), f"cache {path} ({into})"


@torch.no_grad()
def pooled_features(config: TrainConfig, modality: str, dataset: Dataset, from_cache: bool,
                    device: torch.device) -> torch.Tensor:
    """[items, D] the masked-mean pooled output of the config's `modality` encoder, run whole
    and frozen: what a model that takes its content as given features reads once (VQRec)."""
    from mmsr.encoders import create_encoders  # deferred: only the baselines that quantize content need it

    encoder = create_encoders(config.encoders, only=(modality,))[modality].to(device).eval()
    feed, _ = open_states_feed(config, {modality: encoder}, dataset, from_cache, device)
    out = []
    for start in range(0, dataset.num_items, config.eval_batch_size):
        ids = torch.arange(start, min(dataset.num_items, start + config.eval_batch_size), device=device)
        hidden, mask = feed(ids)[modality]
        tokens, token_mask = encoder.upper(hidden.float(), mask)
        out.append(masked_mean(tokens, token_mask).float().cpu())
    return torch.cat(out)


def prepare_items(model, config: TrainConfig, dataset: Dataset, from_cache: bool, device: torch.device) -> None:
    """What an item tower fixes once before training from its frozen content (VQRec's codes);
    nothing for the others. A resumed run and `mmsr eval` restore it with the weights instead."""
    modality = getattr(model.items, "needs_features", None)
    if modality:
        model.items.prepare(pooled_features(config, modality, dataset, from_cache, device))
