"""Faults of the encoder cache (issue 17): a damaged chunk on disk, two builds of one cache, a
full disk in the middle of a build. Each is made for real: bytes flipped in a chunk file, a
second process, a tmpfs that runs out of space."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from cache_helpers import fake_config, fake_encoders, repo_pythonpath
from fault_helpers import MMSR, run_on_small_disk
from mmsr.cache_stage import CacheBuildConfig, build_from_config, repair_cache
from mmsr_store import StoreError, open_cache, verify_cache
from mmsr_store.shards import Shard, ShardClaim
from mmsr_store.verify import BadChunk

pytestmark = pytest.mark.faults

CHUNK = 16  # items per chunk of the fake-encoder builds


def fake_build(dataset_root, cache_dir, on_bad_image="error"):
    """A complete build with the fake encoders, saving its config as `mmsr cache build` does."""
    config = CacheBuildConfig(dataset=str(dataset_root), encoders=fake_config(), batch_size=8, num_workers=0,
                              device="cpu", chunk_items=CHUNK, on_bad_image=on_bad_image)
    report = build_from_config(config, cache_dir=cache_dir, encoders=fake_encoders())
    assert report.complete
    return report


def load_all(cache_dir) -> dict[str, tuple[bytes, bytes]]:
    cache = open_cache(cache_dir)
    return {m: tuple(t.numpy().tobytes() for t in cache.load(m)) for m in cache.modalities}


def chunk_file(cache_dir: Path, modality: str, array: str, chunk: int) -> Path:
    rest = "/0/0" if array == "hidden" else "/0"
    return cache_dir / "store.zarr" / modality / array / f"c/{chunk}{rest}"


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def tiny_build_args(small_demo, tiny_models) -> list[str]:
    """`mmsr cache build` with the tiny random-initialised encoders, ten chunks per modality."""
    return ["cache", "build", "--dataset", str(small_demo), "--text-model", tiny_models["text"],
            "--vision-model", tiny_models["vision"], "--text-top-blocks", "1", "--vision-top-blocks", "1",
            "--max-text-len", "16", "--image-size", "32", "--batch-size", "32", "--num-workers", "0",
            "--device", "cpu", "--set", "chunk_items=32"]


def cli_env(mmsr_home) -> dict:
    return {**os.environ, "MMSR_HOME": str(mmsr_home), "MMSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": repo_pythonpath()}


# ----------------------------------------------------------------------------- checksums, verify, repair


def test_damaged_chunk_is_named_on_load_found_by_verify_and_repaired_alone(small_demo, tmp_path):
    path = tmp_path / "cache"
    fake_build(small_demo, path)
    original = load_all(path)
    flip_byte(chunk_file(path, "text", "hidden", 5))
    flip_byte(chunk_file(path, "image", "mask", 2))

    cache = open_cache(path)  # opening reads no chunk; reading the damaged one is refused, naming it
    for into in ("ram", "mmap"):
        with pytest.raises(StoreError) as error:
            cache.load("text", into=into)
        message = str(error.value)
        assert "text/hidden chunk 5 (items 80..95) fails its CRC32C checksum" in message
        assert f"mmsr cache verify {path} --repair" in message and str(path) in message
    with pytest.raises(StoreError, match="image/mask chunk 2 "):
        cache.load("image")
    read = cache.rows("text")  # the streamed reader (a loaded run's feed) reads the others, names that one
    assert read([0, 79, 96])[0].shape[0] == 3
    with pytest.raises(StoreError, match=r"text/hidden chunk 5 \(items 80\.\.95\) fails its CRC32C"):
        read([81])

    report = verify_cache(path)
    assert [(b.modality, b.array, b.chunk) for b in report.bad] == [("image", "mask", 2), ("text", "hidden", 5)]
    assert not report.ok and report.complete and not report.unchecksummed
    assert report.checked_chunks == {"image": 19, "text": 19}

    from typer.testing import CliRunner

    from mmsr_cli.app import app

    printed = CliRunner().invoke(app, ["cache", "verify", str(path)])
    assert printed.exit_code == 1, printed.output
    assert "damaged: text/hidden chunk 5 (items 80..95) fails its CRC32C checksum" in printed.output
    assert "damaged: image/mask chunk 2 (items 32..47)" in printed.output and "--repair" in printed.output

    repaired = repair_cache(path, encoders=fake_encoders())
    assert repaired.ok and repaired.after.checked_chunks == {"image": 1, "text": 1}
    assert {m: r.encoded_items for m, r in repaired.build.modalities.items()} == {"image": CHUNK, "text": CHUNK}
    assert load_all(path) == original  # bit for bit
    assert verify_cache(path).ok


def test_cache_without_checksums_still_opens_and_verifies_by_digest(small_demo, tmp_path, monkeypatch):
    import mmsr_store.writer
    from zarr.codecs import BloscCodec

    # The codec pipeline of caches written before chunk checksums.
    monkeypatch.setattr(mmsr_store.writer, "_codecs", lambda: [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")])
    path = tmp_path / "cache"
    fake_build(small_demo, path)
    monkeypatch.undo()
    original = load_all(path)
    report = verify_cache(path)
    assert report.ok and sorted(report.unchecksummed) == ["image/hidden", "image/mask", "text/hidden", "text/mask"]

    # Without a checksum a lost chunk file reads back as zeros; the marker's digest still tells.
    chunk_file(path, "text", "hidden", 3).unlink()
    report = verify_cache(path)
    assert report.bad == [BadChunk("text", "hidden+mask", 3, 48, 64, report.bad[0].problem)]
    assert "digest" in report.bad[0].problem
    repaired = repair_cache(path, encoders=fake_encoders())
    assert repaired.build.modalities["text"].encoded_items == CHUNK and repaired.ok
    assert load_all(path) == original


def test_repair_keeps_the_stores_on_bad_image_when_the_saved_config_lacks_it(small_demo, tmp_path):
    # Studies once saved only dataset, seed and encoders: a repair read on_bad_image's default
    # ("error") and the store refused the rebuild as "started with other build options".
    import yaml

    path = tmp_path / "cache"
    fake_build(small_demo, path, on_bad_image="skip")
    saved = yaml.safe_load((path / "config.yaml").read_text())
    assert saved["on_bad_image"] == "skip"  # a build from a config saves all of it
    original = load_all(path)
    (path / "config.yaml").write_text(yaml.safe_dump({k: saved[k] for k in ("dataset", "seed", "encoders")}))
    flip_byte(chunk_file(path, "text", "hidden", 1))
    repaired = repair_cache(path, encoders=fake_encoders())
    assert repaired.ok and repaired.build.on_bad_image == "skip"
    assert load_all(path) == original
    assert yaml.safe_load((path / "config.yaml").read_text())["on_bad_image"] == "skip"  # saved whole now


def test_repair_finishes_an_unfinished_cache(small_demo, tmp_path):
    # `verify` sends an unfinished build to `verify --repair`; the repair read the store's build
    # options through open_cache, which refuses an unfinished cache, and sent the user back.
    path = tmp_path / "cache"
    fake_build(small_demo, path)
    original = load_all(path)
    (path / "manifest" / "text" / "000002.json").unlink()  # as a build killed before its marker
    before = verify_cache(path)
    assert not before.complete and before.unfinished["text"] == [2]
    with pytest.raises(StoreError, match="incomplete cache"):
        open_cache(path)
    repaired = repair_cache(path, encoders=fake_encoders())
    assert repaired.ok and repaired.build.modalities["text"].encoded_items == CHUNK
    assert load_all(path) == original


def test_repair_needs_the_saved_build_config(small_demo, tmp_path):
    path = tmp_path / "cache"
    fake_build(small_demo, path)
    (path / "config.yaml").unlink()
    flip_byte(chunk_file(path, "text", "hidden", 0))
    with pytest.raises(Exception, match="cannot repair: no config.yaml"):
        repair_cache(path, encoders=fake_encoders())
    assert [b.chunk for b in verify_cache(path).bad] == [0]  # nothing was dropped


# ----------------------------------------------------------------------------- two builds of one cache


def test_second_build_of_one_cache_is_refused_naming_the_holder(small_demo, tiny_models, mmsr_home):
    from typer.testing import CliRunner

    from mmsr_cli.app import app

    args = tiny_build_args(small_demo, tiny_models)
    runner = CliRunner()
    built = runner.invoke(app, args)  # in this process: torch and transformers are imported already
    assert built.exit_code == 0, built.output
    (path,) = (mmsr_home / "caches" / "demo-small").iterdir()
    original = load_all(path)
    assert {m: len(h) for m, (h, _) in original.items()} == {"image": 300 * 17 * 32 * 2, "text": 300 * 16 * 32 * 2}

    # This process holds the build lock, as a running `mmsr cache build` does; a second build
    # in another process is refused, naming this one.
    with ShardClaim(path, Shard()):
        second = subprocess.run(MMSR + args, env=cli_env(mmsr_home), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert (f"{path}: shard 0/1 is already being built by another live process (pid {os.getpid()} on host "
                f"{socket.gethostname()})") in lines[0]
        flip_byte(chunk_file(path, "image", "hidden", 4))
        busy = runner.invoke(app, ["cache", "verify", "demo-small", "--repair"])
        assert isinstance(busy.exception, StoreError) and f"pid {os.getpid()}" in str(busy.exception)

    # One intact cache: the refused build changed nothing, the repair redoes the damaged chunk alone.
    found = runner.invoke(app, ["cache", "verify", "demo-small", "--json"])
    assert found.exit_code == 1
    report = json.loads(found.stdout.strip().splitlines()[-1])
    assert [(b["modality"], b["array"], b["chunk"]) for b in report["bad"]] == [("image", "hidden", 4)]
    fixed = runner.invoke(app, ["cache", "verify", "demo-small", "--repair"])
    assert fixed.exit_code == 0, fixed.output
    assert "repaired" in fixed.output and "re-encoded image: 32 items)" in fixed.output
    assert load_all(path) == original
    assert verify_cache(path).ok


# ----------------------------------------------------------------------------- a full disk


def test_full_disk_names_the_chunk_keeps_finished_chunks_and_resumes(small_demo, tiny_models, mmsr_home, tmp_path):
    caches = mmsr_home / "caches"
    out = tmp_path / "out"
    out.mkdir()
    build = shlex.join([*MMSR, *tiny_build_args(small_demo, tiny_models)])
    script = f"""
set +e
{build} > {out}/first.out 2> {out}/first.err; echo $? > {out}/first.rc
find "$MOUNT_AT" -path '*/manifest/*.json' | sort > {out}/markers
mount -o remount,size=8192k "$MOUNT_AT"
{build} > {out}/second.out 2> {out}/second.err; echo $? > {out}/second.rc
cp -a "$MOUNT_AT/demo-small" {out}/caches
"""
    # ~0.6 MiB of states in 40 chunk files: 256 KiB fills up about half way through the images.
    done = run_on_small_disk(caches, 256, script, env=cli_env(mmsr_home), timeout=300)
    assert done.returncode == 0, done.stderr
    first_err = (out / "first.err").read_text()
    assert (out / "first.rc").read_text().strip() == "2", first_err
    lines = first_err.strip().splitlines()
    assert len(lines) == 1, first_err
    match = re.search(r"error: (\S+): cannot write (image|text) chunk (\d+) \(items \d+\.\.\d+\): "
                      r"no space left on device", lines[0])
    assert match, lines[0]
    path, modality, chunk = Path(match.group(1)), match.group(2), int(match.group(3))
    assert path.parent == caches / "demo-small"
    markers = {Path(line).relative_to(path).as_posix() for line in (out / "markers").read_text().split()}
    assert f"manifest/{modality}/{chunk:06d}.json" not in markers  # the failed chunk is redone
    assert markers, "no chunk was finished before the disk filled up"

    second_err = (out / "second.err").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second_err
    encoded = {m: int(n) for m, n in re.findall(r"(\w+): encoded (\d+) items", second_err)}
    kept = sum(min(300, 32 * (k + 1)) - 32 * k for k in (int(Path(m).stem) for m in markers))
    assert sum(encoded.values()) == 2 * 300 - kept  # finished chunks were kept, not encoded again
    assert "cache complete" in second_err

    # The tmpfs is gone with its namespace; its copy is checked by the command here.
    from typer.testing import CliRunner

    from mmsr_cli.app import app

    verified = CliRunner().invoke(app, ["cache", "verify", str(out / "caches" / path.name)])
    assert verified.exit_code == 0, verified.output
    assert "20 chunks verified, all good" in verified.output
