"""The canonical dataset: atomic writes, validation with file and line, the bad-image policy."""

import json
import re

import pytest

from mmsr.data.dataset import DatasetWriter, load_dataset
from mmsr.errors import MMSRError


def _write(dest, images=None, **kwargs):
    with DatasetWriter(dest, **kwargs) as writer:
        for i in range(3):
            writer.add_item(f"i{i}", title=f"item {i}", image=(images or {}).get(i))
        for u in range(2):
            for i in range(3):
                writer.add_interaction(f"u{u}", f"i{i}", 10 * u + i)
    return dest


def test_roundtrip_and_meta(tmp_path):
    from PIL import Image

    root = _write(tmp_path / "ds", images={0: Image.new("RGB", (8, 8), (255, 0, 0))})
    dataset = load_dataset(root)
    assert dataset.num_items == 3 and len(dataset.inter_item) == 6
    assert dataset.meta["counts"] == {"items": 3, "users": 2, "interactions": 6, "items_with_image": 1,
                                      "items_with_text": 3}
    assert dataset.image_path(0).is_file() and dataset.image_path(1) is None
    assert dataset.item_text(0) == "item 0"
    assert len(dataset.meta["content_hash"]) == 64


def test_items_are_read_from_their_lines_on_demand_in_this_and_other_processes(tmp_path):
    """The loaded items are byte spans of items.jsonl, not dicts (issue 14): every way of reading
    them gives the file's objects, through a byte-order mark, blank lines, non-ASCII text, a
    pickle (spawned workers) and a fork."""
    import multiprocessing
    import pickle

    root = _write(tmp_path / "ds")
    lines = (root / "items.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "title": "Crème brûlée 🍮"}, ensure_ascii=False)
    (root / "items.jsonl").write_bytes("\ufeff".encode() + ("\n\n".join(lines) + "\r\n").encode())
    expected = [json.loads(line) for line in lines]

    items = load_dataset(root).items
    assert len(items) == 3 and list(items) == expected and items[:] == expected
    assert [items[i] for i in (0, 1, 2, -1)] == [*expected, expected[-1]]
    assert items[1]["title"] == "Crème brûlée 🍮"
    items[0]["title"] = "changed"  # a fresh dict each time: the table itself cannot be edited
    assert items[0] == expected[0]
    with pytest.raises(IndexError):
        items[3]
    assert pickle.loads(pickle.dumps(items))[2] == expected[2]
    items[0]  # the parent's descriptor is open before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(items.__getitem__, [2, 1]) == [expected[2], expected[1]]
    assert items[1] == expected[1]


def test_duplicate_item_is_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(MMSRError, match="duplicate item id 'a'"):
        with DatasetWriter(tmp_path / "ds") as writer:
            writer.add_item("a", title="x")
            writer.add_item("a", title="y")
    assert list(tmp_path.iterdir()) == []


def test_unknown_item_in_interactions(tmp_path):
    with pytest.raises(MMSRError, match="unknown item 'zzz'"):
        with DatasetWriter(tmp_path / "ds") as writer:
            writer.add_item("a", title="x")
            writer.add_interaction("u", "zzz", 1, where="src.csv:7")
    assert list(tmp_path.iterdir()) == []


def test_empty_text_is_refused_unless_allowed(tmp_path):
    with pytest.raises(MMSRError, match="no text"):
        with DatasetWriter(tmp_path / "ds") as writer:
            writer.add_item("a", title="   ")
    _write(tmp_path / "ok", allow_empty_text=True)


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    root = _write(tmp_path / "ds")
    before = (root / "meta.json").read_text()
    with pytest.raises(MMSRError):
        with DatasetWriter(root, overwrite=True) as writer:
            writer.add_item("a", title="x")
            writer.add_item("a", title="x")
    assert (root / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_existing_dataset_is_not_overwritten_by_default(tmp_path):
    root = _write(tmp_path / "ds")
    with pytest.raises(MMSRError, match="already exists"):
        _write(root)


@pytest.mark.parametrize("policy,expected_images", [("skip", 0), ("placeholder", 1)])
def test_bad_image_policy(tmp_path, policy, expected_images):
    root = _write(tmp_path / "ds", images={0: b"not a picture"}, on_bad_image=policy)
    dataset = load_dataset(root)
    assert dataset.meta["counts"]["items_with_image"] == expected_images
    assert "unreadable image for item 'i0'" in dataset.meta["problems"][0]


def test_bad_image_error_names_the_item(tmp_path):
    with pytest.raises(MMSRError, match="unreadable image for item 'i0'.*--on-bad-image"):
        _write(tmp_path / "ds", images={0: b"not a picture"})


def _corrupt(root, name, line_no, text):
    path = root / name
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name,line,text,message", [
    ("items.jsonl", 2, '{"id": "i1", "title": ', "malformed JSON"),
    ("items.jsonl", 2, '{"id": "i0", "title": "dup", "image": null}', "duplicate item id 'i0'"),
    ("interactions.tsv", 3, "u0\tnope\t1", "unknown item 'nope'"),
    ("interactions.tsv", 3, "u0\ti1", "expected 3 tab-separated fields"),
    ("interactions.tsv", 3, "u0\ti1\tyesterday", "timestamp 'yesterday' is not a number"),
    ("interactions.tsv", 1, "a,b,c", "header"),
])
def test_reader_names_file_and_line(tmp_path, name, line, text, message):
    root = _write(tmp_path / "ds")
    path = _corrupt(root, name, line, text)
    with pytest.raises(MMSRError, match=message) as error:
        load_dataset(root)
    assert f"{path}:{line}" in str(error.value)


def test_missing_image_file_is_reported(tmp_path):
    from PIL import Image

    root = _write(tmp_path / "ds", images={1: Image.new("RGB", (8, 8))})
    (root / json.loads((root / "items.jsonl").read_text().splitlines()[1])["image"]).unlink()
    with pytest.raises(MMSRError, match="missing image file .* for item 'i1'") as error:
        load_dataset(root)
    assert "items.jsonl:2" in str(error.value)


def test_non_utf8_is_reported(tmp_path):
    root = _write(tmp_path / "ds")
    with open(root / "interactions.tsv", "ab") as handle:
        handle.write(b"u9\t\xff\xfe\t3\n")
    with pytest.raises(MMSRError, match="not UTF-8") as error:
        load_dataset(root)
    assert "interactions.tsv:8" in str(error.value)


def test_missing_dataset_hint(tmp_path):
    with pytest.raises(MMSRError, match="mmsr data demo"):
        load_dataset(tmp_path / "nothing")


def test_demo_is_deterministic_and_has_complementary_attributes(tmp_path):
    from mmsr.data.demo import generate_demo

    a = generate_demo(tmp_path / "a", items=40, users=20, seed=3, image_size=32)
    b = generate_demo(tmp_path / "b", items=40, users=20, seed=3, image_size=32)
    meta_a, meta_b = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert meta_a["content_hash"] == meta_b["content_hash"]
    dataset = load_dataset(a)
    colours = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
    categories = ("jacket", "sneaker", "backpack", "lamp", "mug", "watch", "scarf", "chair")
    for item in dataset.items:  # colour never in the text; category always in it
        text = dataset.item_text(dataset.item_index[item["id"]]).lower()
        assert not any(c in text.split() for c in colours)
        assert any(c in text for c in categories)


def test_a_folder_of_raw_files_is_named_with_the_import_command(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "ml.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(MMSRError, match="missing meta.json: not a canonical mmsr dataset") as error:
        load_dataset(tmp_path / "raw")
    assert f"mmsr data import FORMAT {tmp_path / 'raw'} --name NAME" in str(error.value)


def test_a_damaged_meta_json_is_named(tmp_path):
    # JSON that is not an object ended in AttributeError ('list' object has no attribute 'get').
    (tmp_path / "d").mkdir()
    for text, said in (("[]", "damaged: holds a JSON list, not an object"), ('{"sche', "damaged: not JSON at line 1"),
                       ("", "damaged: empty")):
        (tmp_path / "d" / "meta.json").write_text(text)
        with pytest.raises(MMSRError, match=re.escape(f"{tmp_path / 'd' / 'meta.json'}: {said}")) as error:
            load_dataset(tmp_path / "d")
        assert "mmsr data demo" in str(error.value)
