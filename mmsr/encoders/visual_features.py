"""The four vision representations VisualBERT reads a picture through (seed §6, §6.1).

VisualBERT is a single stream over text tokens and *visual rows*. What a row is depends on
the vision representation in front of it; mmsr runs that representation once per item, as
part of VisualBERT's frozen lower part, when the cache is built:

    region     Faster R-CNN (torchvision): RoI features of the top 49 boxes scoring > 0.05
               -> [N, 49, 1024], mask True on real boxes (seed §6.1)
    grid       ResNet (torchvision): the last stage's map before pooling
               -> [N, h*w, 2048] (7x7 = 49 at 224 px), mask all True
    patch-emb  CLIP-ViT (transformers): the patch embedding only, i.e. class token + patch
               tokens with position embeddings -> [N, 1+P, D], mask all True
    patch-vit  CLIP-ViT (transformers): the whole tower's last_hidden_state -> [N, 1+P, D]

    features = create_visual_features("grid", "torchvision:resnet50@/w/resnet50.pth", image_size=224)
    pixels = features.preprocess(pictures)     # CPU, deterministic: [N, 3, S, S]
    rows, mask = features(pixels)              # [N, R, D_v], [N, R] bool; padded rows are zero
    features.identity()                        # what makes cached rows valid

Sources never download anything:
    region, grid         torchvision:ARCH@/path/weights.pth -- a state dict saved with torch.save,
                         loaded (weights_only) into the architecture built without weights
    patch-emb, patch-vit a transformers CLIPVisionModel or CLIPModel directory (its vision tower)

Every module here is frozen: eval mode (it stays there: `train()` is a no-op), no parameter
requires grad, and `forward` never writes into its input, so it runs under torch.inference_mode.
Rows come out in the module's dtype (`dtype=`, float32 by default; region is float32 only).

Pictures are resized (shorter side) and center-cropped to `image_size` by `preprocess`, and
normalised with the representation's own statistics (ImageNet for region and grid, CLIP's or the
directory's preprocessor_config.json for patch-*). For region, torchvision's detection transform
is told the picture is already in shape: its mean/std are 0/1 (the pixels come normalised) and
its min_size/max_size are `image_size`, so it neither renormalises nor rescales the picture
(the default 800 px would cost about 13x the time on a CPU, for pictures of 224 px). All pictures
have one size, so nothing is padded differently per batch; the detector also runs one picture at a
time (see `RegionFeatures.forward`), so an item's rows do not depend on its batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmsr.encoders.base import state_dict_sha256, torch_dtype
from mmsr.encoders.hf_common import image_transform, load_tower, quiet_transformers
from mmsr.encoders.image import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from mmsr.encoders.model_key import model_key
from mmsr.encoders.registry import _hf_model_type  # the project's offline config reader and its error
from mmsr.errors import MMSRError
from mmsr.registry import Registry

REPRESENTATIONS: Registry[Any] = Registry("vision representation")

TORCHVISION = "torchvision"
SCORE_THRESHOLD = 0.05  # seed §6.1
MAX_BOXES = 49  # seed §6.1
MIN_IMAGE_SIZE = 32
# What source each representation takes (error messages).
SOURCE_KINDS = {
    "region": "torchvision:fasterrcnn_resnet50_fpn@/path/weights.pth (a Faster R-CNN state dict)",
    "region-c5": "torchvision:fasterrcnn_resnet50_fpn@/path/weights.pth (a ResNet Faster R-CNN state dict)",
    "grid": "torchvision:resnet50@/path/weights.pth (a torchvision ResNet state dict)",
    "patch-emb": "a local transformers CLIPVisionModel or CLIPModel directory",
    "patch-vit": "a local transformers CLIPVisionModel or CLIPModel directory",
}
# model_type of a transformers config -> (class, attribute holding the vision tower), for load_tower.
CLIP_TOWERS = {"clip_vision_model": ("CLIPVisionModel", None), "clip": ("CLIPModel", "vision_model")}


def _kinds_hint() -> str:
    return "; ".join(f"{name} takes {kind}" for name, kind in SOURCE_KINDS.items())


# -- the shared module -----------------------------------------------------------------------------------------


class VisualFeatures(nn.Module):
    """A frozen vision representation: pictures -> (rows [N, R, D_v], mask [N, R] bool)."""

    name: str = ""  # registry key
    feature_dim: int  # D_v
    max_rows: int  # R at the configured image size

    def __init__(self, *, source: str, image_size: int, transform: ImageTransform):
        super().__init__()
        self.source = str(source)
        self.image_size = image_size
        self.transform = transform

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()
        self._weights_sha256 = state_dict_sha256(self)  # the weights as loaded

    def train(self, mode: bool = True):
        """Frozen: always in eval mode, whatever a parent module asks."""
        return super().train(False)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, pictures: list) -> torch.Tensor:
        """PIL pictures -> float32 pixels [N, 3, S, S] on the CPU (resize, center-crop, normalise)."""
        return self.transform(pictures)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _all_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows, torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)

    def extra_identity(self) -> dict:
        return {}

    def identity(self) -> dict:
        """What makes cached rows valid; goes into the cache fingerprint."""
        return {"representation": self.name, "source": model_key(self.source),
                "weights_sha256": self._weights_sha256, "image_size": self.image_size,
                "image_transform": self.transform.identity(),
                "dtype": str(self._dtype()).removeprefix("torch."),
                "feature_dim": self.feature_dim, "max_rows": self.max_rows, **self.extra_identity()}


# -- sources ------------------------------------------------------------------------------------------------------


def _torchvision_spec(name: str, source: str) -> tuple[str, str] | None:
    """(architecture, weights path) of `torchvision:ARCH@PATH`, or None for another kind of source."""
    prefix, sep, rest = source.partition(":")
    if not sep or prefix != TORCHVISION or Path(source).expanduser().exists():
        return None
    architecture, _, weights = rest.partition("@")
    if not weights:
        raise MMSRError(f"{name}: {source!r} names no weights file, and mmsr never downloads weights",
                        hint=f"give {TORCHVISION}:{architecture or 'ARCH'}@/path/weights.pth, a state dict saved "
                             f"with torch.save(model.state_dict(), path)")
    return architecture, weights


def _check_image_size(name: str, image_size: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < MIN_IMAGE_SIZE:
        raise MMSRError(f"{name}: image_size={image_size!r} is too small or not an integer",
                        hint=f"give an integer >= {MIN_IMAGE_SIZE} (the paper uses 224)")


def _torchvision_source(name: str, source: str, architectures: list[str], what: str) -> tuple[str, Path]:
    spec = _torchvision_spec(name, source)
    if spec is None:
        raise MMSRError(f"{name} cannot use this source: it takes {SOURCE_KINDS[name]}", where=source,
                        hint=_kinds_hint())
    architecture, weights = spec
    if architecture not in architectures:
        raise MMSRError(f"{name} takes a {what}, not torchvision:{architecture}", where=source,
                        hint="choose one of " + ", ".join(architectures))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MMSRError(f"no weights file for torchvision:{architecture}", where=path,
                        hint=f"give an existing file: {TORCHVISION}:{architecture}@/path/weights.pth, "
                             f"saved with torch.save(model.state_dict(), path)")
    return architecture, path


def _read_state_dict(path: Path, architecture: str) -> dict[str, torch.Tensor]:
    hint = (f"give a state dict of torchvision.models {architecture}, saved with "
            f"torch.save(model.state_dict(), path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- torch.load fails on a foreign file in many ways (KeyError, ...)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{type(error).__name__}: {message}" if isinstance(error, (KeyError, IndexError)) else message
        raise MMSRError(f"cannot read a torch state dict: {message}", where=path, hint=hint) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MMSRError("the file does not hold a state dict (a mapping of names to tensors)", where=path, hint=hint)
    return state


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, architecture: str) -> None:
    """Strict load with one readable error: missing, unexpected and mis-shaped keys, a few of each."""
    expected = model.state_dict()
    mismatched = [f"{key} {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    missing, unexpected = [], []
    if not mismatched:
        # BatchNorm fills in a missing num_batches_tracked itself (checkpoints saved from
        # FrozenBatchNorm2d models, as torchvision's detection weights are, have none).
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    problems = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})"
                for kind, keys in (("shape mismatches", mismatched), ("missing keys", missing),
                                   ("unexpected keys", unexpected)) if keys]
    if problems:
        raise MMSRError(f"not a torchvision {architecture} state dict: " + "; ".join(problems), where=path,
                        hint=f"give the weights of {architecture} (torch.save(model.state_dict(), path)), "
                             f"or name the architecture they belong to: {TORCHVISION}:ARCH@{path}")


def _classes(state: dict[str, torch.Tensor], key: str, default: int) -> int:
    """The checkpoint's own class count (a Visual Genome detector has 1601), else torchvision's default."""
    weight = state.get(key)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else default


def _torchvision_models(module, prefixes: tuple[str, ...]) -> list[str]:
    from torchvision.models import list_models

    return sorted(name for name in list_models(module=module) if name.startswith(prefixes))


# -- region: Faster R-CNN boxes --------------------------------------------------------------------------------


def region_architectures() -> list[str]:
    import torchvision.models.detection as detection

    return _torchvision_models(detection, ("fasterrcnn_",))


class RegionFeatures(VisualFeatures):
    """Faster R-CNN RoI features of the top `max_boxes` detections scoring > `score_threshold`.

    Detections are torchvision's own (`roi_heads` postprocessing: per-class boxes, NMS 0.5, sorted
    by score, so a region may appear once per class it scores for), in the coordinates of the
    `image_size` picture. A box's row is `roi_heads.box_head(roi_heads.box_roi_pool(...))` of that
    box, the 1024-d representation the box classifier reads. Rows after the last box are zero and
    masked out; a picture with no box above the threshold gets zero rows and an all-False mask.
    """

    name = "region"

    def __init__(self, detector: nn.Module, *, source: str, image_size: int, transform: ImageTransform,
                 architecture: str, score_threshold: float, max_boxes: int):
        super().__init__(source=source, image_size=image_size, transform=transform)
        self.detector = detector
        self.architecture = architecture
        self.score_threshold = score_threshold
        self.max_rows = max_boxes
        self.feature_dim = detector.roi_heads.box_predictor.cls_score.in_features
        self._freeze()

    @classmethod
    def from_source(cls, source: str, *, image_size: int = 224, dtype: str = "float32",
                    score_threshold: float = SCORE_THRESHOLD, max_boxes: int = MAX_BOXES) -> "RegionFeatures":
        from torchvision.models import get_model

        _check_image_size(cls.name, image_size)
        if not (isinstance(score_threshold, (int, float)) and 0.0 <= score_threshold <= 1.0):
            raise MMSRError(f"region: score_threshold={score_threshold!r} is out of range",
                            hint="give a score in [0, 1]; the paper's is 0.05")
        if not isinstance(max_boxes, int) or isinstance(max_boxes, bool) or max_boxes < 1:
            raise MMSRError(f"region: max_boxes={max_boxes!r} is not a positive integer", hint="the paper's is 49")
        if dtype != "float32":
            torch_dtype(dtype)  # an unknown name gets that error first
            raise MMSRError(f"region runs in float32 only, not {dtype}",
                            hint="give dtype=float32: torchvision's box NMS has no half-precision CPU kernel, "
                                 "and half-precision scores would reorder the boxes; the cache stores float16 anyway")
        architecture, path = _torchvision_source(cls.name, source, region_architectures(),
                                                 "torchvision Faster R-CNN (fasterrcnn_*)")
        state = _read_state_dict(path, architecture)
        detector = get_model(
            architecture, weights=None, weights_backbone=None,
            num_classes=_classes(state, "roi_heads.box_predictor.cls_score.weight", 91),
            # The picture is preprocessed already: keep its size and its normalisation.
            min_size=image_size, max_size=image_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
            box_score_thresh=float(score_threshold), box_detections_per_img=max_boxes)
        _load_weights(detector, state, path, architecture)
        transform = ImageTransform(size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
        return cls(detector.to(torch_dtype(dtype)), source=source, image_size=image_size, transform=transform,
                   architecture=architecture, score_threshold=float(score_threshold), max_boxes=max_boxes)

    def _detect_one(self, picture: torch.Tensor):
        """One picture [3, S, S] -> (its detections, the backbone's feature maps, the image sizes)."""
        detector = self.detector
        images, _ = detector.transform([picture.to(device=self._device(), dtype=self._dtype())])
        features = detector.backbone(images.tensors)
        proposals, _ = detector.rpn(images, features)
        detections, _ = detector.roi_heads(features, proposals, images.image_sizes)
        return detections[0], features, images.image_sizes

    def detect(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per picture: {"boxes" [K,4] (x1,y1,x2,y2 in the image_size picture), "scores" [K], "labels" [K]},
        highest score first, K <= max_rows: the boxes whose rows `forward` returns, in that order."""
        return [self._detect_one(picture)[0] for picture in pixels]

    def forward(self, pixels):
        # One picture at a time. Which boxes an item gets (threshold, NMS, top 49) is a discontinuous
        # function of the scores; batched, the backbone's kernels differ by batch size (about 1e-6
        # relative on CPU), enough to move boxes and rows by 1e-4 and, near a tie, to swap a box.
        # Alone, an item's rows are the same bits in every batch (the cache build and any other
        # batching agree), at little cost: the per-box work is per picture anyway.
        rows = torch.zeros(len(pixels), self.max_rows, self.feature_dim, dtype=self._dtype(), device=self._device())
        mask = torch.zeros(len(pixels), self.max_rows, dtype=torch.bool, device=rows.device)
        roi_heads = self.detector.roi_heads
        for index, picture in enumerate(pixels):
            detection, features, image_sizes = self._detect_one(picture)
            boxes = detection["boxes"]
            if len(boxes):
                rows[index, : len(boxes)] = roi_heads.box_head(roi_heads.box_roi_pool(features, [boxes], image_sizes))
                mask[index, : len(boxes)] = True
        return rows, mask

    def extra_identity(self):
        roi_heads = self.detector.roi_heads
        return {"architecture": self.architecture, "score_threshold": self.score_threshold,
                "max_boxes": self.max_rows, "box_nms_threshold": roi_heads.nms_thresh,
                "rpn_proposals": self.detector.rpn._post_nms_top_n["testing"],
                "box_rows": "roi_heads.box_head(box_roi_pool(features, detected boxes))"}


class RegionC5Features(RegionFeatures):
    """The same boxes as `region`, each described by the detector's ResNet last stage (C5)
    instead of its box head: RoI-aligned to 7x7 on C5 (stride 32) and averaged, 2048 wide for a
    ResNet-50. That is the shape of the Detectron "bottom-up" region features VisualBERT was
    pre-trained on (its released checkpoints take 2048), which torchvision's 1024-wide box head
    is not; the boxes, thresholds and padding are `region`'s.
    """

    name = "region-c5"
    C5_STRIDE = 32

    def __init__(self, detector: nn.Module, **options):
        super().__init__(detector, **options)
        last_stage = getattr(detector.backbone.body, "layer4", None)
        if last_stage is None:
            raise MMSRError(f"region-c5 reads a ResNet's last stage, and {options['architecture']} has none",
                            hint="use a fasterrcnn_resnet50_fpn* detector, or the region representation")
        block = last_stage[-1]
        self.feature_dim = (getattr(block, "bn3", None) or block.bn2).num_features
        self._c5: torch.Tensor | None = None
        last_stage.register_forward_hook(self._keep_c5)

    def _keep_c5(self, _module, _inputs, output) -> None:
        self._c5 = output

    def forward(self, pixels):
        from torchvision.ops import roi_align

        rows = torch.zeros(len(pixels), self.max_rows, self.feature_dim, dtype=self._dtype(), device=self._device())
        mask = torch.zeros(len(pixels), self.max_rows, dtype=torch.bool, device=rows.device)
        for index, picture in enumerate(pixels):  # one at a time, as `region` (see there)
            boxes = self._detect_one(picture)[0]["boxes"]
            if len(boxes):
                pooled = roi_align(self._c5, [boxes], output_size=7, spatial_scale=1 / self.C5_STRIDE,
                                   sampling_ratio=2, aligned=True)
                rows[index, : len(boxes)] = pooled.mean(dim=(2, 3))
                mask[index, : len(boxes)] = True
        self._c5 = None
        return rows, mask

    def extra_identity(self):
        return {**super().extra_identity(),
                "box_rows": "roi_align(C5, detected boxes, 7x7, scale 1/32, sampling 2, aligned).mean(7x7)"}


# -- grid: ResNet last stage ------------------------------------------------------------------------------------


def grid_architectures() -> list[str]:
    import torchvision.models

    return _torchvision_models(torchvision.models, ("resnet", "resnext", "wide_resnet"))


def _resnet_side(image_size: int) -> int:
    """Side of a torchvision ResNet's last map: the stem conv, the max-pool and three strided stages
    each halve it, rounding up."""
    side = image_size
    for _ in range(5):
        side = (side + 1) // 2
    return side


class GridFeatures(VisualFeatures):
    """A ResNet's last-stage map before average pooling, one row per cell in raster order."""

    name = "grid"

    def __init__(self, resnet: nn.Module, *, source: str, image_size: int, transform: ImageTransform,
                 architecture: str):
        super().__init__(source=source, image_size=image_size, transform=transform)
        self.feature_dim = resnet.fc.in_features
        resnet.fc = nn.Identity()  # unused: neither kept nor part of the weights hash
        self.resnet = resnet
        self.architecture = architecture
        self.max_rows = _resnet_side(image_size) ** 2
        self._freeze()

    @classmethod
    def from_source(cls, source: str, *, image_size: int = 224, dtype: str = "float32") -> "GridFeatures":
        from torchvision.models import get_model

        _check_image_size(cls.name, image_size)
        architecture, path = _torchvision_source(cls.name, source, grid_architectures(), "torchvision ResNet")
        state = _read_state_dict(path, architecture)
        resnet = get_model(architecture, weights=None, num_classes=_classes(state, "fc.weight", 1000))
        _load_weights(resnet, state, path, architecture)
        transform = ImageTransform(size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
        return cls(resnet.to(torch_dtype(dtype)), source=source, image_size=image_size, transform=transform,
                   architecture=architecture)

    def forward(self, pixels):
        net = self.resnet
        x = pixels.to(device=self._device(), dtype=self._dtype())
        for module in (net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4):
            x = module(x)
        return self._all_rows(x.flatten(2).transpose(1, 2).contiguous())

    def extra_identity(self):
        return {"architecture": self.architecture, "rows": "layer4 map before avgpool, raster order"}


# -- patch-emb / patch-vit: CLIP-ViT -----------------------------------------------------------------------------


def _clip_tower(name: str, source: str, dtype: str) -> nn.Module:
    if _torchvision_spec(name, source) is not None:
        raise MMSRError(f"{name} cannot use this source: it takes {SOURCE_KINDS[name]}", where=source,
                        hint=_kinds_hint())
    try:
        model_type = _hf_model_type(source)
    except MMSRError as error:
        raise MMSRError(error.message, where=source,
                        hint=f"{name} takes {SOURCE_KINDS[name]} (or a Hub name already in the local cache)") from None
    if model_type not in CLIP_TOWERS:
        raise MMSRError(f"{name} takes a CLIP vision tower, but this directory holds a {model_type!r} model",
                        where=source, hint=_kinds_hint())
    quiet_transformers()
    return load_tower(source, torch_dtype(dtype), CLIP_TOWERS)


class CLIPPatchFeatures(VisualFeatures):
    """CLIP-ViT tokens: [class] + one per patch in raster order, position embeddings interpolated
    to `image_size` (as transformers' `interpolate_pos_encoding=True`)."""

    def __init__(self, module: nn.Module, *, source: str, image_size: int, transform: ImageTransform,
                 hidden_size: int, patch_size: int, model_type: str):
        super().__init__(source=source, image_size=image_size, transform=transform)
        self.model = module
        self.feature_dim = hidden_size
        self.patch_size = patch_size
        self.model_type = model_type
        self.max_rows = 1 + (image_size // patch_size) ** 2
        self._freeze()

    @staticmethod
    def keep(tower: nn.Module) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_source(cls, source: str, *, image_size: int = 224, dtype: str = "float32"):
        _check_image_size(cls.name, image_size)
        tower = _clip_tower(cls.name, source, dtype)
        config = tower.config
        if image_size < config.patch_size:
            raise MMSRError(f"{cls.name}: image_size={image_size} is smaller than one {config.patch_size} px patch",
                            where=source, hint=f"give image_size >= {config.patch_size}")
        transform = image_transform(source, image_size, CLIP_MEAN, CLIP_STD)
        return cls(cls.keep(tower), source=source, image_size=image_size, transform=transform,
                   hidden_size=config.hidden_size, patch_size=config.patch_size, model_type=config.model_type)

    def extra_identity(self):
        return {"model_type": self.model_type, "patch_size": self.patch_size}


class PatchEmbFeatures(CLIPPatchFeatures):
    """CLIPVisionModel's `embeddings` output only (before pre_layrnorm); the rest of the tower is dropped."""

    name = "patch-emb"

    @staticmethod
    def keep(tower):
        return tower.embeddings

    def forward(self, pixels):
        pixels = pixels.to(device=self._device(), dtype=self._dtype())
        return self._all_rows(self.model(pixels, interpolate_pos_encoding=True))


class PatchViTFeatures(CLIPPatchFeatures):
    """CLIPVisionModel's `last_hidden_state` (as transformers returns it: no post_layernorm)."""

    name = "patch-vit"

    @staticmethod
    def keep(tower):
        return tower

    def forward(self, pixels):
        pixels = pixels.to(device=self._device(), dtype=self._dtype())
        return self._all_rows(self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state)


# -- registry ----------------------------------------------------------------------------------------------------

REPRESENTATIONS.register("region", params=("score_threshold", "max_boxes"),
                         help="Faster R-CNN RoI features of the top 49 boxes scoring > 0.05: 49 x 1024, "
                              "masked where fewer boxes (seed §6.1)")(RegionFeatures.from_source)
REPRESENTATIONS.register("region-c5", params=("score_threshold", "max_boxes"),
                         help="the region boxes described by the ResNet's last stage (RoI-aligned on C5, averaged): "
                              "49 x 2048, the width of the released VisualBERT's region features"
                         )(RegionC5Features.from_source)
REPRESENTATIONS.register("grid", help="ResNet last-stage grid before pooling: 7x7 = 49 rows x 2048 at 224 px"
                         )(GridFeatures.from_source)
REPRESENTATIONS.register("patch-emb", help="CLIP-ViT patch embedding only: class + patch tokens with position "
                                           "embeddings, 1+P rows")(PatchEmbFeatures.from_source)
REPRESENTATIONS.register("patch-vit", help="the whole CLIP-ViT: last hidden state of class + patch tokens, 1+P rows"
                         )(PatchViTFeatures.from_source)


def create_visual_features(name: str, source: str | os.PathLike, *, image_size: int = 224, dtype: str = "float32",
                           **options) -> VisualFeatures:
    """Build the frozen representation `name` from `source` (see the module docstring).

    `options` are the representation's own knobs (`REPRESENTATIONS.params(name)`): region takes
    `score_threshold` (0.05) and `max_boxes` (49); the others take none.
    """
    entry = REPRESENTATIONS.entry(name)  # an unknown name lists the known ones
    ignored = sorted(set(options) - set(entry.params))
    if ignored:
        raise MMSRError(f"{name} does not take {', '.join(ignored)}",
                        hint=f"{name} takes {', '.join(entry.params) or 'no options'}")
    torch_dtype(dtype)  # refuse an unknown dtype before any weights are read
    return entry.builder(str(source), image_size=image_size, dtype=dtype, **options)


def describe_representations() -> dict[str, str]:
    """{name: one-line description}, for `mmsr models list`."""
    return {name: REPRESENTATIONS.entry(name).help for name in REPRESENTATIONS.names()}
