"""Importers: the formats this field's code produces -> a canonical mmsr dataset.

    from mmsr.data.importers import import_dataset, formats
    report = import_dataset("recbole", ["path/to/ml-100k"], name="ml-100k")

Formats are chosen by name from a registry (`base.register`); each lives in its own module.
See docs/importers.md for what each one reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from mmsr import paths
from mmsr.atomic import refuse_existing
from mmsr.data.dataset import META_FILE, DatasetWriter
from mmsr.data.importers.base import IMPORTERS, ImportReport, ProgressFactory, no_progress, register
from mmsr.errors import MMSRError

# Importing the modules registers them (timm-style).
from mmsr.data.importers import mmsr_lmdb, recbole, amazon2023, pixelrec  # noqa: E402,F401  isort: skip

__all__ = ["IMPORTERS", "ImportReport", "formats", "import_dataset", "register"]


def formats() -> list[str]:
    return IMPORTERS.names()


def import_dataset(format: str, sources: Iterable[str | os.PathLike], *, name: str,
                   on_bad_image: str = "error", overwrite: bool = False, allow_empty_text: bool = False,
                   duplicate_users: str = "error", progress: ProgressFactory = no_progress) -> ImportReport:
    """Read `sources` in `format` and write the canonical dataset `name` atomically.

    On any error nothing is left behind and an existing dataset of that name is untouched.
    `duplicate_users` (error, merge, last) applies to formats with one line per user (mmsr-lmdb).
    """
    importer = IMPORTERS.entry(format)
    sources = [Path(source).expanduser() for source in sources]
    if not sources:
        raise MMSRError(f"{format}: no source given", hint=importer.help)
    for source in sources:
        if not source.exists():
            raise MMSRError("no such file or directory", where=source, hint=f"{format} reads: {importer.help}")
    dest = paths.dataset_dir(name)
    refuse_existing(dest, overwrite, META_FILE)  # before reading gigabytes
    report = ImportReport(format=format, name=Path(name).name)
    writer = DatasetWriter(dest, name=report.name, source=f"{format}: " + ", ".join(str(s) for s in sources),
                           on_bad_image=on_bad_image, overwrite=overwrite, allow_empty_text=allow_empty_text,
                           duplicate_users=duplicate_users)
    with writer:
        importer.builder(sources, writer, report, progress)
    meta = json.loads((dest / "meta.json").read_text(encoding="utf-8"))
    report.path = dest
    report.counts = meta["counts"]
    report.problems = list(meta.get("problems", []))
    report.duplicate_users = list(meta.get("duplicate_users", []))
    return report
