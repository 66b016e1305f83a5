"""Which GPU each process uses, checked on a CPU machine by standing in for the CUDA driver.

A torchrun rank must train on its own GPU (LOCAL_RANK), make it current, and bind NCCL to it:
anything that takes "the current device" (NCCL's metric sums, pinned-memory threads) otherwise
lands on GPU 0 in every rank. And a checkpoint written by rank 0 gives every rank its own
random state back, with the GPU generator of its own device. And a process that joined a group
ends with its command's code without the interpreter's teardown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from mmsr import distributed
from mmsr.errors import MMSRError
from mmsr.train import checkpoint


@pytest.fixture
def four_gpus(monkeypatch):
    """torch.cuda as a 4-GPU machine would answer; what was made current is recorded."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    return current


def test_each_torchrun_rank_takes_and_makes_current_its_own_gpu(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.pick_device("auto") == torch.device("cuda", 2)
    assert distributed.pick_device("cuda") == torch.device("cuda", 2)
    assert distributed.pick_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.pick_device("cpu") == torch.device("cpu")
    assert four_gpus == [torch.device("cuda", 2), torch.device("cuda", 2), torch.device("cuda", 1)]


def test_a_device_mmsr_has_no_path_for_is_refused_by_name():
    for name in ("nope", "mps", "cuda:x", ""):
        assert distributed.device_problem(name), name
        with pytest.raises(MMSRError, match=f"device {name!r} is not a device mmsr runs on"):
            distributed.pick_device(name)
    assert all(distributed.device_problem(name) is None for name in ("auto", "cpu", "cuda", "cuda:3"))


def test_more_ranks_than_gpus_is_a_clear_error(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(MMSRError) as error:
        distributed.pick_device("auto")
    assert "'cuda:5'" in str(error.value) and "sees 4 GPU(s)" in str(error.value) and "LOCAL_RANK=5" in str(error.value)
    assert "--nproc-per-node" in str(error.value)
    assert four_gpus == []  # nothing was made current


def test_nccl_is_bound_to_the_ranks_gpu(four_gpus, monkeypatch):
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(distributed.atexit, "register", lambda function: None)
    gpu = torch.device("cuda", 3)
    assert distributed.init_from_env(gpu) == distributed.Dist(3, 4, 3)
    assert joined == [{"backend": "nccl", "device_id": gpu}] and four_gpus == [gpu]
    joined.clear()
    distributed.init_from_env(torch.device("cpu"))
    assert joined == [{"backend": "gloo"}]


def _draws() -> torch.Tensor:
    return torch.rand(4)


def test_every_rank_gets_its_own_random_state_back(tmp_path):
    states = []
    for rank in range(2):  # two ranks whose streams have drifted apart
        torch.manual_seed(rank)
        states.append(checkpoint.rng_state(torch.device("cpu")))
    after = [None, None]
    for rank in range(2):
        torch.set_rng_state(states[rank]["cpu"])
        after[rank] = _draws()
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, model_state={}, epoch=1, step=0, global_step=1, rng=states)
    saved = checkpoint.load_checkpoint(path)
    for rank in range(2):
        torch.manual_seed(1234)
        checkpoint.restore_rng(saved, rank)
        assert torch.equal(_draws(), after[rank]), rank
    # Resumed on three ranks: rank 2 takes saved rank 0's state, and nothing fails.
    checkpoint.restore_rng(saved, 2)
    assert torch.equal(_draws(), after[0])


def test_checkpoints_from_before_per_rank_states_still_resume(tmp_path):
    torch.manual_seed(7)
    legacy = {"rng_cpu": torch.get_rng_state(), "rng_cuda": None}
    expected = _draws()
    torch.manual_seed(0)
    checkpoint.restore_rng(legacy, 1)
    assert torch.equal(_draws(), expected)


def test_a_process_that_joined_a_group_ends_with_its_code_after_the_exit_handlers(tmp_path):
    """`exit_after_group`: without a group it returns (a normal exit follows); after one it runs
    the exit handlers (where the group is left), flushes what is still buffered, and ends with the
    command's code, skipping the interpreter's teardown that aborted gloo ranks."""
    script = f"""
import atexit, sys
from mmsr import distributed
distributed.exit_after_group(5)  # no group joined: returns
atexit.register(lambda: open({str(tmp_path / "handler")!r}, "w").write("ran"))
distributed._joined[0] = True
sys.stdout.write("buffered, no newline")
distributed.exit_after_group(7)
raise SystemExit(1)  # never reached
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "handler").read_text() == "ran"


_JOINED_CLI = """
import atexit, sys
from mmsr import distributed
marker = sys.argv[1]
# A joined group as the CLI sees it: barrier and destroy leave a mark instead of talking to peers.
distributed.dist.is_initialized = lambda: True
distributed.dist.barrier = lambda: open(marker, "a").write("barrier ")
distributed.dist.destroy_process_group = lambda: open(marker, "a").write("destroy")
atexit.register(distributed._leave)
distributed._joined[0] = True
sys.argv = ["mmsr", *sys.argv[2:]]
from mmsr_cli.app import main
main()
"""


@pytest.mark.parametrize("args,code,left", [
    (["data", "info", "--help"], 0, "barrier destroy"),  # done: the group is left
    (["train", "--set", "optim.lr=-1"], 2, None),  # failed: no barrier that would wait for the others
])
def test_the_cli_of_a_joined_rank_leaves_the_group_only_when_it_succeeded(tmp_path, args, code, left):
    marker = tmp_path / "left"
    done = subprocess.run([sys.executable, "-c", _JOINED_CLI, str(marker), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MMSR_HOME": str(tmp_path)})
    assert done.returncode == code, done.stderr[-2000:]
    assert (marker.read_text() if marker.exists() else None) == left
    if code:
        assert "optim.lr" in done.stderr  # the one-line error came out before os._exit


_FAILING_RANK = """
import time
import torch
import torch.distributed as dist
from mmsr import distributed

rank = distributed.init_from_env(torch.device("cpu")).rank
if rank == 1:
    time.sleep(0.5)
    distributed.exit_after_group(2)  # a failing rank
try:
    dist.all_reduce(torch.ones(1))  # rank 0, inside a collective when its peer fails
except Exception as error:
    print("rank 0 saw", type(error).__name__, flush=True)
    distributed.exit_after_group(3)
distributed.exit_after_group(0)
"""


def test_a_failing_torchrun_rank_does_not_hold_its_peers_in_the_leaving_barrier(tmp_path):
    """Two real gloo ranks: rank 1 fails while rank 0 waits in an all-reduce. Rank 1 leaves without
    the barrier, so rank 0 learns of it at once (its peer's connection closes) instead of after
    the group's 30-minute timeout, and the job fails in seconds. (With the barrier, the same
    launch was still hanging after 40 s.)"""
    script = tmp_path / "failing_rank.py"
    script.write_text(_FAILING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "CUDA_VISIBLE_DEVICES": ""}
    # torchrun stops the other ranks once it sees one fail. Checking every 0.1 s (its default), it
    # once sent rank 0 its SIGTERM before a loaded machine let rank 0 print what it saw (CI, with a
    # training job beside it); every 3 s leaves rank 0 the time, and a hang still shows as the
    # timeout below.
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--monitor-interval", "3",
                           str(script)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "rank 0 saw" in done.stdout + done.stderr, done.stderr[-2000:]


def test_torchrun_variables_left_in_the_shell_are_named_not_a_valueerror(monkeypatch):
    """`RANK= mmsr ...` and `WORLD_SIZE=abc` ended in int()'s ValueError; WORLD_SIZE=2 alone in
    torch's KeyError for RANK. Each is one line naming the variable, before any group is joined."""
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **_: pytest.fail("joined a group"))
    for env, said in (({"WORLD_SIZE": "abc"}, "WORLD_SIZE is 'abc', not a whole number"),
                      ({"WORLD_SIZE": "2"}, "RANK is not set"),
                      ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": ""}, "LOCAL_RANK is '', not a whole number")):
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(MMSRError, match=re.escape(said)) as error:
            distributed.init_from_env(torch.device("cpu"))
        assert "unset WORLD_SIZE to run in one process" in str(error.value)
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.init_from_env(torch.device("cpu")) == distributed.Dist()  # one process, as before
