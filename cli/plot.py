"""`mmsr plot`: the paper's figures from run directories (each a PNG and the CSV it was drawn from)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmsr.config import MAX_SEED
from mmsr_cli.common import progress_bar

app = typer.Typer(
    help="Figures of trained runs: t-SNE of items (Fig. 4) and of users (Fig. 5), training curves. "
         "Each writes a PNG and, next to it, a CSV of the data it was drawn from (default: RUN/plots/).",
    no_args_is_help=True,
)

RunOption = typer.Option(..., "--run", help="Run name (under $MMSR_HOME/runs) or directory.")
CompareOption = typer.Option(None, "--compare", help="A second run on the same dataset, drawn in a second panel "
                             "with the same sample (the paper compares IDSR with MMSR).")
OutOption = typer.Option(None, "--out", help="Output directory (default: RUN/plots/).")
SeedOption = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the sample and of t-SNE: the same seed draws the same figure.")
CheckpointOption = typer.Option("best", "--checkpoint", help="best | last")
DistanceOption = typer.Option("euclidean", "--distance", help="t-SNE's distance: euclidean (the paper's) | cosine "
                              "(by direction alone: scores are inner products).")


def _written(paths: list[Path]) -> None:
    for path in paths:
        typer.echo(str(path))


@app.command("items")
def items_command(
    run: str = RunOption,
    compare: Optional[str] = CompareOption,
    items: int = typer.Option(1000, "--items", help="Items to sample from the catalogue (all if it has fewer)."),
    out: Optional[Path] = OutOption,
    seed: int = SeedOption,
    checkpoint: str = CheckpointOption,
    distance: str = DistanceOption,
):
    """t-SNE of item vectors coloured by log training popularity, cold items marked (Fig. 4).

    Writes items.png and items.csv (run,item,index,train_count,cold,x,y), or
    items-vs-OTHER.* with --compare OTHER. Cold: fewer training occurrences than the
    run's split.cold_threshold.
    """
    from mmsr.plots.items import plot_items  # deferred: torch, scikit-learn and matplotlib (seconds)

    _written(plot_items(run, out, compare=compare, items=items, seed=seed, checkpoint=checkpoint, distance=distance,
                        progress=progress_bar))


@app.command("users")
def users_command(
    run: str = RunOption,
    compare: Optional[str] = CompareOption,
    users: int = typer.Option(10, "--users", help="Users to sample (all if the split has fewer)."),
    out: Optional[Path] = OutOption,
    seed: int = SeedOption,
    checkpoint: str = CheckpointOption,
    distance: str = DistanceOption,
):
    """t-SNE of sampled users' vectors with their history items, one colour per user (Fig. 5).

    A user vector is the sequence model's output after the user's test history (the last
    split.max_seq_len items before the test target), as `mmsr eval` computes it; it is drawn
    as a star in the user's colour. Writes users.png and users.csv
    (run,user,kind,item,cold,x,y), or users-vs-OTHER.* with --compare OTHER.
    """
    from mmsr.plots.users import plot_users  # deferred: torch, scikit-learn and matplotlib (seconds)

    _written(plot_users(run, out, compare=compare, users=users, seed=seed, checkpoint=checkpoint, distance=distance,
                        progress=progress_bar))


@app.command("curves")
def curves_command(
    runs: list[str] = typer.Argument(..., metavar="RUN...", help="One or more run names or directories; one line "
                                     "per run."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="A metric to draw (repeatable): loss, lr, "
                                               "epoch_seconds, or a validation metric such as HR@10, NDCG@10. "
                                               "Default: loss and every validation metric recorded."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the first RUN/plots/)."),
):
    """Loss and validation metrics against epoch, from each run's metrics.jsonl.

    Writes curves.png (one panel per metric) and curves.csv (run,epoch,metric,value).
    """
    from mmsr.plots.curves import plot_curves  # deferred: matplotlib (a second)

    _written(plot_curves(runs, out, metrics=metric or None))
