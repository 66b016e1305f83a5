"""`mmsr plot`: Fig. 4 (items), Fig. 5 (users) and training curves, each a PNG and the CSV it was
drawn from, on tiny runs (an IDSR and an MMSR with random-initialised tiny encoders)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmsr.errors import MMSRError
from mmsr.plots import curves, items, users
from mmsr.plots.common import perplexity_for, sample, tsne_2d
from mmsr_cli.plot import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_demo, tiny_models):
    """idsr (2 epochs, every user), mmsr (1 epoch, 64 sampled users: a smaller split) on the small
    demo, and other (idsr on another dataset)."""
    from mmsr.data.demo import generate_demo
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run

    root = tmp_path_factory.mktemp("plot_runs")
    other_data = root / "demo-other"
    generate_demo(other_data, name="demo-other", items=40, users=30, seed=1, image_size=32)
    idsr = ["model.kind=idsr", "model.dim=16", "optim.batch_size=64"]
    specs = {
        "idsr": [f"dataset={small_demo}", *idsr, "optim.epochs=2"],
        "mmsr": [f"dataset={small_demo}", f"encoders.text_model={tiny_models['text']}",
                 f"encoders.vision_model={tiny_models['vision']}", "encoders.text_top_blocks=1",
                 "encoders.vision_top_blocks=1", "encoders.max_text_len=16", "encoders.image_size=32",
                 "model.dim=32", "optim.batch_size=32", "optim.epochs=1", "split.sample_users=64",
                 "eval_batch_size=128"],
        "other": [f"dataset={other_data}", *idsr, "optim.epochs=1"],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMSR_HOME", str(root / "home"))
        for name, overrides in specs.items():
            prepared = prepare_run(str(root / name), None, overrides, log=lambda text: None)
            train(prepared.config, prepared.root, from_cache=False, log=lambda text: None)
    return {name: str(root / name) for name in specs}


@pytest.fixture(scope="module")
def loaded(runs):
    from mmsr.train.run import load_run

    return {name: load_run(runs[name], device="cpu") for name in ("idsr", "mmsr")}


@pytest.fixture(scope="module")
def splits(loaded):
    return {name: run.split for name, run in loaded.items()}


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_png(path) -> None:
    path = Path(path)
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def assert_one_line(error: BaseException, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text


def assert_only_outputs(folder, names) -> None:
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(names)  # no temporary file left


def test_items_writes_a_png_and_its_csv(runs, splits, loaded, tmp_path):
    result = runner.invoke(app, ["items", "--run", runs["idsr"], "--items", "50", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    png, table = tmp_path / "items.png", tmp_path / "items.csv"
    assert result.stdout.split() == [str(png), str(table)]
    assert_png(png)
    assert_only_outputs(tmp_path, ["items.png", "items.csv"])
    rows = read_csv(table)
    assert list(rows[0]) == list(items.HEADER) and len(rows) == 50
    split = splits["idsr"]
    index = np.array([int(row["index"]) for row in rows])
    assert index.tolist() == sample(split.num_items, 50, 0).tolist()
    assert [row["item"] for row in rows] == [loaded["idsr"].dataset.items[i]["id"] for i in index]
    assert [int(row["train_count"]) for row in rows] == split.train_counts[index].tolist()
    assert [row["cold"] == "1" for row in rows] == (split.train_counts[index] < split.config.cold_threshold).tolist()
    assert 0 < sum(row["cold"] == "1" for row in rows) < 50  # both kinds drawn
    assert all(np.isfinite(float(row["x"])) and np.isfinite(float(row["y"])) for row in rows)


def test_items_compare_draws_the_same_items_in_two_panels(runs, splits, tmp_path):
    png, table = items.plot_items(runs["idsr"], tmp_path, compare=runs["mmsr"], items=40, seed=3)
    assert (png.name, table.name) == ("items-vs-mmsr.png", "items-vs-mmsr.csv")
    assert_png(png)
    rows = read_csv(table)
    assert len(rows) == 80
    panels = {name: [row for row in rows if row["run"] == name] for name in ("idsr", "mmsr")}
    assert [len(panel) for panel in panels.values()] == [40, 40]
    assert [row["index"] for row in panels["idsr"]] == [row["index"] for row in panels["mmsr"]]
    for name, panel in panels.items():  # each panel's popularity and cold flags come from its own split
        split = splits[name]
        index = np.array([int(row["index"]) for row in panel])
        assert [int(row["train_count"]) for row in panel] == split.train_counts[index].tolist()
        assert [row["cold"] == "1" for row in panel] == split.cold_items[index].tolist()
    assert [r["train_count"] for r in panels["idsr"]] != [r["train_count"] for r in panels["mmsr"]]


def test_items_are_reproducible_and_clip_perplexity_for_few_points(runs, tmp_path):
    # 5 points: sklearn refuses t-SNE's usual perplexity (30) for fewer than 31 samples.
    first = items.plot_items(runs["idsr"], tmp_path / "a", items=5, seed=1)
    again = items.plot_items(runs["idsr"], tmp_path / "b", items=5, seed=1)
    assert first[1].read_bytes() == again[1].read_bytes()
    assert len(read_csv(first[1])) == 5
    other = items.plot_items(runs["idsr"], tmp_path / "c", items=5, seed=2, distance="cosine", stem="fig4")
    assert [path.name for path in other] == ["fig4.png", "fig4.csv"]
    assert [r["index"] for r in read_csv(other[1])] != [r["index"] for r in read_csv(first[1])]


def test_perplexity_stays_below_the_sample():
    for points in (2, 3, 4, 10, 31, 90, 91, 1000):
        assert 1.0 <= perplexity_for(points) < points
    assert perplexity_for(1000) == 30.0
    for points in (0, 1, 2, 3, 6):
        xy = tsne_2d(np.random.default_rng(0).normal(size=(points, 8)), seed=0)
        assert xy.shape == (points, 2) and np.isfinite(xy).all()


def test_users_writes_histories_and_user_vectors(runs, splits, loaded):
    result = runner.invoke(app, ["users", "--run", runs["idsr"], "--users", "4"])
    assert result.exit_code == 0, result.output
    png = Path(runs["idsr"]) / "plots" / "users.png"  # the default output folder
    assert result.stdout.split() == [str(png), str(png.with_suffix(".csv"))]
    assert_png(png)
    rows = read_csv(png.with_suffix(".csv"))
    assert list(rows[0]) == list(users.HEADER)
    split = splits["idsr"]
    chosen = [row["user"] for row in rows if row["kind"] == "user"]
    assert chosen == [split.user_ids[k] for k in sample(split.num_users, 4, 0)]
    dataset = loaded["idsr"].dataset
    for user in chosen:
        u = split.user_ids.index(user)
        history = split.history(u, split.lengths()[u] - 1, split.config.max_seq_len)
        mine = [row for row in rows if row["user"] == user and row["kind"] == "history"]
        assert len(mine) == len(history)
        assert [row["cold"] == "1" for row in mine] == split.cold_items[history].tolist()
        assert [row["item"] for row in mine] == [dataset.items[i]["id"] for i in history]
    assert len(rows) == 4 + sum(row["kind"] == "history" for row in rows)


def test_users_compare_draws_the_same_users(runs, splits, tmp_path):
    png, table = users.plot_users(runs["idsr"], tmp_path, compare=runs["mmsr"], users=3, seed=5)
    assert png.name == "users-vs-mmsr.png"
    assert_png(png)
    rows = read_csv(table)
    chosen = {name: [r["user"] for r in rows if r["run"] == name and r["kind"] == "user"] for name in ("idsr", "mmsr")}
    assert chosen["idsr"] == chosen["mmsr"] and len(chosen["idsr"]) == 3
    assert set(chosen["mmsr"]) <= set(splits["mmsr"].user_ids)  # drawn from the users both splits keep


def test_curves_one_line_per_run_and_metric(runs, tmp_path):
    result = runner.invoke(app, ["curves", runs["idsr"], runs["mmsr"], "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "curves.png")
    rows = read_csv(tmp_path / "curves.csv")
    assert list(rows[0]) == list(curves.HEADER)
    metrics = ["loss", "HR@10", "NDCG@10", "HR@20", "NDCG@20"]
    assert list(dict.fromkeys(row["metric"] for row in rows)) == metrics
    assert len(rows) == (2 + 1) * len(metrics)  # idsr: 2 epochs, mmsr: 1
    records = [json.loads(line) for line in (Path(runs["idsr"]) / "metrics.jsonl").read_text().splitlines()]
    drawn = [float(r["value"]) for r in rows if r["run"] == "idsr" and r["metric"] == "HR@10"]
    assert drawn == [record["valid"]["HR@10"] for record in records]

    one = runner.invoke(app, ["curves", runs["idsr"], "--metric", "HR@10", "--metric", "lr", "--out", str(tmp_path)])
    assert one.exit_code == 0, one.output
    assert {row["metric"] for row in read_csv(tmp_path / "curves.csv")} == {"HR@10", "lr"}


def test_an_out_that_is_a_file_or_cannot_be_made_is_named(runs, tmp_path):
    """Both were tracebacks (FileExistsError, FileNotFoundError)."""
    (tmp_path / "afile").write_text("")
    for out, said in ((tmp_path / "afile", "--out names a file, not a folder"),
                      (tmp_path / "afile" / "below", "cannot make the output folder")):
        result = runner.invoke(app, ["curves", runs["idsr"], "--out", str(out)])
        assert result.exit_code != 0 and isinstance(result.exception, MMSRError) and said in str(result.exception)


def test_curves_figure_takes_records_without_torch(tmp_path):
    series = {"transfer": [{"epoch": e, "loss": 1 / e, "valid": {"HR@10": 0.1 * e}} for e in (1, 2, 3)],
              "scratch": [{"epoch": e, "loss": 2 / e, "valid": {"HR@10": 0.05 * e}} for e in (3, 1, 2)]}
    png, table = curves.curves_figure(series, "HR@10", tmp_path / "fig3.png")
    assert_png(png)
    rows = read_csv(table)
    assert [(r["run"], r["epoch"]) for r in rows] == [("transfer", "1"), ("transfer", "2"), ("transfer", "3"),
                                                      ("scratch", "1"), ("scratch", "2"), ("scratch", "3")]
    _, twice = curves.curves_figure(series, ["HR@10", "loss", "HR@10"], tmp_path / "twice.png")
    assert [(r["metric"], r["run"]) for r in read_csv(twice)][::3] == [("HR@10", "transfer"), ("HR@10", "scratch"),
                                                                       ("loss", "transfer"), ("loss", "scratch")]
    code = ("import sys, mmsr.plots.curves; "
            "assert not {'torch', 'sklearn'} & set(sys.modules), sorted({'torch', 'sklearn'} & set(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_curve_of_one_epoch_has_whole_epoch_ticks():
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    ax.plot([1], [0.5], marker="o", label="run")
    curves._style(ax, "loss")
    figure.canvas.draw()
    low, high = ax.get_xlim()
    shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
    plt.close(figure)
    assert shown == [1.0]  # it was 0.945, 0.960, ... 1.065


def test_help_of_every_command():
    for args in ([], ["items"], ["users"], ["curves"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_bad_runs_are_refused_in_one_line(runs, tmp_path):
    missing = tmp_path / "no-such-run"
    for args in (["items", "--run", str(missing)], ["users", "--run", str(missing)], ["curves", str(missing)],
                 ["items", "--run", runs["idsr"], "--compare", str(missing)]):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, MMSRError), args
        assert_one_line(result.exception, "run not found", str(missing))
    for plot in (items.plot_items, users.plot_users):
        with pytest.raises(MMSRError) as refused:
            plot(runs["idsr"], tmp_path, compare=runs["other"])
        assert_one_line(refused.value, "--compare run is on dataset 'demo-other'", runs["other"], "same dataset")
    assert not any(tmp_path.iterdir())  # nothing written for a refused plot


@pytest.mark.parametrize("args, message", [
    (["items", "--items", "0"], "--items: must be at least 1, not 0"),
    (["items", "--items", "-3"], "--items: must be at least 1, not -3"),
    (["users", "--users", "0"], "--users: must be at least 1, not 0"),
    (["items", "--distance", "manhattan"], "unknown distance 'manhattan'"),
])
def test_bad_options_are_refused(args, message, tmp_path):
    # Checked before any run is read: the run need not exist.
    result = runner.invoke(app, [args[0], "--run", str(tmp_path / "nope"), *args[1:]])
    assert isinstance(result.exception, MMSRError)
    assert_one_line(result.exception, message)


def test_bad_metrics_files_are_named(runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    for content, message in ((None, "no metrics.jsonl"), ("", "metrics.jsonl is empty"),
                             ('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo\n', "not JSON"),
                             ('{"loss": 1.0}\n', "without an integer epoch")):
        if content is not None:
            metrics.write_text(content)
        result = runner.invoke(app, ["curves", str(run)])
        assert isinstance(result.exception, MMSRError), content
        assert_one_line(result.exception, message, str(metrics))
    metrics.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo\n')
    assert f"{metrics}:2: not JSON" in str(runner.invoke(app, ["curves", str(run)]).exception)
    result = runner.invoke(app, ["curves", runs["idsr"], "--metric", "MRR@10", "--out", str(tmp_path)])
    assert_one_line(result.exception, "no metric 'MRR@10'", "HR@10", "loss")
