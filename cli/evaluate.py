"""`mmsr eval` and `mmsr recommend`: exact full ranking with FAISS over every item."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from mmsr_cli.common import is_rank_zero, print_json


def evaluate(
    run: str = typer.Option(..., "--run", "--run-dir", help="Run name or directory (from `mmsr train`; "
                            "--run-dir under torchrun)."),
    faiss: bool = typer.Option(True, "--faiss/--no-faiss", help="Exact FAISS IndexFlatIP search (the only backend; "
                               "GPU index when CUDA and faiss-gpu are present)."),
    split: str = typer.Option("test", "--split", help="test | valid | cold (sub-sequences ending in a cold item)."),
    k: str = typer.Option("10,20,50", "--k", help="Cut-offs for HR@K and NDCG@K."),
    protocol: str = typer.Option("paper", "--protocol", help="paper: mask the user's history items; "
                                 "recbole: no masking (RecBole's full ranking)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    batch_size: int = typer.Option(512, "--batch-size", help="Items/users per batch: bounds memory."),
    device: str = typer.Option("auto", "--device", help="Where the model runs: auto | cpu | cuda."),
    search_device: str = typer.Option("auto", "--search-device", help="FAISS index: auto (GPU when faiss-gpu "
                                      "and CUDA are present) | cpu | gpu."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Full-ranking HR@K / NDCG@K on a split; also written to RUN/eval_<split>.json."""
    from mmsr.distributed import init_from_env
    from mmsr.errors import MMSRError
    from mmsr.eval.metrics import parse_ks
    from mmsr.eval.runner import evaluate as run_eval
    from mmsr.train.run import load_run

    if protocol not in ("paper", "recbole"):
        raise MMSRError(f"unknown protocol {protocol!r}", where="--protocol", hint="use paper or recbole")
    if not faiss:
        raise MMSRError("only FAISS exact search is implemented", where="--no-faiss")
    ks = parse_ks(k)
    loaded = load_run(run, checkpoint, device)
    dist = init_from_env(loaded.device)
    result = run_eval(loaded.model, loaded.feed, loaded.split, split, ks=ks, mask_history=protocol == "paper",
                      batch_size=batch_size, device=loaded.device, rank=dist.rank, world=dist.world,
                      search_device=search_device)
    result["run"] = str(loaded.root)
    result["checkpoint"] = loaded.info["checkpoint"]
    if not is_rank_zero():
        return
    (loaded.root / f"eval_{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{split} split: {result['users']:,} cases, {result['items']:,} items, {result['protocol']}",
                  caption=result["search"])
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def recommend(
    run: str = typer.Option(..., "--run", help="Run name or directory."),
    history: str = typer.Option(..., "--history", help="Comma-separated item ids, oldest first."),
    k: int = typer.Option(10, "-k", "--k", help="How many items to return."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last"),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Top-k items for a history (history items excluded). Cold items are rankable too."""
    import numpy as np

    from mmsr.errors import MMSRError
    from mmsr.eval.runner import item_matrix, user_matrix
    from mmsr.eval.search import recommend as search
    from mmsr.train.run import load_run

    loaded = load_run(run, checkpoint)
    ids = [part.strip() for part in history.split(",") if part.strip()]
    if not ids:
        raise MMSRError("empty history", where="--history", hint="e.g. --history i00012,i00345")
    unknown = [item for item in ids if item not in loaded.dataset.item_index]
    if unknown:
        raise MMSRError(f"unknown item {unknown[0]!r}", where="--history",
                        hint=f"item ids come from {loaded.dataset.root / 'items.jsonl'}")
    seq = np.asarray([loaded.dataset.item_index[item] for item in ids], dtype=np.int64)
    items = item_matrix(loaded.model, loaded.feed, loaded.dataset.num_items, 512, loaded.device)
    user = user_matrix(loaded.model, items, [seq], loaded.config.split.max_seq_len, 1, loaded.device)
    top, scores = search(items.numpy(), user.numpy()[0], k=k, exclude=seq.tolist())
    cold = loaded.split.cold_items
    rows = [{"item": loaded.dataset.items[i]["id"], "title": loaded.dataset.items[i].get("title", ""),
             "score": float(s), "cold": bool(cold[i])} for i, s in zip(top.tolist(), scores.tolist()) if i >= 0]
    if json_out:
        print_json({"history": ids, "k": k, "items": rows})
        return
    table = Table(title=f"top {k} for a history of {len(ids)} items")
    for column in ("rank", "item", "title", "score", "cold"):
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        table.add_row(str(rank), row["item"], row["title"], f"{row['score']:.4f}", "yes" if row["cold"] else "")
    Console().print(table)
