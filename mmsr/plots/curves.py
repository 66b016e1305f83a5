"""Training curves: the loss and the validation metrics against epoch, one line per run.

Read from each run's `metrics.jsonl` (one JSON object per epoch, written by the trainer:
`{"epoch", "step", "loss", "lr", "epoch_seconds", "valid": {"HR@10": ..., "NDCG@10": ...}}`;
`valid` only on validated epochs). Fig. 3 of the paper (validation HR@10 against epoch,
transfer against scratch) is `curves_figure(series, "HR@10", path)` on records already read.

Imports neither torch nor scikit-learn: `mmsr study` draws its curves with this module alone.

    PATH.png, PATH.csv      csv: run,epoch,metric,value   one row per point drawn
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from mmsr.errors import MMSRError
from mmsr.plots.common import labels, new_figure, output_dir, run_dir, save_figure
from mmsr.train.layout import METRICS_FILE
from mmsr.train.metrics_file import read_records

HEADER = ("run", "epoch", "metric", "value")
DEFAULT_TOP_LEVEL = ("loss",)  # lr and epoch_seconds on request (--metric lr)
NOT_METRICS = ("epoch", "step", "valid")
COLUMNS = 3

Records = Sequence[Mapping]


def plot_curves(runs: Sequence[str | Path], out_dir: str | Path | None = None,
                metrics: str | Sequence[str] | None = None, stem: str = "curves") -> list[Path]:
    """One figure of `metrics` (default: loss and every validation metric) for `runs`, written
    to `out_dir` (default: the first run's plots/) as STEM.png and STEM.csv."""
    if not runs:
        raise MMSRError("no run given", where="RUN...", hint="name one or more runs: mmsr plot curves RUN [RUN...]")
    roots = [run_dir(run) for run in runs]
    series = dict(zip(labels(roots), (read_metrics(root) for root in roots)))
    return curves_figure(series, metrics, output_dir(roots[0], out_dir) / f"{stem}.png")


def read_metrics(run: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, oldest first; a missing, empty or broken file is refused."""
    path = run_dir(run) / METRICS_FILE
    if not path.is_file():
        raise MMSRError("no metrics.jsonl", where=path,
                        hint="`mmsr train` writes one line per finished epoch: train the run first")
    records = read_records(path)
    if not records:
        raise MMSRError("metrics.jsonl is empty: no epoch has finished", where=path,
                        hint="plot the curves after the first epoch")
    return records


def metric_value(record: Mapping, metric: str) -> float | None:
    """A metric of one record: a top-level number (loss, lr) or a validation metric (HR@10)."""
    value = record[metric] if metric in record and metric not in NOT_METRICS else record.get("valid", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def available_metrics(series: Mapping[str, Records]) -> list[str]:
    """Every metric some record has: top-level numbers first, then validation metrics."""
    top, valid = {}, {}
    for records in series.values():
        for record in records:
            top.update((key, None) for key, value in record.items()
                       if key not in NOT_METRICS and metric_value(record, key) is not None)
            valid.update((key, None) for key in record.get("valid", {}))
    return list(top) + [key for key in valid if key not in top]


def default_metrics(series: Mapping[str, Records]) -> list[str]:
    found = available_metrics(series)
    valid = {key for records in series.values() for record in records for key in record.get("valid", {})}
    return [key for key in found if key in DEFAULT_TOP_LEVEL or key in valid]


def points(records: Records, metric: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that have `metric`, by epoch."""
    pairs = sorted((record["epoch"], value) for record in records
                   if (value := metric_value(record, metric)) is not None)
    return [epoch for epoch, _ in pairs], [value for _, value in pairs]


def curves_figure(series: Mapping[str, Records], metrics: str | Sequence[str] | None, path: str | Path) -> list[Path]:
    """Draw `metrics` against epoch, one panel per metric and one line per entry of `series`
    ({label: metrics.jsonl records}); write `path` (PNG) and its CSV. Returns [png, csv]."""
    if not series or not any(series.values()):
        raise MMSRError("no metrics to draw", where=path, hint="give at least one run with a finished epoch")
    # Each once (a metric given twice drew two equal panels and wrote its CSV rows twice).
    metrics = [metrics] if isinstance(metrics, str) else list(dict.fromkeys(metrics or default_metrics(series)))
    _check_metrics(series, metrics)
    figure, axes = new_figure(len(metrics), width=5.0, height=4.0, columns=COLUMNS)
    rows = []
    for ax, metric in zip(axes, metrics):
        for label, records in series.items():
            epochs, values = points(records, metric)
            if epochs:
                ax.plot(epochs, values, marker="o" if len(epochs) <= 30 else None, markersize=3, label=label)
            rows += [(label, epoch, metric, value) for epoch, value in zip(epochs, values)]
        _style(ax, metric)
    return save_figure(figure, Path(path), HEADER, rows)


def _check_metrics(series: Mapping[str, Records], metrics: list[str]) -> None:
    found = available_metrics(series)
    missing = [metric for metric in metrics if metric not in found]
    if not metrics or missing:
        raise MMSRError(f"no metric {missing[0]!r} in the runs' metrics" if missing else "no metric to draw",
                        where="--metric", hint=f"use one of: {', '.join(found) or 'none recorded'}")


def _style(ax, metric: str) -> None:
    ax.set_title(metric if metric in DEFAULT_TOP_LEVEL else f"validation {metric}")
    ax.set_xlabel("epoch")
    # One tick may do: with a single epoch the locator otherwise gives up on whole numbers (0.945, 0.960, ...).
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
