"""Shard assignment: process i of n owns the chunks whose index is i modulo n.

Each live process holds an flock on `locks/shard-<i>-of-<n>.lock` for the whole build. A
new process refuses to start when a live one already owns the same shard (overlap), or
runs with a different n (inconsistent assignment). Locks of killed processes vanish with
them, so a killed build resumes under any n. The holder writes "pid host" into its lock file
so that a refused process can say whom it waits for.

"Vanish with them" needs one more step: an flock belongs to the open file, and a forked child
(a DataLoader worker) inherits that file. The kernel frees the lock only when every copy is
closed, so a build killed with SIGKILL or SIGTERM left its workers holding its shard lock and
every rerun was refused, naming a process that no longer existed. Every lock this module opens
is therefore closed in a forked child as soon as it starts (`_held`, `os.register_at_fork`):
the parent keeps its lock, and its death frees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import weakref
from dataclasses import dataclass
from pathlib import Path

from mmsr_store.errors import StoreError
from mmsr_store.layout import LOCK_DIR

_LOCK_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.lock$")

# The lock files this process has open (see the module's docstring). Weak: a handle dropped
# without release() is still closed, and its lock freed, by the garbage collector.
_held: "weakref.WeakSet" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    """In a forked child: point each lock's descriptor at /dev/null, which lets go of the lock's
    open file (the parent keeps its lock). Not the file object's close(), which takes its buffer's
    lock, held perhaps by a parent thread at the fork; nor a bare os.close(), after which the
    object would close the same number again later, when it may name another file."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for handle in list(_held):
            with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
                os.dup2(null, handle.fileno())
    finally:
        os.close(null)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _take_lock(path: Path, *, blocking: bool):
    """The open lock file of `path` (made, with its folder, if missing) with this process's
    exclusive flock on it; None if another holds it and `blocking` is off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    _held.add(handle)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        _close_lock(handle)
        return None
    except BaseException:
        _close_lock(handle)
        raise
    return handle


def _close_lock(handle) -> None:
    _held.discard(handle)
    if not handle.closed:
        handle.close()


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise StoreError(f"bad shard {self.index}/{self.count}", hint="use --shard i/n with 0 <= i < n")

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        """`"i/n"`; None or "" means torchrun's RANK/WORLD_SIZE when set, else 0/1."""
        if not text:
            return cls.from_env()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise StoreError(f"--shard {text!r} is not i/n", hint="e.g. --shard 0/2 and --shard 1/2")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_env(cls) -> "Shard":
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return cls()
        try:
            return cls(int(rank), int(world))
        except ValueError:
            raise StoreError(f"RANK={rank!r} WORLD_SIZE={world!r} are not integers") from None


@contextlib.contextmanager
def flocked(path: Path, *, blocking: bool = True):
    """Hold an exclusive flock on `path` (created if needed); yields the open file or None if busy."""
    handle = _take_lock(path, blocking=blocking)
    try:
        yield handle
    finally:
        if handle is not None:
            _close_lock(handle)


def _is_live(path: Path) -> bool:
    with flocked(path, blocking=False) as handle:
        return handle is None


def lock_path(cache_dir: Path, shard: Shard) -> Path:
    return Path(cache_dir) / LOCK_DIR / f"shard-{shard.index}-of-{shard.count}.lock"


def holder(cache_dir: Path, shard: Shard) -> str:
    """Who holds `shard`'s lock, as "pid 123 on host h" (as far as its lock file says)."""
    return describe_holder(lock_path(cache_dir, shard))


def describe_holder(path: Path) -> str:
    """"pid 123 on host h", from a lock file that `stamp_holder` wrote."""
    try:
        fields = Path(path).read_text(encoding="utf-8").split()
    except OSError:
        fields = []
    if not fields:  # the holder has its flock but has not written its pid yet
        return "pid unknown"
    host = f" on host {fields[1]}" if len(fields) > 1 else ""
    return f"pid {fields[0]}{host}"


def stamp_holder(handle) -> None:
    """Write "pid host" into the lock file this process has just locked."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()


def live_shards(cache_dir: Path) -> list[Shard]:
    folder = Path(cache_dir) / LOCK_DIR
    found = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        match = _LOCK_NAME.match(path.name)
        if match and _is_live(path):
            found.append(Shard(int(match.group(1)), int(match.group(2))))
    return found


class ShardClaim:
    """Holds this process's shard lock. Create it under the cache's init lock."""

    def __init__(self, cache_dir: Path, shard: Shard):
        self.shard = shard
        for other in live_shards(cache_dir):
            if other.count != shard.count:
                raise StoreError(f"inconsistent shard assignment: a live process ({holder(cache_dir, other)}) "
                                 f"builds shard {other}, this one asked for {shard}", where=cache_dir,
                                 hint=f"start every process with the same n (--shard i/{other.count})")
        self._handle = _take_lock(lock_path(cache_dir, shard), blocking=False)
        if self._handle is None:
            raise StoreError(f"shard {shard} is already being built by another live process "
                             f"({holder(cache_dir, shard)})", where=cache_dir,
                             hint="each --shard i/n must run once; wait for it to finish or stop it")
        stamp_holder(self._handle)

    def release(self) -> None:
        _close_lock(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
