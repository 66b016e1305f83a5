"""A study's figures (`[[figure]]` entries), drawn from its finished runs by `mmsr.plots`.

    curves   validation metric against epoch, one line per variant (Fig. 3: transfer vs scratch)
    items    t-SNE of item vectors, one panel per variant (Fig. 4: IDSR vs MMSR)
    users    t-SNE of users' histories and user vectors (Fig. 5)

Each variant is drawn from its first finished run (the figure's dataset, the lowest seed). A
figure whose runs are not all finished yet is left out, not drawn half.
"""

from __future__ import annotations

from pathlib import Path

from mmsr.study.layout import read_result
from mmsr.study.spec import Figure, Study


def draw(out: Path, study: Study, figure: Figure) -> list[Path]:
    roots = [_first_run(out, name, figure.dataset) for name in figure.variants]
    if None in roots:
        return []
    return DRAWERS[figure.kind](out, study, figure, roots)


def _first_run(out: Path, variant: str, dataset: str) -> Path | None:
    finished = []
    for result_file in (out / "runs").glob(f"{variant}--*/study.json"):
        result = read_result(result_file.parent)
        if result["variant"] == variant and (not dataset or result["dataset"] == dataset):
            finished.append((result["seed"], result["dataset"], result_file.parent))
    return min(finished)[2] if finished else None


def _curves(out: Path, study: Study, figure: Figure, roots: list[Path]) -> list[Path]:
    from mmsr.plots.curves import curves_figure, read_metrics  # deferred: matplotlib

    series = {study.variant(name).label: read_metrics(root) for name, root in zip(figure.variants, roots)}
    return curves_figure(series, figure.metric, out / f"{figure.name}.png")


def _items(out: Path, study: Study, figure: Figure, roots: list[Path]) -> list[Path]:
    from mmsr.plots.items import plot_items  # deferred: torch and scikit-learn

    return plot_items(roots[0], out, compare=roots[1] if len(roots) > 1 else None, stem=figure.name)


def _users(out: Path, study: Study, figure: Figure, roots: list[Path]) -> list[Path]:
    from mmsr.plots.users import plot_users  # deferred: torch and scikit-learn

    return plot_users(roots[0], out, compare=roots[1] if len(roots) > 1 else None, stem=figure.name)


DRAWERS = {"curves": _curves, "items": _items, "users": _users}
