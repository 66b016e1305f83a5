"""`mmsr study`: run one of the paper's experiments from its study file, and render its table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mmsr.comma_lists import split_commas
from mmsr.errors import MMSRError
from mmsr_cli.common import SetOption, console, log, progress_bar

app = typer.Typer(help="The paper's experiments as data: configs/paper/*.toml, one per table or figure.",
                  no_args_is_help=True)


def _list(text: Optional[str], option: str, example: str) -> Optional[list[str]]:
    return split_commas(text, where=option, example=example) if text else None


def _datasets(text: Optional[str]) -> Optional[list[str]]:
    return _list(text, "--dataset", "demo,ml-100k")


def _only(text: Optional[str]) -> Optional[list[str]]:
    return _list(text, "--only", "sum,gate (the study's variant names)")


def _seeds(text: Optional[str]) -> Optional[list[int]]:
    try:
        return [int(part) for part in _list(text, "--seeds", "0,1,2")] if text else None
    except ValueError:
        raise MMSRError(f"--seeds {text!r} is not a comma-separated list of integers", hint="e.g. --seeds 0,1,2") from None


FileArgument = typer.Argument(..., help="A study file (configs/paper/*.toml).")
DatasetOption = typer.Option(None, "--dataset", help="Run on these datasets (comma-separated) instead of the "
                             "study's; variants with their own dataset keep it.")
SeedsOption = typer.Option(None, "--seeds", help="Repeat every variant with these seeds, e.g. 0,1,2: the report "
                           "shows mean ± standard deviation.")
OnlyOption = typer.Option(None, "--only", help="Only these variants (comma-separated), plus what they start from.")
OutOption = typer.Option(None, "--out", help="Study directory name under $MMSR_HOME/studies, or a path "
                         "(default: the study's name).")


@app.command("run")
def run_command(
    file: Path = FileArgument,
    dataset: Optional[str] = DatasetOption,
    overrides: Optional[list[str]] = SetOption,
    only: Optional[str] = OnlyOption,
    seeds: Optional[str] = SeedsOption,
    out: Optional[str] = OutOption,
):
    """Train and evaluate every variant, then write results.csv, report.md and the figures.

    Resumable: kill it at any point and run the same command again. Finished runs are not
    trained again, the interrupted one resumes from its checkpoint. Variants whose encoder
    settings match share one cache, built once. Output: $MMSR_HOME/studies/NAME/.
    """
    from mmsr.study.runner import run_study  # deferred: pulls in torch (seconds)

    out_dir = run_study(file, datasets=_datasets(dataset), seeds=_seeds(seeds), only=_only(only),
                        sets=overrides, out=out, progress=progress_bar, log=log)
    log(f"[green]study done: {out_dir / 'report.md'}")


@app.command("plan")
def plan_command(
    file: Path = FileArgument,
    dataset: Optional[str] = DatasetOption,
    overrides: Optional[list[str]] = SetOption,
    only: Optional[str] = OnlyOption,
    seeds: Optional[str] = SeedsOption,
    out: Optional[str] = OutOption,
):
    """List the runs a `study run` with the same options would make, and which are finished."""
    # deferred: these pull in torch (seconds), which `mmsr study --help` never needs
    from mmsr.study.runner import plan_study_file

    study, _, runs = plan_study_file(file, datasets=_datasets(dataset), seeds=_seeds(seeds), only=_only(only),
                                     sets=overrides, out=out)
    table = Table(title=f"study {study.name}: {study.title}")
    for column in ("run", "state", "starts from"):
        table.add_column(column)
    for run in runs:
        table.add_row(run.name, run.state(), Path(run.config.init_from).name if run.variant.init_from else "")
    console.print(table)


@app.command("merge")
def merge_command(
    sources: list[str] = typer.Argument(..., help="Study directories (names under $MMSR_HOME/studies, or paths) "
                                        "made from one study file, e.g. by `--only` on several machines."),
    out: str = typer.Option(..., "--out", help="The merged study's name under $MMSR_HOME/studies, or a path; "
                            "an existing directory of the same study gains the runs it lacks."),
):
    """Put the finished runs of several directories of one study into one, and render its report.

    Runs are hard-linked where possible (else copied), each whole or not at all; a run whose
    config differs between sources, a transfer run, or sources run from another study file or
    with other --dataset/--set options are refused before anything is written."""
    from mmsr.study.merge import merge_studies  # deferred: the report pulls in matplotlib

    out_dir = merge_studies(sources, out, log=log)
    log(f"[green]merged: {out_dir / 'report.md'}")


@app.command("report")
def report_command(name: str = typer.Argument(..., help="Study name (under $MMSR_HOME/studies) or directory.")):
    """Re-render results.csv, report.md and the figures from the finished runs, training nothing."""
    from mmsr.study.report import report_study  # deferred: keeps `mmsr --help` fast

    for path in report_study(name, log=log):
        log(f"wrote {path}")
