"""The progress protocol of long library loops, drawn by the CLI (rich bars on rank 0).

A long loop takes `progress`, a factory called as `progress(description, total, unit=...)`
that returns a context manager yielding `advance(n)`. The library never draws anything
itself; `no_progress` is the silent default for library and test callers. Notes a library call
makes on the side go to its `log`, `to_stderr` by default (a --json on stdout stays clean).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, ContextManager, Iterator

Advance = Callable[[float], None]
ProgressFactory = Callable[..., ContextManager[Advance]]


@contextlib.contextmanager
def no_progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Advance]:
    yield lambda n=1: None


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr)
