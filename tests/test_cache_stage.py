"""The encoder stage with tiny fake encoders: resume after SIGKILL, shards, fingerprints,
incremental append, bad pictures, and the `mmsr cache` commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache_helpers import FakeTextEncoder, fake_config, fake_encoders, repo_pythonpath
from mmsr.cache_stage import build_cache
from mmsr.caches import cache_path, expected_fingerprints, inputs_version, open_checked_cache
from mmsr.data.dataset import load_dataset
from mmsr.errors import MMSRError
from mmsr_store import StoreError, open_cache

HELPER = Path(__file__).with_name("cache_helpers.py")


def build(dataset_root, cache_dir, **options):
    options = {"batch_size": 8, "num_workers": 0, "device": "cpu", "chunk_items": 16, **options}
    encoders = options.pop("encoders", None) or fake_encoders()
    return build_cache(load_dataset(dataset_root, check_images=False), fake_config(), cache_dir=cache_dir,
                       encoders=encoders, **options)


def arrays(cache_dir) -> dict[str, bytes]:
    cache = open_cache(cache_dir)
    out = {}
    for modality in cache.modalities:
        hidden, mask = cache.load(modality)
        out[modality] = hidden.numpy().tobytes() + mask.numpy().tobytes()
    return out


def run_helper(dataset_root, cache_dir, *args, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_pythonpath()}
    return subprocess.Popen([sys.executable, str(HELPER), str(dataset_root), str(cache_dir), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_chunks(process: subprocess.Popen, cache_dir: Path, count: int = 3) -> None:
    """Wait until the running build has finished `count` image chunks (a minute at most)."""
    markers = cache_dir / "manifest" / "image"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < count:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)


def copy_dataset(src: Path, dest: Path, *, keep_items: int | None = None, edit=None) -> Path:
    """A copy of a dataset, optionally cut to its first `keep_items` items, items edited by `edit`."""
    shutil.copytree(src, dest)
    items = [json.loads(line) for line in (dest / "items.jsonl").read_text().splitlines() if line.strip()]
    if keep_items is not None:
        items = items[:keep_items]
        kept = {item["id"] for item in items}
        lines = (dest / "interactions.tsv").read_text().splitlines()
        lines = [lines[0]] + [line for line in lines[1:] if line.split("\t")[1] in kept]
        (dest / "interactions.tsv").write_text("\n".join(lines) + "\n")
    if edit:
        edit(items, dest)
    (dest / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return dest


@pytest.fixture(scope="module")
def reference(small_demo, tmp_path_factory):
    """An uninterrupted single-process build of the small demo."""
    path = tmp_path_factory.mktemp("ref") / "cache"
    report = build(small_demo, path)
    assert report.complete
    return path


def test_kill_and_resume_is_byte_identical(small_demo, reference, tmp_path):
    path = tmp_path / "cache"
    process = run_helper(small_demo, path, "--sleep", "0.05")
    wait_for_chunks(process, path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list((path / "manifest" / "image").glob("*.json")))
    assert 3 <= finished < 19
    with pytest.raises(StoreError, match="incomplete cache.*image: .* chunks unfinished.*run mmsr cache build"):
        open_cache(path)
    report = build(small_demo, path)
    assert report.complete
    assert report.modalities["image"].written_chunks == 19 - finished  # finished chunks not recomputed
    assert report.modalities["text"].encoded_items == 300
    assert arrays(path) == arrays(reference)
    assert not list((path / "store.zarr").rglob("*.partial"))
    again = build(small_demo, path)  # nothing left to do
    assert again.modalities["image"].encoded_items == 0 and again.modalities["text"].encoded_items == 0


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds `text` (a forked worker keeps its parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def wait_until_gone(path: Path, seconds: float = 30) -> None:
    """Wait (a while at most) for the processes whose command line names `path` to end."""
    deadline = time.monotonic() + seconds
    while _processes_naming(str(path)) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the worker's death signal is Linux's")
def test_a_build_killed_with_its_workers_running_resumes_at_once(small_demo, reference, tmp_path):
    # The workers a DataLoader forks inherit the build's shard lock; before they closed it, a build
    # killed with SIGKILL left them holding it, and the rerun was refused ("already being built by
    # another live process") for as long as they lived, which was for good.
    path = tmp_path / "cache"
    process = run_helper(small_demo, path, "--sleep", "0.05", "--num-workers", "2")
    wait_for_chunks(process, path)
    assert len(_processes_naming(str(path))) >= 2  # the build and its workers
    process.send_signal(signal.SIGKILL)
    process.wait()
    report = build(small_demo, path)  # at once: no wait for the workers
    assert report.complete
    assert arrays(path) == arrays(reference)
    wait_until_gone(path)
    assert not _processes_naming(str(path)), "the killed build's workers outlived it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_whole_group_stops_a_build_with_workers_as_ctrl_c_does(small_demo, reference, tmp_path):
    # timeout, systemd, scancel and torchrun signal the whole process group. The DataLoader's
    # workers died by the SIGTERM, and the build's SIGCHLD handler raised "DataLoader worker is
    # killed by signal" over the CLI's way out: a traceback and exit 1, not Ctrl-C's line and 143.
    path = tmp_path / "cache"
    process = run_helper(small_demo, path, "--sleep", "0.05", "--num-workers", "2", "--cli-signals",
                         start_new_session=True)
    wait_for_chunks(process, path)
    assert len(_processes_naming(str(path))) >= 2  # the build and its workers
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "stopped Terminated" and "Traceback" not in err, err[-2000:]
    assert build(small_demo, path).complete and arrays(path) == arrays(reference)
    wait_until_gone(path)
    assert not _processes_naming(str(path)), "the stopped build's workers outlived it"


def _stop_at_the_third_batch(encoders: dict, stop) -> list:
    """Make the image encoder call `stop()` before its third batch; returns the list counting its calls."""
    lower, calls = encoders["image"].lower_forward, []

    def stopping(batch):
        calls.append(1)
        if len(calls) == 3:
            stop()
        return lower(batch)

    encoders["image"].lower_forward = stopping
    return calls


def test_ctrl_c_after_overwrite_deleted_the_old_cache_says_to_rerun_without_it(small_demo, reference, tmp_path):
    """The CLI's line after Ctrl-C ("rerun the command to resume") sent `cache build --overwrite`
    back to --overwrite, which deleted the chunks finished since a second time."""
    from mmsr.cache_stage import BuildInterrupted

    path = tmp_path / "cache"
    shutil.copytree(reference, path)
    encoders = fake_encoders()

    def ctrl_c():
        raise KeyboardInterrupt

    calls = _stop_at_the_third_batch(encoders, ctrl_c)
    with pytest.raises(BuildInterrupted) as said:
        build(small_demo, path, overwrite=True, encoders=encoders)
    assert str(said.value) == (f"{path}: the old cache was deleted (--overwrite); the chunks finished since are kept "
                               "(rerun the command without --overwrite to resume; with it they are deleted again)")
    assert said.value.exit_status == 130
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # no --overwrite: the CLI's own line ("rerun the command") holds
        build(small_demo, path, encoders=encoders)
    assert build(small_demo, path).complete and arrays(path) == arrays(reference)


def test_sigterm_after_overwrite_deleted_the_old_cache_says_so_with_status_143(small_demo, reference, tmp_path):
    """SIGTERM, as the CLI raises it, takes Ctrl-C's way out of a build (the line that says to
    drop --overwrite) with SIGTERM's status; a real signal, the CLI's own handler."""
    from mmsr.cache_stage import BuildInterrupted
    from mmsr_cli.app import _terminate

    path = tmp_path / "cache"
    shutil.copytree(reference, path)
    encoders = fake_encoders()

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises within this

    _stop_at_the_third_batch(encoders, sigterm)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(BuildInterrupted, match="rerun the command without --overwrite") as said:
            build(small_demo, path, overwrite=True, encoders=encoders)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert said.value.exit_status == 143
    assert build(small_demo, path).complete and arrays(path) == arrays(reference)


def test_two_process_sharded_build_matches_one_process(small_demo, reference, tmp_path):
    path = tmp_path / "cache"
    processes = [run_helper(small_demo, path, "--shard", f"{i}/2") for i in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert arrays(path) == arrays(reference)
    shards = {json.loads(p.read_text())["chunk"]: json.loads(p.read_text())["shard"]
              for p in (path / "manifest" / "text").glob("*.json")}
    assert all(shard == f"{chunk % 2}/2" for chunk, shard in shards.items())


def test_mismatched_fingerprint_is_refused(small_demo, reference, tmp_path):
    dataset = load_dataset(small_demo, check_images=False)
    good = fake_encoders()
    open_checked_cache(reference, good, dataset, fake_config())
    other = {**good, "text": FakeTextEncoder(seed=7)}
    with pytest.raises(StoreError, match=r"text\.weights_sha256"):
        open_checked_cache(reference, other, dataset, fake_config())
    expected = expected_fingerprints(good, dataset, fake_config())
    expected["image"]["image_size"] = 64
    with pytest.raises(StoreError, match=r"image\.image_size: cache has 32, expected 64"):
        open_cache(reference).check(expected)
    copy = tmp_path / "cache"
    shutil.copytree(reference, copy)
    with pytest.raises(StoreError, match=r"another encoder setup: text\.weights_sha256"):
        build(small_demo, copy, encoders=other)


def test_incremental_append_encodes_only_new_items(small_demo, reference, tmp_path):
    first = copy_dataset(small_demo, tmp_path / "demo-250", keep_items=250)
    path = tmp_path / "cache"
    build(first, path)
    assert open_cache(path).num_items == 250
    report = build(small_demo, path)  # the same dataset with 50 items appended
    assert report.modalities["text"].encoded_items == 50 and report.modalities["image"].encoded_items == 50
    cache = open_cache(path)
    assert cache.num_items == 300
    dataset = load_dataset(small_demo, check_images=False)
    cache.check(expected_fingerprints(fake_encoders(), dataset, fake_config()))
    for modality in ("text", "image"):  # the fake encoders are row-independent, so equal to a fresh build
        h1, m1 = cache.load(modality)
        h2, m2 = open_cache(reference).load(modality)
        np.testing.assert_allclose(h1.float().numpy(), h2.float().numpy(), atol=1e-3)
        assert bool((m1 == m2).all())


def _break_pictures(items, root):
    (root / items[40]["image"]).write_bytes(b"not a picture")  # item 40: chunk 2
    items[7]["image"] = None  # item 7: no picture at all


@pytest.mark.parametrize("policy", ["error", "skip", "placeholder"])
def test_bad_image_policy(small_demo, tmp_path, policy):
    root = copy_dataset(small_demo, tmp_path / "broken", edit=_break_pictures)
    path = tmp_path / "cache"
    if policy == "error":
        with pytest.raises(MMSRError, match=r"item 'i00040': unreadable image.*on_bad_image=skip\|placeholder"):
            build(root, path, on_bad_image=policy)
        assert sorted(p.name for p in (path / "manifest" / "image").glob("*.json")) == ["000000.json", "000001.json"]
        with pytest.raises(StoreError, match="incomplete"):
            open_cache(path)
        return
    report = build(root, path, on_bad_image=policy)
    assert len(report.problems) == 1 and "i00040" in report.problems[0] and report.problems[0].endswith(policy)
    assert json.loads((path / "report.json").read_text())["problems"] == report.problems
    cache = open_cache(path)
    assert cache.problems("image") == report.problems
    hidden, mask = cache.load("image")
    assert not mask[7].any() and hidden[7].abs().sum() == 0  # no picture: zeros, all-False mask
    assert mask[8].all() and hidden[8].abs().sum() > 0
    if policy == "skip":
        assert not mask[40].any() and hidden[40].abs().sum() == 0
    else:
        assert mask[40].all() and hidden[40].abs().sum() > 0
    with pytest.raises(StoreError, match="other build options"):
        build(root, path, on_bad_image="error")


def test_cache_path_is_under_home_and_hashes_the_config(mmsr_home, small_demo):
    path = cache_path(small_demo, fake_config())
    assert path.parent == mmsr_home / "caches" / "demo-small"
    assert cache_path("demo-small", fake_config()) == path
    other = fake_config()
    other.max_text_len = 13
    assert cache_path("demo-small", other) != path


def test_cli_build_and_info(small_demo, monkeypatch, mmsr_home):
    from typer.testing import CliRunner

    import mmsr.cache_stage as stage
    from mmsr_cli.cache import app

    monkeypatch.setattr(stage, "create_encoders", lambda config: fake_encoders())
    runner = CliRunner()
    args = ["build", "--dataset", str(small_demo), "--text-model", "fake-text", "--vision-model", "fake-image",
            "--text-top-blocks", "1", "--vision-top-blocks", "1", "--max-text-len", "12", "--image-size", "32",
            "--batch-size", "16", "--num-workers", "1", "--set", "chunk_items=64", "--seed", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    path = cache_path(small_demo, fake_config())
    resolved = (path / "config.yaml").read_text()
    assert "chunk_items: 64" in resolved and "seed: 3" in resolved and "max_text_len: 12" in resolved
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["complete"] and info["modalities"]["text"]["chunk_items"] == 64
    assert info["modalities"]["image"]["shape"] == [300, 16, 16]
    result = runner.invoke(app, ["info", "demo-small"])
    assert result.exit_code == 0 and "complete" in result.output
    result = runner.invoke(app, args + ["--set", "encoders.max_txt_len=3"])
    assert isinstance(result.exception, MMSRError) and "unknown key encoders.max_txt_len" in str(result.exception)


def test_registry_encoders_states_equal_lower(tiny_models, small_demo, tmp_path):
    """Through the real registry path (tiny random BERT and DINOv2): cached rows are lower()'s output."""
    import torch

    from mmsr.encoders import create_encoders
    from mmsr.encoders.config import EncoderConfig

    config = EncoderConfig(text_model=tiny_models["text"], vision_model=tiny_models["vision"], text_top_blocks=1,
                           vision_top_blocks=1, max_text_len=16, image_size=32)
    root = copy_dataset(small_demo, tmp_path / "demo-40", keep_items=40)
    dataset = load_dataset(root)
    report = build_cache(dataset, config, batch_size=16, num_workers=1, device="cpu")
    assert report.complete and report.path == cache_path(dataset, config)
    cache = open_cache(report.path)
    encoders = create_encoders(config)
    cache.check(expected_fingerprints(encoders, dataset, config))
    text = encoders["text"]
    hidden, mask = cache.load("text")
    want_hidden, want_mask = text.lower(text.preprocess([dataset.item_text(i) for i in range(5)]))
    assert hidden.shape == (40, 16, 32) and bool((mask[:5] == want_mask).all())
    want = want_hidden.to(torch.float16).masked_fill(~want_mask.unsqueeze(-1), 0)
    torch.testing.assert_close(hidden[:5], want, atol=2e-3, rtol=0)
    assert cache.load("image")[0].shape[1:] == (17, 32)  # 16 patches + CLS


def _new_version(root: Path, version: str) -> None:
    """What `mmsr data demo|import --overwrite` leaves: meta.json's content hash of the new files."""
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "content_hash": version}))


def _cached_copy(small_demo, tmp_path):
    """(a copy of the small demo, its cache built, a training open of that cache: checked)."""
    root = copy_dataset(small_demo, tmp_path / "shop")
    path = tmp_path / "cache"
    build(root, path)

    def opened():
        return open_checked_cache(path, fake_encoders(), load_dataset(root, check_images=False), fake_config())

    return root, path, opened


def _refused_until_rebuilt(root, path, opened, open_says: str, build_says: str) -> None:
    """Training's open and a build on the cache both refuse it (the open's hint: --overwrite);
    `mmsr cache build --overwrite` rebuilds it, and it opens."""
    with pytest.raises(MMSRError, match=open_says) as error:
        opened()
    assert "--overwrite" in str(error.value.hint)
    with pytest.raises(StoreError, match=build_says):
        build(root, path)
    assert build(root, path, overwrite=True).complete
    opened()


def test_rows_encoded_from_other_texts_or_pictures_are_refused_naming_the_first_item(small_demo, tmp_path):
    """The same item ids with another title or picture (a dataset regenerated or re-imported
    under the same name): building on the cache and training from it both refuse, naming the
    first changed item. A new version whose items are unchanged (new interactions) keeps it."""
    root, path, opened = _cached_copy(small_demo, tmp_path)
    opened()
    _new_version(root, "interactions only")
    opened()  # every item read again: the same inputs
    items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    items[5]["title"] = "another title"
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    _new_version(root, "a new title")
    _refused_until_rebuilt(root, path, opened,
                           f"1 item of dataset \\S+ changed text since this cache was built "
                           f"\\(the first: item '{items[5]['id']}'\\)",
                           f"1 cached item changed text since they were encoded \\(the first: "
                           f"item '{items[5]['id']}', row 5\\)")

    picture = next(item for item in items[20:] if item["image"])
    (root / picture["image"]).write_bytes((root / picture["image"]).read_bytes() + b"\0")
    _new_version(root, "a new picture")
    with pytest.raises(MMSRError, match=f"changed image since this cache was built \\(the first: item "
                                        f"'{picture['id']}'\\)"):
        opened()


def test_files_edited_by_hand_are_caught_though_meta_json_is_unchanged(small_demo, tmp_path):
    """A title edited in items.jsonl, then a picture overwritten in place with as many bytes, and
    meta.json's content hash left as it was (no re-import): the files' sizes and times changed,
    so the inputs are read again and training refuses the changed rows; undone, it opens."""
    root, _, opened = _cached_copy(small_demo, tmp_path)
    opened()
    original = (root / "items.jsonl").read_text()
    items = [json.loads(line) for line in original.splitlines()]
    items[5]["title"] = items[5]["title"].upper() + " (edited)"
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    with pytest.raises(MMSRError, match=f"1 item of dataset \\S+ changed text since this cache was built "
                                        f"\\(the first: item '{items[5]['id']}'\\)"):
        opened()
    (root / "items.jsonl").write_text(original)
    opened()  # read again: the inputs the cache was built from

    picture = root / next(item for item in items[20:] if item["image"])["image"]
    data = picture.read_bytes()
    versions = {m: inputs_version(load_dataset(root, check_images=False), m) for m in ("text", "image")}
    picture.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, same name, one bit
    with pytest.raises(MMSRError, match="changed image since this cache was built"):
        opened()
    # Only the modality that reads pictures looks at them (a text cache stats no picture).
    after = {m: inputs_version(load_dataset(root, check_images=False), m) for m in ("text", "image")}
    assert after["text"] == versions["text"] and after["image"] != versions["image"]


def _as_before_digests(path: Path) -> None:
    """Make a cache look built by mmsr before it kept item digests (2026-12-04)."""
    shutil.rmtree(path / "item_digests")


def _touch_after_encoding(path: Path, cache: Path, modality: str) -> None:
    """Give `path` a modification time one second after the cache's last chunk marker."""
    latest = max(marker.stat().st_mtime_ns for marker in (cache / "manifest" / modality).glob("*.json"))
    os.utime(path, ns=(latest + 10**9, latest + 10**9))


def test_a_cache_built_before_digests_is_adopted_by_its_files_times(small_demo, tmp_path):
    """An old cache (no item digests) over files none of which changed after their chunk was
    encoded: training opens it and records today's digests, so a later edit is caught as in a
    new cache. Nothing else is trusted blindly: a picture modified after its row was encoded is
    refused, by the open and by a build on the cache, naming the item (--overwrite rebuilds it),
    and so is every row when the text file is (as in a data root copied without its times)."""
    from mmsr_store.layout import read_item_digests

    root, path, opened = _cached_copy(small_demo, tmp_path)
    _as_before_digests(path)
    assert build(root, path).complete  # a rerun of the build adopts them too
    _as_before_digests(path)
    opened()
    assert read_item_digests(path, "text")[0] == inputs_version(load_dataset(root, check_images=False), "text")
    items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    edited = [dict(item, title="another title") if i == 7 else item for i, item in enumerate(items)]
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in edited))
    with pytest.raises(MMSRError, match=f"1 item of dataset \\S+ changed text since this cache was built "
                                        f"\\(the first: item '{items[7]['id']}'\\)"):
        opened()  # adopted, the cache now catches an edit as a new cache does

    root, path, opened = _cached_copy(small_demo, tmp_path / "b")
    _as_before_digests(path)
    picture = next(item for item in items[20:] if item["image"])
    _touch_after_encoding(root / picture["image"], path, "image")  # the same bytes, a later time
    _refused_until_rebuilt(root, path, opened,
                           f"1 item of dataset \\S+ had files modified after this cache \\(built before it "
                           f"kept a record of its inputs\\) encoded them \\(the first: item '{picture['id']}'\\)",
                           f"1 cached item changed image since they were encoded \\(the first: item '{picture['id']}'")

    root, path, opened = _cached_copy(small_demo, tmp_path / "c")
    _as_before_digests(path)
    _touch_after_encoding(root / "items.jsonl", path, "text")  # e.g. a data root copied without its times
    # items.jsonl also says where each picture is: the picture rows are refused as well.
    with pytest.raises(StoreError, match=f"{len(items)} cached items changed image since they were encoded"):
        build(root, path)  # the build checks on its own, before anything opened the cache
    with pytest.raises(MMSRError, match=f"{len(items)} items of dataset \\S+ had files modified after"):
        opened()


def test_an_old_cache_is_refused_for_a_deleted_picture_and_untouched_by_another_item_list(small_demo, tmp_path):
    """A picture deleted after its row was encoded has no time to compare: refused (unless its
    chunk recorded it unreadable then). A build from a dataset of the same name with another item
    order is refused for its item list and adopts nothing into the cache, which still serves its
    own dataset."""
    root, path, opened = _cached_copy(small_demo, tmp_path)
    _as_before_digests(path)
    items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    picture = next(item for item in items[20:] if item["image"])
    (root / picture["image"]).unlink()
    with pytest.raises(MMSRError, match=f"1 item of dataset \\S+ had files modified after .* item '{picture['id']}'"):
        opened()

    root, path, opened = _cached_copy(small_demo, tmp_path / "b")
    _as_before_digests(path)
    other = copy_dataset(root, tmp_path / "other" / root.name, edit=lambda rows, _: rows.reverse())
    with pytest.raises(StoreError, match="the item list changed other than by appending"):
        build(other, path)
    assert not (path / "item_digests").exists()
    opened()


def test_an_open_that_read_the_inputs_again_records_them_for_the_next(small_demo, tmp_path, monkeypatch):
    """A new version of the dataset with the same items (new interactions; a data root copied
    without its files' times): the first open reads every input again, finds no change and
    records them under the new version, so the next open reads nothing."""
    import mmsr.caches

    root, _, opened = _cached_copy(small_demo, tmp_path)
    _new_version(root, "interactions only")
    opened()

    def read_again(*_args):
        raise AssertionError("item inputs read again")

    monkeypatch.setattr(mmsr.caches, "item_digests", read_again)
    opened()


def test_an_unchanged_dataset_is_not_read_again_for_its_digests(small_demo, tmp_path, monkeypatch):
    """The digests recorded for the dataset's version (its content hash) serve a rerun of the
    build and every training open: no text or picture is read again for them."""
    import mmsr.caches

    root = copy_dataset(small_demo, tmp_path / "shop")
    path = tmp_path / "cache"
    build(root, path)

    def read_again(*_args):
        raise AssertionError("item inputs read again")

    monkeypatch.setattr(mmsr.caches, "item_digests", read_again)
    assert build(root, path).complete
    open_checked_cache(path, fake_encoders(), load_dataset(root, check_images=False), fake_config())
    _new_version(root, "v2")
    with pytest.raises(AssertionError, match="read again"):
        build(root, path)


@pytest.mark.parametrize("name,problem", [
    ("text-only", "encoders.vision_model='fake-image' encodes pictures, but no item of this dataset has a picture"),
    ("pictures-only", "encoders.text_model='fake-text' encodes text, but no item of this dataset has text in "
                      "encoders.text_fields=['title', 'description', 'category']"),
])
def test_an_encoder_with_nothing_to_read_is_refused(small_demo, tmp_path, name, problem):
    """A vision model over a catalogue without pictures would fill its cache with placeholders
    and train on them; the build refuses it and says how to switch the modality off."""
    def edit(items, _dest):
        for item in items:
            if name == "text-only":
                item["image"] = None
            else:
                item.update(title="", description="", category="")

    root = copy_dataset(small_demo, tmp_path / name, edit=edit)
    with pytest.raises(MMSRError) as error:
        build(root, tmp_path / "cache")
    assert problem in str(error.value) and "--set encoders." in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_written_is_still_opened(monkeypatch, tmp_path):
    """Recording a cache's digests again (a data root copied without its files' times) is a
    saving for the next open, never a reason to refuse this one: a shared or read-only cache
    is worked out again next time (the atomic writes name an unwritable path since 2026-12-07,
    which this must still take)."""
    import mmsr.caches
    from mmsr_store.errors import OutOfSpaceError, UnwritableError

    for error in (UnwritableError("cannot write this file: permission denied", where=tmp_path),
                  OutOfSpaceError("cannot write", where=tmp_path), PermissionError(13, "denied")):
        def refused(*args, error=error):
            raise error
        monkeypatch.setattr(mmsr.caches, "write_item_digests", refused)
        mmsr.caches._record_digests(tmp_path, "text", "v2", ["d"])  # no error


def test_two_datasets_of_one_directory_name_do_not_share_caches(small_demo, tmp_path, mmsr_home):
    """Caches are kept by the dataset directory's name: a second dataset called "shop" found the
    first one's rows "changed", and the hint (--overwrite) wiped them, then the first did the same
    back. The caches now record their dataset; another live one of that name is refused."""
    first = copy_dataset(small_demo, tmp_path / "a" / "shop")
    second = copy_dataset(small_demo, tmp_path / "b" / "shop",
                          edit=lambda items, _: [item.update(title="other") for item in items])
    assert build(first, None).complete
    (owner,) = (mmsr_home / "caches" / "shop").glob("*/dataset.txt")
    assert owner.read_text() == f"{first.resolve()}\n"
    kept = arrays(cache_path(load_dataset(first, check_images=False), fake_config()))
    for overwrite in (False, True):
        with pytest.raises(MMSRError, match=re.escape(f"{mmsr_home / 'caches' / 'shop'}: these caches belong to the "
                                                      f"dataset {first.resolve()}, whose directory has this dataset's "
                                                      f"name ('shop'), not to {second.resolve()}")):
            build(second, None, overwrite=overwrite)
    assert arrays(cache_path(load_dataset(first, check_images=False), fake_config())) == kept
    shutil.rmtree(first)  # moved or deleted: its caches go to the dataset that has the name now
    assert build(second, None, overwrite=True).complete
    assert owner.read_text() == f"{second.resolve()}\n"
    from mmsr.caches import find_caches

    with pytest.raises(MMSRError, match="no such dataset or cache directory"):  # `cache verify /no/such/shop`
        find_caches(str(tmp_path / "gone" / "shop"))
