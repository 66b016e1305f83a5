"""How much memory this process may still take, read from the kernel (psutil is not a dependency).

    available_memory()   # bytes, or None where the platform does not say
    human_bytes(9.1e9)   # "9.1 GB"
    mapped_file_rss()    # bytes of mapped files resident in this process (RssFile), or None

The answer is the smallest of:
- MemAvailable in /proc/meminfo: what the kernel can hand out without swapping, page cache
  it can drop included;
- the headroom under every cgroup memory limit on this process's path (v2 `memory.max`, v1
  `memory.limit_in_bytes`): a container or a systemd slice OOM-kills at its own limit, however
  much the host has free.
Elsewhere (macOS, a /proc that cannot be read) it falls back to sysconf's free pages, or None.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
PROC_STATUS = Path("/proc/self/status")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 spells "no limit" as a page-rounded 2**63 - 1; anything this large is no limit.
_NO_LIMIT = 1 << 60


def available_memory() -> int | None:
    """Bytes this process can allocate before the kernel or a cgroup limit kills it; None if unknown."""
    found = [x for x in (_meminfo_available(), _cgroup_headroom()) if x is not None]
    if found:
        return max(0, min(found))
    return _sysconf_available()


def mapped_file_rss() -> int | None:
    """Bytes of file-backed pages mapped into this process (RssFile); None where /proc does not say."""
    return _kb_field(PROC_STATUS, "RssFile")


def human_bytes(n: float) -> str:
    """Decimal units, as `df -H` and the docs' tables: 9_100_000_000 -> "9.1 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2's no limit) -> None


def _meminfo_available() -> int | None:
    return _kb_field(MEMINFO, "MemAvailable")


def _kb_field(path: Path, key: str) -> int | None:
    """Bytes of a "Key:  1234 kB" line of a /proc file; None if it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dirs() -> list[Path]:
    """The memory cgroup directories of this process and of its ancestors, innermost first.

    A limit anywhere up the path applies. In a container with a cgroup namespace the path is
    "/" and the process's own cgroup is the root of the mount.
    """
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return [CGROUP_ROOT, CGROUP_ROOT / "memory"]
    dirs = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            base = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
        elif "memory" in controllers.split(","):  # v1: "4:memory:/path"
            base = CGROUP_ROOT / "memory"
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            dirs.append(here)
            if here == base or base not in here.parents:
                break
            here = here.parent
    return dirs


def _cgroup_headroom() -> int | None:
    best = None
    for folder in _cgroup_dirs():
        headroom = _headroom(folder)
        if headroom is not None:
            best = headroom if best is None else min(best, headroom)
    return best


def _headroom(folder: Path) -> int | None:
    """limit - usage of one cgroup (v2 or v1), counting its inactive page cache as free: the
    kernel reclaims that before it OOM-kills, as MemAvailable counts it on the host."""
    for limit_file, usage_file, inactive_key in (("memory.max", "memory.current", "inactive_file"),
                                                 ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                  "total_inactive_file")):
        limit = _read_int(folder / limit_file)
        if limit is None or limit >= _NO_LIMIT:
            continue
        usage = _read_int(folder / usage_file) or 0
        return limit - max(0, usage - _stat(folder / "memory.stat", inactive_key))
    return None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
