"""Faults around training and its outputs: signals, damaged or hostile checkpoints, a loss that
diverges, two trainers on one run, a full disk. Each fault is real (a real signal, a real
full tmpfs, real bytes flipped on disk), and each test checks that no finished work is lost."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fault_helpers import run_on_small_disk
from mmsr.errors import MMSRError
from test_train import _cli, _sets, kill_and_resume

pytestmark = pytest.mark.faults


def _idsr(small_demo, epochs=2):
    # 7 steps per epoch on the small demo at batch size 32
    return [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", f"optim.epochs={epochs}",
            "optim.batch_size=32", "model.dropout=0.2"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted_run(small_demo, tmp_path_factory):
    """`_idsr(small_demo)` trained without interruption, once for the signal tests."""
    home = tmp_path_factory.mktemp("uninterrupted")
    result = _cli(["train", "--run", "whole", *_sets(_idsr(small_demo))], home)
    assert result.returncode == 0, result.stderr
    return home / "runs" / "whole"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_step_and_resume_is_bit_identical(small_demo, mmsr_home, uninterrupted_run, signum):
    # No checkpoint_every_steps: the checkpoint at step 9 exists only because of the signal.
    (a, b), last = kill_and_resume(_idsr(small_demo), 9, mmsr_home, signum=signum, whole=uninterrupted_run)
    said = kill_and_resume.stderr
    # The signal lands after step 9 was counted; the run stops after the step it was in (10).
    assert f"{signal.Signals(signum).name} at epoch 2, step 3 of 7: checkpoint saved" in said
    assert "--resume" in said
    assert a["global_step"] == b["global_step"] == 14
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert last[0] == {**last[1], "epoch_seconds": last[0]["epoch_seconds"]}


@pytest.fixture(scope="module")
def finished_run(small_demo, tmp_path_factory):
    """One finished 3-epoch run (21 steps), trained once through the CLI for this module's tests,
    which each damage a copy of it (`_trained_run`)."""
    home = tmp_path_factory.mktemp("finished")
    result = _cli(["train", "--run", "r", *_sets(_idsr(small_demo, 3))], home)
    assert result.returncode == 0, result.stderr
    return home / "runs" / "r"


def _trained_run(finished_run, mmsr_home, name="r"):
    """A copy of `finished_run` under this test's data root: a run directory holds no path of
    its root, so the copy is the run a user would have trained there."""
    run = mmsr_home / "runs" / name
    shutil.copytree(finished_run, run)
    return run


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_last_checkpoint_is_named_and_best_takes_over(small_demo, mmsr_home, finished_run, damage):
    run = _trained_run(finished_run, mmsr_home)
    last = run / "checkpoints" / "last.pt"
    best_before = _sha(run / "checkpoints" / "best.pt")
    data = bytearray(last.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # one byte in the middle of a tensor's payload: torch alone would load it silently
        data[len(data) // 2] ^= 0x40
    last.write_bytes(bytes(data))

    refused = _cli(["train", "--run", "r", "--resume"], mmsr_home)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert str(last) in line and "damaged checkpoint" in line and "--resume-from best" in line
    assert _sha(run / "checkpoints" / "best.pt") == best_before  # untouched by the refused resume

    best_epoch = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"]
    resumed = _cli(["train", "--run", "r", "--resume", "--resume-from", "best"], mmsr_home)
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # the epochs after best.pt's were trained again, recorded once
    assert best_epoch <= 3 and torch.load(last, weights_only=True)["global_step"] == 21


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    from mmsr.train.checkpoint import load_checkpoint

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "best.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1, "extra": Payload()}, path)
    with pytest.raises(MMSRError, match="holds more than weights") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_eval_refuses_a_hostile_checkpoint(mmsr_home, finished_run):
    run = _trained_run(finished_run, mmsr_home)
    marker = mmsr_home / "ran"
    script = (f"import os, torch\nclass P:\n    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
              f"s = torch.load('{run}/checkpoints/best.pt', weights_only=True)\ns['extra'] = P()\n"
              f"torch.save(s, '{run}/checkpoints/best.pt')\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    for command in (["eval", "--run", "r"], ["recommend", "--run", "r", "--history", "i00001"]):
        refused = _cli(command, mmsr_home)
        assert refused.returncode == 2 and "holds more than weights" in refused.stderr, refused.stderr
    assert not marker.exists()


def test_a_checkpoint_of_another_model_is_refused_naming_its_tensors(mmsr_home, finished_run):
    """A run written by a model with other modules (CARCA++'s scorer and the Coarse+ DNN changed
    theirs) is refused by eval, recommend and resume alike, not loaded in part."""
    run = _trained_run(finished_run, mmsr_home)
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.pt"
        state = torch.load(path, weights_only=True)
        moved = next(iter(state["model"]))
        state["model"]["scorer.ffn.0.weight"] = state["model"].pop(moved)
        torch.save(state, path)
    for command in (["eval", "--run", "r"], ["recommend", "--run", "r", "--history", "i00001"],
                    ["train", "--run", "r", "--resume"]):
        refused = _cli(command, mmsr_home)
        line = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2 and "does not fit this model" in line, refused.stderr
        assert "scorer.ffn.0.weight" in line and moved in line and "--overwrite" in line


def test_saving_non_finite_weights_is_refused(tmp_path):
    from mmsr.train.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, model_state={"w": torch.ones(3)}, epoch=1, step=0, global_step=7)
    before = _sha(path)
    with pytest.raises(MMSRError, match="non-finite weights"):
        save_checkpoint(path, model_state={"w": torch.tensor([1.0, float("nan"), 2.0])}, epoch=2, step=0,
                        global_step=14)
    assert _sha(path) == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _training_refused(small_demo, run, epochs: int) -> str:
    """The one-line error a small IDSR training run in `run` stops with."""
    from mmsr import config as config_lib
    from mmsr.train import recipe
    from mmsr.train.config import TrainConfig

    config = config_lib.load(TrainConfig, None, _idsr(small_demo, epochs=epochs))
    with pytest.raises(MMSRError) as error:
        recipe.train(config, run, from_cache=False, log=lambda *_: None)
    return str(error.value)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoints(small_demo, tmp_path, monkeypatch):
    from mmsr.train import recipe

    real_step, calls = recipe.train_step, [0]

    def poisoned_step(model, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 10:  # epoch 2, step 3: one weight becomes NaN, so the loss does
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("nan")
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "train_step", poisoned_step)
    run = tmp_path / "run"
    assert "training diverged: loss nan at epoch 2, step 3 (global step 10)" in _training_refused(small_demo, run, 3)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1


def test_out_of_memory_in_a_step_or_a_validation_says_where_and_what_frees_memory(small_demo, tmp_path, monkeypatch):
    """A CUDA (or CPU) allocation that fails mid-training was a traceback ending in a paragraph
    about fragmentation. Now one line: where it ran out, the allocator's first sentence, and the
    setting that frees memory, as a resume allows it (the batch size is the optimizer's; the
    validation's batch and the cached states' place are not)."""
    from mmsr.train import recipe

    real_step, calls = recipe.train_step, [0]
    gpu_said = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB of which "
                "1.2 GiB is free. Including non-PyTorch memory, this process has 77.9 GiB memory in use. If reserved "
                "but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to "
                "avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/"
                "notes/cuda.html#environment-variables)")  # torch 2.x's words, on one line

    def full_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 10:  # epoch 2, step 3
            raise torch.OutOfMemoryError(gpu_said)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe, "train_step", full_step)
    run = tmp_path / "run"
    said = _training_refused(small_demo, run, 3)
    assert said == (f"{run}: out of memory at epoch 2, step 3: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                    "has a total capacity of 79.1 GiB of which 1.2 GiB is free. (lower optim.batch_size (now 32) and "
                    "start again with --overwrite)"), said
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # the epoch before is kept
    on_gpu = recipe._step_memory_hint(_config_of(small_demo), torch.device("cuda"))
    assert on_gpu.endswith("; or go on from the last epoch saved with --resume --set cache_into=ram (the cached states "
                           "leave the GPU)")
    monkeypatch.setattr(recipe, "train_step", real_step)

    real_validate, validations = recipe.validate, [0]

    def full_validation(*args, **kwargs):
        validations[0] += 1
        if validations[0] == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 8000000000 bytes. Error code 12")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(recipe, "validate", full_validation)
    shutil.rmtree(run)
    said = _training_refused(small_demo, run, 3)
    assert said == (f"{run}: out of memory at epoch 2's validation: one of its tensors asked for 8.0 GB at once (go on "
                    "from the last epoch saved with --resume --set eval_batch_size=128 (now 256))"), said
    monkeypatch.setattr(recipe, "validate", real_validate)
    from mmsr import config as config_lib  # the hint, followed, finishes the run
    from mmsr.train.config import TrainConfig

    config = config_lib.load(TrainConfig, None, _idsr(small_demo, epochs=3) + ["eval_batch_size=128"])
    recipe.train(config, run, from_cache=False, resume=True, log=lambda *_: None)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    validations[0] = 1  # the next validation, epoch 1's, runs out: nothing saved to resume from
    monkeypatch.setattr(recipe, "validate", full_validation)
    shutil.rmtree(run)
    assert _training_refused(small_demo, run, 1).endswith("(no epoch was saved before it: start again with "
                                                          "--overwrite --set eval_batch_size=128 (now 256))")


def _config_of(small_demo):
    from mmsr import config as config_lib
    from mmsr.train.config import TrainConfig

    return config_lib.load(TrainConfig, None, _idsr(small_demo))


def test_second_trainer_on_a_run_is_refused_naming_the_holder(small_demo, mmsr_home, finished_run):
    from mmsr.locks import output_lock
    from mmsr.train.run import prepare_run

    run = _trained_run(finished_run, mmsr_home)
    before = _sha(run / "checkpoints" / "last.pt")
    with output_lock(run, "training run"):  # this test process is the first trainer
        refused = _cli(["train", "--run", "r", "--resume"], mmsr_home)  # a real second process
        assert refused.returncode == 2, refused.stderr
        assert f"training run is in use by pid {os.getpid()} on host" in refused.stderr
        with pytest.raises(MMSRError, match="in use by"):  # --overwrite would delete a live run: refused too
            prepare_run("r", None, _idsr(small_demo, 1), overwrite=True)
    assert _sha(run / "checkpoints" / "last.pt") == before  # one intact result
    with output_lock(run, "training run"):  # the lock went with its holder
        pass


def test_disk_full_during_checkpoint_keeps_the_last_one_and_resume_finishes(small_demo, mmsr_home, tmp_path,
                                                                           finished_run):
    size = (finished_run / "checkpoints" / "last.pt").stat().st_size  # the same model's, whatever the epoch
    runs = mmsr_home / "runs"
    train = f"{sys.executable} -m mmsr_cli.app train --run r {' '.join(_sets(_idsr(small_demo, 2)))}"
    out = tmp_path / "out"
    # Room for epoch 1's best.pt and last.pt and the small files, not for epoch 2's temporary copy.
    script = f"""
set +e
{train} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc
ls -a "$MOUNT_AT/r/checkpoints" > {tmp_path}/after_fail.ls
{sys.executable} -c "import torch; print(torch.load('$MOUNT_AT/r/checkpoints/last.pt', weights_only=True)['epoch'])" \
    > {tmp_path}/kept_epoch
mount -o remount,size={size * 8 // 1024 + 256}k "$MOUNT_AT"
{sys.executable} -m mmsr_cli.app train --run r --resume 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc
mkdir -p {out} && cp -r "$MOUNT_AT/r" {out}/
"""
    done = run_on_small_disk(runs, (2 * size + 40_000) // 1024, script,
                             env={"MMSR_HOME": str(mmsr_home), "MMSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.err").read_text().strip().splitlines()[-1]
    assert (tmp_path / "first.rc").read_text().strip() == "2"
    assert "no space left on device" in first and f"{runs}/r/checkpoints/" in first, first
    assert not [n for n in (tmp_path / "after_fail.ls").read_text().split() if ".tmp-" in n]  # nothing half-written
    assert (tmp_path / "kept_epoch").read_text().strip() == "1"  # epoch 1's checkpoint is whole
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_failure_line_is_the_last_line_after_progress_bars(small_demo, mmsr_home, tmp_path):
    """A command stopped mid-epoch with live bars on a terminal: nothing is drawn after its line."""
    import re

    from test_train import _SIGNAL_AT_STEP

    if shutil.which("script") is None:
        pytest.skip("no `script` here to give the command a terminal")
    program = tmp_path / "signalled.py"
    program.write_text(_SIGNAL_AT_STEP)
    command = " ".join([sys.executable, str(program), str(int(signal.SIGTERM)), "9", "--run", "y",
                        *_sets(_idsr(small_demo, 2))])
    env = {k: v for k, v in os.environ.items() if k != "MMSR_NO_PROGRESS"}
    shown = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True,
                           env={**env, "MMSR_HOME": str(mmsr_home), "COLUMNS": "100"}, timeout=300)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.stdout)
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    assert any(line.startswith("epoch 2/2") for line in lines), lines[-5:]  # bars were drawn
    assert lines[-1].startswith("stopped: ") and "SIGTERM at epoch 2, step 3 of 7" in lines[-1], lines[-3:]


def test_signal_to_one_torchrun_rank_stops_all_at_one_step_and_resumes_bit_identically(small_demo, mmsr_home,
                                                                                         tmp_path):
    from test_train import _SIGNAL_AT_STEP, TORCHRUN

    overrides = _sets(_idsr(small_demo, 2))
    launcher = TORCHRUN[:-2]  # torchrun's own options, then a script instead of `-m mmsr_cli.app`
    program = tmp_path / "signalled.py"
    program.write_text(_SIGNAL_AT_STEP)
    whole = _cli(["train", "--run-dir", "whole", *overrides], mmsr_home, module=TORCHRUN)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # Only rank 1 is signalled: rank 0 learns of it through the per-step all-reduce.
    stopped = _cli([str(program), str(int(signal.SIGTERM)), "9", "--run-dir", "cut", *overrides], mmsr_home,
                   env_extra={"SIGNAL_RANK": "1"}, module=launcher)
    assert stopped.returncode != 0 and "SIGTERM at epoch 2, step 3 of 7: checkpoint saved" in stopped.stderr, \
        stopped.stderr[-3000:]
    resumed = _cli(["train", "--run-dir", "cut", "--resume"], mmsr_home, module=TORCHRUN)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(mmsr_home / f"runs/{run}/checkpoints/last.pt", weights_only=True) for run in ("whole", "cut"))
    assert a["global_step"] == b["global_step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_outputs_are_replaced_whole_or_not_at_all_on_a_full_disk(tmp_path):
    """eval_<split>.json, config.json, metrics, checkpoints and cache markers are all written by
    this one write-then-rename helper; on a full disk the old file stays and no temp is left."""
    script = f"""{sys.executable} - <<'PY'
import os
from pathlib import Path
from mmsr.atomic import atomic_write_text
from mmsr_store.errors import OutOfSpaceError
path = Path(os.environ["MOUNT_AT"]) / "eval_test.json"
atomic_write_text(path, "old")
try:
    atomic_write_text(path, "x" * 200_000)
except OutOfSpaceError as error:
    print("error:", error)
print("kept:", path.read_text() == "old", sorted(p.name for p in path.parent.iterdir()))
PY"""
    done = run_on_small_disk(tmp_path / "disk", 64, script)
    assert done.returncode == 0, done.stderr
    said = done.stdout.splitlines()
    assert said[0].startswith(f"error: {tmp_path}/disk/eval_test.json: cannot write: no space left on device")
    assert said[1] == "kept: True ['eval_test.json']"


def test_a_metrics_record_cut_short_is_dropped_on_resume_not_glued_to_the_next(small_demo, mmsr_home, finished_run):
    """A command killed while appending an epoch's record (before that epoch's checkpoint, which
    the trainer writes after it) left a line cut short; the resume appended the next record onto
    its end, and two epochs' records were lost to every reader (plots, studies)."""
    run = _trained_run(finished_run, mmsr_home)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text().splitlines()
    with open(metrics, "a") as handle:
        handle.write('{"epoch": 4, "loss": 1.2')  # killed inside the append
    resumed = _cli(["train", "--run", "r", "--resume", *_sets(_idsr(small_demo, 4))], mmsr_home)
    assert resumed.returncode == 0, resumed.stderr
    assert "dropped line 4, cut short" in resumed.stderr + resumed.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert metrics.read_text().splitlines()[:3] == whole


def test_metrics_records_are_read_strictly_and_reconciled_to_the_checkpoint(tmp_path):
    from mmsr.train.metrics_file import read_records, reconcile

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / e}) + "\n" for e in (1, 2, 3, 4)))
    assert reconcile(path, 4) is None  # as the checkpoint left it: untouched
    note = reconcile(path, 2)  # resumed from an earlier checkpoint (best.pt)
    assert "dropped 2 record(s) after epoch 2" in note and "no record" not in note
    assert [r["epoch"] for r in read_records(path)] == [1, 2]
    path.write_text('{"epoch": 1}\n{"epoch": 2')  # the checkpoint of epoch 2 was written, its record cut
    assert "epoch(s) 2 keep their checkpoint but have no record" in reconcile(path, 2)
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(MMSRError, match=r"metrics.jsonl:2: not JSON"):
        reconcile(path, 3)
    with pytest.raises(MMSRError, match=r"metrics.jsonl:2: not JSON"):
        read_records(path)
    assert read_records(tmp_path / "none.jsonl") == []
    path.write_text('{"epoch": 1, "valid": null}\n')  # `plot curves` ended in a TypeError on it
    with pytest.raises(MMSRError, match=r"metrics.jsonl:1: a record whose valid is None, not a mapping of metrics"):
        read_records(path)


def test_a_hand_edited_config_is_refused_on_resume_and_a_damaged_one_is_named(small_demo, mmsr_home, finished_run):
    """config.json edited by hand was half applied on --resume (the dropout took, the learning rate
    stayed in the optimizer's state, the file named neither); a damaged config.json or run.json
    ended eval, recommend and resume in a JSONDecodeError; another model.dim in it, in torch's
    multi-line size mismatch."""
    run = _trained_run(finished_run, mmsr_home)
    config_file = run / "config.json"
    original = config_file.read_text()
    edited = json.loads(original)
    edited["optim"]["lr"], edited["model"]["dropout"] = 0.5, 0.5
    config_file.write_text(json.dumps(edited))
    refused = _cli(["train", "--run", "r", "--resume", "--set", "optim.epochs=4"], mmsr_home)
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "differs from the config its checkpoint was trained with" in line, refused.stderr
    assert "config.json: differs" in line and "model.dropout 0.2 -> 0.5" in line and "optim.lr 0.0001 -> 0.5" in line
    edited = json.loads(original)
    edited["early_stop_patience"] = 2  # a length, checked as --set checks it: shorter than none at all
    config_file.write_text(json.dumps(edited))
    refused = _cli(["train", "--run", "r", "--resume"], mmsr_home)
    assert refused.returncode == 2 and "early_stop_patience 0 -> 2" in refused.stderr, refused.stderr
    edited = json.loads(original)
    edited["optim"]["epochs"], edited["device"] = 4, "cpu"  # a length that changes no step taken, and a move
    config_file.write_text(json.dumps(edited))
    resumed = _cli(["train", "--run", "r", "--resume"], mmsr_home)
    assert resumed.returncode == 0, resumed.stderr
    edited["model"]["dim"] = 24
    config_file.write_text(json.dumps(edited))
    refused = _cli(["eval", "--run", "r"], mmsr_home)
    assert refused.returncode == 2 and "weights of another shape" in refused.stderr.strip().splitlines()[-1]
    for name, damage in (("config.json", original[:200]), ("config.json", ""), ("run.json", "{\"from_cache\": tr")):
        (run / name).write_text(damage)
        for command in (["eval", "--run", "r"], ["train", "--run", "r", "--resume"]):
            refused = _cli(command, mmsr_home)
            line = refused.stderr.strip().splitlines()[-1]
            assert refused.returncode == 2 and f"{name}: damaged" in line and "--overwrite" in line, refused.stderr
        (run / "config.json").write_text(json.dumps(edited))


def test_under_torchrun_a_user_error_is_said_once_and_in_the_launchers_report(small_demo, mmsr_home):
    """Every rank printed the same error line, and torchrun's report after it said only "To
    enable traceback see ...": the line now goes to each rank's error file, so the report's root
    cause is the line, and ranks other than 0 do not print it again."""
    from test_train import TORCHRUN

    failed = _cli(["train", "--run-dir", "bad", *_sets(_idsr(small_demo) + ["model.dim=abc"])], mmsr_home,
                  module=TORCHRUN)
    assert failed.returncode != 0
    line = "error: invalid config: --set model.dim must be int, got 'abc'"
    said = failed.stderr
    # Rank 0 alone prints it (unless the launcher stopped it first, when rank 1 failed sooner).
    assert [text for text in said.splitlines() if text.startswith("error:")] in ([line], []), said
    assert f"traceback : {line}" in said[said.index("Root Cause"):], said


def test_a_cutoff_past_the_catalogue_is_said_not_refused(mmsr_home, finished_run):
    """HR@K for K at or above the catalogue's size is 1 for every case: reported (the default
    cut-offs must run on a tiny catalogue) with a note on stderr, which --json leaves clean."""
    _trained_run(finished_run, mmsr_home)
    said = _cli(["eval", "--run", "r", "--k", "10,100000", "--json"], mmsr_home)
    assert said.returncode == 0, said.stderr
    assert "note: at K=100000 the list holds every one of the" in said.stderr and "items: every case is a hit" in said.stderr
    assert json.loads(said.stdout)["metrics"]["HR@100000"] == 1.0
    quiet = _cli(["eval", "--run", "r", "--k", "10"], mmsr_home)
    assert "note:" not in quiet.stderr


def test_a_checkpoint_without_its_config_resumes_as_before_and_best_is_checked_too(small_demo, mmsr_home,
                                                                                   finished_run):
    """Checkpoints written before they held their config are not checked against config.json (an
    older run resumes as it did); `--resume-from best` is checked against best.pt's own config."""
    run = _trained_run(finished_run, mmsr_home)
    config_file = run / "config.json"
    edited = json.loads(config_file.read_text())
    edited["model"]["dropout"] = 0.5
    config_file.write_text(json.dumps(edited))
    refused = _cli(["train", "--run", "r", "--resume", "--resume-from", "best", "--set", "optim.epochs=4"], mmsr_home)
    assert refused.returncode == 2 and "model.dropout 0.2 -> 0.5" in refused.stderr, refused.stderr
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.pt"
        state = torch.load(path, weights_only=True)
        state.pop("config")
        torch.save(state, path)
    resumed = _cli(["train", "--run", "r", "--resume", "--set", "optim.epochs=4"], mmsr_home)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("signum, stops_with", [(signal.SIGTERM, "Terminated"), (signal.SIGINT, "KeyboardInterrupt")])
def test_a_second_signal_while_checkpointing_stops_at_once_with_its_own_status(signum, stops_with):
    """The first signal is recorded for the step's end; a second one stops at once. A second
    SIGTERM stopped as Ctrl-C does (exit 130, "interrupted") instead of with SIGTERM's 143."""
    from mmsr.errors import interrupt_status
    from mmsr.train.interrupt import StopRequests

    with pytest.raises(KeyboardInterrupt) as stopped, StopRequests() as requests:
        os.kill(os.getpid(), signum)
        time.sleep(0.5)  # the handler runs within this: recorded, no raise
        assert requests.requested() == signum
        os.kill(os.getpid(), signum)
        time.sleep(30)  # the second raises within this
    assert type(stopped.value).__name__ == stops_with and interrupt_status(stopped.value) == 128 + signum


def test_a_model_dim_past_the_machines_memory_is_one_line_before_anything_is_allocated(small_demo, tmp_path):
    """`--set model.dim=100000000` on 60 items asked for 24 GB: on a 24 GB machine Linux reserved it
    lazily and the OOM killer ended the process while the table was initialised (exit 137, no word).
    Now the towers are sized first (the meta device) and the run is refused by its setting. (On
    300 items the table here is 120 GB, past any machine here: without the sizing pass the
    allocator refuses it at once, a traceback, rather than reserving it.)"""
    run = tmp_path / "run"
    result = _cli(["train", *_sets(_idsr(small_demo, epochs=1)), "--set", "model.dim=100000000",
                   "--run-dir", str(run)], tmp_path / "home")
    said = result.stderr.strip()
    assert result.returncode == 2, said
    assert said.startswith("error: model.dim = 100,000,000 (300 items)") and "the model does not fit in memory: its new " \
        "weights need" in said and "to train" in said and "is available" in said and "lower it" in said, said
    assert len(said.splitlines()) == 1 and not (run / "checkpoints").exists()


def test_vectors_gone_infinite_at_validation_say_training_diverged_and_which_epoch(small_demo, tmp_path, monkeypatch):
    """A finite loss can still leave the item tower's outputs infinite (`optim.lr=1e308`): the
    validation then said "item vectors contain NaN ... check the checkpoint", no epoch, no lr, and
    no checkpoint existed. Now training says it diverged, at which epoch, and what to do."""
    from mmsr.train import recipe

    real_validate = recipe.validate

    def after_an_epoch_gone_infinite(model, *args, **kwargs):  # the epoch's last update overflowed
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.fill_(float("inf"))
        return real_validate(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "validate", after_an_epoch_gone_infinite)
    run = tmp_path / "run"
    said = _training_refused(small_demo, run, 2)
    assert "training diverged: " in said and "contain NaN or infinite values" in said and "epoch 1's validation" in said
    assert said.endswith("(lower optim.lr, keep optim.grad_clip > 0, or check the data; no epoch was saved before "
                         "it: start again with --overwrite)"), said
    assert not (run / "checkpoints" / "last.pt").exists()
