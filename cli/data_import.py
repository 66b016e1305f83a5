"""`mmsr data import FORMAT --name NAME SOURCE...`: the user's files -> a canonical dataset.

Registered by cli/data.py as `app.command("import")(import_)`.
"""

from __future__ import annotations

from pathlib import Path

import enum

import typer
from rich.console import Console
from rich.table import Table

from mmsr.data.dataset import BAD_IMAGE_POLICIES, DUPLICATE_USERS_POLICIES
from mmsr.data.importers import IMPORTERS, formats, import_dataset
from mmsr_cli.common import progress_bar

MAX_PROBLEMS_SHOWN = 10

# Choices as enums, built from the registry, so --help lists exactly the registered formats.
Format = enum.Enum("Format", {name: name for name in formats()}, type=str)
BadImage = enum.Enum("BadImage", {name: name for name in BAD_IMAGE_POLICIES}, type=str)
DuplicateUsers = enum.Enum("DuplicateUsers", {name: name for name in DUPLICATE_USERS_POLICIES}, type=str)


def _doc() -> str:
    lines = ["Import a dataset from the files of another tool.", "",
             "Streams the source, validates it and writes the dataset atomically: a failed import leaves "
             "nothing behind and never touches an existing dataset. Formats (details in docs/importers.md):", ""]
    for name in formats():
        lines += [f"{name}: {IMPORTERS.entry(name).help}", ""]
    return "\n".join(lines)


def _progress(description: str, total: int | None):
    return progress_bar(description, total, unit="kB")


def import_(
    format: Format = typer.Argument(..., help="One of: " + ", ".join(formats()) + ".", show_default=False),
    sources: list[Path] = typer.Argument(..., metavar="SOURCE...",
                                         help="The files and folders of the source (any order; see docs/importers.md)."),
    name: str = typer.Option(..., "--name", help="Dataset name (under $MMSR_HOME/datasets) or a path."),
    on_bad_image: BadImage = typer.Option("error", "--on-bad-image",
                                          help="A missing or unreadable picture: stop (error), keep the item without "
                                          "a picture (skip), or give it a grey picture (placeholder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset of that name "
                                                              "(only once the import has succeeded)."),
    allow_empty_text: bool = typer.Option(False, "--allow-empty-text", help="Accept items without any text."),
    duplicate_users: DuplicateUsers = typer.Option("error", "--duplicate-users",
                                                   help="mmsr-lmdb: a user with more than one line in the users "
                                                   "file: stop (error), join the lines in line order (merge), or "
                                                   "keep only the last line (last, what the reference code does). "
                                                   "Each merge is listed in the summary and in meta.json."),
):
    format, on_bad_image = Format(format).value, BadImage(on_bad_image).value
    duplicate_users = DuplicateUsers(duplicate_users).value
    report = import_dataset(format, sources, name=name, on_bad_image=on_bad_image, overwrite=overwrite,
                            allow_empty_text=allow_empty_text, duplicate_users=duplicate_users, progress=_progress)
    out = Console()
    table = Table(title=f"imported {report.name} ({report.format})")
    table.add_column("")
    table.add_column("count", justify="right")
    for key in ("users", "items", "interactions", "items_with_text", "items_with_image"):
        table.add_row(key, f"{report.counts.get(key, 0):,}")
    out.print(table)
    for note in report.notes:
        out.print(f"[cyan]note:[/] {note}", highlight=False)
    if report.problems:
        plural = "s" if len(report.problems) != 1 else ""
        out.print(f"[yellow]{len(report.problems):,} problem{plural} found (policy --on-bad-image {on_bad_image}):",
                  highlight=False)
        for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
            out.print(f"  {problem}", highlight=False, markup=False)
        if len(report.problems) > MAX_PROBLEMS_SHOWN:
            out.print(f"  ... {len(report.problems) - MAX_PROBLEMS_SHOWN:,} more, all listed in "
                      f"{report.path / 'meta.json'}", highlight=False, markup=False)
    else:
        out.print("no problems found")
    if report.duplicate_users:
        _print_duplicate_users(out, report)
    if not report.has_images:
        out.print("[yellow]no images: train text-only models (MMSR-T) on this dataset")
    out.print(f"[green]wrote {report.path}", highlight=False)


def _print_duplicate_users(out: Console, report) -> None:
    merged = report.duplicate_users
    policy = merged[0]["policy"]
    plural = "s" if len(merged) != 1 else ""
    out.print(f"[yellow]{len(merged):,} user{plural} with more than one line (policy --duplicate-users {policy}):",
              highlight=False)
    for entry in merged[:MAX_PROBLEMS_SHOWN]:
        lines = ", ".join(map(str, entry["lines"]))
        kept = "joined in line order" if policy == "merge" else f"kept line {entry['kept'][-1]}"
        out.print(f"  {entry['file']}: user {entry['user']!r} on lines {lines}: {kept}", highlight=False, markup=False)
    if len(merged) > MAX_PROBLEMS_SHOWN:
        out.print(f"  ... {len(merged) - MAX_PROBLEMS_SHOWN:,} more, all listed in {report.path / 'meta.json'}",
                  highlight=False, markup=False)


import_.__doc__ = _doc()  # the --help text lists the registered formats
