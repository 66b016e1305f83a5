"""mmsr_store on its own: manifest semantics, fingerprints, extension, shard claims, readers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from mmsr_store import CacheWriter, ModalitySpec, Shard, StoreError, inspect_cache, open_cache
from mmsr_store import manifest
from mmsr_store.shards import ShardClaim, flocked

T, D = 4, 3


def spec(fp=None, chunk_items=4):
    return ModalitySpec(T, D, fp or {"model": "m", "weights_sha256": "w"}, chunk_items)


def ids(n, prefix="i"):
    return [f"{prefix}{k}" for k in range(n)]


def rows(task, value=None):
    n = task.stop - task.todo_start
    start = task.todo_start
    hidden = (np.arange(start, start + n, dtype=np.float16)[:, None, None] + np.zeros((n, T, D), np.float16)
              if value is None else np.full((n, T, D), value, np.float16))
    return hidden, np.ones((n, T), bool)


def fill(writer, modality="text", value=None):
    for task in writer.pending(modality):
        writer.write_chunk(task, *rows(task, value))


def test_store_error_is_one_line():
    error = StoreError("bad\nthing", where="/x", hint="do y")
    assert str(error) == "/x: bad thing (do y)"
    assert str(StoreError("plain")) == "plain"


def test_store_imports_no_mmsr():
    code = ("import sys, mmsr_store, mmsr_store.reader, mmsr_store.writer; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mmsr', 'mmsr_cli')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_decides_completion_not_chunk_files(tmp_path):
    writer = CacheWriter(tmp_path / "c", item_ids=ids(10), specs={"text": spec()})
    tasks = writer.pending("text")
    assert [(t.start, t.stop) for t in tasks] == [(0, 4), (4, 8), (8, 10)]
    # Data without a marker (a write killed before its marker) does not count as finished.
    hidden_array = writer.arrays["text"][0]
    hidden_array[0:4] = np.ones((4, T, D), np.float16)
    assert len(writer.pending("text")) == 3
    # An all-zero chunk equals the fill value, so zarr writes no file; its marker still counts.
    writer.write_chunk(tasks[0], *rows(tasks[0], value=0))
    writer.write_chunk(tasks[1], *rows(tasks[1]))
    assert [t.chunk for t in writer.pending("text")] == [2]
    with pytest.raises(StoreError, match=r"text: 1 of 3 chunks unfinished \(2\).*run mmsr cache build"):
        open_cache(tmp_path / "c")
    writer.write_chunk(tasks[2], *rows(tasks[2]))
    writer.close()
    cache = open_cache(tmp_path / "c")
    hidden, mask = cache.load("text")
    assert hidden.dtype.is_floating_point and str(hidden.dtype) == "torch.float16" and mask.dtype == __import__("torch").bool
    assert hidden.shape == (10, T, D) and mask.shape == (10, T)
    assert hidden[:4].abs().sum() == 0 and hidden[9, 0, 0] == 9
    record = manifest.read(tmp_path / "c", "text")[1]
    assert (record.start, record.stop) == (4, 8) and len(record.sha256) == 64
    assert inspect_cache(tmp_path / "c")["complete"]


def test_marker_for_other_items_is_ignored(tmp_path):
    with CacheWriter(tmp_path / "c", item_ids=ids(8), specs={"text": spec()}) as writer:
        fill(writer)
    record = manifest.read(tmp_path / "c", "text")[0]
    record.items_hash = "0" * 64
    manifest.write(tmp_path / "c", "text", record)
    with pytest.raises(StoreError, match=r"1 of 2 chunks unfinished \(0\)"):
        open_cache(tmp_path / "c")


def test_a_lost_metadata_file_is_named_by_every_entry_point(tmp_path):
    """A store's zarr.json or an array's lost: `cache info`, `verify`, a build into it and
    training each ended in a KeyError or zarr's GroupNotFoundError traceback."""
    from mmsr_store import verify_cache

    for lost, said in (("store.zarr/zarr.json", r"store's metadata cannot be read"),
                       ("store.zarr/text/hidden/zarr.json", r"the array text/hidden cannot be opened")):
        root = tmp_path / lost.replace("/", "_")
        writer = CacheWriter(root, item_ids=ids(6), specs={"text": spec()})
        fill(writer)
        writer.close()
        (root / lost).unlink()
        for entry in (open_cache, inspect_cache, verify_cache,
                      lambda path: CacheWriter(path, item_ids=ids(6), specs={"text": spec()})):
            with pytest.raises(StoreError, match=said + r".*cache build with the same config and --overwrite"):
                entry(root)
        CacheWriter(root, item_ids=ids(6), specs={"text": spec()}, overwrite=True).close()  # what the hint says


def test_a_lost_item_ids_file_is_named_with_the_build_that_writes_it(tmp_path):
    """It read as 0 items: `verify` said to --repair, and --repair said to build."""
    from mmsr_store import verify_cache

    writer = CacheWriter(tmp_path / "c", item_ids=ids(6), specs={"text": spec()})
    fill(writer)
    writer.close()
    (tmp_path / "c" / "item_ids.txt").unlink()
    for entry in (open_cache, verify_cache):
        with pytest.raises(StoreError, match=r"item_ids\.txt: item_ids\.txt is missing .*run mmsr cache build"):
            entry(tmp_path / "c")
    CacheWriter(tmp_path / "c", item_ids=ids(6), specs={"text": spec()}).close()  # the build writes it again
    assert open_cache(tmp_path / "c").item_ids() == ids(6)


def test_read_one_marker_agrees_with_the_whole_manifest(tmp_path):
    with CacheWriter(tmp_path / "c", item_ids=ids(8), specs={"text": spec()}) as writer:
        fill(writer)
    whole = manifest.read(tmp_path / "c", "text")
    assert manifest.read_one(tmp_path / "c", "text", 1) == whole[1]
    assert manifest.read_one(tmp_path / "c", "text", 7) is None  # no such chunk
    # A marker file holding another chunk's record, or garbage, does not count for its chunk.
    manifest.marker_path(tmp_path / "c", "text", 0).write_text(json.dumps(whole[1].to_json()))
    assert manifest.read_one(tmp_path / "c", "text", 0) is None
    manifest.marker_path(tmp_path / "c", "text", 1).write_text("{not json")
    assert manifest.read_one(tmp_path / "c", "text", 1) is None


def test_missing_cache_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match="cache not found.*run mmsr cache build"):
        open_cache(tmp_path / "nope")


def test_fingerprint_check_and_refusals(tmp_path):
    fp = {"model": "m", "weights_sha256": "w", "item_list_hash": "a", "split_layer": 4}
    with CacheWriter(tmp_path / "c", item_ids=ids(6), specs={"text": spec(fp)}) as writer:
        fill(writer)
    cache = open_cache(tmp_path / "c")
    assert cache.fingerprint("text") == fp and cache.modalities == ("text",) and cache.num_items == 6
    cache.check({"text": dict(fp)})
    with pytest.raises(StoreError, match=r"text\.split_layer: cache has 4, expected 3.*text\.weights_sha256"):
        cache.check({"text": {**fp, "split_layer": 3, "weights_sha256": "v"}})
    with pytest.raises(StoreError, match="image: not in the cache"):
        cache.check({"image": fp})
    # A writer with another encoder setup, or a reordered item list, is refused.
    with pytest.raises(StoreError, match=r"another encoder setup: text\.weights_sha256"):
        CacheWriter(tmp_path / "c", item_ids=ids(6), specs={"text": spec({**fp, "weights_sha256": "v"})})
    with pytest.raises(StoreError, match="changed other than by appending: row 0"):
        CacheWriter(tmp_path / "c", item_ids=ids(6)[::-1], specs={"text": spec(fp)})
    with pytest.raises(StoreError, match="other build options"):
        CacheWriter(tmp_path / "c", item_ids=ids(6), specs={"text": spec(fp)}, build={"on_bad_image": "skip"})
    # --overwrite starts again.
    with CacheWriter(tmp_path / "c", item_ids=ids(3), specs={"text": spec({**fp, "weights_sha256": "v"})},
                     overwrite=True) as writer:
        assert len(writer.pending("text")) == 1


def test_append_items_encodes_only_new_rows(tmp_path):
    with CacheWriter(tmp_path / "c", item_ids=ids(10), specs={"text": spec({"item_list_hash": "a"})}) as writer:
        fill(writer)
    before = open_cache(tmp_path / "c").load("text", into="mmap")[0].clone()
    with CacheWriter(tmp_path / "c", item_ids=ids(10) + ids(5, "new"), specs={"text": spec({"item_list_hash": "b"})}) as writer:
        tasks = writer.pending("text")
        # chunk 2 keeps its rows 8, 9 and gets 10, 11; chunk 3 is new.
        assert [(t.chunk, t.todo_start, t.stop) for t in tasks] == [(2, 10, 12), (3, 12, 15)]
        fill(writer)
    cache = open_cache(tmp_path / "c")
    assert cache.num_items == 15 and cache.fingerprint("text") == {"item_list_hash": "b"}
    hidden, _ = cache.load("text", into="mmap")  # the stale .npy copy is rebuilt
    assert hidden.shape[0] == 15 and bool((hidden[:10] == before).all())
    assert hidden[:, 0, 0].tolist() == list(range(15))


def test_ram_and_mmap_agree(tmp_path):
    with CacheWriter(tmp_path / "c", item_ids=ids(9), specs={"text": spec(chunk_items=2)}) as writer:
        fill(writer)
    cache = open_cache(tmp_path / "c")
    h1, m1 = cache.load("text", into="ram")
    h2, m2 = cache.load("text", into="mmap")
    assert (tmp_path / "c" / "mmap" / "text.hidden.npy").is_file()
    assert h1.numpy().tobytes() == h2.numpy().tobytes() and bool((m1 == m2).all())
    with pytest.raises(StoreError, match="unknown load target"):
        cache.load("text", into="disk")
    with pytest.raises(StoreError, match="no 'image' states"):
        cache.load("image")


def test_rows_by_id_match_the_loaded_states_decoding_each_chunk_once_in_order(tmp_path, monkeypatch):
    with CacheWriter(tmp_path / "c", item_ids=ids(9), specs={"text": spec(chunk_items=2)}) as writer:
        fill(writer)
    cache = open_cache(tmp_path / "c")
    hidden, mask = (t.numpy() for t in cache.load("text"))
    from mmsr_store import reader

    decoded = []
    real_read_rows = reader.read_rows
    monkeypatch.setattr(reader, "read_rows", lambda *a: decoded.append(a[1:2] + a[3:]) or real_read_rows(*a))
    read = cache.rows("text")
    for start in range(0, 9, 3):  # batches of 3 across chunks of 2: each chunk decoded once all the same
        got_hidden, got_mask = read(np.arange(start, min(9, start + 3)))
        assert got_hidden.tobytes() == hidden[start:start + 3].tobytes()
        assert (got_mask == mask[start:start + 3]).all()
    assert sorted(set(decoded)) == sorted(decoded) and len(decoded) == 2 * 5  # hidden + mask, 5 chunks

    shuffled = np.array([8, 0, 5, 5, 3])  # any order, repeats
    assert read(shuffled)[0].tobytes() == hidden[shuffled].tobytes()
    assert read([])[0].shape == (0, T, D)
    with pytest.raises(StoreError, match="item 9 is not in this cache"):
        read([1, 9])
    small = cache.rows("text", keep_bytes=1)  # memory: one chunk kept, the rest decoded again
    assert small(shuffled)[0].tobytes() == hidden[shuffled].tobytes()


def test_shard_parse_and_env(monkeypatch):
    assert Shard.parse("1/3") == Shard(1, 3)
    assert Shard.parse(None) == Shard(0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert Shard.parse(None) == Shard(2, 4) and Shard.parse("0/2") == Shard(0, 2)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(StoreError):
            Shard.parse(bad)
    assert [c for c in range(8) if Shard(1, 3).owns(c)] == [1, 4, 7]


def test_overlapping_or_inconsistent_shards_refused(tmp_path):
    path = tmp_path / "c"
    first = CacheWriter(path, item_ids=ids(12), specs={"text": spec()}, shard=Shard(0, 2))
    try:
        holder = f"pid {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(StoreError, match=re.escape(f"shard 0/2 is already being built by another live process ({holder})")):
            CacheWriter(path, item_ids=ids(12), specs={"text": spec()}, shard=Shard(0, 2))
        with pytest.raises(StoreError, match=re.escape(f"inconsistent shard assignment: a live process ({holder})")):
            CacheWriter(path, item_ids=ids(12), specs={"text": spec()}, shard=Shard(1, 3))
        with pytest.raises(StoreError, match=re.escape(f"cannot add items while another process builds this cache "
                                                       f"(shard 0/2, {holder})")):
            CacheWriter(path, item_ids=ids(13), specs={"text": spec()}, shard=Shard(1, 2))
        second = CacheWriter(path, item_ids=ids(12), specs={"text": spec()}, shard=Shard(1, 2))
        assert [t.chunk for t in first.pending("text")] == [0, 2]
        assert [t.chunk for t in second.pending("text")] == [1]
        fill(first)
        fill(second)
        second.close()
    finally:
        first.close()
    open_cache(path)
    # Locks die with their holders: a later run may use any n.
    with CacheWriter(path, item_ids=ids(12), specs={"text": spec()}, shard=Shard(2, 5)) as writer:
        assert writer.pending("text") == []


def test_a_forked_child_does_not_keep_its_parents_locks(tmp_path):
    # An flock belongs to the open file, which a fork (a DataLoader worker) shares: a build killed
    # with SIGKILL left such children holding its shard lock, and every rerun was refused.
    code = ("import os, sys, time; from pathlib import Path; from mmsr_store.shards import Shard, ShardClaim, flocked\n"
            "claim = ShardClaim(Path(sys.argv[1]), Shard(0, 1))\n"
            "with flocked(Path(sys.argv[1]) / 'output.lock', blocking=False) as held:\n"
            "    assert held is not None\n"
            "    if os.fork() == 0:  # the child says its pid once it runs (after the fork's handlers)\n"
            "        print(os.getpid(), flush=True); time.sleep(120); os._exit(0)\n"
            "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        with pytest.raises(StoreError, match="already being built by another live process"):
            ShardClaim(tmp_path, Shard(0, 1))  # the parent lives: its lock holds
        parent.kill()
        parent.wait()
        os.kill(child, 0)  # the child outlives it
        ShardClaim(tmp_path, Shard(0, 1)).release()
        with flocked(tmp_path / "output.lock", blocking=False) as handle:
            assert handle is not None
    finally:
        parent.kill()
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_item_digests_refuse_changed_rows_and_a_cache_without_them_adopts_them(tmp_path):
    path = tmp_path / "c"
    with CacheWriter(path, item_ids=ids(4), specs={"text": spec()}):
        pass  # a cache from before digests were kept
    assert open_cache_dir_digests(path) is None
    with CacheWriter(path, item_ids=ids(4), specs={"text": spec()}, item_digests={"text": ("v1", list("abcd"))}):
        pass
    assert open_cache_dir_digests(path) == ("v1", list("abcd"))
    with CacheWriter(path, item_ids=ids(4), specs={"text": spec()}, item_digests={"text": ("v2", list("abcd"))}):
        pass  # a new version with the same inputs: recorded
    assert open_cache_dir_digests(path) == ("v2", list("abcd"))
    with pytest.raises(StoreError, match=r"2 cached items changed text since they were encoded \(the first: item "
                                         r"'i1', row 1\)"):
        CacheWriter(path, item_ids=ids(4), specs={"text": spec()}, item_digests={"text": ("v3", list("aXYd"))})
    with pytest.raises(StoreError, match="3 text digests for 4 items"):
        CacheWriter(path, item_ids=ids(4), specs={"text": spec()}, item_digests={"text": ("", list("abc"))})
    # Damaged by hand: a JSONDecodeError traceback from training and building, and verify said
    # "all good". Now each names the file and the rebuild.
    from mmsr_store.verify import verify_cache

    digests = path / "item_digests" / "text.json"
    for damage in ('{"source": "v2", "digests": ["a\tb"', '{"source": "v2", "digests": "abcd"}', '[1, 2]'):
        digests.write_text(damage)
        for read in (lambda: open_cache_dir_digests(path), lambda: verify_cache(path),
                     lambda: CacheWriter(path, item_ids=ids(4), specs={"text": spec()},
                                         item_digests={"text": ("v2", list("abcd"))})):
            with pytest.raises(StoreError, match=re.escape(f"{digests}: damaged (")) as error:
                read()
            assert str(error.value).endswith("(rebuild the cache with `mmsr cache build ... --overwrite`)")


def open_cache_dir_digests(path):
    from mmsr_store.layout import read_item_digests

    return read_item_digests(path, "text")


def test_written_files_and_directories_get_the_modes_open_and_mkdir_would(tmp_path):
    """tempfile makes its files 0600 and its directories 0700: outputs handed to other tools or
    users (a ranks CSV, a run's config, a dataset) must not stay private to their writer."""
    from mmsr.atomic import atomic_dir
    from mmsr_store.layout import atomic_write_bytes

    mask = os.umask(0)
    os.umask(mask)
    atomic_write_bytes(tmp_path / "f.csv", b"user,item,rank\n")
    assert (tmp_path / "f.csv").stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_dir(tmp_path / "d") as staging:
        (staging / "x").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
