"""Means over seeds, their standard errors, and one model's mean as a ratio of another's.

    .venv/bin/python bench/seed_means.py [docs/movielens-seeds.csv] [--add LOG=LABEL ...]
                                         [--seeds 18,19,20,21] [--ratio MMSR-T/IDSR ...]
                                         [--paired IDSR/IDSR-smoothing-0.2 ...]

docs/movielens-seeds.csv holds one row per (model, seed) of the MovieLens-100K configs behind
docs/compare.md's "Where things stand": test HR@10 / NDCG@10 under RecBole's protocol and the
paper's, the paper's cold split, and the validation NDCG@10 the checkpoint was chosen on, each as
`bench/losses.py` printed it (four decimals), with the notebook section it comes from. This
script recomputes that section's figures from the rows: per model and column the mean, its
standard error over seeds (standard deviation / sqrt(n)) and n; for every --ratio A/B and column,
mean(A) / mean(B) with the delta method's standard error for independent seeds,
r * sqrt((se_A / mean_A)^2 + (se_B / mean_B)^2). For every --paired A/B and column, the mean of
A - B over the seeds both have a figure for, the standard error of those differences and how
many are above zero: a setting against the config run on the same seeds, whose seed-to-seed
swings (the split's draw, the initialisation) cancel in the difference.

--add pools a new `bench/losses.py` run with the table: LOG is its log (the per-run JSON lines)
or the JSON object it printed last, of one setting and every run with its seed; LABEL a new model
name its runs go under, to compare the setting with the config by --paired or --ratio (a config's new seeds
belong in the table itself, each line naming its section). --seeds keeps only those seeds, for
every model, and a ratio then needs both sides on the same seeds. An empty cell is a figure the
notebook did not keep: it is left out of that column's mean and n says so.

Not a test and not timed: prints a markdown table, then one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "docs" / "movielens-seeds.csv"
KEYS = ("model", "seed")
NOT_FIGURES = ("model", "config", "seed", "section")
# A bench/losses.py run's JSON -> the table's columns: (column, (evaluation key, metric)).
FROM_BENCH = {
    "valid_ndcg10": ("valid", "NDCG@10"),
    "recbole_hr10": ("test_recbole", "HR@10"), "recbole_ndcg10": ("test_recbole", "NDCG@10"),
    "paper_hr10": ("test_paper", "HR@10"), "paper_ndcg10": ("test_paper", "NDCG@10"),
    "cold_hr10": ("cold_paper", "HR@10"), "cold_ndcg10": ("cold_paper", "NDCG@10"),
}


class TableError(ValueError):
    """Input this script cannot read: the message names the file and what to do."""


def read_table(path: Path) -> tuple[list[str], dict[str, dict[int, dict[str, float | None]]]]:
    """(figure columns, {model: {seed: {column: value or None}}})."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (the per-seed table, e.g. docs/movielens-seeds.csv)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [key for key in KEYS if key not in (reader.fieldnames or [])]
        if missing:
            raise TableError(f"{path}: no column {', '.join(missing)} in its header line (model and seed name a row)")
        columns = [name for name in reader.fieldnames if name not in NOT_FIGURES]
        rows: dict[str, dict[int, dict[str, float | None]]] = {}
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():  # DictReader's marks of extra and missing fields
                raise TableError(f"{path}, line {line}: {len(reader.fieldnames)} fields expected, as in the "
                                 "header line (an empty field is a figure not kept)")
            model, seed = row["model"], _number(row["seed"], int, path, line, "seed")
            if seed in rows.get(model, {}):
                raise TableError(f"{path}, line {line}: {model} seed {seed} is in the table twice")
            rows.setdefault(model, {})[seed] = {name: _number(row[name], float, path, line, name) if row[name]
                                                else None for name in columns}
    return columns, rows


def _number(text: str, kind, path: Path, line: int, column: str):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise TableError(f"{path}, line {line}: {column} {text!r} is not a number") from None


def bench_runs(path: Path) -> tuple[tuple, dict[int, dict]]:
    """(setting, {seed: run}) of a bench/losses.py log (its per-run JSON lines) or of the object it
    prints last; the setting is (dataset, model/loss, config, the overrides but the seed).

    One setting per file: a log of several models, losses or --set lists would pool unlike runs under
    one label (and two runs of one seed would collide), so it is refused with the settings it holds.
    So is a failed run (a mean over the rest would hide it) and a run made without --seeds."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (a bench/losses.py log or its printed JSON)")
    runs: dict[tuple, dict[int, dict]] = {}
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.startswith("{"):
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise TableError(f"{path}, line {line}: not a whole JSON object ({error.msg}); a run killed while "
                             "writing it? Remove the line, or rerun that seed") from None
        if "dataset" in record and "model" in record:  # one run's line, as the log shows it when it finishes
            _setting(runs, (record["dataset"], f"{record['model']}/{record['loss']}"), record, path, line)
        for dataset, result in record.get("datasets", {}).items():  # the object printed last
            for name, run in result.get("runs", {}).items():
                if ", seed " in name:  # not the row of means
                    _setting(runs, (dataset, name.split(", seed ")[0]), run, path, line)
    if not runs:
        raise TableError(f"{path}: no bench/losses.py run in it (its per-run JSON lines start with "
                         "'{\"dataset\"'; the object it prints last has datasets -> NAME -> runs)")
    if len(runs) > 1:
        settings = "; ".join(_said(key) for key in runs)
        raise TableError(f"{path}: runs of {len(runs)} settings ({settings}); --add takes one, "
                         "so split the log (its JSON lines) into one file per setting")
    return next(iter(runs.items()))


def _said(setting: tuple) -> str:
    return " ".join(map(str, (*setting[:3], *setting[3])))


def _setting(runs: dict, name: tuple[str, str], run: dict, path: Path, line: int) -> None:
    """File `run` under its setting (dataset, model/loss, config, overrides but the seed) and seed;
    a log's line and the final object report the same run twice, which is kept once."""
    seeds = [o.split("=", 1)[1] for o in run.get("overrides", []) if o.startswith("seed=")]
    if not seeds:
        raise TableError(f"{path}, line {line}: a run of {'/'.join(name)} made without --seeds; rerun the "
                         "bench with --seeds N,... so that each run names its seed")
    seed = int(seeds[-1])
    if "error" in run or "valid" not in run:
        raise TableError(f"{path}, line {line}: {'/'.join(name)} seed {seed} failed "
                         f"({run.get('error', 'no validation figures')}); pool the other seeds from a copy "
                         "of the log without it")
    overrides = tuple(o for o in run.get("overrides", []) if not o.startswith("seed="))
    runs.setdefault((*name, run.get("config", ""), overrides), {}).setdefault(seed, run)


def add_runs(rows: dict, columns: list[str], path: Path, label: str, added: dict[str, tuple]) -> None:
    """The runs of `path` as rows of model `label`, a name the table does not have: one of its own would
    mix a setting into the config's seeds unseen (a config's new seeds belong in the table, with their
    section). Several logs may share a label (seeds run side by side) when they hold one setting;
    `added` keeps each label's setting."""
    if label not in added and label in rows:
        raise TableError(f"--add {path}={label}: {label} is a model of the table; give the runs a name of "
                         f"their own (e.g. {label}+lever) and compare with --ratio, or add the config's new "
                         "seeds to the table as lines of their own")
    setting, runs = bench_runs(path)
    if added.setdefault(label, setting) != setting:
        raise TableError(f"--add {path}={label}: its runs' setting ({_said(setting)}) is not that of the "
                         f"logs already under {label} ({_said(added[label])}); give it a label of its own")
    under = rows.setdefault(label, {})
    for seed, run in runs.items():
        if seed in under:
            raise TableError(f"--add {path}={label}: seed {seed} is under {label} already, from another log")
        under[seed] = {column: run.get(FROM_BENCH[column][0], {}).get(FROM_BENCH[column][1])
                       if column in FROM_BENCH else None for column in columns}


def summarise(rows: dict, columns: list[str], seeds: set[int] | None = None) -> dict:
    """{model: {"seeds": [...], column: {"mean", "se", "n"}}} over the kept seeds."""
    out: dict[str, dict] = {}
    for model, by_seed in rows.items():
        kept = {seed: figures for seed, figures in by_seed.items() if seeds is None or seed in seeds}
        if not kept:
            continue
        summary = {"seeds": sorted(kept)}
        for column in columns:
            values = [figures[column] for figures in kept.values() if figures[column] is not None]
            if values:
                se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
                summary[column] = {"mean": statistics.fmean(values), "se": se, "n": len(values)}
        out[model] = summary
    return out


def ratio(summary: dict, top: str, bottom: str, columns: list[str]) -> dict:
    """{column: {"ratio", "se"}}: mean(top) / mean(bottom), the delta method's se for independent seeds."""
    out = {}
    for column in columns:
        a, b = summary[top].get(column), summary[bottom].get(column)
        if not a or not b or not b["mean"]:
            continue
        r = a["mean"] / b["mean"]
        se = None
        if a["se"] is not None and b["se"] is not None and a["mean"]:
            se = abs(r) * math.hypot(a["se"] / a["mean"], b["se"] / b["mean"])
        out[column] = {"ratio": r, "se": se}
    return out


def paired(rows: dict, top: str, bottom: str, columns: list[str], seeds: set[int] | None = None) -> dict:
    """{"seeds": [...], column: {"mean", "se", "n", "up"}}: top - bottom seed by seed, over the
    (kept) seeds where both have the column's figure; "up" counts the differences above zero.
    TableError when a model has no rows or the two share no (kept) seed."""
    unknown = [name for name in (top, bottom) if name not in rows]
    if unknown:
        raise TableError(f"--paired {top}/{bottom}: no rows for {', '.join(unknown)}; the models are {', '.join(rows)}")
    shared = sorted(seed for seed in rows[top].keys() & rows[bottom].keys() if seeds is None or seed in seeds)
    if not shared:
        raise TableError(f"--paired {top}/{bottom}: no seed{' kept' if seeds else ''} has rows of both "
                         f"({top}: {_seeds(rows[top])}; {bottom}: {_seeds(rows[bottom])}); run them on the same seeds")
    out: dict = {"seeds": shared}
    for column in columns:
        differences = [rows[top][seed][column] - rows[bottom][seed][column] for seed in shared
                       if rows[top][seed][column] is not None and rows[bottom][seed][column] is not None]
        if differences:
            se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else None
            out[column] = {"mean": statistics.fmean(differences), "se": se, "n": len(differences),
                           "up": sum(difference > 0 for difference in differences)}
    return out


def _seeds(by_seed: dict) -> str:
    return ", ".join(map(str, sorted(by_seed)))


def _seed_list(text: str) -> set[int]:
    try:
        seeds = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        seeds = None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as numbers, e.g. 18,19,20,21")
    return seeds


def _log_and_label(text: str) -> tuple[str, str]:
    log, found, label = text.rpartition("=")  # the last "=": a path may hold one, a label may not
    if not found or not log or not label or "/" in label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOG=LABEL, a label without '/' (--ratio "
                                         "splits on it), e.g. /tmp/lever.log=MMSR-T+lr2")
    return log, label


def _two_models(text: str) -> tuple[str, str]:
    top, found, bottom = text.partition("/")
    if not found or not top or not bottom:
        raise argparse.ArgumentTypeError(f"{text!r}: expected A/B, two model names, e.g. MMSR-T/IDSR")
    return top, bottom


def _check_ratio(summary: dict, top: str, bottom: str, seeds: set[int] | None) -> None:
    """Both sides present; with --seeds, both on the same seeds (what --seeds is for)."""
    unknown = [name for name in (top, bottom) if name not in summary]
    if unknown:
        raise TableError(f"--ratio {top}/{bottom}: no rows for {', '.join(unknown)}"
                         f"{' among the seeds kept' if seeds else ''}; the models are {', '.join(summary)}")
    if seeds is not None and summary[top]["seeds"] != summary[bottom]["seeds"]:
        only = {name: sorted(set(summary[name]["seeds"]) - set(summary[other]["seeds"]))
                for name, other in ((top, bottom), (bottom, top))}
        said = "; ".join(f"{name} alone has {', '.join(map(str, kept))}" for name, kept in only.items() if kept)
        raise TableError(f"--ratio {top}/{bottom} with --seeds: the two sides kept different seeds ({said}); "
                         "name seeds both have")


def _fmt(cell: dict | None, digits: int = 4, sign: str = "") -> str:
    if not cell:
        return ""
    se = "" if cell["se"] is None else f" ± {cell['se']:.{digits}f}"
    return f"{cell['mean']:{sign}.{digits}f}{se} ({cell['n']})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("table", nargs="?", type=Path, default=DEFAULT_TABLE,
                        help="the per-seed table (default: docs/movielens-seeds.csv)")
    parser.add_argument("--add", action="append", default=[], metavar="LOG=LABEL",
                        type=_log_and_label,
                        help="pool a bench/losses.py log's runs under LABEL, a new model name (repeatable; logs of one "
                             "setting may share a label)")
    parser.add_argument("--seeds", type=_seed_list, help="keep only these seeds, e.g. 18,19,20,21")
    parser.add_argument("--ratio", action="append", default=[], metavar="A/B",
                        type=_two_models,
                        help="report mean(A) / mean(B) for every column (repeatable)")
    parser.add_argument("--paired", action="append", default=[], metavar="A/B", type=_two_models,
                        help="report A - B seed by seed over the seeds both have: the mean difference, its "
                             "standard error and how many are above zero, for every column (repeatable)")
    args = parser.parse_args(argv)
    try:
        columns, rows = read_table(args.table)
        added: dict[str, tuple] = {}
        for log, label in args.add:
            add_runs(rows, columns, Path(log), label, added)
        summary = summarise(rows, columns, args.seeds)
        if not summary and args.seeds:
            raise TableError(f"--seeds {','.join(map(str, sorted(args.seeds)))}: no row of {args.table} has "
                             "any of them")
        if not summary:
            raise TableError(f"{args.table}: no rows under its header line, and no --add LOG=LABEL gave any")
        ratios = {}
        for top, bottom in args.ratio:
            _check_ratio(summary, top, bottom, args.seeds)
            ratios[f"{top}/{bottom}"] = ratio(summary, top, bottom, columns)
        differences = {}
        for top, bottom in args.paired:
            differences[f"{top}/{bottom}"] = paired(rows, top, bottom, columns, args.seeds)
    except TableError as error:
        sys.exit(f"error: {error}")

    print("| model | seeds | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    for model, figures in summary.items():
        print(f"| {model} | {len(figures['seeds'])} | " + " | ".join(_fmt(figures.get(c)) for c in columns) + " |")
    for name, figures in ratios.items():
        cells = [f"{figures[c]['ratio']:.3f}" + ("" if figures[c]["se"] is None else f" ± {figures[c]['se']:.3f}")
                 if c in figures else "" for c in columns]
        print(f"| {name} | | " + " | ".join(cells) + " |")
    for name, figures in differences.items():
        cells = [_fmt(figures.get(c), sign="+") + (f", up {figures[c]['up']}" if c in figures else "") for c in columns]
        print(f"| {name.replace('/', ' − ')}, paired | {len(figures['seeds'])} | " + " | ".join(cells) + " |")
    print(json.dumps({"table": str(args.table), "seeds": None if args.seeds is None else sorted(args.seeds),
                      "models": summary, "ratios": ratios, "paired": differences}))


if __name__ == "__main__":
    main()
