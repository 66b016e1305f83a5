"""Two runs on the same cases: is the difference larger than what the cases alone move?

`mmsr compare A B --split test` ranks every case of the split under both runs (one process,
the models loaded in turn, the same exact ranking as `mmsr eval`), then, per metric:

- each run's mean and its standard error over the cases (as `mmsr eval` reports them);
- the paired difference B - A, with a 95% bootstrap confidence interval over the cases
  (`scipy.stats.bootstrap`, BCa);
- the p-value of a paired randomisation test (`scipy.stats.permutation_test` with
  `permutation_type="samples"`: each case's two values swapped at random), the test that
  Smucker, Allan and Carterette (CIKM 2007) recommend for IR metrics.

Pairing removes what the runs share (the users every model finds easy or hard), so it resolves
differences that the two separate standard errors cannot. One run per side says nothing about
seeds: two seeds of one config differ too, and comparing them first shows what a seed alone
moves. A side may be several runs (`A1,A2,A3`: seeds of one config); each case's metric is then
averaged over them before pairing, so the interval and the test count what the seeds move each
case, but still not a shift one seed would give every case alike.

That shift is what a config's seeds spread over, and with two or three runs a side it can be
most of a difference (one seed's low run pulls every case of its side down). When both sides
have two runs or more, each metric also gets `across_runs`: a two-way bootstrap that resamples
the runs within each side as well as the cases (the same cases for both sides, so the pairing
stays), with its 95% percentile interval and a bootstrap p-value (the share of resampled
differences, centred on the observed one, at least as far from it as zero is). Each run's
deviation from its side's per-case mean is widened by sqrt(R/(R-1)) first: drawn R from R, the
runs' mean keeps only (R-1)/R of their spread, half with two runs. How it errs
(`bench/compare_calibration.py`, simulated seeds of one config on 943 cases, nominal 5%): wide
where the cases' noise dominates, the crossed design's excess (McCullagh, "Resampling and
exchangeable arrays", Bernoulli 2000); narrow where seeds shift whole runs far and a side has
few runs, whose spread it knows from those few values (up to twice the nominal rate with two or
three; docs/eval.md gives the rates). Read a resolved difference from two or three seeds a side
as a reason to run more seeds; one that is not resolved means these seeds cannot tell.

The runs must rank the same cases (same dataset, same split settings): checked case by case.
Any member of a side may instead be another tool's per-case ranks, a CSV of user,item,rank
(`mmsr.eval.external_ranks`), matched to the runs' cases by user and target: that is how mmsr
is compared with RecBole case by case (`bench/recbole_fdsa.py` writes RecBole's ranks), and
`rb_seed1.csv,rb_seed2.csv` is RecBole's seeds as one side. At least one member somewhere must
be a run: its split defines the cases.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmsr import paths
from mmsr.comma_lists import split_commas
from mmsr.errors import MMSRError
from mmsr.eval.backends import check_request
from mmsr.eval.external_ranks import check_ranks_file, is_ranks_file, read_ranks
from mmsr.eval.metrics import COUNT_KEY, SQUARES, hit_at_k, ndcg_at_k, parse_ks, standard_errors, \
    whole_catalogue_note
from mmsr.eval.run_ranks import RunRanks, rank_run
from mmsr.progress import to_stderr
from mmsr.torchrun_env import env_int
from mmsr.train.run import run_config

METRICS = {"HR": hit_at_k, "NDCG": ndcg_at_k}
# Resampling memory bound: values held at once per batch of resamples.
_VALUES_PER_BATCH = 20_000_000
# The two-way bootstrap's case counts (int64) held at once: 16 MB.
_COUNTS_PER_BATCH = 2_000_000
# Fewer resamples leave the interval's 2.5% tails to a couple of dozen draws.
MIN_RESAMPLES = 999
# Past this the p-value's floor, 1 / (1 + resamples), and the interval's tails are finer than any
# test set's own sampling error.
MAX_RESAMPLES = 1_000_000


def compare_runs(run_a: str, run_b: str, split: str = "test", *, protocol: str = "paper", ks="10,20",
                 checkpoint: str = "best", resamples: int = 9999, seed: int = 0, batch_size: int | None = None,
                 device: str = "auto", search_backend: str = "auto", shared_cases: bool = False,
                 log: Callable[[str], None] = to_stderr) -> dict:
    """{"runs", "split", "protocol", "cases", "metrics": {name: {a, b, se_a, se_b, difference,
    ci95, p_value}}}: see the module docstring. `seed` fixes the resampling, so a comparison
    is the same whenever it is recomputed. `shared_cases`: with ranks files, pair only the
    cases every file ranks (`read_ranks`); "left_out" then says what was not paired. `log` takes
    the notes: cut-offs that hold the whole catalogue, a --search-backend a run cannot use, the
    same runs on both sides."""
    if env_int("WORLD_SIZE", 1) > 1:
        raise MMSRError("mmsr compare runs in one process", where="torchrun",
                        hint="run it without torchrun: it ranks each split once per run")
    if resamples < MIN_RESAMPLES:
        raise MMSRError(f"{resamples} is too few for a 95% interval", where="--resamples",
                        hint=f"use at least {MIN_RESAMPLES}; the default is 9999")
    if resamples > MAX_RESAMPLES:  # scipy keeps every resample's statistic: 10^20 grew past 17 GB
        raise MMSRError(f"{resamples:,} is more than the {MAX_RESAMPLES:,} an interval or a p-value can use",
                        where="--resamples", hint="use at most 1,000,000; the default is 9999")
    sides = [_side(run_a), _side(run_b)]
    files = sorted({run for side in sides for run in side if is_ranks_file(run)})
    if all(is_ranks_file(run) for side in sides for run in side):
        raise MMSRError("both sides are ranks files", where=f"{run_a} and {run_b}",
                        hint="name at least one mmsr run: its split defines the cases the files are matched to")
    ks = parse_ks(ks)
    check_request(search_backend)
    for path in files:  # before any run is ranked (minutes on a large catalogue)
        check_ranks_file(path)
    _refuse_other_datasets([run for side in sides for run in side if not is_ranks_file(run)])
    # The cases' IDs (strings, one per case) only when a file has to be matched to them.
    ranked = {run: rank_run(run, split, protocol, max_k=max(ks), checkpoint=checkpoint, batch_size=batch_size,
                            device=device, search_backend=search_backend, with_keys=bool(files))
              for side in sides for run in side if not is_ranks_file(run)}
    reference = next(iter(ranked.values()))
    for other in ranked.values():
        _check_same_cases(reference.identity, other.identity, reference.label, other.label)
    notes = [whole_catalogue_note(ks, reference.num_items), *(note for r in ranked.values() for note in r.notes)]
    if {_place(run) for run in sides[0]} == {_place(run) for run in sides[1]}:
        notes.append("note: A and B are the same runs: every difference is 0 by construction (to see what a seed "
                     "alone moves, compare two seeds of one config)")
    for note in dict.fromkeys(note for note in notes if note):  # a note several runs give is said once
        log(note)
    shared, left_out = np.ones(len(reference.ranks), dtype=bool), []
    for path in files:
        found = read_ranks(path, reference.keys, shared_only=shared_cases)
        # Capped as the runs' ranks are: no metric at K <= max K tells the two apart.
        ranked[path] = RunRanks(reference.identity, np.minimum(found.ranks, max(ks) + 1), path)
        # Every side's every member ranks each paired case: the cases all the files share.
        shared &= found.matched
        left_out += found.unmatched
    ranks = [[ranked[run].ranks[shared] for run in side] for side in sides]
    if not len(reference.ranks):
        raise MMSRError(f"the {split} split has no case to compare on", where=reference.label,
                        hint="`mmsr data info` counts each split's cases; pick a split that has some")
    if not len(ranks[0][0]):
        raise MMSRError("the two sides share no case", where=f"{run_a} and {run_b}",
                        hint="the ranks files must use the dataset's own user and item IDs")
    metrics, per_run = {}, {}
    for k in ks:
        for name, per_case in METRICS.items():
            key = f"{name}@{k}"
            per_run[key] = runs_a, runs_b = [np.stack([per_case(r, k) for r in side]) for side in ranks]
            a, b = runs_a.mean(axis=0), runs_b.mean(axis=0)
            metrics[key] = {**_paired(a, b, resamples, seed), "se_a": _standard_error(key, a),
                            "se_b": _standard_error(key, b)}
    if min(map(len, ranks)) >= 2:
        for key, across in across_runs(per_run, resamples, seed + 2).items():
            metrics[key]["across_runs"] = across
    result = {"runs": {name: ", ".join(str(ranked[run].label) for run in side) for name, side in zip("ab", sides)},
              "runs_per_side": {name: len(side) for name, side in zip("ab", sides)},
              "split": split, "protocol": protocol, "cases": len(ranks[0][0]), "checkpoint": checkpoint,
              "resamples": resamples, "metrics": metrics,
              # Each run's towers' batch: a run ranked at another batch can turn a near-tie.
              "batch_sizes": {str(r.label): r.batch_size for r in ranked.values() if r.batch_size is not None}}
    if shared_cases:
        result["left_out"] = {"run_cases": int((~shared).sum()), "file_rows": len(left_out), "rows": left_out,
                              "files": len(files)}
    return result


def _side(spec: str) -> list[str]:
    """One side's members: runs and ranks files, separated by commas."""
    if not spec.strip():
        raise MMSRError("no run given", where=repr(spec), hint="name a run, or several separated by commas")
    side = split_commas(spec, where=repr(spec), example="run-seed0,run-seed1,run-seed2")
    _refuse_repeats(side, spec)
    return side


def _refuse_repeats(side: list[str], spec: str) -> None:
    """A run (or file) named twice in one side, by one name or by a name and its path, would be
    averaged and resampled as two seeds. (The same run on both sides is allowed: it differs by
    nothing, which is what it should show.)"""
    named: dict[Path, str] = {}
    for member in side:
        place = _place(member)
        if place in named:
            raise MMSRError(f"{named[place]!r} and {member!r} are the same run" if named[place] != member
                            else f"{member!r} is named twice", where=repr(spec),
                            hint="name each run of a side once: one run named twice is not two seeds")
        named[place] = member


def _place(member: str) -> Path:
    """Where a side's member is (a run's directory or a ranks file), however it was named."""
    return (Path(member) if is_ranks_file(member) else paths.runs_dir(member)).expanduser().resolve()


def _refuse_other_datasets(runs: list[str]) -> None:
    """Runs of two datasets rank different cases; said with the datasets' names before any run is
    ranked (the case check after ranking could only name internal user and item indices)."""
    trained_on: dict[Path, tuple[str, str]] = {}
    for run in runs:
        dataset = run_config(paths.runs_dir(run)).dataset
        trained_on.setdefault(paths.dataset_dir(dataset).expanduser().resolve(), (run, dataset))
    if len(trained_on) > 1:
        (run_a, data_a), (run_b, data_b) = list(trained_on.values())[:2]
        raise MMSRError(f"the runs were trained on different datasets: {run_a} on {data_a}, {run_b} on {data_b}",
                        where=f"{run_a} and {run_b}", hint="compare runs trained on one dataset")


def _standard_error(key: str, values: np.ndarray) -> float:
    """`mmsr eval`'s standard error (metrics.standard_errors) of per-case values, which for a side
    of several runs are the runs' per-case means rather than one run's 0/1 hits or gains."""
    sums = {key: float(values.sum()), key + SQUARES: float(np.square(values).sum()), COUNT_KEY: float(len(values))}
    return standard_errors(sums)[key]


def _check_same_cases(a: np.ndarray, b: np.ndarray, root_a, root_b) -> None:
    if a.shape != b.shape or not np.array_equal(a, b):
        if a.shape != b.shape:
            detail = f"{a.shape[1]:,} cases against {b.shape[1]:,}"
        else:
            first = int(np.flatnonzero((a != b).any(axis=0))[0])
            detail = (f"case {first}: user {a[0, first]} position {a[1, first]} target {a[2, first]} against "
                      f"user {b[0, first]} position {b[1, first]} target {b[2, first]}")
        raise MMSRError(f"the two runs rank different cases ({detail})", where=f"{root_a} and {root_b}",
                        hint="compare runs trained on the same dataset with the same split settings (split.*)")


def _paired(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> dict:
    from scipy import stats  # deferred: only this command needs it

    n = len(a)
    difference = b - a
    out = {"a": float(a.mean()), "b": float(b.mean()), "difference": float(difference.mean())}
    if n < 2 or np.all(difference == difference[0]):
        # Every case moved alike (often: not at all): nothing to resample, and the sign-flip
        # test's p-value is exact (only the all-same-sign flips are as extreme).
        out.update(ci95=[out["difference"], out["difference"]],
                   p_value=1.0 if out["difference"] == 0 else min(1.0, 2.0 ** (1 - n)))
        return out
    batch = max(1, _VALUES_PER_BATCH // n)
    interval = stats.bootstrap((difference,), np.mean, n_resamples=resamples, batch=batch, vectorized=True,
                               method="BCa", rng=np.random.default_rng(seed)).confidence_interval
    test = stats.permutation_test((b, a), lambda x, y, axis: np.mean(x - y, axis=axis), n_resamples=resamples,
                                  permutation_type="samples", vectorized=True, batch=batch,
                                  rng=np.random.default_rng(seed + 1))
    out.update(ci95=[float(interval.low), float(interval.high)], p_value=float(test.pvalue))
    return out


def across_runs(per_run: dict[str, list[np.ndarray]], resamples: int, seed: int) -> dict[str, dict]:
    """Per metric, B - A's 95% interval and p-value when the runs (rows: seeds) are resampled
    within each side as well as the cases (columns, drawn once for both sides): see the module
    docstring. `per_run`: metric -> [A's runs x cases, B's runs x cases]. One set of draws serves
    every metric. A resample's mean is its weights' product with the values: run weights w (how
    often each run was drawn) and case weights c give (w @ values @ c) / (runs x cases)."""
    rng = np.random.default_rng(seed)
    first = next(iter(per_run.values()))
    runs, n = [len(side) for side in first], first[0].shape[1]
    observed = {key: float(b.mean() - a.mean()) for key, (a, b) in per_run.items()}
    # Drawing R runs from R gives their mean (R-1)/R of the spread it has (half, with two runs):
    # each run's deviation from its side's per-case mean is widened by sqrt(R/(R-1)) first, the
    # one-sample correction of Davison and Hinkley (Bootstrap Methods, 1997, section 3.3).
    widened = {key: [_widen(side) for side in sides] for key, sides in per_run.items()}
    differences = {key: [] for key in per_run}
    batch = max(1, _COUNTS_PER_BATCH // n)
    for start in range(0, resamples, batch):
        size = min(resamples - start, batch)
        cases = rng.multinomial(n, np.full(n, 1 / n), size=size).T  # cases x resamples
        weights = [rng.multinomial(r, np.full(r, 1 / r), size=size).T for r in runs]  # runs x resamples
        for key, sides in widened.items():
            a, b = ((w * (side @ cases)).sum(axis=0) / (r * n) for w, side, r in zip(weights, sides, runs))
            differences[key].append(b - a)
    out = {}
    for key, drawn in differences.items():
        drawn = np.concatenate(drawn)
        low, high = np.percentile(drawn, [2.5, 97.5])
        # Centred on the observed difference, the resamples stand in for the null's spread.
        extreme = np.count_nonzero(np.abs(drawn - observed[key]) >= abs(observed[key]) - 1e-15)
        out[key] = {"ci95": [float(low), float(high)], "p_value": float(min(1.0, (1 + extreme) / (1 + resamples)))}
    return out


def _widen(side: np.ndarray) -> np.ndarray:
    mean = side.mean(axis=0)
    return mean + np.sqrt(len(side) / (len(side) - 1)) * (side - mean)
