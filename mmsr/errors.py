"""The one user-facing exception type of the library.

The CLI prints `str(error)` as a single line and exits with status 2; `--debug` adds the
traceback. Anything else that escapes is a bug, not a user error.
"""

from __future__ import annotations

import os


class MMSRError(Exception):
    """A problem the user can fix: bad input, a missing file, a mismatching cache.

    `where` names the file (and line) or the item; `hint` says what to do about it.
    """

    def __init__(self, message: str, *, where: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.where = None if where is None else str(where)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text
