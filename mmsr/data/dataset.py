"""The canonical dataset: one directory per dataset, written atomically, validated on read.

    NAME/
      meta.json           schema_version, name, source, counts, content_hash, text_fields, problems;
                          duplicate_users when an import's --duplicate-users merge|last acted
      items.jsonl         one JSON object per line: {"id", "title", "description", "category", "image"}
      interactions.tsv    header `user<TAB>item<TAB>timestamp`, one interaction per line
      images/             the pictures; `image` in items.jsonl is a path relative to NAME/

Every text field is a string ("" when absent); `image` is null for an item without a picture.
Readers report problems by file and line; writers refuse duplicate items, unknown items
and empty texts, and apply the `on_bad_image` policy to pictures.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from mmsr import paths
from mmsr.atomic import atomic_dir, atomic_write_text, staged_dir
from mmsr.data.item_table import ItemTable
from mmsr.data.textfile import iter_json_lines_at, iter_lines
from mmsr.errors import MMSRError
from mmsr.json_files import read_json_object
from mmsr_store.errors import out_of_space_guard

SCHEMA_VERSION = 1
META_FILE = "meta.json"  # every canonical dataset has it; --overwrite replaces only a folder that does
TEXT_FIELDS = ("title", "description", "category")
BadImagePolicy = Literal["error", "skip", "placeholder"]
BAD_IMAGE_POLICIES = ("error", "skip", "placeholder")
DuplicateUsersPolicy = Literal["error", "merge", "last"]
DUPLICATE_USERS_POLICIES = ("error", "merge", "last")
PLACEHOLDER_RGB = (128, 128, 128)


def placeholder_picture(size: int = 224):
    """The grey picture that stands in for an unreadable one under on_bad_image=placeholder."""
    from PIL import Image  # deferred: reading interactions and texts should not need Pillow

    return Image.new("RGB", (size, size), PLACEHOLDER_RGB)


@dataclass
class Dataset:
    """A loaded canonical dataset. Interactions are kept as compact arrays, in file order."""

    root: Path
    meta: dict
    items: ItemTable  # a sequence of item dicts, parsed from items.jsonl when read
    item_index: dict[str, int]
    user_ids: list[str]
    inter_user: np.ndarray  # int64 index into user_ids
    inter_item: np.ndarray  # int64 index into items
    inter_time: np.ndarray  # float64 timestamps
    # What start-up needs of every item, kept from the one parse at load so that no command
    # re-reads items.jsonl for it: category codes into `category_names`, and the picture count.
    category_codes: np.ndarray
    category_names: list[str]
    pictures: int
    text_fields: tuple[str, ...] = TEXT_FIELDS

    @property
    def name(self) -> str:
        return self.meta.get("name", self.root.name)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def item_text(self, index: int, fields: Iterable[str] | None = None) -> str:
        """The text an encoder sees: the non-empty fields joined with '. '."""
        item = self.items[index]
        parts = [str(item.get(name) or "").strip() for name in (fields or self.text_fields)]
        return ". ".join(part for part in parts if part)

    def image_path(self, index: int) -> Path | None:
        ref = self.items[index].get("image")
        return None if ref is None else self.root / ref

    def item_ids(self) -> list[str]:
        return list(self.item_index)  # insertion order is file order

    def item_categories(self) -> list[str]:
        return [self.category_names[code] for code in self.category_codes.tolist()]

    def item_field(self, name: str) -> list[str]:
        """Every item's text field `name` ("" where it has none), in item order. The category
        comes from the codes kept at load; other fields read items.jsonl in one pass."""
        if name == "category":
            return self.item_categories()
        return [str(item.get(name) or "") for item in self.items]

    def has_pictures(self) -> bool:
        return self.pictures > 0

    def encoder_input(self, index: int, modality: str, fields: Iterable[str] | None,
                      on_bad_image: BadImagePolicy = "error", size: int = 224) -> tuple[object, str | None]:
        """(what the `modality` encoder reads of an item, problem or None): its text, its picture
        (None when it has none), or (text, picture) for a joint model. The cache build and the
        end-to-end feed both read items here; each decides what a problem does to it."""
        if modality == "text":
            return self.item_text(index, fields), None
        if modality == "joint":
            return self.load_text_and_picture(index, fields, on_bad_image, size)
        if modality == "image":
            return self.load_picture(index, on_bad_image, size)
        raise ValueError(f"unknown modality {modality!r}: text, image or joint")

    def load_text_and_picture(self, index: int, fields: Iterable[str] | None, on_bad_image: BadImagePolicy = "error",
                              size: int = 224):
        """((text, picture), problem or None): what a one-stream (joint) model reads of an item.

        Such a model cannot leave the picture out, so an item without a readable picture gets the
        grey placeholder whatever the policy; the caller still stops on a problem under "error".
        """
        picture, problem = self.load_picture(index, on_bad_image, size)
        return (self.item_text(index, fields), picture if picture is not None else placeholder_picture(size)), problem

    def load_picture(self, index: int, on_bad_image: BadImagePolicy = "error", size: int = 224):
        """(RGB picture or None, problem or None) for one item.

        An item without a picture gives (None, None). An unreadable file gives a problem and,
        under "placeholder", a grey picture of `size`; under "skip" and "error" no picture (the
        caller decides whether a problem stops it). The cache build and the end-to-end feed
        both read pictures here, so they see the same pixels and the same policy.
        """
        from PIL import Image  # deferred: reading interactions and texts should not need Pillow

        path = self.image_path(index)
        if path is None:
            return None, None
        try:
            with Image.open(path) as picture:
                picture.load()
                return picture.convert("RGB"), None
        except Exception as error:  # PIL raises many types for corrupt or missing pictures
            problem = f"item {self.items[index]['id']!r}: unreadable image {path}: {type(error).__name__}: {error}"
            return (placeholder_picture(size) if on_bad_image == "placeholder" else None), problem


# ----------------------------------------------------------------------------- writing


class DatasetWriter:
    """Streams a dataset into a temporary directory; `close()` validates and renames it into place.

    Items must be added before the interactions that name them. Use as a context manager:
    an exception inside the block removes the temporary directory and leaves any existing
    dataset of that name untouched. A full disk raises `OutOfSpaceError` naming the dataset.

    With `staging` (a fixed path), the writer can resume instead: the block writes into
    `staging`, `checkpoint()` records a point the caller can regenerate from in the JSON file
    `checkpoint_file(staging)` beside it, `restore()` returns to it, a failure keeps `staging`
    whenever that file exists, and success removes both (the demo generator; mmsr/data/demo.py).

    Importers set `items_path` (the file the items came from) so that an interaction naming an
    unknown item says which file should have listed it, and read `duplicate_users` (the
    policy for a user with more than one line, where a format has one line per user) and
    append to `merged_users` what that policy did; both end up in meta.json.
    """

    def __init__(self, dest: Path, *, name: str | None = None, source: str = "unknown",
                 on_bad_image: BadImagePolicy = "error", overwrite: bool = False,
                 allow_empty_text: bool = False, duplicate_users: DuplicateUsersPolicy = "error",
                 staging: Path | None = None, extra_meta: dict | None = None):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise MMSRError(f"unknown --on-bad-image policy {on_bad_image!r}", hint="use error, skip or placeholder")
        if duplicate_users not in DUPLICATE_USERS_POLICIES:
            raise MMSRError(f"unknown --duplicate-users policy {duplicate_users!r}", hint="use error, merge or last")
        self.dest = Path(dest)
        self.name = name or self.dest.name
        self.source = source
        self.extra_meta = dict(extra_meta or {})  # a writer's own record (the demo's generator options)
        self.on_bad_image = on_bad_image
        self.allow_empty_text = allow_empty_text
        self.duplicate_users = duplicate_users
        self.items_path: Path | None = None
        self.merged_users: list[dict] = []
        self.staging = staging
        self.checkpoints = checkpoint_file(staging) if staging is not None else None
        self._atomic = (staged_dir(self.dest, staging, overwrite=overwrite, made_by=META_FILE) if staging is not None
                        else atomic_dir(self.dest, overwrite=overwrite, made_by=META_FILE))
        self.problems: list[str] = []
        self._item_index: dict[str, int] = {}
        self._users: set[str] = set()
        self._n_inter = 0
        self._with_image = 0
        self._with_text = 0

    def _space(self):
        """A full disk anywhere in the writer -> one error naming the dataset being written. A
        dataset is all-or-nothing (or, staged, resumed), so the hint says which."""
        done = ("what was written up to the last checkpoint is kept in " + str(self.staging) + " and the rerun "
                "goes on from there" if self._resumable() else "nothing of this dataset was written")
        return out_of_space_guard(self.dest, hint=f"free some space and rerun the command: {done}, and an "
                                                  "existing dataset of that name is unchanged")

    def __enter__(self) -> "DatasetWriter":
        with self._space():
            self.tmp = self._atomic.__enter__()
            try:
                (self.tmp / "images").mkdir(exist_ok=True)
                # Appending: a staged writer's `restore` cuts the files back to its checkpoint.
                self._items_fh = open(self.tmp / "items.jsonl", "a", encoding="utf-8")
                self._inter_fh = open(self.tmp / "interactions.tsv", "a", encoding="utf-8")
                if not self._inter_fh.tell():
                    self._inter_fh.write("user\titem\ttimestamp\n")
            except BaseException as error:  # __exit__ will not run: remove the temporary directory here
                self._close_files()
                self._atomic.__exit__(type(error), error, error.__traceback__)
                raise
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is not None:
            return self._abandon(kind, value, tb)
        try:
            with self._space():
                self._finish()
        except BaseException as error:
            self._abandon(type(error), error, error.__traceback__)
            raise
        suppressed = bool(self._atomic.__exit__(None, None, None))
        if self.checkpoints is not None:  # in place: nothing left to resume
            self.checkpoints.unlink(missing_ok=True)
        return suppressed

    def _abandon(self, kind, value, tb) -> bool:
        """Stop on an error: the temporary directory goes, or a staging folder stays to resume
        from (unless it holds no checkpoint: then it only takes space)."""
        self._close_files()
        if self.staging is not None and not self._resumable():
            shutil.rmtree(self.staging, ignore_errors=True)
        return bool(self._atomic.__exit__(kind, value, tb))

    def _resumable(self) -> bool:
        """A staging folder with a checkpoint to go on from (this run's, or the one it resumed)."""
        return self.checkpoints is not None and self.checkpoints.is_file()

    def _close_files(self) -> None:
        """Close without flushing errors: the temporary directory is about to be removed (what a
        staging folder keeps was flushed at its checkpoint), and a second ENOSPC from the flush
        must not hide the error that stopped the writer."""
        for handle in (getattr(self, "_items_fh", None), getattr(self, "_inter_fh", None)):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()

    # -- resuming (staged writers)
    def checkpoint(self, **place) -> None:
        """Flush the tables to disk, then record in `checkpoints` (JSON, replaced whole) what
        `restore` needs to come back here, beside the caller's `place` (its own position).
        Survives a kill or a full disk; the pictures are not fsynced, so not a power loss."""
        with self._space():
            for handle in (self._items_fh, self._inter_fh):
                handle.flush()
                os.fsync(handle.fileno())
            mine = {"items_bytes": self._items_fh.tell(), "interactions_bytes": self._inter_fh.tell(),
                    "interactions": self._n_inter, "with_image": self._with_image, "with_text": self._with_text,
                    "problems": list(self.problems)}
            atomic_write_text(self.checkpoints, json.dumps({**place, "writer": mine}))

    def restore(self, checkpoint: dict, item_ids: list[str], users: Iterable[str]) -> None:
        """Back to `checkpoint` (what `checkpoint()` recorded, read back): the files cut to its
        length, the counts as they were. `item_ids` and `users` are those written by then, in
        order; the caller regenerates them rather than the checkpoint storing millions of ids."""
        if self.staging is None:
            raise ValueError("only a staged DatasetWriter can be restored")
        state = checkpoint["writer"]
        for handle, size in ((self._items_fh, state["items_bytes"]), (self._inter_fh, state["interactions_bytes"])):
            handle.flush()
            if handle.tell() < size:
                raise MMSRError(f"{Path(handle.name).name} is shorter than its checkpoint says", where=self.tmp,
                                hint="delete that folder and rerun: it starts again")
            handle.truncate(size)
            handle.seek(size)
        self._item_index = {item_id: index for index, item_id in enumerate(item_ids)}
        self._users = set(users)
        self._n_inter, self._with_image, self._with_text = (state["interactions"], state["with_image"],
                                                           state["with_text"])
        self.problems = list(state["problems"])

    # -- items
    def add_item(self, item_id: str, *, title: str = "", description: str = "", category: str = "",
                 image: "bytes | Path | object | None" = None, where: str | None = None, **extra_text: str) -> None:
        """Add one item. `image` is encoded bytes, a file path, a PIL image, or None."""
        item_id = str(item_id).strip()
        where = where or f"item {item_id!r}"
        if not item_id:
            raise MMSRError("empty item id", where=where)
        if item_id in self._item_index:
            raise MMSRError(f"duplicate item id {item_id!r}", where=where, hint="item ids must be unique")
        with self._space():
            self._add_item(item_id, title, description, category, image, where, extra_text)

    def _add_item(self, item_id, title, description, category, image, where, extra_text) -> None:
        texts = {"title": title, "description": description, "category": category, **extra_text}
        texts = {key: " ".join(str(value or "").split()) for key, value in texts.items()}
        if not any(texts.values()):
            if not self.allow_empty_text:
                raise MMSRError(f"item {item_id!r} has no text (empty title)", where=where,
                                hint="fix the source, or import with --allow-empty-text")
        else:
            self._with_text += 1
        record = {"id": item_id, **texts, "image": self._store_image(item_id, image, where)}
        self._item_index[item_id] = len(self._item_index)
        self._items_fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _store_image(self, item_id: str, image, where: str) -> str | None:
        if image is None:
            return None
        from PIL import Image

        try:
            if isinstance(image, Image.Image):
                picture = image
            elif isinstance(image, (bytes, bytearray)):
                picture = Image.open(io.BytesIO(image))
            else:
                picture = Image.open(Path(image))
            picture.load()
            picture = picture.convert("RGB")
        except Exception as error:  # PIL raises many types for corrupt or missing pictures
            reason = f"unreadable image for item {item_id!r}: {type(error).__name__}: {error}"
            if self.on_bad_image == "error":
                raise MMSRError(reason, where=where, hint="fix the picture, or use --on-bad-image skip|placeholder") from None
            self.problems.append(reason + f" -> {self.on_bad_image}")
            if self.on_bad_image == "skip":
                return None
            picture = placeholder_picture()
        ref = f"images/{_safe_name(item_id)}.jpg"
        picture.save(self.tmp / ref, format="JPEG", quality=92)
        self._with_image += 1
        return ref

    # -- interactions
    def add_interaction(self, user: str, item_id: str, timestamp: float, *, where: str | None = None) -> None:
        user = str(user).strip()
        item_id = str(item_id).strip()
        if item_id not in self._item_index:
            if self.items_path is None:
                raise MMSRError(f"unknown item {item_id!r} in interactions", where=where or f"user {user!r}",
                                hint="every interaction must name an item of the items table")
            raise MMSRError(f"unknown item {item_id!r}, not listed in the items file {self.items_path}",
                            where=where or f"user {user!r}", hint="add it there, or drop this line")
        if not user or "\t" in user or "\n" in user:
            raise MMSRError(f"bad user id {user!r}", where=where)
        if not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp):
            raise MMSRError(f"timestamp {timestamp!r} is not a finite number", where=where)
        try:  # the hot loop of an import: a bare try costs nothing, a context manager per line would
            self._inter_fh.write(f"{user}\t{item_id}\t{_format_time(timestamp)}\n")
        except OSError:
            with self._space():
                raise
        self._users.add(user)
        self._n_inter += 1

    def _finish(self) -> None:
        # Named by what was read, not by the dataset that was to be written (the input is at fault).
        # Interactions first: an importer that keeps only the items someone chose has none without them.
        if not self._n_inter:
            raise MMSRError(f"no interactions read from {self.source}",
                            hint="check that the interactions file has rows below its header")
        if not self._item_index:
            raise MMSRError(f"no items read from {self.source}", where=self.items_path or self.dest,
                            hint="check that the items file has rows below its header")
        self._items_fh.close()
        self._inter_fh.close()
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "source": self.source,
            "text_fields": list(TEXT_FIELDS),
            "counts": {
                "items": len(self._item_index),
                "users": len(self._users),
                "interactions": self._n_inter,
                "items_with_image": self._with_image,
                "items_with_text": self._with_text,
            },
            "problems": self.problems,
            "content_hash": content_hash(self.tmp),
        }
        if self.merged_users:  # only when a policy acted, so that other datasets' meta.json stays as it was
            meta["duplicate_users"] = self.merged_users
        meta.update(self.extra_meta)
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def checkpoint_file(staging: Path) -> Path:
    """Where a staged DatasetWriter records its checkpoint: `.NAME.partial` -> `.NAME.partial.json`."""
    return staging.parent / f"{staging.name}.json"


def _safe_name(item_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item_id)
    if safe != item_id:  # keep distinct ids distinct after sanitising
        safe += "-" + hashlib.sha1(item_id.encode()).hexdigest()[:8]
    return safe


def _format_time(timestamp: float) -> str:
    return str(int(timestamp)) if float(timestamp).is_integer() else repr(float(timestamp))


def content_hash(root: Path) -> str:
    """sha256 over the tables and every picture, in a fixed order."""
    digest = hashlib.sha256()
    for name in ("items.jsonl", "interactions.tsv"):
        digest.update(name.encode())
        with open(root / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    images = root / "images"
    if images.is_dir():
        for picture in sorted(images.iterdir()):
            digest.update(picture.name.encode())
            digest.update(picture.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading


def load_dataset(name_or_path: str | Path, *, check_images: bool = True) -> Dataset:
    root = paths.dataset_dir(name_or_path)
    if not root.exists():
        raise MMSRError("dataset not found", where=root,
                        hint="create it with `mmsr data demo` or `mmsr data import`, or check $MMSR_HOME")
    if not root.is_dir():
        raise MMSRError("a dataset is a directory, this is a file", where=root)
    meta = _read_meta(root / META_FILE)
    items, item_index, columns = _read_items(root / "items.jsonl", root, check_images)
    user_ids, inter_user, inter_item, inter_time = _read_interactions(root / "interactions.tsv", item_index)
    fields = tuple(meta.get("text_fields") or TEXT_FIELDS)
    return Dataset(root, meta, items, item_index, user_ids, inter_user, inter_item, inter_time, *columns, fields)


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise MMSRError("missing meta.json: not a canonical mmsr dataset", where=path.parent,
                        hint=f"if it holds raw files, import them: `mmsr data import FORMAT {path.parent} --name NAME` "
                             "(`mmsr data import --help` lists the formats)")
    meta = read_json_object(path, remake="re-create the dataset: `mmsr data demo` or `mmsr data import` with "
                                         "--overwrite")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MMSRError(f"schema_version {version!r}, this mmsr reads {SCHEMA_VERSION}", where=path,
                        hint="re-create the dataset with this version of mmsr")
    return meta


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise MMSRError("missing file", where=path)
    return path


def _read_items(path: Path, root: Path, check_images: bool) -> tuple[ItemTable, dict[str, int], tuple]:
    """Every item is parsed and checked once here; afterwards only its byte span is kept, and
    the columns `Dataset` keeps: (category codes, category names, picture count)."""
    index: dict[str, int] = {}
    starts, ends = array("q"), array("q")  # 8 bytes an item, not a Python int's 36
    codes, names, pictures = array("i"), {}, 0
    for where, item, (start, end) in iter_json_lines_at(_require_file(path)):
        if not isinstance(item.get("id"), str) or not item["id"]:
            raise MMSRError("an item needs a non-empty string \"id\"", where=where)
        if item["id"] in index:
            raise MMSRError(f"duplicate item id {item['id']!r}", where=where)
        ref = item.get("image")
        if ref is not None and check_images and not (root / ref).is_file():
            raise MMSRError(f"missing image file {ref!r} for item {item['id']!r}", where=where,
                            hint="restore the file, or re-import with --on-bad-image skip|placeholder")
        index[item["id"]] = len(starts)
        starts.append(start)
        ends.append(end)
        codes.append(names.setdefault(str(item.get("category") or ""), len(names)))
        pictures += bool(ref)
    if not starts:
        raise MMSRError("no items", where=path)
    table = ItemTable(path, np.frombuffer(starts, dtype=np.int64), np.frombuffer(ends, dtype=np.int64))
    return table, index, (np.frombuffer(codes, dtype=np.int32), list(names), pictures)


# The fast reader parses this many bytes at a time (whole lines), bounding its memory: each
# block's fields briefly live as Python bytes objects, about 8x the block. Loading HM's 6.2M
# interactions (AMD EPYC, one thread): 64 MB blocks peak at 977 MB, 16 MB at 477 MB, 8 MB at
# 440 MB, all in the same 17-21 s.
READ_BLOCK_BYTES = 16 << 20
HEADER = b"user\titem\ttimestamp"


def _read_interactions(path: Path, item_index: dict[str, int]):
    """(user ids in order of first appearance, user, item and time columns). A well-formed table
    is parsed a block at a time with C-level splits (seconds for millions of lines); anything
    unusual (a bad line, a blank line, CRLF, a BOM) goes to the line-by-line reader, which names
    the file and line of the problem."""
    fast = _parse_interactions_fast(_require_file(path), item_index)
    return fast if fast is not None else _read_interactions_by_line(path, item_index)


def _parse_interactions_fast(path: Path, item_index: dict[str, int]):
    users: dict[str, int] = {}
    user_cols, item_cols, time_cols = [], [], []
    with open(path, "rb") as handle:
        if handle.readline() != HEADER + b"\n":
            return None
        rest = b""
        while True:
            block = handle.read(READ_BLOCK_BYTES)
            data = rest + block
            if not block:
                if data:  # a last line without its line break
                    return None
                break
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            if not data:
                continue
            columns = _parse_block(data, users, item_index)
            if columns is None:
                return None
            for out, column in zip((user_cols, item_cols, time_cols), columns):
                out.append(column)
    if not user_cols:
        return None
    return (list(users), np.concatenate(user_cols), np.concatenate(item_cols), np.concatenate(time_cols))


def _parse_block(data: bytes, users: dict[str, int], item_index: dict[str, int]):
    """Whole lines -> (user, item, time) arrays, or None if any line is not exactly three non-empty
    tab-separated UTF-8 fields naming a known item with a numeric time."""
    raw = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(raw == 10)
    tabs = np.flatnonzero(raw == 9)
    # Exactly two tabs per line, and no blank line, CR or NUL: then a plain split lines up the fields.
    per_line = np.diff(np.searchsorted(tabs, breaks), prepend=0)
    if (per_line != 2).any() or (raw == 13).any() or (raw == 0).any():
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields = data.replace(b"\n", b"\t").split(b"\t")
    user_names, item_names, stamps = fields[0:-1:3], fields[1::3], fields[2::3]
    if not all(user_names):
        return None
    try:
        time_col = np.array(stamps, dtype=np.float64)
        item_col = _codes(item_names, lambda names: [item_index[name] for name in names])
    except (KeyError, ValueError):
        return None
    # New users are numbered in the order they first appear, as the line-by-line reader does.
    user_col = _codes(user_names, lambda names: [users.setdefault(name, len(users)) for name in names])
    return user_col, item_col, time_col


def _codes(names: list[bytes], lookup) -> np.ndarray:
    """`lookup` applied to each (decoded) name, through the distinct names only (a sort in C), which
    are looked up in order of first appearance. Fixed-width bytes sort fastest; no name holds a NUL."""
    distinct, first, inverse = np.unique(np.array(names), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    codes = np.empty(len(distinct), dtype=np.int64)
    codes[order] = lookup([name.decode("utf-8") for name in distinct[order].tolist()])
    return codes[inverse.reshape(-1)]


def _read_interactions_by_line(path: Path, item_index: dict[str, int]):
    users: dict[str, int] = {}
    user_col: list[int] = []
    item_col: list[int] = []
    time_col: list[float] = []
    for number, line in iter_lines(_require_file(path)):
        if number == 1:
            if line.split("\t") != ["user", "item", "timestamp"]:
                raise MMSRError("header must be user<TAB>item<TAB>timestamp", where=f"{path}:1")
            continue
        if not line:
            continue
        parts = line.split("\t")
        where = f"{path}:{number}"
        if len(parts) != 3:
            raise MMSRError(f"expected 3 tab-separated fields, found {len(parts)}", where=where)
        user, item, stamp = parts
        if item not in item_index:
            raise MMSRError(f"unknown item {item!r}", where=where, hint="every interaction must name an item of items.jsonl")
        try:
            time = float(stamp)
        except ValueError:
            raise MMSRError(f"timestamp {stamp!r} is not a number", where=where) from None
        user_col.append(users.setdefault(user, len(users)))
        item_col.append(item_index[item])
        time_col.append(time)
    if not user_col:
        raise MMSRError("no interactions", where=path)
    return (list(users), np.asarray(user_col, dtype=np.int64), np.asarray(item_col, dtype=np.int64),
            np.asarray(time_col, dtype=np.float64))

