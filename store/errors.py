"""The user-facing error base, and the store's own error.

`UserError` lives here because the store may not import mmsr; `mmsr.errors.MMSRError`
subclasses it, so the CLI catches one type for every problem a user can fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator


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


# A full disk, a full quota and a file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the
# write fails with EFBIG) all mean the same to a user: this path could not be written.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutOfSpaceError(UserError):
    """A write failed for lack of space. What was being written is discarded; finished work stays."""

    reason = "no space left on device"


class UnwritableError(UserError):
    """A path that cannot be written as it is: a folder by the file's name, a file where its folder
    should be, no permission, a read-only or virtual file system. Nothing was written there."""


RESUME_HINT = ("free some space (or raise the quota or file-size limit) and rerun the command: finished work "
               "is kept and it resumes")


@contextlib.contextmanager
def out_of_space_guard(path: str | os.PathLike, what: str | None = None, hint: str = RESUME_HINT) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT / EFBIG inside the block into one OutOfSpaceError naming `path`
    (and `what` was being written there, e.g. "text chunk 3"); `hint` says what the rerun does.

    A bare `write()` failure carries no file name, so the caller says which path it was writing.
    """
    try:
        yield
    except OutOfSpaceError as error:
        if what is None and hint == RESUME_HINT:
            raise
        # A helper's own guard named its file (a manifest marker, say); the caller knows better what it was.
        raise _out_of_space(path, what, error.reason, hint) from None
    except OSError as error:
        if error.errno not in OUT_OF_SPACE:
            raise
        raise _out_of_space(path, what, os.strerror(error.errno).lower(), hint) from None


def _out_of_space(path: str | os.PathLike, what: str | None, reason: str, hint: str) -> OutOfSpaceError:
    target = f" {what}" if what else ""
    error = OutOfSpaceError(f"cannot write{target}: {reason}", where=path, hint=hint)
    error.reason = reason
    return error
