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

from mmsr.torchrun_env import env_int

console = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="Override a config value: --set section.key=value (repeatable).")


def checked_by(problem_of):
    """A typer callback refusing a value that `problem_of` finds wrong (it returns why, or None):
    typer's error names the option, and the command stops before it loads anything."""
    def callback(value):
        problem = None if value is None else problem_of(value)
        if problem:
            raise typer.BadParameter(f"{value!r} {problem}")
        return value
    return callback


def _device_problem(value: str) -> str | None:
    from mmsr.distributed import device_problem  # deferred: torch loads when a command runs, not for --help

    return device_problem(value)


def _search_device_problem(value: str) -> str | None:
    from mmsr.eval.search import SEARCH_DEVICES  # deferred: as above

    return None if value in SEARCH_DEVICES else "is not where mmsr ranks; use " + ", ".join(SEARCH_DEVICES)


check_device = checked_by(_device_problem)
check_search_device = checked_by(_search_device_problem)


def is_rank_zero() -> bool:
    return env_int("RANK", 0) == 0


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
        unit = task.fields.get("unit", self.unit)
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


_open_views: list[Progress] = []  # rich draws one live view at a time; inner bars join the outer one


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "items") -> Iterator:
    """Yield `advance(n)`; draws a rich bar with rate and ETA on rank 0 only (stderr).

    A bar opened inside another (a study's runs around each run's epochs) is one more line of
    the same view, removed when it closes."""
    if not is_rank_zero() or os.environ.get("MMSR_NO_PROGRESS"):
        yield lambda n=1: None
        return
    if _open_views:
        view = _open_views[-1]
        task = view.add_task(description, total=total, unit=unit)
        try:
            yield lambda n=1: view.advance(task, n)
        finally:
            view.remove_task(task)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               RateColumn(unit), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as view:
        _open_views.append(view)
        try:
            task = view.add_task(description, total=total, unit=unit)
            yield lambda n=1: view.advance(task, n)
        finally:
            _open_views.pop()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()
