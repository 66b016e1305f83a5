"""Run by tests/test_docker.py through docker/torchrun.sh (torchrun, 2 local processes, gloo).

Until `mmsr eval` exists on the CLI this stands in for `-m mmsr_cli.app eval`: it joins the
process group the way the CLI will (env:// from torchrun), evaluates random vectors on the
demo data's test cases with `mmsr.eval.evaluate` (users sharded across ranks, metric sums
all-reduced) and writes what it saw to OUT/rank<R>.json.
"""

import json
import os
import sys

import numpy as np
import torch.distributed as dist


def main(dataset: str, out_dir: str) -> None:
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.eval import case_histories, evaluate

    dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE come from torchrun
    try:
        split = split_dataset(load_dataset(dataset, check_images=False))
        cases = split.cases("test")
        hist = case_histories(split.offsets, split.items, cases.users, cases.positions)
        targets = split.items[split.offsets[cases.users] + cases.positions]
        rng = np.random.default_rng(0)  # same vectors on every rank
        items = rng.standard_normal((split.num_items, 16)).astype(np.float32)
        users = rng.standard_normal((len(cases), 16)).astype(np.float32)
        metrics = evaluate(items, users, targets, hist, ks=(10, 20), device="cpu")
        record = {"rank": dist.get_rank(), "world": dist.get_world_size(), "restarts": os.environ.get("TORCHELASTIC_RESTART_COUNT"),
                  "metrics": metrics}
        with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as f:
            json.dump(record, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
