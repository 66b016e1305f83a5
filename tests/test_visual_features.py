"""The four VisualBERT vision representations (seed §6): region, grid, patch-emb, patch-vit.

Tiny random-initialised sources saved to disk and loaded through `create_visual_features`,
each checked against the real torchvision / transformers module it wraps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mmsr.encoders.image import ImageTransform
from mmsr.encoders.visual_features import (REPRESENTATIONS, SCORE_THRESHOLD, VisualFeatures, create_visual_features,
                                           describe_representations)
from mmsr.errors import MMSRError

SIZE = 64  # image_size: small, and a multiple of 32 (no detector padding) for the region reference


@pytest.fixture(scope="module")
def sources(visual_sources):
    return visual_sources


def build_sources(root) -> dict:
    """Tiny random-initialised weights for every representation (test_joint feeds them to VisualBERT)."""
    root.mkdir(parents=True, exist_ok=True)
    import torchvision
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(detector.state_dict(), root / "frcnn.pth")
    del detector
    for seed, name in ((0, "r18.pth"), (1, "r18-other.pth")):
        torch.manual_seed(seed)
        resnet = torchvision.models.resnet18(weights=None)
        # random BatchNorm statistics, so the check against the reference is not on a trivial map
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        torch.save(resnet.state_dict(), root / name)
    shutil.copy(root / "r18.pth", root / "r18-copy.pth")
    # As torchvision's released detection weights (saved from FrozenBatchNorm2d): no num_batches_tracked.
    state = torch.load(root / "r18.pth", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, root / "r18-nobn.pth")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / "clip-vision")
    CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=64, vocab_size=99),
                         vision_config=vision)).save_pretrained(root / "clip-full")
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(root / "vit")
    (root / "not-weights.pth").write_text("hello")
    return {"root": root, "region": f"torchvision:fasterrcnn_resnet50_fpn@{root / 'frcnn.pth'}",
            "region-c5": f"torchvision:fasterrcnn_resnet50_fpn@{root / 'frcnn.pth'}",
            "grid": f"torchvision:resnet18@{root / 'r18.pth'}", "patch-emb": str(root / "clip-vision"),
            "patch-vit": str(root / "clip-vision")}


@pytest.fixture(scope="module")
def pictures():
    from mmsr.data.demo import render_image

    rng = np.random.default_rng(0)
    out = [render_image(i % 8, i % 4, i % 3, rng, size=80) for i in range(3)]
    return out[:2] + [out[2].resize((96, 70))]  # one non-square picture: center-cropped


@pytest.fixture(scope="module")
def built(sources):
    return {name: create_visual_features(name, sources[name], image_size=SIZE) for name in REPRESENTATIONS.names()}


def _run(features, pixels):
    with torch.inference_mode():
        return features(pixels)


def test_registry_lists_the_four_representations_and_region_at_detectron_width():
    described = describe_representations()
    assert sorted(described) == ["grid", "patch-emb", "patch-vit", "region", "region-c5"]
    assert all(isinstance(text, str) and text and "\n" not in text for text in described.values())


@pytest.mark.parametrize("name, rows, dim", [("region", 49, 1024), ("region-c5", 49, 2048), ("grid", 4, 512),
                                             ("patch-emb", 65, 32), ("patch-vit", 65, 32)])
def test_shapes_masks_and_frozen(built, pictures, name, rows, dim):
    features = built[name]
    assert isinstance(features, VisualFeatures) and features.name == name
    assert (features.max_rows, features.feature_dim) == (rows, dim)
    pixels = features.preprocess(pictures)
    assert pixels.shape == (3, 3, SIZE, SIZE) and pixels.dtype == torch.float32
    assert torch.equal(pixels, features.preprocess(pictures))  # deterministic
    before = pixels.clone()
    out, mask = _run(features, pixels)
    assert torch.equal(pixels, before)  # no in-place on the input
    assert out.shape == (3, rows, dim) and out.dtype == torch.float32
    assert mask.shape == (3, rows) and mask.dtype == torch.bool
    assert torch.isfinite(out).all()
    if name == "region":
        assert mask.any()  # the test detector finds boxes at the paper's threshold 0.05
        # real boxes first, then zero rows
        assert all(torch.equal(m, torch.arange(rows) < m.sum()) for m in mask)
        assert not out[~mask].any() and out[mask].abs().sum(-1).gt(0).all()
    else:
        assert mask.all()
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training and not any(m.training for m in features.modules())


@pytest.mark.parametrize("name", ["region", "grid", "patch-emb", "patch-vit"])
def test_rows_do_not_depend_on_the_batch(built, pictures, name):
    features = built[name]
    pixels = features.preprocess(pictures)
    batch, batch_mask = _run(features, pixels)
    for index in (0, 2):
        alone, alone_mask = _run(features, pixels[index: index + 1])
        assert torch.equal(alone_mask[0], batch_mask[index])
        torch.testing.assert_close(alone[0], batch[index], atol=1e-5, rtol=1e-5)
        if name == "region":  # one picture at a time: the same bits, so the same boxes, in any batch
            assert torch.equal(alone[0], batch[index])


def test_region_rows_are_box_head_of_torchvision_detections(built, pictures, sources):
    """Against a separately built torchvision Faster R-CNN with its own (ImageNet) normalisation,
    fed the raw [0, 1] picture: same boxes, and rows = box_head(box_roi_pool(...)) of those boxes."""
    import torchvision

    features = built["region"]
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=SIZE, max_size=SIZE, box_detections_per_img=49).eval()
    reference.load_state_dict(torch.load(sources["root"] / "frcnn.pth", weights_only=True))
    raw = ImageTransform(size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")(pictures)
    pixels = features.preprocess(pictures)
    with torch.inference_mode():
        ours = features.detect(pixels)
        rows, mask = features(pixels)
        expected = reference(list(raw))
        images, _ = reference.transform(list(raw))
        maps = reference.backbone(images.tensors)
    assert sum(len(d["boxes"]) for d in ours) > 0
    for index, (mine, theirs) in enumerate(zip(ours, expected)):
        assert len(mine["boxes"]) == len(theirs["boxes"]) == int(mask[index].sum()) <= 49
        assert (theirs["scores"] > SCORE_THRESHOLD).all()
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-4, rtol=1e-4)
        assert torch.equal(mine["labels"], theirs["labels"])
        if len(theirs["boxes"]):
            with torch.inference_mode():
                box_rows = reference.roi_heads.box_head(
                    _pool_one(reference, maps, mine["boxes"], index, images.image_sizes))
            torch.testing.assert_close(rows[index, : len(box_rows)], box_rows, atol=1e-4, rtol=1e-4)


def test_region_c5_describes_the_same_boxes_by_the_resnets_last_stage(built, pictures):
    """Same boxes as `region`; each row is the 7x7 RoIAlign of the box on C5 (stride 32), averaged."""
    from torchvision.ops import roi_align

    region, c5 = built["region"], built["region-c5"]
    pixels = c5.preprocess(pictures)
    with torch.inference_mode():
        boxes = [d["boxes"] for d in region.detect(pixels)]
        rows, mask = c5(pixels)
    assert sum(len(b) for b in boxes) > 0
    for index, picture_boxes in enumerate(boxes):
        assert int(mask[index].sum()) == len(picture_boxes)
        if not len(picture_boxes):
            continue
        with torch.inference_mode():
            images, _ = c5.detector.transform([pixels[index]])
            body = c5.detector.backbone.body(images.tensors)
            last = body[max(body)]  # layer4: the ResNet's last stage
            expected = roi_align(last, [picture_boxes], output_size=7, spatial_scale=1 / 32, sampling_ratio=2,
                                 aligned=True).mean(dim=(2, 3))
        assert last.shape[1] == 2048
        torch.testing.assert_close(rows[index, : len(picture_boxes)], expected, atol=1e-4, rtol=1e-4)
        assert not rows[index, len(picture_boxes):].any()


def _pool_one(reference, maps, boxes, index, image_sizes):
    """box_roi_pool of one picture's boxes, on that picture's feature maps only."""
    one = {key: value[index: index + 1] for key, value in maps.items()}
    return reference.roi_heads.box_roi_pool(one, [boxes], image_sizes[index: index + 1])


def test_region_without_boxes_gives_zero_rows_and_an_empty_mask(sources, pictures):
    features = create_visual_features("region", sources["region"], image_size=SIZE, score_threshold=1.0, max_boxes=7)
    assert features.max_rows == 7 and features.identity()["score_threshold"] == 1.0
    rows, mask = _run(features, features.preprocess(pictures))
    assert rows.shape == (3, 7, 1024) and not mask.any() and not rows.any()


def test_grid_is_the_resnet_last_stage_map(built, pictures, sources):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    reference.load_state_dict(torch.load(sources["root"] / "r18.pth", weights_only=True))
    pixels = built["grid"].preprocess(pictures)
    rows, _ = _run(built["grid"], pixels)
    with torch.inference_mode():
        stage4 = torch.nn.Sequential(*list(reference.children())[:-2])(pixels)  # up to layer4, before avgpool
    assert stage4.shape == (3, 512, 2, 2)
    torch.testing.assert_close(rows, stage4.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    # row count for a size that is no multiple of 32 (each halving rounds up)
    odd = create_visual_features("grid", sources["grid"], image_size=50)
    out, mask = _run(odd, odd.preprocess(pictures[:1]))
    assert out.shape[1] == mask.shape[1] == odd.max_rows == 4


@pytest.mark.parametrize("directory", ["clip-vision", "clip-full"])
def test_patch_representations_are_clips_own_outputs(sources, pictures, directory):
    from transformers import CLIPModel, CLIPVisionModel

    path = sources["root"] / directory
    if directory == "clip-full":
        tower = CLIPModel.from_pretrained(path).vision_model.eval()
    else:
        tower = CLIPVisionModel.from_pretrained(path).eval()
    emb = create_visual_features("patch-emb", path, image_size=SIZE)
    vit = create_visual_features("patch-vit", path, image_size=SIZE)
    pixels = vit.preprocess(pictures)
    assert torch.equal(pixels, emb.preprocess(pictures))
    with torch.inference_mode():
        full = tower(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        embedded = tower.embeddings(pixels, interpolate_pos_encoding=True)
    assert full.shape == (3, 1 + (SIZE // 8) ** 2, 32)
    torch.testing.assert_close(_run(vit, pixels)[0], full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_run(emb, pixels)[0], embedded, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(full, embedded)  # the two representations differ
    # patch-emb keeps the embeddings only: the encoder blocks are neither held nor hashed
    assert sum(p.numel() for p in emb.parameters()) == sum(p.numel() for p in tower.embeddings.parameters())


def test_identity_follows_the_weights_not_the_path(sources):
    root = sources["root"]
    one = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18.pth'}", image_size=SIZE)
    copy = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18-copy.pth'}", image_size=SIZE)
    other = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18-other.pth'}", image_size=SIZE)
    bigger = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18.pth'}", image_size=96)
    assert one.identity() == copy.identity()
    assert one.identity()["weights_sha256"] != other.identity()["weights_sha256"]
    assert one.identity()["source"] != other.identity()["source"]
    assert one.identity()["source"].startswith("torchvision:resnet18@local:")
    assert one.identity()["image_size"] != bigger.identity()["image_size"]
    identity = one.identity()
    assert identity["representation"] == "grid" and identity["feature_dim"] == 512 and identity["max_rows"] == 4


def test_identity_of_region_and_patch(built, sources):
    region = built["region"].identity()
    assert (region["representation"], region["score_threshold"], region["max_boxes"]) == ("region", 0.05, 49)
    assert region["source"].startswith("torchvision:fasterrcnn_resnet50_fpn@local:")
    patch = built["patch-vit"].identity()
    assert patch["source"].startswith("local:") and patch["image_transform"]["size"] == SIZE
    assert built["patch-emb"].identity()["weights_sha256"] != patch["weights_sha256"]


def test_checkpoint_without_num_batches_tracked_loads(sources, pictures):
    root = sources["root"]
    plain = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18.pth'}", image_size=SIZE)
    bare = create_visual_features("grid", f"torchvision:resnet18@{root / 'r18-nobn.pth'}", image_size=SIZE)
    pixels = plain.preprocess(pictures)
    assert torch.equal(_run(plain, pixels)[0], _run(bare, pixels)[0])


def test_grid_in_bfloat16(sources, pictures):
    features = create_visual_features("grid", sources["grid"], image_size=SIZE, dtype="bfloat16")
    rows, mask = _run(features, features.preprocess(pictures))
    assert rows.dtype == torch.bfloat16 and rows.shape == (3, 4, 512) and mask.all()
    assert features.identity()["dtype"] == "bfloat16"


def _bad(root):
    r18 = root / "r18.pth"
    return [
        ("regions", f"torchvision:resnet18@{r18}", {}, ["regions", "grid, patch-emb, patch-vit, region"]),
        ("grid", f"torchvision:resnet18@{root / 'nope.pth'}", {}, ["nope.pth", "no weights file"]),
        ("region", f"torchvision:fasterrcnn_resnet50_fpn@{root / 'nope.pth'}", {}, ["nope.pth"]),
        ("grid", f"torchvision:resnet50@{r18}", {}, ["r18.pth", "shape mismatches", "resnet50"]),
        ("region", f"torchvision:fasterrcnn_resnet50_fpn@{r18}", {}, ["r18.pth", "missing keys"]),
        ("grid", f"torchvision:vgg16@{r18}", {}, ["vgg16", "resnet50"]),
        ("region", f"torchvision:resnet18@{r18}", {}, ["resnet18", "fasterrcnn_resnet50_fpn"]),
        ("grid", f"torchvision:resnet18@{root / 'not-weights.pth'}", {}, ["not-weights.pth", "state dict"]),
        ("grid", "torchvision:resnet18", {}, ["names no weights", "torchvision:resnet18@"]),
        ("grid", str(root / "clip-vision"), {}, ["clip-vision", "grid takes torchvision:resnet50@"]),
        ("region", str(root / "clip-vision"), {}, ["clip-vision", "region takes torchvision:fasterrcnn"]),
        ("patch-vit", f"torchvision:resnet18@{r18}", {}, ["r18.pth", "patch-vit takes a local transformers CLIP"]),
        ("patch-emb", str(root / "vit"), {}, ["vit", "'vit' model", "CLIP"]),
        ("patch-vit", str(root / "no-such-dir"), {}, ["no-such-dir", "patch-vit takes a local transformers CLIP"]),
        ("grid", f"torchvision:resnet18@{r18}", {"score_threshold": 0.1}, ["grid does not take score_threshold"]),
        ("region", f"torchvision:fasterrcnn_resnet50_fpn@{root / 'frcnn.pth'}", {"score_threshold": 1.5},
         ["score_threshold=1.5"]),
        ("region", f"torchvision:fasterrcnn_resnet50_fpn@{root / 'frcnn.pth'}", {"dtype": "bfloat16"},
         ["float32 only"]),
        ("grid", f"torchvision:resnet18@{r18}", {"image_size": 8}, ["image_size=8"]),
    ]


@pytest.mark.parametrize("case", range(18))
def test_bad_inputs_raise_one_clear_error(sources, case):
    cases = _bad(sources["root"])
    assert len(cases) == 18
    name, source, options, expected = cases[case]
    with pytest.raises(MMSRError) as error:
        create_visual_features(name, source, **options)
    for text in expected:
        assert text in str(error.value), (text, str(error.value))
