"""`mmsr data import`: every format on fixtures written here, the bad-input cases, and ML-100K."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import lmdb  # a dependency of the importers: missing, these tests must fail, not skip
import numpy as np
import pytest

from mmsr import paths
from mmsr.data.dataset import load_dataset
from mmsr.data.importers import IMPORTERS, formats, import_dataset
from mmsr.data.importers.mmsr_lmdb import SafeUnpickler, safe_loads
from mmsr.data.split import SplitConfig, split_dataset
from mmsr.errors import MMSRError


# ----------------------------------------------------------------------------- helpers


def datasets_root() -> Path:
    return paths.home() / "datasets"


def fails(fragments, format, sources, *, name="x", **options) -> MMSRError:
    """The import raises one single-line MMSRError containing every fragment and leaves nothing behind."""
    before = sorted(os.listdir(datasets_root())) if datasets_root().exists() else []
    with pytest.raises(MMSRError) as caught:
        import_dataset(format, sources, name=name, **options)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    after = sorted(os.listdir(datasets_root())) if datasets_root().exists() else []
    assert after == before, f"left behind: {set(after) - set(before)}"
    return caught.value


def picture(seed: int, height: int = 8, width: int = 6, channels: int = 3) -> np.ndarray:
    """A smooth picture (JPEG keeps it nearly exact), different along H, W and per channel."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return np.clip(10 * seed + 12 * y + 4 * x + 50 * c, 0, 255).astype(np.uint8)


# The build scripts of the paper / MoRec / PMMRec, as they run: the class lives in __main__.
class LMDB_Image:
    def __init__(self, image, id):
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.id = id


LMDB_Image.__module__ = "__main__"


def main_pickle(obj, protocol: int | None = None) -> bytes:
    """Pickle as a script would: `__main__.LMDB_Image` must resolve while pickling."""
    main = sys.modules["__main__"]
    saved = getattr(main, "LMDB_Image", None)
    main.LMDB_Image = LMDB_Image
    try:
        return pickle.dumps(obj, protocol=protocol)
    finally:
        if saved is None:
            del main.LMDB_Image
        else:
            main.LMDB_Image = saved


def write_lmdb(path: Path, values: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()


TITLES = {"v1": "Red round lamp", "v2": "Blue square rug", "v3": "Green striped mug", "v4": "Yellow dotted vase"}
USERS = {"u1": ["v1", "v2", "v3"], "u2": ["v2", "v4", "v1", "v3"], "u3": ["v4", "v3"]}


def mmsr_lmdb_source(root: Path, *, titles=TITLES, users=USERS, pictures=None, extra_items: str = "",
                     users_text: str | None = None) -> list[Path]:
    """DATA_items.tsv, DATA_users.tsv and DATA.lmdb, as the reference code lays them out."""
    root.mkdir(parents=True, exist_ok=True)
    items_path, users_path, lmdb_path = root / "DATA_items.tsv", root / "DATA_users.tsv", root / "DATA.lmdb"
    items_path.write_text("".join(f"{k}\t{v}\n" for k, v in titles.items()) + extra_items, encoding="utf-8")
    users_path.write_text(users_text if users_text is not None else
                          "".join(f"{u}\t{' '.join(s)}\n" for u, s in users.items()), encoding="utf-8")
    if pictures is None:
        pictures = {name[1:].encode(): main_pickle(LMDB_Image(picture(i), name[1:]))
                    for i, name in enumerate(titles)}
    keys = [key for key in pictures]
    write_lmdb(lmdb_path, {**pictures, b"__keys__": pickle.dumps(keys), b"__len__": pickle.dumps(len(keys))})
    return [items_path, users_path, lmdb_path]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["mmsr-lmdb", "recbole", "amazon2023", "pixelrec"])
def test_documented_format_is_registered(name):
    assert name in formats()


@pytest.mark.parametrize("name", formats())
def test_registered_format_has_help_and_is_named_by_the_unknown_format_error(name):
    assert IMPORTERS.entry(name).help
    fails(["unknown import format 'csv'", name], "csv", ["x"])


# ----------------------------------------------------------------------------- mmsr-lmdb


def test_mmsr_lmdb_roundtrip(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src")
    report = import_dataset("mmsr-lmdb", sources, name="lm")
    assert report.counts == {"items": 4, "users": 3, "interactions": 9, "items_with_image": 4, "items_with_text": 4}
    assert report.problems == []
    data = load_dataset("lm")
    assert data.item_ids() == ["v1", "v2", "v3", "v4"]
    assert data.items[0]["title"] == "Red round lamp"
    # the raw HWC bytes decode to the same pixels (JPEG is lossy: compare loosely, the size exactly)
    from PIL import Image

    with Image.open(data.image_path(0)) as image:
        assert image.size == (6, 8) and image.mode == "RGB"
        assert np.abs(np.asarray(image, dtype=float) - picture(0)).mean() < 6
    # no timestamps: file order is time order, within a line and across lines
    assert list(data.inter_time) == list(range(9))
    split = split_dataset(data, SplitConfig(min_interactions=3))
    u2 = split.user_ids.index("u2")
    assert [data.items[i]["id"] for i in split.sequence(u2)] == ["v2", "v4", "v1", "v3"]


def test_mmsr_lmdb_folder_source_and_subprocess_pickles(tmp_path):
    """Pickles made by a real script run (`python -c`, class defined in __main__), passed as one folder."""
    root = tmp_path / "src"
    sources = mmsr_lmdb_source(root)
    script = textwrap.dedent("""
        import pickle, sys, lmdb, numpy as np
        class LMDB_Image:
            def __init__(self, image, id):
                self.channels = image.shape[2]
                self.size = image.shape[:2]
                self.image = image.tobytes()
                self.id = id
        env = lmdb.open(sys.argv[1], map_size=1 << 26)
        keys = []
        with env.begin(write=True) as txn:
            for i in range(1, 5):
                image = np.full((5, 7, 3), 40 * i, dtype=np.uint8)
                key = str(i).encode("ascii")
                txn.put(key, pickle.dumps(LMDB_Image(image, str(i))))
                keys.append(key)
            txn.put(b"__keys__", pickle.dumps(keys))
            txn.put(b"__len__", pickle.dumps(len(keys)))
        env.close()
    """)
    import shutil

    shutil.rmtree(sources[2])
    subprocess.run([sys.executable, "-c", script, str(sources[2])], check=True)
    assert b"__main__" in lmdb.open(str(sources[2]), readonly=True, lock=False).begin().get(b"1")
    report = import_dataset("mmsr-lmdb", [root], name="lm2")
    assert report.counts["items_with_image"] == 4
    assert any("declares 4 pictures" in note for note in report.notes)
    from PIL import Image

    data = load_dataset("lm2")
    with Image.open(data.image_path(2)) as image:
        assert image.size == (7, 5)
        assert abs(int(np.asarray(image)[2, 3, 0]) - 120) <= 3


def test_mmsr_lmdb_grayscale_and_without_lmdb(tmp_path):
    pictures = {str(i).encode(): main_pickle(LMDB_Image(picture(i, channels=1), str(i))) for i in range(1, 5)}
    sources = mmsr_lmdb_source(tmp_path / "src", pictures=pictures)
    assert import_dataset("mmsr-lmdb", sources, name="gray").counts["items_with_image"] == 4
    report = import_dataset("mmsr-lmdb", sources[:2], name="textonly")
    assert report.counts["items_with_image"] == 0 and not report.has_images


def test_mmsr_lmdb_unknown_item_in_users(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src", users_text="u1\tv1 v2\nu2\tv3 v9 v1\n")
    fails(["DATA_users.tsv:2", "unknown item 'v9'"], "mmsr-lmdb", sources)


def test_mmsr_lmdb_duplicate_item(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src", extra_items="v2\tAnother rug\n")
    fails(["DATA_items.tsv:5", "duplicate item id 'v2'"], "mmsr-lmdb", sources)


def test_mmsr_lmdb_line_without_tab(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src", extra_items="v5 no tab here\n")
    fails(["DATA_items.tsv:5", "no tab"], "mmsr-lmdb", sources)
    sources = mmsr_lmdb_source(tmp_path / "src2", users_text="u1\tv1 v2\nu2 v3 v1\n")
    fails(["DATA_users.tsv:2", "no tab"], "mmsr-lmdb", sources)


def test_mmsr_lmdb_non_utf8(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src")
    sources[0].write_bytes(sources[0].read_bytes() + b"v5\tCaf\xe9 chair\n")
    fails(["DATA_items.tsv:5", "not UTF-8", "0xe9"], "mmsr-lmdb", sources)


def test_mmsr_lmdb_empty_title(tmp_path):
    titles = {**TITLES, "v3": "   "}
    sources = mmsr_lmdb_source(tmp_path / "src", titles=titles)
    fails(["DATA_items.tsv:3", "no text", "--allow-empty-text"], "mmsr-lmdb", sources)
    report = import_dataset("mmsr-lmdb", sources, name="empty-ok", allow_empty_text=True)
    assert report.counts["items_with_text"] == 3 and report.counts["items"] == 4


def _bad_value_source(tmp_path, key: bytes, value: bytes | None) -> list[Path]:
    pictures = {str(i).encode(): main_pickle(LMDB_Image(picture(i), str(i))) for i in range(1, 5)}
    if value is None:
        del pictures[key]
    else:
        pictures[key] = value
    return mmsr_lmdb_source(tmp_path / "src", pictures=pictures)


@pytest.mark.parametrize("case", ["truncated", "length", "missing"])
def test_mmsr_lmdb_bad_picture_follows_the_policy(tmp_path, case):
    good = main_pickle(LMDB_Image(picture(3), "3"))
    if case == "truncated":
        value, fragment = good[: len(good) // 2], "corrupt pickle"
    elif case == "length":
        record = LMDB_Image(picture(3), "3")
        record.size = (9, 6)  # 9*6*3 != 8*6*3 bytes
        value, fragment = main_pickle(record), "144 bytes, size x channels = 9x6x3 = 162"
    else:
        value, fragment = None, "missing LMDB key for item 'v3'"
    sources = _bad_value_source(tmp_path, b"3", value)
    fails(["DATA.lmdb: key '3'", fragment, "--on-bad-image"], "mmsr-lmdb", sources)

    skipped = import_dataset("mmsr-lmdb", sources, name="skip", on_bad_image="skip")
    assert skipped.counts["items_with_image"] == 3 and skipped.counts["items"] == 4
    assert len(skipped.problems) == 1 and fragment in skipped.problems[0]
    assert load_dataset("skip").items[2]["image"] is None

    placeholder = import_dataset("mmsr-lmdb", sources, name="ph", on_bad_image="placeholder")
    assert placeholder.counts["items_with_image"] == 4 and len(placeholder.problems) == 1


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_mmsr_lmdb_refuses_foreign_pickles_whatever_the_policy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sources = _bad_value_source(tmp_path, b"2", pickle.dumps(Evil()))
    for policy in ("error", "skip", "placeholder"):
        fails(["DATA.lmdb: key '2'", "unsafe pickle", "refused to load", "system"], "mmsr-lmdb", sources,
              on_bad_image=policy)
    assert not (tmp_path / "pwned").exists()

    # the right class name with the wrong attribute set is refused too
    record = LMDB_Image(picture(2), "2")
    record.extra = "payload"
    sources = _bad_value_source(tmp_path, b"2", main_pickle(record))
    fails(["unsafe pickle", "unexpected extra"], "mmsr-lmdb", sources, on_bad_image="skip")


def test_safe_unpickler_accepts_only_the_class_shape():
    record = safe_loads(main_pickle(LMDB_Image(picture(1), "1")))
    assert record.size == (8, 6) and record.channels == 3 and record.id == "1"
    for protocol in (3, 4, 5):  # what Python 3 scripts write
        assert safe_loads(main_pickle(LMDB_Image(picture(1), 1), protocol)).id == 1
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load copy_?reg._reconstructor"):
        safe_loads(main_pickle(LMDB_Image(picture(1), 1), 0))  # needs more globals: not accepted
    assert safe_loads(pickle.dumps([b"1", b"2"])) == [b"1", b"2"]
    for hostile in (pickle.dumps(np.zeros(3)), pickle.dumps(Evil()), pickle.dumps(SafeUnpickler)):
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            safe_loads(hostile)


def test_mmsr_lmdb_zero_byte_and_directory_sources(tmp_path):
    sources = mmsr_lmdb_source(tmp_path / "src")
    sources[1].write_bytes(b"")
    fails(["DATA_users.tsv", "empty file (0 bytes)"], "mmsr-lmdb", sources)
    other = tmp_path / "other"
    sources = mmsr_lmdb_source(other)
    sources[0].unlink()
    sources[0].mkdir()
    fails(["DATA_items.tsv", "directory, a file was expected"], "mmsr-lmdb", sources)
    bare = tmp_path / "bare.lmdb"
    bare.mkdir()
    fails(["bare.lmdb", "no data.mdb"], "mmsr-lmdb", [*sources[1:2], tmp_path / "src" / "DATA_items.tsv", bare])


def test_failed_import_keeps_the_existing_dataset(tmp_path):
    good = mmsr_lmdb_source(tmp_path / "good")
    import_dataset("mmsr-lmdb", good, name="keep")
    before = (datasets_root() / "keep" / "meta.json").read_bytes()
    fails(["already exists", "--overwrite"], "mmsr-lmdb", good, name="keep")
    bad = mmsr_lmdb_source(tmp_path / "bad", users_text="u1\tv1 v7\n")
    fails(["unknown item 'v7'"], "mmsr-lmdb", bad, name="keep", overwrite=True)
    assert (datasets_root() / "keep" / "meta.json").read_bytes() == before
    assert sorted(os.listdir(datasets_root())) == ["keep"]  # no temporary directory left
    import_dataset("mmsr-lmdb", mmsr_lmdb_source(tmp_path / "new", users=USERS), name="keep", overwrite=True)
    assert load_dataset("keep").meta["counts"]["interactions"] == 9


# ----------------------------------------------------------------------------- recbole


def recbole_source(root: Path, *, inter: str | None = None, item: str | None = None) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "toy.inter").write_text(inter if inter is not None else (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t5\t300\n1\t11\t3\t100\n2\t10\t4\t100\n1\t12\t4\t100\n2\t12\t1\t50\n"), encoding="utf-8")
    (root / "toy.item").write_text(item if item is not None else (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy  Story\t1995\tAnimation Comedy\n11\tHeat\t1995\tAction\n12\tUnknown Film\t\t\n"), encoding="utf-8")
    (root / "toy.user").write_text("user_id:token\tage:token\n1\t20\n", encoding="utf-8")  # not read, said so
    return [root / "toy.inter", root / "toy.item"]


def test_recbole_roundtrip(tmp_path):
    recbole_source(tmp_path / "src")
    report = import_dataset("recbole", [tmp_path / "src"], name="rb")
    assert report.counts == {"items": 3, "users": 2, "interactions": 5, "items_with_image": 0, "items_with_text": 3}
    assert not report.has_images
    assert [note for note in report.notes if note.startswith("not read:")] == [
        "not read: toy.user (user features, knowledge graph or social links; an item here is its .item text)"]
    data = load_dataset("rb")
    assert data.items[0] == {"id": "10", "title": "Toy Story", "description": "release year: 1995",
                             "category": "Animation, Comedy", "image": None}
    assert data.item_text(2) == "Unknown Film"
    split = split_dataset(data, SplitConfig(min_interactions=3))
    user1 = split.user_ids.index("1")
    # user 1: timestamps 300, 100, 100 -> ties keep file order (11 before 12)
    assert [data.items[i]["id"] for i in split.sequence(user1)] == ["11", "12", "10"]


def test_a_source_folder_that_fills_no_role_is_refused(tmp_path):
    """mmsr-lmdb took a mistyped LMDB folder for nothing: a text-only dataset, "no LMDB given"."""
    sources = mmsr_lmdb_source(tmp_path / "src")
    (tmp_path / "typo").mkdir()
    fails(["typo: a folder with nothing mmsr-lmdb reads in it", "data.mdb"], "mmsr-lmdb",
          [*sources[:2], tmp_path / "typo"])


def test_a_title_written_as_a_number_is_kept(tmp_path):
    sources = amazon_source(tmp_path / "src")
    meta = [json.loads(line) for line in sources[1].read_text().splitlines()]
    meta[0]["title"] = 1984
    sources[1].write_text("".join(json.dumps(record) + "\n" for record in meta))
    import_dataset("amazon2023", sources[:2], name="az-number")
    assert load_dataset("az-number").items[0]["title"] == "1984"


def test_an_input_with_only_its_header_is_named_as_the_input(tmp_path):
    """It was "DATASET: no items" / "no interactions", naming the output that was never written."""
    fails(["no interactions read from pixelrec:", "Pixel200K.csv", "rows below its header"], "pixelrec",
          pixelrec_source(tmp_path / "src", inter="item_id,user_id,timestamp\n"))


def test_overwrite_replaces_only_a_dataset(tmp_path):
    """`--name "" --overwrite` replaced $MMSR_HOME/datasets, every dataset in it, with the new one;
    `--name FOLDER --overwrite` deleted a folder of the user's own."""
    sources = recbole_source(tmp_path / "src")
    import_dataset("recbole", sources, name="keep")
    with pytest.raises(MMSRError, match="an empty name where a name under .*datasets or a path is wanted"):
        import_dataset("recbole", sources, name="", overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(MMSRError, match=r"mine: not replaced: it holds no meta\.json"):
        import_dataset("recbole", sources, name=str(mine), overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert load_dataset("keep").meta["counts"]["items"] == 3
    import_dataset("recbole", sources, name="keep", overwrite=True)  # a dataset is replaced
    (tmp_path / "empty").mkdir()
    import_dataset("recbole", sources, name=str(tmp_path / "empty"), overwrite=True)  # so is an empty folder
    assert load_dataset(tmp_path / "empty").meta["counts"]["items"] == 3


def test_the_working_folder_is_never_an_output_and_the_demo_keeps_only_a_dataset(tmp_path, monkeypatch):
    """`--name .` (or `..`) cannot be renamed into place: refused before anything is written (it
    left a `..lock` file in the folder, and failed on the rename). `data demo --name FOLDER`
    without --overwrite said "already exists; keeping it" of any folder, a dataset or not."""
    from mmsr.data.demo import create_demo

    sources = recbole_source(tmp_path / "src")
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here / "sub")
    for name in (".", "..", str(here)):
        for make in (lambda: import_dataset("recbole", sources, name=name, overwrite=True),
                     lambda: create_demo(name, items=40, users=50, overwrite=True)):
            with pytest.raises(MMSRError, match="is the current folder, or holds it"):
                make()
    assert sorted(p.name for p in here.rglob("*")) == ["sub"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(MMSRError, match=r"mine: not written into: it holds no meta\.json"):
        create_demo(str(mine), items=40, users=50)
    (tmp_path / "empty").mkdir()
    assert create_demo(str(tmp_path / "empty"), items=40, users=50)[1]  # an empty folder is taken
    assert not create_demo(str(tmp_path / "empty"), items=40, users=50)[1]  # and then kept, being a dataset
    assert load_dataset(tmp_path / "empty").meta["counts"]["items"] == 40


def test_recbole_without_timestamp_uses_line_order(tmp_path):
    sources = recbole_source(tmp_path / "src", inter="user_id:token\titem_id:token\n1\t12\n1\t10\n1\t11\n")
    report = import_dataset("recbole", sources, name="rb")
    assert any("line order is time order" in note for note in report.notes)
    assert list(load_dataset("rb").inter_time) == [2.0, 3.0, 4.0]


@pytest.mark.parametrize("inter, fragments", [
    ("user_id:token\titem_id\ttimestamp:float\n1\t10\t1\n", ["toy.inter:1", "'item_id' (column 2) has no type"]),
    ("user_id:token\titem_id:token\ttimestamp:date\n1\t10\t1\n", ["toy.inter:1", "unknown type 'date'"]),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t1\n1\t11\tyesterday\n",
     ["toy.inter:3", "timestamp 'yesterday' is not a number"]),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t1\n1\t99\t2\n", ["toy.inter:3", "unknown item '99'"]),
    ("user_id:token\titem_id:token\ttimestamp:float\n1\t10\n", ["toy.inter:2", "expected 3 tab-separated fields"]),
    ("uid:token\titem_id:token\n1\t10\n", ["toy.inter:1", "no 'user_id' column"]),
])
def test_recbole_bad_inter(tmp_path, inter, fragments):
    fails(fragments, "recbole", recbole_source(tmp_path / "src", inter=inter))


@pytest.mark.parametrize("item, fragments", [
    ("item_id:token\ttitle:token_seq\n10\tA\n11\tB\n10\tC\n", ["toy.item:4", "duplicate item id '10'"]),
    ("item_id:token\ttitle:token_seq\n10\tA\n11\t \n", ["toy.item:3", "no text"]),
    ("item_id:token\ttitle:token_seq\n10\tA\n11\tB\n12\tC\n10", ["toy.item:5", "expected 2 tab-separated"]),
])
def test_recbole_bad_item(tmp_path, item, fragments):
    fails(fragments, "recbole", recbole_source(tmp_path / "src", item=item))


def test_recbole_bad_files(tmp_path):
    sources = recbole_source(tmp_path / "src")
    sources[1].write_bytes(b"item_id:token\ttitle:token_seq\n10\t\xff\xfe\n")
    fails(["toy.item:2", "not UTF-8"], "recbole", sources)
    sources[1].write_bytes(b"")
    fails(["toy.item", "empty file (0 bytes)"], "recbole", sources)
    sources[1].unlink()
    sources[1].mkdir()
    fails(["toy.item", "directory, a file was expected"], "recbole", sources)
    fails(["expected one .item file, found 0"], "recbole", [sources[0]])
    fails(["nowhere.inter", "no such file or directory"], "recbole", [tmp_path / "nowhere.inter", sources[1]])


# ----------------------------------------------------------------------------- amazon2023


def amazon_source(root: Path, *, reviews: list[dict] | None = None, gz: bool = False) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(picture(1)).save(images / "B001.jpg")
    Image.fromarray(picture(2)).save(images / "71xyzAB._SL1500_.png")  # saved under the URL's file name
    meta = [
        {"parent_asin": "B001", "title": "Rose lip balm", "features": ["Soft", "Vegan"], "description": ["Smooth."],
         "categories": ["Beauty", "Lips"], "main_category": "All Beauty", "images": []},
        {"parent_asin": "B002", "title": "Argan hair oil", "features": [], "description": [],
         "categories": [], "main_category": "All Beauty",
         "images": [{"thumb": "https://m.media-amazon.com/images/I/71xyzAB._SS40_.jpg",
                     "large": "https://m.media-amazon.com/images/I/71xyzAB._SL1500_.png", "variant": "MAIN"}]},
        {"parent_asin": "B003", "title": "Bamboo brush", "categories": ["Tools"], "images": []},
        {"parent_asin": "B999", "title": "Never reviewed", "images": []},
    ]
    reviews = reviews if reviews is not None else [
        {"rating": 5.0, "user_id": "AE1", "parent_asin": "B001", "asin": "B001X", "timestamp": 1588687728923},
        {"rating": 4.0, "user_id": "AE1", "parent_asin": "B002", "asin": "B002", "timestamp": 1588615855070},
        {"rating": 2.0, "user_id": "AE2", "parent_asin": "B003", "asin": "B003", "timestamp": 1589000000000},
        {"rating": 3.0, "user_id": "AE2", "parent_asin": "B001", "asin": "B001", "timestamp": 1589000000001},
    ]
    opener = (lambda p: gzip.open(p, "wt", encoding="utf-8")) if gz else (lambda p: open(p, "w", encoding="utf-8"))
    suffix = ".jsonl.gz" if gz else ".jsonl"
    with opener(root / f"All_Beauty{suffix}") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in reviews)
    with opener(root / f"meta_All_Beauty{suffix}") as handle:
        handle.writelines(json.dumps(m) + "\n" for m in meta)
    return [root / f"All_Beauty{suffix}", root / f"meta_All_Beauty{suffix}", images]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2023_roundtrip(tmp_path, gz):
    sources = amazon_source(tmp_path / "src", gz=gz)
    report = import_dataset("amazon2023", sources, name="az", on_bad_image="placeholder")
    assert report.counts == {"items": 3, "users": 2, "interactions": 4, "items_with_image": 3, "items_with_text": 3}
    assert len(report.problems) == 1 and "no picture for item 'B003'" in report.problems[0]
    assert any("1 items of meta_All_Beauty" in note for note in report.notes)
    data = load_dataset("az")
    assert data.items[0] == {"id": "B001", "title": "Rose lip balm", "description": "Soft Vegan Smooth.",
                             "category": "Beauty > Lips", "image": "images/B001.jpg"}
    assert data.items[1]["category"] == "All Beauty"
    fails(["meta_All_Beauty", ":3", "no picture for item 'B003'"], "amazon2023", sources)
    text_only = import_dataset("amazon2023", sources[:2], name="az-text")
    assert text_only.counts["items_with_image"] == 0


def test_a_truncated_or_false_gzip_file_is_named(tmp_path):
    """A cut-short .gz raised EOFError, which click took for Ctrl-D: "interrupted ... rerun the
    command to resume", naming no file; a plain file named .gz gave a traceback."""
    sources = amazon_source(tmp_path / "src", gz=True)
    whole = sources[1].read_bytes()
    sources[1].write_bytes(whole[: len(whole) // 2])
    fails(["meta_All_Beauty.jsonl.gz", "not a whole gzip file (EOFError", "uncompressed file"], "amazon2023",
          sources, on_bad_image="skip")
    sources[1].write_bytes(b'{"parent_asin": "B001"}\n')
    fails(["meta_All_Beauty.jsonl.gz", "not a whole gzip file (BadGzipFile"], "amazon2023", sources,
          on_bad_image="skip")


def test_amazon2023_bad_input(tmp_path):
    base = {"user_id": "AE1", "parent_asin": "B001", "timestamp": 1}
    fails(["All_Beauty.jsonl:2", "timestamp 'soon' is not a number"], "amazon2023",
          amazon_source(tmp_path / "a", reviews=[base, {**base, "timestamp": "soon"}]), on_bad_image="skip")
    fails(["All_Beauty.jsonl:2", "unknown item 'B404'"], "amazon2023",
          amazon_source(tmp_path / "b", reviews=[base, {**base, "parent_asin": "B404"}]), on_bad_image="skip")
    fails(["All_Beauty.jsonl:1", "missing or empty 'user_id'"], "amazon2023",
          amazon_source(tmp_path / "c", reviews=[{**base, "user_id": ""}]))
    sources = amazon_source(tmp_path / "d")
    sources[0].write_text(json.dumps(base) + "\n{not json\n", encoding="utf-8")
    fails(["All_Beauty.jsonl:2", "malformed JSON"], "amazon2023", sources)
    sources[0].write_bytes(b"")
    fails(["All_Beauty.jsonl", "empty file"], "amazon2023", sources)


# ----------------------------------------------------------------------------- pixelrec


def pixelrec_source(root: Path, *, inter: str | None = None, with_covers: bool = True) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "Pixel200K.csv").write_text(inter if inter is not None else (
        "item_id,user_id,timestamp\ni1,u1,30\ni2,u1,10\ni3,u2,5\ni1,u2,6\ni2,u2,7\n"), encoding="utf-8")
    (root / "item_info.csv").write_text(
        "item_id,view_number,title,tag,description\n"
        'i1,10,"Cats, dogs and more",Pets,Funny pets\n'
        "i2,3,Mountain hike,Travel,\n"
        "i3,0,Cooking pasta,Food,Quick dinner\n"
        "i9,0,Never watched,Misc,\n", encoding="utf-8")
    sources = [root / "item_info.csv", root / "Pixel200K.csv"]  # any order
    if with_covers:
        covers = root / "covers"
        covers.mkdir(exist_ok=True)
        for i, item in enumerate(("i1", "i2", "i3")):
            Image.fromarray(picture(i)).save(covers / f"{item}.jpg")
        sources.append(covers)
    return sources


def test_pixelrec_roundtrip(tmp_path):
    report = import_dataset("pixelrec", pixelrec_source(tmp_path / "src"), name="px")
    assert report.counts == {"items": 3, "users": 2, "interactions": 5, "items_with_image": 3, "items_with_text": 3}
    data = load_dataset("px")
    assert data.items[0]["title"] == "Cats, dogs and more" and data.items[0]["category"] == "Pets"
    split = split_dataset(data, SplitConfig(min_interactions=3))
    assert [data.items[i]["id"] for i in split.sequence(split.user_ids.index("u2"))] == ["i3", "i1", "i2"]


def test_pixelrec_microlens_tab_separated_without_timestamp(tmp_path):
    root = tmp_path / "ml"
    root.mkdir()
    (root / "pairs.tsv").write_text("user\titem\n7\t100\n7\t101\n", encoding="utf-8")
    (root / "titles.csv").write_text("item,title\n100,A video\n101,Another\n", encoding="utf-8")
    report = import_dataset("pixelrec", [root / "pairs.tsv", root / "titles.csv"], name="mlens")
    assert report.counts["interactions"] == 2 and not report.has_images


def test_pixelrec_bad_input(tmp_path):
    sources = pixelrec_source(tmp_path / "a", inter="item_id,user_id,timestamp\ni1,u1,30\ni2,u1,noon\n")
    fails(["Pixel200K.csv:3", "timestamp 'noon' is not a number"], "pixelrec", sources)
    sources = pixelrec_source(tmp_path / "b", inter="item_id,user_id,timestamp\ni1,u1,30\ni7,u1,31\n")
    fails(["Pixel200K.csv:3", "unknown item 'i7'"], "pixelrec", sources)
    sources = pixelrec_source(tmp_path / "c")
    (sources[2] / "i2.jpg").unlink()
    fails(["item_info.csv:3", "no cover for item 'i2'"], "pixelrec", sources)
    assert import_dataset("pixelrec", sources, name="ok", on_bad_image="skip").counts["items_with_image"] == 2
    (sources[2] / "i3.jpg").write_bytes(b"not a jpeg")
    fails(["item_info.csv:3", "no cover for item 'i2'"], "pixelrec", sources, name="y")
    (sources[2] / "i2.jpg").write_bytes((sources[2] / "i1.jpg").read_bytes())
    fails(["item_info.csv:4", "unreadable image for item 'i3'"], "pixelrec", sources, name="y")
    sources = pixelrec_source(tmp_path / "d", inter="item_id,user_id,timestamp\ni1,u1\n")
    fails(["Pixel200K.csv:2", "expected 3 fields"], "pixelrec", sources)
    sources = pixelrec_source(tmp_path / "e", inter="a,b,c\n1,2,3\n")
    fails(["Pixel200K.csv:1", "neither a user nor a title column"], "pixelrec", sources)


def test_pixelrec_quote_left_open_is_named_where_its_record_starts(tmp_path):
    """A quote never closed (a file cut short inside a quoted field) is named on the line it opens;
    before, the field swallowed every line after it and the items on them went missing. A quoted
    field over two lines stays one field, its line break a space in the title (it glued the words)."""
    sources = pixelrec_source(tmp_path / "a")
    text = sources[0].read_text(encoding="utf-8")
    sources[0].write_text(text.replace('"Cats, dogs and more"', '"Cats, dogs and more'), encoding="utf-8")
    fails(["item_info.csv:2", "unexpected end of data", "close it"], "pixelrec", sources)
    sources[0].write_text(text.replace('"Cats, dogs and more"', '"Cats, dogs\nand more"'), encoding="utf-8")
    import_dataset("pixelrec", sources, name="two-lines")
    assert load_dataset("two-lines").items[0]["title"] == "Cats, dogs and more"


# ----------------------------------------------------------------------------- the CLI


def test_cli_import_prints_a_summary(tmp_path):
    import typer
    from typer.testing import CliRunner

    from mmsr_cli.data_import import import_

    app = typer.Typer()
    app.command("import")(import_)
    app.command("noop")(lambda: None)  # keep a group, as under `mmsr data`
    runner = CliRunner()
    help_text = runner.invoke(app, ["import", "--help"]).output
    for name in formats():
        assert name in help_text
    sources = recbole_source(tmp_path / "src")
    result = runner.invoke(app, ["import", "recbole", "--name", "cli-rb", *map(str, sources)])
    assert result.exit_code == 0, result.output
    assert "interactions" in result.output and "no problems found" in result.output
    assert "no images: train text-only models" in result.output
    result = runner.invoke(app, ["import", "recbole", "--name", "cli-rb", *map(str, sources)])
    assert isinstance(result.exception, MMSRError) and "already exists" in str(result.exception)
    result = runner.invoke(app, ["import", "nope", "--name", "z", "x"])
    assert result.exit_code == 2


# ----------------------------------------------------------------------------- MovieLens-100K


RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
ML100K = "recbole/dataset_example/ml-100k/"


def _recbole_wheel() -> Path:
    """The recbole 1.2.1 wheel, which ships ml-100k in RecBole's format (GroupLens forbids redistributing it,
    so the repository does not carry the files). Looked up in $MMSR_TEST_CACHE (default
    ~/.cache/mmsr-test), else fetched once into it with `pip download` from the package registry
    (the only test that asks the registry for anything; MMSR_TEST_NO_DOWNLOAD=1 forbids it)."""
    cache = Path(os.environ.get("MMSR_TEST_CACHE") or Path.home() / ".cache" / "mmsr-test")
    wheel = cache / RECBOLE_WHEEL
    if wheel.is_file():
        return wheel
    if os.environ.get("MMSR_TEST_NO_DOWNLOAD"):
        pytest.skip(f"ml-100k needs {wheel} (MMSR_TEST_NO_DOWNLOAD is set: not downloading it)")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                               "recbole==1.2.1", "-d", str(cache)], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"ml-100k needs the recbole==1.2.1 wheel; pip download failed: {error}")
    if done.returncode != 0 or not wheel.is_file():
        pytest.skip("ml-100k needs the recbole==1.2.1 wheel (put it in $MMSR_TEST_CACHE); pip download failed: "
                    + (done.stderr.strip().splitlines() or ["no output"])[-1])
    return wheel


@pytest.fixture(scope="session")
def ml100k(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ml-100k")
    with zipfile.ZipFile(_recbole_wheel()) as wheel:
        for name in ("ml-100k.inter", "ml-100k.item"):
            (root / name).write_bytes(wheel.read(ML100K + name))
    return root


def test_movielens_100k_from_the_recbole_wheel(ml100k):
    report = import_dataset("recbole", [ml100k], name="ml-100k")
    assert report.counts == {"items": 1682, "users": 943, "interactions": 100_000, "items_with_image": 0,
                             "items_with_text": 1682}
    assert report.problems == []
    data = load_dataset("ml-100k")
    assert data.items[data.item_index["1"]]["title"] == "Toy Story"
    assert data.items[data.item_index["267"]]["title"] == "unkonwn"  # sic, as shipped

    # ties on (user, timestamp) keep file order
    rows = [line.split("\t") for line in (ml100k / "ml-100k.inter").read_text().splitlines()[1:]]
    expected = [r[1] for r in sorted((r for r in rows if r[0] == "1"), key=lambda r: float(r[3]))]
    split = split_dataset(data, SplitConfig())
    assert [data.items[i]["id"] for i in split.sequence(split.user_ids.index("1"))] == expected

    from typer.testing import CliRunner

    from mmsr_cli.data import app

    result = CliRunner().invoke(app, ["info", "ml-100k", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100_000)
    assert info["raw"] == {"users": 943, "interactions": 100_000}
    assert info["items_with_image"] == 0 and info["items_with_text"] == 1682
