"""Evaluate a recommender on a split: every item embedded once, exact full ranking of every item.

Item vectors are computed in batches from the item feed (cache, raw or IDs); user vectors
from each case's history (the last `max_seq_len` items before the target); the target's
rank comes from `mmsr.eval.search.rank_targets`, which masks the case's whole history
(paper protocol) unless `mask_history=False` (RecBole protocol), on the exact path that is
fastest here (`mmsr.eval.backends`; the result's "backend" says which ran). Under torchrun,
the ranks share the item tower (`item_matrix`), the cases are split over the ranks and the
metric sums are all-reduced.

    evaluate_model(model, feed, split, "valid")   # a model in memory (the trainer's validation)
    evaluate_run("demo-mmsr-sasrec", "test")      # `mmsr eval`: a run directory, eval_test.json written
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmsr.atomic import atomic_write_text
from mmsr.data.split import EVAL_SPLITS, Split
from mmsr.distributed import init_from_env
from mmsr.comma_lists import split_commas
from mmsr.errors import MMSRError
from mmsr.eval.metrics import DEFAULT_KS, finalize, metric_sums, parse_ks, reduce_metric_sums, standard_errors, \
    whole_catalogue_note
from mmsr.eval.backends import check_request, resolve_backend
from mmsr.eval.item_shards import gemm_for, ranks_over_slices
from mmsr.progress import to_stderr
from mmsr.eval.search import ItemIndex, case_histories, rank_targets, ranks_from_scores, search_k, shard_rows
from mmsr.eval.towers import ItemSlice, item_matrix, item_slice, item_spread, user_matrix
from mmsr.train.batches import left_pad
from mmsr.train.run import load_run

# --protocol -> whether the user's history items are masked (docs/eval.md)
PROTOCOLS = {"paper": True, "recbole": False}


# Candidate-dependent scoring (CARCA++): cases x items per block, bounding the [cases, items, D]
# attention tensors to a few tens of MB.
SCORE_CASES, SCORE_ITEMS = 32, 2048


@torch.no_grad()
def batched_ranks(model, items: torch.Tensor, histories: list[np.ndarray], targets: np.ndarray, masks,
                  max_len: int, device: torch.device, max_k: int) -> np.ndarray:
    """Exact full ranking for a candidate-dependent scorer: every item scored for every case, in
    blocks, then the one ranking rule (`ranks_from_scores`). `masks`: the cases' full histories
    (`Histories`) or None (RecBole's protocol)."""
    model.eval()
    items_dev = items.to(device)
    ranks = np.empty(len(histories), dtype=np.int64)
    for start in range(0, len(histories), SCORE_CASES):
        ids, mask = left_pad(histories[start:start + SCORE_CASES], max_len)
        ids, mask = ids.to(device), mask.to(device)
        states = model.user_vectors(items_dev[ids.clamp_min(0)], mask)
        scores = torch.cat([model.score_matrix(states, mask, items_dev[a:a + SCORE_ITEMS]).float().cpu()
                            for a in range(0, len(items_dev), SCORE_ITEMS)], dim=1)
        rows = np.arange(start, start + len(scores))
        ranks[rows] = ranks_from_scores(scores.numpy(), targets[rows], masks.take(rows) if masks is not None else None,
                                        max_k)
    return ranks


@dataclass
class RankedCases:
    """The ranks `case_ranks` computed: `ranks[i]` is the rank of case `rows[i]` of
    `split.cases(which)`, 1-based and capped at max K + 1: this process's share under torchrun,
    or every case on every rank when `replicated` (item slices). `cases` is how many the split
    has in all; `search` and `backend` say how they were computed; `clock` where the time went."""

    ranks: np.ndarray
    rows: np.ndarray
    cases: int
    replicated: bool
    search: str
    backend: dict
    clock: "_Clock"
    item_spread: float | None = None  # towers.item_spread of the scored vectors; None over item slices


def evaluate_model(model, feed, split: Split, which: str, *, ks=(10, 20, 50), mask_history: bool = True,
                   batch_size: int = 256, device: torch.device | None = None, rank: int = 0, world: int = 1,
                   search_device: str = "auto", search_backend: str = "auto", items: torch.Tensor | None = None,
                   shard_items: bool = False) -> dict:
    """`search_device`: "auto" (the GPU when CUDA is present), "cpu" or "gpu".
    `search_backend`: "auto" (on a GPU faiss-gpu, or dense-gpu without a FAISS GPU build; measured
    on the CPU: faiss-cpu or dense counting), "faiss", "dense" or a backend name
    (`mmsr.eval.backends`). The result's "backend"
    names the path that ran. `items`: the catalogue's vectors from `item_matrix`, when another
    split of the same model already computed them (the item tower is most of an evaluation's
    time on a large catalogue); the result's seconds then say "items": 0. `shard_items`: no rank
    holds the whole catalogue (`mmsr.eval.item_shards`); `items` is then this rank's `ItemSlice`."""
    ks = parse_ks(ks)
    ranked = case_ranks(model, feed, split, which, max_k=max(ks), mask_history=mask_history, batch_size=batch_size,
                        device=device, rank=rank, world=world, search_device=search_device,
                        search_backend=search_backend, items=items, shard_items=shard_items)
    sums = metric_sums(ranked.ranks, ks)
    if world > 1 and not ranked.replicated:
        sums = reduce_metric_sums(sums)
    result = _result(split, which, ranked.cases, mask_history, ranked.search, ranked.backend, sums, ranked.clock)
    if ranked.item_spread is not None:
        result["item_spread"] = round(ranked.item_spread, 4)
    return result


def backend_note(model, search_backend: str) -> str | None:
    """A backend asked for that cannot rank this model: a candidate-dependent scorer (CARCA++)
    has no inner product for an index or a GEMM, so every item is scored exactly (exact-batched)
    whatever was asked; said rather than refused, so one command line serves a study's kinds."""
    if model.scorer is None or search_backend == "auto":
        return None
    return (f"note: --search-backend {search_backend} does not apply to this model: its scores depend on the "
            "candidate (no inner product), so every item is scored exactly (exact-batched)")


def case_ranks(model, feed, split: Split, which: str, *, max_k: int, mask_history: bool = True,
               batch_size: int = 256, device: torch.device | None = None, rank: int = 0, world: int = 1,
               search_device: str = "auto", search_backend: str = "auto", items: torch.Tensor | None = None,
               shard_items: bool = False) -> RankedCases:
    """Each case's rank, by the path `evaluate_model` describes (its arguments)."""
    device = device or torch.device("cpu")
    if shard_items:
        return _ranks_over_slices(model, feed, split, which, max_k=max_k, mask_history=mask_history,
                                  batch_size=batch_size, device=device, rank=rank, world=world,
                                  search_device=search_device, search_backend=search_backend, part=items)
    cases = split.cases(which)
    mine = shard_rows(len(cases), rank, world)
    users, positions = cases.users[mine], cases.positions[mine]
    clock = _Clock()
    if items is None:
        items = item_matrix(model, feed, split.num_items, batch_size, device, rank=rank, world=world)
        clock.lap("items")
    else:
        clock.skip("items")
    max_len = split.config.max_seq_len
    histories = [split.history(u, p, max_len) for u, p in zip(users, positions)]
    targets = split.items[split.offsets[users] + positions]
    masks = case_histories(split.offsets, split.items, users, positions)
    scored = model.score_vectors(items)
    if model.scorer is not None:
        ranks = batched_ranks(model, items, histories, targets, masks if mask_history else None, max_len, device,
                              max_k)
        clock.lap("ranking")  # the user states are part of the scorer's blocks
        search = "exact-batched (candidate-dependent scorer, every item scored)"
        backend = {"name": "exact-batched", "requested": search_backend}
    else:
        user_vecs = user_matrix(model, items, histories, max_len, batch_size, device)
        clock.lap("users")
        index = ItemIndex(scored.numpy(), device=search_device)
        resolved = resolve_backend(index, search_backend,
                                   k=search_k(max_k, masks.lengths() if mask_history else np.zeros(0)))
        ranks = rank_targets(index, user_vecs.numpy(), targets, masks, mask_history=mask_history, max_k=max_k,
                             backend=resolved)
        clock.lap("ranking")
        search = f"exact inner product, {resolved.name}: {SEARCH_LABELS[resolved.name.split('-')[0]]}"
        # The name, not the probe's timings: a result is the same whenever it is recomputed.
        backend = {"name": resolved.name, "requested": resolved.requested}
    return RankedCases(ranks, mine, len(cases), False, search, backend, clock,
                       item_spread=item_spread(scored))


def _ranks_over_slices(model, feed, split: Split, which: str, *, max_k: int, mask_history: bool, batch_size: int,
                       device: torch.device, rank: int, world: int, search_device: str, search_backend: str,
                       part: ItemSlice | None) -> RankedCases:
    gemm = gemm_for(model, search_backend, device, search_device)
    clock = _Clock()
    if part is None:
        part = item_slice(model, feed, split.num_items, batch_size, device, rank, world)
        clock.lap("items")
    else:
        clock.skip("items")
    ranks, gemm = ranks_over_slices(model, part, split, which, max_k=max_k, mask_history=mask_history,
                                    batch_size=batch_size, device=device, rank=rank, world=world, gemm=gemm,
                                    clock=clock)
    search = (f"exact inner product, dense counting over {world} item slice{'s' if world > 1 else ''} "
              f"(one per rank, counts all-reduced): {SEARCH_LABELS['dense']}")
    backend = {"name": "dense-item-shards", "requested": search_backend, "gemm": gemm, "item_shards": world}
    return RankedCases(ranks, np.arange(len(ranks)), len(ranks), True, search, backend, clock)


def _result(split: Split, which: str, cases: int, mask_history: bool, backend: str, choice: dict, sums: dict,
            clock: _Clock) -> dict:
    return {"split": which, "users": cases, "items": split.num_items,
            "protocol": "paper (history masked)" if mask_history else "recbole (history not masked)",
            "search": backend, "backend": choice, "metrics": finalize(sums),
            # How far this split's cases alone move each figure (not the seed's effect).
            "standard_errors": standard_errors(sums),
            # Where the time went (this rank's): the item tower, the user tower, the ranking.
            "seconds": clock.laps}


def parse_splits(splits: str | list[str]) -> list[str]:
    """"test,cold" or ["test", "cold"] -> ["test", "cold"]: known names, each once, in order."""
    if isinstance(splits, str) and not splits.replace(",", "").strip():
        splits = []  # nothing but commas: "no split given" below
    elif isinstance(splits, str):
        splits = split_commas(splits, where="--split", example="test,cold,new")
    names = list(dict.fromkeys(name.strip() for name in splits if name.strip()))
    unknown = [name for name in names if name not in EVAL_SPLITS]
    if unknown or not names:
        raise MMSRError(f"unknown split {unknown[0]!r}" if unknown else "no split given", where="--split",
                        hint="use one or more of " + ", ".join(EVAL_SPLITS) + ", comma-separated")
    return names


class _Clock:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now

    def skip(self, name: str) -> None:
        """A stage that did not run here (0 s)."""
        self.laps[name] = 0.0
        self._last = time.perf_counter()


# backend family -> how its ranks are computed, for the result's "search" line
SEARCH_LABELS = {"faiss": "IndexFlatIP top-k, near-ties re-scored in float64",
                 "dense": "GEMM score blocks, items strictly above the target counted, near-ties re-scored in float64"}


def evaluate_run(run: str | Path, split: str = "test", *, ks=DEFAULT_KS, protocol: str = "paper",
                 faiss: bool = True, checkpoint: str = "best", batch_size: int | None = None, device: str = "auto",
                 search_device: str = "auto", search_backend: str = "auto", shard_items: bool = False,
                 log: Callable[[str], None] = to_stderr) -> dict:
    """`mmsr eval`: rebuild the model from the run directory alone, rank every item for every case
    of `split` (test | valid | cold | new | cold-test) and write the result to RUN/eval_<split>.json (rank 0).

    Under torchrun the item tower and the cases are shared out over the ranks; every rank
    returns the global metrics.
    """
    return evaluate_splits(run, [split], ks=ks, protocol=protocol, faiss=faiss, checkpoint=checkpoint,
                           batch_size=batch_size, device=device, search_device=search_device,
                           search_backend=search_backend, shard_items=shard_items, log=log)[split]


def evaluate_splits(run: str | Path, splits: list[str], *, ks=DEFAULT_KS, protocol: str = "paper",
                    faiss: bool = True, checkpoint: str = "best", batch_size: int | None = None, device: str = "auto",
                    search_device: str = "auto", search_backend: str = "auto",
                    shard_items: bool = False,
                    log: Callable[[str], None] = to_stderr) -> dict[str, dict]:
    """`evaluate_run` for several splits of one run: the model is loaded and the catalogue
    embedded once, then each split is ranked ({split: result}, in the order given). Every name
    is checked before any work starts. `batch_size`: None takes the run's own (`LoadedRun.towers_batch`),
    so that its logged validation figures come back (same protocol, device and process count); the
    result says which ran."""
    if protocol not in PROTOCOLS:
        raise MMSRError(f"unknown protocol {protocol!r}", where="--protocol", hint="use paper or recbole")
    if not faiss:
        raise MMSRError("evaluation is always an exact full ranking of every item; there is no other mode",
                        where="--no-faiss", hint="drop --no-faiss; --search-backend dense ranks without FAISS, "
                                                 "with the same ranks")
    splits = parse_splits(splits)
    ks = parse_ks(ks)
    check_request(search_backend)
    loaded = load_run(run, checkpoint, device)
    batch_size = loaded.towers_batch(batch_size)
    dist = init_from_env(loaded.device)
    if dist.main:
        for note in (whole_catalogue_note(ks, loaded.split.num_items), backend_note(loaded.model, search_backend)):
            if note:
                log(note)
    started = time.perf_counter()
    if shard_items:
        gemm_for(loaded.model, search_backend, loaded.device, search_device)  # refused before the item tower
        items = item_slice(loaded.model, loaded.feed, loaded.split.num_items, batch_size, loaded.device, dist.rank,
                           dist.world)
    else:
        items = item_matrix(loaded.model, loaded.feed, loaded.split.num_items, batch_size, loaded.device,
                            rank=dist.rank, world=dist.world)
    item_seconds = round(time.perf_counter() - started, 3)
    results = {}
    for number, split in enumerate(splits):
        result = evaluate_model(loaded.model, loaded.feed, loaded.split, split, ks=ks, mask_history=PROTOCOLS[protocol],
                                batch_size=batch_size, device=loaded.device, rank=dist.rank, world=dist.world,
                                search_device=search_device, search_backend=search_backend, items=items,
                                shard_items=shard_items)
        if number == 0:  # the one item-tower pass, counted with the first split
            result["seconds"]["items"] = item_seconds
        result["run"] = str(loaded.root)
        result["checkpoint"] = loaded.info["checkpoint"]
        result["batch_size"] = batch_size
        if dist.main:
            atomic_write_text(loaded.root / f"eval_{split}.json", json.dumps(result, indent=2) + "\n")
        results[split] = result
    return results
