"""How much each trained run draws from the newest item of the history, and from the older
ones, on valid and on test.

    MMSR_HOME=DIR .venv/bin/python bench/last_item.py RUN [RUN ...] [--checkpoint best|last]
                                                      [--protocol recbole|paper] [--keep 1,2,5]

For each run, HR@10 / NDCG@10 of the usual valid and test cases, of the same cases with the
newest history item left out (the target stays), and of the same cases reading only the newest
k items (`--keep`). The differences are what those items are worth to the model. On a leave-two-out split the newest item of a test case is the valid target, one no
training sequence of that user ever held; the newest item of a valid case is the last training
item. Issue 16 found MMSR-T losing a third of its valid HR@10 on test while IDSR kept it; this
says where. Exact full ranking (`mmsr.eval.search.rank_targets`), one process. Not a test:
prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from mmsr.eval.metrics import compute_metrics
from mmsr.eval.runner import PROTOCOLS
from mmsr.eval.towers import item_matrix, user_matrix
from mmsr.eval.search import ItemIndex, case_histories, rank_targets
from mmsr.machine import cpu_model
from mmsr.train.run import load_run


def _metrics(model, items, index, split, which: str, mask_history: bool, drop_newest: bool = False,
             keep_newest: int | None = None) -> dict:
    cases = split.cases(which)
    keep = cases.positions >= 2 if drop_newest else np.ones(len(cases.users), dtype=bool)
    users, positions = cases.users[keep], cases.positions[keep]
    max_len = min(split.config.max_seq_len, keep_newest or split.config.max_seq_len)
    cut = 1 if drop_newest else 0
    histories = [split.items[split.offsets[u]:split.offsets[u] + p - cut][-max_len:] for u, p in zip(users, positions)]
    targets = split.items[split.offsets[users] + positions]
    vectors = user_matrix(model, items, histories, split.config.max_seq_len, 256, torch.device("cpu")).numpy()
    masks = case_histories(split.offsets, split.items, users, positions)  # the whole history stays masked
    ranks = rank_targets(index, vectors, targets, masks, mask_history=mask_history, max_k=10)
    metrics = compute_metrics(ranks, ks=(10,))
    return {"HR@10": round(metrics["HR@10"], 4), "NDCG@10": round(metrics["NDCG@10"], 4), "cases": int(keep.sum())}


def ablate(run: str, checkpoint: str, protocol: str, keeps: list[int]) -> dict:
    loaded = load_run(run, checkpoint, "cpu")
    model, split = loaded.model, loaded.split
    if model.scorer is not None:
        raise SystemExit(f"{run}: a candidate-dependent scorer ({loaded.config.model.kind}); this bench ranks "
                         "by inner product only")
    items = item_matrix(model, loaded.feed, split.num_items, loaded.towers_batch(), torch.device("cpu"))
    index = ItemIndex(model.score_vectors(items).numpy(), device="cpu")
    out = {"kind": loaded.config.model.kind, "checkpoint": loaded.info["checkpoint"]}
    masked = PROTOCOLS[protocol]
    for which in ("valid", "test"):
        whole = _metrics(model, items, index, split, which, masked)
        without = _metrics(model, items, index, split, which, masked, drop_newest=True)
        out[which] = {"history": whole, "without_newest": without,
                      "newest_item_worth_hr10": round(whole["HR@10"] - without["HR@10"], 4),
                      "only_newest": {k: _metrics(model, items, index, split, which, masked, keep_newest=k)
                                      for k in keeps}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run names under $MMSR_HOME/runs, or run directories")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--protocol", default="recbole", choices=tuple(PROTOCOLS))
    parser.add_argument("--keep", default="1,2,5", help="also rank reading only the newest k items, for each k")
    args = parser.parse_args()
    keeps = [int(k) for k in args.keep.split(",") if k.strip()]
    result = {"cpu": cpu_model(), "checkpoint": args.checkpoint, "protocol": args.protocol, "runs": {}}
    for run in args.runs:
        result["runs"][run] = ablate(run, args.checkpoint, args.protocol, keeps)
        row = result["runs"][run]
        for which in ("valid", "test"):
            print(f"{run} {which} HR@10: history {row[which]['history']['HR@10']}, without the newest item "
                  f"{row[which]['without_newest']['HR@10']}, only the newest "
                  + ", ".join(f"{k}: {m['HR@10']}" for k, m in row[which]["only_newest"].items()), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
