"""Running a study: every variant x dataset x seed, resumably, into `$MMSR_HOME/studies/NAME/`.

    studies/NAME/
      study.toml                 the study file as it was run (what `mmsr study report` re-reads)
      origin.json                the study's name, file and command, for the report
      configs/RUN.json           each run's resolved config, as handed to the trainer
      runs/VARIANT--DATASET--seedS/
        config.json ...          an ordinary run directory (`mmsr eval --run` works on it)
        study.json               written last, when the run is trained and evaluated: the
                                 marker that makes a rerun skip it (a split or protocol the
                                 study gained since is evaluated without training)
      results.csv, report.md     re-rendered after every finished run (`mmsr.study.report`)

A rerun of the same command skips finished runs, resumes the interrupted one from its
checkpoint, and trains the rest. A run (finished or not) whose variant changed since, or whose
transfer source did, is refused before anything trains, not silently reused or retrained.
Variants whose encoder settings match share one cache, built once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmsr import config as config_lib
from mmsr import paths
from mmsr.atomic import atomic_write_text
from mmsr.cache_stage import CacheBuildConfig, build_from_config
from mmsr.caches import cache_path
from mmsr.data.dataset import load_dataset
from mmsr.data.demo import create_demo
from mmsr.errors import MMSRError
from mmsr.eval.runner import evaluate_splits
from mmsr.progress import ProgressFactory, no_progress
from mmsr.study.layout import (ORIGIN_FILE, RESULT_FILE, STUDY_FILE, make_study_dir, read_origin, read_result,
                               study_command, study_dir)
from mmsr.study.report import write_report
from mmsr.study.spec import Study, Variant, load_study
from mmsr.train.config import TrainConfig
from mmsr.train.interrupt import TrainingInterrupted
from mmsr.train.kinds import ID_ONLY_KINDS
from mmsr.train.layout import METRICS_FILE, checkpoint_dir, checkpoint_file
from mmsr.train.metrics_file import read_records
from mmsr.train.recipe import TrainingDiverged, train
from mmsr.train.run import config_as_json, prepare_run, run_config, save_config


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    dataset: str
    seed: int
    root: Path
    config: TrainConfig

    @property
    def name(self) -> str:
        return self.root.name

    def finished(self) -> bool:
        return (self.root / RESULT_FILE).is_file()

    def state(self) -> str:
        if self.finished():
            return "done"
        return "partial" if checkpoint_dir(self.root).is_dir() else "todo"


def run_name(variant: str, dataset: str, seed: int) -> str:
    return f"{variant}--{Path(dataset).name}--seed{seed}"


def plan_study(study: Study, out: Path, *, datasets: list[str] | None = None, seeds: list[int] | None = None,
               only: list[str] | None = None, sets: list[str] | None = None) -> list[PlannedRun]:
    """The runs of a study, sources before the variants that start from them.

    `datasets` replaces the study's (not a variant's own `dataset`); `seeds` repeats every
    variant (default: the config's seed); `only` keeps those variants and what they start from.
    """
    if any(key == "dataset" for key in config_lib.parse_overrides(sets)):  # the study's dataset is set after the --set's
        raise MMSRError("--set dataset=... would be ignored: a study's datasets are study.datasets, a variant's "
                        "dataset key, or --dataset", where="--set", hint="use --dataset NAME[,NAME...]")
    wanted = _with_sources(study, only) if only else {v.name for v in study.variants}
    planned: dict[tuple[str, str, int], PlannedRun] = {}
    for variant in _sources_first(study):
        if variant.name not in wanted:
            continue
        for dataset in ((variant.dataset,) if variant.dataset else tuple(datasets or study.datasets)):
            for seed in seeds or [None]:
                config = study.resolve(variant, dataset, seed, sets)
                if variant.init_from:
                    source = _source_run(study, planned, variant, config.seed)
                    config = study.resolve(variant, dataset, seed, [*(sets or []), f"init_from={source.root}"])
                root = out / "runs" / run_name(variant.name, dataset, config.seed)
                _refuse_shared_folder(planned.values(), root, dataset, out)
                planned[(variant.name, dataset, config.seed)] = PlannedRun(variant, dataset, config.seed, root, config)
    return list(planned.values())


def _refuse_shared_folder(planned, root: Path, dataset: str, out: Path) -> None:
    """Two datasets of one folder name (`demo` and `/elsewhere/demo`) would share their runs'
    directories: the second would take the first's finished runs as its own. `study run` plans
    the runs already in the directory too, so a later run with the other dataset is refused."""
    other = next((run.dataset for run in planned if run.root == root and run.dataset != dataset), None)
    if other is not None:
        raise MMSRError(f"datasets {other!r} and {dataset!r} have one name, {Path(dataset).name!r}: their runs "
                        f"would share the directory {root.name}", where=out / "runs",
                        hint="give one of them another name (e.g. `mmsr data import ... --name NAME`), or run "
                             "the study on it with --out ANOTHER")


def _with_sources(study: Study, only: list[str]) -> set[str]:
    names = set()
    for name in only:
        variant = study.variant(name)  # an unknown name is an error listing the known ones
        while variant is not None:
            names.add(variant.name)
            variant = study.variant(variant.init_from) if variant.init_from else None
    return names


def _sources_first(study: Study) -> list[Variant]:
    ordered: list[Variant] = []

    def visit(variant: Variant) -> None:
        if variant in ordered:
            return
        if variant.init_from:
            visit(study.variant(variant.init_from))
        ordered.append(variant)

    for variant in study.variants:
        visit(variant)
    return ordered


def _source_run(study: Study, planned: dict, variant: Variant, seed: int) -> PlannedRun:
    sources = [run for (name, _, run_seed), run in planned.items() if name == variant.init_from and run_seed == seed]
    if len(sources) != 1:
        raise MMSRError(f"variant {variant.name!r} starts from {variant.init_from!r}, which has "
                        f"{len(sources)} runs for seed {seed}", where=study.path,
                        hint="a source needs exactly one run per seed: give it one dataset (its `dataset` key) "
                             "and no seed of its own (the seed comes from the base config or --seeds)")
    return sources[0]


# ----------------------------------------------------------------------------- running


Log = Callable[[str], None]


def plan_study_file(path: str | Path, *, datasets: list[str] | None = None, seeds: list[int] | None = None,
                    only: list[str] | None = None, sets: list[str] | None = None,
                    out: str | Path | None = None) -> tuple[Study, Path, list[PlannedRun]]:
    """The study at `path`, its directory and the runs a `study run` with these options makes,
    refused as `study run` refuses them when a run already there was made by a variant that has
    changed since: `study plan` must not list as finished what `study run` would not take."""
    study = load_study(path)
    out = study_dir(out or study.name)
    _refuse_other_study(study, out)
    runs = plan_study(study, out, datasets=datasets, seeds=seeds, only=only, sets=sets)
    for dataset in dict.fromkeys(run.dataset for run in runs):  # before `study run` writes anything
        _dataset_or_recipe(study, dataset)
    _refuse_changed(study, out, runs, sets)
    return study, out, runs


def run_study(path: str | Path, *, datasets: list[str] | None = None, seeds: list[int] | None = None,
              only: list[str] | None = None, sets: list[str] | None = None, out: str | Path | None = None,
              progress: ProgressFactory = no_progress, log: Log = print) -> Path:
    """Train and evaluate every unfinished run of the study at `path`; returns the study directory."""
    study, out, runs = plan_study_file(path, datasets=datasets, seeds=seeds, only=only, sets=sets, out=out)
    # The report covers every finished run, so its command is the study's, not this --only
    # subset; the report names the variants it shows (`report._only`).
    command = study_command(study, out, datasets, seeds, sets)
    make_study_dir(out)
    atomic_write_text(out / STUDY_FILE, study.path.read_text(encoding="utf-8"))
    atomic_write_text(out / ORIGIN_FILE, json.dumps({"name": study.name, "file": str(study.path),
                                                     "command": command}) + "\n")
    todo = [run for run in runs if not run.finished()]
    unevaluated = [run for run in runs if run.finished()
                   and _missing_evaluations(study, read_result(run.root)["evaluations"])]
    log(f"study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished already, {len(todo)} to train "
        f"-> {out}")
    for run in unevaluated:  # the study's splits or protocol changed since: evaluate, do not train
        _evaluate(study, run, read_result(run.root), log)
    with progress(f"study {study.name}", len(todo), unit="runs") as advance:
        built: set[Path] = set()
        for run in todo:
            _ensure_dataset(study, run.dataset, progress, log)
            if study.from_cache:
                _ensure_cache(run.config, built, progress, log)
            # Stopped or diverged, the run's hint names `mmsr train`, which leaves the study behind.
            again = command + (f" --only {','.join(only)}" if only else "")
            try:
                _train_and_evaluate(study, run, progress, log)
            except TrainingInterrupted as stop:
                stop.hint = f"rerun `{again}`: the study goes on from this run's checkpoint"
                raise
            except TrainingDiverged as diverged:
                diverged.hint = f"{_lower_lr(study, run, sets)}, delete {run.root}, and rerun `{again}`"
                raise
            write_report(out, study, command, log=log)
            advance(1)
    write_report(out, study, command, figures=True, log=log)
    return out


def _lower_lr(study: Study, run: PlannedRun, sets: list[str] | None) -> str:
    """Where a diverged run's learning rate is to be lowered: a --set overrides the variant's."""
    given = next((item for item in reversed(sets or []) if item.replace(" ", "").startswith("optim.lr=")), None)
    where = f"in the `--set {given}` given" if given else f"of variant {run.variant.name!r} in {study.path}"
    return f"lower optim.lr {where} (or keep optim.grad_clip > 0)"


def _refuse_other_study(study: Study, out: Path) -> None:
    """A study directory made by another study file that still exists (`--out` naming a folder
    in use): running this one there replaced its study.toml and origin.json without a word, and
    the other's runs left the report. The same file edited, or moved, goes on."""
    made_by = read_origin(out).get("file")
    same_text = (out / STUDY_FILE).is_file() and (out / STUDY_FILE).read_bytes() == study.path.read_bytes()
    if made_by and Path(made_by) != study.path and Path(made_by).is_file() and not same_text:
        raise MMSRError(f"holds the runs of another study file, {made_by}", where=out,
                        hint="give this study a directory of its own with --out NAME (or, if this file replaces "
                             f"that one, delete {Path(made_by).name} or {out / ORIGIN_FILE})")


def _refuse_changed(study: Study, out: Path, runs: list[PlannedRun], sets: list[str] | None) -> None:
    """Refuse to go on while any run in the study directory (finished or not, planned now or not)
    was made by a variant that has changed since, or started from such a run."""
    existing = [config.parent for config in (out / "runs").glob("*/config.json")]
    if not existing:
        return
    # What every existing run would be now, with the datasets and seeds it was made with.
    saved = {root: _saved_config(root) for root in existing}
    seen_datasets = sorted({c["dataset"] for c in saved.values()} | {r.dataset for r in runs})
    seen_seeds = sorted({c["seed"] for c in saved.values()} | {r.seed for r in runs})
    expected = {run.root: run for run in plan_study(study, out, datasets=seen_datasets, seeds=seen_seeds, sets=sets)}
    changed = {root for root, config in saved.items()
               if root in expected and config != config_as_json(expected[root].config)}
    for root in list(saved):  # a run started from a changed source is stale too
        if saved[root].get("init_from") and Path(saved[root]["init_from"]) in changed:
            changed.add(root)
    if changed:
        names = ", ".join(sorted(root.name for root in changed))
        raise MMSRError(f"runs whose variant (or transfer source) changed since they ran: {names}",
                        where=out / "runs", hint="delete those run directories to train them again, or run the "
                                                 "changed study under another name with --out NAME")


def _saved_config(root: Path) -> dict:
    return config_as_json(run_config(root))  # rebuilt: a config field added since holds its default


def _dataset_or_recipe(study: Study, dataset: str) -> dict | None:
    """None when `dataset` exists, else the study's recipe that makes it; refused when neither."""
    if (paths.dataset_dir(dataset) / "meta.json").is_file():
        return None
    recipe = study.data.get(dataset)
    if recipe is None:
        raise MMSRError(f"dataset {dataset!r} not found", where=paths.dataset_dir(dataset),
                        hint="create it with `mmsr data demo` or `mmsr data import`, or give the study a "
                             "[data] recipe for it")
    return recipe


def _ensure_dataset(study: Study, dataset: str, progress: ProgressFactory, log: Log) -> None:
    recipe = _dataset_or_recipe(study, dataset)
    if recipe is None:
        return
    log(f"making dataset {dataset} (study recipe: demo {recipe['demo']})")
    create_demo(dataset, **recipe["demo"], progress=progress)


def _ensure_cache(config: TrainConfig, built: set[Path], progress: ProgressFactory, log: Log) -> None:
    """Build (or finish) the cache this config's encoders read, once per process and path."""
    if not config.encoders.modalities or config.model.kind in ID_ONLY_KINDS:
        return
    dataset = load_dataset(config.dataset, check_images=False)
    path = cache_path(dataset, config.encoders)
    if path in built:
        return
    # Batch, workers, device and chunk size: the cache command's defaults.
    build = CacheBuildConfig(dataset=config.dataset, encoders=config.encoders, on_bad_image=config.on_bad_image,
                             seed=config.seed)
    report = build_from_config(build, dataset=dataset, progress=progress)
    encoded = sum(r.encoded_items for r in report.modalities.values())
    log(f"cache {path.name}: " + (f"encoded {encoded} items" if encoded else "complete already, reused"))
    built.add(path)


def _train_and_evaluate(study: Study, run: PlannedRun, progress: ProgressFactory, log: Log) -> None:
    config_file = run.root.parent.parent / "configs" / f"{run.name}.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    save_config(config_file, run.config)
    resumed = checkpoint_file(run.root, "last").is_file()
    log(f"[bold]{run.name}[/bold]: " + ("resuming from its checkpoint" if resumed else "training"))
    # resume: continues from last.pt, or restarts in place a run killed before its first checkpoint.
    prepared = prepare_run(run.root, config_file, resume=run.root.exists(), log=log)
    started = time.perf_counter()
    best = train(prepared.config, prepared.root, from_cache=study.from_cache, resume=prepared.resume,
                 progress=progress, log=log)
    records = read_records(run.root / METRICS_FILE)
    summary = {"variant": run.variant.name, "dataset": run.dataset, "seed": run.seed,
               "best_epoch": best.get("epoch"), "epochs_run": len(records),
               "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in records), 1),
               "wall_seconds_last_session": round(time.perf_counter() - started, 1), "evaluations": {}}
    _evaluate(study, run, summary, log)


def _missing_evaluations(study: Study, done: dict) -> list[str]:
    """The study's splits that `done` (a run's "evaluations") lacks under the study's protocol."""
    return [split for split in study.splits if done.get(split, {}).get("protocol") != study.protocol]


def _evaluate(study: Study, run: PlannedRun, summary: dict, log: Log) -> None:
    """Evaluate the splits `summary` lacks under the study's protocol; then write it, last."""
    missing = _missing_evaluations(study, summary["evaluations"])
    if missing:  # one model load and one item-tower pass for all of them
        results = evaluate_splits(run.root, missing, ks=sorted({*study.ks, 10, 20, 50}), protocol=study.protocol,
                                  device=run.config.device)
        for split, result in results.items():
            summary["evaluations"][split] = {"cases": result["users"], "metrics": result["metrics"],
                                             "protocol": study.protocol, "batch_size": result["batch_size"]}
    atomic_write_text(run.root / RESULT_FILE, json.dumps(summary, indent=2) + "\n")
    evaluations = summary["evaluations"]
    log(f"{run.name}: best epoch {summary['best_epoch']}, "
        + ", ".join(f"{split} " + " ".join(f"{m} {evaluations[split]['metrics'][m]:.4f}" for m in study.metrics)
                    for split in study.splits))


