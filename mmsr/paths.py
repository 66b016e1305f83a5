"""The data root: `$MMSR_HOME` (default `~/.cache/mmsr`).

    $MMSR_HOME/datasets/NAME/   canonical datasets   (mmsr data demo / import)
    $MMSR_HOME/caches/NAME/...  zarr encoder caches  (mmsr cache build)
    $MMSR_HOME/runs/NAME/       training runs        (mmsr train)
    $MMSR_HOME/models/          converted offline weights (mmsr models prepare)
    $MMSR_HOME/studies/NAME/    a study's runs, results.csv and report.md (mmsr study run)

Everywhere a NAME is accepted, a path (anything containing a `/` or starting with `.`)
works too.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmsr.errors import MMSRError

KINDS = ("datasets", "caches", "runs", "models", "studies")


def home() -> Path:
    return _a_folder(Path(os.environ.get("MMSR_HOME") or Path.home() / ".cache" / "mmsr").expanduser(),
                     "MMSR_HOME is a file, not a folder",
                     "point MMSR_HOME at a folder (made if missing), or unset it for ~/.cache/mmsr")


def _a_folder(path: Path, problem: str, hint: str) -> Path:
    """`path`, refused where a file stands in its place (else NotADirectoryError deep in whatever
    writes there first)."""
    if path.exists() and not path.is_dir():
        raise MMSRError(problem, where=path, hint=hint)
    return path


def make_folder(path: Path, what: str, hint: str) -> Path:
    """`path` made a folder (with its parents) for `what`, refused in one line where a file stands
    in its way (else FileExistsError or NotADirectoryError with a traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MMSRError(f"a file stands where the {what} folder goes", where=path, hint=hint) from None
    return path


def looks_like_path(name: str | os.PathLike) -> bool:
    text = str(name)
    return isinstance(name, Path) or "/" in text or text.startswith(".") or text.startswith("~")


def resolve(kind: str, name: str | os.PathLike) -> Path:
    """Where the `kind` entry called `name` lives (it may not exist yet)."""
    if kind not in KINDS:
        raise ValueError(f"unknown data-root kind {kind!r}")
    if not str(name).strip():  # would be $MMSR_HOME/KIND itself
        raise MMSRError(f"an empty name where a name under $MMSR_HOME/{kind} or a path is wanted",
                        hint="give a name or a path in its place")
    path = Path(name).expanduser() if looks_like_path(name) else home() / kind / str(name)
    _refuse_a_file_above(path, kind)
    return path


def _refuse_a_file_above(path: Path, kind: str) -> None:
    """A file among `path`'s parents: nothing can be read or made there, and making it ended in
    FileExistsError (a dataset, an import, a run) after the command had started."""
    for parent in path.parents:
        if parent.is_dir():
            return
        if parent.exists():
            raise MMSRError(f"{parent} is a file, so nothing can be under it", where=path,
                            hint=f"give a {kind[:-1]} path whose folders are folders")


def dataset_dir(name: str | os.PathLike) -> Path:
    return resolve("datasets", name)


def runs_dir(name: str | os.PathLike) -> Path:
    return resolve("runs", name)


def caches_dir(name: str | os.PathLike) -> Path:
    return resolve("caches", name)


def models_dir() -> Path:
    return _a_folder(home() / "models", "a file where mmsr keeps its prepared models",
                     "move the file away: `mmsr models prepare` makes this folder")


def dataset_names(*, without_meta: bool = False) -> list[str]:
    """The datasets under $MMSR_HOME/datasets (directories holding a meta.json), sorted; hidden
    ones (a generation's staging folder, a dataset being replaced) are not datasets.
    `without_meta`: the other folders there instead (a dataset that lost its meta.json, raw files)."""
    root = home() / "datasets"
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if not entry.name.startswith(".") and entry.is_dir()
                  and (entry / "meta.json").is_file() != without_meta)
