"""Check a cache chunk by chunk, and mark damaged chunks so that the next build redoes them.

    report = verify_cache(path)        # decodes every finished chunk; report.bad lists the damaged ones
    invalidate(path, report.bad)       # drops their manifest markers and chunk files
    # then `mmsr cache build` (resumable) re-encodes exactly those chunks

A chunk is damaged when one of its arrays does not decode (CRC32C mismatch, codec garbage) or
when both decode to other bytes than the SHA-256 its manifest marker recorded at write time
(a lost or replaced chunk file). Caches written before chunk checksums get the second check only
and decode errors of what zstd notices; `unchecksummed` names their arrays.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np

from mmsr_store import manifest
from mmsr_store.errors import StoreError
from mmsr_store.layout import HIDDEN, LOCK_DIR, MASK, STORE_DIR, num_chunks, read_item_digests
from mmsr_store.reader import READ_BLOCK_BYTES, chunk_rows, decode_chunk, open_group, required_item_ids
from mmsr_store.shards import flocked, holder, live_shards

# The progress protocol of mmsr.progress, restated because the store may not import mmsr.
ProgressFactory = Callable[..., ContextManager[Callable[[float], None]]]


@contextlib.contextmanager
def _no_progress(description: str, total: float | None = None, unit: str = "items") -> Iterator:
    yield lambda n=1: None


@dataclass
class BadChunk:
    modality: str
    array: str  # "hidden", "mask", or "hidden+mask" when both decode but not to the recorded digest
    chunk: int
    start: int
    stop: int
    problem: str

    def __str__(self) -> str:
        return f"{self.modality}/{self.array} chunk {self.chunk} (items {self.start}..{self.stop - 1}) {self.problem}"


@dataclass
class VerifyReport:
    path: Path
    checked_chunks: dict[str, int] = field(default_factory=dict)  # per modality
    bad: list[BadChunk] = field(default_factory=list)
    unfinished: dict[str, list[int]] = field(default_factory=dict)  # chunks without a (full) marker
    unchecksummed: list[str] = field(default_factory=list)  # "text/hidden": written before chunk checksums

    @property
    def complete(self) -> bool:
        return not any(self.unfinished.values())

    @property
    def ok(self) -> bool:
        return not self.bad and self.complete

    def to_json(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "complete": self.complete,
                "checked_chunks": self.checked_chunks, "bad": [asdict(b) for b in self.bad],
                "unfinished": self.unfinished, "unchecksummed": self.unchecksummed}


def has_checksums(array) -> bool:
    from zarr.codecs import Crc32cCodec

    return any(isinstance(codec, Crc32cCodec) for codec in array.metadata.codecs)


def verify_cache(path: str | os.PathLike, progress: ProgressFactory | None = None, *,
                 only: dict[str, set[int]] | None = None) -> VerifyReport:
    """Decode every finished chunk of every modality (hidden and mask) and compare it with its marker.

    `progress(description, total, unit="items")` as in mmsr.progress: one bar per modality.
    `only` ({modality: chunks}) checks just those, e.g. the chunks a repair re-encoded.
    Works on an unfinished cache too: chunks without a marker are listed, not checked.
    """
    cache_dir = Path(path).expanduser()
    group = open_group(cache_dir)
    item_ids = required_item_ids(cache_dir)
    n = int(group.attrs["num_items"])
    report = VerifyReport(cache_dir)
    for modality in group.attrs["modalities"]:
        read_item_digests(cache_dir, modality)  # damaged, it is refused naming the file; every build reads it
        arrays = {name: group[f"{modality}/{name}"] for name in (HIDDEN, MASK)}
        report.unchecksummed += [f"{modality}/{name}" for name, a in arrays.items() if not has_checksums(a)]
        finished, report.unfinished[modality] = _finished_rows(cache_dir, modality, arrays[HIDDEN], n, item_ids)
        if only is not None:
            finished = {c: v for c, v in finished.items() if c in only.get(modality, ())}
        report.checked_chunks[modality] = len(finished)
        total = sum(done - chunk_rows(arrays[HIDDEN], chunk)[0] for chunk, (done, _) in finished.items())
        with (progress or _no_progress)(f"verify {modality}", total, unit="items") as advance:
            for window in _windows(sorted(finished), arrays[HIDDEN]):
                report.bad += _check_window(modality, arrays, window, finished, advance)
    return report


def _finished_rows(cache_dir: Path, modality: str, hidden, n: int, item_ids: list[str]):
    """({chunk: (first row not final, marker digest)} for chunks with final rows, [unfinished chunks])."""
    records = manifest.read(cache_dir, modality)
    finished, unfinished = {}, []
    for chunk in range(num_chunks(n, int(hidden.chunks[0]))):
        start, stop = chunk_rows(hidden, chunk)
        done = manifest.done_until(records.get(chunk), start, item_ids)
        if done > start:
            finished[chunk] = (done, records[chunk].sha256)
        if done < stop:
            unfinished.append(chunk)
    return finished, unfinished


def _windows(chunks: list[int], hidden) -> Iterator[list[int]]:
    """Runs of consecutive chunks of about READ_BLOCK_BYTES: zarr decodes one read's chunks in parallel."""
    _, t, d = hidden.shape
    per_window = max(1, READ_BLOCK_BYTES // max(1, int(hidden.chunks[0]) * t * d * 2))
    window: list[int] = []
    for chunk in chunks:
        if window and (chunk != window[-1] + 1 or len(window) == per_window):
            yield window
            window = []
        window.append(chunk)
    if window:
        yield window


def _check_window(modality: str, arrays: dict, window: list[int], finished: dict, advance) -> list[BadChunk]:
    first, _ = chunk_rows(arrays[HIDDEN], window[0])
    _, last = chunk_rows(arrays[HIDDEN], window[-1])
    data = {}
    for name, array in arrays.items():
        try:
            data[name] = array[first:last]
        except Exception:  # noqa: BLE001 - some chunk is damaged: find which, chunk by chunk below
            data[name] = None
    bad = []
    for chunk in window:
        start, stop = chunk_rows(arrays[HIDDEN], chunk)
        done, sha256 = finished[chunk]
        rows, problems = {}, []
        for name, array in arrays.items():
            if data[name] is not None:
                rows[name] = data[name][start - first:stop - first]
                continue
            rows[name], problem = decode_chunk(array, chunk)
            if problem:
                problems.append(BadChunk(modality, name, chunk, start, stop, problem))
        if not problems:
            hidden = np.ascontiguousarray(rows[HIDDEN][: done - start])
            mask = np.ascontiguousarray(rows[MASK][: done - start])
            if manifest.chunk_digest(hidden, mask) != sha256:
                problems.append(BadChunk(modality, f"{HIDDEN}+{MASK}", chunk, start, stop,
                                         "does not match the digest of its manifest marker (a lost or replaced "
                                         "chunk file)"))
        bad += problems
        advance(done - start)
    return bad


def invalidate(path: str | os.PathLike, bad: list[BadChunk]) -> None:
    """Drop the manifest markers and the chunk files of `bad`, so that the next build redoes them.

    Refused while a build runs: it could be writing these chunks, and its markers would say done.
    """
    cache_dir = Path(path).expanduser()
    group = open_group(cache_dir)
    with flocked(cache_dir / LOCK_DIR / "init.lock"):
        others = live_shards(cache_dir)
        if others:
            raise StoreError(f"cannot mark chunks for re-encoding while a build runs (shard {others[0]}, "
                             f"{holder(cache_dir, others[0])})", where=cache_dir,
                             hint="let it finish, then run `mmsr cache verify --repair` again")
        for chunk in bad:
            # The marker goes first: a chunk without a marker is redone whatever its files hold.
            manifest.remove(cache_dir, chunk.modality, chunk.chunk)
            for name in chunk.array.split("+"):
                array = group[f"{chunk.modality}/{name}"]
                key = array.metadata.encode_chunk_key((chunk.chunk,) + (0,) * (array.ndim - 1))
                (cache_dir / STORE_DIR / chunk.modality / name / key).unlink(missing_ok=True)
