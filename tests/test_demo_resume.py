"""A demo generation stopped part way resumes from its last checkpoint, draw for draw: the
dataset is byte for byte what one uninterrupted run writes (issue 14: "finished chunks are
kept"). The real full disk is in test_faults_import."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mmsr.data import demo, demo_choices
from mmsr.data.dataset import DatasetWriter
from mmsr.errors import MMSRError
from mmsr_store.errors import OutOfSpaceError

SHAPE = dict(items=50, users=70, image_size=16, sampler="grouped", min_len=3, max_len=9)


@pytest.fixture
def small_checkpoints(monkeypatch):
    """Checkpoints every 7 items and 16 users, so a tiny dataset has several of each."""
    monkeypatch.setattr(demo, "CHECKPOINT_ITEMS", 7)
    monkeypatch.setattr(demo, "CHUNK_USERS", 16)
    monkeypatch.setattr(demo_choices, "CHUNK_USERS", 16)


def _stop_at(monkeypatch, method: str, call: int) -> list[int]:
    """Make DatasetWriter.`method` raise KeyboardInterrupt (a Ctrl-C) on its `call`-th call
    (never for -1); returns the list that counts its calls."""
    calls = [0]
    real = getattr(DatasetWriter, method)

    def counted(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, method, counted)
    return calls


def _meta(root):
    return json.loads((root / "meta.json").read_text())


@pytest.mark.parametrize("method, call", [("add_item", 20), ("add_interaction", 200)])
def test_stopped_generation_resumes_from_its_checkpoint_byte_for_byte(tmp_path, monkeypatch, small_checkpoints,
                                                                      method, call):
    whole = demo.generate_demo(tmp_path / "whole", **SHAPE)

    dest = tmp_path / "d"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _stop_at(patch, method, call)
        demo.generate_demo(dest, **SHAPE)
    assert not dest.exists() and (tmp_path / ".d.partial").is_dir()
    place = json.loads((tmp_path / ".d.partial.json").read_text())
    assert (place["items_done"], place["users_done"]) == ((14, 0) if method == "add_item" else (50, place["users_done"]))
    if method == "add_interaction":
        assert place["users_done"] > 0 and place["users_done"] % 16 == 0

    items_written = _stop_at(monkeypatch, "add_item", -1)
    demo.generate_demo(dest, **SHAPE)

    assert items_written[0] == SHAPE["items"] - place["items_done"]  # only what came after the checkpoint
    assert _meta(dest) == _meta(whole)  # counts, problems, content hash: the same dataset
    assert (dest / "items.jsonl").read_bytes() == (whole / "items.jsonl").read_bytes()
    assert (dest / "interactions.tsv").read_bytes() == (whole / "interactions.tsv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", ".whole.lock", "d", "whole"]  # staging gone


def test_other_options_start_again(tmp_path, monkeypatch, small_checkpoints):
    dest = tmp_path / "d"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _stop_at(patch, "add_interaction", 100)
        demo.generate_demo(dest, **SHAPE)
    written = _stop_at(monkeypatch, "add_item", -1)
    demo.generate_demo(dest, **{**SHAPE, "users": 71})  # not the stopped request: nothing of it is reused
    assert written[0] == SHAPE["items"]
    assert _meta(dest)["counts"]["users"] == 71
    assert not (tmp_path / ".d.partial").exists() and not (tmp_path / ".d.partial.json").exists()


def test_full_disk_after_a_checkpoint_says_the_rerun_goes_on(tmp_path, monkeypatch, small_checkpoints):
    """ENOSPC from the interactions file, as a full disk raises it: the error names the dataset
    and says that the rerun resumes (before any checkpoint it says nothing was written)."""
    calls = [0]

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            calls[0] += 1
            if calls[0] > 150:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(text)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_enter = DatasetWriter.__enter__

    def enter(self):
        real_enter(self)
        self._inter_fh = FullDisk(self._inter_fh)
        return self

    with monkeypatch.context() as patch, pytest.raises(OutOfSpaceError) as error:
        patch.setattr(DatasetWriter, "__enter__", enter)
        demo.generate_demo(tmp_path / "d", **SHAPE)
    message = str(error.value)
    assert str(tmp_path / "d") in message and "no space left on device" in message
    assert f"kept in {tmp_path / '.d.partial'} and the rerun goes on from there" in message
    demo.generate_demo(tmp_path / "d", **SHAPE)
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["content_hash"] == \
        json.loads((demo.generate_demo(tmp_path / "whole", **SHAPE) / "meta.json").read_text())["content_hash"]


def test_a_resumed_run_stopped_before_it_writes_keeps_the_checkpoint(tmp_path, monkeypatch, small_checkpoints):
    dest = tmp_path / "d"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _stop_at(patch, "add_interaction", 200)
        demo.generate_demo(dest, **SHAPE)
    place = json.loads((tmp_path / ".d.partial.json").read_text())
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # Ctrl-C while the rerun starts up
        patch.setattr(demo.Domain, "item_id", lambda self, i: (_ for _ in ()).throw(KeyboardInterrupt))
        demo.generate_demo(dest, **SHAPE)
    assert (tmp_path / ".d.partial").is_dir() and json.loads((tmp_path / ".d.partial.json").read_text()) == place
    written = _stop_at(monkeypatch, "add_item", -1)
    demo.generate_demo(dest, **SHAPE)
    assert written[0] == 0  # every item was before the checkpoint: none written again
    assert _meta(dest)["content_hash"] == _meta(demo.generate_demo(tmp_path / "whole", **SHAPE))["content_hash"]


def test_an_existing_dataset_is_refused_before_a_stale_partial_is_touched(tmp_path, monkeypatch, small_checkpoints):
    demo.generate_demo(tmp_path / "d", **SHAPE)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _stop_at(patch, "add_interaction", 100)
        demo.generate_demo(tmp_path / "d", **{**SHAPE, "users": 71}, overwrite=True)
    with pytest.raises(MMSRError, match="already exists"):
        demo.generate_demo(tmp_path / "d", **SHAPE)
    assert (tmp_path / ".d.partial").is_dir() and (tmp_path / ".d.partial.json").is_file()


def _tree(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("damage, said", [
    (lambda d: (d / "meta.json").write_text("garbage"), r"does not load, so it is not kept: .*meta\.json: damaged: not JSON"),
    (lambda d: (d / "items.jsonl").unlink(), r"does not load, so it is not kept: .*items\.jsonl: missing file"),
    (lambda d: (d / "interactions.tsv").write_bytes((d / "interactions.tsv").read_bytes()[:100]),
     r"does not load, so it is not kept: .*interactions\.tsv:\d+: expected 3 tab-separated fields"),
    (lambda d: (d / "interactions.tsv").write_text("\n".join((d / "interactions.tsv").read_text().splitlines()[:30])
                                                   + "\n"),
     r"its tables hold \d+ users \(meta\.json: 70\), 29 interactions \(meta\.json: \d+\): damaged"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()), "counts": None})),
     r"its meta\.json's counts are NoneType, not a table: damaged"),
], ids=["meta-garbled", "items-gone", "cut-mid-line", "cut-at-a-line", "counts-not-a-table"])
def test_a_damaged_demo_is_not_kept_and_overwrite_makes_it_again(tmp_path, damage, said):
    """`data demo` over an existing dataset said "already exists; keeping it" of one with a
    table cut short or gone, or meta.json garbled (a traceback), and the next command failed on
    it. Now it is refused, naming what is wrong, and --overwrite makes the same bytes again."""
    dest = tmp_path / "d"
    assert demo.create_demo(str(dest), **SHAPE)[1]
    whole = _tree(dest)
    assert not demo.create_demo(str(dest), **SHAPE)[1]  # a whole one is kept
    damage(dest)
    with pytest.raises(MMSRError, match=said) as refused:
        demo.create_demo(str(dest), **SHAPE)
    assert str(refused.value).startswith(f"{dest}: exists but ") and str(refused.value).endswith(
        "(pass --overwrite to generate it again in its place)")
    assert demo.create_demo(str(dest), **SHAPE, overwrite=True)[1]
    assert _tree(dest) == whole
