"""A study file: one table or figure of the paper as data (`configs/paper/*.toml`).

    [study]
    title = "Table III: MMSR with various fusion methods"
    base = "../demo-cpu.toml"            # a training config, relative to this file
    datasets = ["demo"]                  # what `--dataset` replaces
    splits = ["test"]                    # test | valid | cold | new | cold-test
    metrics = ["HR@10", "NDCG@10"]
    protocol = "paper"                   # paper (history masked) | recbole
    set = { "optim.epochs" = 20 }        # overrides for every variant

    [data.demo-src]                      # datasets the study makes when they are missing
    demo = { domain = 1, users = 4000 }  # `mmsr data demo` options

    [[variant]]                          # or a [grid] of rows x columns, see below
    name = "sum"
    label = "Sum"                        # default: the name
    group = "Coarse"                     # a heading the table groups rows under
    set = { "model.fusion" = "sum" }
    config = "../baselines/fdsa.toml"    # start from this training config instead of study.base
    dataset = "demo-tgt"                 # only this dataset (a transfer study's source/target)
    init_from = "source"                 # start from that variant's run (same seed)
    in_table = false                     # trained (e.g. a transfer source) but not a row

    [grid]                               # variants = every row x every column
    rows = { SASRec = { "model.sequence" = "sasrec" } }
    columns = { IDSR = { "model.kind" = "idsr" }, MMSR = {} }

    [table]                              # the paper's layout; see mmsr.study.report
    rows = ["variant"]
    columns = ["dataset", "split", "column", "metric"]   # one not named goes first in columns
    best_within = []                     # extra dimensions held fixed when marking best/second
    improv = { of = "MMSR", over = ["IDSR"], along = "column" }   # of: one label or a list (best of)

    [[figure]]
    kind = "curves"                      # curves | items | users
    variants = ["scratch", "transfer"]
    metric = "HR@10"

Everything is checked when the file is read: unknown keys, a variant overriding a config key
that does not exist (by building its TrainConfig), an `init_from` naming no variant. The
trainer does not know studies exist; a study only resolves configs and calls it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsr import config as config_lib
from mmsr.data.demo import DEFAULT_SIZE as DEMO_SIZE, check_demo_request
from mmsr.data.split import EVAL_SPLITS as SPLITS
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig
from mmsr.train.kinds import ties_to_item_ids

PROTOCOLS = ("paper", "recbole")
DIMENSIONS = ("variant", "column", "dataset", "split", "metric")
FIGURE_KINDS = ("curves", "items", "users")  # mmsr.study.figures.DRAWERS
_METRIC = re.compile(r"^(HR|NDCG)@(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: dict  # nested, like a config file's mapping
    # A training config this variant starts from instead of the study's base (a row that is one
    # of configs/baselines/ or configs/vlp/ names that file rather than repeating its settings).
    config: Path | None = None
    column: str = ""
    group: str = ""
    dataset: str = ""
    init_from: str = ""
    in_table: bool = True


@dataclass(frozen=True)
class Improv:
    of: tuple[str, ...]  # the best of these ...
    over: tuple[str, ...]  # ... relative to the best of these (the paper's "Improv.")
    along: str


@dataclass(frozen=True)
class Table:
    rows: tuple[str, ...] = ("variant",)
    columns: tuple[str, ...] = ("dataset", "split", "column", "metric")
    best_within: tuple[str, ...] = ()
    improv: Improv | None = None


@dataclass(frozen=True)
class Figure:
    kind: str
    variants: tuple[str, ...]
    metric: str = "HR@10"
    dataset: str = ""
    name: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    title: str
    base: Path | None
    datasets: tuple[str, ...]
    splits: tuple[str, ...]
    metrics: tuple[str, ...]
    protocol: str
    overrides: dict
    variants: tuple[Variant, ...]
    table: Table
    figures: tuple[Figure, ...] = ()
    data: dict = field(default_factory=dict)  # dataset name -> {"demo": {options}}
    from_cache: bool = True
    notes: str = ""

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(sorted({int(_METRIC.match(m).group(2)) for m in self.metrics}))

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise MMSRError(f"no variant {name!r} in the study", where=self.path,
                        hint="variants: " + ", ".join(v.name for v in self.variants))

    def datasets_of(self, variant: Variant) -> tuple[str, ...]:
        return (variant.dataset,) if variant.dataset else self.datasets

    def start_file(self, variant: Variant) -> Path | None:
        """The config file `variant` starts from: its own `config`, else the study's base."""
        return variant.config or self.base

    @functools.cached_property
    def _start_mappings(self) -> dict[Path | None, dict]:
        """Each start file's mapping, read once: a plan resolves every variant x dataset x seed."""
        return {path: config_lib.read_file(path) if path else {}
                for path in {self.start_file(variant) for variant in self.variants}}

    def resolve(self, variant: Variant, dataset: str, seed: int | None = None,
                sets: list[str] | None = None) -> TrainConfig:
        """start file (the variant's `config`, else study.base) <- study `set` <- variant `set` <-
        `--set` <- dataset and seed, by `mmsr.config.load`'s one precedence (a bad --set is named as
        the --set's)."""
        base = config_lib.merge(config_lib.merge(self._start_mappings[self.start_file(variant)], self.overrides),
                                variant.overrides)
        return config_lib.load(TrainConfig, None, sets, {"dataset": dataset, "seed": seed}, base=base,
                               source=f"config of variant {variant.name!r} (study {self.path})")


# ----------------------------------------------------------------------------- reading


_TOP_KEYS = {"study", "data", "variant", "grid", "table", "figure"}
_STUDY_KEYS = {"name", "title", "base", "datasets", "splits", "metrics", "protocol", "set", "from_cache", "notes"}
_VARIANT_KEYS = {"name", "label", "set", "config", "column", "group", "dataset", "init_from", "in_table"}
_TABLE_KEYS = {"rows", "columns", "best_within", "improv"}
_IMPROV_KEYS = {"of", "over", "along"}
_FIGURE_KEYS = {"kind", "variants", "metric", "dataset", "name"}
_GRID_KEYS = {"rows", "columns", "group"}


def load_study(path: str | Path, *, check_configs: bool = True) -> Study:
    """Read and check a study file; every problem is reported in one error.

    `check_configs=False` checks the file alone, not the base config and the variants'
    configs: what re-rendering a report from the copy in the study directory needs."""
    path = Path(path)
    if not path.is_file():
        raise MMSRError("study file not found", where=path, hint="the shipped studies are in configs/paper/")
    raw = config_lib.parse_toml(config_lib.read_utf8(path), path, "study file")
    problems: list[str] = []
    study = _parse(raw, path, problems)
    if not problems and check_configs:
        problems += _config_problems(study)
    if problems:
        raise MMSRError("invalid study file: " + "; ".join(problems), where=path)
    return study


def _unknown(mapping: dict, allowed: set, where: str, problems: list[str], *, owner: str = "") -> None:
    """`where`: the dotted path of the table ("study."); or `owner`, what the table belongs to
    ("variant 'a'"), where a path would not name it."""
    for key in mapping:
        if key not in allowed:
            said = f"{owner}: unknown key {key}" if owner else f"unknown key {where}{key}"
            problems.append(f"{said} (known: {', '.join(sorted(allowed))})")


def _table_of(value: Any, where: str, problems: list[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must be a table, got {value!r}")
        return {}
    return value


def _strings(value: Any, where: str, problems: list[str], *, empty_ok: bool = True) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where} must be a list of strings, got {value!r}")
        return ()
    if not value and not empty_ok:  # a study that trains and then shows nothing, or trains nothing
        problems.append(f"{where} is empty: name at least one")
    return tuple(value)


def _texts(table: dict, keys: tuple[str, ...], where: str, problems: list[str]) -> None:
    """Keys read as text: a number or a table given for one was turned into its str() silently."""
    for key in keys:
        if not isinstance(table.get(key, ""), str):
            problems.append(f"{where}{key} must be text, got {table[key]!r}")


def _tables(raw: dict, key: str, problems: list[str]) -> list:
    """The `[[key]]` entries; `[key]` (one table, not an array of them) was ignored entirely."""
    entries = raw.get(key, [])
    if not isinstance(entries, list):
        problems.append(f"[{key}] must be written [[{key}]] (an array of tables, one per {key})")
        return []
    return entries


def nested(overrides: dict) -> dict:
    """`{"model.fusion": "sum"}` and `{model = {fusion = "sum"}}` both become the nested form."""
    out: dict = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = nested(value)
        node = out
        *sections, last = str(key).split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = config_lib.merge(node[last], value) if isinstance(node.get(last), dict) and isinstance(
            value, dict) else value
    return out


def _parse(raw: dict, path: Path, problems: list[str]) -> Study:
    _unknown(raw, _TOP_KEYS, "", problems)
    head = _table_of(raw.get("study"), "[study]", problems)
    _unknown(head, _STUDY_KEYS, "study.", problems)
    base = head.get("base")
    if base is not None and (not isinstance(base, str) or not base):  # dropped silently, the defaults ran
        problems.append(f"study.base must be the path of a training config (relative to the study file), got {base!r}")
    base_path = (path.parent / base).resolve() if isinstance(base, str) and base else None
    name = head.get("name", path.stem)  # the file's own name is taken as it is, as it always was
    if "name" in head and (not isinstance(name, str) or not _NAME.match(name)):  # it names studies/NAME
        problems.append(f"study.name must be letters, digits and _.+- (it names the study's directory), got {name!r}")
        name = path.stem
    splits = _strings(head.get("splits", ["test"]), "study.splits", problems, empty_ok=False)
    for split in splits:
        if split not in SPLITS:
            problems.append(f"study.splits: unknown split {split!r} (known: {', '.join(SPLITS)})")
    metrics = _strings(head.get("metrics", ["HR@10", "NDCG@10"]), "study.metrics", problems, empty_ok=False)
    for metric in metrics:
        if not _METRIC.match(metric):
            problems.append(f"study.metrics: {metric!r} is not HR@K or NDCG@K")
    protocol = head.get("protocol", "paper")
    if protocol not in PROTOCOLS:
        problems.append(f"study.protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    from_cache = head.get("from_cache", True)
    if not isinstance(from_cache, bool):
        problems.append(f"study.from_cache must be true or false, got {from_cache!r}")
    data = _data_recipes(_table_of(raw.get("data"), "[data]", problems), problems)
    variants = _variants(raw, path, problems)
    _texts(head, ("title", "notes"), "study.", problems)
    study = Study(
        name=name, path=path.resolve(), title=str(head.get("title", path.stem)),
        base=base_path, datasets=_strings(head.get("datasets", ["demo"]), "study.datasets", problems, empty_ok=False),
        splits=splits, metrics=metrics, protocol=protocol,
        overrides=nested(_table_of(head.get("set"), "study.set", problems)), variants=variants,
        table=_table(_table_of(raw.get("table"), "[table]", problems), problems),
        figures=_figures(_tables(raw, "figure", problems), problems), data=data, from_cache=from_cache,
        notes=str(head.get("notes", "")))
    for where, overrides in [("study.set", study.overrides), *((f"variant {v.name!r} set", v.overrides)
                                                               for v in study.variants)]:
        if "dataset" in overrides:
            problems.append(f"{where}: dataset is chosen by study.datasets, a variant's dataset key or --dataset")
    _check_references(study, problems)
    return study


DEMO_OPTIONS = {"items": int, "users": int, "seed": int, "domain": int, "min_len": int, "max_len": int,
                "image_size": int, "sampler": str}  # create_demo's, the study may set


def _data_recipes(data: dict, problems: list[str]) -> dict:
    for name, recipe in data.items():
        recipe = _table_of(recipe, f"data.{name}", problems)
        _unknown(recipe, {"demo"}, f"data.{name}.", problems)
        if "demo" not in recipe:
            problems.append(f"data.{name} says how to make the dataset: add demo = {{ ... }}")
            continue
        options = _table_of(recipe["demo"], f"data.{name}.demo", problems)
        _unknown(options, set(DEMO_OPTIONS), f"data.{name}.demo.", problems)
        typed = True
        for key, kind in DEMO_OPTIONS.items():
            if key in options and (not isinstance(options[key], kind) or isinstance(options[key], bool)):
                problems.append(f"data.{name}.demo.{key} must be {kind.__name__}, got {options[key]!r}")
                typed = False
        if typed and set(options) <= set(DEMO_OPTIONS):  # what `study run` would refuse after writing its folder
            try:
                check_demo_request(**{**DEMO_SIZE, **options})
            except MMSRError as error:
                problems.append(f"data.{name}.demo: {error.message}")
    return data


def _variants(raw: dict, path: Path, problems: list[str]) -> tuple[Variant, ...]:
    variants = []
    for index, entry in enumerate(_tables(raw, "variant", problems)):
        place = f"[[variant]] number {index + 1}"  # from 1, as a reader counts the tables
        entry = _table_of(entry, place, problems)
        name = entry.get("name")
        # Named by its name where it has one, by its place where not.
        owner = f"variant {name!r}" if isinstance(name, str) and name else place
        where = f"{owner}:"
        _unknown(entry, _VARIANT_KEYS, "", problems, owner=owner)
        if not isinstance(name, str) or not _NAME.match(name) or "--" in name:
            problems.append(f"{where} name must be letters, digits and _.+- without '--' (it names the run, "
                            f"VARIANT--DATASET--seedS), got {name!r}")
            continue
        _texts(entry, ("label", "column", "group", "dataset", "init_from"), f"{where} ", problems)
        in_table = entry.get("in_table", True)
        if not isinstance(in_table, bool):
            problems.append(f"{where} in_table must be true or false")
        config = entry.get("config")
        if config is not None and (not isinstance(config, str) or not config):
            problems.append(f"{where} config must be the path of a training config (relative to the study "
                            f"file), got {config!r}")
            config = None
        variants.append(Variant(name=name, label=str(entry.get("label", name)),
                                overrides=nested(_table_of(entry.get("set"), f"{where} set", problems)),
                                config=(path.parent / config).resolve() if config else None,
                                column=str(entry.get("column", "")), group=str(entry.get("group", "")),
                                dataset=str(entry.get("dataset", "")), init_from=str(entry.get("init_from", "")),
                                in_table=bool(in_table)))
    grid = _table_of(raw.get("grid"), "[grid]", problems)
    _unknown(grid, _GRID_KEYS, "grid.", problems)
    rows = _table_of(grid.get("rows"), "grid.rows", problems)
    columns = _table_of(grid.get("columns"), "grid.columns", problems) or {"": {}}
    for row, row_set in rows.items():
        for column, column_set in columns.items():
            name = slug(f"{row}-{column}" if column else row)
            overrides = config_lib.merge(nested(_table_of(row_set, f"grid.rows.{row}", problems)),
                                         nested(_table_of(column_set, f"grid.columns.{column}", problems)))
            variants.append(Variant(name=name, label=row, overrides=overrides, column=column,
                                    group=str(grid.get("group", ""))))
    names = [v.name for v in variants]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"two variants are called {name!r}")
    if not variants:
        problems.append("no variants: add [[variant]] entries or a [grid]")
    return tuple(variants)


def slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.+-]+", "-", text)).strip("-").lower() or "variant"


def _table(table: dict, problems: list[str]) -> Table:
    _unknown(table, _TABLE_KEYS, "table.", problems)
    rows = _strings(table.get("rows", ["variant"]), "table.rows", problems)
    columns = _strings(table.get("columns", ["dataset", "split", "column", "metric"]), "table.columns", problems)
    best_within = _strings(table.get("best_within", []), "table.best_within", problems)
    for dim in rows + columns + best_within:
        if dim not in DIMENSIONS:
            problems.append(f"table: unknown dimension {dim!r} (known: {', '.join(DIMENSIONS)})")
    for dim in sorted(set(rows) & set(columns)):
        problems.append(f"table: dimension {dim!r} is in both rows and columns")
    for dim in best_within:
        if dim not in ("variant", "column"):
            problems.append(f"table.best_within: {dim!r} is always held fixed; only variant or column can be")
    # A dimension the layout does not name spans the columns, outermost (no header when it has
    # one value, as `column` has outside a grid).
    columns = tuple(d for d in DIMENSIONS if d not in rows + columns) + columns
    improv = None
    if "improv" in table:
        spec = _table_of(table["improv"], "table.improv", problems)
        _unknown(spec, _IMPROV_KEYS, "table.improv.", problems)
        along = spec.get("along", columns[-1] if columns else "")
        if along not in ("variant", "column"):
            said = f"got {along!r}" if "along" in spec else f"not given, and the last of table.columns is {along!r}"
            problems.append(f"table.improv.along must be variant or column (the models compared), {said}")
        elif not columns or along != columns[-1]:
            problems.append(f"table.improv.along must be the last of table.columns ({columns[-1:]}), got {along!r}")
        else:  # checked against the study's labels or columns later; with another `along` there are none
            improv = Improv(of=_strings(spec.get("of", []), "table.improv.of", problems),
                            over=_strings(spec.get("over", []), "table.improv.over", problems), along=along)
    return Table(rows=rows, columns=columns, best_within=best_within, improv=improv)


def _figures(entries: Any, problems: list[str]) -> tuple[Figure, ...]:
    figures = []
    for index, entry in enumerate(entries):
        where = f"figure[{index}]"
        entry = _table_of(entry, where, problems)
        _unknown(entry, _FIGURE_KEYS, f"{where}.", problems)
        kind = entry.get("kind")
        if kind not in FIGURE_KINDS:
            problems.append(f"{where}.kind {kind!r}: use one of {', '.join(FIGURE_KINDS)}")
            continue
        variants = _strings(entry.get("variants", []), f"{where}.variants", problems)
        _texts(entry, ("metric", "dataset", "name"), f"{where}.", problems)
        if kind in ("items", "users") and len(variants) not in (1, 2):
            problems.append(f"{where}: a t-SNE figure shows one variant or compares two, got {len(variants)}")
        metric = str(entry.get("metric", "HR@10"))
        if kind == "curves" and not (_METRIC.match(metric) or metric in ("loss", "lr", "epoch_seconds")):
            problems.append(f"{where}.metric {metric!r}: use HR@K, NDCG@K, loss, lr or epoch_seconds")
        figures.append(Figure(kind=kind, variants=variants, metric=metric,
                              dataset=str(entry.get("dataset", "")), name=str(entry.get("name", f"figure{index + 1}"))))
    return tuple(figures)


def _check_references(study: Study, problems: list[str]) -> None:
    names = {v.name for v in study.variants}
    for variant in study.variants:
        if variant.init_from and variant.init_from not in names:
            problems.append(f"variant {variant.name!r}: init_from {variant.init_from!r} is no variant of the study")
        if variant.init_from == variant.name:
            problems.append(f"variant {variant.name!r} cannot start from itself")
    cells = [(v.label, v.column) for v in study.variants if v.in_table]
    for label, column in sorted({c for c in cells if cells.count(c) > 1}):
        problems.append(f"two variants share the label {label!r}" + (f" in column {column!r}" if column else "")
                        + ": their numbers would be averaged like seeds")
    datasets = set(study.datasets) | {v.dataset for v in study.variants if v.dataset}
    for figure in study.figures:
        for name in figure.variants:
            if name not in names:
                problems.append(f"figure {figure.name!r}: no variant {name!r}")
        if figure.dataset and figure.dataset not in datasets:
            problems.append(f"figure {figure.name!r}: dataset {figure.dataset!r} is not one the study runs on")
    improv = study.table.improv
    if improv:
        along = {v.label for v in study.variants} if improv.along == "variant" else {v.column for v in study.variants}
        for label in (*improv.of, *improv.over):
            if label not in along:
                problems.append(f"table.improv: {label!r} is not a {improv.along} of the study "
                                f"(known: {', '.join(sorted(a for a in along if a))})")
    _check_cycles(study, problems)


def _check_cycles(study: Study, problems: list[str]) -> None:
    parents = {v.name: v.init_from for v in study.variants}
    for name in parents:
        seen, node = set(), name
        while parents.get(node):
            if node in seen:
                problems.append(f"variants {sorted(seen)} start from each other in a cycle")
                return
            seen.add(node)
            node = parents[node]


def _config_problems(study: Study) -> list[str]:
    """Build every variant's TrainConfig now, so a typo fails before hours of training."""
    starts = [("study.base", study.base), *((f"variant {v.name!r}: config", v.config) for v in study.variants)]
    missing = [f"{what} {path}: no such file (it is relative to the study file)"
               for what, path in starts if path is not None and not path.is_file()]
    if missing:
        return missing
    problems = []
    kinds = {}
    for variant in study.variants:
        for dataset in study.datasets_of(variant):
            try:
                kinds[variant.name] = study.resolve(variant, dataset).model.kind
            except MMSRError as error:
                problems.append(f"variant {variant.name!r}: " + error.message.split(": ", 1)[-1])
                break
    # What `mmsr train --init-from` refuses, said before the source variant trains for hours.
    for variant in study.variants:
        for name in (variant.name, variant.init_from) if variant.init_from else ():
            kind = kinds.get(name)
            if ties_to_item_ids(kind):
                problems.append(f"variant {variant.name!r} starts from {variant.init_from!r}, but variant {name!r} "
                                f"has model.kind={kind}: item-ID embeddings cannot transfer to another catalogue "
                                "(transfer a content model: mmsr or morec)")
                break
    return problems
