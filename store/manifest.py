"""The manifest: one small JSON marker per finished chunk, written after the chunk's data.

Completion is never inferred from chunk files (zarr skips chunks equal to the fill value, and
a killed write leaves none). A marker says which rows of the chunk are final:

    manifest/<modality>/<chunk:06d>.json
      {"chunk": 3, "start": 384, "stop": 512, "items_hash": "...", "sha256": "...",
       "problems": [...], "shard": "0/2"}

`stop` is below the chunk's end only for the last chunk of a store that was later extended
with more items; those rows are final and the rest of the chunk is still to do. One marker
per file means writers owning different chunks never touch the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmsr_store.fingerprint import items_hash
from mmsr_store.layout import MANIFEST_DIR, atomic_write_json, num_chunks


@dataclass
class ChunkRecord:
    chunk: int
    start: int
    stop: int
    items_hash: str
    sha256: str
    problems: list[str] = field(default_factory=list)
    shard: str = "0/1"

    def to_json(self) -> dict:
        return {"chunk": self.chunk, "start": self.start, "stop": self.stop, "items_hash": self.items_hash,
                "sha256": self.sha256, "problems": list(self.problems), "shard": self.shard}


def modality_dir(cache_dir: Path, modality: str) -> Path:
    return Path(cache_dir) / MANIFEST_DIR / modality


def marker_path(cache_dir: Path, modality: str, chunk: int) -> Path:
    return modality_dir(cache_dir, modality) / f"{chunk:06d}.json"


def chunk_digest(hidden, mask) -> str:
    h = hashlib.sha256()
    h.update(memoryview(hidden).cast("B"))
    h.update(memoryview(mask).cast("B"))
    return h.hexdigest()


def read(cache_dir: Path, modality: str) -> dict[int, ChunkRecord]:
    """Every marker of `modality`, by chunk index (unreadable markers count as absent)."""
    records: dict[int, ChunkRecord] = {}
    folder = modality_dir(cache_dir, modality)
    if not folder.is_dir():
        return records
    for path in folder.glob("[0-9]*.json"):
        record = _parse(path)
        if record is not None:
            records[record.chunk] = record
    return records


def read_one(cache_dir: Path, modality: str, chunk: int) -> ChunkRecord | None:
    """The marker of one chunk, or None. A writer asks this once per chunk it finishes; reading
    the whole manifest there made a build quadratic in its chunks."""
    record = _parse(marker_path(cache_dir, modality, chunk))
    return record if record is not None and record.chunk == chunk else None


def _parse(path: Path) -> ChunkRecord | None:
    """The marker in `path`; None when it is missing or unreadable (the chunk counts as not done)."""
    try:
        return ChunkRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write(cache_dir: Path, modality: str, record: ChunkRecord) -> None:
    atomic_write_json(marker_path(cache_dir, modality, record.chunk), record.to_json())


def remove(cache_dir: Path, modality: str, chunk: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        marker_path(cache_dir, modality, chunk).unlink()


def done_until(record: ChunkRecord | None, start: int, item_ids: list[str]) -> int:
    """First row of the chunk starting at `start` that still needs encoding.

    A marker whose item hash does not match the current ids for its rows is ignored.
    """
    if record is None or record.start != start or record.stop <= start or record.stop > len(item_ids):
        return start
    if items_hash(item_ids[record.start:record.stop]) != record.items_hash:
        return start
    return record.stop


def unfinished(cache_dir: Path, modality: str, item_ids: list[str], chunk_items: int) -> list[tuple[int, int, int, int]]:
    """(chunk, start, stop, first row still to encode) of every chunk of `modality` that is not
    finished for these item ids, in order. The writer's work list and the reader's refusal of an
    unfinished cache both come from here."""
    records = read(cache_dir, modality)
    out = []
    for chunk in range(num_chunks(len(item_ids), chunk_items)):
        start, stop = chunk * chunk_items, min(len(item_ids), (chunk + 1) * chunk_items)
        todo = done_until(records.get(chunk), start, item_ids)
        if todo < stop:
            out.append((chunk, start, stop, todo))
    return out
