"""`mmsr compare`: two runs ranked on the same cases, paired interval and test."""

import json
import re
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
    said = []
    result = compare_runs(str(a), str(b), "test", protocol="recbole", ks="10,20", resamples=999, log=said.append)
    assert said == []  # nothing to note
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
    # Each run is ranked at its own towers' batch (the config's eval_batch_size) unless one is asked;
    # an ID table's vectors do not depend on it.
    assert sorted(result["batch_sizes"].values()) == [256, 256] and evals[0]["batch_size"] == 256
    asked = compare_runs(str(a), str(b), "test", protocol="recbole", ks="10,20", resamples=999, batch_size=7)
    assert sorted(asked["batch_sizes"].values()) == [7, 7] and asked["metrics"] == result["metrics"]


def test_a_run_against_itself_differs_by_nothing(two_runs):
    from mmsr.data.dataset import load_dataset
    from mmsr.eval.compare import compare_runs
    from mmsr.train.run import run_config

    said = []
    result = compare_runs(str(two_runs[0]), str(two_runs[0]), "test", ks="10", resamples=999, log=said.append)
    for m in result["metrics"].values():
        assert m["difference"] == 0 and m["ci95"] == [0, 0] and m["p_value"] == 1.0
    # Allowed (it shows what it should), but said, as is a cut-off the whole catalogue fills
    # (HR = 1 for both), once however many runs rank it.
    items = load_dataset(run_config(two_runs[0]).dataset).num_items
    said.clear()
    compare_runs(f"{two_runs[0]},{two_runs[1]}", f"{two_runs[1]},{two_runs[0]}", "test", ks=f"10,{items}",
                 resamples=999, log=said.append)
    assert said == [f"note: at K={items} the list holds every one of the {items:,} items: every case is a hit",
                    "note: A and B are the same runs: every difference is 0 by construction (to see what a seed "
                    "alone moves, compare two seeds of one config)"]


def test_a_lost_best_checkpoint_is_said_and_a_lost_last_one_gets_a_hint_that_works(two_runs, tmp_path):
    """best.pt gone: last.pt ranked in its place without a word (only --json's "checkpoint" said
    so); last.pt gone: the hint said --resume, which retrains from epoch 1 without a checkpoint."""
    from mmsr.train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(MMSRError, match=r"last\.pt: checkpoint not found \(use --checkpoint best, or continue the "
                                        r"training from it with .*--resume --resume-from best"):
        load_run(run, "last", device="cpu")
    shutil.copy(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")
    (run / "checkpoints" / "best.pt").unlink()
    said = []
    loaded = load_run(run, "best", device="cpu", log=said.append)
    assert loaded.info["checkpoint"].endswith("last.pt") and said == [
        f"note: {run} has no best.pt: ranking with last.pt (epoch {loaded.info['epoch']})"]
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(MMSRError, match=r"no checkpoint left: train it again with .*--overwrite"):
        load_run(run, "best", device="cpu")


def test_a_run_without_its_run_json_is_said_to_be_unchecked(two_runs, tmp_path):
    """A copy without run.json was ranked as a run from before it existed, without a word: no
    dataset check, items encoded from their inputs (figures a rounding away from the run's)."""
    from mmsr.train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    said = []
    load_run(run, device="cpu", log=said.append)
    assert said == []
    (run / "run.json").unlink()
    load_run(run, device="cpu", log=said.append)
    assert said == [f"note: {run} has no run.json (a run from before it was written, or a copy without it): the "
                    "dataset is not checked against the one the run trained on, and items are encoded from their "
                    "inputs, as for a run trained without a cache"]


def test_a_run_whose_dataset_moved_is_told_to_put_it_back(two_runs, tmp_path):
    """It was told to create one with `mmsr data demo`, which the content hash then refuses."""
    from mmsr.train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = str(tmp_path / "moved-away")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MMSRError, match=r"moved-away: the dataset this run was trained on \(.*moved-away, content "
                                        r"hash [0-9a-f]{12}\) is not there \(put it back at"):
        load_run(run, device="cpu")


def test_a_split_without_cases_is_named_not_blamed_on_ranks_files(two_runs):
    from mmsr.eval.compare import compare_runs

    with pytest.raises(MMSRError, match=r"seed0: the new split has no case to compare on"):  # small_demo has none
        compare_runs(str(two_runs[0]), str(two_runs[1]), "new", resamples=999)


def test_ranks_of_a_split_without_cases_and_to_a_path_that_cannot_be_written(two_runs, tmp_path):
    # It printed numpy's "invalid value" warnings and HR@10 nan (JSON NaN); a folder named like the
    # file ended in os.replace's traceback after the ranking.
    import warnings

    from mmsr.eval.run_ranks import write_run_ranks
    from mmsr_store.errors import UnwritableError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = write_run_ranks(str(two_runs[0]), tmp_path / "new.csv", "new")
    assert (result["cases"], result["HR@10"], result["NDCG@10"]) == (0, 0.0, 0.0)
    assert (tmp_path / "new.csv").read_text().splitlines() == ["user,item,rank"]
    (tmp_path / "taken.csv").mkdir()
    with pytest.raises(UnwritableError, match=r"taken.csv: cannot write this file: is a directory"):
        write_run_ranks(str(two_runs[0]), tmp_path / "taken.csv", "test")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UnwritableError, match=r"a-file/x.csv: cannot write this file: file exists"):
        write_run_ranks(str(two_runs[0]), tmp_path / "a-file" / "x.csv", "test")
    for split in ("nope", "test,valid"):  # named by its option, before the run is loaded
        with pytest.raises(MMSRError, match=re.escape(f"--split: unknown split {split!r} (use one of")):
            write_run_ranks(str(tmp_path / "no-such-run"), tmp_path / "x.csv", split)


def test_a_run_named_twice_in_a_side_is_refused_not_counted_as_two_seeds(mmsr_home):
    from mmsr.eval.compare import compare_runs

    runs = mmsr_home / "runs"
    for a, said in (("r1,r1", "'r1' is named twice"), (f"r1,{runs / 'r1'}", f"'r1' and '{runs / 'r1'}' are the same")):
        with pytest.raises(MMSRError, match=said + r".*one run named twice is not two seeds"):
            compare_runs(a, "r2", "test")  # refused before any run is read (none exists here)


def test_several_runs_on_a_side_are_averaged_case_by_case(two_runs):
    """Seeds on one side (A1,A2): each case's metric is their mean, so the side's figure is the
    mean of the runs' figures, its standard error is over those per-case means, and the same runs
    on both sides (in any order) differ by nothing."""
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.metrics import ndcg_at_k
    from mmsr.eval.run_ranks import rank_run

    a, b = map(str, two_runs)
    both = compare_runs(f"{a},{b}", a, "test", ks="10", resamples=999)
    single = compare_runs(a, b, "test", ks="10", resamples=999)
    assert both["runs_per_side"] == {"a": 2, "b": 1} and both["runs"]["a"] == f"{a}, {b}"
    for key, m in both["metrics"].items():
        assert m["a"] == pytest.approx((single["metrics"][key]["a"] + single["metrics"][key]["b"]) / 2, abs=1e-12)
        assert m["b"] == pytest.approx(single["metrics"][key]["a"], abs=1e-12)
    per_case = np.mean([ndcg_at_k(rank_run(run, "test", "paper", max_k=10).ranks, 10) for run in (a, b)], axis=0)
    assert both["metrics"]["NDCG@10"]["se_a"] == pytest.approx(per_case.std(ddof=1) / np.sqrt(len(per_case)))
    assert per_case.std() > 0 and not np.isin(per_case, (0.0, 1.0)).all()  # a real average, not one run's values
    swapped = compare_runs(f"{a},{b}", f"{b},{a}", "test", ks="10", resamples=999)
    for m in swapped["metrics"].values():
        assert m["difference"] == 0 and m["p_value"] == 1.0


def test_ranks_files_join_a_side_as_the_runs_they_hold(two_runs, tmp_path):
    """Another tool's seeds as one side: each file is matched to the runs' cases and averaged
    with the side's other members case by case, exactly as the runs whose ranks it holds."""
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.run_ranks import write_run_ranks

    a, b = two_runs
    file_a = write_run_ranks(str(a), tmp_path / "a.csv", "test", protocol="recbole", device="cpu")["path"]
    file_b = write_run_ranks(str(b), tmp_path / "b.csv", "test", protocol="recbole", device="cpu")["path"]
    runs = compare_runs(str(a), f"{a},{b}", "test", protocol="recbole", ks="10", resamples=999)
    assert runs["metrics"]["NDCG@10"]["difference"] != 0
    files = compare_runs(str(a), f"{file_a},{file_b}", "test", protocol="recbole", ks="10", resamples=999)
    mixed = compare_runs(str(a), f"{file_a},{b}", "test", protocol="recbole", ks="10", resamples=999)
    assert files["metrics"] == runs["metrics"] == mixed["metrics"]
    assert files["runs"]["b"] == f"{file_a}, {file_b}" and files["runs_per_side"] == {"a": 1, "b": 2}
    same = compare_runs(f"{a},{b}", f"{file_b},{file_a}", "test", protocol="recbole", ks="10", resamples=999)
    assert all(m["difference"] == 0 and m["p_value"] == 1.0 for m in same["metrics"].values())
    with pytest.raises(MMSRError, match="both sides are ranks files"):
        compare_runs(file_a, f"{file_a},{file_b}", "test", resamples=999)
    with pytest.raises(MMSRError, match="no run given"):
        compare_runs("  ", str(two_runs[0]), "test", resamples=999)
    with pytest.raises(MMSRError, match="an empty member in"):
        compare_runs(f"{a},,{b}", str(a), "test", resamples=999)


def test_shared_cases_with_several_files_pairs_the_cases_every_file_ranks(two_runs, tmp_path):
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.metrics import hit_at_k
    from mmsr.eval.run_ranks import rank_run

    a, b = two_runs
    side = rank_run(str(a), "test", "recbole", max_k=10, device="cpu", with_keys=True)
    keys, ranks = side.keys, side.ranks
    rows = [f"{u},{i},{r}" for u, i, r in zip(keys.users, keys.items, ranks)]
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("\n".join(["user,item,rank", *rows[1:]]) + "\n")  # lacks case 0
    second.write_text("\n".join(["user,item,rank", *rows[:5], *rows[6:], "nobody,x,1"]) + "\n")  # lacks case 5
    with pytest.raises(MMSRError, match="--shared-cases"):
        compare_runs(str(b), f"{first},{second}", "test", protocol="recbole", ks="10", resamples=999)
    result = compare_runs(str(b), f"{first},{second}", "test", protocol="recbole", ks="10", resamples=999,
                          shared_cases=True)
    assert result["cases"] == 198
    assert result["left_out"]["run_cases"] == 2 and result["left_out"]["files"] == 2
    assert result["left_out"]["file_rows"] == 1 and result["left_out"]["rows"][0].startswith(f"{second}:201: user nobody")
    kept = np.ones(len(ranks), dtype=bool)
    kept[[0, 5]] = False
    assert result["metrics"]["HR@10"]["b"] == pytest.approx(hit_at_k(ranks[kept], 10).mean(), abs=1e-12)


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
    config["dataset"] = "demo2"  # another dataset: named before anything is ranked (demo2 does not exist)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(MMSRError, match=r"trained on different datasets: .*seed0 on .*demo-small, .*other on demo2"):
        compare_runs(str(two_runs[0]), str(other), "test", ks="10", resamples=999)


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


def test_resampling_the_runs_too_counts_a_shift_one_seed_gives_every_case():
    """Two seeds a side. B's seeds differ from A's by a whole-run shift in opposite directions
    (one seed hits 40 more cases, the other 25 fewer): averaged case by case the pairing sees
    +0.0075 as resolved, but resampling the runs as well shows that the seeds drawn cannot tell
    it from their spread. A shift every seed of B shares stays resolved either way."""
    from mmsr.eval.compare import _paired, across_runs

    def across(a, b):  # one metric's result
        return across_runs({"metric": [a, b]}, 1999, seed=0)["metric"]

    rng = np.random.default_rng(5)
    base = (rng.random(2000) < 0.3).astype(float)
    misses = np.flatnonzero(base == 0)

    def hits_more(values, count):
        out = values.copy()
        out[rng.choice(np.flatnonzero(values == 0), count, replace=False)] = 1.0
        return out

    def hits_fewer(values, count):
        out = values.copy()
        out[rng.choice(np.flatnonzero(values == 1), count, replace=False)] = 0.0
        return out

    a = np.stack([base, base])
    spread = np.stack([hits_more(base, 40), hits_fewer(base, 10)])
    cases_only = _paired(a.mean(0), spread.mean(0), 1999, seed=0)
    assert cases_only["difference"] == pytest.approx(0.0075)
    assert cases_only["ci95"][0] > 0 and cases_only["p_value"] < 0.05
    both = across(a, spread)
    assert both["ci95"][0] < 0 < both["ci95"][1] and both["p_value"] > 0.05
    shared_shift = np.stack([hits_more(base, 60), hits_more(base, 60)])
    assert _paired(a.mean(0), shared_shift.mean(0), 1999, seed=0)["p_value"] < 0.01
    held = across(a, shared_shift)
    assert held["ci95"][0] > 0 and held["p_value"] < 0.01
    assert across(a, a) == {"ci95": [0.0, 0.0], "p_value": 1.0}
    # The same two runs on both sides: nothing observed, though redrawing the runs moves each side.
    itself = across(shared_shift, shared_shift)
    assert itself["p_value"] == 1.0 and itself["ci95"][0] < 0 < itself["ci95"][1]
    assert len(misses) > 100  # the draws above had room


def test_runs_are_resampled_too_only_with_two_runs_or_more_on_both_sides(two_runs, tmp_path):
    from mmsr.eval.compare import compare_runs

    a, b = map(str, two_runs)
    one = compare_runs(a, f"{a},{b}", "test", ks="10", resamples=999)
    assert all("across_runs" not in m for m in one["metrics"].values())
    # A copy of A: a second run with A's figures (one run named twice in a side is refused).
    shutil.copytree(a, tmp_path / "a-copy")
    a = f"{a},{tmp_path / 'a-copy'}"
    two = compare_runs(a, f"{two_runs[0]},{b}", "test", ks="10", resamples=999)
    for key, m in two["metrics"].items():
        assert m["difference"] == pytest.approx(one["metrics"][key]["difference"], abs=1e-12)
        low, high = m["across_runs"]["ci95"]
        assert low <= m["difference"] <= high and 0 < m["across_runs"]["p_value"] <= 1
        # the seeds' spread adds to the cases': never narrower than the cases-only interval by much
        assert high - low >= 0.9 * (m["ci95"][1] - m["ci95"][0])
    assert compare_runs(a, f"{two_runs[0]},{b}", "test", ks="10", resamples=999) == two


def test_the_compare_table_adds_the_runs_resampled_columns_for_seeds_on_both_sides(two_runs):
    from typer.testing import CliRunner

    from mmsr_cli.app import app

    a, b = map(str, two_runs)
    runner = CliRunner()
    wide = runner.invoke(app, ["compare", f"{a},{b}", f"{b},{a}", "--k", "10", "--resamples", "999"],
                         env={"COLUMNS": "250"})
    assert wide.exit_code == 0, wide.output
    assert "runs resampled too" in wide.output and "p, runs too" in wide.output
    narrow = runner.invoke(app, ["compare", a, b, "--k", "10", "--resamples", "999"], env={"COLUMNS": "250"})
    assert narrow.exit_code == 0, narrow.output
    assert "p (paired)" in narrow.output and "runs resampled too" not in narrow.output


def test_another_tools_ranks_file_pairs_with_a_run_as_that_run_would(two_runs, tmp_path):
    """A file holding run A's ranks (rows shuffled, IDs as the dataset spells them) compares
    with run B exactly as run A does: the file is matched by user and target, not by order."""
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.external_ranks import CaseKeys, write_ranks
    from mmsr.eval.run_ranks import rank_run

    a, b = two_runs
    side = rank_run(str(a), "test", "recbole", max_k=20, device="cpu", with_keys=True)
    keys = side.keys
    assert side.ranks.max() > 1 and len(set(keys.users)) == len(side.ranks) == 200
    order = np.random.default_rng(0).permutation(len(side.ranks))
    shuffled = CaseKeys("test", [keys.users[i] for i in order], [keys.items[i] for i in order], keys.num_items)
    ranks_file = write_ranks(tmp_path / "other_tool.csv", shuffled, side.ranks[order])
    runs = compare_runs(str(a), str(b), "test", protocol="recbole", ks="10,20", resamples=999)
    with_file = compare_runs(str(ranks_file), str(b), "test", protocol="recbole", ks="10,20", resamples=999)
    assert with_file["metrics"] == runs["metrics"] and with_file["runs"]["a"] == str(ranks_file)
    reversed_sides = compare_runs(str(b), str(ranks_file), "test", protocol="recbole", ks="10", resamples=999)
    assert reversed_sides["metrics"]["HR@10"]["difference"] == pytest.approx(-runs["metrics"]["HR@10"]["difference"])


def test_a_ranks_file_that_does_not_match_the_runs_cases_is_refused_with_its_line(two_runs, tmp_path, monkeypatch):
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.run_ranks import rank_run

    a, b = two_runs
    side = rank_run(str(a), "test", "recbole", max_k=10, device="cpu", with_keys=True)
    keys, ranks = side.keys, side.ranks

    def refused(text, pattern):
        path = tmp_path / "ranks.csv"
        path.write_text(text)
        with pytest.raises(MMSRError, match=pattern) as error:
            compare_runs(str(b), str(path), "test", protocol="recbole", ks="10", resamples=999)
        return str(error.value)

    rows = [f"{u},{i},{r}" for u, i, r in zip(keys.users, keys.items, ranks)]
    other_item = next(item for item in keys.items if item != keys.items[0])
    message = refused("\n".join(["user,item,rank", f"{keys.users[0]},{other_item},3", *rows[1:]]),
                      f"user {keys.users[0]}'s test target is item {keys.items[0]} in the run; this row has item")
    assert "ranks.csv:2" in message
    assert "ranks.csv:3" in refused("\n".join(["user,item,rank", rows[0], "nobody,x,1"]), "user nobody has no test case")
    assert "ranks.csv:3" in refused("\n".join(["user,item,rank", rows[0], rows[0]]), "a second row .* line 2")
    refused("\n".join(["user,item,rank", *rows[1:]]),
            f"1 of the run's 200 test cases have no row \\(the first: user {keys.users[0]}")
    for bad in ("0", "2.5", "", str(keys.num_items + 1)):
        assert "ranks.csv:2" in refused("\n".join(["user,item,rank", f"{keys.users[0]},{keys.items[0]},{bad}"]),
                                        "is not a whole number from 1 to")
    assert "ranks.csv:1" in refused("user,target,rank\n", "the header lacks item")
    with pytest.raises(MMSRError, match="no such ranks file"):
        compare_runs(str(a), str(tmp_path / "absent.csv"), "test", ks="10", resamples=999)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(MMSRError, match="folder.csv: a folder, not a ranks file"):
        compare_runs(str(a), str(tmp_path / "folder.csv"), "test", ks="10", resamples=999)
    # Both said before any run is ranked (minutes on a large catalogue), as a bad --k is.
    from mmsr.eval import compare as compare_lib

    monkeypatch.setattr(compare_lib, "rank_run", lambda *_, **__: 1 / 0)
    with pytest.raises(MMSRError, match="no such ranks file"):
        compare_runs(str(a), str(tmp_path / "absent.csv"), "test", ks="10", resamples=999)
    with pytest.raises(MMSRError, match="both sides are ranks files"):
        compare_runs(str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), "test", ks="10", resamples=999)


def test_a_split_with_two_cases_of_one_user_and_target_cannot_take_a_ranks_file(tmp_path):
    from mmsr.eval.external_ranks import CaseKeys, read_ranks

    path = tmp_path / "ranks.csv"
    path.write_text("user,item,rank\nu1,i1,4\nu1,i2,1\n")
    assert read_ranks(path, CaseKeys("cold", ["u1", "u1"], ["i2", "i1"], 10)).ranks.tolist() == [1, 4]
    with pytest.raises(MMSRError, match="two cases for user u1 with target i1"):
        read_ranks(path, CaseKeys("cold", ["u1", "u1"], ["i1", "i1"], 10))


def test_shared_cases_pairs_only_what_both_sides_rank_and_says_what_it_left_out(two_runs, tmp_path):
    """Another tool may split a few users differently (RecBole's float32 timestamps leave
    interactions up to 64 s apart in file order): --shared-cases pairs the rest and counts what
    it dropped."""
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.metrics import hit_at_k
    from mmsr.eval.run_ranks import rank_run

    a, b = two_runs
    side = rank_run(str(a), "test", "recbole", max_k=10, device="cpu", with_keys=True)
    keys, ranks = side.keys, side.ranks
    other_item = next(item for item in keys.items if item != keys.items[0])
    rows = [f"{keys.users[0]},{other_item},1"] + [f"{u},{i},{r}" for u, i, r in
                                                  zip(keys.users[2:], keys.items[2:], ranks[2:])]
    path = tmp_path / "ranks.csv"
    path.write_text("\n".join(["user,item,rank", *rows]) + "\n")
    with pytest.raises(MMSRError, match="--shared-cases"):
        compare_runs(str(b), str(path), "test", protocol="recbole", ks="10", resamples=999)
    result = compare_runs(str(b), str(path), "test", protocol="recbole", ks="10", resamples=999, shared_cases=True)
    assert result["cases"] == 198
    assert result["left_out"]["run_cases"] == 2 and result["left_out"]["file_rows"] == 1
    assert result["left_out"]["rows"][0].startswith(f"{path}:2: user {keys.users[0]}'s test target is item")
    assert result["metrics"]["HR@10"]["b"] == pytest.approx(hit_at_k(ranks[2:], 10).mean(), abs=1e-12)


def test_a_runs_written_ranks_are_exact_and_pair_with_it_as_the_run_itself(two_runs, tmp_path):
    """`mmsr ranks` writes every case's exact rank (not capped at a K): equal to a brute-force
    count over the model's own scores, and, read back by `mmsr compare`, the run's own figures."""
    import torch

    from mmsr.eval.compare import compare_runs
    from mmsr.eval.external_ranks import CaseKeys, read_ranks
    from mmsr.eval.run_ranks import write_run_ranks
    from mmsr.eval.towers import item_matrix, user_matrix
    from mmsr.train.run import load_run

    a, b = two_runs
    path = tmp_path / "new_folder" / "a.csv"
    written = write_run_ranks(str(a), path, "test", protocol="paper", device="cpu")
    assert written["cases"] == 200 and written["path"] == str(path) and written["batch_size"] == 256

    loaded = load_run(str(a), "best", "cpu")
    split = loaded.split
    cases = split.cases("test")
    targets = split.items[split.offsets[cases.users] + cases.positions]
    items = item_matrix(loaded.model, loaded.feed, split.num_items, 64, torch.device("cpu"))
    histories = [split.history(u, p, split.config.max_seq_len) for u, p in zip(cases.users, cases.positions)]
    users = user_matrix(loaded.model, items, histories, split.config.max_seq_len, 64, torch.device("cpu"))
    scores = users.double().numpy() @ loaded.model.score_vectors(items).double().numpy().T
    expected = []
    for case, (user, position, target) in enumerate(zip(cases.users, cases.positions, targets)):
        row = scores[case].copy()
        start = split.offsets[user]
        row[split.items[start:start + position]] = -np.inf  # the paper's protocol: the history never counts
        row[target] = -np.inf
        expected.append(1 + int((row > scores[case, target]).sum()))
    item_ids = loaded.dataset.item_ids()
    keys = CaseKeys("test", [split.user_ids[u] for u in cases.users], [item_ids[t] for t in targets], split.num_items)
    found = read_ranks(path, keys).ranks
    assert found.tolist() == expected and found.max() > 21  # beyond any K compare would ask for

    runs = compare_runs(str(a), str(b), "test", ks="10,20", resamples=999)
    assert compare_runs(str(path), str(b), "test", ks="10,20", resamples=999)["metrics"] == runs["metrics"]
    assert written["NDCG@10"] == pytest.approx(runs["metrics"]["NDCG@10"]["a"], abs=1e-12)
    with pytest.raises(MMSRError, match=r"a ranks file is a \.csv"):
        write_run_ranks(str(a), tmp_path / "a.txt", "test", device="cpu")


def test_an_unknown_checkpoint_name_is_refused_naming_the_two(two_runs):
    from mmsr.train.run import load_run

    with pytest.raises(MMSRError, match="unknown checkpoint 'foo'") as error:
        load_run(str(two_runs[0]), "foo", "cpu")
    assert "use best" in str(error.value.hint)


def test_a_ranks_file_saved_by_a_spreadsheet_or_with_a_short_row_is_read_or_refused_clearly(two_runs, tmp_path):
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.run_ranks import write_run_ranks

    a, b = two_runs
    plain = write_run_ranks(str(a), tmp_path / "a.csv", "test", protocol="recbole", device="cpu")["path"]
    text = open(plain).read()
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel saves a UTF-8 CSV
    assert compare_runs(str(bom), str(b), "test", protocol="recbole", ks="10", resamples=999)["metrics"] == \
        compare_runs(str(plain), str(b), "test", protocol="recbole", ks="10", resamples=999)["metrics"]
    short = tmp_path / "short.csv"
    lines = text.splitlines()
    short.write_text("\n".join([*lines[:3], lines[3].split(",")[0], *lines[4:]]) + "\n")
    with pytest.raises(MMSRError, match="the row has 1 field, the header names 3") as error:
        compare_runs(str(short), str(b), "test", protocol="recbole", ks="10", resamples=999)
    assert error.value.where.endswith("short.csv:4")


def test_resamples_are_bounded_on_both_sides_before_anything_loads():
    """10^20 resamples grew past 17 GB before anything was said: refused by name, as too few are,
    before either run is read (the runs named here do not exist)."""
    from mmsr.eval.compare import compare_runs

    for resamples, said in ((99, "--resamples: 99 is too few for a 95% interval (use at least 999"),
                            (10**20, "--resamples: 100,000,000,000,000,000,000 is more than the 1,000,000")):
        with pytest.raises(MMSRError) as refused:
            compare_runs("no-such-run-a", "no-such-run-b", resamples=resamples)
        assert str(refused.value).startswith(said), refused.value


def test_an_unknown_search_backend_is_refused_before_anything_loads():
    """`--search-backend bogus` was found only after the run and its item tower had loaded, and the
    error did not name the option; `eval` and `compare` now refuse it first (these runs do not exist)."""
    from mmsr.eval.compare import compare_runs
    from mmsr.eval.runner import evaluate_splits

    for call in (lambda: compare_runs("no-such-run-a", "no-such-run-b", search_backend="bogus"),
                 lambda: evaluate_splits("no-such-run", ["test"], search_backend="bogus")):
        with pytest.raises(MMSRError, match=r"^--search-backend: unknown ranking backend 'bogus' \(choose one of auto, "):
            call()
