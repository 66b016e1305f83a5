"""The items of a loaded dataset, read from items.jsonl on demand instead of held as dicts.

A Python dict per item cost about 0.7 KB, 0.73 GB of RSS for a million-item catalogue before
any training started (issue 14; docs/scale.md). The table keeps only where each item's line
starts and ends (16 bytes an item) and parses a line when it is asked for; the page cache, not
the process, holds the text. Reading one item is a `pread` and a `json.loads`: microseconds, cheap next to
tokenising it, and nothing here is on a per-step path (training reads the cache or IDs).

    table[i]          the item's dict, parsed now (a fresh dict: changing it changes nothing)
    table[a:b]        a list of dicts
    iter(table)       every item, streamed in file order
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class ItemTable(Sequence):
    """A read-only sequence of item dicts backed by a JSON-lines file: item i is the bytes
    `starts[i]:ends[i]` (its own span, as blank lines may sit between items).

    The file must not change while the table is in use: a dataset directory is written once
    and replaced whole (`atomic_dir`), never edited in place.
    """

    def __init__(self, path: Path, starts: np.ndarray, ends: np.ndarray):
        self.path = Path(path)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._read(i) for i in range(*index.indices(len(self)))]
        position = int(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        return self._read(position)

    def __iter__(self) -> Iterator[dict]:
        # One sequential pass through the file: faster than a pread per item for full scans.
        with open(self.path, "rb") as handle:
            for start, end in zip(self.starts.tolist(), self.ends.tolist()):
                handle.seek(start)
                yield json.loads(handle.read(end - start))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def _read(self, position: int) -> dict:
        start, end = int(self.starts[position]), int(self.ends[position])
        return json.loads(os.pread(self._descriptor(), end - start, start))

    def _descriptor(self) -> int:
        # Opened on first use and kept. pread has no file offset to share, so a forked data
        # worker can read through the descriptor it inherited; a spawned one unpickles the table
        # (path and spans only) and opens its own.
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __getstate__(self) -> dict:
        return {"path": self.path, "starts": self.starts, "ends": self.ends}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["starts"], state["ends"])

    def __del__(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"ItemTable({str(self.path)!r}, {len(self)} items)"
