"""Where the training feed loads the cache (`cache_into`), and what stops it from being OOM-killed
or leaving a half-written mmap copy (issue 14): the memory check before "ram", "auto" choosing
mmap when the states do not fit comfortably, and a full disk while making the mmap copy."""

from __future__ import annotations

import errno
import gc
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cache_helpers import fake_config, fake_encoders, repo_pythonpath
from mmsr.caches import cache_path
from mmsr.data.dataset import load_dataset
from mmsr.errors import MMSRError
from mmsr.train import feeds
from mmsr.train.config import TrainConfig
from mmsr_store import StoreError, open_cache
from mmsr_store import reader as store_reader
from mmsr_store.errors import OutOfSpaceError

CPU = torch.device("cpu")


@pytest.fixture
def cached(small_demo):
    """(dataset, cache directory): the small demo cached with the fake encoders where the feed looks."""
    from mmsr.cache_stage import build_cache

    dataset = load_dataset(small_demo, check_images=False)
    path = cache_path(dataset, fake_config())
    report = build_cache(dataset, fake_config(), cache_dir=path, encoders=fake_encoders(), batch_size=64,
                         num_workers=0, device="cpu", chunk_items=16)
    assert report.complete
    return dataset, path


def open_feed(dataset, cache_into: str, device=CPU):
    config = TrainConfig(dataset=str(dataset.root), encoders=fake_config(), cache_into=cache_into)
    return feeds.open_states_feed(config, fake_encoders(), dataset, True, device)


def states_need(path) -> int:
    cache = open_cache(path)
    return sum(cache.nbytes(m) for m in ("text", "image"))


def pretend_available(monkeypatch, free: int) -> None:
    monkeypatch.setattr(feeds, "available_memory", lambda: free)


def refuse_loading(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the cache was loaded although it does not fit")

    monkeypatch.setattr(store_reader.Cache, "load", load)


def mmap_dir_files(path) -> list[str]:
    return sorted(p.name for p in (path / "mmap").iterdir()) if (path / "mmap").is_dir() else []


# ----------------------------------------------------------------------------- the memory check


def test_nbytes_counts_float16_states_and_the_mask(cached):
    _, path = cached
    cache = open_cache(path)
    for modality in cache.modalities:
        hidden, mask = cache.load(modality, into="ram")
        assert cache.nbytes(modality) == hidden.numel() * hidden.element_size() + mask.numel() * mask.element_size()


def test_ram_that_does_not_fit_is_refused_before_loading_and_suggests_mmap(cached, monkeypatch):
    dataset, path = cached
    need = states_need(path)  # both modalities together: the feed loads them all
    pretend_available(monkeypatch, need)  # fits, but not with room for training
    refuse_loading(monkeypatch)
    with pytest.raises(MMSRError) as error:
        open_feed(dataset, "ram")
    message = str(error.value)
    assert str(path) in message and "--set cache_into=mmap" in message
    assert f"needs {feeds.human_bytes(need)} of states in RAM" in message
    assert f"only {feeds.human_bytes(need)} is available" in message
    assert not mmap_dir_files(path)


def test_ram_that_fits_loads(cached, monkeypatch):
    dataset, path = cached
    pretend_available(monkeypatch, 2 * states_need(path))  # above the 80 % line, below auto's 50 %
    feed, description = open_feed(dataset, "ram")
    assert description == f"cache {path} (ram)"
    assert feed.states["text"][0].shape == (dataset.num_items, 12, 16)


def test_a_copy_per_torchrun_process_is_counted(cached, monkeypatch):
    dataset, path = cached
    pretend_available(monkeypatch, 2 * states_need(path))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    refuse_loading(monkeypatch)
    with pytest.raises(MMSRError, match="4 processes on this node, a copy each"):
        open_feed(dataset, "ram")


def test_auto_picks_ram_when_the_states_fit_comfortably_and_mmap_otherwise(cached, monkeypatch):
    dataset, path = cached
    need = states_need(path)
    pretend_available(monkeypatch, 10 * need)
    ram_feed, description = open_feed(dataset, "auto")
    assert description.startswith(f"cache {path} (ram: ") and "<= 50% of" in description
    assert not mmap_dir_files(path)

    pretend_available(monkeypatch, need * 3 // 2)  # would fit, but not in half of what is free
    mmap_feed, description = open_feed(dataset, "auto")
    assert description == (f"cache {path} (mmap: {feeds.human_bytes(need)} of states > 50% of "
                           f"{feeds.human_bytes(need * 3 // 2)} available)")
    assert {"text.hidden.npy", "image.hidden.npy"} <= set(mmap_dir_files(path))

    # The same states reach the model, whichever way they were loaded.
    ids = torch.tensor([0, 5, 299, 17, 5])
    from_ram, from_mmap = ram_feed(ids), mmap_feed(ids)
    for modality in ("text", "image"):
        assert torch.equal(from_ram[modality][0], from_mmap[modality][0])
        assert torch.equal(from_ram[modality][1], from_mmap[modality][1])
    for modality, (hidden, mask) in ram_feed.states.items():
        assert torch.equal(hidden, mmap_feed.states[modality][0]) and torch.equal(mask, mmap_feed.states[modality][1])


def mapped_rss(path: Path) -> int:
    """kB of `path`'s mappings resident in this process (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            # An anonymous mapping's header has no path (5 fields): it ends `path`'s section too,
            # or its Rss would be counted as the file's whenever it sits right after the file.
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
@pytest.mark.parametrize("measured", [True, False], ids=["rss-measured", "no-proc-rows-counted"])
def test_mmap_feed_hands_back_the_pages_it_read(cached, monkeypatch, measured):
    """Read pages of a mapped file count in RSS; the feed releases them as it goes, so an epoch
    over states larger than RAM does not show them all (the peak-RSS target of issue 14).
    It measures how much became resident (RssFile); without /proc it counts the rows gathered."""
    dataset, path = cached
    released = []
    monkeypatch.setattr(feeds, "MMAP_RESIDENT_BYTES", 50_000)
    if not measured:
        monkeypatch.setattr(feeds, "mapped_file_rss", lambda: None)
    # The feed measures the whole process's mapped file pages from its construction on. A dead
    # memory map of an earlier test in this worker, unmapped by a collection during the epoch,
    # would shrink that figure and hide this file's growth; collect them before the baseline.
    # (Seen once under xdist: no release after the first batch; this cause is a likely one, not
    # a confirmed one.)
    gc.collect()
    feed, description = open_feed(dataset, "mmap")
    assert description == f"cache {path} (mmap)"
    real_release = feed.release
    feed.release = lambda: (released.append(mapped_rss(path / "mmap" / "image.hidden.npy")), real_release())
    expected = {m: open_cache(path).load(m, into="ram") for m in ("text", "image")}
    for start in range(0, dataset.num_items, 100):  # an "epoch" in batches of 100 items
        ids = torch.arange(start, min(dataset.num_items, start + 100))
        for modality, (hidden, mask) in feed(ids).items():
            assert torch.equal(hidden, expected[modality][0][ids]) and torch.equal(mask, expected[modality][1][ids])
        if start == 0:
            assert released and released[-1] > 0  # 100 items of rows were resident before the release
            assert mapped_rss(path / "mmap" / "image.hidden.npy") == 0
    assert len(released) == 3  # 100 items are ~92 kB of rows: one release per batch


def test_auto_on_gpu_keeps_cuda_while_it_fits_and_unknown_memory_keeps_ram(cached, monkeypatch):
    _, path = cached
    cache = open_cache(path)
    gpu = torch.device("cuda", 1)
    need = states_need(path)
    seen = []
    gpu_free = {"bytes": 2 * need}
    monkeypatch.setattr(feeds, "gpu_free_memory", lambda device: seen.append(device) or gpu_free["bytes"])
    pretend_available(monkeypatch, 1)
    assert feeds.choose_cache_into("auto", cache, cache.modalities, gpu) == ("cuda", "")
    assert seen == [gpu]  # the free memory of this process's own GPU, not the current one
    assert feeds.choose_cache_into("cuda", cache, cache.modalities, gpu) == ("cuda", "")
    # Too big for the GPU: "auto" falls back to the host rule and says why; "cuda" is refused.
    gpu_free["bytes"] = need
    into, why = feeds.choose_cache_into("auto", cache, cache.modalities, gpu)
    assert into == "mmap" and "free on cuda:1" in why, why  # 1 byte of host RAM: mmap
    pretend_available(monkeypatch, 100 * need)
    assert feeds.choose_cache_into("auto", cache, cache.modalities, gpu)[0] == "ram"
    with pytest.raises(MMSRError) as error:
        feeds.choose_cache_into("cuda", cache, cache.modalities, gpu)
    assert "free there" in str(error.value) and "cache_into=auto" in str(error.value) and str(path) in str(error.value)
    # Four torchrun processes each hold a copy on their own GPU: the need per GPU is one copy.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    gpu_free["bytes"] = 2 * need
    assert feeds.choose_cache_into("auto", cache, cache.modalities, gpu) == ("cuda", "")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    with pytest.raises(MMSRError, match="the run's device is cpu"):
        feeds.choose_cache_into("cuda", cache, cache.modalities, CPU)
    pretend_available(monkeypatch, 1)
    assert feeds.choose_cache_into("mmap", cache, cache.modalities, CPU) == ("mmap", "")
    pretend_available(monkeypatch, None)
    assert feeds.choose_cache_into("auto", cache, cache.modalities, CPU) == ("ram", "available memory unknown")
    assert feeds.choose_cache_into("ram", cache, cache.modalities, CPU) == ("ram", "")


def test_a_gpu_feed_loads_the_states_onto_its_own_gpu(cached, monkeypatch):
    """Under torchrun, rank r trains on cuda:r: its states go there, not to the current device
    (cuda:0 in every rank until it is set), which would put every rank's copy on GPU 0."""
    dataset, path = cached
    gpu = torch.device("cuda", 3)
    monkeypatch.setattr(feeds, "gpu_free_memory", lambda device: 1 << 40)
    loads = []

    def load(self, modality, into="ram", device=None):
        loads.append((modality, into, device))
        return torch.zeros(self.num_items, 1, 1, dtype=torch.float16), torch.zeros(self.num_items, 1, dtype=torch.bool)

    monkeypatch.setattr(store_reader.Cache, "load", load)
    feed, description = open_feed(dataset, "auto", device=gpu)
    assert description == f"cache {path} (cuda)"
    assert sorted(loads) == [("image", "cuda", gpu), ("text", "cuda", gpu)]
    assert feed.device == gpu


def test_the_reader_refuses_ram_beyond_available_memory(cached, monkeypatch):
    """The store's own backstop, for callers other than the feed."""
    _, path = cached
    cache = open_cache(path)
    monkeypatch.setattr(store_reader, "available_memory", lambda: cache.nbytes("text") - 1)
    with pytest.raises(StoreError) as error:
        cache.load("text", into="ram")
    assert str(path) in str(error.value) and 'into="mmap"' in str(error.value)
    monkeypatch.setattr(store_reader, "available_memory", lambda: cache.nbytes("text"))
    assert cache.load("text", into="ram")[0].shape[0] == cache.num_items


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch):
    from mmsr_store import memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n")
    root = tmp_path / "cgroup"
    (root / "job").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (root / "job" / "memory.max").write_text(f"{4 << 30}\n")
    (root / "job" / "memory.current").write_text(f"{2 << 30}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {1 << 30}\n")
    (tmp_path / "self_cgroup").write_text("0::/job\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "self_cgroup")
    assert memory.available_memory() == (4 << 30) - (1 << 30)  # the limit, less what is used and not reclaimable
    (root / "job" / "memory.max").write_text("max\n")
    assert memory.available_memory() == 12000000 * 1024
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "missing")
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(memory.os, "sysconf", lambda name: pages[name])
    assert memory.available_memory() == 1000 * 4096  # elsewhere: sysconf's free pages x page size


# ----------------------------------------------------------------------------- a full disk under mmap/


def test_enospc_while_copying_names_the_file_leaves_nothing_trusted_and_a_rerun_succeeds(cached, monkeypatch):
    _, path = cached
    expected = {m: open_cache(path).load(m, into="ram") for m in ("text", "image")}
    real_write = store_reader._write_block
    calls = []

    def disk_fills_up(handle, block):
        calls.append(len(block))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, block)

    monkeypatch.setattr(store_reader, "READ_BLOCK_BYTES", 1)  # a block per chunk: the disk fills up mid-file
    monkeypatch.setattr(store_reader, "_write_block", disk_fills_up)
    with pytest.raises(OutOfSpaceError) as error:
        open_cache(path).load("image", into="mmap")
    message = str(error.value)
    hidden_npy = path / "mmap" / "image.hidden.npy"
    assert message.startswith(f"{hidden_npy}: cannot write the mmap copy of image/hidden: no space left on device")
    assert "rerun" in message
    assert mmap_dir_files(path) == []  # no temp file, no .npy, no stamp: nothing a later run could trust

    # Space is freed: the rerun makes the copy, and it holds the cached states.
    monkeypatch.setattr(store_reader, "_write_block", real_write)
    for modality, (hidden, mask) in expected.items():
        got_hidden, got_mask = open_cache(path).load(modality, into="mmap")
        assert torch.equal(got_hidden, hidden) and torch.equal(got_mask, mask)
    assert mmap_dir_files(path) == sorted(f"{m}.{kind}" for m in ("image", "text")
                                          for kind in ("hidden.npy", "mask.npy", "stamp.json"))


def test_the_copy_is_written_a_block_at_a_time(cached, monkeypatch):
    """Making the copy holds one decoded block in memory, never a whole array."""
    _, path = cached
    blocks = []
    real_write = store_reader._write_block
    monkeypatch.setattr(store_reader, "READ_BLOCK_BYTES", 1)  # the smallest block: one chunk (16 items)
    monkeypatch.setattr(store_reader, "_write_block", lambda handle, block: (blocks.append(len(block)),
                                                                             real_write(handle, block)))
    hidden, _ = open_cache(path).load("text", into="mmap")
    assert max(blocks) == 16 and sum(blocks) == 2 * hidden.shape[0]  # hidden, then mask


def test_a_stale_copy_is_not_trusted_after_a_failed_remake(cached, monkeypatch):
    _, path = cached
    open_cache(path).load("text", into="mmap")
    stamp = path / "mmap" / "text.stamp.json"
    stamp.write_text('{"digest": "made before an append"}')

    def full(handle, block):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(store_reader, "_write_block", full)
    with pytest.raises(OutOfSpaceError, match="text.hidden.npy: cannot write the mmap copy of text/hidden"):
        open_cache(path).load("text", into="mmap")
    assert mmap_dir_files(path) == []


def test_too_little_free_space_is_refused_before_decoding(cached, monkeypatch):
    _, path = cached
    cache = open_cache(path)
    monkeypatch.setattr(store_reader.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    monkeypatch.setattr(store_reader, "_write_block", lambda *a: pytest.fail("wrote although the disk is too small"))
    with pytest.raises(OutOfSpaceError) as error:
        cache.load("text", into="mmap")
    assert str(error.value).startswith(f"{path / 'mmap'}: cannot write the mmap copy of the text states: it needs "
                                       f"{feeds.human_bytes(cache.nbytes('text'))}, 1.0 kB is free there")


@pytest.mark.faults
def test_mmap_copy_on_a_real_full_disk_is_an_error_not_a_sigbus(cached, tmp_path):
    """A real tmpfs that fills up under CACHE/mmap/. A writable memmap (what the copy used to be
    made with) dies there with SIGBUS; plain writes get ENOSPC and the one-line error."""
    from fault_helpers import run_on_small_disk

    _, path = cached
    # The free-space check is switched off, as when another writer fills the disk meanwhile.
    code = ("import sys, shutil; from types import SimpleNamespace; from mmsr_store import open_cache; "
            "from mmsr_store.errors import OutOfSpaceError; "
            "shutil.disk_usage = lambda p: SimpleNamespace(free=1 << 40); "
            f"cache = open_cache({str(path)!r})\n"
            "try:\n    [cache.load(m, into='mmap') for m in ('text', 'image')]\n"
            "except OutOfSpaceError as e:\n    print(e); sys.exit(2)\n"
            "ram = [t.numpy().tobytes() for m in ('text', 'image') for t in cache.load(m, into='ram')]\n"
            "mm = [t.numpy().tobytes() for m in ('text', 'image') for t in cache.load(m, into='mmap')]\n"
            "assert ram == mm; print('same states')")
    python = shlex.join([sys.executable, "-c", code])
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
set +e
{python} > {out}/first.out 2>&1; echo $? > {out}/first.rc
ls -a "$MOUNT_AT" > {out}/left
mount -o remount,size=2048k "$MOUNT_AT"
{python} > {out}/second.out 2>&1; echo $? > {out}/second.rc
"""
    # The text copy (~120 kB) fits in 160 kB; the image copy (~155 kB) does not.
    done = run_on_small_disk(path / "mmap", 160, script, env={"PYTHONPATH": repo_pythonpath(), "OMP_NUM_THREADS": "1"},
                             timeout=300)
    assert done.returncode == 0, done.stderr
    first = (out / "first.out").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first
    assert f"{path / 'mmap' / 'image.hidden.npy'}: cannot write the mmap copy of image/hidden: no space left" in first
    assert not [n for n in (out / "left").read_text().split() if n.startswith(".") and n not in (".", "..")]
    assert "image.stamp.json" not in (out / "left").read_text()
    second = (out / "second.out").read_text()
    assert (out / "second.rc").read_text().strip() == "0" and "same states" in second, second
