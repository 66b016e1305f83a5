"""Where things live inside a cache directory, and small file helpers.

    CACHE/
      store.zarr/              zarr v3 group
        zarr.json              attributes: format, item count, modalities, build options
        <modality>/hidden      (items, T, D) float16, chunks (C, T, D); attribute "fingerprint"
        <modality>/mask        (items, T) bool, chunks (C, T)
                               each chunk file: zstd, then a CRC32C (`mmsr cache verify` checks it)
      manifest/<modality>/<chunk>.json   one marker per finished chunk (see manifest.py)
      item_ids.txt             the cached item list, one id a line, in row order
      item_digests/<modality>.json   {"source", "digests"}: a digest of what each row was
                               encoded from (its text, its picture's bytes), in row order, and
                               the caller's name for the source version they were read from
      locks/                   flock files: the init lock and one per live shard
      mmap/                    .npy copies made by `load(..., into="mmap")`
      config.yaml, report.json written by the encoder stage
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from mmsr_store.errors import StoreError, UnwritableError, out_of_space_guard

FORMAT = "mmsr-cache/1"
STORE_DIR = "store.zarr"
MANIFEST_DIR = "manifest"
LOCK_DIR = "locks"
MMAP_DIR = "mmap"
ITEM_IDS = "item_ids.txt"
ITEM_DIGESTS_DIR = "item_digests"
HIDDEN = "hidden"
MASK = "mask"
HIDDEN_DTYPE = "float16"
# Chunks are sized for bulk reads: a few MiB each along the item axis.
TARGET_CHUNK_BYTES = 8 << 20
MAX_CHUNK_ITEMS = 4096


def chunk_items_for(tokens: int, dim: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """Items per chunk: the largest power of two whose hidden chunk stays within `target_bytes`."""
    per_item = max(1, tokens * dim * 2)
    items = 1
    while items * 2 * per_item <= target_bytes and items * 2 <= MAX_CHUNK_ITEMS:
        items *= 2
    return items


def num_chunks(num_items: int, chunk_items: int) -> int:
    return -(-num_items // chunk_items)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() and mkdir() would give. tempfile makes its files 0600 and its directories 0700,
# private to their owner: a ranks file, a run's config or a dataset written through them would
# keep that, unreadable by the other users of a shared data root or container.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    path = Path(path)
    with out_of_space_guard(path), _unwritable_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_then_rename(path, data, fsync)


# Where the path itself is wrong (a folder by that name, a file where a folder should be, no
# permission, a read-only or virtual file system): one line naming it, not a traceback after the
# work that was to be written.
_UNWRITABLE = (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS)


@contextlib.contextmanager
def _unwritable_named(path: Path):
    try:
        yield
    except OSError as error:
        if error.errno not in _UNWRITABLE:
            raise
        raise UnwritableError(f"cannot write this file: {os.strerror(error.errno).lower()}", where=path,
                              hint="give a path that can be written, or make this one writable") from None


def _write_then_rename(path: Path, data: bytes, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"), fsync=fsync)


def read_item_ids(cache_dir: Path) -> list[str]:
    path = Path(cache_dir) / ITEM_IDS
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def write_item_ids(cache_dir: Path, item_ids: list[str]) -> None:
    for item_id in item_ids:
        if "\n" in item_id:
            raise ValueError(f"item id {item_id!r} contains a newline")
    atomic_write_bytes(Path(cache_dir) / ITEM_IDS, "".join(i + "\n" for i in item_ids).encode("utf-8"))


def read_item_digests(cache_dir: Path, modality: str) -> tuple[str, list[str]] | None:
    """(source, digests) as `write_item_digests` left them; None for a cache built before digests
    were kept (its rows' inputs cannot be checked)."""
    path = Path(cache_dir) / ITEM_DIGESTS_DIR / f"{modality}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        digests = data.get("digests", [])
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise ValueError("digests is not a list of strings")
        return str(data.get("source", "")), digests
    except (ValueError, AttributeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        # Written whole or not at all (atomic_write_json), so this is a hand edit or a damaged disk.
        raise StoreError(f"damaged ({str(error).splitlines()[0]}): it records which inputs each row was encoded from",
                         where=path, hint="rebuild the cache with `mmsr cache build ... --overwrite`") from None


def changed_rows(recorded: list[str], now: list[str]) -> list[int]:
    """The rows whose digest differs between two lists of item digests (over the shorter one)."""
    return [row for row, (a, b) in enumerate(zip(recorded, now)) if a != b]


def write_item_digests(cache_dir: Path, modality: str, source: str, digests: list[str]) -> None:
    atomic_write_bytes(Path(cache_dir) / ITEM_DIGESTS_DIR / f"{modality}.json",
                       json.dumps({"source": source, "digests": digests}).encode("utf-8"))


def remove_partial_files(store_dir: Path) -> int:
    """zarr's LocalStore writes `<chunk>.<uuid>.partial` then renames; a kill can leave these behind."""
    removed = 0
    for partial in Path(store_dir).rglob("*.partial"):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            removed += 1
    return removed
