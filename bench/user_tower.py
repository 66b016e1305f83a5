"""The evaluation's user tower: SASRec's last state alone (`last_state`) against the full
forward sliced at the last position, on the same inputs, alternated.

    python bench/user_tower.py                       # HM's eval shape: 200,000 users, L 20, dim 128, 2 blocks
    python bench/user_tower.py --users 20000 --repeats 3

Random item vectors with left padding (lengths drawn from 1..L), in batches of --batch as
`mmsr eval` runs them, under torch.no_grad in eval mode. Reports each way's best seconds over
--repeats, the ratio, and the largest difference between the two results. Prints one JSON
object last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--length", type=int, default=20, help="split.max_seq_len")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    # 512: the batch docs/scale.md's figures were measured at (`mmsr eval`'s default then; it now
    # takes the run's eval_batch_size, 256 unless the run set another).
    parser.add_argument("--batch", type=int, default=512, help="users per batch (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from mmsr.machine import cpu_model
    from mmsr.models.sequence import create_sequence_model

    torch.manual_seed(0)
    model = create_sequence_model("sasrec", dim=args.dim, max_len=args.length, layers=args.layers).eval()
    items = torch.randn(args.users, args.length, args.dim)
    lengths = torch.randint(1, args.length + 1, (args.users,))
    mask = torch.arange(args.length) >= (args.length - lengths)[:, None]
    items = items * mask.unsqueeze(-1)

    ways = {"last_state": lambda x, m: model.last_state(x, m), "full_forward": lambda x, m: model(x, m)[:, -1]}
    out = {name: torch.empty(args.users, args.dim) for name in ways}
    best = {name: float("inf") for name in ways}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                for a in range(0, args.users, args.batch):
                    out[name][a:a + args.batch] = way(items[a:a + args.batch], mask[a:a + args.batch])
                best[name] = min(best[name], time.perf_counter() - start)
                print(f"[user-tower] {name}: {best[name]:.2f} s", file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "user_tower", "cpu": cpu_model(), "threads": torch.get_num_threads(),
                      **{k: v for k, v in vars(args).items()},
                      "seconds": {k: round(v, 3) for k, v in best.items()},
                      "full_over_last": round(best["full_forward"] / best["last_state"], 2),
                      "max_abs_difference": float((out["last_state"] - out["full_forward"]).abs().max())}))


if __name__ == "__main__":
    main()
