"""One writer per output: an exclusive, non-blocking flock beside the directory it guards.

    with output_lock(run_dir, "training run"):
        ...  # a second `mmsr train --run X` is refused, naming this process

The lock file sits next to the directory (`.NAME.lock`), not inside it, so that deleting the
directory (`--overwrite`) cannot pull the lock from under a live holder. The kernel drops
the lock when its process dies, so a killed command never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from mmsr.errors import MMSRError


def lock_path(target: Path) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder(handle) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {started} ({info.get('command', '?')})"


@contextlib.contextmanager
def output_lock(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` for the block; MMSRError naming the holder if it is taken."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MMSRError(f"this {what} is in use by {_holder(handle)}", where=target,
                            hint="wait for that command to finish or stop it; two writers would mix "
                                 "their output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(Path(a).name if i == 0 else a
                                                     for i, a in enumerate(sys.argv))[:200]}))
        handle.flush()
        yield
    finally:
        handle.close()
