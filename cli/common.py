"""Shared pieces of the command groups: progress bars, JSON output, the --set option."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="Override a config value: --set section.key=value (repeatable).")


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(text: str) -> None:
    """A library message, printed once: under torchrun every rank runs the same code."""
    if is_rank_zero():
        console.print(text)


class RateColumn(TextColumn):
    def __init__(self, unit: str = "items"):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "items") -> Iterator:
    """Yield `advance(n)`; draws a rich bar with rate and ETA on rank 0 only (stderr)."""
    if not is_rank_zero() or os.environ.get("MMSR_NO_PROGRESS"):
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               RateColumn(unit), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()
