"""`mmsr study`: study files, the resumable runner, results.csv and the paper-style report."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.study.report import cells, render_table
from mmsr.study.runner import plan_study, run_study, study_dir
from mmsr.study.spec import load_study
from mmsr.train.config import TrainConfig
from mmsr_cli.app import app

STUDY = """
[study]
title = "A tiny fusion table"
base = "base.json"
datasets = ["{dataset}"]
splits = ["test", "cold"]
metrics = ["HR@10", "NDCG@10"]
set = {{ "optim.epochs" = 2 }}

[[variant]]
name = "gate"
label = "Gate"
group = "Coarse"
set = {{ "model.fusion" = "gate" }}

[[variant]]
name = "sum"
label = "Summation"
group = "Coarse"
set = {{ "model.fusion" = "sum" }}

[[variant]]
name = "idsr"
label = "IDSR"
group = "IDs"
set = {{ "model.kind" = "idsr" }}

[[figure]]
kind = "curves"
name = "fig3"
variants = ["gate", "sum"]
metric = "HR@10"

[[figure]]
kind = "items"
name = "fig4"
variants = ["idsr", "gate"]
"""


@pytest.fixture
def study_file(tmp_path, tiny_overrides, small_demo):
    base = config_lib.parse_overrides([o for o in tiny_overrides if not o.startswith(("dataset=", "optim.epochs="))])
    (tmp_path / "base.json").write_text(json.dumps(base))
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.format(dataset=small_demo))
    return path


def _quiet(_text: str) -> None:
    pass


def test_study_trains_every_variant_once_and_reports_what_it_measured(study_file, mmsr_home):
    out = run_study(study_file, log=_quiet)
    assert out == mmsr_home / "studies" / "tiny"
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["split"]) for r in rows] == [(v, s) for v in ("gate", "sum", "idsr")
                                                          for s in ("cold", "test")]
    # results.csv holds what `mmsr eval` wrote for each run and split
    for row in rows:
        evaluated = json.loads((Path(row["run"]) / f"eval_{row['split']}.json").read_text())
        assert float(row["HR@10"]) == pytest.approx(evaluated["metrics"]["HR@10"], abs=1e-6)
        assert int(row["epochs_run"]) == 2
    # the gate and sum variants share one cache: one cache directory for the dataset
    caches = [p for p in (mmsr_home / "caches").rglob("report.json")]
    assert len(caches) == 1
    # report.md's table carries the csv's numbers, best in bold per column
    report = (out / "report.md").read_text()
    test_hr = {r["label"]: float(r["HR@10"]) for r in rows if r["split"] == "test"}
    best = max(test_hr, key=test_hr.get)
    line = next(line for line in report.splitlines() if line.startswith(f"| {best} |"))
    assert f"**{test_hr[best]:.4f}**" in line
    assert "| *Coarse* |" in report and "| *IDs* |" in report
    # the figures, with the data they were drawn from, linked from the report
    for stem in ("fig3", "fig4"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{stem}]({stem}.png)" in report
    with open(out / "fig3.csv", newline="") as handle:
        drawn = {(r["run"], r["metric"]) for r in csv.DictReader(handle)}
    assert drawn == {("Gate", "HR@10"), ("Summation", "HR@10")}

    # a rerun trains nothing: finished runs keep their files untouched
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}
    messages = []
    run_study(study_file, log=messages.append)
    assert any("3 finished already, 0 to train" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == stamps

    # `mmsr study report` re-renders without training
    (out / "report.md").unlink()
    result = CliRunner().invoke(app, ["study", "report", "tiny"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == report

    # a split the study gained since is evaluated without training
    study_file.write_text(study_file.read_text().replace('splits = ["test", "cold"]', 'splits = ["test", "cold", "valid"]'))
    messages = []
    run_study(study_file, log=messages.append)
    assert any("0 to train" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == stamps
    with open(out / "results.csv", newline="") as handle:
        assert sorted({r["split"] for r in csv.DictReader(handle)}) == ["cold", "test", "valid"]

    # a finished variant whose settings changed is refused, not reused, even when not asked for
    study_file.write_text(study_file.read_text().replace('"model.fusion" = "sum"', '"model.fusion" = "concat"'))
    with pytest.raises(MMSRError, match="changed since they ran: sum--demo-small--seed0"):
        run_study(study_file, only=["idsr"], log=_quiet)
    # and `study plan` says the same, rather than listing that run as finished
    planned = CliRunner().invoke(app, ["study", "plan", str(study_file)])
    assert isinstance(planned.exception, MMSRError) and "finished" not in planned.output
    assert "changed since they ran: sum--demo-small--seed0" in str(planned.exception)


def test_a_partial_study_reports_the_command_that_makes_what_it_shows(study_file, mmsr_home):
    """Run with --only and --out NAME, the report's commands train its variants alone and
    re-render its own directory, not the whole study's."""
    out = run_study(study_file, only=["gate"], seeds=[0], out="gate-only", log=_quiet)
    assert out == mmsr_home / "studies" / "gate-only"
    report = (out / "report.md").read_text()
    assert f"Reproduce: `mmsr study run {study_file} --seeds 0 --out gate-only --only gate`" in report
    assert "Re-render: `mmsr study report gate-only`" in report
    result = CliRunner().invoke(app, ["study", "report", "gate-only"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == report


def test_study_killed_with_sigkill_resumes_without_retraining_finished_runs(study_file, mmsr_home):
    env = {**os.environ, "MMSR_HOME": str(mmsr_home), "MMSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmsr_cli.app", "study", "run", str(study_file), "--only", "gate,sum"]
    first = mmsr_home / "studies" / "tiny" / "runs"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not list(first.glob("gate--*/study.json")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = next(first.glob("gate--*"))
    stamps = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 finished already, 1 to train" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()} == stamps
    assert next(first.glob("sum--*/study.json")).is_file()
    with open(mmsr_home / "studies" / "tiny" / "results.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_seeds_repeat_each_variant_and_only_keeps_the_named_ones(study_file):
    study = load_study(study_file)
    runs = plan_study(study, study_dir("x"), seeds=[0, 1], only=["idsr"])
    assert [r.name for r in runs] == [f"idsr--demo-small--seed{s}" for s in (0, 1)]
    assert [r.config.seed for r in runs] == [0, 1]
    with pytest.raises(MMSRError, match="no variant 'nope'.*gate, sum, idsr"):
        plan_study(study, study_dir("x"), only=["nope"])
    with pytest.raises(MMSRError, match="unknown key optim.epoch"):
        plan_study(study, study_dir("x"), sets=["optim.epoch=3"])


def test_plan_refuses_a_missing_dataset_and_report_the_study_file(study_file, mmsr_home):
    """Both before anything is written: `study plan` does not list runs `study run` cannot make,
    and `study report` given the study file names the directory to give instead."""
    from mmsr.study.report import report_study
    from mmsr.study.runner import plan_study_file

    with pytest.raises(MMSRError, match="dataset 'nope' not found") as error:
        plan_study_file(study_file, datasets=["nope"])
    assert "mmsr data demo" in str(error.value) and not (mmsr_home / "studies").exists()
    with pytest.raises(MMSRError, match="a study file, not a study directory") as error:
        report_study(study_file)
    assert "give the directory its runs went to: `tiny`" in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("[study]", "[study]\ncolour = 1"), "unknown key study.colour"),
    (lambda s: s.replace('"model.fusion" = "gate"', '"model.fuson" = "gate"'),
     "variant 'gate': unknown key model.fuson"),
    (lambda s: s.replace('name = "sum"', 'name = "sum"\ninit_from = "nothing"'), "init_from 'nothing' is no variant"),
    # passed `study plan`, trained the source, then `mmsr train --init-from` refused the transfer
    (lambda s: s.replace('name = "sum"', 'name = "sum"\ninit_from = "idsr"'),
     "variant 'sum' starts from 'idsr', but variant 'idsr' has model.kind=idsr: item-ID embeddings cannot transfer"),
    (lambda s: s.replace('splits = ["test", "cold"]', 'splits = ["tset"]'), "unknown split 'tset'"),
    (lambda s: s.replace('name = "idsr"', 'name = "gate"'), "two variants are called 'gate'"),
    (lambda s: s.replace('label = "IDSR"', 'label = "Gate"'), "two variants share the label 'Gate'"),
    (lambda s: s.replace('"model.kind" = "idsr"', '"model.kind" = "idsr", dataset = "x"'), "variant 'idsr' set: dataset"),
    (lambda s: s + '\n[data.x]\ndemo = { user = 4 }\n', "unknown key data.x.demo.user"),
    (lambda s: s + '\n[data.x]\ndemo = { items = -5 }\n', "data.x.demo: -5 items and 2000 users: the demo needs"),
    (lambda s: s + '\n[data.x]\ndemo = { seed = -1 }\n', "data.x.demo: seed -1 must be from 0 to 4294967295"),
    # said "got 'metric'" of a key never written, then "is not a metric of the study (known: )"
    (lambda s: s + '\n[table]\nrows = ["variant"]\ncolumns = ["split", "metric"]\nimprov = { of = "Gate" }\n',
     "table.improv.along must be variant or column (the models compared), not given, and the last of "
     "table.columns is 'metric'"),
    (lambda s: s.replace('metric = "HR@10"', 'metric = "HR@11x"'), "figure[0].metric 'HR@11x'"),
    (lambda s: s.replace('name = "idsr"', 'name = "idsr"\nconfig = "peers/idsr.toml"'),
     "variant 'idsr': config"),
    (lambda s: s.replace('name = "idsr"', 'name = "idsr"\nconfig = 3'), "variant 'idsr': config must be the path"),
    (lambda s: s.replace('name = "sum"', 'name = "sum"\nlable = "x"'), "variant 'sum': unknown key lable (known: "),
    (lambda s: s.replace('name = "sum"', 'nam = "sum"'), "[[variant]] number 2: unknown key nam"),
    (lambda s: s + "\n[table]\nrows = [\"variant\"]\ncolumns = [\"metrics\"]\n", "unknown dimension 'metrics'"),
    # Each of these was accepted: a base that is not a path ran the defaults, a name of "." trained into
    # the current folder, an empty list trained and showed nothing, one [figure] table was ignored.
    (lambda s: s.replace('base = "base.json"', "base = 5"), "study.base must be the path of a training config"),
    (lambda s: s.replace('[study]', '[study]\nname = "."'), "study.name must be letters"),
    (lambda s: s.replace('[study]', '[study]\nname = "../../escape"'), "study.name must be letters"),
    (lambda s: s.replace('splits = ["test", "cold"]', "splits = []"), "study.splits is empty"),
    (lambda s: s.replace('metrics = ["HR@10", "NDCG@10"]', "metrics = []"), "study.metrics is empty"),
    (lambda s: s.replace('title = "A tiny fusion table"', "title = 3"), "study.title must be text, got 3"),
    (lambda s: s.replace('group = "IDs"', "group = { x = 1 }"), "variant 'idsr': group must be text"),
    (lambda s: s.replace("[[figure]]\nkind = \"items\"", "[figure]\nkind = \"items\"").replace(
        "[[figure]]\nkind = \"curves\"", "[xfigure]\nkind = \"curves\""), "[figure] must be written [[figure]]"),
])
def test_bad_study_files_are_refused_in_one_line(study_file, edit, message):
    study_file.write_text(edit(study_file.read_text()))
    with pytest.raises(MMSRError, match=re.escape(message)) as error:
        load_study(study_file)
    assert "\n" not in str(error.value) and str(study_file) in str(error.value)
    result = CliRunner().invoke(app, ["study", "plan", str(study_file)])
    assert result.exit_code != 0


def test_grid_table_with_improv_and_seed_spread(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text("""
[study]
datasets = ["a", "b"]
metrics = ["HR@10"]
[grid]
rows = { SASRec = { "model.sequence" = "sasrec" }, GRU4Rec = { "model.sequence" = "gru4rec" } }
columns = { IDSR = { "model.kind" = "idsr" }, MMSR = {} }
[table]
rows = ["variant"]
columns = ["dataset", "split", "metric", "column"]
improv = { of = "MMSR", over = ["IDSR"], along = "column" }
""")
    study = load_study(path, check_configs=False)
    assert [v.name for v in study.variants] == ["sasrec-idsr", "sasrec-mmsr", "gru4rec-idsr", "gru4rec-mmsr"]
    values = {("SASRec", "IDSR"): [0.10, 0.12], ("SASRec", "MMSR"): [0.22, 0.22], ("GRU4Rec", "IDSR"): [0.05, 0.05],
              ("GRU4Rec", "MMSR"): [0.04, 0.04]}
    rows = [{"label": label, "column": column, "dataset": dataset, "split": "test", "seed": seed, "HR@10": hr,
             "_in_table": True}
            for (label, column), hrs in values.items() for seed, hr in enumerate(hrs) for dataset in ("a", "b")]
    table = render_table(study, cells(study, rows))
    lines = table.splitlines()
    assert lines[0] == ("| variant | a HR@10 IDSR | a HR@10 MMSR | a HR@10 Improv. | b HR@10 IDSR | b HR@10 MMSR "
                        "| b HR@10 Improv. |")
    sasrec = next(line for line in lines if line.startswith("| SASRec |"))
    assert "0.1100 ± 0.0141" in sasrec and "**0.2200 ± 0.0000**" in sasrec and "+100.00%" in sasrec
    gru = next(line for line in lines if line.startswith("| GRU4Rec |"))
    assert "-20.00%" in gru


def test_ties_share_a_mark_and_all_equal_gets_none(tmp_path):
    path = tmp_path / "ties.toml"
    path.write_text('[study]\nmetrics = ["HR@10", "NDCG@10"]\n' + "".join(
        f'[[variant]]\nname = "{name}"\n' for name in ("a", "b", "c")))
    study = load_study(path, check_configs=False)
    values = {"a": (0.25, 0.0), "b": (0.25, 0.0), "c": (0.10, 0.0)}
    rows = [{"label": name, "column": "", "dataset": "demo", "split": "test", "seed": 0, "HR@10": hr,
             "NDCG@10": ndcg, "_in_table": True} for name, (hr, ndcg) in values.items()]
    lines = render_table(study, cells(study, rows)).splitlines()
    assert lines[2:] == ["| a | **0.2500** | 0.0000 |", "| b | **0.2500** | 0.0000 |", "| c | <u>0.1000</u> | 0.0000 |"]


def test_a_variant_starts_from_its_own_config_and_the_study_set_still_applies(tmp_path):
    (tmp_path / "peers").mkdir()
    (tmp_path / "base.toml").write_text('seed = 5\n[model]\nkind = "idsr"\ndim = 24\n')
    (tmp_path / "peers" / "peer.toml").write_text('base = "../base.toml"\n[model]\ndim = 16\nsequence = "gru4rec"\n')
    (tmp_path / "studies").mkdir()
    path = tmp_path / "studies" / "s.toml"
    path.write_text('[study]\nbase = "../base.toml"\nset = { "optim.epochs" = 3 }\n'
                    '[[variant]]\nname = "plain"\n'
                    '[[variant]]\nname = "peer"\nconfig = "../peers/peer.toml"\nset = { "model.dropout" = 0.3 }\n')
    study = load_study(path)
    plain, peer = (study.resolve(v, "demo") for v in study.variants)
    assert (plain.seed, plain.model.dim, plain.model.sequence, plain.optim.epochs) == (5, 24, "sasrec", 3)
    assert (peer.seed, peer.model.dim, peer.model.sequence, peer.optim.epochs, peer.model.dropout) == \
        (5, 16, "gru4rec", 3, 0.3)


def test_table_vi_rows_train_as_their_vlp_configs_say():
    """Each VLP row is its configs/vlp/ file (the CLIP, GroupViT and FLAVA rows once trained no
    top block, against the paper's top two, because they repeated those files' settings)."""
    root = Path(__file__).resolve().parents[1] / "configs"
    study = load_study(root / "paper" / "table6-vlp.toml")
    for variant in study.variants:
        if variant.name == "mmsr":
            continue
        shipped = config_lib.load(TrainConfig, root / "vlp" / f"{variant.name}.toml")
        assert study.resolve(variant, "demo") == shipped, variant.name
        assert shipped.encoders.text_top_blocks == 2 or shipped.encoders.joint_model, variant.name


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_study_file_loads_and_builds_each_variants_config(path):
    study = load_study(path)  # check_configs: every variant's TrainConfig is built
    assert study.variants and study.title


def test_merge_puts_the_finished_runs_of_partial_studies_in_one_and_refuses_a_mix(study_file, mmsr_home):
    """Two machines' `--only` halves of one study merged: one table, nothing retrained, the files
    linked; another study file, other --set options or a run with another config are refused
    before anything is written."""
    from mmsr.study.merge import merge_studies

    part_a = run_study(study_file, only=["gate"], seeds=[0], out="part-a", log=_quiet)
    part_b = run_study(study_file, only=["sum"], seeds=[0], out="part-b", log=_quiet)
    merged = merge_studies(["part-a", "part-b"], "whole", log=_quiet)
    assert merged == mmsr_home / "studies" / "whole"
    with open(merged / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["variant"] for r in rows}) == ["gate", "sum"]
    for row in rows:  # the merged rows are the sources' own numbers, read from the merged runs
        assert Path(row["run"]).parent == merged / "runs"
        source = part_a if row["variant"] == "gate" else part_b
        evaluated = json.loads((source / "runs" / Path(row["run"]).name / f"eval_{row['split']}.json").read_text())
        assert float(row["HR@10"]) == pytest.approx(evaluated["metrics"]["HR@10"], abs=1e-6)
    checkpoint = merged / "runs" / "gate--demo-small--seed0" / "checkpoints" / "best.pt"
    assert checkpoint.stat().st_ino == (part_a / "runs" / checkpoint.parent.parent.name / "checkpoints" /
                                        "best.pt").stat().st_ino  # linked, not copied
    report = (merged / "report.md").read_text()
    assert f"Reproduce: `mmsr study run {study_file} --seeds 0 --out whole --only gate,sum`" in report
    messages = []  # the merged directory is a study directory like any other: nothing to train
    run_study(study_file, only=["gate", "sum"], seeds=[0], out="whole", log=messages.append)
    assert any("2 finished already, 0 to train" in m for m in messages)
    messages = []  # merging a source into a directory that already holds its runs moves nothing
    merge_studies(["part-a"], "whole", log=messages.append)
    assert "merged 0 run(s)" in messages[0] and "(2 in all)" in messages[0]

    # refused, and nothing written
    other = mmsr_home / "studies" / "other-lr"  # as if run with --set optim.lr=0.002
    other.mkdir()
    for name in ("study.toml", "origin.json"):
        (other / name).write_text((part_a / name).read_text().replace("--seeds 0", "--seeds 0 --set optim.lr=0.002"))
    with pytest.raises(MMSRError, match="was run with --set optim.lr=0.002"):
        merge_studies(["part-a", "other-lr"], "mixed", log=_quiet)
    config = part_b / "runs" / "sum--demo-small--seed0" / "config.json"
    (part_b / "runs" / "gate--demo-small--seed0").mkdir()
    (part_b / "runs" / "gate--demo-small--seed0" / "config.json").write_text(
        config.read_text().replace('"sum"', '"concat"'))
    (part_b / "runs" / "gate--demo-small--seed0" / "study.json").write_text("{}")
    with pytest.raises(MMSRError, match="same run name, other config"):
        merge_studies(["part-a", "part-b"], "mixed", log=_quiet)
    (part_b / "study.toml").write_text((part_b / "study.toml").read_text().replace("A tiny", "Another"))
    with pytest.raises(MMSRError, match="another study file"):
        merge_studies(["part-a", "part-b"], "mixed", log=_quiet)
    assert not (mmsr_home / "studies" / "mixed").exists()


def test_two_datasets_of_one_name_are_refused_before_they_share_runs(study_file, small_demo, mmsr_home, tmp_path):
    """`demo` and `/elsewhere/demo` gave their runs one directory: a study run on the second took
    the first's finished runs as its own ("3 finished already, 0 to train") and reported the
    first's figures under the second's command. Refused in one plan, and across two runs of the
    study (its directory's runs are planned with it)."""
    import shutil

    from mmsr.study.runner import plan_study_file
    from mmsr.train.run import save_config

    other = tmp_path / "elsewhere" / Path(small_demo).name
    shutil.copytree(small_demo, other)
    with pytest.raises(MMSRError, match="have one name") as error:
        plan_study_file(study_file, datasets=[str(small_demo), str(other)])
    assert "would share the directory" in str(error.value)
    study, out, runs = plan_study_file(study_file, only=["idsr"])
    runs[0].root.mkdir(parents=True)  # a run of the study's own dataset, already there
    save_config(runs[0].root / "config.json", runs[0].config)
    with pytest.raises(MMSRError, match="have one name"):
        plan_study_file(study_file, datasets=[str(other)], only=["idsr"])


def test_a_bad_set_on_a_study_is_named_as_the_sets(study_file, mmsr_home):
    """It was named as the variant's config, which does not say it."""
    with pytest.raises(MMSRError, match=r"--set model.dim must be int, got 'abc'"):
        plan_study(load_study(study_file), study_dir("x"), sets=["model.dim=abc"])
    with pytest.raises(MMSRError, match=r"invalid --set: unknown key optim.epoch"):
        plan_study(load_study(study_file), study_dir("x"), sets=["optim.epoch=3"])


def test_a_set_dataset_is_refused_not_ignored(study_file, mmsr_home):
    with pytest.raises(MMSRError, match=r"--set dataset=\.\.\. would be ignored.*--dataset"):
        plan_study(load_study(study_file), study_dir("x"), sets=["dataset=other"])


def test_a_study_file_names_its_study_as_it_is_named(tmp_path):
    """Without study.name the file's own name is the study's, whatever it is (only a name given
    in the file must be a plain one)."""
    path = tmp_path / "my study.toml"
    path.write_text('[study]\n[[variant]]\nname = "a"\n')
    assert load_study(path, check_configs=False).name == "my study"


def test_a_study_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'[study]\ntitle = "caf\xe9"\n')  # a UnicodeDecodeError traceback before
    with pytest.raises(MMSRError, match=r"latin.toml: not UTF-8: byte 0xe9 at line 2"):
        load_study(path)


def test_a_stopped_study_says_to_rerun_the_study_not_mmsr_train(study_file, mmsr_home, monkeypatch):
    """Ctrl-C in a study's run said to continue with `mmsr train --run ... --resume`, which leaves
    the study's other runs and its report behind."""
    import mmsr.study.runner as runner
    from mmsr.train.interrupt import TrainingInterrupted
    from mmsr.train.recipe import _continue_hint

    def stopped(*_args, **_kwargs):
        raise TrainingInterrupted(2, "SIGINT at epoch 1, step 3 of 7: checkpoint saved",
                                  hint=_continue_hint(Path("r"), True, 1))

    monkeypatch.setattr(runner, "train", stopped)
    with pytest.raises(TrainingInterrupted) as stop:
        run_study(study_file, only=["idsr"], log=_quiet)
    assert f"rerun `mmsr study run {study_file} --only idsr`: the study goes on" in str(stop.value)
    assert stop.value.exit_status == 130
    assert "--run-dir r --resume --from-cache` under the same torchrun options" in _continue_hint(Path("r"), True, 2)


def test_a_diverged_study_run_says_which_variant_to_change_and_to_rerun_the_study(study_file, mmsr_home):
    """A variant that diverged said to start again with `mmsr train ... --overwrite` (or resume
    with --resume), options of another command; the study's own way is to change the variant,
    delete its run and rerun the study."""
    from mmsr.train.recipe import TrainingDiverged

    with pytest.raises(TrainingDiverged) as diverged:
        run_study(study_file, only=["idsr"], sets=["optim.lr=1e308"], log=_quiet)
    said = str(diverged.value)
    root = mmsr_home / "studies" / "tiny" / "runs"
    run = next(root.iterdir())
    assert run.name.startswith("idsr--") and said.startswith(f"{run}: training diverged: ")
    # The lr came from the --set, which overrides the variant: that is what to lower.
    assert said.endswith(f"(lower optim.lr in the `--set optim.lr=1e308` given (or keep optim.grad_clip > 0), delete "
                         f"{run}, and rerun `mmsr study run {study_file} --set optim.lr=1e308 --only idsr`)"), said
    from mmsr.study.runner import _lower_lr, plan_study_file

    study, _, runs = plan_study_file(study_file, only=["idsr"], sets=["optim.lr=1e308"])
    assert _lower_lr(study, runs[0], ["seed=3"]) == \
        f"lower optim.lr of variant 'idsr' in {study_file} (or keep optim.grad_clip > 0)"


def test_another_study_files_directory_is_not_taken_over(study_file, mmsr_home, tmp_path):
    """`study run OTHER.toml --out DIR`, DIR holding this study's runs, replaced its study.toml and
    origin.json without a word and dropped its runs from the report."""
    from mmsr.study.runner import plan_study_file

    out = mmsr_home / "studies" / "shared"
    out.mkdir(parents=True)
    other = tmp_path / "other.toml"
    other.write_text(study_file.read_text())
    (out / "origin.json").write_text(json.dumps({"name": "other", "file": str(other), "command": "x"}))
    with pytest.raises(MMSRError, match=r"holds the runs of another study file, .*other.toml.*--out NAME"):
        plan_study_file(study_file, out="shared")
    (out / "study.toml").write_text(study_file.read_text())  # the same study, reached by another path
    plan_study_file(study_file, out="shared")
    (out / "study.toml").unlink()
    other.unlink()  # that file is gone (moved, renamed): this one goes on there
    plan_study_file(study_file, out="shared")
    (out / "origin.json").write_text(json.dumps({"name": "tiny", "file": str(study_file.resolve()), "command": "x"}))
    plan_study_file(study_file, out="shared")  # its own directory


def test_a_file_in_the_way_of_a_study_folder_is_named_in_one_line(tmp_path):
    """`study run --out FILE` and `study merge --out FILE/sub` ended in FileExistsError or
    NotADirectoryError with a traceback."""
    from mmsr.paths import make_folder

    (tmp_path / "out.txt").write_text("mine")
    for where in (tmp_path / "out.txt", tmp_path / "out.txt" / "sub"):
        with pytest.raises(MMSRError, match=re.escape(f"{where}: a file stands where the study folder goes")):
            make_folder(where, "study", hint="pass --out a folder")
    assert (tmp_path / "out.txt").read_text() == "mine"
    assert make_folder(tmp_path / "new" / "study", "study", hint="").is_dir()
