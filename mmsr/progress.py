"""The progress protocol of long library loops, drawn by the CLI (rich bars on rank 0).

A long loop takes `progress`, a factory called as `progress(description, total, unit=...)`
that returns a context manager yielding `advance(n)`. The library never draws anything
itself; `no_progress` is the silent default for library and test callers.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

Advance = Callable[[float], None]
ProgressFactory = Callable[..., ContextManager[Advance]]


@contextlib.contextmanager
def no_progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Advance]:
    yield lambda n=1: None
