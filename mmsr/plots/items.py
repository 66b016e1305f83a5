"""Fig. 4 (seed §8.5.1): t-SNE of a sample of item vectors, coloured by training popularity.

The paper's reading: an ID table clusters the popular items and scatters the cold ones, while
content vectors spread items evenly. Colour is log(1 + training occurrences); cold items
(fewer than the run's `split.cold_threshold`) are triangles with a red edge. With a second run,
two panels side by side show the same items, each laid out by its own t-SNE.

    RUN/plots/items.png, items.csv             one run
    RUN/plots/items-vs-OTHER.png, .csv         with --compare OTHER
    csv: run,item,index,train_count,cold,x,y   one row per item per panel
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from mmsr.plots.common import (check_distance, check_positive, labels, log_counts, new_figure, output_dir,
                               round6, sample, save_figure, tsne_2d)
from mmsr.plots.vectors import load_pair, scored_item_vectors
from mmsr.progress import ProgressFactory, no_progress
from mmsr.train.run import LoadedRun

HEADER = ("run", "item", "index", "train_count", "cold", "x", "y")
CMAP = "viridis"


@dataclass
class ItemPanel:
    label: str
    kind: str
    ids: np.ndarray  # item indices
    item_ids: list[str]
    counts: np.ndarray  # training occurrences
    cold: np.ndarray  # bool
    threshold: int
    xy: np.ndarray  # [items, 2]


def plot_items(run: str | Path, out_dir: str | Path | None = None, compare: str | Path | None = None,
               items: int = 1000, seed: int = 0, checkpoint: str = "best",
               distance: str = "euclidean", stem: str | None = None,
               progress: ProgressFactory = no_progress) -> list[Path]:
    """Draw Fig. 4 for `run` (and `compare`) into `out_dir` (default RUN/plots); returns [png, csv].

    The sample is `items` items drawn with `seed` from the whole catalogue (all of them if it
    has fewer); the same items appear in both panels. `distance`: t-SNE's, euclidean or cosine.
    `stem`: the file name without suffix (default items, or items-vs-OTHER).
    """
    check_positive(items, "--items")
    check_distance(distance)
    runs = load_pair(run, compare, checkpoint)
    ids = sample(runs[0].split.num_items, items, seed)
    names = labels([loaded.root for loaded in runs])
    panels = [item_panel(loaded, name, ids, seed, distance, progress) for loaded, name in zip(runs, names)]
    stem = stem or ("items" if compare is None else f"items-vs-{runs[1].root.name}")
    rows = [row for panel in panels for row in _rows(panel)]
    return save_figure(draw_items(panels), output_dir(runs[0].root, out_dir) / f"{stem}.png", HEADER, rows)


def item_panel(loaded: LoadedRun, label: str, ids: np.ndarray, seed: int, distance: str = "euclidean",
               progress: ProgressFactory = no_progress) -> ItemPanel:
    split = loaded.split
    xy = tsne_2d(scored_item_vectors(loaded, ids, progress), seed, distance)
    return ItemPanel(label, loaded.config.model.kind, ids, [loaded.dataset.items[i]["id"] for i in ids],
                     split.train_counts[ids], split.cold_items[ids], split.config.cold_threshold, xy)


def _rows(panel: ItemPanel):
    for k, index in enumerate(panel.ids):
        yield (panel.label, panel.item_ids[k], int(index), int(panel.counts[k]), int(panel.cold[k]),
               round6(panel.xy[k, 0]), round6(panel.xy[k, 1]))


def draw_items(panels: list[ItemPanel]):
    figure, axes = new_figure(len(panels))
    # One colour scale for every panel, so that a colour means the same popularity in each.
    norm = Normalize(0.0, max(float(log_counts(panel.counts).max(initial=0.0)) for panel in panels) or 1.0)
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, norm)
    figure.colorbar(ScalarMappable(norm=norm, cmap=colormaps[CMAP]), ax=axes, shrink=0.8,
                    label="log(1 + training occurrences)")
    return figure


def _draw_panel(ax, panel: ItemPanel, norm: Normalize) -> None:
    colour = log_counts(panel.counts)
    warm, cold = ~panel.cold, panel.cold
    ax.scatter(panel.xy[warm, 0], panel.xy[warm, 1], c=colour[warm], cmap=CMAP, norm=norm, s=10, marker="o",
               linewidths=0)
    ax.scatter(panel.xy[cold, 0], panel.xy[cold, 1], c=colour[cold], cmap=CMAP, norm=norm, s=22, marker="^",
               edgecolors="red", linewidths=0.6)
    ax.set_title(f"{panel.label} ({panel.kind}): {len(panel.ids)} items, {int(cold.sum())} cold")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(handles=[
        Line2D([], [], marker="o", linestyle="", color="grey", label=f"warm (>= {panel.threshold} in training)"),
        Line2D([], [], marker="^", linestyle="", color="grey", markeredgecolor="red",
               label=f"cold (< {panel.threshold})")], loc="best", fontsize="small")
