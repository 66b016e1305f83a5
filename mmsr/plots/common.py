"""What every figure shares: atomic PNG and CSV writing, the seeded sample, t-SNE, names.

Torch-free on purpose: `mmsr.plots.curves` (and through it the study runner) imports this.
Figures are drawn on `matplotlib.figure.Figure` directly, never through pyplot, so drawing
needs no display and changes no global backend in the caller's process.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mmsr import paths
from mmsr.atomic import atomic_write_bytes, atomic_write_text
from mmsr.errors import MMSRError

DPI = 120
# sklearn refuses perplexity >= n_samples; a third of the points keeps each neighbourhood
# smaller than the sample, and 30 is t-SNE's usual value once there are enough points.
MAX_PERPLEXITY = 30.0
# Scores are inner products, so norms matter and euclidean (the paper's t-SNE) is the default;
# cosine places a user vector by direction alone, next to the items it ranks high, whatever its norm.
DISTANCES = ("euclidean", "cosine")


def new_figure(panels: int, width: float = 6.0, height: float = 5.0, columns: int | None = None) -> tuple[Figure, list]:
    """A figure of `panels` axes, `columns` to a row (default: all in one row)."""
    columns = min(panels, columns or panels)
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns, height * rows), dpi=DPI, layout="constrained")
    return figure, [figure.add_subplot(rows, columns, k + 1) for k in range(panels)]


def save_png(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def save_figure(figure: Figure, png: Path, header: Sequence[str], rows: Iterable[Sequence]) -> list[Path]:
    """The PNG and, next to it, the CSV of the data it was drawn from (same stem)."""
    png = Path(png)
    csv_path = save_csv(png.with_suffix(".csv"), header, rows)
    return [save_png(figure, png), csv_path]


def output_dir(run_root: Path, out: str | Path | None) -> Path:
    """Where a plot's files go (made here): --out, else RUN/plots."""
    folder = Path(out).expanduser() if out is not None else Path(run_root) / "plots"
    if folder.exists() and not folder.is_dir():
        raise MMSRError("--out names a file, not a folder", where=folder, hint="give --out a folder (it is made)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MMSRError(f"cannot make the output folder: {error.strerror}", where=folder,
                        hint="give --out a folder you can write to") from None
    return folder


def run_dir(run: str | Path) -> Path:
    """A run name or path -> its directory; refused when there is none."""
    root = paths.runs_dir(run)
    if not root.is_dir():
        raise MMSRError("run not found", where=root,
                        hint="give a run name under $MMSR_HOME/runs or a run directory, as `mmsr train` made it")
    return root


def labels(roots: Sequence[Path]) -> list[str]:
    """Run directory names, or whole paths where two runs share a name."""
    names = [Path(root).name for root in roots]
    return names if len(set(names)) == len(names) else [str(root) for root in roots]


def check_positive(value: int, option: str) -> None:
    if value < 1:
        raise MMSRError(f"must be at least 1, not {value}", where=option, hint=f"e.g. {option} 10")


def sample(population: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct indices below `population` (all of them if fewer), ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(population, size=min(size, population), replace=False))


def perplexity_for(points: int) -> float:
    return min(MAX_PERPLEXITY, max(1.0, (points - 1) / 3))


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise MMSRError(f"unknown distance {distance!r}", where="--distance", hint=f"use {' or '.join(DISTANCES)}")


def tsne_2d(vectors: np.ndarray, seed: int, distance: str = "euclidean") -> np.ndarray:
    """2-D t-SNE coordinates of the rows of `vectors` (deterministic for a seed on CPU)."""
    from sklearn.manifold import TSNE  # scikit-learn takes a second to import; curves never need it

    check_distance(distance)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) < 2:  # nothing to lay out: t-SNE needs a neighbour
        return np.zeros((len(vectors), 2), dtype=np.float32)
    tsne = TSNE(n_components=2, perplexity=perplexity_for(len(vectors)), metric=distance, init="pca",
                learning_rate="auto", random_state=seed)
    return tsne.fit_transform(vectors).astype(np.float32)


def log_counts(counts: np.ndarray) -> np.ndarray:
    return np.log1p(np.asarray(counts, dtype=np.float64))


def round6(value: float) -> float:
    """CSV coordinates: six significant digits, plenty for a figure, and diff-friendly."""
    return float(f"{value:.6g}") if math.isfinite(value) else value
