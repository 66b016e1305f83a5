"""`encoders.image_mask_ratio` (seed §8.4 Table XIV): ViT-style vision encoders drop a fixed,
seeded share of their patch tokens before the first block; CNN and Swin encoders refuse."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from test_encoders import IMAGE_SIZE, TINY, _images
from mmsr.encoders import create_encoder, list_families
from mmsr.encoders.base import kept_patch_indices, patches_kept
from mmsr.encoders.config import EncoderConfig
from mmsr.errors import MMSRError

# Every family whose patch tokens can be dropped; the rest must refuse a nonzero ratio.
VIT_FAMILIES = ["hf:vit/image", "hf:vit_mae/image", "hf:dinov2/image", "hf:clip_vision_model/image",
                "hf:clip/image", "open_clip/image"]
REFUSING = {"hf:swin/image": "shifted windows", "timm/image": "CNN"}
# GroupViT drops patches too, but has no class token and regroups its tokens; FLAVA's image tower
# is a ViT built from a FLAVA checkpoint: both in tests/test_vlp.py.
TESTED_IN_TEST_VLP = {"hf:groupvit/image", "hf:groupvit_vision_model/image", "hf:flava/image",
                      "hf:flava_image_model/image"}
PATCHES = (IMAGE_SIZE // 8) ** 2  # the tiny ViTs: patch 8 at 40 px -> 5x5 grid


@pytest.fixture(scope="module")
def vision_specs(tmp_path_factory):
    torch.manual_seed(0)
    return {family: build(tmp_path_factory.mktemp(family.replace(":", "_").replace("/", "_")))
            for family, build in TINY.items() if family.endswith("/image")}


def _encoder(specs, family, top_blocks=1, ratio=0.0, seed=0):
    spec, options = specs[family]
    torch.manual_seed(0)  # open_clip / timm tiny models are random-initialised at creation
    return create_encoder(spec, "image", top_blocks, image_size=IMAGE_SIZE, image_mask_ratio=ratio,
                          image_mask_seed=seed, **options)


def test_every_image_family_either_drops_patches_or_refuses():
    assert set(list_families("image")) == set(VIT_FAMILIES) | set(REFUSING) | TESTED_IN_TEST_VLP, \
        "classify each new vision family here"


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_upper_of_lower_equals_the_full_model_on_the_kept_tokens(vision_specs, family):
    """The reference is the unmodified pretrained forward with the same patches dropped right
    after its embedding (a hook), not mmsr's own block loop."""
    batch = None
    for top_blocks in (0, 1, 3):
        encoder = _encoder(vision_specs, family, top_blocks, ratio=0.5, seed=3)
        batch = batch or encoder.preprocess(_images())
        hidden, mask = encoder.lower(batch)
        assert hidden.shape[1] == 1 + patches_kept(PATCHES, 0.5) == 1 + 13 and mask.all()
        tokens, _ = encoder.upper(hidden, mask)
        with torch.no_grad():
            full = encoder.full(batch)
        assert full.shape == tokens.shape
        torch.testing.assert_close(tokens, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", VIT_FAMILIES)
def test_class_token_and_the_kept_patches_survive_in_order(vision_specs, family):
    """At split layer 0, lower is the embedding: the masked tokens are the unmasked ones at
    [class] + kept positions (so patches are dropped after the position embedding)."""
    top = _encoder(vision_specs, family).num_layers
    batch = _encoder(vision_specs, family).preprocess(_images())
    whole, _ = _encoder(vision_specs, family, top).lower(batch)
    assert whole.shape[1] == 1 + PATCHES
    for ratio, kept in ((0.5, 13), (0.75, 6), (0.99, 1)):
        masked, _ = _encoder(vision_specs, family, top, ratio=ratio, seed=7).lower(batch)
        indices = kept_patch_indices(PATCHES, ratio, 7)
        assert len(indices) == kept == patches_kept(PATCHES, ratio) and list(indices) == sorted(indices)
        torch.testing.assert_close(masked, whole[:, [0, *(1 + i for i in indices)]])


def test_the_pattern_is_seeded_and_shared_by_every_picture_and_batch(vision_specs):
    family = "hf:dinov2/image"
    pictures = _images()
    a = _encoder(vision_specs, family, ratio=0.75, seed=1)
    b = _encoder(vision_specs, family, ratio=0.75, seed=1)
    hidden, _ = a.lower(a.preprocess(pictures))
    torch.testing.assert_close(hidden, b.lower(b.preprocess(pictures))[0], atol=0, rtol=0)
    # The cache build and the end-to-end feed batch items differently: the same picture must
    # give the same tokens alone, or at another place in another batch.
    alone, _ = a.lower(a.preprocess(pictures[2:3]))
    moved, _ = a.lower(a.preprocess([pictures[1], pictures[2]]))
    torch.testing.assert_close(alone[0], hidden[2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(moved[1], hidden[2], atol=1e-6, rtol=1e-6)
    other, _ = _encoder(vision_specs, family, ratio=0.75, seed=2).lower(a.preprocess(pictures))
    assert kept_patch_indices(PATCHES, 0.75, 1) != kept_patch_indices(PATCHES, 0.75, 2)
    assert not torch.allclose(other, hidden)


def test_patterns_are_nested_across_ratios_and_stable():
    grid = 256  # DINOv2-S at 224 px
    for seed in range(3):
        kept = {r: set(kept_patch_indices(grid, r, seed)) for r in (0.0, 0.25, 0.5, 0.75, 0.9)}
        assert len(kept[0.0]) == grid and len(kept[0.5]) == 128 and len(kept[0.75]) == 64
        assert kept[0.9] <= kept[0.75] <= kept[0.5] <= kept[0.25] <= kept[0.0]
    # A hash order, not a library RNG stream: pinned so that a dependency upgrade cannot silently
    # change which patches a fingerprinted cache holds.
    assert kept_patch_indices(16, 0.75, 0) == (3, 7, 9, 11)


def test_vit_mae_own_masking_with_a_fixed_noise_gives_the_same_tokens(vision_specs):
    """image_mask_ratio composes with ViT-MAE: its own masking stays off (identity says 0.0), and
    the result equals MAE's native random_masking when the noise ranks the kept patches first."""
    encoder = _encoder(vision_specs, "hf:vit_mae/image", ratio=0.75, seed=5)
    batch = encoder.preprocess(_images())
    tokens, _ = encoder.upper(*encoder.lower(batch))
    assert encoder.identity()["mae_mask_ratio"] == 0.0 and encoder.identity()["image_mask_ratio"] == 0.75
    kept = kept_patch_indices(PATCHES, 0.75, 5)
    assert int(PATCHES * (1 - 0.75)) == len(kept)  # MAE keeps int(); mmsr rounds: equal here
    noise = torch.tensor([float(i) if i in kept else PATCHES + float(i) for i in range(PATCHES)]).expand(len(tokens), -1)
    model = encoder.model
    model.config.mask_ratio = 0.75
    try:
        with torch.no_grad():
            native = model(batch["pixel_values"], noise=noise, interpolate_pos_encoding=True).last_hidden_state
    finally:
        model.config.mask_ratio = 0.0
    torch.testing.assert_close(tokens, native, atol=1e-5, rtol=1e-5)


def test_end_to_end_forward_trains_the_tops_on_the_kept_tokens(vision_specs):
    encoder = _encoder(vision_specs, "open_clip/image", ratio=0.5)
    encoder.train()
    tokens, mask = encoder(encoder.preprocess(_images()))
    assert tokens.shape[1] == mask.shape[1] == 1 + 13
    tokens.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for m in encoder.upper_modules() for p in m.parameters())


# ----------------------------------------------------------------------------- fingerprint and errors


def test_identity_carries_ratio_and_seed_only_when_masking(vision_specs):
    plain = _encoder(vision_specs, "hf:vit/image").identity()
    assert not any(key.startswith("image_mask") for key in plain)  # unmasked caches keep their fingerprint
    half = _encoder(vision_specs, "hf:vit/image", ratio=0.5).identity()
    assert json.loads(json.dumps(half)) == half
    assert (half["image_mask_ratio"], half["image_mask_seed"]) == (0.5, 0)
    assert _encoder(vision_specs, "hf:vit/image", ratio=0.75).identity() != half
    assert _encoder(vision_specs, "hf:vit/image", ratio=0.5, seed=1).identity() != half
    assert _encoder(vision_specs, "hf:vit/image", ratio=0.5).identity() == half


def test_cache_directory_hash_follows_ratio_and_seed():
    from mmsr.caches import config_hash
    from mmsr_store.fingerprint import digest

    base = EncoderConfig()
    # The directory of caches built before the setting (and before the joint-model settings).
    unmasked = {k: v for k, v in asdict(base).items() if not k.startswith(("image_mask", "joint_"))}
    assert config_hash(base) == digest(unmasked, 12)
    assert config_hash(EncoderConfig(image_mask_seed=4)) == config_hash(base)  # no mask: the seed is moot
    hashes = {config_hash(EncoderConfig(image_mask_ratio=r, image_mask_seed=s)) for r, s in
              ((0.5, 0), (0.75, 0), (0.5, 1))}
    assert len(hashes) == 3 and config_hash(base) not in hashes


@pytest.mark.parametrize("family", sorted(REFUSING))
def test_cnn_and_swin_refuse_a_nonzero_ratio_in_one_line(vision_specs, family):
    with pytest.raises(MMSRError) as caught:
        _encoder(vision_specs, family, ratio=0.5)
    message = str(caught.value)
    assert family.split("/")[0] in message and "encoders.image_mask_ratio=0.5" in message
    assert REFUSING[family] in message and "\n" not in message.split("hint")[0].strip()
    assert _encoder(vision_specs, family, ratio=0.0).image_mask_ratio == 0.0


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_a_ratio_outside_0_1_is_a_config_error(vision_specs, ratio):
    from mmsr import config as config_lib
    from mmsr.cache_stage import CacheBuildConfig

    with pytest.raises(ValueError, match=r"image_mask_ratio must be in \[0, 1\)"):
        EncoderConfig(image_mask_ratio=ratio)
    with pytest.raises(MMSRError, match=r"encoders: image_mask_ratio must be in \[0, 1\)"):
        config_lib.load(CacheBuildConfig, None, [f"encoders.image_mask_ratio={ratio}"])
    with pytest.raises(MMSRError, match="out of range"):
        _encoder(vision_specs, "hf:vit/image", ratio=ratio)
    with pytest.raises(ValueError, match="image_mask_seed"):
        EncoderConfig(image_mask_seed=-1)


# ----------------------------------------------------------------------------- a tiny cache, end to end


def _vision_only(tiny_models, ratio, seed=0) -> EncoderConfig:
    return EncoderConfig(text_model="", vision_model=tiny_models["vision"], vision_top_blocks=1, image_size=32,
                         image_mask_ratio=ratio, image_mask_seed=seed)


def test_a_masked_cache_builds_is_refused_for_another_ratio_and_matches_end_to_end(small_demo, tiny_models):
    from mmsr.cache_stage import build_cache
    from mmsr.caches import cache_path, open_checked_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.encoders import create_encoders
    from mmsr.train.feeds import RawFeed
    from mmsr_store import StoreError

    dataset = load_dataset(small_demo, check_images=False)
    config = _vision_only(tiny_models, 0.5)
    report = build_cache(dataset, config, batch_size=32, num_workers=0, device="cpu", chunk_items=64)
    assert report.complete and report.path == cache_path(dataset, config)
    assert report.modalities["image"].tokens == 1 + 8  # DINOv2, patch 8 at 32 px: 16 patches, half kept
    encoders = create_encoders(config)
    cache = open_checked_cache(report.path, encoders, dataset, config)
    assert cache.fingerprint("image")["image_mask_ratio"] == 0.5
    hidden, mask = cache.load("image")
    assert hidden.shape == (dataset.num_items, 9, 32) and mask.all()

    # The end-to-end feed batches items differently; it must give the cached states.
    ids = torch.tensor([17, 3, 250, 64, 65])
    raw_hidden, raw_mask = RawFeed(dataset, encoders, [], torch.device("cpu"), image_size=32)(ids)["image"]
    torch.testing.assert_close(raw_hidden.half(), hidden[ids], atol=2e-3, rtol=0)
    assert torch.equal(raw_mask, mask[ids])

    for other in (_vision_only(tiny_models, 0.75), _vision_only(tiny_models, 0.5, seed=1),
                  _vision_only(tiny_models, 0.0)):
        assert cache_path(dataset, other) != report.path
        with pytest.raises(StoreError, match="image.image_mask"):
            open_checked_cache(report.path, create_encoders(other), dataset, other)
