"""Where the user's own items stand against the target in trained runs, and how many of them
training already pushes down as negatives.

    MMSR_HOME=DIR .venv/bin/python bench/own_items.py RUN [RUN ...] [--split test] [--checkpoint best|last]
                                                     [--newest 10] [--steps 12]

RecBole's protocol ranks the user's own (already consumed) items; the paper's masks them, so a
run's two figures differ only by own items scored above the target. Per run:

- `above`: own items scored above the target per case (RecBole's rank minus the paper's), split
  into those the model reads (its newest `max_seq_len` items) and the older ones it never sees;
- `hits_lost`: the share of cases that are a hit@10 under the paper's protocol and not under
  RecBole's; `hits_lost_to_older_only`: the share of cases among them that would stay a hit were
  only the items the model reads ranked (lost only once the older items count);
- `newest_in_top10`: for k = 1..--newest, the share of cases whose k-th newest item ranks in the
  top ten of every item (RecBole's list), among the cases with at least k items;
- `training_negatives`: the share of a training position's earlier own items that its loss
  scores as negatives (among the batch's candidates and not taken out by `optim.own_items`),
  over --steps evenly spaced steps of epoch 0, built as the trainer builds them. `null` for a
  loss with one sampled negative.

Issue 16 asked whether adding every own item as a training negative would lift the models under
RecBole's protocol; the last figure says how many already are. Exact scores, one process, a
CPU. Not a test: prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from mmsr.eval.search import case_histories, ranks_from_scores
from mmsr.eval.towers import item_matrix, user_matrix
from mmsr.machine import cpu_model
from mmsr.train.batches import PAD, TrainBatches
from mmsr.train.losses import LOSSES
from mmsr.train.run import load_run

CHUNK = 256  # cases scored at once: [CHUNK, num_items] floats


def case_counts(loaded, which: str, newest: int) -> dict[str, np.ndarray]:
    """Per case of split `which`: own items above the target that the model reads ("read") and
    older ones ("older"), the non-own items above it ("others", so the paper's rank is others + 1
    and RecBole's others + read + older + 1), and [cases, newest] whether the k-th newest item
    ranks in RecBole's top ten ("newest_top10", NaN where the history holds fewer than k items).
    Both ranks are the evaluation's own rule (`ranks_from_scores`) on exact scores."""
    model, split = loaded.model, loaded.split
    if model.scorer is not None:
        raise SystemExit(f"{loaded.root}: a candidate-dependent scorer ({loaded.config.model.kind}); this bench "
                         "scores by inner product only")
    device = torch.device("cpu")
    max_len = split.config.max_seq_len
    cases = split.cases(which)
    items = item_matrix(model, loaded.feed, split.num_items, loaded.towers_batch(), device)
    scored = model.score_vectors(items).numpy()
    inputs = [split.history(u, p, max_len) for u, p in zip(cases.users, cases.positions)]
    users = user_matrix(model, items, inputs, max_len, loaded.towers_batch(), device).numpy()
    targets = split.items[split.offsets[cases.users] + cases.positions]
    paper, recbole, read = (np.zeros(len(targets), dtype=np.int64) for _ in range(3))
    newest_top10 = np.full((len(targets), newest), np.nan)  # NaN: the history is shorter
    for start in range(0, len(targets), CHUNK):
        part = slice(start, start + CHUNK)
        scores = users[part] @ scored.T
        histories = case_histories(split.offsets, split.items, cases.users[part], cases.positions[part])
        paper[part] = ranks_from_scores(scores, targets[part], histories, max_k=split.num_items)
        recbole[part] = ranks_from_scores(scores, targets[part], None, max_k=split.num_items)
        for row, score in enumerate(scores):
            c = start + row
            bar = score[targets[c]]
            read[c] = (score[np.setdiff1d(inputs[c], targets[c])] > bar).sum()
            history = histories.items[histories.offsets[row]:histories.offsets[row + 1]]
            newest_items = history[::-1][:newest]
            newest_top10[c, :len(newest_items)] = [(score > score[i]).sum() < 10 for i in newest_items]
    return {"read": read, "older": recbole - paper - read, "others": paper - 1, "newest_top10": newest_top10}


def training_negatives(loaded, steps: int) -> float | None:
    """The share of training positions' earlier own items that the loss scores as negatives, over
    `steps` evenly spaced steps of epoch 0 (each position weighs the same)."""
    config, split = loaded.config, loaded.split
    needs = LOSSES.needs(config.optim.loss)
    if "batch" not in needs and "item_table" not in needs:
        return None
    batches = TrainBatches.for_config(split, config)
    order = batches.order(0)
    shares = []
    for step in np.unique(np.linspace(0, len(batches) - 1, steps).astype(int)):
        batch = batches.batch(0, int(step), order)
        ids = batch.distinct_items()[0] if "batch" in needs else torch.arange(split.num_items)
        targets = batch.targets[batch.mask]
        taken = (batch.own.taken_out(config.optim.own_items, ids, batch.mask, targets) if batch.own is not None
                 else torch.zeros(len(targets), len(ids), dtype=torch.bool))
        candidates, kept_in = ids.numpy(), ~taken.numpy()
        rows = order[step * batches.batch_size:(step + 1) * batches.batch_size]
        kept = batch.mask.sum(1).numpy()
        n = 0
        for row, (user, end) in enumerate(zip(batches.row_users[rows], batches.row_ends[rows])):
            sequence = split.train_sequence(user)
            for at in range(end - kept[row], end):
                earlier = np.setdiff1d(sequence[:at], sequence[at])
                if len(earlier):
                    where = np.searchsorted(candidates, earlier).clip(max=len(candidates) - 1)
                    shares.append(((candidates[where] == earlier) & kept_in[n, where]).mean())
                assert targets[n] == sequence[at]  # the positions come in the loss's order
                n += 1
        assert n == len(targets) and (targets != PAD).all()
    return float(np.mean(shares)) if shares else None


def summarise(counts: dict[str, np.ndarray]) -> dict:
    paper = counts["others"] + 1
    recbole = paper + counts["read"] + counts["older"]
    lost = (paper <= 10) & (recbole > 10)
    older_only = lost & (paper + counts["read"] <= 10)
    return {"cases": len(paper),
            "above": {"read": round(float(counts["read"].mean()), 3), "older": round(float(counts["older"].mean()), 3),
                      "median_all": float(np.median(counts["read"] + counts["older"]))},
            "hits_paper": round(float((paper <= 10).mean()), 4),
            "hits_lost": round(float(lost.mean()), 4), "hits_lost_to_older_only": round(float(older_only.mean()), 4),
            "newest_in_top10": [round(float(np.nanmean(column)), 4) if (~np.isnan(column)).any() else None
                                for column in counts["newest_top10"].T]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run names under $MMSR_HOME/runs, or run directories")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--newest", type=int, default=10, help="report the k-th newest item for k = 1..N")
    parser.add_argument("--steps", type=int, default=12, help="training steps of epoch 0 read for the negatives")
    args = parser.parse_args(argv)
    result = {"cpu": cpu_model(), "split": args.split, "checkpoint": args.checkpoint, "runs": {}}
    for run in args.runs:
        loaded = load_run(run, args.checkpoint, "cpu")
        row = summarise(case_counts(loaded, args.split, args.newest))
        row.update(kind=loaded.config.model.kind, max_seq_len=loaded.split.config.max_seq_len,
                   loss=loaded.config.optim.loss, own_items=loaded.config.optim.own_items,
                   training_negatives=training_negatives(loaded, args.steps))
        result["runs"][run] = row
        print(f"{run}: own items above the target {row['above']['read']} read + {row['above']['older']} older; "
              f"hits@10 lost {row['hits_lost']} ({row['hits_lost_to_older_only']} to older alone); "
              f"earlier own items as training negatives {row['training_negatives']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
