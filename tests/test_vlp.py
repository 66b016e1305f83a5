"""Paradigms (a) and (c) of seed §6 (Table VI): two-stream VLPs, with shallow fusion (CLIP,
GroupViT) and with deep fusion (FLAVA, whose multimodal encoder is the fusion).

Tiny random-initialised towers built from the transformers architectures, with CLIP's real BPE
tokenizer (rebuilt from the merges file open_clip ships): honest for plumbing, loaded through
the same registry path as the released checkpoints.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path

import pytest
import torch

import test_encoders as contract
from mmsr import config as config_lib
from mmsr.encoders import create_encoder, list_families
from mmsr.errors import MMSRError

GROUPVIT_DEPTHS = [2, 2, 1]  # a grouping stage, a projecting grouping stage, a plain last stage
GROUPVIT_GROUPS = [4, 2, 0]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vlp"


def clip_tokenizer():
    """openai/clip-vit-base-patch32's tokenizer, rebuilt offline: its vocabulary is the 256 byte
    symbols, the same with `</w>`, the merges, then the two special tokens (as open_clip builds it)."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    lines = gzip.open(importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz").read().decode()
    merges = [tuple(line.split()) for line in lines.split("\n")[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), "<|startoftext|>",
             "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def _text_config(tokenizer):
    return dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


GROUPVIT_VISION = dict(hidden_size=32, num_hidden_layers=sum(GROUPVIT_DEPTHS), depths=GROUPVIT_DEPTHS,
                       num_group_tokens=GROUPVIT_GROUPS, num_output_groups=[4, 2, 2], num_attention_heads=4,
                       intermediate_size=64, image_size=32, patch_size=8)
FLAVA_TOWER = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
FLAVA_IMAGE = dict(image_size=32, patch_size=8, **FLAVA_TOWER)
FLAVA_MULTIMODAL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
FLAVA_CODEBOOK = dict(hidden_size=8, num_groups=1, num_blocks_per_group=1, vocab_size=16)  # unused by mmsr
CLIP_VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32,
                   patch_size=8)


def _build_dirs(root: Path) -> dict[str, str]:
    """Every kind of directory a user may have: full two-stream checkpoints and single towers."""
    import transformers as t

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    text = _text_config(tokenizer)
    models = {
        "clip": t.CLIPModel(t.CLIPConfig(text_config=text, vision_config=CLIP_VISION, projection_dim=16)),
        "clip_text": t.CLIPTextModel(t.CLIPTextConfig(**text)),
        "groupvit": t.GroupViTModel(t.GroupViTConfig(text_config=text, vision_config=GROUPVIT_VISION,
                                                     projection_dim=16, projection_intermediate_dim=32)),
        "groupvit_text": t.GroupViTTextModel(t.GroupViTTextConfig(**text)),
        "groupvit_vision": t.GroupViTVisionModel(t.GroupViTVisionConfig(**GROUPVIT_VISION)),
    }
    bert = contract._tokenizer()  # FLAVA's text tower reads BERT's uncased WordPiece
    flava_text = dict(vocab_size=bert.vocab_size, max_position_embeddings=32, **FLAVA_TOWER)
    flava = {
        "flava": t.FlavaModel(t.FlavaConfig(text_config=flava_text, image_config=FLAVA_IMAGE,
                                            multimodal_config=FLAVA_MULTIMODAL, hidden_size=32, projection_dim=16,
                                            image_codebook_config=FLAVA_CODEBOOK)),
        "flava_text": t.FlavaTextModel(t.FlavaTextConfig(**flava_text)),
        "flava_image": t.FlavaImageModel(t.FlavaImageConfig(**FLAVA_IMAGE)),
    }
    dirs = {}
    for name, model in models.items():
        path = root / name
        model.save_pretrained(path)
        if "vision" not in name:
            tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    for name, model in flava.items():
        dirs[name] = contract._save(model, root / name, None if name == "flava_image" else bert)
    return dirs


# family -> which tiny directory exercises it
VLP_TINY = {
    "hf:clip/text": "clip",
    "hf:clip_text_model/text": "clip_text",
    "hf:groupvit/text": "groupvit",
    "hf:groupvit/image": "groupvit",
    "hf:groupvit_text_model/text": "groupvit_text",
    "hf:groupvit_vision_model/image": "groupvit_vision",
    "hf:flava/text": "flava",
    "hf:flava/image": "flava",
    "hf:flava_text_model/text": "flava_text",
    "hf:flava_image_model/image": "flava_image",
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return _build_dirs(tmp_path_factory.mktemp("vlp"))


@pytest.fixture(scope="module")
def tiny_specs(tiny_dirs):
    """In the shape of test_encoders' fixture, so its contract tests run on these families."""
    return {family: (tiny_dirs[name], {}) for family, name in VLP_TINY.items()}


def _groupvit(tiny_dirs, top_blocks, name="groupvit_vision", size=contract.IMAGE_SIZE, **options):
    return create_encoder(tiny_dirs[name], "image", top_blocks, image_size=size, **options)


# -- the split-encoder contract, for every new family --------------------------------------------
def test_every_registered_family_has_a_tiny_model_here_or_in_test_encoders():
    from test_joint import JOINT_TINY  # the one-stream VLPs (ViLT, VisualBERT) are built and tested there

    assert set(list_families()) == set(contract.TINY) | set(VLP_TINY) | set(JOINT_TINY)


test_upper_of_lower_equals_full, test_freezing_is_by_module_and_lower_runs_in_eval, \
    test_identity_is_json_and_complete = contract.contract_tests(VLP_TINY)


# -- GroupViT's stages ---------------------------------------------------------------------------
# Tokens the cache holds per split (top_blocks) for the tiny tower: 5x5 patches at 40 px, stages
# of 2, 2 and 1 layers with 4, 2 and 0 group tokens.
GROUPVIT_TOKENS = {
    5: 25,       # before stage 0: the embedded patches
    4: 25 + 4,   # inside stage 0: patches + its 4 group tokens
    3: 4 + 4,    # before stage 1: stage 0's 4 groups + its 4 group tokens, which stage 1 projects
    2: 4 + 2,    # inside stage 1: 4 tokens + its 2 group tokens
    1: 2,        # before stage 2 (no group tokens, nothing carried)
    0: 2,        # after the last layer
}


def test_groupvit_every_layer_boundary_is_an_honest_split(tiny_dirs):
    batch = None
    for top_blocks, tokens in GROUPVIT_TOKENS.items():
        encoder = _groupvit(tiny_dirs, top_blocks)
        batch = batch or encoder.preprocess(contract._images())
        hidden, mask = encoder.lower(batch)
        assert hidden.shape == (4, tokens, 32) and mask.all(), top_blocks
        out, out_mask = encoder.upper(hidden, mask)
        assert out.shape == (4, 2, 32) and out_mask.shape == (4, 2)
        with torch.no_grad():
            torch.testing.assert_close(out, encoder.full(batch), atol=1e-5, rtol=1e-5)
        lower = {id(p) for m in encoder.lower_modules() for p in m.parameters()}
        trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
        assert trainable.isdisjoint(lower)
        # Outside both lists only the group tokens of a stage cut after its first layer (frozen).
        group_tokens = {id(s.group_token) for s in encoder.model.encoder.stages if s.group_token is not None}
        assert {id(p) for p in encoder.parameters()} - lower - trainable <= group_tokens


def test_groupvit_full_is_the_models_own_forward_at_its_size(tiny_dirs):
    from transformers import GroupViTVisionModel

    encoder = _groupvit(tiny_dirs, 2, size=32)
    model = GroupViTVisionModel.from_pretrained(tiny_dirs["groupvit_vision"]).eval()
    batch = encoder.preprocess(contract._images())
    with torch.no_grad():
        torch.testing.assert_close(encoder.full(batch), model(batch["pixel_values"]).last_hidden_state)


def test_groupvit_trains_its_grouping_block_when_the_split_is_inside_a_grouping_stage(tiny_dirs):
    encoder = _groupvit(tiny_dirs, 2)  # the last layer of stage 1, then its grouping, then stage 2
    stage = encoder.model.encoder.stages[1]
    assert stage.downsample in encoder.upper_modules() and stage.layers[0] in encoder.lower_modules()
    assert not stage.group_token.requires_grad  # built before the stage's first (frozen) layer
    assert all(p.requires_grad for p in stage.downsample.parameters())
    encoder.train()
    tokens, _ = encoder(encoder.preprocess(contract._images()))
    tokens.pow(2).mean().backward()
    assert stage.downsample.mlp_channels.fc1.weight.grad.abs().sum() > 0


def test_groupvit_drops_patches_before_its_first_stage(tiny_dirs):
    from mmsr.encoders.base import patches_kept

    kept = patches_kept(25, 0.5)
    for top_blocks, tokens in ((5, kept), (4, kept + 4), (2, 6), (0, 2)):
        encoder = _groupvit(tiny_dirs, top_blocks, image_mask_ratio=0.5, image_mask_seed=3)
        batch = encoder.preprocess(contract._images())
        hidden, mask = encoder.lower(batch)
        assert hidden.shape[1] == tokens
        with torch.no_grad():
            torch.testing.assert_close(encoder.upper(hidden, mask)[0], encoder.full(batch), atol=1e-5, rtol=1e-5)
    assert encoder.identity()["image_mask_ratio"] == 0.5


def test_a_whole_saved_processor_gives_the_image_transform(tiny_dirs, tmp_path):
    """transformers 5 saves `AutoProcessor.save_pretrained` as processor_config.json (the
    documented way to make a local checkpoint directory); its image settings must be read."""
    import shutil

    from transformers import CLIPImageProcessor, CLIPProcessor

    path = shutil.copytree(tiny_dirs["groupvit"], tmp_path / "groupvit")
    CLIPProcessor(image_processor=CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], resample=2),
                  tokenizer=clip_tokenizer()).save_pretrained(path)
    assert not (path / "preprocessor_config.json").exists()
    transform = _groupvit({"groupvit": str(path)}, 1, name="groupvit").transform
    assert transform.mean == (0.1, 0.2, 0.3) and transform.interpolation == "bilinear"
    assert _groupvit(tiny_dirs, 1, name="groupvit").transform.mean == (0.485, 0.456, 0.406)  # GroupViT's default


# -- the text towers -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip", "groupvit"])
def test_text_tower_is_causal_and_its_end_token_is_the_pooled_output(tiny_dirs, name):
    encoder = create_encoder(tiny_dirs[name], "text", 1, max_text_len=12)
    batch = encoder.preprocess(["a red leather jacket", "a red leather boot", ""])
    ids = batch["input_ids"]
    assert ids[0, 0] == encoder.tokenizer.bos_token_id and ids[2, :2].tolist() == [49406, 49407]
    tokens, _ = encoder.upper(*encoder.lower(batch))
    # "jacket" vs "boot" differ at position 4: no earlier position may see it
    torch.testing.assert_close(tokens[0, :4], tokens[1, :4])
    assert (tokens[0, 4] - tokens[1, 4]).abs().max() > 1e-4
    with torch.no_grad():
        pooled = encoder.model(**batch).pooler_output
    end = batch["attention_mask"].sum(1) - 1
    torch.testing.assert_close(tokens[torch.arange(3), end], pooled)


def test_a_full_checkpoint_serves_both_slots_with_only_its_own_tower(tiny_dirs):
    for name, vision_family in (("clip", "hf:clip"), ("groupvit", "hf:groupvit")):
        text = create_encoder(tiny_dirs[name], "text", 2, max_text_len=12)
        vision = create_encoder(tiny_dirs[name], "image", 2, image_size=32)
        assert text.family == vision.family == vision_family
        assert text.paradigm == vision.paradigm == "two-stream-shallow"
        assert not any("vision" in key or "patch" in key for key in text.state_dict())
        assert not any("token_embedding" in key for key in vision.state_dict())
        assert text.identity()["model"] == vision.identity()["model"]  # one checkpoint ...
        assert text.weights_sha256() != vision.weights_sha256()        # ... two towers


def test_text_longer_than_the_position_table_is_refused(tiny_dirs):
    with pytest.raises(MMSRError, match="max_text_len=50 but this text tower has 32 positions"):
        create_encoder(tiny_dirs["clip"], "text", 1, max_text_len=50)


# -- bad input: the wrong architecture for a slot ------------------------------------------------
def _one_line_error(spec, modality, **options) -> str:
    with pytest.raises(MMSRError) as raised:
        create_encoder(spec, modality, 1, **options)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(spec))
    return message


def test_a_single_tower_in_the_other_slot_is_a_clear_error(tiny_dirs):
    message = _one_line_error(tiny_dirs["groupvit_vision"], "text")
    assert "no text encoder family for 'hf:groupvit_vision_model': it holds image weights only" in message
    assert "give it as encoders.vision_model" in message
    message = _one_line_error(tiny_dirs["clip_text"], "image")
    assert "it holds text weights only" in message and "give it as encoders.text_model" in message




def test_a_text_tower_without_its_tokenizer_is_a_clear_error(tiny_dirs, tmp_path):
    from transformers import CLIPTextModel

    CLIPTextModel.from_pretrained(tiny_dirs["clip_text"]).save_pretrained(tmp_path / "bare")
    assert "no tokenizer next to this text tower" in _one_line_error(tmp_path / "bare", "text")


# -- the CLI listing and the configs --------------------------------------------------------------
def test_models_list_shows_each_family_with_its_paradigm():
    from typer.testing import CliRunner

    from mmsr_cli.models import app

    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    paradigms = json.loads(result.stdout.strip().splitlines()[-1])["paradigms"]
    assert set(paradigms) == set(list_families())
    two_stream = {family for family, paradigm in paradigms.items() if paradigm == "two-stream-shallow"}
    deep = {family for family in VLP_TINY if "flava" in family}
    assert two_stream == {*VLP_TINY, "hf:clip/image", "hf:clip_vision_model/image", "open_clip/image"} - deep
    assert {family for family, paradigm in paradigms.items() if paradigm == "two-stream-deep"} == deep
    assert paradigms["hf:bert/text"] == "unimodal"
    table = CliRunner().invoke(app, ["list"]).output
    assert "paradigm" in table and "two-stream-shallow" in table


@pytest.mark.parametrize("name,checkpoint,fusion", [("clip", "openai/clip-vit-base-patch32", "concat"),
                                                    ("groupvit", "nvidia/groupvit-gcc-yfcc", "concat"),
                                                    ("flava", "facebook/flava-full", "flava")])
def test_vlp_config_trains_from_the_cache_and_evaluates(tiny_dirs, small_demo, tmp_path, name, checkpoint, fusion):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset
    from mmsr.train.config import TrainConfig

    path = CONFIGS / f"{name}.toml"
    shipped = config_lib.load(TrainConfig, path)
    assert shipped.model.fusion == fusion and shipped.encoders.text_model == shipped.encoders.vision_model == checkpoint
    assert shipped.encoders.text_top_blocks == shipped.encoders.vision_top_blocks == 2
    overrides = [f"dataset={small_demo}", f"encoders.text_model={tiny_dirs[name]}",
                 f"encoders.vision_model={tiny_dirs[name]}", "encoders.max_text_len=16", "encoders.image_size=32",
                 "model.dim=32", "optim.batch_size=32", "optim.lr=0.003", "optim.epochs=2",
                 "split.sample_users=64", "eval_batch_size=128"]
    config = config_lib.load(TrainConfig, path, overrides)
    build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0)
    assert_trains_two_epochs_from_the_cache_and_evaluates(config, tmp_path / "run")


def assert_trains_two_epochs_from_the_cache_and_evaluates(config, run) -> None:
    """Two epochs from a built cache lower the loss; FAISS evaluates the run on the 300-item demo."""
    from mmsr.eval.runner import evaluate_run
    from mmsr.train.recipe import train

    best = train(config, run, from_cache=True, log=lambda *_: None)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[-1] < losses[0], losses
    assert 0.0 <= best["valid"]["HR@10"] <= 1.0
    result = evaluate_run(run, "test", device="cpu")
    assert result["items"] == 300 and result["users"] > 0
    assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())


# -- FLAVA (paradigm (c)): the multimodal encoder as the fusion ----------------------------------
def _flava_pair(tiny_dirs, text="flava", image="flava", top_blocks=1):
    return {"text": create_encoder(tiny_dirs[text], "text", top_blocks, max_text_len=12),
            "image": create_encoder(tiny_dirs[image], "image", top_blocks, image_size=32)}


def test_flava_fusion_on_split_towers_is_flavas_own_pooled_multimodal_output(tiny_dirs):
    from transformers import FlavaModel

    from mmsr.models.fusion import create_fusion

    model = FlavaModel.from_pretrained(tiny_dirs["flava"]).eval()
    for top_blocks in (0, 1, 3):
        encoders = _flava_pair(tiny_dirs, top_blocks=top_blocks)
        text = encoders["text"].preprocess(["a red leather jacket", "", "boots"])
        image = encoders["image"].preprocess(contract._images()[:3])
        states = {m: encoders[m].upper(*encoders[m].lower(batch)) for m, batch in (("text", text), ("image", image))}
        fusion = create_fusion("flava", input_dims={"text": 32, "image": 32}, dim=16, encoders=encoders).eval()
        with torch.no_grad():
            ours = fusion.pooled(states)
            theirs = model(**text, pixel_values=image["pixel_values"],
                           output_hidden_states=True).multimodal_output.pooler_output
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert fusion(states).shape == (3, 16)


def test_flavas_multimodal_encoder_trains_at_the_encoder_learning_rate(tiny_dirs):
    from mmsr.train.config import TrainConfig
    from mmsr.train.model import build_model, parameter_groups

    config = config_lib.load(TrainConfig, CONFIGS / "flava.toml", [
        f"encoders.text_model={tiny_dirs['flava']}", f"encoders.vision_model={tiny_dirs['flava']}",
        "encoders.max_text_len=12", "encoders.image_size=32", "model.dim=16"])
    model = build_model(config, 10)
    groups = {group["name"]: group for group in parameter_groups(model, config)}
    multimodal = {id(p) for p in model.items.fusion.multimodal.parameters()}
    assert multimodal and multimodal <= {id(p) for p in groups["encoder_tops"]["params"]}
    assert groups["encoder_tops"]["lr"] == config.optim.encoder_lr
    assert {id(p) for p in model.items.fusion.project.parameters()} <= {id(p) for p in groups["downstream"]["params"]}


def test_flava_fusion_refuses_towers_it_cannot_read(tiny_dirs):
    from mmsr.models.fusion import create_fusion

    def refused(encoders) -> str:
        with pytest.raises(MMSRError) as raised:
            create_fusion("flava", input_dims={m: e.output_size for m, e in encoders.items()}, dim=16,
                          encoders=encoders)
        return str(raised.value)

    clip = {"text": create_encoder(tiny_dirs["clip"], "text", 1, max_text_len=12),
            "image": create_encoder(tiny_dirs["clip"], "image", 1, image_size=32)}
    assert "reads FLAVA's own text and image towers" in refused(clip)
    assert "both towers from one FLAVA checkpoint" in refused(_flava_pair(tiny_dirs, text="flava_text"))


@pytest.mark.parametrize("name", ["flava", "flava_image"])
def test_flava_image_tower_drops_patches_like_every_vit(tiny_dirs, name):
    """The reference is FLAVA's own tower forward with the same patches dropped right after its
    embedding (a hook)."""
    from mmsr.encoders.base import patches_kept

    batch = None
    for top_blocks in (0, 1, 3):
        encoder = create_encoder(tiny_dirs[name], "image", top_blocks, image_size=32, image_mask_ratio=0.5,
                                 image_mask_seed=3)
        batch = batch or encoder.preprocess(contract._images())
        hidden, mask = encoder.lower(batch)
        assert hidden.shape[1] == 1 + patches_kept(16, 0.5) and mask.all()
        with torch.no_grad():
            torch.testing.assert_close(encoder.upper(hidden, mask)[0], encoder.full(batch), atol=1e-5, rtol=1e-5)


def test_clip_fixed_length_tokens_equal_the_tokenizers_own_call():
    """CLIP's BPE through the backend path: the same ids and mask as `tokenizer(...)`, EOS as
    the pad token (set by the CLIP text encoder), no type ids."""
    from mmsr.encoders.hf_common import FixedLengthTokenizer

    tokenizer = clip_tokenizer()
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = ["Vintage leather jacket by Norda", "", "a much longer description that is surely cut at twelve tokens"]
    expected = tokenizer(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    fast = FixedLengthTokenizer(tokenizer, 12)
    assert fast.backend is not None
    got = fast(texts)
    assert sorted(got) == sorted(k for k in expected.keys() if k != "token_type_ids")
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key
