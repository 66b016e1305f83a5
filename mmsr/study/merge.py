"""`mmsr study merge`: the finished runs of several directories of one study, in one directory.

A study's variants can run anywhere: `mmsr study run FILE --only a --out part-a` on one machine,
`--only b --out part-b` on another (or both side by side here, one thread each). Merging puts
their finished runs under one directory, whose report is then the whole table:

    mmsr study merge part-a part-b --out whole

What is merged, and what is refused (before anything is written):
- every source must have been run from the same study file (its copied `study.toml`), with the
  same `--dataset` and `--set` options: their runs answer one question;
- a run present in several sources must have the same config everywhere; a copy of it is kept;
- transfer runs (`init_from`) are refused: their config names their source run's directory;
- unfinished runs (no `study.json`) are left where they are and listed.

Runs are hard-linked where the filesystem allows it (checkpoints are written by rename, never in
place, so a later resume in either directory cannot change the other's files), else copied;
each arrives under a temporary name and is renamed into place, so an interrupted merge leaves
whole runs only and can be rerun. The report is then re-rendered as `mmsr study report` does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from mmsr.atomic import atomic_write_text, link_or_copy
from mmsr.errors import MMSRError
from mmsr.study.layout import (ORIGIN_FILE, RESULT_FILE, STUDY_FILE, load_run_study, make_study_dir, ran_study_dir,
                               read_origin, study_command, study_dir)
from mmsr.study.report import write_report
from mmsr.train.layout import CONFIG_FILE, read_run_json


def merge_studies(sources: list[str | Path], out: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Merge the finished runs of `sources` (study names or directories) into `out`; returns it."""
    if not sources:
        raise MMSRError("no study directory to merge", hint="name one or more: mmsr study merge A B --out NAME")
    target = study_dir(out)
    dirs = [ran_study_dir(source) for source in sources]
    study, _ = load_run_study(dirs[0])
    file_text = (dirs[0] / STUDY_FILE).read_text(encoding="utf-8")
    if target not in dirs and (target / STUDY_FILE).is_file():
        dirs.append(target)  # an existing directory of the study: checked like a source, its runs kept
    options = [_options(d) for d in dirs]
    for directory, option in zip(dirs[1:], options[1:]):
        if not (directory / STUDY_FILE).is_file():
            load_run_study(directory)  # raises: "not a study directory", naming it
        if (directory / STUDY_FILE).read_text(encoding="utf-8") != file_text:
            raise MMSRError(f"was run from another study file than {dirs[0]}", where=directory,
                            hint="merge only directories of one study file")
        for key in ("--dataset", "--set"):
            if option[key] != options[0][key]:
                raise MMSRError(f"was run with {key} {' '.join(option[key]) or '(none)'}, {dirs[0]} with "
                                f"{' '.join(options[0][key]) or '(none)'}", where=directory,
                                hint="runs made with other settings answer another question: keep them apart")
    # (an existing target study directory was checked above, as a source)
    if target.is_dir() and any(target.iterdir()) and not (target / STUDY_FILE).is_file():
        raise MMSRError("exists and is not a study directory", where=target, hint="merge into a new --out NAME")

    # The target first: a run it already holds stays, and is not placed again.
    chosen, unfinished = _finished_runs(sorted(dirs, key=lambda d: d != target))
    make_study_dir(target)
    moved = 0
    for name, run in sorted(chosen.items()):
        if run.parent.parent != target:
            _place(run, target / "runs" / name)
            config = run.parent.parent / "configs" / f"{name}.json"
            if config.is_file():
                (target / "configs").mkdir(exist_ok=True)
                shutil.copy2(config, target / "configs" / config.name)
            moved += 1
    seeds = sorted({seed for option in options for seed in option["--seeds"]}, key=int)
    command = study_command(study, target, options[0]["--dataset"] or None, [int(s) for s in seeds] or None,
                            options[0]["--set"] or None)
    atomic_write_text(target / STUDY_FILE, file_text)
    atomic_write_text(target / ORIGIN_FILE, json.dumps({"name": study.name, "file": str(study.path),
                                                        "command": command}) + "\n")
    log(f"merged {moved} run(s) into {target} ({len(chosen)} in all)")
    for run in unfinished:
        log(f"not finished, left in place: {run}")
    write_report(target, study, command, figures=True, log=log)
    return target


def _finished_runs(dirs: list[Path]) -> tuple[dict[str, Path], list[Path]]:
    """{run name: its first finished directory}, and the unfinished runs; refuses a name whose
    configs differ between directories, and transfer runs."""
    chosen: dict[str, Path] = {}
    unfinished = []
    for directory in dirs:
        for run in sorted((directory / "runs").glob("*/config.json")):
            run = run.parent
            if not (run / RESULT_FILE).is_file():
                unfinished.append(run)
                continue
            config = read_run_json(run, CONFIG_FILE)
            if config.get("init_from"):
                raise MMSRError("is a transfer run: its config names its source run's directory", where=run,
                                hint="run a transfer study in one directory; merge does not move transfer runs")
            first = chosen.setdefault(run.name, run)
            if first != run and read_run_json(first, CONFIG_FILE) != config:
                raise MMSRError(f"differs from {first} (same run name, other config)", where=run,
                                hint="keep one of them, or merge the other into another --out")
    return chosen, unfinished


def _place(run: Path, destination: Path) -> None:
    """`run` as `destination`, whole or not at all."""
    if destination.exists():
        raise MMSRError("already exists in the merged study, unfinished", where=destination,
                        hint="finish it there (mmsr study run ... --out) or remove it, then merge again")
    partial = destination.parent / f".{destination.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted merge left
    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run, partial, copy_function=link_or_copy)
    os.replace(partial, destination)


def _options(directory: Path) -> dict[str, list[str]]:
    """The `mmsr study run` options a study directory was made with (from its origin command)."""
    origin = read_origin(directory)
    words = shlex.split(origin.get("command", ""))
    found: dict[str, list[str]] = {"--dataset": [], "--set": [], "--seeds": []}
    for flag, value in zip(words, words[1:]):
        if flag in found:
            found[flag] += value.split(",") if flag != "--set" else [value]
    return found

