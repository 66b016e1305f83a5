"""The paper's Table V on the demo data: MMSR against its baselines, one trainer, one evaluation.

    .venv/bin/python bench/table5.py [--rows idsr-sasrec,fdsa,...] [--home DIR] [--set k=v ...]

Rows (each a config file; everything but the model is configs/demo-cpu.toml's):
  IDSR (SASRec, GRU4Rec, NextItNet)  configs/baselines/idsr.toml [--set model.sequence=...]
  FDSA                               configs/baselines/fdsa.toml
  VQRec                              configs/baselines/vqrec.toml
  MoRec++                            configs/baselines/morec.toml
  CARCA++                            configs/baselines/carca.toml (BCE: it cannot take in-batch losses)
  MMSR                               configs/demo-cpu.toml
Each is trained from the one shared cache and evaluated on test, cold and new under the paper's
protocol (history masked); the checkpoint is the trainer's choice on validation. Every step is
an `mmsr` command in a subprocess. Not a test: prints one JSON object on its last line, and a
markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import MMSR, sh, train_and_evaluate  # noqa: E402  (bench/, next to this file)

from mmsr.machine import cpu_model  # noqa: E402

ROWS = {
    "idsr-sasrec": ("IDSR (SASRec)", "configs/baselines/idsr.toml", []),
    "idsr-gru4rec": ("IDSR (GRU4Rec)", "configs/baselines/idsr.toml", ["model.sequence=gru4rec"]),
    "idsr-nextitnet": ("IDSR (NextItNet)", "configs/baselines/idsr.toml", ["model.sequence=nextitnet"]),
    "fdsa": ("FDSA", "configs/baselines/fdsa.toml", []),
    "vqrec": ("VQRec", "configs/baselines/vqrec.toml", []),
    "morec": ("MoRec++", "configs/baselines/morec.toml", []),
    "carca": ("CARCA++ (bce)", "configs/baselines/carca.toml", []),
    "mmsr": ("MMSR", "configs/demo-cpu.toml", []),
}
SPLITS = (("test", "paper"), ("cold", "paper"), ("cold-test", "paper"), ("new", "paper"))


def run_row(name: str, sets: list[str], env: dict, home: Path, log) -> dict:
    label, config, row_sets = ROWS[name]
    result = train_and_evaluate(f"table5-{name}", config, row_sets + list(sets), SPLITS, env, home, log)
    return {"row": label, **result}


def table(rows: list[dict]) -> str:
    header = " | ".join(f"{split} HR@10 | {split} NDCG@10" for split, _ in SPLITS)
    lines = [f"| model | {header} | best epoch / run | train s |", "|---" * (2 * len(SPLITS) + 3) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['error']} " + "|" * (2 * len(SPLITS) + 2))
            continue
        cells = [f"{r[f'{s}_{p}']['HR@10']:.4f} | {r[f'{s}_{p}']['NDCG@10']:.4f}" for s, p in SPLITS]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {r['best_epoch']} / {r['epochs_run']} | "
                     f"{r['train_wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--home", help="MMSR_HOME to use (default: a temporary directory)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every row")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    home = Path(args.home or tempfile.mkdtemp(prefix="mmsr-table5-"))
    env = {**os.environ, "MMSR_HOME": str(home), "MMSR_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if not (home / "datasets" / "demo").is_dir():
        sh(MMSR + ["data", "demo", "--name", "demo"], env, log)
    sh(MMSR + ["cache", "build", "--config", "configs/demo-cpu.toml"], env, log)  # one cache for every row
    results = []
    for name in rows:
        results.append(run_row(name, args.sets, env, home, log))
        log(json.dumps(results[-1]))
    log("\n" + table(results))
    print(json.dumps({"bench": "table5", "dataset": "demo", "protocol": "paper (history masked)", "cpu": cpu_model(),
                      "home": str(home), "rows": results}))


if __name__ == "__main__":
    main()
