"""Fig. 5 (seed §8.5.2): t-SNE of a few users' vectors together with their history items.

The paper's reading: under MMSR each user's items gather around the user, and users stay
apart. Each sampled user has one colour; their history items (the last `max_seq_len` items
before the test target, what evaluation reads) are dots, cold ones triangles, and the user
vector a large star. One t-SNE per panel lays out the history items and the user vectors
together. With a second run the same users are drawn in a second panel.

    RUN/plots/users.png, users.csv             one run
    RUN/plots/users-vs-OTHER.png, .csv         with --compare OTHER
    csv: run,user,kind,item,cold,x,y           kind "history" (one row per history item) or "user"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D

from mmsr.errors import MMSRError
from mmsr.plots.common import (check_distance, check_positive, labels, new_figure, output_dir, round6, sample,
                               save_figure, tsne_2d)
from mmsr.plots.vectors import load_pair, user_vectors
from mmsr.progress import ProgressFactory, no_progress
from mmsr.train.run import LoadedRun

HEADER = ("run", "user", "kind", "item", "cold", "x", "y")
LEGEND_USERS = 12  # beyond this the legend would hide the points


@dataclass
class UserPanel:
    label: str
    kind: str
    user_ids: list[str]
    histories: list[list[str]]  # item ids per user
    cold: list[np.ndarray]  # bool per history item
    history_xy: list[np.ndarray]  # [len(history), 2] per user
    user_xy: np.ndarray  # [users, 2]


def plot_users(run: str | Path, out_dir: str | Path | None = None, compare: str | Path | None = None,
               users: int = 10, seed: int = 0, checkpoint: str = "best",
               distance: str = "euclidean", stem: str | None = None,
               progress: ProgressFactory = no_progress) -> list[Path]:
    """Draw Fig. 5 for `run` (and `compare`) into `out_dir` (default RUN/plots); returns [png, csv].

    `users` users are drawn with `seed` (all of them if fewer); with `compare`, from the users
    both runs' splits keep, so both panels show the same people. `distance`: t-SNE's,
    euclidean or cosine (cosine places a user by direction, next to the items it ranks high).
    `stem`: the file name without suffix (default users, or users-vs-OTHER).
    """
    check_positive(users, "--users")
    check_distance(distance)
    runs = load_pair(run, compare, checkpoint)
    chosen = sample_users(runs, users, seed)
    names = labels([loaded.root for loaded in runs])
    panels = [user_panel(loaded, name, chosen, seed, distance, progress) for loaded, name in zip(runs, names)]
    stem = stem or ("users" if compare is None else f"users-vs-{runs[1].root.name}")
    rows = [row for panel in panels for row in _rows(panel)]
    return save_figure(draw_users(panels), output_dir(runs[0].root, out_dir) / f"{stem}.png", HEADER, rows)


def sample_users(runs: list[LoadedRun], size: int, seed: int) -> list[str]:
    others = [set(loaded.split.user_ids) for loaded in runs[1:]]
    common = [user for user in runs[0].split.user_ids if all(user in ids for ids in others)]
    if not common:
        raise MMSRError("the two runs' splits share no user", where=runs[-1].root,
                        hint="their split settings differ (split.sample_users, split.min_interactions): compare "
                             "runs trained with the same split")
    return [common[k] for k in sample(len(common), size, seed)]


def user_panel(loaded: LoadedRun, label: str, user_ids: list[str], seed: int, distance: str = "euclidean",
               progress: ProgressFactory = no_progress) -> UserPanel:
    position = {user: k for k, user in enumerate(loaded.split.user_ids)}
    vectors = user_vectors(loaded, np.asarray([position[user] for user in user_ids], dtype=np.int64), progress)
    xy = tsne_2d(np.concatenate([*vectors.history_vectors, vectors.user_vectors]), seed, distance)
    ends = np.cumsum([len(history) for history in vectors.histories])
    items = loaded.dataset.items
    return UserPanel(label, loaded.config.model.kind, list(user_ids),
                     [[items[i]["id"] for i in history] for history in vectors.histories],
                     [loaded.split.cold_items[history] for history in vectors.histories],
                     np.split(xy[:ends[-1]], ends[:-1]), xy[ends[-1]:])


def _rows(panel: UserPanel):
    for k, user in enumerate(panel.user_ids):
        for item, cold, (x, y) in zip(panel.histories[k], panel.cold[k], panel.history_xy[k]):
            yield panel.label, user, "history", item, int(cold), round6(x), round6(y)
        yield panel.label, user, "user", "", "", round6(panel.user_xy[k, 0]), round6(panel.user_xy[k, 1])


def _colours(count: int) -> list:
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(count)]


def draw_users(panels: list[UserPanel]):
    figure, axes = new_figure(len(panels))
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel)
    return figure


def _draw_panel(ax, panel: UserPanel) -> None:
    colours = _colours(len(panel.user_ids))
    for k, colour in enumerate(colours):
        xy, cold = panel.history_xy[k], panel.cold[k]
        ax.scatter(xy[~cold, 0], xy[~cold, 1], color=colour, s=16, marker="o", alpha=0.75, linewidths=0)
        ax.scatter(xy[cold, 0], xy[cold, 1], color=colour, s=26, marker="^", alpha=0.75, linewidths=0)
        ax.scatter(panel.user_xy[k, 0], panel.user_xy[k, 1], color=colour, s=260, marker="*", edgecolors="black",
                   linewidths=0.8, zorder=3)
    items = sum(len(history) for history in panel.histories)
    ax.set_title(f"{panel.label} ({panel.kind}): {len(panel.user_ids)} users, {items} history items")
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [Line2D([], [], marker="*", linestyle="", color="grey", markeredgecolor="black", markersize=12,
                      label="user vector"),
               Line2D([], [], marker="o", linestyle="", color="grey", label="history item"),
               Line2D([], [], marker="^", linestyle="", color="grey", label="cold history item")]
    if len(panel.user_ids) <= LEGEND_USERS:
        handles += [Line2D([], [], marker="o", linestyle="", color=colour, label=user)
                    for user, colour in zip(panel.user_ids, colours)]
    ax.legend(handles=handles, loc="best", fontsize="small")
