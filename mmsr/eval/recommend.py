"""Top-k items for one history, from a run directory alone (what `mmsr recommend` prints).

    from mmsr.eval.recommend import recommend
    result = recommend("demo-mmsr-sasrec", ["i00012", "i00345"], k=10)
    # {"history": [...], "k": 10, "items": [{"item", "title", "score", "cold"}, ...]}, best first

History items are excluded. Every item is rankable, including cold items and items never
seen in training: an item's vector comes from its content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmsr.comma_lists import split_commas
from mmsr.errors import MMSRError
from mmsr.eval.towers import item_matrix, user_matrix
from mmsr.eval.search import top_k
from mmsr.train.batches import left_pad
from mmsr.train.run import load_run


def parse_history(text: str) -> list[str]:
    """`"i00012, i00345"` (the --history option, oldest first) -> item ids."""
    return split_commas(text, where="--history", example="i00012,i00345")


def recommend(run: str | Path, history: Sequence[str], k: int = 10, checkpoint: str = "best",
              device: str = "auto") -> dict:
    """The `k` best items for a user who interacted with `history` (item ids, oldest first).
    Fewer when fewer items are left once the history is excluded; `notes` says so, and when the
    model reads only the newest `split.max_seq_len` items of a longer history."""
    if k < 1:
        raise MMSRError(f"k must be positive, got {k}", where="-k")
    ids = list(history)
    if not ids:
        raise MMSRError("empty history", where="--history", hint="e.g. --history i00012,i00345")
    loaded = load_run(run, checkpoint, device)
    dataset = loaded.dataset
    unknown = [item for item in ids if item not in dataset.item_index]
    if unknown:
        raise MMSRError(f"unknown item {unknown[0]!r}", where="--history",
                        hint=f"item ids come from {dataset.root / 'items.jsonl'}")
    seq = np.asarray([dataset.item_index[item] for item in ids], dtype=np.int64)
    max_len = loaded.config.split.max_seq_len
    notes = []
    if len(seq) > max_len:
        notes.append(f"the model reads the newest {max_len} of the {len(seq)} history items (split.max_seq_len); "
                     "all of them are excluded from the list")
    rankable = dataset.num_items - len(set(seq.tolist()))
    if k > rankable:
        notes.append(f"only {rankable} items are left once the history is excluded; all of them are listed")
    shown = min(k, rankable)  # never a k-long buffer for a k the catalogue cannot fill
    items = item_matrix(loaded.model, loaded.feed, dataset.num_items, loaded.towers_batch(), loaded.device)
    if shown == 0:
        top, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    elif loaded.model.scorer is not None:  # candidate-dependent: score every item exactly
        top, scores = _scored_top_k(loaded, items, seq, shown)
    else:
        user = user_matrix(loaded.model, items, [seq], max_len, 1, loaded.device)
        top, scores = top_k(loaded.model.score_vectors(items).numpy(), user.numpy()[0], k=shown,
                            exclude=seq.tolist())
    cold = loaded.split.cold_items
    rows = [{"item": dataset.items[i]["id"], "title": dataset.items[i].get("title", ""), "score": float(s),
             "cold": bool(cold[i])} for i, s in zip(top.tolist(), scores.tolist())]
    return {"history": ids, "k": k, "items": rows, "notes": notes}


@torch.no_grad()
def _scored_top_k(loaded, items: torch.Tensor, seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = left_pad([seq], loaded.config.split.max_seq_len)
    items_dev = items.to(loaded.device)
    states = loaded.model.user_vectors(items_dev[ids.clamp_min(0).to(loaded.device)], mask.to(loaded.device))
    scores = loaded.model.score_matrix(states, mask.to(loaded.device), items_dev)[0].float().cpu().numpy()
    scores[seq] = -np.inf  # last in the order: with k at most the items left, none is listed
    top = np.argsort(-scores, kind="stable")[:k]
    return top, scores[top]
