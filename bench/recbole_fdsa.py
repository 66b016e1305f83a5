"""Reference figure: RecBole 1.2.1's own FDSA on MovieLens-100K, under RecBole's protocol.

    python bench/recbole_fdsa.py --venv /tmp/rbvenv --out /tmp/rbfdsa [--features class,movie_title]
                                 [--epochs 300] [--stopping-step 10] [--max-minutes 30]
                                 [--from-checkpoint /tmp/rbfdsa/saved/FDSA-....pth]
                                 [--resume /tmp/rbfdsa/saved/FDSA-....pth]

RecBole is NOT a project dependency: --venv names a throw-away venv holding recbole==1.2.1 (installed
with --no-deps) plus what its imports need (pandas, scipy, scikit-learn, colorlog==4.7.2,
colorama==0.4.4, texttable, tensorboard, tabulate, psutil) and a torch it can import (e.g. a .pth
file pointing at the project's .venv site-packages). This script re-executes itself with that venv's
python. The ml-100k atomic files are the ones inside the recbole wheel (dataset_example/ml-100k).

Protocol = what RecBole's run_recbole applies to FDSA on ml-100k: overall.yaml + model/FDSA.yaml +
dataset/ml-100k.yaml + quick_start_config/sequential.yaml (leave-one-out by time: split LS
valid_and_test, order TO, full ranking, repeatable) + special_sequential_on_ml-100k.yaml (item
load_col). Overridden here: load_col item = item_id + the selected features, metrics Hit/NDCG at
10 and 20, valid_metric NDCG@10, train_neg_sample_args None (FDSA's CE loss requires it), CPU only.

Workarounds for the present stack (no RecBole file is edited):
  * numpy 2 removed np.float_/np.complex_/np.unicode_, which RecBole's Config.compatibility_settings
    reads to re-create np.float/np.int/np.long...: the aliases are put back before recbole imports;
  * RecBole's sine.py turns autograd anomaly detection on globally when the model package is
    imported (a NaN check after every op: same numbers, ~40% more CPU time); it is turned off again;
  * torch >= 2.6 loads checkpoints with weights_only=True, and RecBole's checkpoint holds its Config:
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set;
  * pandas 3 (copy-on-write) breaks RecBole's token_seq remapping: the venv needs pandas<3
    (pandas==2.2.3 used with numpy 2.4).

Per-case ranks: <out>/ranks_test.csv holds, for every test user, RecBole's user token, the target
item's token and its rank over every item (1 + the number of items scoring strictly higher, item 0,
RecBole's padding, excluded; nothing else masked, as RecBole's full ranking of a sequential model).
`mmsr compare RUN <out>/ranks_test.csv --protocol recbole` pairs it case by case with an mmsr run on
the same split. --from-checkpoint re-tests a saved model (<out>/saved/*.pth) without training.

--resume continues a run that a time bound stopped, from its best checkpoint, with RecBole's own
Trainer.resume_checkpoint (weights, Adam's state, the epoch, the best validation score and the
patience counter, which is 0 at a best checkpoint). The checkpoint is copied into <out>/saved first
and the copy is the one updated, so the stopped run's files stay as they were (--out must be a new
folder). The continuation is the stopped run's state after its best epoch, not an uninterrupted
run: the epochs it had run past its best are run again, and the shuffles and dropout masks restart
from the seed (the loaders' generators and torch's are seeded when they are built, so the first
resumed epoch draws what epoch 1 drew), not those an uninterrupted run would have drawn. The
checkpoint must be an FDSA checkpoint of this script whose settings (every one result.json reports
but epochs, stopping_step and eval_batch_size) are this run's. result.json's best_epoch and
epochs_run count from the first run's epoch 1, train_epoch_s_mean only this run's epochs;
"resumed_from" names the checkpoint, its epoch and the copy that holds the continuation's best.

--max-minutes stops training after an epoch when one more epoch (at the mean pace so far) would pass
the wall-clock bound (counted from the start of this process's training, so a resumed run gets a
bound of its own); the best checkpoint (by validation NDCG@10) is then tested as usual.
Prints one JSON object on its last line. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


CONFIG_KEYS = ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
               "hidden_act", "layer_norm_eps", "initializer_range", "pooling_mode", "loss_type",
               "MAX_ITEM_LIST_LENGTH", "train_batch_size", "eval_batch_size", "learner", "learning_rate",
               "weight_decay", "epochs", "stopping_step", "eval_step", "train_neg_sample_args", "eval_args",
               "repeatable", "valid_metric", "seed", "user_inter_num_interval", "item_inter_num_interval",
               "rm_dup_inter", "load_col", "selected_features")
# what a continuation may change: how long it may run and how it batches evaluation
RESUME_MAY_DIFFER = ("epochs", "stopping_step", "eval_batch_size")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _absolute(path: str) -> str:
    """A path as the caller meant it: inner() later changes the working directory for RecBole."""
    return str(Path(path).resolve())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, help="throw-away venv with recbole==1.2.1")
    p.add_argument("--out", required=True, help="folder for RecBole's log, checkpoint and result.json")
    p.add_argument("--features", default="class,movie_title",
                   help="ml-100k.item token_seq fields for FDSA's selected_features (comma-separated)")
    p.add_argument("--epochs", type=int, default=300, help="RecBole default: 300")
    p.add_argument("--stopping-step", type=int, default=10, help="RecBole default: 10")
    p.add_argument("--max-minutes", type=float, default=30.0, help="wall-clock bound on training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RecBole setting (value parsed as YAML), e.g. --set train_batch_size=1024")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--from-checkpoint", default=None, type=_absolute,
                   help="RecBole checkpoint (.pth) to test and rank with, instead of training")
    p.add_argument("--resume", default=None, type=_absolute,
                   help="RecBole checkpoint (.pth) of a run stopped by --max-minutes: train on from it "
                        "(copied into <out>/saved; the original is not touched)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def outer(args: argparse.Namespace) -> int:
    python = Path(args.venv) / "bin" / "python"
    if not python.exists():
        sys.exit(f"no python in {args.venv}")
    if args.resume and args.from_checkpoint:
        sys.exit("--resume trains on from a checkpoint, --from-checkpoint only tests one: give one of them")
    for flag, path in (("--resume", args.resume), ("--from-checkpoint", args.from_checkpoint)):
        if path and not Path(path).is_file():
            sys.exit(f"{flag}: no checkpoint file at {path} (RecBole saves them as <out>/saved/FDSA-*.pth)")
    if args.resume:
        # a continuation writes its copy, result.json and ranks into --out: another run's would be lost,
        # and resuming the --out's own checkpoint would copy it onto itself
        held = [p for p in (Path(args.out) / "result.json", Path(args.out) / "saved" / Path(args.resume).name)
                if p.exists()]
        if held:
            sys.exit(f"--resume: {args.out} already holds a run ({held[0]}); give --out a new folder, so that "
                     "run's checkpoint, result.json and ranks stay as they were")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.setdefault("MKL_NUM_THREADS", str(args.threads))
    return subprocess.call([str(python), str(Path(__file__).resolve()), *sys.argv[1:], "--inner"], env=env)


def inner(args: argparse.Namespace) -> None:
    import numpy as np

    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)

    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed
    import recbole

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    features = [f for f in args.features.split(",") if f]
    overrides = {
        "use_gpu": False,
        "gpu_id": "",
        "checkpoint_dir": str(out / "saved"),
        "show_progress": False,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", *features]},
        "selected_features": features,
        "train_neg_sample_args": None,
        "metrics": ["Hit", "NDCG"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
    }
    import yaml

    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    os.chdir(out)  # RecBole writes log/ and log_tensorboard/ under the working directory
    config = Config(model="FDSA", dataset="ml-100k", config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    # importing recbole.model.sequential_recommender runs sine.py's module-level
    # torch.autograd.set_detect_anomaly(True), for every model: a NaN check after every op, which
    # changes no number but costs ~40% of FDSA's CPU time. Switched back off.
    anomaly_was_on = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(False)
    used = list(model.feature_embed_layer.token_seq_field_names["item"]) + \
        list(model.feature_embed_layer.token_field_names["item"]) + \
        list(model.feature_embed_layer.float_field_names["item"])
    vocab = {f: int(dataset.num(f)) for f in used}
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    state = {"epochs_run": 0, "best_epoch": None, "epoch_s": []}
    if args.resume:
        state.update(resume(trainer, config, Path(args.resume), out / "saved"))
    started = time.perf_counter()
    train_epoch, save = trainer._train_epoch, trainer._save_checkpoint

    def timed_train_epoch(train_data, epoch_idx, *a, **k):
        t0 = time.perf_counter()
        loss = train_epoch(train_data, epoch_idx, *a, **k)
        state["epoch_s"].append(time.perf_counter() - t0)
        state["epochs_run"] = epoch_idx + 1
        return loss

    class TimeBound(Exception):
        pass

    def callback(epoch_idx, valid_score):  # runs after the epoch's validation and checkpointing
        elapsed = time.perf_counter() - started
        next_epoch = elapsed / (epoch_idx + 1 - trainer.start_epoch)  # train + validation, per epoch so far
        if elapsed + next_epoch > args.max_minutes * 60 and epoch_idx + 1 < config["epochs"]:
            state["time_bound_hit"] = True
            raise TimeBound

    def tracked_save(epoch, *a, **k):
        if epoch >= 0:
            state["best_epoch"] = epoch + 1  # 1-based
        return save(epoch, *a, **k)

    trainer._train_epoch, trainer._save_checkpoint = timed_train_epoch, tracked_save
    if args.from_checkpoint:
        checkpoint = torch.load(args.from_checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        state["best_epoch"] = checkpoint["epoch"] + 1
        best_valid = {}
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    else:
        try:
            trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=callback)
        except TimeBound:
            pass
        best_valid = trainer.best_valid_result
        if best_valid is None:  # resumed, and no epoch beat the checkpoint: its validation, measured again
            best_valid = trainer.evaluate(valid_data, load_best_model=True, show_progress=False)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    train_s = time.perf_counter() - started
    ranks = write_ranks(trainer.model, test_data, dataset, out / "ranks_test.csv")
    seconds = time.perf_counter() - started

    result = {
        "model": "RecBole FDSA",
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "features": used,
        "feature_vocab": vocab,
        "config": {k: config[k] for k in CONFIG_KEYS},
        "dataset": {"users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
                    "train_sequences": int(len(train_data._dataset)),  # every prefix (data augmentation)
                    "valid_users": int(len(valid_data._dataset)), "test_users": int(len(test_data._dataset))},
        "params": int(sum(p.numel() for p in model.parameters())),
        "valid": {k: float(v) for k, v in best_valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        # The ranks file's own figures: equal to "test" up to the order of tied scores, which
        # RecBole's top-k leaves to torch.topk and the file counts in the target's favour.
        "ranks_file": {"path": str(out / "ranks_test.csv"), "cases": int(len(ranks)),
                       **{f"{name}@{k}": float(value) for k in (10, 20)
                          for name, value in (("hit", (ranks <= k).mean()),
                                              ("ndcg", np.where(ranks <= k, 1 / np.log2(ranks + 1), 0).mean()))}},
        "feature_attention": feature_attention(trainer.model, dataset),
        "best_epoch": state["best_epoch"],
        "resumed_from": state.get("resumed_from"),
        "epochs_run": state["epochs_run"],
        "stopped_by": "not trained here (--from-checkpoint)" if args.from_checkpoint else
                      "time bound" if state.get("time_bound_hit") else
                      ("early stopping" if state["epochs_run"] < config["epochs"] else "epochs"),
        "train_epoch_s_mean": round(sum(state["epoch_s"]) / max(1, len(state["epoch_s"])), 2),
        "train_s": round(train_s, 1),
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "anomaly_detection_disabled": anomaly_was_on,
        "cpu": cpu_model(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


def resume(trainer, config, checkpoint: Path, saved: Path) -> dict:
    """Point `trainer` at a copy (in `saved`) of a stopped run's best checkpoint and load it with
    RecBole's Trainer.resume_checkpoint; exits with one line when the checkpoint cannot be trained
    on as this run. Returns the state entries result.json reports."""
    import torch

    copy = saved / checkpoint.name  # outer() refused an --out that already holds it
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(stored, dict) or "config" not in stored or "epoch" not in stored:
        sys.exit(f"--resume {checkpoint}: not a RecBole checkpoint; give a <out>/saved/FDSA-*.pth of this script")
    for key in ("model", "dataset", *(k for k in CONFIG_KEYS if k not in RESUME_MAY_DIFFER)):
        if key not in stored["config"]:
            sys.exit(f"--resume {checkpoint}: not an FDSA checkpoint of this script (it has no {key}); give a "
                     "<out>/saved/FDSA-*.pth of this script")
        if stored["config"][key] != config[key]:
            sys.exit(f"--resume {checkpoint}: the checkpoint's {key} is {stored['config'][key]!r}, this run's "
                     f"{config[key]!r}; resume with the stopped run's settings (--features, --set)")
    if stored["epoch"] + 1 >= config["epochs"]:
        sys.exit(f"--resume {checkpoint}: the checkpoint is at epoch {stored['epoch'] + 1} of {config['epochs']}, "
                 "nothing is left to train; --from-checkpoint tests it")
    saved.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint, copy)
    trainer.resume_checkpoint(copy)  # sets saved_model_file to the copy: improvements land there
    return {"resumed_from": {"checkpoint": str(checkpoint), "epoch": trainer.start_epoch,
                             "best_valid_score": float(trainer.best_valid_score), "copy": str(copy)},
            "best_epoch": trainer.start_epoch, "epochs_run": trainer.start_epoch}


def feature_attention(model, dataset) -> dict:
    """How the trained VanillaAttention weighs each feature column, over every item (RecBole's
    padding item left out): per column, the mean, tenth percentile and median of its weight. With
    one column every weight is 1. `bench/fdsa_feature_weights.py` gives the same for mmsr's runs."""
    import torch

    model.eval()
    layer = model.feature_embed_layer
    # FDSA.forward's order: the token fields, the token-sequence fields, then the float fields
    names = [*layer.token_field_names["item"], *layer.token_seq_field_names["item"], *layer.float_field_names["item"]]
    with torch.no_grad():
        sparse, dense = layer(None, torch.arange(1, dataset.item_num).unsqueeze(0))
        table = torch.cat([t for t in (sparse["item"], dense["item"]) if t is not None], dim=-2)
        _, weights = model.feature_att_layer(table)  # [1, items, columns]
    return column_weights(weights[0], names)


def column_weights(weights, names: list[str]) -> dict:
    """[items, columns] attention weights -> per column name its mean, tenth percentile and median
    over the items: the one summary both tools' reports give (bench/fdsa_feature_weights.py too)."""
    import torch

    quantiles = torch.quantile(weights, torch.tensor([0.1, 0.5]), dim=0)
    return {name: {"mean": round(float(weights[:, i].mean()), 4), "p10": round(float(quantiles[0, i]), 4),
                   "median": round(float(quantiles[1, i]), 4)} for i, name in enumerate(names)}


def write_ranks(model, test_data, dataset, path: Path):
    """Every test case's rank under the model, as `user,item,rank` (RecBole's tokens; see the
    module docstring), written to `path`; returns the ranks."""
    import numpy as np
    import torch

    model.eval()
    users, items, ranks = [], [], []
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test_data:
            scores = model.full_sort_predict(interaction).view(-1, dataset.item_num).clone()
            scores[:, 0] = -float("inf")
            if history_index is not None:  # RecBole masks nothing for sequential models; kept as its trainer does
                scores[history_index] = -float("inf")
            target = scores[positive_u, positive_i]
            ranks.append((1 + (scores[positive_u] > target[:, None]).sum(1)).numpy())
            users.append(interaction[dataset.uid_field][positive_u].numpy())
            items.append(positive_i.numpy())
    users, items, ranks = (np.concatenate(part) for part in (users, items, ranks))
    user_tokens = dataset.id2token(dataset.uid_field, users)
    item_tokens = dataset.id2token(dataset.iid_field, items)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write("user,item,rank\n")
        for user, item, rank in zip(user_tokens, item_tokens, ranks):
            f.write(f"{user},{item},{int(rank)}\n")
    tmp.replace(path)
    return ranks


def main() -> int:
    args = parse()
    if not args.inner:
        return outer(args)
    inner(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
