"""The user-facing error base, and the store's own error.

`UserError` lives here because the store may not import mmsr; `mmsr.errors.MMSRError`
subclasses it, so the CLI catches one type for every problem a user can fix.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A problem the user can fix. `str()` is one line: "where: message (hint)"."""

    def __init__(self, message: str, where: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.where = None if where is None else str(where)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split("\n"))


class StoreError(UserError):
    """A problem with a cache: missing, incomplete, mismatching or busy."""
