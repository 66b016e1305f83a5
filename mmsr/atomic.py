"""Write-then-rename helpers: a failed or killed command leaves no half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mmsr.errors import MMSRError
from mmsr_store.layout import DIR_MODE, atomic_write_bytes  # one implementation; the store may not import mmsr

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_text", "refuse_existing", "refuse_foreign",
           "refuse_working_folder", "staged_dir"]


@contextlib.contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False, made_by: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds.
    `made_by`: as in `refuse_existing`."""
    final = Path(final)
    refuse_existing(final, overwrite, made_by)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, final)


@contextlib.contextmanager
def staged_dir(final: Path, staging: Path, *, overwrite: bool = False, made_by: str | None = None) -> Iterator[Path]:
    """`atomic_dir` for a long write that can resume: the block writes into `staging` (made if
    missing, kept as it is when it exists), which is renamed to `final` if the block succeeds
    and kept, for the rerun to go on from, if it fails. The caller decides whether what a
    kept `staging` holds is still valid, and must hold a lock: two writers would share it."""
    final, staging = Path(final), Path(staging)
    refuse_existing(final, overwrite, made_by)
    staging.mkdir(parents=True, exist_ok=True)
    yield staging
    _move_into_place(staging, final)


def link_or_copy(source: str, destination: str) -> None:
    """A `copy_function` for `shutil.copytree`: a hard link where the filesystem allows one (no
    bytes written; the content survives the source's removal), else a copy."""
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, destination)


def refuse_existing(final: Path, overwrite: bool, made_by: str | None = None) -> None:
    """The one "already exists" refusal of every atomic output (checked again where it must come
    before other work, e.g. the demo's stale staging folder). `made_by`: a file every such output
    holds (a dataset's meta.json); --overwrite then replaces only a folder that has it, or an
    empty one: `--name ""` or a mistyped path must never replace the datasets folder or a
    folder of the user's own."""
    refuse_working_folder(final)
    if not final.exists():
        return
    if not overwrite:
        raise MMSRError("already exists", where=final, hint="pick another name, or pass --overwrite")
    refuse_foreign(final, made_by)


def refuse_working_folder(final: Path) -> None:
    """An output is written beside `final` and renamed into place whole: the current folder, or
    one holding it (`--name .`, `--name ..`), cannot be; refused before anything is written."""
    try:
        here = Path.cwd()
    except FileNotFoundError:  # the current folder was deleted: no output can be it
        return
    path, here = Path(os.path.realpath(final)), Path(os.path.realpath(here))
    if path == here or path in here.parents:
        raise MMSRError("is the current folder, or holds it: an output is written as a folder of its own and moved "
                        "into place whole", where=final, hint="give a new folder's name or path, e.g. ./demo")


def refuse_foreign(folder: Path, made_by: str | None, what: str = "replaced") -> None:
    """Refuse to delete `folder` unless it holds `made_by` or nothing (see refuse_existing)."""
    if made_by is None or (folder / made_by).is_file():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    raise MMSRError(f"not {what}: it holds no {made_by}, so it is not something mmsr wrote", where=folder,
                    hint="pick another name or path; --overwrite replaces only what mmsr wrote there")


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():
        # Move the old one aside first, so that there is never a moment without a complete copy.
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
