"""How often `mmsr compare`'s "runs resampled too" p-value calls a difference resolved when there
is none: both sides are seeds of the same config, simulated, so every p < 0.05 is a false
positive and the rate should be near 0.05 (below it, the test errs wide; above it, narrow).

    .venv/bin/python bench/compare_calibration.py                  # 200 tries a cell, ~5 minutes on one core
    .venv/bin/python bench/compare_calibration.py --tries 50 --runs 2,3

A try draws each case's hit rate (Beta(0.6, 4): mean 0.13, the HR@10 of MovieLens-100K's
models), then each run's hits on every case from that rate plus the run's own shift, a normal
draw with the given standard deviation: a seed that lifts or sinks every case of its run alike,
the spread the fixed-runs pairing cannot see. Prints a line a cell, then one JSON object:
{"cases", "tries", "resamples", "rates": {"shift sd": {"runs a side": rate}}}.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mmsr.eval.compare import across_runs


def rejection_rate(runs: int, shift_sd: float, cases: int, tries: int, resamples: int, rng) -> float:
    rejected = 0
    for attempt in range(tries):
        rate = rng.beta(0.6, 4.0, cases)

        def side():
            shifts = rng.normal(0.0, shift_sd, runs)
            return (rng.random((runs, cases)) < np.clip(rate + shifts[:, None], 0, 1)).astype(float)

        rejected += across_runs({"HR@10": [side(), side()]}, resamples, seed=attempt)["HR@10"]["p_value"] < 0.05
    return rejected / tries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=943, help="cases a run ranks (MovieLens-100K's test users)")
    parser.add_argument("--tries", type=int, default=200, help="simulated comparisons a cell")
    parser.add_argument("--resamples", type=int, default=999, help="bootstrap resamples a comparison")
    parser.add_argument("--runs", default="2,3,6", help="runs a side, comma-separated")
    parser.add_argument("--shifts", default="0,0.012,0.02,0.04", help="standard deviations of a run's whole-run shift")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rates: dict = {}
    for shift in (float(s) for s in args.shifts.split(",")):
        for runs in (int(r) for r in args.runs.split(",")):
            rate = rejection_rate(runs, shift, args.cases, args.tries, args.resamples, rng)
            rates.setdefault(str(shift), {})[str(runs)] = rate
            print(f"whole-run shift sd {shift}: {runs} runs a side: p < 0.05 in {rate:.3f} of {args.tries} tries",
                  flush=True)
    print(json.dumps({"cases": args.cases, "tries": args.tries, "resamples": args.resamples, "rates": rates}))


if __name__ == "__main__":
    main()
