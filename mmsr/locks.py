"""One writer per output: an exclusive, non-blocking flock beside the directory it guards.

    with output_lock(run_dir, "training run"):
        ...  # a second `mmsr train --run X` is refused, naming this process

The lock file sits next to the directory (`.NAME.lock`), not inside it, so that deleting the
directory (`--overwrite`) cannot pull the lock from under a live holder. The kernel drops
the lock when its process dies (the processes it forked let go of it as they start), so a
killed command never leaves a stale lock behind. The locking, and the "pid host" stamp that
names the holder, are the cache build's own (`mmsr_store.shards`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from mmsr.errors import MMSRError
from mmsr_store.shards import describe_holder, flocked, stamp_holder


def lock_path(target: Path) -> Path:
    # Resolved: "." has no name (its lock would land inside it as "..lock"), and two spellings of one
    # folder (through a symlink, "a/../b") must take one lock.
    target = Path(os.path.realpath(target))
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` for the block; MMSRError naming the holder if it is taken."""
    path = lock_path(target)
    with flocked(path, blocking=False) as handle:
        if handle is None:
            raise MMSRError(f"this {what} is in use by {describe_holder(path)}", where=target,
                            hint="wait for that command to finish or stop it; two writers would mix "
                                 "their output")
        stamp_holder(handle)
        yield
