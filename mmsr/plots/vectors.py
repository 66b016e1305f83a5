"""Item and user vectors of a trained run, computed the way evaluation computes them.

- Item vectors are the *scored* vectors (`model.score_vectors`): what a user vector's inner
  product is taken with, so items and users share one space (FDSA: its ID half).
- A user vector is the sequence model's output at the last position of the user's test
  history: the last `max_seq_len` items before the test target, as `mmsr eval` ranks it.

Only the items a figure shows are embedded (`item_vectors_of`), never the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsr.errors import MMSRError
from mmsr.eval.towers import item_vectors_of, user_matrix
from mmsr.plots.common import run_dir
from mmsr.progress import ProgressFactory, no_progress
from mmsr.train.run import LoadedRun, load_run

BATCH = 256


def load(run: str | Path, checkpoint: str = "best") -> LoadedRun:
    run_dir(run)  # "run not found" rather than load_run's "not a run directory" for a typo
    return load_run(run, checkpoint, device="cpu")


def load_pair(run: str | Path, compare: str | Path | None, checkpoint: str = "best") -> list[LoadedRun]:
    """The run, and the run to compare it with (same dataset: the panels show the same items)."""
    runs = [load(run, checkpoint)]
    if compare is not None:
        other = load(compare, checkpoint)
        if _dataset_key(other) != _dataset_key(runs[0]):
            raise MMSRError(f"--compare run is on dataset {other.dataset.name!r} ({other.dataset.root}), "
                            f"not {runs[0].dataset.name!r} ({runs[0].dataset.root})", where=other.root,
                            hint="compare two runs trained on the same dataset")
        runs.append(other)
    return runs


def _dataset_key(loaded: LoadedRun) -> str:
    # The content hash: a copy of the dataset under another path is the same dataset.
    return loaded.dataset.meta.get("content_hash") or str(Path(loaded.dataset.root).resolve())


def scored_item_vectors(loaded: LoadedRun, ids: np.ndarray, progress: ProgressFactory = no_progress) -> np.ndarray:
    with progress(f"item vectors ({loaded.root.name})", len(ids)) as advance:
        vectors = item_vectors_of(loaded.model, loaded.feed, ids, BATCH, loaded.device, advance)
    return loaded.model.score_vectors(vectors).numpy()


def histories_before_test(loaded: LoadedRun, users: np.ndarray) -> list[np.ndarray]:
    split = loaded.split
    last = split.lengths() - 1  # the test target's position
    return [split.history(int(u), int(last[u]), split.config.max_seq_len) for u in users]


@dataclass
class UserVectors:
    users: np.ndarray  # int64 user indices into loaded.split
    histories: list[np.ndarray]  # item indices per user, oldest first
    history_vectors: list[np.ndarray]  # [len(history), D] scored vectors per user
    user_vectors: np.ndarray  # [users, D]


def user_vectors(loaded: LoadedRun, users: np.ndarray, progress: ProgressFactory = no_progress) -> UserVectors:
    if loaded.model.scorer is not None:
        raise MMSRError(f"model.kind {loaded.config.model.kind!r} scores each candidate by cross-attention: it has "
                        "no user vector in the items' space", where=loaded.root,
                        hint="plot its items with `mmsr plot items`")
    histories = histories_before_test(loaded, users)
    needed = np.unique(np.concatenate(histories))
    with progress(f"item vectors ({loaded.root.name})", len(needed)) as advance:
        table = item_vectors_of(loaded.model, loaded.feed, needed, BATCH, loaded.device, advance)
    # user_matrix indexes its table by the histories' ids: index the small table instead.
    local = [np.searchsorted(needed, history) for history in histories]
    users_out = user_matrix(loaded.model, table, local, loaded.config.split.max_seq_len, BATCH, loaded.device)
    scored = loaded.model.score_vectors(table).numpy()
    return UserVectors(users, histories, [scored[rows] for rows in local], users_out.numpy())
