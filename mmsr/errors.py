"""The library's user-facing exception type.

The CLI prints `str(error)` as a single line and exits with status 2; `--debug` adds the
traceback. Anything else that escapes is a bug, not a user error. The formatting lives in
`mmsr_store.errors.UserError`, the base the store's errors share (the store may not import mmsr).
"""

from __future__ import annotations

import os

from mmsr_store.errors import UserError


class MMSRError(UserError):
    """A problem the user can fix: bad input, a missing file, a mismatching cache.

    `where` names the file (and line) or the item; `hint` says what to do about it.
    """

    def __init__(self, message: str, *, where: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message, where, hint)
