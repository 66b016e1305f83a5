"""What the loss costs: every registered loss x {IDs, content} on the demo and on MovieLens-100K.

    .venv/bin/python bench/losses.py [--datasets demo,ml-100k] [--losses bce,inbatch,...]
                                     [--models idsr,content] [--set k=v ...] [--seeds 2020,1,2] [--home DIR]

Only the loss changes between rows (`--set optim.loss=NAME`); everything else is the profile's:
  demo     configs/demo-cpu.toml: IDSR (`model.kind=idsr`) and MMSR (MiniLM + DINOv2-S, gate);
  ml-100k  configs/movielens-idsr.toml and configs/movielens-mmsrt.toml (text only: MovieLens
           has no pictures), RecBole's split and selection protocol.
A loss runs with the default of every loss setting it does not read (`loss_overrides`): the
MovieLens profiles' `negatives="any"` is a BCE/BPR setting, and `own_items` (the demo profile's
`all-masked`, MovieLens IDSR's `later-masked`) and `label_smoothing` (both MovieLens profiles set it)
are the softmax losses'. A combination the
config refuses (full softmax for a content model) is reported with its error, not skipped.

Each run is evaluated on test, cold (the paper's: targets seen < 10 times in training) and new
(test targets never seen in training), under the paper's protocol (history masked); MovieLens
test also under RecBole's (history not masked), comparable with docs/compare.md. The checkpoint
is the trainer's choice on validation. Every step is an `mmsr` command in a subprocess. Not a
test: prints one JSON object on its last line, and a markdown table per dataset on stderr.
Everything at once takes hours on 2 CPU cores (an in-batch MovieLens IDSR run trains 40-90
epochs of 4-15 s; MMSR-T's token tower ~35 s an epoch, `--set model.fusion=pool+dnn` ~4 s);
choose with --datasets / --models / --losses.

--seeds runs every row once per seed and adds a row of means ± standard deviations: on
MovieLens-100K the seed alone spreads IDSR's test HR@10 with a standard deviation of 0.0075
(eight seeds, docs/compare.md), more than most settings move it, so settings are compared over
seeds. The runs stay in --home, named
bench-losses-DATASET-MODEL-LOSS-seedN, for `mmsr compare A1,A2,A3 B1,B2,B3` (case by case).
`bench/seed_means.py --add LOG=LABEL` pools the runs of one setting, from one home or several,
with the MovieLens configs' per-seed figures (docs/movielens-seeds.csv) and gives their ratio.
An interrupted bench, rerun with the same arguments and --resume, continues each run from its
last checkpoint instead of starting it again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import MMSR, find_source, sh, train_and_evaluate  # noqa: E402  (bench/, next to this file)

LOSSES = ("bce", "bpr", "inbatch", "inbatch-logq", "mixed", "softmax")
PROFILES = {
    "demo": {"idsr": ("configs/demo-cpu.toml", ["model.kind=idsr"]), "content": ("configs/demo-cpu.toml", [])},
    "ml-100k": {"idsr": ("configs/movielens-idsr.toml", []), "content": ("configs/movielens-mmsrt.toml", [])},
}
SPLITS = {"demo": [("test", "paper"), ("cold", "paper"), ("cold-test", "paper"), ("new", "paper")],
          "ml-100k": [("test", "recbole"), ("test", "paper"), ("cold", "paper"), ("cold-test", "paper"),
                      ("new", "paper")]}


def prepare(dataset: str, env: dict, home: Path, source: str | None, log) -> dict:
    if dataset == "demo":
        sh(MMSR + ["data", "demo", "--name", "demo"], env, log)
    else:
        sh(MMSR + ["data", "import", "recbole", "--name", "ml-100k", str(find_source(home, source, env, log)),
                   "--overwrite"], env, log)
    _, _, info = sh(MMSR + ["data", "info", dataset, "--json"], env, log)
    return json.loads(info.strip().splitlines()[-1])


def loss_overrides(dataset: str, model: str, loss: str, sets: list[str], seed: int | None = None) -> tuple[str, list[str]]:
    """(the profile's config, the overrides of one row): the profile's, the loss, the --sets, the
    defaults of the profile's loss settings this loss does not read, and the seed."""
    from mmsr.train.config import LOSS_SETTINGS, OptimConfig
    from mmsr.train.losses import LOSSES as REGISTRY

    config, profile_sets = PROFILES[dataset][model]
    overrides = profile_sets + [f"optim.loss={loss}"] + list(sets)
    # A profile may set a loss setting for its own loss; a loss that does not read it runs with
    # its default rather than be refused for it.
    overrides += [f"optim.{key}={getattr(OptimConfig, key)}" for key in LOSS_SETTINGS
                  if key not in REGISTRY.params(loss)]
    if seed is not None:  # after the --sets, so that it wins over a seed=... among them
        overrides.append(f"seed={seed}")
    return config, overrides


def run_one(dataset: str, model: str, loss: str, sets: list[str], env: dict, home: Path, log,
            seed: int | None = None, resume: bool = False) -> dict:
    config, overrides = loss_overrides(dataset, model, loss, sets, seed)
    run = f"bench-losses-{dataset}-{model}-{loss}" + (f"-seed{seed}" if seed is not None else "")
    if model == "content":  # reuses a finished cache: only the first loss builds it
        # A --set of the encoders (encoders.text_top_blocks=1: one block fewer cached) asks for
        # another cache than the profile's; the rest of the run's --set leave it as it is.
        encoder_sets = [arg for item in overrides if item.startswith("encoders.") for arg in ("--set", item)]
        try:
            sh(MMSR + ["cache", "build", "--config", config] + encoder_sets, env, log)
        except RuntimeError as error:
            return {"config": config, "overrides": overrides, "error": str(error).splitlines()[-1]}
    return train_and_evaluate(run, config, overrides, SPLITS[dataset], env, home, log, resume=resume)


def seed_summary(runs: list[dict]) -> dict:
    """Means and sample standard deviations over the runs of one row: each split's (and the
    validation's) HR@10 / NDCG@10, as "HR@10" / "HR@10_sd"; runs that failed are counted apart."""
    done = [r for r in runs if "error" not in r]
    if not done:
        return {"error": runs[0]["error"] if runs else "no runs", "seeds": 0}
    out: dict = {"seeds": len(done), "failed": len(runs) - len(done)}
    for part in [k for k, v in done[0].items() if isinstance(v, dict) and "NDCG@10" in v]:
        out[part] = {}
        for metric in ("HR@10", "NDCG@10"):
            values = [r[part][metric] for r in done]
            out[part][metric] = round(statistics.fmean(values), 4)
            out[part][f"{metric}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return out


def _cell(figures: dict) -> str:
    if "HR@10_sd" in figures:
        return (f"{figures['HR@10']:.4f} ± {figures['HR@10_sd']:.4f} / "
                f"{figures['NDCG@10']:.4f} ± {figures['NDCG@10_sd']:.4f}")
    return f"{figures['HR@10']:.4f} / {figures['NDCG@10']:.4f}"


def table(dataset: str, rows: dict) -> str:
    columns = [f"{split} ({protocol})" for split, protocol in SPLITS[dataset]]
    lines = [f"### {dataset}", "", "| model | loss | valid HR@10 / NDCG@10 | "
             + " | ".join(f"{c} HR@10 / NDCG@10" for c in columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for (model, loss), r in rows.items():
        if "error" in r:
            cells = [f"no result: {r['error']}"] + [""] * len(columns)
        else:
            parts = ["valid"] + [f"{s}_{p}" for s, p in SPLITS[dataset]]
            cells = [_cell(r[part]) if part in r else "" for part in parts]
        lines.append(f"| {model} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="demo,ml-100k")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--models", default="idsr,content", help="idsr and/or content (MMSR; MMSR-T on ml-100k)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="an override for every run")
    parser.add_argument("--source", help="folder with ml-100k.inter / ml-100k.item (default: the recbole wheel)")
    parser.add_argument("--seeds", help="run every row once per seed (comma-separated, e.g. 2020,1,2) and add "
                        "their mean ± standard deviation (default: the profile's seed, once)")
    parser.add_argument("--home", default=os.environ.get("MMSR_HOME") or None)
    parser.add_argument("--resume", action="store_true",
                        help="continue each run of --home where it stopped (rerun an interrupted bench with the same "
                        "arguments and this flag); finished runs are evaluated again, not retrained. Default: every "
                        "run starts afresh")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else [None]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas, e.g. 2020,1,2; got {args.seeds!r}")
    home = Path(args.home or tempfile.mkdtemp(prefix="mmsr-bench-losses-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MMSR_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MMSR_NO_PROGRESS="1")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = {"bench": "losses", "home": str(home), "cpus": os.cpu_count(), "datasets": {}}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        info = prepare(dataset, env, home, args.source, log)
        rows = {}
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for loss in [name.strip() for name in args.losses.split(",") if name.strip()]:
                runs = []
                for seed in seeds:
                    runs.append(run_one(dataset, model, loss, args.sets, env, home, log, seed=seed,
                                        resume=args.resume))
                    label = loss if seed is None else f"{loss}, seed {seed}"
                    rows[(model, label)] = runs[-1]
                    log(json.dumps({"dataset": dataset, "model": model, "loss": loss, "seed": seed, **runs[-1]}))
                if len(seeds) > 1:
                    rows[(model, f"{loss}, mean ± sd of {len(seeds)} seeds")] = seed_summary(runs)
        log(table(dataset, rows))
        result["datasets"][dataset] = {
            "info": {k: info.get(k) for k in ("users", "items", "interactions", "cold_items", "new_test_cases")},
            "runs": {f"{model}/{loss}": r for (model, loss), r in rows.items()}, "table": table(dataset, rows)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
