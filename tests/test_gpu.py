"""The GPU paths, where a CUDA device is present (skipped elsewhere, so CI on CPU machines skips
them): the cache built on a GPU and loaded into one, bf16 autocast training fed from GPU-resident
states, the whole recipe, resume and evaluation on a GPU, FAISS's GPU index, and NCCL.

Run them on a GPU node with `pytest tests/test_gpu.py` (docs/gpu.md: what they found on an H200).
The models are the tiny random-initialised encoders of conftest.py: what is checked is where the
tensors live and that the GPU code computes what the CPU code computes, not model quality.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsr import config as config_lib
from mmsr.train.config import TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU = torch.device("cuda", 0)
REPO = Path(__file__).resolve().parents[1]


def _config(overrides):
    return config_lib.load(TrainConfig, None, overrides)


def _train(overrides, run_dir, logged=None, **kwargs):
    from mmsr.train.recipe import train

    return train(_config(overrides), run_dir, from_cache=True, log=(logged.append if logged is not None else
                                                                    lambda *_: None), **kwargs)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def caches(tiny_overrides, tmp_path):
    """The tiny encoders' cache of the small demo, built once on the CPU and once on the GPU."""
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config = _config(tiny_overrides)
    dataset = load_dataset(config.dataset)
    built = {}
    for device in ("cpu", "cuda"):
        report = build_cache(dataset, config.encoders, batch_size=64, num_workers=2, device=device,
                             cache_dir=tmp_path / f"cache-{device}")
        assert report.complete, device
        built[device] = tmp_path / f"cache-{device}"
    return built


@pytest.fixture
def gpu_overrides(tiny_overrides):
    """The tiny training config on the GPU, bf16 autocast on, the cache's states in GPU memory; its
    cache is built where training looks for it."""
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    config = _config(tiny_overrides)
    build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0, device="cuda")
    return tiny_overrides + ["device=cuda", "cache_into=cuda", "optim.amp=true"]


def test_auto_takes_the_gpu_and_makes_it_current():
    from mmsr.distributed import pick_device

    assert pick_device("auto") == GPU and pick_device("cuda") == GPU
    assert torch.cuda.current_device() == 0


def test_a_cache_built_on_the_gpu_holds_the_states_the_cpu_computes(caches):
    """Same items, same masks, the same float16 states to within float32-vs-TF32 rounding (cuDNN
    runs DINOv2's patch convolution in TF32 by default)."""
    from mmsr_store import open_cache

    cpu, gpu = open_cache(caches["cpu"]), open_cache(caches["cuda"])
    assert sorted(cpu.modalities) == sorted(gpu.modalities) == ["image", "text"]
    for modality in cpu.modalities:
        (h_cpu, m_cpu), (h_gpu, m_gpu) = cpu.load(modality), gpu.load(modality)
        assert h_gpu.shape == h_cpu.shape and torch.equal(m_gpu, m_cpu), modality
        assert bool(h_cpu.float().abs().amax() > 0.1), modality  # not all zeros on either side
        torch.testing.assert_close(h_gpu.float(), h_cpu.float(), atol=2e-2, rtol=2e-2, msg=modality)


def test_a_cache_loads_into_gpu_memory_exactly(caches):
    from mmsr_store import open_cache

    cache = open_cache(caches["cuda"])
    for modality in cache.modalities:
        hidden, mask = cache.load(modality, into="cuda")
        assert hidden.device == GPU and mask.device == GPU and hidden.dtype == torch.float16
        ram_hidden, ram_mask = cache.load(modality, into="ram")
        assert torch.equal(hidden.cpu(), ram_hidden) and torch.equal(mask.cpu(), ram_mask), modality


def test_a_gpu_step_runs_in_bf16_from_gpu_states_and_learns(gpu_overrides):
    """One batch, 40 steps of `train_step` as the recipe calls it: the item feed hands over GPU
    tensors, the linear layers compute in bfloat16 under autocast, the weights stay float32, and
    the loss goes down."""
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.distributed import Dist
    from mmsr.train.batches import TrainBatches
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model, parameter_groups
    from mmsr.train.step import train_step

    config = _config(gpu_overrides + ["model.dropout=0.0", "model.fusion=merge-attn", "optim.lr=0.001"])
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts,
                        item_field=dataset.item_field).to(GPU)
    feed, description = open_feed(config, model, dataset, True, GPU)
    assert "(cuda)" in description, description
    batch = TrainBatches.for_config(split, config).batch(0, 0)
    ids, _ = batch.to(GPU).distinct_items()
    assert all(t.device == GPU for t in _tensors(feed(ids)))

    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    losses = [train_step(model, batch, feed, optimizer, dist=Dist(), device=GPU, optim=config.optim)
              for _ in range(40)]
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in seen, seen
    assert all(p.dtype == torch.float32 and p.device == GPU for p in model.parameters())
    means = [loss.loss / loss.targets for loss in losses]
    assert all(np.isfinite(means)) and means[-1] < 0.95 * means[0], means


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _tensors(getattr(value, name))


def test_the_recipe_trains_validates_and_evaluates_on_the_gpu(gpu_overrides, tmp_path):
    """`mmsr train --from-cache` on the GPU: the feed and the device it reports, a falling loss, and
    `mmsr eval`'s rebuild of the run on the GPU scoring the validation as the trainer did."""
    from mmsr.eval.runner import evaluate_run

    logged = []
    best = _train(gpu_overrides + ["model.fusion=gate"], tmp_path / "run", logged)
    header = next(line for line in logged if "item feed:" in line)
    assert "(cuda)" in header and "device: cuda:0" in header, header
    losses = _losses(tmp_path / "run")
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    config = _config(gpu_overrides)
    again = evaluate_run(tmp_path / "run", "valid", ks=(10, 20), protocol=config.valid_protocol,
                         batch_size=config.eval_batch_size, device="cuda")
    assert again["metrics"] == best["valid"]
    on_cpu = evaluate_run(tmp_path / "run", "valid", ks=(10, 20), protocol=config.valid_protocol,
                          batch_size=config.eval_batch_size, device="cpu")
    # The same weights on another processor: the item and user vectors differ in rounding only,
    # which can swap a near-tie here and there, never move a metric by more than a case or two.
    users = on_cpu["users"]
    for name, value in on_cpu["metrics"].items():
        assert abs(value - again["metrics"][name]) <= 2.0 / users, (name, value, again["metrics"][name])


def test_a_gpu_run_killed_mid_epoch_resumes_where_it_stopped(gpu_overrides, mmsr_home):
    """End to end on the GPU (the tiny encoders run every step), dropout on: SIGKILL after step 3
    of 4 (mid-epoch), `--resume` from its checkpoint (weights, optimizer, the CUDA RNG), against the
    run trained straight through: the same steps and, to within the GPU's unordered sums, the
    same weights and validation."""
    from test_train import kill_and_resume

    overrides = [o for o in gpu_overrides if not o.startswith("cache_into=")] + [
        "model.fusion=gate", "optim.epochs=2", "checkpoint_every_steps=1", "model.dropout=0.2"]
    # 2 steps an epoch; the trainer tests' commands see no GPU unless given one back.
    (a, b), last = kill_and_resume(overrides, 3, mmsr_home, env_extra={"CUDA_VISIBLE_DEVICES": "0"})
    assert a["global_step"] == b["global_step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key].float(), b["model"][key].float(), atol=5e-3, rtol=5e-2,
                                   msg=key)
    assert last[0]["loss"] == pytest.approx(last[1]["loss"], rel=2e-2)


def test_the_eval_command_on_the_gpu_names_its_backend(gpu_overrides, tmp_path, mmsr_home):
    _train(gpu_overrides + ["model.fusion=gate", "optim.epochs=1"], mmsr_home / "runs" / "g")
    from mmsr.eval.search import faiss_has_gpu

    env = dict(os.environ, MMSR_HOME=str(mmsr_home), MMSR_NO_PROGRESS="1")
    done = subprocess.run([sys.executable, "-m", "mmsr_cli.app", "eval", "--run", "g", "--faiss", "--device", "cuda",
                           "--split", "test", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    report = report["splits"]["test"] if "splits" in report else report
    # FAISS's GPU index where this FAISS build has one, else torch's dense counting on the GPU.
    assert report["backend"]["name"] == ("faiss-gpu" if faiss_has_gpu() else "dense-gpu"), report["backend"]
    assert report["users"] > 0 and all(0.0 <= v <= 1.0 for v in report["metrics"].values())


def test_carca_ranks_every_item_by_exact_batched_scoring_on_the_gpu(gpu_overrides, tmp_path, monkeypatch):
    """CARCA++'s candidate-dependent scorer on the GPU (every item scored for every case, in blocks
    on the device): `mmsr eval` names the exact-batched path, scores its blocks where it says, and
    gives the CPU's figures within the rounding of two processors (a near-tie swapped here and there)."""
    from mmsr.eval.runner import evaluate_run
    from mmsr.train.model import Recommender

    run = tmp_path / "carca"
    _train(gpu_overrides + ["model.kind=carca", "optim.loss=bce", "optim.epochs=2"], run)
    blocks = []
    real = Recommender.score_matrix

    def recorded(self, contexts, key_mask, items):
        blocks.append((contexts.device.type, items.device.type, tuple(items.shape)))
        return real(self, contexts, key_mask, items)

    monkeypatch.setattr(Recommender, "score_matrix", recorded)
    figures = {}
    for device in ("cuda", "cpu"):
        blocks.clear()
        figures[device] = evaluate_run(run, "valid", ks="10,20", device=device)
        assert blocks and {(c, i) for c, i, _ in blocks} == {(device, device)}, blocks[:3]
    assert figures["cuda"]["search"].startswith("exact-batched"), figures["cuda"]["search"]
    assert figures["cuda"]["backend"]["name"] == "exact-batched"
    users = figures["cpu"]["users"]
    for name, value in figures["cpu"]["metrics"].items():
        assert abs(value - figures["cuda"]["metrics"][name]) <= 2.0 / users, (name, value, figures["cuda"]["metrics"])


def test_the_faiss_gpu_index_ranks_as_the_cpu_index():
    """Random vectors with planted exact ties: the GPU index (every candidate re-scored in float64)
    gives the CPU index's ranks, case by case."""
    from mmsr.eval.search import ItemIndex, faiss_has_gpu, rank_targets

    if not faiss_has_gpu():
        pytest.skip("this FAISS build has no GPU support (pip install faiss-gpu-cu12)")

    rng = np.random.default_rng(0)
    items = rng.standard_normal((5000, 64)).astype(np.float32)
    items[100:110] = items[7]  # ties with item 7
    users = rng.standard_normal((700, 64)).astype(np.float32)
    targets = rng.integers(0, 5000, 700)
    targets[:50] = 7
    histories = [rng.integers(0, 5000, rng.integers(0, 30)).tolist() for _ in range(700)]
    ranks = {}
    for device in ("cpu", "gpu"):
        index = ItemIndex(items, device=device)
        assert index.backend == f"faiss-{device}"
        ranks[device] = rank_targets(index, users, targets, histories, max_k=50, backend="faiss")
    assert np.array_equal(ranks["cpu"], ranks["gpu"])


@pytest.mark.parametrize("mask_history", [True, False])
def test_dense_counting_on_the_gpu_gives_float64_ranks(mask_history):
    """tests/test_eval_dense.py's problems (exact ties, duplicates of the targets, near-ties below
    float32's resolution) counted on the GPU, directly and through `rank_targets`'s auto choice."""
    from test_eval_dense import count_on_device, gpu_rule_problems, reference_ranks

    from mmsr.eval.search import ItemIndex, faiss_has_gpu, rank_targets, resolve_backend

    for name, items, users, targets, histories in gpu_rule_problems():
        for max_k in (3, 50):
            expected = reference_ranks(items, users, targets, histories, mask_history, max_k)
            for blocks in ((16, 61), (4096, 32768)):
                got = count_on_device(items, users, targets, histories, mask_history, max_k, device="cuda",
                                      users_block=blocks[0], items_block=blocks[1])
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} max_k={max_k} blocks={blocks}")
            index = ItemIndex(items, device="gpu")
            assert index.gpu == GPU
            assert resolve_backend(index, "auto").name == ("faiss-gpu" if faiss_has_gpu() else "dense-gpu")
            got = rank_targets(index, users, targets, histories, mask_history=mask_history, max_k=max_k,
                               backend="dense-gpu")
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} max_k={max_k} rank_targets")


def test_dense_counting_on_the_gpu_is_exact_with_tf32_turned_on_before():
    """TF32 allowed through both of torch's APIs before the count: the near-ties below float32's
    resolution still get float64's ranks (the path turns TF32 off for its products and checks)."""
    from test_eval_dense import count_on_device, gpu_rule_problems, reference_ranks

    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        for name, items, users, targets, histories in gpu_rule_problems():
            expected = reference_ranks(items, users, targets, histories, True, 50)
            got = count_on_device(items, users, targets, histories, True, 50, device="cuda")
            np.testing.assert_array_equal(got, expected, err_msg=name)
    finally:
        torch.set_float32_matmul_precision(saved)


def test_dense_counting_refuses_a_gpu_forced_to_tf32_by_the_environment():
    """NVIDIA_TF32_OVERRIDE=1 makes cuBLAS use TF32 whatever torch asks: no flag can turn it off,
    so the path's product check must refuse to rank there (one line naming the variable), not
    give ranks whose rounding bound does not hold."""
    code = ("import torch\n"
            "from mmsr.errors import MMSRError\n"
            "from mmsr.eval.dense_gpu import ieee_float32\n"
            "try:\n"
            "    with ieee_float32(torch.device('cuda', 0)):\n"
            "        print('ranked')\n"
            "except MMSRError as error:\n"
            "    print('refused:', error.message, error.hint)\n")
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: float32 matrix products on cuda:0 are not IEEE float32"), done.stdout
    assert "NVIDIA_TF32_OVERRIDE" in done.stdout


def test_dense_gpu_ranks_a_large_catalogue_as_faiss_on_the_cpu():
    """Several user and item blocks (5,000 users x 100,000 items), users aimed near their targets
    and every 100th item a duplicate of one: the GPU path's ranks equal FAISS-CPU's, case by case."""
    from mmsr.eval.search import ItemIndex, rank_targets

    rng = np.random.default_rng(1)
    items = rng.standard_normal((100_000, 64)).astype(np.float32)
    targets = rng.integers(0, len(items), 5000)
    items[::100] = items[targets[:1000]]
    users = (items[targets] * 0.4 + rng.standard_normal((5000, 64))).astype(np.float32)
    histories = [rng.integers(0, len(items), rng.integers(0, 40)) for _ in range(5000)]
    on_cpu = rank_targets(ItemIndex(items, device="cpu"), users, targets, histories, max_k=50, backend="faiss")
    on_gpu = rank_targets(ItemIndex(items, device="gpu"), users, targets, histories, max_k=50, backend="dense-gpu")
    np.testing.assert_array_equal(on_gpu, on_cpu)
    assert len(set(on_cpu.tolist())) == 51 and 0.2 < (on_cpu <= 50).mean() < 0.6  # every rank, some capped


def test_dense_counting_of_catalogue_slices_on_the_gpu():
    """What `--shard-items` counts on each rank's GPU: the CPU's counts, slice by slice."""
    from test_eval_dense import assert_slices_count_as_on_the_cpu

    assert_slices_count_as_on_the_cpu("cuda")


_NCCL_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
from mmsr.distributed import all_gathered, all_reduced, collective_device
dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
assert dist.get_backend() == "nccl" and collective_device() == torch.device("cuda", 0)
assert all_reduced(torch.tensor([1.5, 2.0])).tolist() == [1.5, 2.0]
assert all_reduced(torch.tensor([3.0]), op="max").device.type == "cpu"
assert all_gathered({"rank": 0}) == [{"rank": 0}]
print("nccl ok", torch.cuda.nccl.version())
dist.destroy_process_group()
"""


def test_nccl_collectives_reach_the_gpu():
    """mmsr's collectives under an NCCL group (one rank: one GPU here): tensors go to the GPU for
    NCCL and come back to the CPU for the caller."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    done = subprocess.run([sys.executable, "-c", _NCCL_SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nccl ok" in done.stdout
