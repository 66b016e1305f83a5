"""`mmsr compare`: two runs ranked on the same cases, paired interval and test."""

import json
import shutil

import numpy as np
import pytest

from mmsr.errors import MMSRError


@pytest.fixture(scope="module")
def two_runs(small_demo, tmp_path_factory):
    """Two tiny IDSR runs of one config, seeds 0 and 1, trained in this module's data root."""
    import os

    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run

    home = tmp_path_factory.mktemp("compare")
    before = os.environ.get("MMSR_HOME")
    os.environ["MMSR_HOME"] = str(home)
    try:
        for seed in (0, 1):
            sets = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=2",
                    "optim.batch_size=32", f"seed={seed}"]
            prepared = prepare_run(f"seed{seed}", None, sets, log=lambda text: None)
            train(prepared.config, prepared.root, from_cache=False, log=lambda text: None)
    finally:
        if before is None:
            os.environ.pop("MMSR_HOME")
        else:
            os.environ["MMSR_HOME"] = before
    return home / "runs" / "seed0", home / "runs" / "seed1"


def test_compare_gives_each_runs_eval_figures_and_their_paired_difference(two_runs):
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.runner import evaluate_run

    a, b = two_runs
    result = compare_runs(str(a), str(b), "test", protocol="recbole", ks="10,20", resamples=999)
    assert result["cases"] == 200 and list(result["metrics"]) == ["HR@10", "NDCG@10", "HR@20", "NDCG@20"]
    evals = [evaluate_run(str(run), "test", ks=(10, 20), protocol="recbole") for run in two_runs]
    for key, m in result["metrics"].items():
        assert m["a"] == pytest.approx(evals[0]["metrics"][key], abs=1e-12)
        assert m["b"] == pytest.approx(evals[1]["metrics"][key], abs=1e-12)
        assert m["se_a"] == pytest.approx(evals[0]["standard_errors"][key], abs=1e-12)
        assert m["difference"] == pytest.approx(m["b"] - m["a"], abs=1e-12)
        low, high = m["ci95"]
        assert low <= m["difference"] <= high and 0 < m["p_value"] <= 1
    # The resampling is seeded: the same comparison gives the same figures.
    assert compare_runs(str(a), str(b), "test", protocol="recbole", ks="10,20", resamples=999) == result


def test_a_run_against_itself_differs_by_nothing(two_runs):
    from mmsr.eval.compare import compare_runs

    result = compare_runs(str(two_runs[0]), str(two_runs[0]), "test", ks="10", resamples=999)
    for m in result["metrics"].values():
        assert m["difference"] == 0 and m["ci95"] == [0, 0] and m["p_value"] == 1.0


def test_runs_that_rank_different_cases_are_refused_naming_the_first(two_runs, tmp_path):
    from mmsr.eval.compare import compare_runs

    other = tmp_path / "other"
    shutil.copytree(two_runs[1], other)
    config = json.loads((other / "config.json").read_text())
    config["split"]["cold_min_history"] = 3  # the same model, another cold split
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(MMSRError, match=r"rank different cases \(.*(cases against|case 0: user)"):
        compare_runs(str(two_runs[0]), str(other), "cold", ks="10", resamples=999)
    with pytest.raises(MMSRError, match="--resamples"):
        compare_runs(str(two_runs[0]), str(other), "test", resamples=10)


def test_the_paired_interval_and_test_see_a_shift_that_separate_errors_cannot():
    from mmsr.eval.compare import _paired

    rng = np.random.default_rng(3)
    a = (rng.random(2000) < 0.3).astype(float)
    b = a.copy()
    flip = rng.choice(np.flatnonzero(a == 0), 60, replace=False)  # B also hits 60 cases A misses
    b[flip] = 1.0
    m = _paired(a, b, 1999, seed=0)
    assert m["difference"] == pytest.approx(0.03)
    separate = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert m["difference"] < 3 * separate  # unpaired, the shift is within the noise
    assert m["ci95"][0] > 0 and m["p_value"] < 0.01  # paired, it is not
    noise = _paired(a, rng.permutation(a), 1999, seed=0)  # same mean, unrelated cases
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and noise["p_value"] > 0.05
    same_shift = _paired(np.zeros(5), np.ones(5), 1999, seed=0)
    assert same_shift["ci95"] == [1.0, 1.0] and same_shift["p_value"] == pytest.approx(2 / 2 ** 5)
