"""The writing side: create or extend a cache, and write whole chunks that one process owns.

    writer = CacheWriter(path, item_ids=ids, specs={"text": ModalitySpec(50, 384, fp)},
                         shard=Shard(0, 2), build={"on_bad_image": "error"})
    for task in writer.pending("text"):
        hidden, mask = ...                     # rows task.todo_start .. task.stop
        writer.write_chunk(task, hidden, mask)  # data first, then its manifest marker
    writer.close()

Setting up (create, check, extend) happens under an flock on `locks/init.lock`, so shard
processes that start together agree on one store. After that each process writes only
chunks it owns (chunk % n == i): two writers never touch one zarr chunk (zarr-python #3514).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsr_store import manifest
from mmsr_store.errors import StoreError, out_of_space_guard
from mmsr_store.fingerprint import canonical, diff, items_hash
from mmsr_store.layout import (DIR_MODE, FORMAT, HIDDEN, HIDDEN_DTYPE, ITEM_DIGESTS_DIR, ITEM_IDS, LOCK_DIR,
                               MANIFEST_DIR, MASK, MMAP_DIR, STORE_DIR, changed_rows, chunk_items_for, read_item_digests,
                               read_item_ids, remove_partial_files, write_item_digests, write_item_ids)
from mmsr_store.reader import open_group, read_rows
from mmsr_store.shards import Shard, ShardClaim, flocked, holder, live_shards

# Keys of a fingerprint that change when items are appended; all other keys must stay equal.
ITEM_KEYS = ("item_list_hash", "num_items")
REBUILD_HINT = "delete the cache directory or rerun `mmsr cache build` with --overwrite"


@dataclass
class ModalitySpec:
    tokens: int  # T
    dim: int  # D
    fingerprint: dict
    chunk_items: int | None = None  # None: sized for about 8 MiB per chunk

    def resolved_chunk_items(self) -> int:
        return self.chunk_items or chunk_items_for(self.tokens, self.dim)


@dataclass
class ChunkTask:
    """Rows [todo_start, stop) of chunk `chunk` (which spans [start, stop)) still need encoding."""

    modality: str
    chunk: int
    start: int
    stop: int
    todo_start: int
    item_ids: list[str] = field(repr=False, default_factory=list)

    @property
    def todo(self) -> int:
        return self.stop - self.todo_start


def _codecs():
    from zarr.codecs import BloscCodec, Crc32cCodec

    # Measured on MiniLM / DINOv2-S states: zstd level 1 saves ~60% on text (padding is zeroed)
    # and ~8% on image tokens at ~850 MiB/s per thread; byte shuffling adds nothing for float16.
    # The CRC32C of the compressed bytes (last: zarr orders bytes->bytes codecs) makes a flipped
    # bit on disk a read error instead of silently wrong states; it costs 4 bytes per chunk.
    return [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"), Crc32cCodec()]


class CacheWriter:
    def __init__(self, cache_dir: str | Path, *, item_ids: list[str], specs: dict[str, ModalitySpec],
                 shard: Shard | None = None, build: dict | None = None, overwrite: bool = False,
                 item_digests: dict[str, tuple[str, list[str]]] | None = None):
        import zarr

        if not specs:
            raise StoreError("nothing to cache: no modality", hint="enable a text or a vision model")
        if not item_ids:
            raise StoreError("nothing to cache: the item list is empty")
        if len(set(item_ids)) != len(item_ids):
            raise StoreError("duplicate item ids in the item list")
        self.dir = Path(cache_dir)
        self.item_ids = list(item_ids)
        self.specs = specs
        # {modality: (source, a digest per item of what its row is encoded from)}; the source is
        # the caller's name for the version they were read from (`mmsr.caches.inputs_version`). A
        # cached row whose digest differs was encoded from other inputs: refused, never mixed
        # with new rows.
        self.item_digests = dict(item_digests or {})
        for modality, (_, digests) in self.item_digests.items():
            if len(digests) != len(self.item_ids):
                raise StoreError(f"{len(digests)} {modality} digests for {len(self.item_ids)} items")
        self.shard = shard or Shard()
        self.build = canonical(build or {})
        self.dir.mkdir(parents=True, exist_ok=True)
        with flocked(self.dir / LOCK_DIR / "init.lock"), out_of_space_guard(self.dir, "the cache's metadata"):
            others = live_shards(self.dir)
            if overwrite:
                if others:
                    raise StoreError("cannot --overwrite while another process builds this cache "
                                     f"({self._describe(others[0])})", where=self.dir)
                self._wipe()
            if not (self.dir / STORE_DIR).is_dir():
                self._create()
            self.group = open_group(self.dir, mode="r+")  # lost metadata is named, not a KeyError mid-build
            self._check_and_extend(others)
            self.claim = ShardClaim(self.dir, self.shard)
            try:
                if not others:  # nobody else can be mid-write: leftovers of killed writes are garbage
                    remove_partial_files(self.dir / STORE_DIR)
                    for leftover in self.dir.glob(f".{STORE_DIR}.tmp-*"):
                        shutil.rmtree(leftover, ignore_errors=True)
                self.arrays = {m: (self.group[f"{m}/{HIDDEN}"], self.group[f"{m}/{MASK}"]) for m in self.specs}
            except BaseException:
                self.claim.release()  # no __exit__ will: the shard must not stay claimed by this process
                raise

    # ------------------------------------------------------------------ setup
    def _describe(self, shard: Shard) -> str:
        return f"shard {shard}, {holder(self.dir, shard)}"

    def _wipe(self) -> None:
        for name in (STORE_DIR, MANIFEST_DIR, MMAP_DIR, ITEM_IDS, ITEM_DIGESTS_DIR):
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _create(self) -> None:
        """Build the empty store in a temporary sibling, then rename it into place."""
        import zarr

        shutil.rmtree(self.dir / MANIFEST_DIR, ignore_errors=True)  # markers of a vanished store are void
        tmp = Path(tempfile.mkdtemp(prefix=f".{STORE_DIR}.tmp-", dir=self.dir))
        os.chmod(tmp, DIR_MODE)
        try:
            n = len(self.item_ids)
            root = zarr.open_group(tmp, mode="w", attributes={
                "format": FORMAT, "num_items": n, "modalities": sorted(self.specs), "build": self.build})
            for modality, spec in sorted(self.specs.items()):
                c = spec.resolved_chunk_items()
                root.create_array(f"{modality}/{HIDDEN}", shape=(n, spec.tokens, spec.dim),
                                  chunks=(c, spec.tokens, spec.dim), dtype=HIDDEN_DTYPE, fill_value=0,
                                  compressors=_codecs(), dimension_names=("item", "token", "dim"),
                                  attributes={"fingerprint": canonical(spec.fingerprint)})
                root.create_array(f"{modality}/{MASK}", shape=(n, spec.tokens), chunks=(c, spec.tokens),
                                  dtype="bool", fill_value=False, compressors=_codecs(),
                                  dimension_names=("item", "token"))
            write_item_ids(self.dir, self.item_ids)
            for modality, (source, digests) in self.item_digests.items():
                write_item_digests(self.dir, modality, source, digests)
            tmp.rename(self.dir / STORE_DIR)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _check_and_extend(self, others: list[Shard]) -> None:
        attrs = dict(self.group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"unknown cache format {attrs.get('format')!r}, this mmsr writes {FORMAT}",
                             where=self.dir, hint=REBUILD_HINT)
        if sorted(attrs.get("modalities", [])) != sorted(self.specs):
            raise StoreError(f"the cache holds modalities {attrs.get('modalities')}, this build makes "
                             f"{sorted(self.specs)}", where=self.dir, hint=REBUILD_HINT)
        if canonical(attrs.get("build", {})) != self.build:
            keys = diff(attrs.get("build", {}), self.build)
            raise StoreError("the cache was started with other build options: " + "; ".join(keys),
                             where=self.dir, hint="rerun with the same options, or " + REBUILD_HINT)
        problems = []
        for modality, spec in sorted(self.specs.items()):
            hidden = self.group[f"{modality}/{HIDDEN}"]
            stored = {k: v for k, v in hidden.attrs.get("fingerprint", {}).items() if k not in ITEM_KEYS}
            wanted = {k: v for k, v in spec.fingerprint.items() if k not in ITEM_KEYS}
            problems += [f"{modality}.{key}" for key in diff(stored, wanted)]
            if tuple(hidden.shape[1:]) != (spec.tokens, spec.dim):
                problems.append(f"{modality} shape: cache has (T, D)={tuple(hidden.shape[1:])}, "
                                f"the encoder makes {(spec.tokens, spec.dim)}")
        if problems:
            raise StoreError("the cache was built with another encoder setup: " + "; ".join(problems),
                             where=self.dir, hint=REBUILD_HINT)

        old = read_item_ids(self.dir)
        new = self.item_ids
        if new[: len(old)] != old:
            first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), len(new))
            found = repr(new[first]) if first < len(new) else "missing (the list is shorter)"
            raise StoreError(f"the item list changed other than by appending: row {first} is {old[first]!r} in the "
                             f"cache and {found} in the dataset", where=self.dir, hint=REBUILD_HINT)
        self._check_digests()
        n = len(new)
        grow = n != len(old) or attrs.get("num_items") != n or any(
            canonical(self.group[f"{m}/{HIDDEN}"].attrs.get("fingerprint")) != canonical(s.fingerprint)
            for m, s in self.specs.items())
        if not grow:
            return
        if others:
            raise StoreError(f"cannot add items while another process builds this cache ({self._describe(others[0])})",
                             where=self.dir, hint="let the running build finish, then rerun")
        # Idempotent, so a kill between any two steps is repaired by the next run.
        for modality, spec in self.specs.items():
            hidden, mask = self.group[f"{modality}/{HIDDEN}"], self.group[f"{modality}/{MASK}"]
            if hidden.shape[0] != n:
                hidden.resize((n,) + tuple(hidden.shape[1:]))
                mask.resize((n,) + tuple(mask.shape[1:]))
            hidden.attrs["fingerprint"] = canonical(spec.fingerprint)
        self.group.attrs["num_items"] = n
        write_item_ids(self.dir, new)

    def _check_digests(self) -> None:
        """Refuse rows encoded from other inputs than the items have now; then record the
        digests. A cache from before they were kept adopts them here (the store cannot check its
        rows; mmsr checks them first by the files' times: `mmsr.caches.adopt_legacy_digests`)."""
        for modality, (source, digests) in sorted(self.item_digests.items()):
            stored = read_item_digests(self.dir, modality)
            if stored is not None:
                changed = changed_rows(stored[1], digests)
                if changed:
                    first = changed[0]
                    raise StoreError(f"{len(changed):,} cached item{'s' if len(changed) > 1 else ''} changed "
                                     f"{modality} since they were encoded (the first: item {self.item_ids[first]!r}, "
                                     f"row {first})", where=self.dir, hint=REBUILD_HINT)
                if stored == (source, digests):
                    continue
            write_item_digests(self.dir, modality, source, digests)

    # ------------------------------------------------------------------ work
    def chunk_items(self, modality: str) -> int:
        return int(self.arrays[modality][0].chunks[0])

    def pending(self, modality: str, *, all_shards: bool = False) -> list[ChunkTask]:
        """The unfinished chunks of `modality` this process owns, in order."""
        return [ChunkTask(modality, chunk, start, stop, todo, self.item_ids[start:stop])
                for chunk, start, stop, todo in manifest.unfinished(self.dir, modality, self.item_ids,
                                                                    self.chunk_items(modality))
                if all_shards or self.shard.owns(chunk)]

    def write_chunk(self, task: ChunkTask, hidden: np.ndarray, mask: np.ndarray, problems: list[str] = ()) -> None:
        """Write rows [todo_start, stop) of the chunk, then its manifest marker."""
        spec = self.specs[task.modality]
        rows = task.stop - task.todo_start
        if hidden.shape != (rows, spec.tokens, spec.dim) or mask.shape != (rows, spec.tokens):
            raise StoreError(f"chunk {task.chunk} of {task.modality}: got hidden {hidden.shape} and mask "
                             f"{mask.shape}, expected {(rows, spec.tokens, spec.dim)} and {(rows, spec.tokens)}")
        hidden_array, mask_array = self.arrays[task.modality]
        hidden = np.ascontiguousarray(hidden, dtype=np.float16)
        mask = np.ascontiguousarray(mask, dtype=bool)
        old = manifest.read_one(self.dir, task.modality, task.chunk)
        if task.todo_start > task.start:
            # An extended last chunk: keep the finished rows, rewrite the chunk whole.
            def kept(name, array):
                return read_rows(self.dir, f"{task.modality}/{name}", array, task.start, task.todo_start)

            hidden = np.concatenate([kept(HIDDEN, hidden_array), hidden])
            mask = np.concatenate([kept(MASK, mask_array), mask])
            problems = list(old.problems if old else []) + list(problems)
        manifest.remove(self.dir, task.modality, task.chunk)
        record = manifest.ChunkRecord(task.chunk, task.start, task.stop, items_hash(self.item_ids[task.start:task.stop]),
                                      manifest.chunk_digest(hidden, mask), list(problems), str(self.shard))
        # zarr writes each chunk file to a temporary name and renames it, so a full disk leaves the
        # old file (or none) and no marker: the chunk is simply redone by the next run.
        with out_of_space_guard(self.dir, f"{task.modality} chunk {task.chunk} (items {task.start}..{task.stop - 1})"):
            hidden_array[task.start:task.stop] = hidden
            mask_array[task.start:task.stop] = mask
            manifest.write(self.dir, task.modality, record)

    def remaining(self) -> dict[str, int]:
        """Unfinished chunks per modality over all shards (0 everywhere: the cache is complete)."""
        return {m: len(self.pending(m, all_shards=True)) for m in self.specs}

    def close(self) -> None:
        self.claim.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
