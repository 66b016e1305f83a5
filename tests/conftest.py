import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MMSR_NO_PROGRESS", "1")

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
