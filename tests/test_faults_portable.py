"""Bad inputs between the cache and the trainer: a data root and a checkpoint that moved, and
pictures that cannot be read, seen the same way cached and end to end."""

import shutil

import pytest
import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr_store.errors import UserError
from mmsr.train.config import TrainConfig

pytestmark = pytest.mark.faults


def _tiny(dataset, text, vision, *extra):
    return [f"dataset={dataset}", f"encoders.text_model={text}", f"encoders.vision_model={vision}",
            "encoders.text_top_blocks=1", "encoders.vision_top_blocks=1", "encoders.max_text_len=16",
            "encoders.image_size=32", "model.dim=32", "optim.batch_size=32", "optim.epochs=1",
            "split.sample_users=32", "eval_batch_size=128", *extra]


def _build(overrides, **options):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config = config_lib.load(TrainConfig, None, overrides)
    return build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0,
                       on_bad_image=config.on_bad_image, **options)


def _root_with_everything(root, small_demo, tiny_models):
    """A data root holding the dataset and the two model directories, as a user would set it up."""
    shutil.copytree(small_demo, root / "datasets" / "shop")
    for modality in ("text", "vision"):
        shutil.copytree(tiny_models[modality], root / "models" / modality)
    return _tiny(root / "datasets" / "shop", root / "models" / "text", root / "models" / "vision")


def test_cache_moves_with_its_data_root_and_its_checkpoint(small_demo, tiny_models, tmp_path, monkeypatch):
    from mmsr.train.recipe import train

    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("MMSR_HOME", str(first))
    report = _build(_root_with_everything(first, small_demo, tiny_models))
    assert report.complete

    shutil.copytree(first, second)  # the same bytes, somewhere else (another machine, a container mount)
    shutil.rmtree(first)
    monkeypatch.setenv("MMSR_HOME", str(second))
    moved = _tiny(second / "datasets" / "shop", second / "models" / "text", second / "models" / "vision")
    best = train(config_lib.load(TrainConfig, None, moved), second / "runs" / "r", from_cache=True,
                 log=lambda *_: None)
    assert best["epoch"] == 1

    # Other weights at the same path are another model: the moved cache is not theirs.
    weights = next((second / "models" / "text").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="cache not found"):
        train(config_lib.load(TrainConfig, None, moved), second / "runs" / "r2", from_cache=True,
              log=lambda *_: None)


@pytest.fixture
def bad_picture_dataset(small_demo, tmp_path):
    """The small demo with one item's picture replaced by bytes no decoder reads."""
    from mmsr.data.dataset import load_dataset

    root = tmp_path / "broken"
    shutil.copytree(small_demo, root)
    dataset = load_dataset(root)
    bad = 5
    dataset.image_path(bad).write_bytes(b"not a picture")
    return root, bad, dataset.items[bad]["id"]


@pytest.mark.parametrize("policy", ["skip", "placeholder"])
def test_bad_picture_is_the_same_cached_and_end_to_end(bad_picture_dataset, tiny_models, policy):
    from mmsr.data.dataset import load_dataset
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model

    root, bad, _ = bad_picture_dataset
    overrides = _tiny(root, tiny_models["text"], tiny_models["vision"], f"on_bad_image={policy}")
    report = _build(overrides)
    assert len(report.problems) == 1
    config = config_lib.load(TrainConfig, None, overrides)
    dataset = load_dataset(config.dataset)
    model = build_model(config, dataset.num_items).eval()
    cached, _ = open_feed(config, model, dataset, True, torch.device("cpu"))
    raw, _ = open_feed(config, model, dataset, False, torch.device("cpu"))
    ids = torch.tensor([bad - 1, bad, bad + 1])
    hidden_c, mask_c = cached(ids)["image"]
    hidden_r, mask_r = raw(ids)["image"]
    assert torch.equal(mask_c, mask_r)
    torch.testing.assert_close(hidden_c.float(), hidden_r.float(), atol=2e-2, rtol=2e-2)
    assert bool(mask_c[1].any()) == (policy == "placeholder")  # skip: the item has no picture at all


def test_bad_picture_stops_end_to_end_by_default_and_a_cache_of_another_policy_is_refused(
        bad_picture_dataset, tiny_models):
    from mmsr.data.dataset import load_dataset
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model

    root, bad, item = bad_picture_dataset
    overrides = _tiny(root, tiny_models["text"], tiny_models["vision"])
    config = config_lib.load(TrainConfig, None, overrides)
    dataset = load_dataset(config.dataset)
    model = build_model(config, dataset.num_items).eval()
    raw, _ = open_feed(config, model, dataset, False, torch.device("cpu"))
    with pytest.raises(MMSRError, match=f"item '{item}': unreadable image") as error:
        raw(torch.tensor([bad]))
    assert "on_bad_image=skip|placeholder" in str(error.value)

    _build(overrides + ["on_bad_image=skip"])
    with pytest.raises(MMSRError, match="built with on_bad_image=skip, this run says error"):
        open_feed(config, model, dataset, True, torch.device("cpu"))
