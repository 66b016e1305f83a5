"""The store's one exception type. It mirrors `mmsr.errors.MMSRError` without importing mmsr."""

from __future__ import annotations

import os


class StoreError(Exception):
    """A problem with a cache the user can fix: missing, incomplete, mismatching or busy.

    `str()` is one line: "where: message (hint)".
    """

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
