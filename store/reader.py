"""The reading side: open a finished cache, check its fingerprint, bulk-load a modality.

    cache = open_cache(path)                  # StoreError if missing or incomplete
    cache.check({"text": expected_text_fp})   # StoreError naming the differing keys
    hidden, mask = cache.load("text", into="ram")   # or "mmap" or "cuda"
    hidden, mask = cache.rows("text")(ids)    # or rows by id, a chunk decoded at a time (one pass)
    cache.release_pages()                     # "mmap": unmap the pages read so far (RSS), keep them cached

Reads are bulk: whole chunks or blocks of chunks at a time, never one item at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mmsr_store import manifest
from mmsr_store.errors import OutOfSpaceError, StoreError, out_of_space_guard
from mmsr_store.fingerprint import canonical, diff, digest
from mmsr_store.layout import (FORMAT, HIDDEN, HIDDEN_DTYPE, ITEM_IDS, LOCK_DIR, MASK, MMAP_DIR, STORE_DIR,
                               atomic_write_json, num_chunks, read_item_digests, read_item_ids)
from mmsr_store.memory import available_memory, human_bytes
from mmsr_store.shards import flocked

BUILD_HINT = "run mmsr cache build (it resumes where it stopped)"
# The encoded chunks cannot be read without their array's metadata, which `verify --repair` (it
# re-encodes chunks into the arrays) does not remake: the store is built again.
METADATA_HINT = "build the cache again: mmsr cache build with the same config and --overwrite"
READ_BLOCK_BYTES = 64 << 20
MMAP_SPACE_HINT = ("free some space on that disk (the mmap/ folder of a cache you no longer train on can go) and "
                   "rerun: the copy is made again, a half-written one is never used")


def _pending_chunks(cache_dir: Path, modality: str, chunk_items: int, item_ids: list[str]) -> list[int]:
    return [chunk for chunk, *_ in manifest.unfinished(cache_dir, modality, item_ids, chunk_items)]


def open_group(cache_dir: Path, mode: str = "r"):
    """The cache's zarr group (read-only, or "r+" for a build), once its format and every array's
    metadata are known to be there: a lost zarr.json is named here, not met as a KeyError deep
    in a build or a read."""
    import zarr

    store = cache_dir / STORE_DIR
    if not cache_dir.exists():
        raise StoreError("cache not found", where=cache_dir, hint=BUILD_HINT)
    if not store.is_dir():
        raise StoreError(f"no {STORE_DIR} here: not an mmsr cache, or its build never started", where=cache_dir,
                         hint=BUILD_HINT)
    try:
        group = zarr.open_group(store, mode=mode)
    except (zarr.errors.BaseZarrError, FileNotFoundError, ValueError) as error:  # its zarr.json lost or damaged
        raise StoreError(f"the store's metadata cannot be read ({type(error).__name__}): a file was lost or "
                         "damaged", where=store / "zarr.json", hint=METADATA_HINT) from None
    if group.attrs.get("format") != FORMAT:
        raise StoreError(f"unknown cache format {group.attrs.get('format')!r}, this mmsr reads {FORMAT}",
                         where=cache_dir, hint="rebuild it with this mmsr")
    for modality in group.attrs.get("modalities", []):
        for name in (HIDDEN, MASK):
            try:
                group[f"{modality}/{name}"]
            except (KeyError, zarr.errors.BaseZarrError, ValueError):  # chunks cannot be read without it
                raise StoreError(f"the array {modality}/{name} cannot be opened: its metadata was lost or damaged",
                                 where=store / modality / name / "zarr.json", hint=METADATA_HINT) from None
    return group


def repair_hint(cache_dir: Path) -> str:
    return f"run `mmsr cache verify {cache_dir} --repair` to re-encode it"


def chunk_rows(array, chunk: int) -> tuple[int, int]:
    c = int(array.chunks[0])
    return chunk * c, min(int(array.shape[0]), (chunk + 1) * c)


def decode_chunk(array, chunk: int) -> tuple[np.ndarray | None, str | None]:
    """(rows of chunk `chunk` of `array`, None), or (None, why it cannot be read back)."""
    start, stop = chunk_rows(array, chunk)
    try:
        return array[start:stop], None
    except Exception as error:  # noqa: BLE001 - whatever a codec raises on garbage means the same here
        # zarr's Crc32cCodec raises a bare ValueError on a mismatch; other codecs fail on garbage.
        if isinstance(error, ValueError) and "checksum" in str(error).lower():
            return None, "fails its CRC32C checksum"
        return None, f"cannot be decoded ({type(error).__name__}: {' '.join(str(error).split())[:200]})"


def damaged_chunk_error(cache_dir: Path, label: str, array, chunk: int, problem: str) -> StoreError:
    start, stop = chunk_rows(array, chunk)
    return StoreError(f"damaged chunk: {label} chunk {chunk} (items {start}..{stop - 1}) {problem}",
                      where=cache_dir, hint=repair_hint(cache_dir))


def read_rows(cache_dir: Path, label: str, array, a: int, b: int) -> np.ndarray:
    """`array[a:b]`, where a chunk that does not decode becomes a StoreError naming it.

    zarr decodes the chunks of one read together and its error names none of them, so on a
    failure each chunk is decoded again alone to find which one is damaged.
    """
    try:
        return array[a:b]
    except Exception:
        c = int(array.chunks[0])
        for chunk in range(a // c, -(-b // c)):
            _, problem = decode_chunk(array, chunk)
            if problem:
                raise damaged_chunk_error(cache_dir, label, array, chunk, problem) from None
        raise


def _format_chunks(chunks: list[int], limit: int = 8) -> str:
    text = ", ".join(str(c) for c in chunks[:limit])
    return text + (f", ... ({len(chunks)} in all)" if len(chunks) > limit else "")


class Cache:
    """A complete cache, opened read-only. Use `open_cache(path)`."""

    def __init__(self, cache_dir: Path, group):
        self.path = cache_dir
        self._group = group
        self.modalities: tuple[str, ...] = tuple(group.attrs["modalities"])
        self.num_items: int = int(group.attrs["num_items"])
        self._mappings: list[mmap.mmap] = []  # of the "mmap" loads, for release_pages()

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, modalities={self.modalities}, num_items={self.num_items})"

    def _arrays(self, modality: str):
        if modality not in self.modalities:
            raise StoreError(f"no {modality!r} states in this cache (it has {', '.join(self.modalities)})",
                             where=self.path, hint="build a cache with that encoder enabled")
        return self._group[f"{modality}/{HIDDEN}"], self._group[f"{modality}/{MASK}"]

    @property
    def build_options(self) -> dict:
        """The options the build ran with that are not part of a fingerprint (e.g. on_bad_image)."""
        return _build_options(self._group)

    def fingerprint(self, modality: str) -> dict:
        return dict(self._arrays(modality)[0].attrs["fingerprint"])

    def shape(self, modality: str) -> tuple[int, int, int]:
        return tuple(self._arrays(modality)[0].shape)

    def item_ids(self) -> list[str]:
        return read_item_ids(self.path)

    def item_digests(self, modality: str) -> tuple[str, list[str]] | None:
        """(source, a digest per row of what it was encoded from), as the build recorded them;
        None for a cache built before they were kept."""
        return read_item_digests(self.path, modality)

    def problems(self, modality: str | None = None) -> list[str]:
        """What the build reported about bad inputs (e.g. unreadable images), in chunk order."""
        found = []
        for m in ([modality] if modality else self.modalities):
            records = manifest.read(self.path, m)
            for chunk in sorted(records):
                found.extend(records[chunk].problems)
        return found

    def check(self, expected: dict[str, dict]) -> None:
        """Refuse (StoreError) unless every expected modality is cached with an equal fingerprint."""
        problems = []
        for modality, wanted in expected.items():
            if modality not in self.modalities:
                problems.append(f"{modality}: not in the cache")
                continue
            problems += [f"{modality}.{key}" for key in diff(self.fingerprint(modality), wanted)]
        if problems:
            raise StoreError("the cache does not match this configuration: " + "; ".join(problems),
                             where=self.path, hint="rebuild it with `mmsr cache build` for this config")

    def load(self, modality: str, into: str = "ram", device: str | None = None):
        """-> (hidden torch.float16 [N,T,D], mask torch.bool [N,T]).

        "ram": decompressed into process memory (`nbytes(modality)`); refused, before anything is
        allocated, when that is more than the memory available. "mmap": memory-mapped .npy copies
        under CACHE/mmap/ (made on first use, shared by processes through the page cache).
        "cuda": straight into GPU memory block by block (`device`, default "cuda").
        """
        import torch

        hidden_array, mask_array = self._arrays(modality)
        read_hidden, read_mask = self._reader(modality, HIDDEN, hidden_array), self._reader(modality, MASK, mask_array)
        if into == "ram":
            self._refuse_beyond_memory(modality)
            hidden = np.empty(hidden_array.shape, dtype=np.float16)
            mask = np.empty(mask_array.shape, dtype=bool)
            for a, b in self._blocks(modality):
                hidden[a:b] = read_hidden(a, b)
                mask[a:b] = read_mask(a, b)
            return torch.from_numpy(hidden), torch.from_numpy(mask)
        if into == "mmap":
            hidden, mask = self._mmap(modality)
            return torch.from_numpy(hidden), torch.from_numpy(mask)
        if into == "cuda" or (into and into.startswith("cuda:")):
            target = torch.device(device or into)
            if not torch.cuda.is_available():
                raise StoreError("into='cuda' but no CUDA device is available", where=self.path,
                                 hint='use into="ram" or "mmap"')
            hidden = torch.empty(hidden_array.shape, dtype=torch.float16, device=target)
            mask = torch.empty(mask_array.shape, dtype=torch.bool, device=target)
            for a, b in self._blocks(modality):
                hidden[a:b].copy_(torch.from_numpy(read_hidden(a, b)).pin_memory(), non_blocking=True)
                mask[a:b].copy_(torch.from_numpy(read_mask(a, b)))
            torch.cuda.synchronize(target)
            return hidden, mask
        raise StoreError(f"unknown load target {into!r}", hint='use "ram", "mmap" or "cuda"')

    def rows(self, modality: str, keep_bytes: int = READ_BLOCK_BYTES) -> "RowReader":
        """A reader of `modality`'s rows by item id, straight from the store (`RowReader`): for a
        pass that reads each item once, where `load` would first hold every state in memory."""
        hidden, mask = self._arrays(modality)
        return RowReader(self._reader(modality, HIDDEN, hidden), self._reader(modality, MASK, mask),
                         int(hidden.chunks[0]), tuple(hidden.shape), keep_bytes)

    def nbytes(self, modality: str) -> int:
        """Bytes `load(modality, into="ram")` takes: the float16 states and the bool mask."""
        n, t, d = self.shape(modality)
        return n * t * d * 2 + n * t

    def _refuse_beyond_memory(self, modality: str) -> None:
        # A backstop for every caller: filling arrays past what the kernel can give ends in an
        # OOM kill, with no message. The trainer's feed checks first, with a margin for the model.
        need, free = self.nbytes(modality), available_memory()
        if free is not None and need > free:
            raise StoreError(f"the {modality} states need {human_bytes(need)} in RAM, only {human_bytes(free)} "
                             "is available", where=self.path,
                             hint='load them with into="mmap": memory-mapped from a copy on disk, paged in as read')

    def _reader(self, modality: str, name: str, array):
        """read(a, b) -> rows a..b of `array` (`modality`/`name`); a damaged chunk raises a StoreError naming it."""
        return lambda a, b: read_rows(self.path, f"{modality}/{name}", array, a, b)

    def _blocks(self, modality: str):
        """Row ranges of whole chunks, about READ_BLOCK_BYTES each."""
        hidden = self._arrays(modality)[0]
        n, t, d = hidden.shape
        c = int(hidden.chunks[0])
        per_block = max(c, (READ_BLOCK_BYTES // max(1, c * t * d * 2)) * c)
        for a in range(0, n, per_block):
            yield a, min(n, a + per_block)

    def _state_digest(self, modality: str) -> str:
        records = manifest.read(self.path, modality)
        return digest({"shape": self.shape(modality), "chunks": {str(c): r.sha256 for c, r in sorted(records.items())}})

    def _mmap(self, modality: str):
        folder = self.path / MMAP_DIR
        hidden_path, mask_path = folder / f"{modality}.hidden.npy", folder / f"{modality}.mask.npy"
        stamp_path = folder / f"{modality}.stamp.json"
        want = self._state_digest(modality)

        def fresh() -> bool:
            try:
                return json.loads(stamp_path.read_text())["digest"] == want and hidden_path.is_file() and mask_path.is_file()
            except (OSError, ValueError, KeyError):
                return False

        if not fresh():
            with contextlib.ExitStack() as stack:
                with out_of_space_guard(folder, "the mmap copies", hint=MMAP_SPACE_HINT):
                    folder.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(flocked(self.path / LOCK_DIR / "mmap.lock"))
                if not fresh():
                    self._make_mmap_copy(modality, hidden_path, mask_path, stamp_path, want)
        (hidden, hidden_map), (mask, mask_map) = _map_npy(hidden_path), _map_npy(mask_path)
        self._mappings += [hidden_map, mask_map]
        return hidden, mask

    def release_pages(self) -> None:
        """Unmap from this process the pages of the "mmap" loads read so far (MADV_DONTNEED).

        Every page of a mapped file that a process has read counts in its RSS until the kernel
        needs the memory, so an epoch over states larger than RAM would show (and, in a cgroup,
        be charged) all of them. Dropped pages stay in the page cache: the next read is a minor
        fault, not disk I/O. The mappings are copy-on-write and never written, so nothing is lost.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None:
            for mapping in self._mappings:
                mapping.madvise(advice)

    def _make_mmap_copy(self, modality: str, hidden_path: Path, mask_path: Path, stamp_path: Path, want: str) -> None:
        """Write both .npy files, then the stamp that makes them trusted.

        The stamp goes first and comes back last, so a copy cut short (a full disk, a kill) is
        never used: the next load remakes it. Stale copies are deleted up front to free their
        space; a process that still maps one keeps its pages (the inode lives until unmapped).
        """
        stamp_path.unlink(missing_ok=True)
        hidden_path.unlink(missing_ok=True)
        mask_path.unlink(missing_ok=True)
        need = self.nbytes(modality)
        free = shutil.disk_usage(hidden_path.parent).free
        if need > free:  # fail now, not after decoding most of the states
            error = OutOfSpaceError(f"cannot write the mmap copy of the {modality} states: it needs "
                                    f"{human_bytes(need)}, {human_bytes(free)} is free there", where=hidden_path.parent,
                                    hint=MMAP_SPACE_HINT)
            error.reason = "not enough free space"
            raise error
        hidden_array, mask_array = self._arrays(modality)
        for out, array, name in ((hidden_path, hidden_array, HIDDEN), (mask_path, mask_array, MASK)):
            with out_of_space_guard(out, f"the mmap copy of {modality}/{name}", hint=MMAP_SPACE_HINT):
                self._write_npy(out, array, self._reader(modality, name, array), self._blocks(modality))
        with out_of_space_guard(stamp_path, f"the mmap stamp of {modality}", hint=MMAP_SPACE_HINT):
            atomic_write_json(stamp_path, {"digest": want})

    @staticmethod
    def _write_npy(path: Path, array, read, blocks) -> None:
        """`array` as a .npy file at `path`, one block of rows at a time.

        Plain writes, not a writable memmap: on a full disk a write() fails with ENOSPC, where a
        store into a mapped page of a sparse file kills the process with SIGBUS; and written
        pages go to the page cache, not into this process's RSS. Peak memory is one decoded
        block (READ_BLOCK_BYTES). Written to a temp file, fsynced (a filesystem that allocates
        late reports ENOSPC there), then renamed: a failure leaves nothing at `path`.
        """
        dtype = np.dtype(array.dtype.to_native_dtype() if hasattr(array.dtype, "to_native_dtype") else array.dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(array.shape)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                for a, b in blocks:
                    _write_block(handle, np.ascontiguousarray(read(a, b), dtype=dtype))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RowReader:
    """reader(ids) -> (hidden float16 [n,T,D], mask bool [n,T]) of the items `ids`, in that order.

    Each chunk the ids fall in is decoded whole and the last few are kept (about `keep_bytes`),
    so a pass in item order decodes every chunk once however its batches cut the chunks, and
    memory stays at a few chunks whatever the catalogue's size. A damaged chunk is a StoreError
    naming it, as for `Cache.load`.
    """

    def __init__(self, read_hidden, read_mask, chunk_items: int, shape: tuple[int, int, int], keep_bytes: int):
        self._read_hidden, self._read_mask = read_hidden, read_mask
        self.chunk_items, (self.num_items, self._tokens, self._dim) = chunk_items, shape
        self._keep_bytes = keep_bytes
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunk -> rows, oldest first

    def __call__(self, ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_items):
            bad = int(ids[(ids < 0) | (ids >= self.num_items)][0])
            raise StoreError(f"item {bad} is not in this cache ({self.num_items} items)")
        chunks = ids // self.chunk_items
        hidden = np.empty((len(ids), self._tokens, self._dim), dtype=HIDDEN_DTYPE)
        mask = np.empty((len(ids), self._tokens), dtype=bool)
        for chunk in np.unique(chunks):
            rows = np.flatnonzero(chunks == chunk)
            chunk_hidden, chunk_mask = self._chunk(int(chunk))
            local = ids[rows] - int(chunk) * self.chunk_items
            hidden[rows], mask[rows] = chunk_hidden[local], chunk_mask[local]
        return hidden, mask

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        if chunk in self._decoded:
            return self._decoded[chunk]
        a, b = chunk * self.chunk_items, min(self.num_items, (chunk + 1) * self.chunk_items)
        rows = self._read_hidden(a, b), self._read_mask(a, b)
        self._decoded[chunk] = rows
        kept = sum(h.nbytes + m.nbytes for h, m in self._decoded.values())
        while len(self._decoded) > 1 and kept > self._keep_bytes:
            oldest = next(iter(self._decoded))
            kept -= sum(x.nbytes for x in self._decoded.pop(oldest))
        return rows


def _map_npy(path: Path) -> tuple[np.ndarray, mmap.mmap]:
    """(the array of the .npy file at `path`, mapped copy-on-write, and its mapping).

    Pages are shared with every other process through the page cache; writes stay private.
    """
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    if fortran_order:
        raise StoreError("a Fortran-ordered mmap copy: not written by mmsr", where=path,
                         hint="delete the mmap/ folder; the next load remakes it")
    try:
        array = np.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    except ValueError:  # shorter than its header says: truncated behind mmsr's back
        raise StoreError(f"a truncated mmap copy ({mapping.size()} bytes for {shape})", where=path,
                         hint="delete the mmap/ folder; the next load remakes it") from None
    return array, mapping


def _write_block(handle, block: np.ndarray) -> None:
    """One block of rows into an open .npy file (a seam the tests fill the disk through)."""
    handle.write(memoryview(block).cast("B"))


def required_item_ids(cache_dir: Path) -> list[str]:
    """item_ids.txt, the store's row order; a lost one is named (it read as 0 items, and `verify` and
    `verify --repair` then sent the user to each other) with the build that writes it again."""
    if not (cache_dir / ITEM_IDS).is_file():
        raise StoreError(f"{ITEM_IDS} is missing (the store's row order)", where=cache_dir / ITEM_IDS,
                         hint="run mmsr cache build with the cache's config: it writes it again from the dataset")
    return read_item_ids(cache_dir)


def _build_options(group) -> dict:
    return dict(group.attrs.get("build", {}))


def read_build_options(path: str | os.PathLike) -> dict:
    """`Cache.build_options` of a cache finished or not (a repair resumes an unfinished one)."""
    return _build_options(open_group(Path(path).expanduser()))


def open_cache(path: str | os.PathLike) -> Cache:
    """Open a complete cache; StoreError naming what is missing otherwise."""
    cache_dir = Path(path).expanduser()
    group = open_group(cache_dir)
    item_ids = required_item_ids(cache_dir)
    n = int(group.attrs["num_items"])
    if len(item_ids) != n:
        raise StoreError(f"incomplete: item_ids.txt lists {len(item_ids)} items, the store {n}", where=cache_dir,
                         hint=BUILD_HINT)
    missing = []
    for modality in group.attrs["modalities"]:
        hidden = group[f"{modality}/{HIDDEN}"]
        if hidden.shape[0] != n:
            missing.append(f"{modality}: array has {hidden.shape[0]} rows, expected {n}")
            continue
        chunks = _pending_chunks(cache_dir, modality, int(hidden.chunks[0]), item_ids)
        if chunks:
            total = num_chunks(n, int(hidden.chunks[0]))
            missing.append(f"{modality}: {len(chunks)} of {total} chunks unfinished ({_format_chunks(chunks)})")
    if missing:
        raise StoreError("incomplete cache: " + "; ".join(missing), where=cache_dir, hint=BUILD_HINT)
    return Cache(cache_dir, group)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def inspect_cache(path: str | os.PathLike) -> dict:
    """Everything `mmsr cache info` shows; works on an unfinished cache too."""
    cache_dir = Path(path).expanduser()
    group = open_group(cache_dir)
    item_ids = read_item_ids(cache_dir)
    n = int(group.attrs["num_items"])
    out = {"path": str(cache_dir), "format": group.attrs.get("format"), "num_items": n,
           "build": dict(group.attrs.get("build", {})), "modalities": {}}
    for modality in group.attrs["modalities"]:
        hidden = group[f"{modality}/{HIDDEN}"]
        _, t, d = hidden.shape
        c = int(hidden.chunks[0])
        pending = _pending_chunks(cache_dir, modality, c, item_ids) if len(item_ids) == n else list(
            range(num_chunks(n, c)))
        records = manifest.read(cache_dir, modality)
        disk = _dir_bytes(cache_dir / STORE_DIR / modality)
        raw = n * t * d * 2 + n * t
        out["modalities"][modality] = {
            "shape": [n, t, d], "dtype": "float16", "chunk_items": c, "chunk_mib": round(c * t * d * 2 / 2**20, 2),
            "chunks": num_chunks(n, c), "finished_chunks": num_chunks(n, c) - len(pending),
            "unfinished": pending, "disk_bytes": disk, "raw_float16_bytes": raw,
            "bytes_per_item": round(disk / n, 1), "raw_bytes_per_item": round(raw / n, 1),
            "problems": [p for chunk in sorted(records) for p in records[chunk].problems],
            "fingerprint": canonical(hidden.attrs.get("fingerprint", {})),
        }
    out["complete"] = all(not m["unfinished"] for m in out["modalities"].values())
    return out
