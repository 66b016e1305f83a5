"""The training config: every profile loads, saved configs reload, and no setting is silently ignored."""

import json
import re
import os
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from mmsr.config import build, load, read_file
from mmsr.errors import MMSRError
from mmsr.train.config import OptimConfig, TrainConfig, cache_section

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
# The README's variants of a profile: IDSR, MMSR-T, MMSR-V (the last two name the fusion they use).
VARIANTS = [[], ["model.kind=idsr"], ["encoders.vision_model=", "model.fusion=pool"],
            ["encoders.text_model=", "model.fusion=pool"]]


def _error(overrides, path=None) -> str:
    with pytest.raises(MMSRError) as error:
        load(TrainConfig, path, overrides)
    return str(error.value)


def _reloads(config: TrainConfig) -> None:
    saved = json.loads(json.dumps(asdict(config)))  # as a run's config.json holds it
    assert build(TrainConfig, saved) == config


def test_default_config_loads_and_reloads():
    config = load(TrainConfig)
    assert config == TrainConfig() and config.model.fusion == "merge-attn"
    _reloads(config)


@pytest.mark.parametrize("path,variant", [
    pytest.param(path, variant, id=f"{path.stem}-{name}") for path in CONFIGS
    for name, variant in zip(("as-is", "idsr", "mmsr-t", "mmsr-v"), VARIANTS)
    if not (path.stem == "movielens-mmsrt" and name == "mmsr-v")])  # that profile has no vision model to keep
def test_every_profile_and_variant_loads_and_reloads(path, variant):
    config = load(TrainConfig, path, variant)
    _reloads(config)
    assert cache_section(read_file(path), source=str(path))  # one file drives `mmsr cache build` too


# The demo profile's peers: Table V's baselines and the VLP configs name configs/demo-cpu.toml as
# their base, so that rows differ by the model (and its encoders) alone.
DEMO_PEERS = sorted([*(ROOT / "configs" / "vlp").glob("*.toml"),
                     *(p for p in (ROOT / "configs" / "baselines").glob("*.toml") if not p.stem.startswith("movielens"))])


@pytest.mark.parametrize("path", DEMO_PEERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_demo_profiles_peers_train_as_the_profile_does(path):
    profile, peer = load(TrainConfig, ROOT / "configs" / "demo-cpu.toml"), load(TrainConfig, path)
    _reloads(peer)
    mine, theirs = asdict(profile), asdict(peer)
    assert {k: v for k, v in theirs.items() if k not in ("model", "encoders", "optim")} == \
        {k: v for k, v in mine.items() if k not in ("model", "encoders", "optim")}, path
    differ = {key for key, value in theirs["optim"].items() if value != mine["optim"][key]}
    if peer.model.kind == "carca":  # trains with BCE, which reads no own_items: it keeps the default
        assert "loss" in differ and differ <= {"loss", "own_items"}
        assert peer.optim.own_items == OptimConfig.own_items
    else:
        assert not differ, (path, differ)


def test_a_peer_names_only_what_it_changes_and_its_base_gives_the_rest(tmp_path):
    """`base` merges the named file underneath, table by table and through a chain; the child's
    keys win and everything it does not name is the base's."""
    # Each base is relative to the file that names it: mid.toml's sits beside mid.toml, not leaf's.
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "root.toml").write_text('seed = 3\n[model]\nkind = "idsr"\ndim = 24\n'
                                                     '[optim]\nepochs = 7\nlr = 0.01\n')
    (tmp_path / "profiles" / "mid.toml").write_text('base = "root.toml"\n[optim]\nepochs = 5\n')
    (tmp_path / "leaf.yaml").write_text("base: profiles/mid.toml\nmodel:\n  dim: 16\n")
    assert read_file(tmp_path / "leaf.yaml") == {"seed": 3, "model": {"kind": "idsr", "dim": 16},
                                                 "optim": {"epochs": 5, "lr": 0.01}}
    config = load(TrainConfig, tmp_path / "leaf.yaml", ["optim.lr=0.002"])
    assert (config.seed, config.model.dim, config.optim.epochs, config.optim.lr) == (3, 16, 5, 0.002)
    cached = cache_section(read_file(tmp_path / "leaf.yaml"))
    assert cached == {"seed": 3}  # `mmsr cache build` reads the same merged file


@pytest.mark.parametrize("text,expected", [
    ('base = "nowhere.toml"\n', "base = 'nowhere.toml': no such file"),
    ("base = 3\n", "base must be the path of another config file, got 3"),
    ('base = ""\n', "base must be the path of another config file, got ''"),
    ('base = "me.toml"\n', "makes a loop"),
])
def test_a_bad_base_is_named_with_the_file_that_names_it(tmp_path, text, expected):
    (tmp_path / "me.toml").write_text(text)
    with pytest.raises(MMSRError) as error:
        load(TrainConfig, tmp_path / "me.toml")
    assert expected in str(error.value) and "me.toml" in str(error.value)


def test_a_linked_config_finds_its_base_beside_the_real_file(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "profile.toml").write_text("seed = 4\n")
    (tmp_path / "real" / "peer.toml").write_text('base = "profile.toml"\n[model]\nkind = "idsr"\n')
    (tmp_path / "peer.toml").symlink_to(tmp_path / "real" / "peer.toml")
    assert read_file(tmp_path / "peer.toml") == {"seed": 4, "model": {"kind": "idsr"}}


def test_a_yaml_base_left_empty_is_refused(tmp_path):
    (tmp_path / "me.yaml").write_text("base:\nseed: 1\n")
    with pytest.raises(MMSRError, match="base must be the path of another config file, got None"):
        read_file(tmp_path / "me.yaml")


def test_a_loop_through_two_files_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nseed = 1\n')
    with pytest.raises(MMSRError, match=r"makes a loop: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        read_file(tmp_path / "a.toml")


def test_the_demo_profiles_peers_name_it_as_their_base():
    """The peers inherit the profile rather than copy it, so they cannot drift from it."""
    for path in DEMO_PEERS:
        data = tomllib.loads(path.read_text())
        assert data.get("base") == "../demo-cpu.toml", path
        assert "optim" not in data or path.stem == "carca", path  # CARCA++ alone changes the loss


def test_the_seeds_bce_on_the_demo_profile_is_one_named_set_away():
    """The profile's own_items is a softmax setting BCE ignores: the refusal names the --set that
    restores its default, and that --set is enough."""
    profile = ROOT / "configs" / "demo-cpu.toml"
    for asked in (["optim.loss=bce"], ["model.kind=carca"]):
        assert "--set optim.own_items=negatives" in _error(asked, profile), asked
    assert load(TrainConfig, profile, ["optim.loss=bce", "optim.own_items=negatives"]).optim.loss == "bce"
    load(TrainConfig, profile, ["model.kind=carca", "optim.loss=bce", "optim.own_items=negatives"])


def test_single_modality_turns_the_default_fusion_into_pool():
    config = load(TrainConfig, None, ["encoders.vision_model="])
    assert config.model.fusion == "pool"
    assert asdict(config)["model"]["fusion"] == "pool"  # the saved config says what was trained
    _reloads(config)
    assert load(TrainConfig, None, ["encoders.text_model="]).model.fusion == "pool"
    assert load(TrainConfig, None, []).model.fusion == "merge-attn"


def test_a_fusion_named_explicitly_is_kept_for_one_modality():
    """Only the unset default becomes pool: merge-attn named on a text-only model is what trains
    (it used to equal the default and turn into pool without a word)."""
    config = load(TrainConfig, None, ["encoders.vision_model=", "model.fusion=merge-attn"])
    assert config.model.fusion == "merge-attn"
    _reloads(config)


@pytest.mark.parametrize("overrides,expected", [
    (["model.fusion=gate", "model.fusion_layers=2"], ["model.fusion_layers=2", "fusion 'gate'", "merge-attn"]),
    (["model.fusion=gate+dnn", "model.fusion_heads=2"], ["model.fusion_heads=2", "fusion 'gate+dnn'", "coattn"]),
    (["model.fusion=sum", "model.fusion_heads=8"], ["model.fusion_heads=8", "fusion 'sum'"]),
    (["model.fusion=pool", "model.fusion_layers=3"], ["model.fusion_layers=3", "fusion 'pool'"]),
    (["model.fusion=coattn", "model.fusion_layers=2"], ["model.fusion_layers=2", "fusion 'coattn'", "merge-attn"]),
    # the default fusion becomes pool with one modality, which has no heads
    (["encoders.vision_model=", "model.fusion_heads=2"], ["model.fusion_heads=2", "fusion 'pool'"]),
    (["model.sequence=gru4rec", "model.sequence_heads=4"],
     ["model.sequence_heads=4", "sequence model 'gru4rec'", "sasrec"]),
    (["model.sequence=nextitnet", "model.sequence_heads=1"],
     ["model.sequence_heads=1", "sequence model 'nextitnet'", "sasrec"]),
    (["model.kind=idsr", "model.sequence=gru4rec", "model.sequence_heads=4"], ["model.sequence_heads=4"]),
    (["encoders.vision_model=", "model.fusion=gate"],
     ["model.fusion='gate'", "needs text and image", 'encoders.vision_model=""', "--set model.fusion=pool"]),
    (["encoders.text_model=", "model.fusion=coattn"], ["needs text and image", 'encoders.text_model=""']),
    (["encoders.text_model=", "encoders.vision_model="], ["model.kind=mmsr needs a text or a vision model",
                                                            "model.kind=idsr"]),
    (["optim.loss=inbatch", "optim.negatives=any"],
     ["optim.negatives='any'", "optim.loss='inbatch'", "optim.loss=bce"]),
])
def test_an_ignored_setting_is_an_error(overrides, expected):
    message = _error(overrides)
    for part in expected:
        assert part in message, (part, message)
    assert "remove it" in message or "--set" in message  # says how to fix it


@pytest.mark.parametrize("overrides", [
    ["model.fusion=merge-attn", "model.fusion_layers=2", "model.fusion_heads=2"],
    ["model.fusion=coattn", "model.fusion_heads=2"],
    ["model.sequence=sasrec", "model.sequence_layers=3", "model.sequence_heads=4"],
    ["model.sequence=gru4rec", "model.sequence_layers=1"],
    ["model.sequence=nextitnet", "model.sequence_layers=3"],
    ["model.fusion=gate", "model.fusion_heads=4", "model.fusion_layers=1"],  # the defaults, as a saved config has them
    ["optim.loss=inbatch", "optim.negatives=unseen"],
    ["optim.loss=bce", "optim.negatives=any"],
    # idsr: the encoders section and the fusion settings are a documented no-op
    ["model.kind=idsr", "encoders.vision_model=", "model.fusion=gate", "model.fusion_heads=2"],
    ["model.kind=idsr", "encoders.vision_model=", "encoders.text_model="],
])
def test_a_setting_that_is_read_loads(overrides):
    _reloads(load(TrainConfig, None, overrides))


def test_unknown_component_names_are_reported_with_the_known_ones():
    message = _error(["model.fusion=fancy", "model.sequence=bert4rec"])
    assert "model.fusion='fancy' is not a known fusion" in message
    assert "merge-attn" in message and "gate+dnn" in message and "pool" in message
    assert "model.sequence='bert4rec' is not a known sequence model" in message
    assert "gru4rec, nextitnet, sasrec" in message


def test_ignored_settings_are_gathered_with_the_other_errors(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nfusion = "gate"\nfusion_heads = 2\nsequence = "gru4rec"\nsequence_heads = 4\n'
                    'dim = "big"\n[optim]\nepoch = 3\nloss = "inbatch"\nnegatives = "any"\n')
    message = _error(["encoders.vision_model="], path)
    assert message.startswith(f"invalid config {path}: ")
    for part in ("unknown key optim.epoch", "model.dim must be int", "model.fusion_heads=2",
                 "model.sequence_heads=4", "model.fusion='gate' needs text and image", "optim.negatives='any'"):
        assert part in message, (part, message)


def test_train_reports_an_ignored_setting_before_anything_runs(mmsr_home):
    env = dict(os.environ, MMSR_HOME=str(mmsr_home), MMSR_NO_PROGRESS="1")
    result = subprocess.run([sys.executable, "-m", "mmsr_cli.app", "train", "--config", str(CONFIGS[0]), "--set",
                             "encoders.vision_model="], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "model.fusion='gate+dnn' needs text and image" in result.stderr and "model.fusion=pool" in result.stderr
    assert not (mmsr_home / "runs").exists()


def test_cache_build_validates_the_whole_training_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nsequence = "gru4rec"\nsequence_heads = 4\n')
    with pytest.raises(MMSRError, match="sequence_heads"):
        cache_section(read_file(path), source=str(path))


def test_a_float_override_may_be_written_without_a_dot():
    # PyYAML reads "2e-3" as a string (YAML 1.1 wants "2.0e-3"); a float setting takes it.
    config = load(TrainConfig, None, ["optim.lr=2e-3", "optim.encoder_lr=1E-5", "optim.weight_decay=0"])
    assert (config.optim.lr, config.optim.encoder_lr, config.optim.weight_decay) == (2e-3, 1e-5, 0.0)
    assert "optim.lr must be a finite number, got 'fast'" in _error(["optim.lr=fast"])
    assert "optim.lr must be a finite number" in _error(["optim.lr=nan"])
    assert "optim.negatives must be one of 'unseen', 'any', got 'maybe'" in _error(["optim.negatives=maybe"])
    assert load(TrainConfig, None, ["dataset=1e3"]).dataset == "1e3"  # a string setting keeps the text


@pytest.mark.parametrize("sets, said", [
    (["optim.batch_size=0", "optim.loss=bce"], "optim.batch_size=0 must be at least 1"),
    (["optim.epochs=0"], "optim.epochs=0 must be at least 1"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be at least 0"),
    (["model.dim=0"], "model.dim=0 must be at least 1"),
    (["eval_batch_size=0"], "eval_batch_size=0 must be at least 1"),
    (["model.dim=30", "model.sequence_heads=4"], "model.dim=30 must be a multiple of model.sequence_heads=4"),
    (["model.dim=30", "model.fusion=merge-attn"], "model.dim=30 must be a multiple of model.fusion_heads=4"),
    # numpy's seeding refused these in a traceback once the run had started
    (["seed=-1"], "seed=-1 must be from 0 to 4294967295 (2**32 - 1)"),
    (["seed=4294967296"], "seed=4294967296 must be from 0 to 4294967295"),
    (["split.seed=-1"], "split.seed=-1 must be from 0 to 4294967295"),
])
def test_numbers_outside_their_meaningful_range_are_refused_by_name(sets, said):
    from mmsr import config as config_lib
    from mmsr.train.config import TrainConfig

    with pytest.raises(MMSRError, match=re.escape(said)):
        config_lib.load(TrainConfig, None, sets)
    # A sequence model without heads does not care how the width divides.
    config_lib.load(TrainConfig, None, ["model.dim=30", "model.sequence=gru4rec", "model.kind=idsr"])


def test_a_misspelt_set_is_named_as_the_users_not_the_files(tmp_path):
    from mmsr.cache_stage import load_build_config

    with pytest.raises(MMSRError, match=r"^invalid --set: unknown key nosection; the sections are encoders, split"):
        load(TrainConfig, "configs/demo-cpu.toml", ["nosection.x=1"])
    # A file's unknown [section] lists the sections too (it said only "unknown key nope").
    nope = tmp_path / "nope.toml"
    nope.write_text('[optimm]\nlr = 0.1\n')
    with pytest.raises(MMSRError, match=re.escape(f"invalid config {nope}: unknown key optimm (did you mean 'optim'?); "
                                                  "the sections are encoders, split, model, optim")):
        load(TrainConfig, nope)
    # An empty dataset was found only by the path lookup, which could not say which key set it.
    with pytest.raises(MMSRError, match=re.escape("--set dataset='' must name a dataset (a name under $MMSR_HOME")):
        load(TrainConfig, "configs/demo-cpu.toml", ["dataset="])
    nope.write_text('dataset = " "\n')
    with pytest.raises(MMSRError, match=re.escape(f"config {nope}: dataset=' ' must name a dataset")):
        load(TrainConfig, nope)
    with pytest.raises(MMSRError, match=r"invalid --set: unknown key optim.epoch \(did you mean 'epochs'\?\)"):
        load(TrainConfig, "configs/demo-cpu.toml", ["optim.epoch=3"])
    # cache build takes a training --set as it takes the file's sections: read by train, checked by name
    built = load_build_config("configs/demo-cpu.toml", ["model.dim=32", "optim.epochs=3", "encoders.image_size=64"])
    assert built.encoders.image_size == 64
    with pytest.raises(MMSRError, match=r"invalid --set: unknown key model.dimm"):
        load_build_config("configs/demo-cpu.toml", ["model.dimm=32"])
    with pytest.raises(MMSRError, match=re.escape("seed=-1 must be from 0 to 4294967295")):
        load_build_config("configs/demo-cpu.toml", ["seed=-1"])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", ["optim.lr", "optim.grad_clip", "optim.final_lr_fraction"])
def test_a_number_that_is_not_finite_is_refused_however_it_is_written(key, value, tmp_path):
    """YAML's .nan / .inf (and TOML's nan, JSON's NaN) came in as floats and passed every range
    check: a NaN learning rate failed an epoch later as a diverged model, a NaN grad_clip switched
    clipping off without a word."""
    assert f"{key} must be a finite number, got" in _error([f"{key}={value}"])
    section, name = key.split(".")
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{name} = nan\n")
    with pytest.raises(MMSRError, match=re.escape(f"{key} must be a finite number, got nan")):
        load(TrainConfig, path, [])


def test_a_wrong_set_value_is_named_as_the_sets_and_a_near_key_is_suggested():
    message = _error(["optim.lr=abc", "model.fusion=nope"], ROOT / "configs" / "demo-cpu.toml")
    assert "--set optim.lr must be a finite number, got 'abc'" in message
    assert "--set model.fusion='nope' is not a known fusion" in message
    with pytest.raises(MMSRError, match=r"unknown key optim.lrr \(did you mean 'lr'\?\)"):
        load(TrainConfig, None, ["optim.lrr=1e-3"])
    with pytest.raises(MMSRError, match=r"is not KEY=VALUE.*e\.g\. --set optim\.lr=1e-4"):
        load(TrainConfig, None, ["optim.lr"])


def test_a_config_that_is_not_utf8_or_is_a_folder_is_named(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"seed = 1\n\xff\xfe bad\n")
    with pytest.raises(MMSRError, match=r"binary\.toml: not UTF-8: byte 0xff at line 2"):
        read_file(path)
    with pytest.raises(MMSRError, match="a folder, not a config file"):
        read_file(tmp_path)


def test_a_key_set_twice_is_named_with_its_table_and_line(tmp_path):
    """tomllib says only "Cannot overwrite a value (at line 3, column 11)"; the key is what the
    user looks for. JSON and PyYAML would keep the last value without a word: refused too."""
    cases = {"twice.toml": ("[optim]\nlr = 0.001  # first\nlr = 0.002\n",
                            r"twice\.toml:3: cannot parse config: optim\.lr is set twice \(`lr = 0\.002`\).*"
                            r"each key and each \[table\] once"),
             "table.toml": ("[optim]\nlr = 0.001\n\n[model]\ndim = 64\n[optim]\nepochs = 3\n",
                            r"table\.toml:6: cannot parse config: the table \[optim\] is opened twice"),
             "top.toml": ("seed = 1\nseed = 2\n", r"top\.toml:2: cannot parse config: seed is set twice"),
             "value.toml": ("[optim]\nlr =\n", r"value\.toml:2: cannot parse config: Invalid value \(`lr =`\)"),
             "twice.json": ('{"optim": {"lr": 1, "lr": 2}}', r"twice\.json: cannot parse config: 'lr' set twice"),
             "twice.yaml": ("optim:\n  lr: 0.1\n  lr: 0.2\n",
                            r"twice\.yaml:3: cannot parse config: 'lr' is set twice in one mapping"),
             "open.yaml": ("optim: [\n", r"open\.yaml:2: cannot parse config: while parsing a flow node")}
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(MMSRError, match=said):
            read_file(tmp_path / name)
    # A YAML merge key is not a repeated key: the mapping's own keys override the merged ones.
    (tmp_path / "merged.yaml").write_text("shared: &shared\n  lr: 0.1\n  epochs: 3\noptim:\n  <<: *shared\n  lr: 0.2\n")
    assert read_file(tmp_path / "merged.yaml")["optim"] == {"lr": 0.2, "epochs": 3}


def test_a_device_is_checked_by_its_spelling_when_the_config_is_read():
    from mmsr.cache_stage import load_build_config

    for config in (TrainConfig, None):
        with pytest.raises(MMSRError, match=r"--set device='mps' is not a device mmsr runs on; use auto, cpu, "
                                            r"cuda or cuda:N"):
            load(TrainConfig, None, ["device=mps"]) if config else load_build_config(None, ["device=mps"])
    assert load(TrainConfig, None, ["device=cuda:1"]).device == "cuda:1"  # whether this machine has it: at start


def test_a_top_level_problem_is_named_without_the_class():
    from mmsr.cache_stage import load_build_config

    with pytest.raises(MMSRError) as error:
        load_build_config(None, ["on_bad_image=nope"])
    assert "on_bad_image must be one of" in str(error.value) and "CacheBuildConfig" not in str(error.value)
