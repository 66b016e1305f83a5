"""The `mmsr` command as a user runs it: a real subprocess, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

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
                "cold_sequences", "avg_seq_len"):
        assert key in report
    assert report["items"] == 120 and report["users"] == 80
    assert report["items_with_image"] == 120 and report["items_with_text"] == 120
    assert 5 <= report["avg_seq_len"] <= 40


def test_user_error_is_one_line_and_exit_2(mmsr_home):
    result = mmsr("data", "info", "nope", home=mmsr_home)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset not found" in lines[0] and "mmsr data demo" in lines[0]
    debug = mmsr("--debug", "data", "info", "nope", home=mmsr_home)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("group", ["data", "cache", "train", "eval", "recommend"])
def test_help_everywhere(group, mmsr_home):
    result = mmsr(group, "--help", home=mmsr_home)
    assert result.returncode == 0 and "Usage" in result.stdout


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
