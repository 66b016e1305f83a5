"""`mmsr data`: create, import and inspect canonical datasets."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmsr import paths
from mmsr.config import MAX_SEED
from mmsr.data.dataset import load_dataset
from mmsr.data.demo import DEFAULT_OPTIONS, DEFAULT_SIZE, create_demo, generator_options, kept_note
from mmsr.data.split import SplitConfig, dataset_report
from mmsr.errors import MMSRError
from mmsr_cli.common import console, print_json, progress_bar
from mmsr_cli.data_import import import_

app = typer.Typer(help="Create, import and inspect canonical datasets.", no_args_is_help=True)
app.command("import")(import_)


@app.command()
def demo(
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (under $MMSR_HOME/datasets) or a path. "
                                       "Default: demo, or demo-dK for --domain K."),
    # The defaults are the generator's own, which keep the default demo's bytes.
    items: int = typer.Option(DEFAULT_SIZE["items"], "--items",
                              help="Number of items, each with a picture and a title."),
    users: int = typer.Option(DEFAULT_SIZE["users"], "--users", help="Number of users."),
    seed: int = typer.Option(DEFAULT_OPTIONS["seed"], "--seed", min=0, max=MAX_SEED,
                             help="Generator seed: the same seed gives the same bytes."),
    domain: int = typer.Option(DEFAULT_OPTIONS["domain"], "--domain",
                               help="0: the demo. K > 0: a catalogue disjoint from every other domain's (new items, "
                               "pictures, brands and users; ids prefixed dK-) under the same rules, to try transfer "
                               "(mmsr train --init-from)."),
    min_length: int = typer.Option(DEFAULT_OPTIONS["min_len"], "--min-length",
                                   help="Fewest interactions per user. Lengths are this plus a geometric draw of "
                                   "mean 8, capped at --max-length (HM's 31 per user: --min-length 23 "
                                   "--max-length 200)."),
    max_length: int = typer.Option(DEFAULT_OPTIONS["max_len"], "--max-length", help="Most interactions per user."),
    image_size: int = typer.Option(DEFAULT_OPTIONS["image_size"], "--image-size",
                                   help="Picture side in pixels. Smaller is faster to write for large catalogues; "
                                   "the cache build resizes to encoders.image_size anyway. 0: no pictures (a "
                                   "text-only catalogue)."),
    sampler: str = typer.Option("auto", "--sampler", help="How choices are drawn: exact (the original draws; "
                                "cost grows with interactions x items), grouped (the same rule, streamed, cost grows "
                                "with the interactions) or auto (exact up to 10,000 items)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset of that name."),
):
    """Generate the synthetic demo dataset (offline, deterministic; the default one in seconds).

    Colour, shape and pattern are visible only in the pictures; category, material and style
    only in the text; users' choices depend on both. See the README for the rules.

    The dataset appears whole or not at all. A large generation stopped part way (a full
    disk, Ctrl-C) keeps what it wrote up to its last checkpoint (every 4,096 items, and every
    8,192 users with the grouped sampler) beside the dataset, in .NAME.partial: run the same
    command again and it goes on from there, to the same bytes as one uninterrupted run.
    """
    dest, written = create_demo(name, items=items, users=users, seed=seed, domain=domain, overwrite=overwrite,
                                progress=progress_bar, min_len=min_length, max_len=max_length,
                                image_size=image_size, sampler=sampler)
    asked = generator_options(seed=seed, domain=domain, min_len=min_length, max_len=max_length, image_size=image_size,
                              sampler=sampler, items=items)
    note = "" if written else kept_note(dest, items, users, asked)
    console.print(f"[green]wrote {dest}" if written
                  else f"[yellow]{dest} already exists{'; ' + note if note else ''}; keeping it (pass --overwrite "
                       "to regenerate).")


@app.command()
def info(
    name: str = typer.Argument(..., help="Dataset name or path."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    min_interactions: int = typer.Option(SplitConfig.min_interactions, help="Drop users with fewer interactions."),
    cold_threshold: int = typer.Option(SplitConfig.cold_threshold, help="Items with fewer training occurrences are "
                                       "cold."),
    max_seq_len: int = typer.Option(SplitConfig.max_seq_len, help="Longest history fed to the model."),
):
    """Counts of a dataset before and after the paper's protocol (leave-one-out, cold items)."""
    dataset = load_dataset(name)
    try:
        split = SplitConfig(min_interactions=min_interactions, cold_threshold=cold_threshold, max_seq_len=max_seq_len)
    except ValueError as error:
        field = str(error).split()[0]  # SplitConfig names the field first
        raise MMSRError(str(error), where="--" + field.replace("_", "-") if field in SplitConfig.__annotations__
                        else "--min-interactions / --cold-threshold / --max-seq-len") from None
    report = dataset_report(dataset, split)
    counts = report["raw"]
    if json_out:
        print_json(report)
        return
    table = Table(title=f"dataset {dataset.name}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("users", "items", "interactions", "items_with_image", "items_with_text", "cold_items",
                "cold_sequences", "cold_test_cases", "new_items", "new_test_cases", "avg_seq_len"):
        table.add_row(key, f"{report[key]:,}" if isinstance(report[key], int) else str(report[key]))
    table.add_row("raw users / interactions", f"{counts['users']:,} / {counts['interactions']:,}")
    Console().print(table)
    if report["items_with_image"] == 0:
        console.print("[yellow]this dataset has no images: train text-only models (MMSR-T) on it")


@app.command("list")
def list_datasets():
    """List the datasets under $MMSR_HOME/datasets (a folder there without meta.json is noted on stderr)."""
    for name in paths.dataset_names():
        typer.echo(name)
    for name in paths.dataset_names(without_meta=True):
        console.print(f"[yellow]note: {name} is not listed: no meta.json, so not a dataset "
                      f"(`mmsr data info {name}` says more)")
