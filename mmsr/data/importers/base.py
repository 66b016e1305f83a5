"""What every importer shares: the registry, source checks, line readers and the image policy.

An importer is a function `(sources, writer, report, progress) -> None` registered under a
format name with `@register("name", help=...)`. It reads the user's files with bounded memory
(line by line; only id sets are kept) and feeds a `DatasetWriter`: all items first, then the
interactions. It raises `MMSRError(message, where="file:line" or a key, hint=...)` on bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmsr.data.dataset import DatasetWriter, placeholder_picture
from mmsr.data.textfile import iter_json_lines, iter_lines  # noqa: F401  (re-exported for importers)
from mmsr.errors import MMSRError
from mmsr.registry import Registry
from mmsr.progress import Advance, ProgressFactory, no_progress  # noqa: F401  (re-exported for importers)


@dataclass
class ImportReport:
    """What an import produced: counts from meta.json, problems met, duplicate users merged under
    --duplicate-users merge|last (meta.json's `duplicate_users`), and notes for the user."""

    format: str
    name: str
    path: Path | None = None
    counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    duplicate_users: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_images(self) -> bool:
        return bool(self.counts.get("items_with_image"))


# An importer: (sources, writer, report, progress) -> None.
Importer = Callable[[list[Path], DatasetWriter, ImportReport, ProgressFactory], None]
IMPORTERS: Registry[None] = Registry("import format")


def register(name: str, *, help: str):
    """Register an importer function under a format name (`mmsr data import NAME ...`)."""
    return IMPORTERS.register(name, help=help)


# ----------------------------------------------------------------------------- sources


def require_file(path: Path, what: str) -> Path:
    """The checks every input file gets: it exists, is a file (not a directory) and is not empty."""
    path = Path(path)
    if not path.exists():
        raise MMSRError(f"{what}: no such file", where=path)
    if path.is_dir():
        raise MMSRError(f"{what}: this is a directory, a file was expected", where=path,
                        hint="pass the file itself, not the folder that holds it")
    if path.stat().st_size == 0:
        raise MMSRError(f"{what}: empty file (0 bytes)", where=path, hint="the download or export was cut short")
    return path


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise MMSRError(f"{what}: no such directory", where=path)
    if not path.is_dir():
        raise MMSRError(f"{what}: this is a file, a directory was expected", where=path)
    return path


def size_kb(path: Path) -> float:
    """A file's size in kB, the progress total of reading it (`iter_lines` advances by the kB of
    each line read, so the bar ends at 100% whatever the size; rounding down left small files'
    bars at a few percent)."""
    return Path(path).stat().st_size / 1024


def parse_time(text: str, where: str) -> float:
    """A numeric timestamp (seconds, milliseconds, anything monotone); anything else is an error."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise MMSRError(f"timestamp {text!r} is not a number", where=where,
                        hint="timestamps must be numeric (e.g. unix seconds)") from None
    if not math.isfinite(value):
        raise MMSRError(f"timestamp {text!r} is not a finite number", where=where)
    return value


# ----------------------------------------------------------------------------- pictures

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG", ".WEBP")


def find_picture(folder: Path, stems: list[str]) -> Path | None:
    """The first `folder/STEM.<jpg|jpeg|png|webp>` (or `folder/NAME` when NAME has a suffix) that exists."""
    for stem in stems:
        if not stem or "/" in stem or stem in (".", ".."):
            continue
        if Path(stem).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
            candidate = folder / stem
            if candidate.is_file():
                return candidate
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def bad_image(writer: DatasetWriter, reason: str, where: str, *, hint: str | None = None):
    """Apply the writer's `on_bad_image` policy to a picture the importer could not get.

    error: raise; skip: the item keeps no picture; placeholder: a grey 224x224 picture.
    Returns what to pass as `image=` to `add_item`.
    """
    if writer.on_bad_image == "error":
        raise MMSRError(reason, where=where, hint=hint or "fix the source, or use --on-bad-image skip|placeholder")
    writer.problems.append(f"{where}: {reason} -> {writer.on_bad_image}")
    if writer.on_bad_image == "skip":
        return None
    return placeholder_picture()
