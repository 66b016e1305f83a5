"""`mmsr-lmdb`: the format of the paper's code (and MoRec / PMMRec).

    NAME_items.tsv   item_name<TAB>title           (names like v123; extra columns -> description)
    NAME_users.tsv   user<TAB>item item item ...   (space-separated, oldest first)
    NAME.lmdb/       values: pickled LMDB_Image (channels, size=(H, W), image=raw uint8 HWC bytes,
                     id: str or int); keys: the ascii item name without its leading "v";
                     special keys __keys__ and __len__.

There are no timestamps: an interaction's timestamp is its ordinal in the users file, so line
order (and order within a line) is time order. One line per user is expected; a user with
more than one line follows the `duplicate_users` policy (error; merge: the lines joined in
line order; last: only the last line, which is what the reference code's dict keeps).

A pickle is code. The LMDB values are read by `SafeUnpickler`, which resolves one class name,
`LMDB_Image`, to an inert record class whatever module the pickle names (build scripts define
it in `__main__`, training code imports it from e.g. `data_utils.dataset`), checks the
attribute set, and refuses every other global, so an LMDB from an untrusted source cannot
run anything.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from mmsr.data.dataset import DatasetWriter
from mmsr.data.importers.base import (ImportReport, ProgressFactory, bad_image, iter_lines, register, require_dir,
                                      require_file, size_kb)
from mmsr.errors import MMSRError

FIELDS = frozenset({"channels", "size", "image", "id"})
_HEADERS = {("item_id", "title"), ("item", "title"), ("item_name", "title"), ("id", "title")}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something other than the LMDB_Image class shape."""


class LMDBImage:
    """Inert stand-in for the build scripts' `LMDB_Image`: four attributes, no behaviour."""

    __slots__ = ("channels", "size", "image", "id")

    def __new__(cls, *args, **kwargs):
        # A real LMDB_Image pickle creates the object bare and then sets its attributes; a pickle
        # that calls the class with arguments is crafted, so refuse it rather than ignore them.
        if args or kwargs:
            arguments = [*map(repr, args), *(f"{key}={value!r}" for key, value in kwargs.items())]
            raise RefusedPickle(f"refused to call LMDB_Image({', '.join(arguments)}): a pickled LMDB_Image "
                                f"takes no arguments")
        return super().__new__(cls)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None and isinstance(state[1], dict):
            state = state[1]  # (None, slots) form
        if not isinstance(state, dict):
            raise RefusedPickle(f"LMDB_Image state is a {type(state).__name__}, expected a dict of attributes")
        keys = set(state)
        if keys != FIELDS:
            extra = ", ".join(sorted(map(str, keys - FIELDS))) or "none"
            missing = ", ".join(sorted(FIELDS - keys)) or "none"
            raise RefusedPickle(f"LMDB_Image attributes differ from (channels, size, image, id): "
                                f"unexpected {extra}; missing {missing}")
        for key in FIELDS:
            object.__setattr__(self, key, state[key])


class SafeUnpickler(pickle.Unpickler):
    """Resolves one global, a class named `LMDB_Image` in any module; everything else is refused.

    The module is never imported: the name only picks the inert `LMDBImage`, whose
    `__setstate__` then checks the attribute set, so naming another module gains nothing.
    That covers every pickle a Python 3 script writes by default (protocol 3 and newer). The
    protocols 0-2 spell bytes and plain objects through further globals (`_codecs.encode`,
    `copyreg._reconstructor`) and are refused rather than widening the list.
    """

    def find_class(self, module: str, name: str):
        if name == "LMDB_Image":
            return LMDBImage
        raise RefusedPickle(f"refused to load {module}.{name}: only a class named LMDB_Image is accepted")


def safe_loads(data: bytes):
    return SafeUnpickler(io.BytesIO(data)).load()


def decode_image(record, *, where: str):
    """An LMDB_Image record -> a PIL image. Raises ValueError on a malformed record."""
    from PIL import Image

    if not isinstance(record, LMDBImage):
        raise ValueError(f"value is a pickled {type(record).__name__}, not an LMDB_Image")
    channels, size, data = record.channels, record.size, record.image
    if not isinstance(channels, int) or channels not in (1, 3, 4):
        raise ValueError(f"channels is {channels!r}, expected 1, 3 or 4")
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(n, int) and n > 0 for n in size)):
        raise ValueError(f"size is {size!r}, expected (height, width)")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"image is a {type(data).__name__}, expected raw bytes")
    if not isinstance(record.id, (str, int)) or isinstance(record.id, bool):
        raise ValueError(f"id is a {type(record.id).__name__}, expected a str or an int")
    height, width = size
    if len(data) != height * width * channels:
        raise ValueError(f"image has {len(data):,} bytes, size x channels = {height}x{width}x{channels} "
                         f"= {height * width * channels:,}")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    return Image.frombytes(mode, (width, height), bytes(data))


# ----------------------------------------------------------------------------- sources


def _is_lmdb(path: Path) -> bool:
    return (path.is_dir() and (path / "data.mdb").is_file()) or (path.is_file() and path.suffix in (".lmdb", ".mdb"))


def _classify(sources: list[Path]) -> tuple[Path, Path, Path | None]:
    found: dict[str, list[Path]] = {"items": [], "users": [], "lmdb": []}

    def take(path: Path, *, from_dir: bool) -> None:
        name = path.name
        if name.endswith("_items.tsv") or name == "items.tsv":
            found["items"].append(path)
        elif name.endswith("_users.tsv") or name == "users.tsv":
            found["users"].append(path)
        elif _is_lmdb(path) or (path.suffix == ".lmdb" and path.is_dir()):
            found["lmdb"].append(path)
        elif not from_dir:
            raise MMSRError("not an mmsr-lmdb source", where=path,
                            hint="expected NAME_items.tsv, NAME_users.tsv, an LMDB directory, or a folder holding them")

    for source in sources:
        if source.is_dir() and not _is_lmdb(source) and not source.name.endswith((".tsv", ".lmdb")):
            before = sum(map(len, found.values()))
            for child in sorted(source.iterdir()):
                take(child, from_dir=True)
            if sum(map(len, found.values())) == before:  # a mistyped LMDB path would leave the pictures out
                raise MMSRError("a folder with nothing mmsr-lmdb reads in it", where=source,
                                hint="expected NAME_items.tsv, NAME_users.tsv or an LMDB (a folder with data.mdb)")
        else:
            take(source, from_dir=False)
    for kind in ("items", "users"):
        if not found[kind]:
            raise MMSRError(f"mmsr-lmdb: no *_{kind}.tsv among the sources", where=", ".join(map(str, sources)),
                            hint="pass NAME_items.tsv, NAME_users.tsv and the LMDB directory (or their folder)")
    for kind, paths in found.items():
        if len(paths) > 1:
            raise MMSRError(f"mmsr-lmdb: more than one {kind} source: " + ", ".join(map(str, paths)),
                            hint="pass the files one by one")
    return found["items"][0], found["users"][0], (found["lmdb"][0] if found["lmdb"] else None)


def _open_lmdb(path: Path):
    import lmdb

    if path.suffix == ".lmdb" and not path.exists():
        raise MMSRError("LMDB: no such directory", where=path)
    subdir = path.is_dir()
    if subdir:
        require_dir(path, "LMDB")
        if not (path / "data.mdb").is_file():
            raise MMSRError("not an LMDB directory (no data.mdb inside)", where=path)
    else:
        require_file(path, "LMDB")
    try:
        return lmdb.open(str(path), subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=8)
    except lmdb.Error as error:
        raise MMSRError(f"cannot open LMDB: {error}", where=path) from None


# ----------------------------------------------------------------------------- the importer


@register("mmsr-lmdb", help="NAME_items.tsv, NAME_users.tsv and the LMDB of pickled LMDB_Image pictures "
                            "(the paper's, MoRec's and PMMRec's format); or a folder holding them.")
def import_mmsr_lmdb(sources: list[Path], writer: DatasetWriter, report: ImportReport,
                     progress: ProgressFactory) -> None:
    items_path, users_path, lmdb_path = _classify(sources)
    require_file(items_path, "items file")
    require_file(users_path, "users file")
    writer.items_path = items_path
    # Before the pictures are decoded (the long part), so that a duplicate user stops the import early.
    with progress("users (scan)", size_kb(users_path)) as advance:
        skip = _duplicate_users(users_path, writer, advance)
    env = _open_lmdb(lmdb_path) if lmdb_path is not None else None
    if env is None:
        report.notes.append("no LMDB given: the dataset has no images")
    try:
        txn = env.begin(buffers=False) if env is not None else None
        if txn is not None:
            _check_lmdb_header(txn, lmdb_path, report)
        with progress("items", size_kb(items_path)) as advance:
            for number, where, line in _tab_lines(items_path, "item_name<TAB>title", advance):
                parts = line.split("\t")
                if number == 1 and tuple(part.strip().lower() for part in parts[:2]) in _HEADERS:
                    continue
                name, title = parts[0].strip(), parts[1]
                image = _lmdb_image(txn, lmdb_path, name, writer) if txn is not None else None
                writer.add_item(name, title=title, description=" ".join(parts[2:]), image=image, where=where)
        order = 0
        with progress("interactions", size_kb(users_path)) as advance:
            for number, user, names in _user_lines(users_path, advance):
                if number in skip:
                    continue
                for name in names:
                    writer.add_interaction(user, name, order, where=f"{users_path}:{number}")
                    order += 1
    finally:
        if env is not None:
            env.close()


def _tab_lines(path: Path, expected: str, advance=None):
    """(line number, "path:line", line) for every non-blank line; a line without a tab is an error."""
    for number, line in iter_lines(path, advance):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if "\t" not in line:
            raise MMSRError(f"no tab: expected {expected}", where=where)
        yield number, where, line


def _user_lines(users_path: Path, advance=None):
    """(line number, user, item names) for every non-blank line of the users file."""
    for number, where, line in _tab_lines(users_path, "user<TAB>item item item ...", advance):
        user, _, sequence = line.partition("\t")
        names = sequence.split()
        if not names:
            raise MMSRError(f"user {user.strip()!r} has no items", where=where)
        yield number, user.strip(), names


def _duplicate_users(users_path: Path, writer: DatasetWriter, advance) -> set[int]:
    """Apply `writer.duplicate_users` to users with more than one line; the line numbers to skip.

    error: raise at the first repeat. merge: keep every line (a user's items in line order).
    last: keep each such user's last line only, as the reference code does (it fills a dict
    keyed by user, so a later line replaces an earlier one). Each repeat is recorded in
    `writer.merged_users`, which lands in meta.json.
    """
    first: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for number, user, _ in _user_lines(users_path, advance):
        seen = first.setdefault(user, number)
        if seen == number:
            continue
        if writer.duplicate_users == "error":
            raise MMSRError(f"user {user!r} also has line {seen}: one line per user is expected",
                            where=f"{users_path}:{number}",
                            hint="join the lines, or import with --duplicate-users merge to join them in line order, "
                                 "or last to keep the last line as the reference code does")
        repeated.setdefault(user, [seen]).append(number)
    skip: set[int] = set()
    for user, lines in repeated.items():
        kept = lines if writer.duplicate_users == "merge" else lines[-1:]
        skip.update(set(lines) - set(kept))
        writer.merged_users.append({"file": str(users_path), "user": user, "lines": lines,
                                    "policy": writer.duplicate_users, "kept": kept})
    return skip


def _check_lmdb_header(txn, lmdb_path: Path, report: ImportReport) -> None:
    raw = txn.get(b"__len__")
    if raw is None:
        report.notes.append(f"{lmdb_path}: no __len__ key")
        return
    try:
        length = safe_loads(raw)
    except Exception as error:
        raise MMSRError(f"unreadable __len__: {type(error).__name__}: {error}", where=f"{lmdb_path}: key '__len__'") from None
    report.notes.append(f"LMDB declares {length:,} pictures" if isinstance(length, int) else
                        f"{lmdb_path}: __len__ is {type(length).__name__}, not an int")


def _lmdb_image(txn, lmdb_path: Path, name: str, writer: DatasetWriter):
    key_text = name[1:] if name.startswith("v") else name
    where = f"{lmdb_path}: key {key_text!r}"
    try:
        key = key_text.encode("ascii")
    except UnicodeEncodeError:
        return bad_image(writer, f"item {name!r} has no ascii LMDB key", where)
    raw = txn.get(key)
    if raw is None:
        return bad_image(writer, f"missing LMDB key for item {name!r}", where,
                         hint="the LMDB lacks this picture: rebuild it, or use --on-bad-image skip|placeholder")
    try:
        record = safe_loads(raw)
    except RefusedPickle as error:  # never a policy matter: this value tries to load code
        raise MMSRError(f"unsafe pickle: {error}", where=where,
                        hint="only pickles of an LMDB_Image class (channels, size, image, id) are read") from None
    except Exception as error:  # truncated or corrupt pickle
        return bad_image(writer, f"corrupt pickle for item {name!r}: {type(error).__name__}: {error}", where)
    try:
        return decode_image(record, where=where)
    except ValueError as error:
        return bad_image(writer, f"bad LMDB_Image for item {name!r}: {error}", where)
