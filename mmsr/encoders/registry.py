"""Choosing an encoder by name: `create_encoder("minilm", "text", top_blocks=2)`.

A *family* is one small module that knows how to split one kind of model into `lower` and
`upper`. Families register themselves with `@register_family(key, ..., modality=...)`:

    hf:<model_type>   a transformers model directory or Hub name; the key is the
                      `model_type` of its config.json (bert, roberta, vit, dinov2, ...)
    open_clip         `open_clip:ViT-B-32` or `open_clip:ViT-B-32@/path/weights.bin`
    timm              `timm:resnet50` or `timm:resnet50@/path/weights.safetensors`

A *short name* (`minilm`, `dinov2-s`) is registered with `register_name`; it resolves to one
of the above, preparing offline weights on first use. Dispatch is by dictionary lookup only:
an explicit prefix, a short name, or the config's `model_type` -- never by substrings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmsr.encoders.base import SplitEncoder
from mmsr.encoders.config import MODALITIES, READS_PICTURE, READS_TEXT, SLOTS
from mmsr.errors import MMSRError

HF_PREFIX = "hf"

# What kind of pretrained model a family is (seed §6, Table VI), shown by `mmsr models list`.
# A family class says which in its `paradigm` attribute.
PARADIGMS = {
    "unimodal": "pretrained on one modality",
    "two-stream-shallow": "(a) VLP: two streams, shallow fusion (CLIP, GroupViT)",
    "one-stream-deep": "(b) VLP: one stream, deep fusion (ViLT, VisualBERT): text and picture tokens "
                       "through one transformer, cached as the joint modality",
    "two-stream-deep": "(c) VLP: two streams, deep fusion (FLAVA): each tower split, FLAVA's multimodal encoder "
                       "as the fusion (model.fusion=flava)",
}


@dataclass(frozen=True)
class Family:
    key: str  # "hf:bert", "open_clip", "timm"
    modality: str
    cls: type  # a SplitEncoder subclass with a `from_source(source, **options)` classmethod


def _always_prepared() -> bool:
    return True


@dataclass(frozen=True)
class ShortName:
    name: str
    modality: str
    resolve: Callable[[], str]  # returns a model directory / spec; may prepare weights
    description: str
    # False while `resolve` would still have to prepare weights (e.g. convert them once).
    prepared: Callable[[], bool] = _always_prepared


_FAMILIES: dict[tuple[str, str], Family] = {}
_NAMES: dict[str, ShortName] = {}
_PREFIXES: set[str] = {HF_PREFIX}


def register_family(*keys: str, modality: str):
    """Class decorator: `cls.from_source(source, **options)` builds encoders for these keys.

    A key `hf:<model_type>` claims transformers configs of that type; any other key (without a
    colon) is a prefix: `<key>:<name>` specs go to this family.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}")

    def decorator(cls):
        if cls.paradigm not in PARADIGMS:
            raise ValueError(f"{cls.__name__}.paradigm={cls.paradigm!r} is not one of {sorted(PARADIGMS)}")
        for key in keys:
            if (key, modality) in _FAMILIES:
                raise ValueError(f"encoder family {key!r} ({modality}) registered twice")
            _FAMILIES[(key, modality)] = Family(key, modality, cls)
            if ":" not in key:
                _PREFIXES.add(key)
        return cls

    return decorator


def register_name(name: str, modality: str, resolve: Callable[[], str], description: str = "",
                  prepared: Callable[[], bool] = _always_prepared) -> None:
    _NAMES[name] = ShortName(name, modality, resolve, description, prepared)


def list_encoders() -> list[str]:
    """Registered short names (creatable as they are)."""
    _load_families()
    return sorted(_NAMES)


def list_families(modality: str | None = None) -> list[str]:
    """Registered family keys, e.g. `hf:bert`, `open_clip`, `timm` (with their modality)."""
    _load_families()
    return sorted(f"{key}/{mod}" for key, mod in _FAMILIES if modality in (None, mod))


def short_names() -> dict[str, ShortName]:
    _load_families()
    return dict(_NAMES)


def describe_short_names() -> dict[str, dict]:
    """{name: {"modality", "description", "prepared"}} for every short name, in registration order
    (what `mmsr models list` shows)."""
    return {name: {"modality": short.modality, "description": short.description, "prepared": short.prepared()}
            for name, short in short_names().items()}


def describe_families() -> dict[str, dict]:
    """{"key/modality": {"paradigm", "paradigm_description"}} for every family (`mmsr models list`)."""
    _load_families()
    return {f"{key}/{mod}": {"paradigm": family.cls.paradigm, "paradigm_description": PARADIGMS[family.cls.paradigm]}
            for (key, mod), family in sorted(_FAMILIES.items())}


def family_for(key: str, modality: str, where: str | None = None) -> Family:
    _load_families()
    if (key, modality) in _FAMILIES:
        return _FAMILIES[(key, modality)]
    # A checkpoint of one tower only (a GroupViT vision model, a CLIP text model) given for the
    # other slot: say which slot it fits, rather than listing every family.
    fits = sorted(m for k, m in _FAMILIES if k == key)
    if fits:
        raise MMSRError(f"no {modality} encoder family for {key!r}: it holds {fits[0]} weights only",
                        where=where, hint=f"give it as {SLOTS[fits[0]]}; as {SLOTS[modality]} give a model with a "
                                          f"{modality} tower, e.g. a full CLIPModel or GroupViTModel directory")
    known = ", ".join(k for k, m in sorted(_FAMILIES) if m == modality)
    raise MMSRError(f"no {modality} encoder family for {key!r}", where=where, hint=f"supported: {known}")


def _hf_model_type(source: str, near: str | None = None) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError) as error:
        raise MMSRError(f"cannot read a transformers config: {str(error).splitlines()[0]}", where=source,
                        hint=(f"did you mean {near!r}? " if near else "") + "give a local model directory, a cached "
                             "Hub name (no network is used), open_clip:NAME, timm:NAME, or a short name from "
                             "`mmsr models list`") from None


def resolve_spec(name_or_path: str | os.PathLike, modality: str) -> tuple[Family, str]:
    """Which family builds `name_or_path`, and the source string handed to it."""
    _load_families()
    if modality not in MODALITIES:
        raise MMSRError(f"unknown modality {modality!r}", hint=f"one of {MODALITIES}")
    spec = str(name_or_path)
    if spec in _NAMES:
        short = _NAMES[spec]
        if short.modality != modality:
            raise MMSRError(f"{SLOTS[modality]}={spec!r}: it is {_a(short.modality)} encoder, not {_a(modality)} one",
                            hint=f"give it as {SLOTS.get(short.modality, short.modality)}, and a {modality} model "
                                 f"here (`mmsr models list` shows each one's modality)")
        spec = short.resolve()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _PREFIXES and not Path(spec).exists():
        if prefix == HF_PREFIX:
            spec = rest
        else:
            return family_for(prefix, modality), rest
    if spec.startswith("~"):
        spec = str(Path(spec).expanduser())
    looks_like_path = spec.startswith(("/", ".")) or spec.count("/") > 1  # a Hub name is ORG/NAME
    if looks_like_path and not Path(spec).exists():
        raise MMSRError(f"{SLOTS[modality]}: no such model folder", where=spec,
                        hint="give a local model directory, or a short name from `mmsr models list`")
    return family_for(f"{HF_PREFIX}:{_hf_model_type(spec, _near_name(spec, modality))}", modality, where=spec), spec


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _near_name(spec: str, modality: str) -> str | None:
    """The short name `spec` was probably meant to be (MINILM, dinov2_s), if any."""
    import difflib

    names = [name for name, short in _NAMES.items() if short.modality == modality]
    folded = {name.lower().replace("_", "-"): name for name in names}
    return folded.get(spec.lower().replace("_", "-")) or next(iter(difflib.get_close_matches(spec, names, 1)), None)


def _load(family, source, options: dict) -> SplitEncoder:
    """`family.cls.from_source`, with a local folder whose weights are missing or cut short named
    (a copy stopped part way, a file deleted): transformers' OSError or safetensors' error, with a
    traceback, was all the user got."""
    try:
        return family.cls.from_source(source, **options)
    except Exception as error:
        local = isinstance(source, (str, os.PathLike)) and Path(source).is_dir()
        if not local or not (isinstance(error, OSError) or type(error).__module__.startswith("safetensors")):
            raise
        said = " ".join(str(error).split())[:200]
        raise MMSRError(f"cannot load the model's weights ({type(error).__name__}: {said})", where=source,
                        hint="the folder is incomplete or damaged: delete it and run `mmsr models prepare` (or "
                             "copy the checkpoint again)") from None


def create_encoder(name_or_path: str | os.PathLike, modality: str, top_blocks: int, *, max_text_len: int = 50,
                   image_size: int = 224, image_mask_ratio: float = 0.0, image_mask_seed: int = 0,
                   dtype: str = "float32", pretrained: bool = True, vision: str = "",
                   vision_model: str = "") -> SplitEncoder:
    """Build a split encoder: lower layers frozen (eval mode), top `top_blocks` blocks trainable.

    `name_or_path`: a short name (`list_encoders()`), a transformers directory or cached Hub
    name, `open_clip:NAME[@weights]` or `timm:NAME[@weights]`. `pretrained=False` builds
    open_clip/timm models randomly initialised (tests); transformers models always load weights.
    `image_mask_ratio` / `image_mask_seed` (vision only): see `SplitEncoder.keep_patches`.
    `vision` / `vision_model` (joint only): the picture representation a one-stream model reads
    and its weights (`mmsr.encoders.visual_features`); families that embed pixels refuse them.
    """
    family, source = resolve_spec(name_or_path, modality)
    options = dict(top_blocks=top_blocks, dtype=dtype, pretrained=pretrained)
    if modality in READS_TEXT:
        options["max_text_len"] = max_text_len
    if modality in READS_PICTURE:
        options["image_size"] = image_size
        family.cls.check_image_mask_support(image_mask_ratio, image_mask_seed, family.key)  # before loading weights
    if modality == "joint":
        family.cls.check_vision(vision, vision_model, family.key)  # before loading weights
        options.update(vision=vision, vision_model=vision_model)
    encoder = _load(family, source, options)
    encoder.spec = str(name_or_path)
    encoder.family = family.key
    if modality in READS_PICTURE:
        encoder.set_image_mask(image_mask_ratio, image_mask_seed)
    encoder.freeze_lower()
    encoder.eval()  # the trainer switches the upper blocks to train mode; lower ones stay in eval
    encoder.weights_sha256()  # hash the weights as loaded, before anyone trains them
    return encoder


_loaded = False


def _load_families() -> None:
    """Import the family modules once (each registers itself)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(f"mmsr.encoders.{module}")


# One small module per family; adding a family = adding a module here.
FAMILY_MODULES = ("hf_text", "hf_vision", "hf_swin", "open_clip_visual", "timm_cnn", "vlp_text", "groupvit_vision",
                  "vilt", "visualbert", "flava", "offline")
