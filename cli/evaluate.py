"""`mmsr eval`, `mmsr compare`, `mmsr ranks` and `mmsr recommend`: exact full ranking over every item."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from mmsr.config import MAX_SEED
from mmsr_cli.common import check_device, check_search_device, console, is_rank_zero, log, print_json

# Options several of these commands take, declared once so that their help stays one text.
OneSplitOption = typer.Option("test", "--split", help="One split, as in `mmsr eval` (test | valid | cold | "
                              "cold-test | new).")
ProtocolOption = typer.Option("paper", "--protocol", help="paper: mask the user's history items; "
                              "recbole: no masking (RecBole's full ranking).")
CheckpointOption = typer.Option("best", "--checkpoint", help="best | last")
BatchSizeOption = typer.Option(None, "--batch-size", min=1, help="Items/users per batch: bounds memory. Default: "
                               "the run's eval_batch_size, the one its training log's validation used, so that "
                               "`--split valid --protocol <its valid_protocol>` on the same device gives those "
                               "figures back; another size can turn a near-tie (an item tower's vectors can differ "
                               "in their last bits with the batch).")
DeviceOption = typer.Option("auto", "--device", callback=check_device,
                            help="Where the model runs: auto | cpu | cuda | cuda:N.")
JsonOption = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def eval_command(
    run: str = typer.Option(..., "--run", "--run-dir", help="Run name or directory (from `mmsr train`; "
                            "--run-dir under torchrun)."),
    faiss: bool = typer.Option(True, "--faiss/--no-faiss", help="Exact full ranking of every item: the only "
                               "mode (--no-faiss is refused); --search-backend picks how it is computed, FAISS or "
                               "dense counting, with the same ranks."),
    split: str = typer.Option("test", "--split", help="test | valid | cold (the paper's: every sub-sequence ending "
                              "in a cold item, most of them inside the training part) | cold-test (the test cases "
                              "whose target is cold: held out) | new (test cases whose target has no training "
                              "interaction: only content can rank it). Several, comma-separated (test,cold,new), "
                              "share one pass of the item tower."),
    k: str = typer.Option("10,20,50", "--k", help="Cut-offs for HR@K and NDCG@K."),
    protocol: str = ProtocolOption,
    checkpoint: str = CheckpointOption,
    batch_size: int | None = BatchSizeOption,
    device: str = DeviceOption,
    search_device: str = typer.Option("auto", "--search-device", callback=check_search_device, help="Where the ranking runs: auto (the GPU "
                                      "when CUDA is present) | cpu | gpu."),
    search_backend: str = typer.Option("auto", "--search-backend", help="auto (on a GPU: faiss-gpu, or dense-gpu "
                                       "without a FAISS GPU build; on CPU: the fastest exact path here, timed once) "
                                       "| faiss | dense | dense-torch | dense-numpy | dense-gpu. Ranks are the same "
                                       "on every path."),
    shard_items: bool = typer.Option(False, "--shard-items", help="Under torchrun: each rank keeps only its "
                                     "slice of the item vectors and counts the items of its slice above each "
                                     "target; the counts are summed. For catalogues whose vectors do not fit in "
                                     "one rank's memory. Dense counting on the CPU (not FAISS); same ranks."),
    json_out: bool = JsonOption,
):
    """Full-ranking HR@K / NDCG@K on each split; also written to RUN/eval_<split>.json.

    Each figure comes with its standard error over the split's cases
    ("standard_errors" in the JSON): how much the choice of cases alone moves
    it. Two runs' figures less than about three standard errors apart
    (1.96 x sqrt 2) are not told apart by these cases at the 95% level; seeds
    add their own spread on top (`mmsr compare` pairs two runs case by case).

    With --json: one split prints its result object; several print {"splits": {name: result}}."""
    from mmsr.eval.runner import evaluate_splits, parse_splits  # deferred: pulls in torch (seconds)

    splits = parse_splits(split)
    results = evaluate_splits(run, splits, ks=k, protocol=protocol, faiss=faiss, checkpoint=checkpoint,
                              batch_size=batch_size, device=device, search_device=search_device,
                              search_backend=search_backend, shard_items=shard_items)
    if not is_rank_zero():
        return
    if json_out:
        print_json(results[splits[0]] if len(splits) == 1 else {"splits": results})
        return
    for name, result in results.items():
        if not result["users"]:  # its metrics are 0 by convention (finalize): not a figure to read
            console.print(f"{name} split: no cases, nothing ranked (`mmsr data info` counts each split's cases)")
            continue
        table = Table(title=f"{name} split: {result['users']:,} cases, {result['items']:,} items, "
                            f"{result['protocol']}", caption=result["search"])
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("± std. error", justify="right")  # the cases' own spread, not the seed's
        errors = result.get("standard_errors", {})
        for key, value in result["metrics"].items():
            table.add_row(key, f"{value:.4f}", f"{errors[key]:.4f}" if key in errors else "")
        Console().print(table)


def compare_command(
    run_a: str = typer.Argument(..., help="The first run (name or directory), another tool's ranks (a .csv "
                                "file, see below), or several of either separated by commas (seeds of one config, "
                                "averaged case by case): A."),
    run_b: str = typer.Argument(..., help="The second run, ranks file, or several: B. Differences are B - A."),
    split: str = OneSplitOption,
    k: str = typer.Option("10,20", "--k", help="Cut-offs for HR@K and NDCG@K."),
    protocol: str = ProtocolOption,
    checkpoint: str = CheckpointOption,
    resamples: int = typer.Option(9999, "--resamples", help="Bootstrap and randomisation resamples."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the resampling (the figures repeat exactly)."),
    batch_size: int | None = BatchSizeOption,
    device: str = DeviceOption,
    shared_cases: bool = typer.Option(False, "--shared-cases", help="With ranks files: pair only the cases "
                                      "every file ranks, leaving out the files' rows whose user has another target "
                                      "in the runs (tools can order near-simultaneous interactions differently) and "
                                      "the runs' cases a file lacks; the result counts them."),
    json_out: bool = JsonOption,
):
    """Is run B better than run A on the same cases, beyond what the cases move?

    Ranks every case of the split under both runs, then per metric: each
    run's mean ± its standard error, the paired difference B - A with a 95%
    bootstrap interval over the cases, and the p-value of a paired
    randomisation test. Both runs must rank the same cases (same dataset and
    split settings). One run per side does not account for seeds: compare two
    seeds of one config to see what a seed alone moves. Several runs on a side
    (A1,A2,A3 B1,B2,B3) are averaged case by case first, so the test counts
    what the seeds move each case (not a shift a seed gives every case alike).
    With two runs or more on both sides, two more columns resample the runs
    within each side as well as the cases: that interval and p-value count
    the seeds' spread too (wider; the one to read before calling a
    difference between configs, rather than between these runs, resolved).

    Any member of a side may be another tool's per-case ranks (RecBole, a
    paper's script): a .csv with the header user,item,rank, one row per case
    of the split, user and item (the target) in the dataset's own IDs, rank =
    1 + the items scoring strictly higher under the same protocol, so
    rb_seed1.csv,rb_seed2.csv is another tool's seeds as one side. Files are
    matched to the runs' cases by user and target (at least one run must be
    named); a row the runs do not have, or a case without a row, is refused
    with its line (--shared-cases pairs the rest instead)."""
    from mmsr.eval.compare import compare_runs  # deferred: pulls in torch (seconds)

    result = compare_runs(run_a, run_b, split, protocol=protocol, ks=k, checkpoint=checkpoint, resamples=resamples,
                          seed=seed, batch_size=batch_size, device=device, shared_cases=shared_cases)
    if json_out:
        print_json(result)
        return
    caption = f"A = {result['runs']['a']}\nB = {result['runs']['b']}"
    if "left_out" in result:
        left = result["left_out"]
        caption += (f"\nleft out: {left['run_cases']:,} of the runs' cases, {left['file_rows']:,} rows of "
                    f"{left['files']} file{'s' if left['files'] > 1 else ''}"
                    + "".join(f"\n  {row}" for row in left["rows"][:5]))
    table = Table(title=f"{split} split: {result['cases']:,} cases, {protocol} protocol, {checkpoint} checkpoints",
                  caption=caption)
    seeds_too = all("across_runs" in m for m in result["metrics"].values())
    columns = ["metric", "A ± s.e.", "B ± s.e.", "B - A", "95% interval", "p (paired)"]
    for column in columns + (["95%, runs resampled too", "p, runs too"] if seeds_too else []):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in result["metrics"].items():
        row = [name, f"{m['a']:.4f} ± {m['se_a']:.4f}", f"{m['b']:.4f} ± {m['se_b']:.4f}",
               f"{m['difference']:+.4f}", _interval(m["ci95"]), f"{m['p_value']:.3g}"]
        if seeds_too:
            row += [_interval(m["across_runs"]["ci95"]), f"{m['across_runs']['p_value']:.3g}"]
        table.add_row(*row)
    Console().print(table)


def _interval(bounds: list[float]) -> str:
    return f"[{bounds[0]:+.4f}, {bounds[1]:+.4f}]"


def ranks_command(
    run: str = typer.Argument(..., help="The run (name or directory)."),
    out: str = typer.Argument(..., help="The file to write, NAME.csv."),
    split: str = OneSplitOption,
    protocol: str = ProtocolOption,
    checkpoint: str = CheckpointOption,
    batch_size: int | None = BatchSizeOption,
    device: str = DeviceOption,
    json_out: bool = JsonOption,
):
    """Write the rank of every case of a split under a run to a CSV: user,item,rank.

    User and item (the case's target) are the dataset's own IDs; rank is exact,
    1 + the items scoring strictly higher (every item counted), so any metric
    can be computed from the file. It is the file `mmsr compare` takes as one
    side: pair a run with one trained by another mmsr version (whose
    checkpoint this version may refuse to load), or hand the ranks to
    another tool's significance test."""
    from mmsr.eval.run_ranks import write_run_ranks  # deferred: pulls in torch (seconds)

    result = write_run_ranks(run, out, split, protocol=protocol, checkpoint=checkpoint, batch_size=batch_size,
                             device=device)
    if json_out:
        print_json(result)
        return
    if not result["cases"]:
        typer.echo(f"{split} split: no cases, nothing ranked (`mmsr data info` counts each split's cases); "
                   f"{result['path']} holds the header alone")
        return
    typer.echo(f"{result['cases']:,} {split} cases ranked ({protocol} protocol, {checkpoint} checkpoint): "
               f"{result['path']}  HR@10 {result['HR@10']:.4f}, NDCG@10 {result['NDCG@10']:.4f}")


def recommend_command(
    run: str = typer.Option(..., "--run", help="Run name or directory."),
    history: str = typer.Option(..., "--history", help="Comma-separated item ids, oldest first."),
    k: int = typer.Option(10, "-k", "--k", help="How many items to return."),
    checkpoint: str = CheckpointOption,
    json_out: bool = JsonOption,
):
    """Top-k items for a history (history items excluded). Cold items are rankable too."""
    from mmsr.eval.recommend import parse_history, recommend  # deferred: pulls in torch (seconds)

    result = recommend(run, parse_history(history), k=k, checkpoint=checkpoint)
    if json_out:
        print_json(result)
        return
    for note in result["notes"]:
        log(f"[yellow]note: {note}")
    table = Table(title=f"top {len(result['items'])} for a history of {len(result['history'])} items")
    for column in ("rank", "item", "title", "score", "cold"):
        table.add_column(column)
    for rank, row in enumerate(result["items"], 1):
        table.add_row(str(rank), row["item"], row["title"], f"{row['score']:.4f}", "yes" if row["cold"] else "")
    Console().print(table)
