"""One run's rank of every case of a split: what `mmsr compare` pairs, and what `mmsr ranks`
writes to a file.

A ranks file (`mmsr.eval.external_ranks`: user,item,rank in the dataset's own IDs) is how two
models that cannot be loaded side by side are still compared case by case: another tool's
model (RecBole's), or a run that this version of mmsr refuses to load because its modules
changed since it was trained (`mmsr.train.model.load_weights`). The mmsr that trained the run
writes its ranks; any later mmsr pairs them with a new run.

For `mmsr compare` the ranks are capped at max K + 1 (exact for every metric it reports, and
what makes the FAISS path cheap). A written file holds exact ranks, 1 + the items scoring
strictly higher, so that any metric can be computed from it (MRR, HR@100, ...): every item is
counted by the dense path (`mmsr.eval.dense`), never a top-k of the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsr.data.split import EVAL_SPLITS
from mmsr.errors import MMSRError
from mmsr.eval.external_ranks import CaseKeys, is_ranks_file, write_ranks
from mmsr.eval.metrics import hit_at_k, ndcg_at_k
from mmsr.eval.runner import PROTOCOLS, backend_note, case_ranks
from mmsr.torchrun_env import env_int
from mmsr.train.run import load_run


@dataclass
class RunRanks:
    """A run's cases (user, position, target: [3, cases]), their ranks, what to call the run
    (its directory, or a ranks file in `mmsr compare`), and, when asked for, the cases' IDs."""

    identity: np.ndarray
    ranks: np.ndarray
    label: object
    keys: CaseKeys | None = None
    batch_size: int | None = None  # the towers' batch (None: a ranks file's)
    num_items: int | None = None  # the catalogue ranked (None: a ranks file's)
    notes: tuple[str, ...] = ()  # what the request asked that this run could not do as asked


def rank_run(run: str, split: str, protocol: str, *, max_k: int | None = None, checkpoint: str = "best",
             batch_size: int | None = None, device: str = "auto", search_backend: str = "auto",
             with_keys: bool = False) -> RunRanks:
    """Every case of `split` ranked under `run` (one process). Ranks above `max_k` come back as
    `max_k + 1`; `max_k=None` gives exact ranks, by dense counting whatever `search_backend`
    says. `with_keys`: also the cases' user and target IDs (one string each, so only on demand).
    `batch_size`: None takes the run's own, as `mmsr eval` does (`LoadedRun.towers_batch`)."""
    if protocol not in PROTOCOLS:
        raise MMSRError(f"unknown protocol {protocol!r}", where="--protocol", hint="use paper or recbole")
    loaded = load_run(run, checkpoint, device)
    notes = (backend_note(loaded.model, search_backend),)
    if max_k is None:
        max_k, search_backend, notes = loaded.split.num_items, "dense", ()
    cases = loaded.split.cases(split)
    targets = loaded.split.items[loaded.split.offsets[cases.users] + cases.positions]
    batch_size = loaded.towers_batch(batch_size)
    ranked = case_ranks(loaded.model, loaded.feed, loaded.split, split, max_k=max_k, mask_history=PROTOCOLS[protocol],
                        batch_size=batch_size, device=loaded.device, search_backend=search_backend)
    keys = None
    if with_keys:
        item_ids = loaded.dataset.item_ids()
        keys = CaseKeys(split, [loaded.split.user_ids[u] for u in cases.users], [item_ids[t] for t in targets],
                        loaded.split.num_items)
    return RunRanks(np.stack([cases.users, cases.positions, targets]), ranked.ranks, loaded.root, keys, batch_size,
                    loaded.split.num_items, tuple(note for note in notes if note))


def write_run_ranks(run: str, path: str | Path, split: str = "test", *, protocol: str = "paper",
                    checkpoint: str = "best", batch_size: int | None = None, device: str = "auto") -> dict:
    """Write the exact rank of each case of `split` under `run` to `path` (the ranks file format,
    `mmsr.eval.external_ranks`; written whole or not at all). Returns {"run", "split", "protocol",
    "checkpoint", "cases", "path", "batch_size", "HR@10", "NDCG@10"}: the last two from the file's ranks, to
    check it against `mmsr eval`."""
    if env_int("WORLD_SIZE", 1) > 1:
        raise MMSRError("mmsr ranks runs in one process", where="torchrun", hint="run it without torchrun")
    if split not in EVAL_SPLITS:  # before the run loads (seconds), and with the option it is
        raise MMSRError(f"unknown split {split!r}", where="--split",
                        hint="use one of " + ", ".join(EVAL_SPLITS) + " (one split a file)")
    path = Path(path)
    if not is_ranks_file(str(path)):
        raise MMSRError("a ranks file is a .csv", where=path,
                        hint="name it NAME.csv: that is how `mmsr compare` tells a ranks file from a run")
    ranked = rank_run(run, split, protocol, checkpoint=checkpoint, batch_size=batch_size, device=device,
                      with_keys=True)
    write_ranks(path, ranked.keys, ranked.ranks)
    cases = len(ranked.ranks)
    # Without a case the metrics are 0, as `mmsr eval` reports them (a mean of nothing is NaN, not JSON).
    return {"run": str(ranked.label), "split": split, "protocol": protocol, "checkpoint": checkpoint,
            "cases": cases, "path": str(path), "batch_size": ranked.batch_size,
            "HR@10": float(hit_at_k(ranked.ranks, 10).mean()) if cases else 0.0,
            "NDCG@10": float(ndcg_at_k(ranked.ranks, 10).mean()) if cases else 0.0}
