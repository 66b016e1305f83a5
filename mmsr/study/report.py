"""A study's results: `results.csv` (one row per run x split) and `report.md` (the paper's table).

The table is laid out by the study's `[table]`: each result cell has five dimensions
(variant: the row label; column: a grid column; dataset; split; metric). `rows` and `columns`
say which dimensions span which side, in order; a dimension with one value gets no header.
Cells compared for best (**bold**) and second best (<u>underlined</u>, when three or more
compete) share every dimension but variant and column, and the `best_within` ones; equal
values share a mark, and a group whose values are all equal gets none. With
several seeds a cell is the mean ± the standard deviation (n-1) over the seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmsr.atomic import atomic_write_text
from mmsr.machine import cpu_model
from mmsr.study.layout import load_run_study, ran_study_dir, read_result, typed_name
from mmsr.study.spec import Study

RUN_COLUMNS = ("variant", "label", "column", "group", "dataset", "seed", "split", "protocol", "cases")
TRAIN_COLUMNS = ("best_epoch", "epochs_run", "train_seconds", "run")


def collect(out: Path, study: Study) -> list[dict]:
    """One row per finished run x split, in the study's variant order."""
    order = {v.name: i for i, v in enumerate(study.variants)}
    rows = []
    for result_file in sorted((out / "runs").glob("*/study.json")):
        result = read_result(result_file.parent)
        if result["variant"] not in order:
            continue  # a variant since removed from the file
        variant = study.variant(result["variant"])
        for split, evaluation in result["evaluations"].items():
            if split not in study.splits or evaluation["protocol"] != study.protocol:
                continue  # evaluated for an earlier version of the study; the runner evaluates it again
            rows.append({"variant": variant.name, "label": variant.label, "column": variant.column,
                         "group": variant.group, "dataset": result["dataset"], "seed": result["seed"],
                         "split": split, "protocol": evaluation["protocol"], "cases": evaluation["cases"],
                         **evaluation["metrics"], "best_epoch": result["best_epoch"],
                         "epochs_run": result["epochs_run"], "train_seconds": result["train_seconds"],
                         "run": str(result_file.parent), "_in_table": variant.in_table})
    datasets = {name: i for i, name in enumerate(study.datasets)}  # the study's order, not the alphabet's
    rows.sort(key=lambda r: (order[r["variant"]], datasets.get(r["dataset"], len(datasets)), r["dataset"], r["seed"],
                             r["split"]))
    return rows


def results_csv(rows: list[dict]) -> str:
    metrics = sorted({k for r in rows for k in r if "@" in k}, key=_metric_order)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*RUN_COLUMNS, *metrics, *TRAIN_COLUMNS], extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _metric_order(name: str) -> tuple[int, str]:
    kind, _, k = name.partition("@")
    return int(k), kind


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int


def cells(study: Study, rows: list[dict]) -> dict[tuple, Cell]:
    """{(variant label, column, dataset, split, metric): Cell} over the in-table variants."""
    values: dict[tuple, list[float]] = {}
    for row in rows:
        if not row["_in_table"]:
            continue
        for metric in study.metrics:
            if metric in row:
                key = (row["label"], row["column"], row["dataset"], row["split"], metric)
                values.setdefault(key, []).append(float(row[metric]))
    return {key: Cell(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for key, v in values.items()}


DIMS = ("variant", "column", "dataset", "split", "metric")


def _values(study: Study, table: dict[tuple, Cell]) -> dict[str, list[str]]:
    """Each dimension's values in the study's order, keeping only those with results."""
    present = {dim: {key[i] for key in table} for i, dim in enumerate(DIMS)}
    ordered = {
        "variant": list(dict.fromkeys(v.label for v in study.variants if v.in_table)),
        "column": list(dict.fromkeys(v.column for v in study.variants if v.in_table)),
        "dataset": list(dict.fromkeys([*study.datasets, *(v.dataset for v in study.variants if v.dataset)])),
        "split": list(study.splits),
        "metric": list(study.metrics),
    }
    extra_datasets = sorted(present["dataset"] - set(ordered["dataset"]))  # run with --dataset
    ordered["dataset"] += extra_datasets
    return {dim: [value for value in ordered[dim] if value in present[dim]] for dim in DIMS}


def render_table(study: Study, table: dict[tuple, Cell]) -> str:
    if not table:
        return "_No finished runs yet._"
    values = _values(study, table)
    layout = study.table
    row_keys = list(itertools.product(*(values[d] for d in layout.rows)))
    column_keys = list(itertools.product(*(values[d] for d in layout.columns)))

    def full_key(row_key: tuple, column_key: tuple) -> tuple:
        named = dict(zip(layout.rows, row_key)) | dict(zip(layout.columns, column_key))
        return tuple(named[d] for d in DIMS)

    row_keys = [r for r in row_keys if any(full_key(r, c) in table for c in column_keys)]
    column_keys = [c for c in column_keys if any(full_key(r, c) in table for r in row_keys)]
    marks = _marks(table, layout.best_within)
    blocks = _column_blocks(column_keys, layout.improv is not None)
    header = [_label(layout.rows, values, None) or ""]
    for block in blocks:
        header += [_label(layout.columns, values, key) for key in block]
        if layout.improv:
            prefix = _label(layout.columns[:-1], values, block[0][:-1]) if len(layout.columns) > 1 else ""
            header.append(f"{prefix} Improv.".strip())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    group_of = {v.label: v.group for v in study.variants}
    last_group = None
    for row_key in row_keys:
        named = dict(zip(layout.rows, row_key))
        group = group_of.get(named.get("variant"), "") if "variant" in named else ""
        if group and group != last_group:
            lines.append(f"| *{group}* |" + " |" * (len(header) - 1))
        last_group = group
        line = [_label(layout.rows, values, row_key)]
        for block in blocks:
            line += [_format(table.get(full_key(row_key, key)), marks.get(full_key(row_key, key), ""))
                     for key in block]
            if layout.improv:
                line.append(_improv(layout.improv, {key[-1]: table.get(full_key(row_key, key)) for key in block}))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _column_blocks(column_keys: list[tuple], split_last: bool) -> list[list[tuple]]:
    """The column keys cut where all but the last dimension change (one Improv. column each)."""
    if not split_last:
        return [column_keys]
    return [list(group) for _, group in itertools.groupby(column_keys, key=lambda key: key[:-1])]


def _label(dims: tuple[str, ...], values: dict[str, list[str]], key: tuple | None) -> str:
    """The header of a row or column: its values along the dimensions that vary (or their names)."""
    if key is None:  # the row header's corner: what the rows are
        return " / ".join(dims)
    shown = [i for i, dim in enumerate(dims) if len(values[dim]) > 1 or dim == "metric"]
    return " ".join(str(key[i]) for i in shown if key[i] != "") or " ".join(str(k) for k in key if k != "")


def _marks(table: dict[tuple, Cell], best_within: tuple[str, ...]) -> dict[tuple, str]:
    """best / second among the cells that differ only in the model dimensions."""
    free = [i for i, dim in enumerate(DIMS) if dim in ("variant", "column") and dim not in best_within]
    groups: dict[tuple, list[tuple]] = {}
    for key in table:
        groups.setdefault(tuple(v for i, v in enumerate(key) if i not in free), []).append(key)
    marks = {}
    for keys in groups.values():
        values = sorted({table[k].mean for k in keys}, reverse=True)
        if len(keys) < 2 or len(values) < 2:
            continue  # nothing to compare, or all equal: no mark
        for key in keys:  # ties share a mark
            if table[key].mean == values[0]:
                marks[key] = "best"
            elif table[key].mean == values[1] and len(keys) >= 3:
                marks[key] = "second"
    return marks


def _format(cell: Cell | None, mark: str) -> str:
    if cell is None:
        return "–"
    text = f"{cell.mean:.4f}" + (f" ± {cell.std:.4f}" if cell.n > 1 else "")
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


def _improv(improv, block: dict[str, Cell | None]) -> str:
    """Relative improvement of the best of `of` over the best of `over`, in percent (the paper's Improv.)."""
    of = [block[name].mean for name in improv.of if block.get(name) is not None]
    over = [block[name].mean for name in improv.over if block.get(name) is not None]
    if not of or not over or max(over) <= 0:
        return "–"
    return f"{100 * (max(of) / max(over) - 1):+.2f}%"


# ----------------------------------------------------------------------------- the report


def render_report(study: Study, rows: list[dict], command: str = "", figures: list[Path] = (),
                  out: Path | None = None) -> str:
    table = cells(study, rows)
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {study.title}", "",
             f"Study `{study.name}` ({study.path.name}); protocol: {study.protocol}"
             f"{' (history masked)' if study.protocol == 'paper' else ' (history not masked)'}; "
             f"seeds: {', '.join(map(str, seeds)) or '-'}"
             + (" (mean ± standard deviation)" if len(seeds) > 1 else "") + f"; CPU: {cpu_model()}.", ""]
    if study.notes:
        lines += [study.notes.strip(), ""]
    lines += [render_table(study, table), "", "## Runs", "",
              "| run | best epoch / run | train s | cases |", "|---|---|---|---|"]
    seen = set()
    for row in rows:
        if row["run"] in seen:
            continue
        seen.add(row["run"])
        lines.append(f"| {Path(row['run']).name} | {row['best_epoch']} / {row['epochs_run']} | "
                     f"{row['train_seconds']:.0f} | {row['cases']} |")
    for figure in figures:
        if figure.suffix == ".png":
            lines += ["", f"![{figure.stem}]({figure.name}) (data: {figure.stem}.csv)"]
    if command:
        lines += ["", f"Reproduce: `{command}{_only(study, rows)}`"]
    name = study.name if out is None else typed_name(out)
    lines += ["", f"Re-render: `mmsr study report {name}`; every number above is in results.csv."]
    return "\n".join(lines) + "\n"


def _only(study: Study, rows: list[dict]) -> str:
    """` --only a,b` when the finished runs are some of the study's variants: the command then
    trains what the report shows, not the whole study."""
    present = {row["variant"] for row in rows}
    names = [variant.name for variant in study.variants if variant.name in present]
    return f" --only {','.join(names)}" if names and len(names) < len(study.variants) else ""


def write_report(out: Path, study: Study, command: str = "", *, figures: bool = False,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Write results.csv and report.md (and the figures, with `figures`) from the finished runs."""
    rows = collect(out, study)
    drawn = draw_figures(out, study) if figures else sorted(out.glob("*.png"))  # keep what a last run drew
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "report.md", render_report(study, rows, command, drawn, out))
    return [out / "results.csv", out / "report.md", *drawn]


def report_study(name: str | Path, *, log: Callable[[str], None] = print) -> list[Path]:
    """`mmsr study report NAME`: re-render from the finished runs, training nothing."""
    out = ran_study_dir(name)
    study, command = load_run_study(out)
    return write_report(out, study, command, figures=True, log=log)


def draw_figures(out: Path, study: Study) -> list[Path]:
    if not study.figures:
        return []
    from mmsr.study.figures import draw  # deferred: matplotlib, and torch for the t-SNE figures, only when drawn

    drawn = []
    for figure in study.figures:
        drawn += draw(out, study, figure)
    return drawn
