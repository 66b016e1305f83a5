"""Paradigm (b) of seed §6 (Tables VI, VII): one-stream, deep-fusion VLPs (ViLT, VisualBERT),
cached as the joint modality.

Tiny random-initialised models built from the transformers architectures, with MiniLM's real
BERT tokenizer (ViLT's and VisualBERT's own): honest for plumbing, loaded through the same
registry path as the released checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test_encoders as contract
from cache_helpers import repo_pythonpath
from mmsr import config as config_lib
from mmsr.encoders import create_encoder
from mmsr.encoders.config import EncoderConfig
from mmsr.errors import MMSRError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vlp"
HELPER = Path(__file__).with_name("cache_helpers.py")


def _vilt(path: Path) -> str:
    from transformers import ViltConfig, ViltModel

    tokenizer = contract._tokenizer()
    config = ViltConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=24, image_size=32, patch_size=8)
    return contract._save(ViltModel(config), path, tokenizer)


def _visualbert(path: Path, width: int) -> str:
    from transformers import VisualBertConfig, VisualBertModel

    tokenizer = contract._tokenizer()
    config = VisualBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                              visual_embedding_dim=width)
    return contract._save(VisualBertModel(config), path, tokenizer)


# representation -> the width of its tiny source's rows (test_visual_features.build_sources)
WIDTHS = {"region": 1024, "grid": 512, "patch-emb": 32, "patch-vit": 32}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, visual_sources):
    root = tmp_path_factory.mktemp("joint")
    torch.manual_seed(0)
    dirs = {"vilt": _vilt(root / "vilt"), "sources": visual_sources}
    for width in sorted(set(WIDTHS.values())):
        dirs[f"visualbert-{width}"] = _visualbert(root / f"visualbert-{width}", width)
    return dirs


def _visualbert_spec(tiny_dirs, vision: str) -> tuple[str, dict]:
    return tiny_dirs[f"visualbert-{WIDTHS[vision]}"], {"vision": vision, "vision_model": tiny_dirs["sources"][vision]}


# family -> how to build its tiny encoder (directory, create_encoder options)
JOINT_TINY = {"hf:vilt/joint": lambda dirs: (dirs["vilt"], {}),
              "hf:visual_bert/joint": lambda dirs: _visualbert_spec(dirs, "grid")}


@pytest.fixture(scope="module")
def tiny_specs(tiny_dirs):
    """In the shape of test_encoders' fixture, so its contract tests run on these families."""
    return {family: build(tiny_dirs) for family, build in JOINT_TINY.items()}


# -- the split-encoder contract, joint modality included -----------------------------------------
test_upper_of_lower_equals_full, test_freezing_is_by_module_and_lower_runs_in_eval, \
    test_identity_is_json_and_complete = contract.contract_tests(JOINT_TINY)


@pytest.mark.parametrize("family", sorted(JOINT_TINY))
def test_an_items_states_do_not_depend_on_its_batch(tiny_specs, family):
    """ViLT draws a random patch order on every forward; the cache must not see it."""
    encoder = contract._encoder(tiny_specs, family, 2)
    raw = contract.raw_inputs("joint")
    hidden, mask = encoder.lower(encoder.preprocess(raw))
    for row in (0, 3):
        alone, alone_mask = encoder.lower(encoder.preprocess(raw[row:row + 1]))
        torch.testing.assert_close(alone[0], hidden[row], atol=1e-5, rtol=1e-4)  # batched conv kernels differ by ~1e-6
        assert torch.equal(alone_mask[0], mask[row])
    assert hidden.shape[1] > contract.TEXT_LEN and mask.shape == hidden.shape[:2]


def test_vilt_puts_text_first_then_the_class_token_and_every_patch(tiny_dirs):
    encoder = create_encoder(tiny_dirs["vilt"], "joint", 2, max_text_len=contract.TEXT_LEN, image_size=32)
    hidden, mask = encoder.lower(encoder.preprocess(contract.raw_inputs("joint")))
    assert hidden.shape[1] == contract.TEXT_LEN + 1 + (32 // 8) ** 2
    assert mask[:, contract.TEXT_LEN:].all()


@pytest.mark.parametrize("vision", sorted(WIDTHS))
def test_visualbert_splits_honestly_over_each_vision_representation(tiny_dirs, vision):
    """Table VII's four representations: the representation runs in the frozen lower part, and
    `full` is VisualBertModel's own forward on the same features."""
    from transformers import VisualBertModel

    from mmsr.encoders.visual_features import create_visual_features

    spec, options = _visualbert_spec(tiny_dirs, vision)
    encoder = create_encoder(spec, "joint", 2, max_text_len=contract.TEXT_LEN, image_size=64, **options)
    assert encoder.features in encoder.lower_modules() and not any(p.requires_grad for p in encoder.features.parameters())
    raw = contract.raw_inputs("joint")
    batch = encoder.preprocess(raw)
    hidden, mask = encoder.lower(batch)
    features = create_visual_features(vision, options["vision_model"], image_size=64)
    with torch.no_grad():
        rows, row_mask = features(batch["pixel_values"])
    assert hidden.shape[1] == contract.TEXT_LEN + features.max_rows
    assert torch.equal(mask[:, contract.TEXT_LEN:], row_mask)
    model = VisualBertModel.from_pretrained(spec).eval()
    with torch.no_grad():
        tokens, _ = encoder.upper(hidden, mask)
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"], visual_embeds=rows,
                       visual_attention_mask=row_mask.long()).last_hidden_state
    torch.testing.assert_close(tokens, theirs, atol=1e-5, rtol=1e-5)
    assert encoder.identity()["picture"]["representation"]["representation"] == vision


def test_vilt_tokens_are_the_unsplit_models_in_raster_order(tiny_dirs):
    """`full` is ViltModel's own output with its picture tokens put back in raster order. ViltModel
    draws its patches in a random order; under two seeds (two different draws) its tokens, each
    sorted here by the (row, column) the draw reports, are ours exactly."""
    from transformers import ViltModel

    encoder = create_encoder(tiny_dirs["vilt"], "joint", 2, max_text_len=contract.TEXT_LEN, image_size=32)
    model = ViltModel.from_pretrained(tiny_dirs["vilt"]).eval()
    batch = encoder.preprocess(contract.raw_inputs("joint"))
    with torch.no_grad():
        ours = encoder.full(batch)
    text, width = contract.TEXT_LEN, 32 // 8
    draws = []
    for seed in (0, 1):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, (patch_index, _) = model.embeddings.visual_embed(batch["pixel_values"], batch["pixel_mask"])
            torch.manual_seed(seed)
            theirs = model(**batch).last_hidden_state
        raster = (patch_index[..., 0] * width + patch_index[..., 1]).argsort(dim=1)  # [N, 16]
        draws.append(raster)
        torch.testing.assert_close(ours[:, :text + 1], theirs[:, :text + 1], atol=1e-5, rtol=1e-5)
        patches = theirs[:, text + 1:].gather(1, raster.unsqueeze(-1).expand(-1, -1, theirs.shape[-1]))
        torch.testing.assert_close(ours[:, text + 1:], patches, atol=1e-5, rtol=1e-5)
    assert not torch.equal(draws[0], draws[1])  # the two draws differ: the order is really restored


def test_models_list_shows_the_one_stream_families_and_the_four_representations():
    from typer.testing import CliRunner

    from mmsr_cli.models import app

    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout.strip().splitlines()[-1])
    assert {f for f, p in listing["paradigms"].items() if p == "one-stream-deep"} == set(JOINT_TINY)
    assert set(listing["representations"]) == {*WIDTHS, "region-c5"}
    table = CliRunner().invoke(app, ["list"]).output
    assert "one-stream-deep" in table and "patch-vit" in table


# -- bad input -----------------------------------------------------------------------------------
def _error(spec, modality="joint", **options) -> str:
    with pytest.raises(MMSRError) as raised:
        create_encoder(spec, modality, 1, **options)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_joint_model_in_a_single_modality_slot_says_where_it_goes(tiny_dirs):
    for modality in ("text", "image"):
        message = _error(tiny_dirs["vilt"], modality)
        assert f"no {modality} encoder family for 'hf:vilt': it holds joint weights only" in message
        assert "give it as encoders.joint_model" in message


def test_a_single_modality_model_in_the_joint_slot_is_refused(tiny_models):
    message = _error(tiny_models["text"], max_text_len=12)
    assert "no joint encoder family for 'hf:bert'" in message and "give it as encoders.text_model" in message


def test_vilt_takes_no_picture_representation(tiny_dirs):
    message = _error(tiny_dirs["vilt"], vision="grid", vision_model="torchvision:resnet50")
    assert "embeds the pixels of the picture itself" in message and "remove encoders.joint_vision" in message


def test_vilt_text_longer_than_its_positions_is_refused(tiny_dirs):
    assert "max_text_len=50 but this model has 24 text positions" in _error(tiny_dirs["vilt"], max_text_len=50)


def test_visualbert_needs_a_representation_it_takes_of_the_width_it_reads(tiny_dirs):
    spec = tiny_dirs["visualbert-32"]
    message = _error(spec, max_text_len=12)
    assert "encoders.joint_vision='' is not one it takes" in message
    assert "region, region-c5, grid, patch-emb, patch-vit" in message
    assert "needs the weights of that representation's model" in _error(spec, max_text_len=12, vision="grid")
    message = _error(spec, max_text_len=12, vision="grid", vision_model=tiny_dirs["sources"]["grid"])
    assert "the grid representation gives 512-wide features but this VisualBERT takes 32-wide ones" in message


def test_a_joint_model_beside_a_text_or_vision_model_is_a_config_error():
    with pytest.raises(ValueError, match='text_model and vision_model must be "" beside it'):
        EncoderConfig(joint_model="x")
    with pytest.raises(ValueError, match="set encoders.joint_model too"):
        EncoderConfig(joint_vision="grid")
    assert EncoderConfig(text_model="", vision_model="", joint_model="x").modalities == ("joint",)


def test_cache_names_of_configs_without_a_joint_model_did_not_change():
    """Caches built before the joint settings existed keep their directory (pinned hashes)."""
    from mmsr.caches import config_hash

    assert config_hash(EncoderConfig()) == "bc71fa20514e"
    assert config_hash(EncoderConfig(vision_model="")) == "42e78e8bd298"
    assert config_hash(EncoderConfig(text_model="", vision_model="", joint_model="x")) != config_hash(
        EncoderConfig(text_model="", vision_model="", joint_model="x", joint_top_blocks=2))


# -- the joint modality through the pipeline -----------------------------------------------------
def _overrides(tiny_dirs, small_demo, name="vilt"):
    return [f"dataset={small_demo}", f"encoders.joint_model={tiny_dirs[name]}", "encoders.joint_top_blocks=1",
            "encoders.max_text_len=16", "encoders.image_size=32", "model.dim=32", "optim.batch_size=32",
            "optim.lr=0.003", "optim.epochs=2", "split.sample_users=64", "eval_batch_size=128"]


def test_vilt_config_trains_from_the_cache_evaluates_and_matches_end_to_end(tiny_dirs, small_demo, tmp_path):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from test_train import assert_cached_item_vectors_equal_end_to_end
    from test_vlp import assert_trains_two_epochs_from_the_cache_and_evaluates

    from mmsr.train.config import TrainConfig

    path = CONFIGS / "vilt.toml"
    shipped = config_lib.load(TrainConfig, path)
    assert shipped.encoders.joint_model == "dandelin/vilt-b32-mlm" and shipped.encoders.modalities == ("joint",)
    assert shipped.encoders.joint_top_blocks == 4 and shipped.model.fusion == "pool"
    config = config_lib.load(TrainConfig, path, _overrides(tiny_dirs, small_demo))
    dataset = load_dataset(config.dataset)
    report = build_cache(dataset, config.encoders, batch_size=64, num_workers=0)
    assert report.complete and set(report.modalities) == {"joint"}
    assert report.modalities["joint"].tokens == 16 + 1 + 16

    assert_trains_two_epochs_from_the_cache_and_evaluates(config, tmp_path / "run")
    no_dropout = config_lib.load(TrainConfig, path, _overrides(tiny_dirs, small_demo) + ["model.dropout=0.0"])
    assert_cached_item_vectors_equal_end_to_end(no_dropout, dataset, every=11)


def test_a_joint_model_on_a_dataset_without_pictures_or_text_is_refused(tiny_dirs, small_demo, tmp_path):
    from test_cache_stage import copy_dataset

    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    def drop_pictures(items, _dest):
        for item in items:
            item.pop("image", None)

    def drop_text(items, _dest):
        for item in items:
            item.update(title="", description="", category="")

    config = EncoderConfig(text_model="", vision_model="", joint_model=tiny_dirs["vilt"], max_text_len=16,
                           image_size=32)
    for name, edit, problem in (("text-only", drop_pictures, "no item of this dataset has a picture"),
                                ("pictures-only", drop_text, "no item of this dataset has text in "
                                                             "encoders.text_fields=['title', 'description', 'category']")):
        root = copy_dataset(small_demo, tmp_path / name, edit=edit)
        with pytest.raises(MMSRError, match=re.escape(problem)):
            build_cache(load_dataset(root), config, num_workers=0, cache_dir=tmp_path / "cache")


def _build(dataset, cache_dir, vilt, **options):
    from cache_helpers import joint_setup

    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config, encoders = joint_setup(vilt)
    return build_cache(load_dataset(dataset), config, encoders=encoders, cache_dir=cache_dir, batch_size=8,
                       num_workers=0, device="cpu", chunk_items=16, **options)


def _arrays(path) -> bytes:
    from mmsr_store import open_cache

    hidden, mask = open_cache(path).load("joint")
    return hidden.numpy().tobytes() + mask.numpy().tobytes()


def test_joint_cache_shards_resumes_after_sigkill_and_refuses_another_model(tiny_dirs, small_demo, tmp_path):
    """Shard 0/2 here; shard 1/2 in a subprocess killed with SIGKILL between chunks, then resumed
    here: the result is byte-identical to one uninterrupted build."""
    from mmsr_store import StoreError

    reference, cache = tmp_path / "reference", tmp_path / "cache"
    assert _build(small_demo, reference, tiny_dirs["vilt"]).complete
    first = _build(small_demo, cache, tiny_dirs["vilt"], shard="0/2")
    assert first.modalities["joint"].encoded_items == 16 * 9 + 12 and not first.complete  # chunks 0, 2, ..., 18 (12 items)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_pythonpath()}
    process = subprocess.Popen([sys.executable, str(HELPER), str(small_demo), str(cache), "--joint", tiny_dirs["vilt"],
                                "--shard", "1/2", "--sleep", "0.1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    markers = cache / "manifest" / "joint"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 10 + 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(markers.glob("*.json"))) - 10
    assert 2 <= finished < 9
    resumed = _build(small_demo, cache, tiny_dirs["vilt"], shard="1/2")
    assert resumed.complete and resumed.modalities["joint"].encoded_items == 16 * (9 - finished)
    assert _arrays(cache) == _arrays(reference)

    other = tmp_path / "other"
    torch.manual_seed(1)
    _vilt(other)
    with pytest.raises(StoreError, match=r"another encoder setup: joint\.model: .*joint\.weights_sha256"):
        _build(small_demo, reference, str(other))
