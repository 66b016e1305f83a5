"""The variables torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE), read as numbers.

Without torch: the CLI reads RANK before any command imports it. One left in the shell from an
earlier launch, empty or mistyped, is named in one line instead of ending in int()'s ValueError.
"""

from __future__ import annotations

import os

from mmsr.errors import MMSRError


def env_int(name: str, default: int | None) -> int:
    """A torchrun variable as a whole number; one left in the shell, empty or mistyped, is named.
    `default` None: it must be set (torchrun sets RANK with WORLD_SIZE)."""
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.strip().isdigit():
        said = "is not set" if text is None else f"is {text!r}, not a whole number"
        raise MMSRError(f"{name} {said}", where=f"environment variable {name}",
                        hint="launch with torchrun, which sets WORLD_SIZE, RANK and LOCAL_RANK, or unset "
                             "WORLD_SIZE to run in one process")
    return int(text)
