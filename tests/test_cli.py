"""The `mmsr` command as a user runs it: a real subprocess, exit codes, one-line errors."""

import inspect
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsr.config import load, parse_overrides
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig


def mmsr(*args, home):
    env = dict(os.environ, MMSR_HOME=str(home), MMSR_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "mmsr_cli.app", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_demo_then_info_json(mmsr_home):
    result = mmsr("data", "demo", "--items", "120", "--users", "80", home=mmsr_home)
    assert result.returncode == 0, result.stderr
    info = mmsr("data", "info", "demo", "--json", home=mmsr_home)
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    for key in ("users", "items", "interactions", "items_with_image", "items_with_text", "cold_items",
                "cold_sequences", "cold_test_cases", "new_items", "new_test_cases", "avg_seq_len"):
        assert key in report
    assert report["items"] == 120 and report["users"] == 80
    refused = mmsr("data", "info", "demo", "--min-interactions", "0", home=mmsr_home)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "min_interactions must be at least 3" in refused.stderr and "--min-interactions" in refused.stderr
    assert report["items_with_image"] == 120 and report["items_with_text"] == 120
    assert 5 <= report["avg_seq_len"] <= 40


def test_user_error_is_one_line_and_exit_2(mmsr_home):
    result = mmsr("data", "info", "nope", home=mmsr_home)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset not found" in lines[0] and "mmsr data demo" in lines[0]
    debug = mmsr("--debug", "data", "info", "nope", home=mmsr_home)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("group", ["data", "cache", "train", "eval", "recommend", "study", "plot"])
def test_help_everywhere(group, mmsr_home):
    result = mmsr(group, "--help", home=mmsr_home)
    assert result.returncode == 0 and "Usage" in result.stdout


def _commands(group, path=()):
    for command in group.registered_commands:
        yield (*path, command.name or command.callback.__name__)
    for subgroup in group.registered_groups:
        yield from _commands(subgroup.typer_instance, (*path, subgroup.name))


def test_help_paragraphs_wrap_to_the_terminal_not_to_the_source():
    """typer keeps a docstring's line breaks after its first paragraph: at 80 columns the source's
    longer lines broke mid-sentence, at 250 a paragraph stayed cut where the source was. Each
    paragraph of every command's help is one line at a width that holds it."""
    from typer.testing import CliRunner

    from mmsr_cli.app import app

    commands = list(_commands(app))
    assert len(commands) > 20 and ("data", "demo") in commands
    checked = 0
    for command in commands:
        output = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"}).output
        lines = [line.strip() for line in output.splitlines()]
        info = next(_find(app, command))
        for paragraph in inspect.getdoc(info.callback).split("\n\n")[1:]:
            if len(paragraph) < 380 and "\n- " not in paragraph:
                assert " ".join(paragraph.split()) in lines, (command, paragraph)
                checked += 1
    assert checked > 20


def _find(group, path):
    head, *rest = path
    if rest:
        yield from _find(next(g.typer_instance for g in group.registered_groups if g.name == head), rest)
    else:
        yield from (c for c in group.registered_commands if (c.name or c.callback.__name__) == head)


def test_train_never_deletes_a_folder_it_did_not_write(tmp_path, mmsr_home):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for flag in ("--overwrite", "--resume"):  # --resume without a checkpoint restarts, deleting what is there
        result = mmsr("train", "--run-dir", str(mine), "--set", "model.kind=idsr", flag, home=mmsr_home)
        assert result.returncode == 2 and "not deleted: it holds no config.json" in result.stderr, result.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_config_errors_are_gathered(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "x"\n[optim]\nepoch = 3\n[model]\ndim = "big"\n')
    with pytest.raises(MMSRError) as error:
        load(TrainConfig, path)
    message = str(error.value)
    assert "unknown key optim.epoch" in message and "epochs" in message and "model.dim must be int" in message


def test_overrides_and_types():
    config = load(TrainConfig, None, ["model.fusion=gate", "optim.lr=0.001", "split.sample_users=50",
                                      "encoders.text_fields=title,category"])
    assert config.model.fusion == "gate" and config.optim.lr == 0.001
    assert config.split.sample_users == 50 and config.encoders.text_fields == ["title", "category"]
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(MMSRError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_flags_win_over_overrides_over_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 1\n[model]\ndim = 16\nsequence = "gru4rec"\n')
    config = load(TrainConfig, path, ["seed=2", "model.dim=12"],
                             {"seed": 3, "model.dim": None, "dataset": "/data/shop"})
    assert (config.seed, config.model.dim, config.model.sequence, config.dataset) == (3, 12, "gru4rec", "/data/shop")
    with pytest.raises(MMSRError, match="unknown key model.dims"):
        load(TrainConfig, None, None, {"model.dims": 8})


def test_cache_build_config_reads_a_training_config(tmp_path):
    from mmsr.cache_stage import load_build_config

    path = tmp_path / "train.toml"
    path.write_text('dataset = "shop"\nseed = 4\n[encoders]\nmax_text_len = 30\nimage_size = 112\n'
                    '[optim]\nepochs = 3\n')  # a training config: its optim section is not the cache's business
    config = load_build_config(path, ["encoders.image_size=96", "batch_size=8"], max_text_len=12, text_model=None,
                               num_workers=0)
    assert (config.dataset, config.seed, config.batch_size, config.num_workers) == ("shop", 4, 8, 0)
    assert (config.encoders.max_text_len, config.encoders.image_size, config.encoders.text_model) == (12, 96, "minilm")


def test_run_directory_lifecycle(tmp_path, mmsr_home):
    from mmsr.train.run import prepare_run

    sets = ["dataset=/data/shop", "model.kind=idsr"]
    fresh = prepare_run(None, None, sets, {"seed": 5})
    assert fresh.root == mmsr_home / "runs" / "shop-idsr-sasrec" and fresh.config.seed == 5 and not fresh.resume
    (fresh.root / "checkpoints").mkdir(parents=True)
    (fresh.root / "config.json").write_text(json.dumps({"dataset": "/data/shop", "seed": 7, "model": {"kind": "idsr"}}))
    with pytest.raises(MMSRError, match="run directory already exists"):
        prepare_run(None, None, sets)
    (fresh.root / "checkpoints" / "last.pt").write_bytes(b"")
    resumed = prepare_run("shop-idsr-sasrec", resume=True)
    assert resumed.resume and resumed.config.seed == 7  # nothing given: the run's own config
    assert prepare_run("shop-idsr-sasrec", flags={"seed": 6}, resume=True).config.seed == 6
    with pytest.raises(MMSRError, match="--resume and --overwrite together"):  # nothing deleted
        prepare_run("shop-idsr-sasrec", resume=True, overwrite=True)
    assert (fresh.root / "checkpoints" / "last.pt").is_file()
    (fresh.root / "checkpoints" / "last.pt").unlink()
    messages = []
    again = prepare_run(None, None, sets, resume=True, log=messages.append)
    assert not again.resume and not fresh.root.exists()  # no checkpoint yet: afresh, old directory gone
    assert messages == [f"no checkpoint in {fresh.root} yet: starting the run"]
    with pytest.raises(MMSRError, match="best.pt: checkpoint not found"):  # only last.pt may be missing
        prepare_run(None, None, sets, resume=True, resume_from="best")


def test_demo_keeps_an_existing_dataset_and_list_finds_it(mmsr_home):
    from typer.testing import CliRunner

    from mmsr_cli.app import app

    runner = CliRunner()
    first = runner.invoke(app, ["data", "demo", "--items", "12", "--users", "3"])
    assert first.exit_code == 0 and "wrote" in first.output, first.output
    meta = (mmsr_home / "datasets" / "demo" / "meta.json").read_bytes()
    second = runner.invoke(app, ["data", "demo", "--items", "20", "--users", "3"])
    assert second.exit_code == 0 and "already exists" in second.output
    # kept, but not silently: the size differs from the one asked for
    assert "it has 12 items and 3 users, not the 20 and 3 asked for" in " ".join(second.output.split())
    assert (mmsr_home / "datasets" / "demo" / "meta.json").read_bytes() == meta
    # other generator options (recorded in meta.json beside a non-default request) are named too
    third = runner.invoke(app, ["data", "demo", "--items", "12", "--users", "3", "--seed", "3", "--max-length", "9"])
    assert "it was generated with seed 0, max_len 40, not seed 3, max_len 9" in " ".join(third.output.split())
    same = runner.invoke(app, ["data", "demo", "--items", "12", "--users", "3"])
    assert "already exists; keeping it" in " ".join(same.output.split()), same.output
    (mmsr_home / "datasets" / "not-a-dataset").mkdir()
    listed = runner.invoke(app, ["data", "list"])
    assert listed.exit_code == 0 and listed.stdout.split() == ["demo"]
    # left out of the list, but no longer without a word (a dataset that lost its meta.json)
    assert "note: not-a-dataset is not listed: no meta.json, so not a dataset" in " ".join(listed.stderr.split())


def test_eval_and_recommend_are_one_library_call_each(small_demo, mmsr_home):
    """What `mmsr eval --json` / `mmsr recommend --json` print is what one Python call returns."""
    from typer.testing import CliRunner

    from mmsr.eval.recommend import recommend
    from mmsr.eval.runner import evaluate_run
    from mmsr.train.recipe import train
    from mmsr.train.run import prepare_run
    from mmsr_cli.app import app

    prepared = prepare_run("tiny", None, [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16",
                                          "optim.epochs=1", "optim.batch_size=64"], log=lambda text: None)
    train(prepared.config, prepared.root, from_cache=False, log=lambda text: None)
    runner = CliRunner()

    top = recommend("tiny", ["i00001", "i00002"], k=5)
    printed = runner.invoke(app, ["recommend", "--run", "tiny", "--history", "i00001, i00002", "-k", "5", "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout.strip().splitlines()[-1]) == top
    assert len(top["items"]) == 5 and not {"i00001", "i00002"} & {row["item"] for row in top["items"]}
    with pytest.raises(MMSRError, match="empty history"):
        recommend("tiny", [])
    # A k no catalogue fills was padded to k first (a billion slots: 7.45 GiB); a history past the
    # model's window was cut without a word.
    history = [f"i{i:05d}" for i in range(1, 31)]  # split.max_seq_len is 20
    everything = recommend("tiny", history, k=10 ** 9)
    left = len(everything["items"])
    assert left > 0 and not set(history) & {row["item"] for row in everything["items"]}
    assert everything["notes"] == [
        "the model reads the newest 20 of the 30 history items (split.max_seq_len); all of them are excluded from "
        "the list", f"only {left} items are left once the history is excluded; all of them are listed"]
    printed = runner.invoke(app, ["recommend", "--run", "tiny", "--history", ",".join(history), "-k", "1000000000"])
    assert printed.exit_code == 0 and f"top {left} for a history of 30 items" in printed.output, printed.output
    assert top["notes"] == []
    unknown = runner.invoke(app, ["recommend", "--run", "tiny", "--history", "i00001,nope"])
    assert isinstance(unknown.exception, MMSRError) and "unknown item 'nope'" in str(unknown.exception)

    result = evaluate_run("tiny", "valid", ks="5,10")
    assert json.loads((prepared.root / "eval_valid.json").read_text()) == result
    printed = runner.invoke(app, ["eval", "--run", "tiny", "--split", "valid", "--k", "5,10", "--json"])
    assert printed.exit_code == 0, printed.output
    said = json.loads(printed.stdout.strip().splitlines()[-1])
    # Everything but where the time went (two runs, two timings) is the library's result.
    assert set(said.pop("seconds")) == set(result.pop("seconds")) == {"items", "users", "ranking"}
    assert said == result
    # Several splits in one call: one item-tower pass, the same metrics as one call per split.
    alone = {split: evaluate_run("tiny", split, ks="5,10")["metrics"] for split in ("cold", "test")}
    printed = runner.invoke(app, ["eval", "--run", "tiny", "--split", "cold, test,cold", "--k", "5,10", "--json"])
    assert printed.exit_code == 0, printed.output
    together = json.loads(printed.stdout.strip().splitlines()[-1])["splits"]
    assert list(together) == ["cold", "test"] and {s: r["metrics"] for s, r in together.items()} == alone
    assert together["test"]["seconds"]["items"] == 0  # counted once, with the first split
    for args, message in ((["--protocol", "sampled"], "unknown protocol 'sampled'"),
                          (["--no-faiss"], "evaluation is always an exact full ranking"),
                          (["--split", "test,tset"], "unknown split 'tset'"), (["--split", ","], "no split given")):
        refused = runner.invoke(app, ["eval", "--run", "tiny", *args])
        assert isinstance(refused.exception, MMSRError) and message in str(refused.exception)


def test_models_list_names_every_registered_part_with_its_line(mmsr_home):
    """What --set model.kind / model.sequence / model.fusion / optim.loss / model.score accept,
    straight from the registries, each name with a line (its help or its docstring's first)."""
    from mmsr.models.fusion import FUSIONS
    from mmsr.models.scores import SCORES
    from mmsr.train.losses import LOSSES

    result = mmsr("models", "list", "--json", home=mmsr_home)
    assert result.returncode == 0, result.stderr
    parts = json.loads(result.stdout)["parts"]
    assert list(parts) == ["model.kind", "model.sequence", "model.fusion", "optim.loss", "model.score"]
    assert list(parts["model.fusion"]) == FUSIONS.names() and list(parts["optim.loss"]) == LOSSES.names()
    assert list(parts["model.score"]) == SCORES.names() and "cosine-learned" in parts["model.score"]
    assert all(line for described in parts.values() for line in described.values()), parts
    assert parts["model.fusion"]["gate"] == "g = sigmoid(W [a; b]); g * a + (1 - g) * b"  # docstring's first line
    table = mmsr("models", "list", home=mmsr_home)
    assert table.returncode == 0, table.stderr
    assert "W [a; b]" in table.stderr and "inbatch-logq" in table.stderr  # the tables go to stderr; [a; b] is no markup


def test_ctrl_c_inside_any_command_says_finished_work_is_kept(monkeypatch, capsys):
    """Typer catches Ctrl-C inside a command and exits 130 itself; the line the README promises
    must still be the last thing printed."""
    import typer

    import mmsr_cli.app as cli_app

    stand_in = typer.Typer()

    @stand_in.command()
    def work():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_app, "app", stand_in)
    monkeypatch.setattr("sys.argv", ["mmsr"])
    with pytest.raises(SystemExit) as stopped:
        cli_app.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "interrupted; finished work is kept, rerun the command to resume")


def test_sigterm_inside_any_command_is_stopped_as_ctrl_c_is_with_status_143(monkeypatch, capsys):
    """SIGTERM (`docker stop`, a scheduler, `kill`) ended a command without a word: exit 143 and
    none of the clean-up Ctrl-C runs (a cache build left its DataLoader workers). The CLI raises it
    as Ctrl-C is raised, says the same line naming the signal, and exits 143; a real signal here."""
    import typer

    import mmsr_cli.app as cli_app

    stand_in = typer.Typer()
    cleaned = []

    @stand_in.command()
    def work():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises within this
        finally:
            cleaned.append(True)

    monkeypatch.setattr(cli_app, "app", stand_in)
    monkeypatch.setattr("sys.argv", ["mmsr"])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cli_app.main()
    assert stopped.value.code == 143 and cleaned == [True]
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "interrupted (SIGTERM); finished work is kept, rerun the command to resume")
    assert signal.getsignal(signal.SIGTERM) is before  # main() gives the handler back


def test_a_usage_error_is_one_line_naming_the_help(mmsr_home):
    """Typer's own errors (an unknown option, a bad value, a missing argument) are user errors
    too: one line, the last printed, exit 2, with the command's --help to read."""
    for args, said in ((["train", "--nosuch"], "error: No such option: --nosuch (see `mmsr train --help`)"),
                       (["eval"], "error: Missing option '--run'"),
                       (["data", "info", "x", "--min-interactions", "abc"], "Invalid value for '--min-interactions'"),
                       # a device is refused by its option before any run is looked up (the run does not exist)
                       (["eval", "--run", "nosuch", "--device", "nope"],
                        "Invalid value for '--device': 'nope' is not a device mmsr runs on"),
                       (["eval", "--run", "nosuch", "--search-device", "gpuu"],
                        "Invalid value for '--search-device': 'gpuu' is not where mmsr ranks; use auto, cpu, gpu"),
                       (["cache", "build", "--device", "mps"], "Invalid value for '--device': 'mps'"),
                       # "" is init_from's "no transfer": it trained from scratch without a word
                       (["train", "--init-from", ""], "Invalid value for '--init-from': '' is empty"),
                       (["cache", "build", "--batch-size", "0"], "Invalid value for '--batch-size'"),
                       # numpy's seeding took these in a traceback, a plot's after its run had loaded
                       (["data", "demo", "--seed", "-1"], "Invalid value for '--seed': Input should be greater than or equal to 0"),
                       (["plot", "items", "--run", "nosuch", "--seed", "-1"], "Invalid value for '--seed'"),
                       (["train", "--seed", "4294967296"], "Invalid value for '--seed'")):
        result = mmsr(*args, home=mmsr_home)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert said in result.stderr
    helped = mmsr("train", "--help", home=mmsr_home)
    assert helped.returncode == 0 and "Usage: mmsr train" in helped.stdout


def test_the_readme_config_errors_are_what_mmsr_prints(mmsr_home):
    """The README's "Configs" example, command by command: each `$ mmsr ...` line is run as
    written (from the checkout, where its config path is) and must print the README's next line."""
    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("\n## Configs\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split("```", 2)[1].strip().splitlines()
    pairs = [(lines[i][len("$ mmsr "):], lines[i + 1]) for i, line in enumerate(lines) if line.startswith("$ mmsr ")]
    assert len(pairs) == 2, lines  # the misspelt --set alone, then the file's errors gathered
    for command, said in pairs:
        env = dict(os.environ, MMSR_HOME=str(mmsr_home), MMSR_NO_PROGRESS="1")
        result = subprocess.run([sys.executable, "-m", "mmsr_cli.app", *shlex.split(command)], capture_output=True,
                                text=True, env=env, cwd=root, timeout=300)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == said


def test_offline_is_the_default_and_the_environment_overrides_it(monkeypatch):
    """README, "Encoders": mmsr never downloads unless the environment says it may."""
    import os

    from mmsr.offline import HUB_OFFLINE, stay_offline

    for key in HUB_OFFLINE:
        monkeypatch.delenv(key, raising=False)
    stay_offline()
    assert {key: os.environ[key] for key in HUB_OFFLINE} == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key in HUB_OFFLINE:
        monkeypatch.setenv(key, "0")
    stay_offline()
    assert [os.environ[key] for key in HUB_OFFLINE] == ["0", "0"]


def test_a_file_among_an_outputs_folders_is_one_line_before_the_command_starts(tmp_path):
    """`data demo --name FILE/sub`, `data import ... --name FILE/sub` and `train --run FILE/run`
    ended in FileExistsError after the command had started (a lock taken, a dataset begun)."""
    blocking = tmp_path / "notes.txt"
    blocking.write_text("mine")
    env = dict(os.environ, MMSR_HOME=str(tmp_path / "home"), MMSR_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    for command, kind in ((["data", "demo", "--name", str(blocking / "sub"), "--items", "60", "--users", "40"],
                           "dataset"),
                          (["train", "--dataset", str(blocking / "d"), "--run", str(blocking / "run")], "run"),
                          (["eval", "--run", str(blocking / "run")], "run")):
        done = subprocess.run([sys.executable, "-m", "mmsr_cli.app", *command], capture_output=True, text=True,
                              env=env, timeout=300)
        said = done.stderr.strip()
        assert done.returncode == 2 and len(said.splitlines()) == 1, said
        assert said.endswith(f"{blocking} is a file, so nothing can be under it (give a {kind} path whose folders "
                             "are folders)"), said
    assert blocking.read_text() == "mine" and not (tmp_path / "home").exists()
