"""Means over seeds, their standard errors, and one model's mean as a ratio of another's.

    .venv/bin/python bench/seed_means.py [docs/movielens-seeds.csv] [--add LOG=LABEL ...]
                                         [--seeds 18,19,20,21] [--ratio MMSR-T/IDSR ...]

docs/movielens-seeds.csv holds one row per (model, seed) of the MovieLens-100K configs behind
docs/compare.md's "Where things stand": test HR@10 / NDCG@10 under RecBole's protocol and the
paper's, the paper's cold split, and the validation NDCG@10 the checkpoint was chosen on, each as
`bench/losses.py` printed it (four decimals), with the notebook section it comes from. This
script recomputes that section's figures from the rows: per model and column the mean, its
standard error over seeds (standard deviation / sqrt(n)) and n; for every --ratio A/B and column,
mean(A) / mean(B) with the delta method's standard error for independent seeds,
r * sqrt((se_A / mean_A)^2 + (se_B / mean_B)^2).

--add pools a new `bench/losses.py` run with the table: LOG is its log (the per-run JSON lines)
or the JSON object it printed last, LABEL the model name its runs go under (a new name to
compare a setting with the config, or an existing one to add seeds to it). --seeds keeps only
those seeds, for every model (the same seeds for both sides of a ratio). An empty cell is a
figure the notebook did not keep: it is left out of that column's mean and n says so.

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


def read_table(path: Path) -> tuple[list[str], dict[tuple[str, int], dict[str, float | None]]]:
    """(figure columns, {(model, seed): {column: value or None}})."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (the per-seed table, e.g. docs/movielens-seeds.csv)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [key for key in KEYS if key not in (reader.fieldnames or [])]
        if missing:
            raise TableError(f"{path}: no column {', '.join(missing)} in its header line (model and seed name a row)")
        columns = [name for name in reader.fieldnames if name not in NOT_FIGURES]
        rows: dict[tuple[str, int], dict[str, float | None]] = {}
        for line, row in enumerate(reader, start=2):
            key = (row["model"], _number(row["seed"], int, path, line, "seed"))
            if key in rows:
                raise TableError(f"{path}, line {line}: {key[0]} seed {key[1]} is in the table twice")
            rows[key] = {name: _number(row[name], float, path, line, name) if row[name] else None
                         for name in columns}
    return columns, rows


def _number(text: str, kind, path: Path, line: int, column: str):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise TableError(f"{path}, line {line}: {column} {text!r} is not a number") from None


def bench_runs(path: Path) -> list[dict]:
    """The per-run objects of a bench/losses.py log (its JSON lines) or of the object it prints last."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (a bench/losses.py log or its printed JSON)")
    runs = []
    for text in path.read_text().splitlines():
        if not text.startswith("{"):
            continue
        record = json.loads(text)
        if "seed" in record and "valid" in record:  # one run's line, as the log shows it when it finishes
            runs.append(record)
        for dataset in record.get("datasets", {}).values():  # the object printed last
            runs.extend(run for name, run in dataset.get("runs", {}).items() if "valid" in run and "seed" in name)
    if not runs:
        raise TableError(f"{path}: no bench/losses.py run in it (its per-run JSON lines start with "
                         "'{\"dataset\"'; the object it prints last has datasets -> NAME -> runs)")
    return runs


def add_runs(rows: dict, columns: list[str], path: Path, label: str) -> None:
    seen = set()
    for run in bench_runs(path):
        seed = _seed(run)
        if seed in seen:  # the log's line and the final object report the same run
            continue
        seen.add(seed)
        if (label, seed) in rows:
            raise TableError(f"{path}: {label} seed {seed} is already in the table; add the run under another "
                             "label (--add LOG=NEW) to compare it, or leave the table's row out")
        rows[(label, seed)] = {column: (run[FROM_BENCH[column][0]][FROM_BENCH[column][1]]
                                        if column in FROM_BENCH and FROM_BENCH[column][0] in run else None)
                               for column in columns}


def _seed(run: dict) -> int:
    if "seed" in run:
        return int(run["seed"])
    return int(next(o.split("=", 1)[1] for o in run["overrides"] if o.startswith("seed=")))


def summarise(rows: dict, columns: list[str], seeds: set[int] | None = None) -> dict:
    """{model: {"seeds": [...], column: {"mean", "se", "n"}}} over the kept seeds."""
    out: dict[str, dict] = {}
    for model in dict.fromkeys(model for model, _ in rows):
        kept = {seed: figures for (name, seed), figures in rows.items()
                if name == model and (seeds is None or seed in seeds)}
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


def _seed_list(text: str) -> set[int]:
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give seeds as numbers, e.g. 18,19,20,21") from None


def _pair(text: str, sep: str, what: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left or not right:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return left, right


def _fmt(cell: dict | None, digits: int = 4) -> str:
    if not cell:
        return ""
    se = "" if cell["se"] is None else f" ± {cell['se']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}{se} ({cell['n']})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("table", nargs="?", type=Path, default=DEFAULT_TABLE,
                        help="the per-seed table (default: docs/movielens-seeds.csv)")
    parser.add_argument("--add", action="append", default=[], metavar="LOG=LABEL",
                        type=lambda text: _pair(text, "=", "LOG=LABEL, e.g. /tmp/lever.log=MMSR-T+lr2"),
                        help="pool a bench/losses.py log's runs under LABEL (repeatable)")
    parser.add_argument("--seeds", type=_seed_list, help="keep only these seeds, e.g. 18,19,20,21")
    parser.add_argument("--ratio", action="append", default=[], metavar="A/B",
                        type=lambda text: _pair(text, "/", "A/B, two model names, e.g. MMSR-T/IDSR"),
                        help="report mean(A) / mean(B) for every column (repeatable)")
    args = parser.parse_args(argv)
    try:
        columns, rows = read_table(args.table)
        for log, label in args.add:
            add_runs(rows, columns, Path(log), label)
        summary = summarise(rows, columns, args.seeds)
        ratios = {}
        for top, bottom in args.ratio:
            unknown = [name for name in (top, bottom) if name not in summary]
            if unknown:
                raise TableError(f"--ratio {top}/{bottom}: no rows for {', '.join(unknown)}"
                                 f"{' among the seeds kept' if args.seeds else ''}; the models are "
                                 f"{', '.join(summary)}")
            ratios[f"{top}/{bottom}"] = ratio(summary, top, bottom, columns)
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
    print(json.dumps({"table": str(args.table), "seeds": sorted(args.seeds) if args.seeds else None,
                      "models": summary, "ratios": ratios}))


if __name__ == "__main__":
    main()
