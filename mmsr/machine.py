"""What a measurement ran on (the CPU's model name, printed next to every figure) and what the
machine can hold (the memory a process may still take)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, as `lscpu | grep "Model name"` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def available_memory() -> int | None:
    """Bytes this process may still allocate: Linux's MemAvailable, lowered to the cgroup's limit
    (a Docker container's --memory, a scheduler's allocation) where one is set; None where neither
    can be read (another OS)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            found.append(int(Path(limit).read_text()) - int(Path(usage).read_text()))
        except (OSError, ValueError):  # absent, or "max": no limit
            pass
    return min(found) if found else None
