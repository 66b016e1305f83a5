"""Real faults for the fault suite (`pytest -m faults`): a disk that fills up.

A small tmpfs is mounted over one directory inside a private user + mount namespace
(`unshare`), so the commands under test hit a real ENOSPC, and nothing outside the test
changes. The namespace ends with the script: copy out what the test must inspect.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MMSR = [sys.executable, "-m", "mmsr_cli.app"]


@functools.lru_cache(maxsize=1)
def small_disk_unavailable() -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no `unshare` on this machine"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"user and mount namespaces are not allowed here: {probe.stderr.strip()[:200]}"
    return None


def run_on_small_disk(mount_at: Path, size_kib: int, script: str, *, env: dict | None = None,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """Run bash `script` with a `size_kib` tmpfs mounted at `mount_at` (created if needed).

    The script sees $MOUNT_AT and may grow the disk with `mount -o remount,size=NNk "$MOUNT_AT"`.
    Skips the calling test where namespaces are not allowed.
    """
    reason = small_disk_unavailable()
    if reason:
        pytest.skip(f"cannot make a small disk: {reason}")
    mount_at = Path(mount_at)
    mount_at.mkdir(parents=True, exist_ok=True)
    inner = f'mount -t tmpfs -o size={size_kib}k tmpfs "$MOUNT_AT" && {script}'
    full_env = {**os.environ, **(env or {}), "MOUNT_AT": str(mount_at)}
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-ec", inner],
                          capture_output=True, text=True, env=full_env, timeout=timeout)
