"""How trained FDSA runs weigh their feature columns: the vanilla attention's weight on each
column (each encoder's output, then each side feature), over every item of the catalogue.

    MMSR_HOME=DIR .venv/bin/python bench/fdsa_feature_weights.py RUN [RUN ...] [--checkpoint best|last]

Per run and column: the mean, tenth percentile and median of the weight. With one column every
weight is 1; with the title beside the genres it says which of the two the feature stream reads.
`bench/recbole_fdsa.py` reports the same (`feature_attention`) for RecBole's FDSA, so the two
tools can be read side by side (docs/compare.md, "The feature attention's scorer"). The weights
are caught at `items.attention` while the items are embedded as `mmsr eval` embeds them
(`mmsr.eval.towers.item_matrix`), so content columns come from the run's cache like any other
evaluation. Not a test: prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mmsr.errors import MMSRError
from mmsr_store.errors import UserError
from mmsr.eval.towers import item_matrix
from mmsr.machine import cpu_model
from mmsr.models.fdsa import FDSAItemTower
from mmsr.train.run import load_run
from recbole_fdsa import column_weights  # bench/recbole_fdsa.py: the same summary for RecBole's runs


def feature_weights(run) -> dict:
    tower = run.model.items
    if not isinstance(tower, FDSAItemTower):
        raise MMSRError(f"{run.root} is a {run.config.model.kind} run: only fdsa runs weigh feature columns",
                        hint="name runs trained with model.kind=fdsa")
    energies = []
    hook = tower.attention.register_forward_hook(lambda module, args, out: energies.append(out.detach().cpu()))
    try:
        item_matrix(run.model, run.feed, run.dataset.num_items, run.towers_batch(), run.device)
    finally:
        hook.remove()
    weights = torch.softmax(torch.cat(energies), dim=1).squeeze(-1)  # [items, columns]
    return column_weights(weights, tower.columns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="fdsa run names or directories")
    parser.add_argument("--checkpoint", default="best", help="best | last")
    args = parser.parse_args()
    try:
        result = {}
        for name in args.runs:
            run = load_run(name, checkpoint=args.checkpoint, device="cpu")
            result[name] = {"epoch": run.info.get("epoch"), "columns": feature_weights(run)}
    except UserError as error:  # MMSRError, or the store's (a missing cache)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"bench": "fdsa_feature_weights", "cpu": cpu_model(), "checkpoint": args.checkpoint,
                      "runs": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
