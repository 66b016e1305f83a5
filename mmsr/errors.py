"""The library's user-facing exception type.

The CLI prints `str(error)` as a single line and exits with status 2; `--debug` adds the
traceback. Anything else that escapes is a bug, not a user error. The formatting lives in
`mmsr_store.errors.UserError`, the base the store's errors share (the store may not import mmsr).
"""

from __future__ import annotations

import os
import signal

from mmsr_store.errors import UserError


class MMSRError(UserError):
    """A problem the user can fix: bad input, a missing file, a mismatching cache.

    `where` names the file (and line) or the item; `hint` says what to do about it.
    """

    def __init__(self, message: str, *, where: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message, where, hint)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, a scheduler pre-empting the job, `kill`), raised where Ctrl-C's
    KeyboardInterrupt would be, so that every clean-up written for Ctrl-C runs for it too. It
    subclasses KeyboardInterrupt for that reason only; its exit status is 143, not 130."""

    signum = signal.SIGTERM
    # typer turns a KeyboardInterrupt inside a command into Exit(130) and drops it; the CLI reads
    # the status from here instead (cleared by each `mmsr` main()).
    raised = False

    def __init__(self, *args):
        super().__init__(*args)
        Terminated.raised = True


def stop_signal(stop: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for `Terminated`, else Ctrl-C's SIGINT."""
    return int(getattr(stop, "signum", signal.SIGINT))


def interrupt_status(stop: BaseException) -> int:
    """The exit status of a command stopped by `stop`: 128 + the signal, as a shell reports it."""
    return 128 + stop_signal(stop)


class Interrupted(MMSRError):
    """A command stopped by signal `signum` with its finished work kept; exits 128 + the signal."""

    label = "interrupted"

    def __init__(self, signum: int, message: str, *, where: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message, where=where, hint=hint)
        self.exit_status = 128 + int(signum)
