"""bench/seed_means.py: the means, standard errors and ratios on a case computed by hand; the committed
per-seed table reproduces docs/compare.md's "Where things stand"; a bench/losses.py log pools with it;
bad input is refused in one line naming the file."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import seed_means  # noqa: E402  (bench/seed_means.py)

HEADER = "model,config,seed,valid_ndcg10,recbole_ndcg10,section\n"


def _run(argv: list[str], capsys) -> dict:
    seed_means.main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_mean_standard_error_and_ratio_by_hand(tmp_path, capsys):
    table = tmp_path / "seeds.csv"
    table.write_text(HEADER + "A,a.toml,1,0.1,0.02,x\nA,a.toml,2,0.2,0.04,x\nA,a.toml,3,0.3,,x\n"
                              "B,b.toml,1,0.4,0.05,y\nB,b.toml,2,0.6,0.05,y\n")
    out = _run([str(table), "--ratio", "A/B"], capsys)
    a, b = out["models"]["A"], out["models"]["B"]
    assert a["seeds"] == [1, 2, 3] and a["valid_ndcg10"]["n"] == 3 and a["recbole_ndcg10"]["n"] == 2  # empty cell left out
    assert a["valid_ndcg10"]["mean"] == pytest.approx(0.2) and a["valid_ndcg10"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert b["valid_ndcg10"]["mean"] == pytest.approx(0.5) and b["valid_ndcg10"]["se"] == pytest.approx(0.1)
    assert b["recbole_ndcg10"]["se"] == pytest.approx(0.0)
    r = out["ratios"]["A/B"]["valid_ndcg10"]
    assert r["ratio"] == pytest.approx(0.4)
    assert r["se"] == pytest.approx(0.4 * math.sqrt((0.1 / math.sqrt(3) / 0.2) ** 2 + (0.1 / 0.5) ** 2))
    only = _run([str(table), "--seeds", "2", "--ratio", "A/B"], capsys)  # one seed: a mean, no standard error
    assert only["models"]["A"]["valid_ndcg10"] == {"mean": pytest.approx(0.2), "se": None, "n": 1}
    assert only["ratios"]["A/B"]["valid_ndcg10"] == {"ratio": pytest.approx(1 / 3), "se": None}


def test_paired_differences_by_hand(tmp_path, capsys):
    """Seed by seed over the seeds both have; an empty cell drops its seed from that column alone."""
    table = tmp_path / "seeds.csv"
    table.write_text(HEADER + "A,a.toml,1,0.30,0.05,x\nA,a.toml,2,0.20,,x\nA,a.toml,3,0.50,0.02,x\n"
                              "A,a.toml,9,0.9,0.9,x\n"
                              "B,b.toml,1,0.10,0.04,y\nB,b.toml,2,0.25,0.01,y\nB,b.toml,3,0.20,0.03,y\n")
    out = _run([str(table), "--paired", "A/B"], capsys)["paired"]["A/B"]
    assert out["seeds"] == [1, 2, 3]  # seed 9 is A's alone
    valid = out["valid_ndcg10"]  # differences 0.2, -0.05, 0.3
    assert valid["n"] == 3 and valid["up"] == 2 and valid["mean"] == pytest.approx(0.15)
    assert valid["se"] == pytest.approx(math.sqrt(((0.05 ** 2) + (0.2 ** 2) + (0.15 ** 2)) / 2) / math.sqrt(3))
    test = out["recbole_ndcg10"]  # seed 2 has no A figure: differences 0.01, -0.01
    assert test["n"] == 2 and test["up"] == 1 and test["mean"] == pytest.approx(0.0)
    assert test["se"] == pytest.approx(0.01)
    one = _run([str(table), "--paired", "A/B", "--seeds", "3"], capsys)["paired"]["A/B"]
    assert one["seeds"] == [3] and one["valid_ndcg10"] == {"mean": pytest.approx(0.3), "se": None, "n": 1, "up": 1}


def test_the_committed_table_gives_where_things_stand(capsys):
    """docs/compare.md's summary figures, to the digits it prints them with."""
    out = _run(["--ratio", "MMSR-T/IDSR"], capsys)
    idsr, text = out["models"]["IDSR"], out["models"]["MMSR-T"]
    assert len(idsr["seeds"]) == 36 and len(text["seeds"]) == 16

    def shown(cell):
        return round(cell["mean"], 4), round(cell["se"], 4)

    assert shown(idsr["recbole_hr10"]) == (0.1341, 0.0011) and shown(idsr["recbole_ndcg10"]) == (0.0664, 0.0006)
    assert [round(idsr[c]["mean"], 4) for c in ("paper_hr10", "paper_ndcg10", "cold_hr10", "cold_ndcg10")] == \
        [0.2032, 0.1061, 0.0691, 0.0367]
    assert [round(text[c]["mean"], 4) for c in ("recbole_hr10", "recbole_ndcg10", "paper_hr10", "paper_ndcg10",
                                                 "cold_hr10", "cold_ndcg10")] == [0.1273, 0.0620, 0.1964, 0.1034,
                                                                                  0.0180, 0.0082]
    ratios = out["ratios"]["MMSR-T/IDSR"]
    for column, figures in (("recbole_ndcg10", (0.933, 0.015)), ("paper_ndcg10", (0.974, 0.014))):
        assert (round(ratios[column]["ratio"], 3), round(ratios[column]["se"], 3)) == figures
    fresh = _run(["--ratio", "MMSR-T/IDSR", "--seeds", "42,43,44,45,46,47,48,49"], capsys)["ratios"]["MMSR-T/IDSR"]
    assert [(round(fresh[c]["ratio"], 3), round(fresh[c]["se"], 3)) for c in ("recbole_ndcg10", "paper_ndcg10")] == \
        [(0.935, 0.024), (0.977, 0.025)]  # both configs as they are, on seeds no setting was chosen on
    earlier = _run(["--ratio", "MMSR-T/IDSR-smoothing-0.2"], capsys)  # IDSR's config with label smoothing 0.2
    assert len(earlier["models"]["IDSR-smoothing-0.2"]["seeds"]) == 23
    assert [round(earlier["models"]["IDSR-smoothing-0.2"][c]["mean"], 4) for c in ("recbole_hr10", "recbole_ndcg10")] \
        == [0.1337, 0.0651]
    assert [round(earlier["ratios"]["MMSR-T/IDSR-smoothing-0.2"][c]["ratio"], 3)
            for c in ("recbole_ndcg10", "paper_ndcg10")] == [0.952, 0.984]
    same = _run(["--ratio", "MMSR-T/IDSR-smoothing-0.2", "--seeds", "22,23,24,25,26,27,28,29"],
                capsys)["ratios"]["MMSR-T/IDSR-smoothing-0.2"]  # the seeds both have
    assert (round(same["recbole_ndcg10"]["ratio"], 3), round(same["paper_ndcg10"]["ratio"], 3)) == (0.934, 0.961)
    before = _run(["--ratio", "MMSR-T/IDSR-no-smoothing"], capsys)  # the IDSR config before label smoothing
    assert len(before["models"]["IDSR-no-smoothing"]["seeds"]) == 34
    assert [round(before["models"]["IDSR-no-smoothing"][c]["mean"], 4) for c in ("recbole_hr10", "recbole_ndcg10")] \
        == [0.1346, 0.0660]
    assert [round(before["ratios"]["MMSR-T/IDSR-no-smoothing"][c]["ratio"], 3)
            for c in ("recbole_ndcg10", "paper_ndcg10")] == [0.939, 0.999]
    unsmoothed = _run(["--ratio", "MMSR-T-no-smoothing/IDSR"], capsys)  # MMSR-T's config before label smoothing
    assert len(unsmoothed["models"]["MMSR-T-no-smoothing"]["seeds"]) == 20
    assert [round(unsmoothed["models"]["MMSR-T-no-smoothing"][c]["mean"], 4) for c in ("recbole_hr10", "recbole_ndcg10")] \
        == [0.1197, 0.0579]
    assert [round(unsmoothed["ratios"]["MMSR-T-no-smoothing/IDSR"][c]["ratio"], 3)
            for c in ("recbole_ndcg10", "paper_ndcg10")] == [0.871, 0.923]
    more = _run(["--paired", "IDSR/IDSR-smoothing-0.2"], capsys)["paired"]["IDSR/IDSR-smoothing-0.2"]  # 0.3 against 0.2
    assert more["seeds"] == list(range(34, 42))
    assert [(round(more[c]["mean"], 4), round(more[c]["se"], 4)) for c in ("valid_ndcg10", "recbole_ndcg10")] == \
        [(0.0006, 0.0018), (0.0033, 0.0012)]
    text_smoothing = _run(["--paired", "MMSR-T/MMSR-T-no-smoothing"], capsys)["paired"]["MMSR-T/MMSR-T-no-smoothing"]
    assert text_smoothing["seeds"] == list(range(22, 30))
    assert [(round(text_smoothing[c]["mean"], 4), round(text_smoothing[c]["se"], 4)) for c in
            ("valid_ndcg10", "recbole_ndcg10", "cold_hr10")] == [(0.0029, 0.0014), (0.0043, 0.0011), (-0.0095, 0.0035)]
    smoothing = _run(["--paired", "IDSR-smoothing-0.2/IDSR-no-smoothing"],
                     capsys)["paired"]["IDSR-smoothing-0.2/IDSR-no-smoothing"]
    assert smoothing["seeds"] == list(range(19, 34))  # label smoothing's cost and gain, paired on fifteen seeds
    assert [(round(smoothing[c]["mean"], 4), round(smoothing[c]["se"], 4)) for c in
            ("valid_ndcg10", "recbole_hr10", "recbole_ndcg10")] == \
        [(0.0032, 0.0013), (0.0026, 0.0033), (0.0008, 0.0013)]
    assert (round(smoothing["cold_hr10"]["mean"], 3), round(smoothing["cold_hr10"]["se"], 3)) == (-0.037, 0.016)
    contrast = _run(["--paired", "IDSR/IDSR-contrastive"], capsys)["paired"]["IDSR/IDSR-contrastive"]
    assert contrast["seeds"] == [62, 63, 64, 65]  # the config minus the contrastive term, on its four seeds
    assert [(round(contrast[c]["mean"], 4), round(contrast[c]["se"], 4)) for c in
            ("valid_ndcg10", "recbole_hr10", "recbole_ndcg10")] == [(0.0092, 0.0026), (0.0035, 0.009), (0.0055, 0.0054)]
    assert (round(contrast["cold_hr10"]["mean"], 3), round(contrast["cold_hr10"]["se"], 3)) == (0.052, 0.023)
    beta2 = _run(["--paired", "IDSR-beta2-0.98/IDSR"], capsys)["paired"]["IDSR-beta2-0.98/IDSR"]
    assert beta2["seeds"] == [66, 67, 68, 69]  # Adam's beta2 at 0.98 minus the config, on its four seeds
    assert [(round(beta2[c]["mean"], 4), round(beta2[c]["se"], 4), beta2[c]["up"]) for c in
            ("valid_ndcg10", "recbole_hr10", "recbole_ndcg10")] == \
        [(-0.0006, 0.0024, 2), (-0.0069, 0.0019, 0), (-0.0054, 0.0021, 1)]


def test_where_things_stand_prints_the_tables_means_and_each_rows_section_exists(capsys):
    """The summary rows of docs/compare.md are the table's means as the script computes them, not
    copies kept by hand, and every table line names a section the notebook has."""
    summary = _run(["--ratio", "MMSR-T/IDSR"], capsys)["models"]
    notebook = (REPO / "docs" / "compare.md").read_text()
    for model, starts in (("IDSR", "| **mmsr IDSR-SASRec** "), ("MMSR-T", "| **mmsr MMSR-T**")):
        row = next(line for line in notebook.splitlines() if line.startswith(starts))
        cells = [cell.strip().strip("*") for cell in row.split("|")[1:-1]]
        figures = summary[model]
        pairs = [f"{figures[a]['mean']:.4f} / {figures[b]['mean']:.4f}" for a, b in
                 (("recbole_hr10", "recbole_ndcg10"), ("paper_hr10", "paper_ndcg10"), ("cold_hr10", "cold_ndcg10"))]
        assert cells[1].split()[0] == str(len(figures["seeds"])) and cells[2:5] == pairs, row
    headings = {line.lstrip("#").strip() for line in notebook.splitlines() if line.startswith("#")}
    with (REPO / "docs" / "movielens-seeds.csv").open(newline="") as handle:
        sections = {row["section"].split("; ")[0] for row in csv.DictReader(handle)}  # "; " adds a note
    assert [section for section in sections if not any(h.startswith(section) for h in headings)] == []


def _bench_run(seed: int | None, valid: float, model: str = "content", sets: tuple[str, ...] = ()) -> dict:
    """One run as bench/losses.py's log line shows it (the final object's runs lack the first four keys)."""
    figures = {"HR@10": 0.1, "NDCG@10": 0.05}
    return {"dataset": "ml-100k", "model": model, "loss": "mixed", "seed": seed,
            "config": "configs/movielens-mmsrt.toml",
            "overrides": ["optim.loss=mixed", *sets, "optim.negatives=unseen"] + ([f"seed={seed}"] if seed else []),
            "epochs_run": 20, "best_epoch": 10, "valid": {"HR@10": 0.2, "NDCG@10": valid},
            "test_recbole": figures, "test_paper": figures, "cold_paper": figures}


def _bench_line(seed: int | None, valid: float, **setting) -> str:
    return json.dumps(_bench_run(seed, valid, **setting))


def _final_object(*runs: dict) -> str:
    """The JSON bench/losses.py prints last: per-seed runs named "MODEL/LOSS, seed N" and a row of means."""
    named = {f"content/mixed, seed {run['seed']}": {k: v for k, v in run.items()
                                                     if k not in ("dataset", "model", "loss", "seed")} for run in runs}
    named[f"content/mixed, mean ± sd of {len(runs)} seeds"] = {"seeds": len(runs), "valid": {"NDCG@10": 9.0}}
    return json.dumps({"bench": "losses", "datasets": {"ml-100k": {"runs": named}}})


def test_a_bench_log_pools_under_its_label(tmp_path, capsys):
    table = tmp_path / "seeds.csv"
    table.write_text(HEADER + "A,a.toml,1,0.1,0.02,x\nA,a.toml,2,0.2,0.04,x\n")
    log = tmp_path / "lever.log"  # the per-run lines, then the final object repeating them
    log.write_text("$ train ...\n" + _bench_line(1, 0.3) + "\n" + _bench_line(2, 0.5) + "\n"
                   + _final_object(_bench_run(1, 0.3), _bench_run(2, 0.5)) + "\n")
    printed = tmp_path / "lever.json"  # the final object alone, as `> lever.json` keeps it
    printed.write_text(_final_object(_bench_run(1, 0.3), _bench_run(2, 0.5), _bench_run(3, 0.7)) + "\n")
    beside = tmp_path / "beside.log"  # more seeds of the setting, run side by side in another home
    beside.write_text(_bench_line(4, 0.1) + "\n")
    out = _run([str(table), "--add", f"{log}=A+lever", "--add", f"{printed}=A+json", "--add", f"{beside}=A+json",
                "--ratio", "A+lever/A"], capsys)
    lever = out["models"]["A+lever"]
    assert lever["seeds"] == [1, 2] and lever["valid_ndcg10"]["mean"] == pytest.approx(0.4)  # each seed once, no means row
    assert lever["recbole_ndcg10"]["mean"] == pytest.approx(0.05)
    assert out["models"]["A+json"]["seeds"] == [1, 2, 3, 4]
    assert out["models"]["A+json"]["valid_ndcg10"]["mean"] == pytest.approx(0.4)
    assert out["ratios"]["A+lever/A"]["valid_ndcg10"]["ratio"] == pytest.approx(0.4 / 0.15)


FILES = {  # the logs the bad-input cases name, by a placeholder
    "RUN": _bench_line(1, 0.3),
    "EMPTY": "$ train ...",
    "MODELS": _bench_line(1, 0.3) + "\n" + _bench_line(1, 0.3, model="idsr"),
    "SETS": _bench_line(1, 0.3) + "\n" + _bench_line(2, 0.3, sets=("model.dim=128",)),
    "UNSEEDED": _bench_line(None, 0.3),
    "FAILED": _bench_line(1, 0.3) + "\n" + json.dumps({**_bench_run(2, 0.3), "error": "loss went NaN"} | {"valid": None}),
    "CUT": _bench_line(1, 0.3) + "\n" + _bench_line(2, 0.3)[:40],
    "OTHER": _bench_line(2, 0.3, sets=("model.dim=128",)),
}


@pytest.mark.parametrize("content, argv, says", [
    (None, [], "no such file"),
    ("model,valid\nA,0.1\n", [], "no column seed"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\nA,a.toml,1,0.2,0.04,x\n", [], "line 3: A seed 1 is in the table twice"),
    (HEADER + "A,a.toml,1,0.1,n/a,x\n", [], "line 2: recbole_ndcg10 'n/a' is not a number"),
    (HEADER + "A,a.toml,1,0.1,0.02\n", [], "line 2: 6 fields expected"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--ratio", "A/B"], "no rows for B; the models are A"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--seeds", "7"], "--seeds 7: no row of"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\nA,a.toml,2,0.1,0.02,x\nB,b.toml,1,0.1,0.02,x\n",
     ["--seeds", "1,2", "--ratio", "A/B"], "the two sides kept different seeds (A alone has 2)"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "RUN=A"], "A is a model of the table"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "EMPTY=B"], "no bench/losses.py run in it"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "RUN=B", "--add", "RUN=B"], "seed 1 is under B already"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "RUN=B", "--add", "OTHER=B"],
     "is not that of the logs already under B (ml-100k content/mixed configs/movielens-mmsrt.toml"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "MODELS=B"], "runs of 2 settings (ml-100k content/mixed"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "SETS=B"], "model.dim=128 optim.negatives=unseen); --add takes one"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "UNSEEDED=B"], "line 1: a run of ml-100k/content/mixed made without --seeds"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "FAILED=B"], "line 2: ml-100k/content/mixed seed 2 failed (loss went NaN)"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--add", "CUT=B"], "line 2: not a whole JSON object"),
    (HEADER, [], "no rows under its header line, and no --add"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\n", ["--paired", "A/B"], "--paired A/B: no rows for B; the models are A"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\nB,b.toml,2,0.1,0.02,x\n", ["--paired", "A/B"],
     "no seed has rows of both (A: 1; B: 2); run them on the same seeds"),
    (HEADER + "A,a.toml,1,0.1,0.02,x\nB,b.toml,1,0.1,0.02,x\nB,b.toml,2,0.1,0.02,x\n",
     ["--paired", "A/B", "--seeds", "2"], "no seed kept has rows of both"),
])
def test_bad_input_is_refused_naming_the_file(tmp_path, capsys, content, argv, says):
    table = tmp_path / "seeds.csv"
    if content is not None:
        table.write_text(content)
    for name, text in FILES.items():
        (tmp_path / f"{name}.log").write_text(text + "\n")
    argv = [str(tmp_path / f"{arg.split('=')[0]}.log") + "=" + arg.split("=")[1] if arg.split("=")[0] in FILES else arg
            for arg in argv]
    with pytest.raises(SystemExit) as stopped:
        seed_means.main([str(table), *argv])
    message = str(stopped.value.code)
    assert message.startswith("error: ") and says in message and "\n" not in message


@pytest.mark.parametrize("argv, says", [
    (["--seeds", ","], "give seeds as numbers"), (["--seeds", "1,x"], "give seeds as numbers"),
    (["--add", "run.log=A/B"], "expected LOG=LABEL, a label without '/'"), (["--ratio", "AB"], "expected A/B"),
    (["--paired", "A/"], "expected A/B"),
])
def test_bad_options_are_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        seed_means.main(argv)
    assert stopped.value.code == 2 and says in capsys.readouterr().err
