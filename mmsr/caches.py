"""Which cache belongs to a dataset and an encoder config, and what it must hold to be valid.

Shared by the two sides of the cache: `mmsr.cache_stage` (which writes it) and
`mmsr.train.feeds` (which reads it). Neither side imports the other.

    path = cache_path(dataset, encoder_config)        # $MMSR_HOME/caches/<dataset>/<config hash>
    cache = open_checked_cache(path, encoders, dataset, encoder_config)   # refuses a stale cache
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import asdict
from pathlib import Path

from mmsr import paths
from mmsr.atomic import atomic_write_text
from mmsr.data.dataset import Dataset
from mmsr.encoders.config import READS_PICTURE, READS_TEXT, SLOT_FIELDS, EncoderConfig
from mmsr.encoders.model_key import model_key
from mmsr.errors import MMSRError
from mmsr_store import Cache, StoreError, manifest, open_cache
from mmsr_store.errors import OutOfSpaceError, UnwritableError
from mmsr_store.fingerprint import digest, items_hash
from mmsr_store.layout import FORMAT, STORE_DIR, changed_rows, read_item_digests, read_item_ids, write_item_digests
from mmsr_store.reader import BUILD_HINT

CACHE_DTYPE = "float16"
NO_IMAGE = "zeros with an all-False mask"
# A one-stream model always sees a picture beside the text: an item without one gets the grey
# placeholder (mmsr.data.dataset.placeholder_picture).
NO_JOINT_IMAGE = "the grey placeholder picture"


def config_hash(encoder_config: EncoderConfig, length: int = 12) -> str:
    """Short hash of the encoder config, with local model paths replaced by their content key,
    so that a cache moves with its data root and its checkpoint (`mmsr.encoders.model_key`)."""
    identity = encoder_config.identity()
    for field in [model for model, _ in SLOT_FIELDS.values()] + ["joint_vision_model"]:
        if field in identity:
            identity[field] = model_key(identity[field])
    return digest(identity, length)


# In each cache directory: the dataset directory it was built for.
OWNER_FILE = "dataset.txt"


def cache_path(dataset_root_or_name: str | os.PathLike | Dataset, encoder_config: EncoderConfig) -> Path:
    """`$MMSR_HOME/caches/<dataset directory name>/<short hash of the encoder config>`. For a
    loaded dataset, refused when another dataset of that directory name owns those caches."""
    root = paths.caches_dir(_dataset_dir_name(dataset_root_or_name))
    if isinstance(dataset_root_or_name, Dataset):
        _check_owner(root, Path(dataset_root_or_name.root))
    return root / config_hash(encoder_config)


def _check_owner(root: Path, dataset_root: Path) -> None:
    """Caches are kept by the dataset directory's name, so two datasets of one name (a copy
    elsewhere, another project's "demo") would share them: each build found the other's rows
    "changed" and, told to, overwrote them. An owner whose directory no longer holds a dataset
    has moved or gone: the caches go to the dataset that has the name now (`record_owner`)."""
    here = dataset_root.expanduser().resolve()
    for recorded in sorted(root.glob(f"*/{OWNER_FILE}")):
        try:
            owner = Path(recorded.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue  # unreadable: the cache's own checks (digests, fingerprints) still hold
        if owner != here and (owner / "meta.json").is_file():
            raise MMSRError(f"these caches belong to the dataset {owner}, whose directory has this dataset's name "
                            f"({here.name!r}), not to {here}", where=root,
                            hint="mmsr keeps caches by the dataset directory's name: rename one of the two "
                                 "directories, or give each its own MMSR_HOME")


def record_owner(cache_dir: Path, dataset: Dataset) -> None:
    """Write which dataset `cache_dir` is built for (`_check_owner` reads it)."""
    here = Path(dataset.root).expanduser().resolve()
    owner = Path(cache_dir) / OWNER_FILE
    if not owner.is_file() or owner.read_text(encoding="utf-8", errors="replace").strip() != str(here):
        atomic_write_text(owner, f"{here}\n")


def find_caches(target: str | os.PathLike) -> list[Path]:
    """A cache directory itself, or every cache of a dataset (given by name or path)."""
    path = Path(target).expanduser()
    if (path / STORE_DIR).is_dir():
        return [path]
    if paths.looks_like_path(target) and not path.exists():  # its name alone would find another's caches
        raise MMSRError("no such dataset or cache directory", where=target,
                        hint="give a cache directory, a dataset's directory or a dataset's name")
    root = paths.caches_dir(_dataset_dir_name(target))
    caches = sorted(p for p in root.glob("*") if (p / STORE_DIR).is_dir())
    if not caches:
        raise MMSRError("no cache found", where=target, hint="give a cache directory, or run mmsr cache build")
    return caches


def _dataset_dir_name(dataset_root_or_name: str | os.PathLike | Dataset) -> str:
    if isinstance(dataset_root_or_name, Dataset):
        return Path(dataset_root_or_name.root).name
    if paths.looks_like_path(dataset_root_or_name):
        return Path(dataset_root_or_name).expanduser().name
    return str(dataset_root_or_name)


# What to do when a modality's encoder finds nothing of one input to read: (modality, input) -> hint.
_NOTHING_TO_READ_HINTS = {
    ("image", "picture"): 'switch vision off: --set encoders.vision_model="" (text only, MMSR-T)',
    ("text", "text"): "name fields that hold text (the keys of the dataset's items.jsonl), or switch text off: "
                      '--set encoders.text_model=""',
    ("joint", "picture"): 'use a text model instead: --set encoders.joint_model="" --set encoders.text_model=minilm',
    ("joint", "text"): 'name the fields that hold text, or use a vision model instead: --set encoders.joint_model="" '
                       "--set encoders.vision_model=dinov2-s",
}


def check_inputs(dataset: Dataset, encoder_config: EncoderConfig) -> None:
    """Refuse an encoder on a dataset that gives it nothing to read: one that reads pictures
    (`READS_PICTURE`) where no item has a picture, one that reads text (`READS_TEXT`) where no
    item has text in `text_fields`. Without this the cache fills with placeholders and the model
    trains on them, which looks like a result."""
    fields = encoder_config.text_fields
    for modality in encoder_config.modalities:
        model_field = SLOT_FIELDS[modality][0]
        named = f"encoders.{model_field}={getattr(encoder_config, model_field)!r}"
        if modality in READS_PICTURE and not dataset.has_pictures():
            raise MMSRError(f"{named} encodes pictures, but no item of this dataset has a picture", where=dataset.root,
                            hint=_NOTHING_TO_READ_HINTS[modality, "picture"])
        if modality in READS_TEXT and not any(dataset.item_text(i, fields) for i in range(dataset.num_items)):
            raise MMSRError(f"{named} encodes text, but no item of this dataset has text in "
                            f"encoders.text_fields={list(fields)}", where=dataset.root,
                            hint=_NOTHING_TO_READ_HINTS[modality, "text"])


def expected_fingerprint(encoder, dataset: Dataset, encoder_config: EncoderConfig) -> dict:
    """The fingerprint a cache of `encoder`'s modality must carry to be valid for `dataset`."""
    modality = encoder.modality
    fingerprint = {**encoder.identity(), "modality": modality, "cache_dtype": CACHE_DTYPE, "store_format": FORMAT,
                   "item_list_hash": items_hash(dataset.item_ids()), "num_items": dataset.num_items}
    if modality in READS_TEXT:
        fingerprint["text_fields"] = list(encoder_config.text_fields)
        fingerprint["max_text_len"] = encoder_config.max_text_len
    if modality in READS_PICTURE:
        fingerprint["image_size"] = encoder_config.image_size
        fingerprint["no_image"] = NO_IMAGE if modality == "image" else NO_JOINT_IMAGE
    return fingerprint


def expected_fingerprints(encoders: dict, dataset: Dataset, encoder_config: EncoderConfig) -> dict[str, dict]:
    return {m: expected_fingerprint(e, dataset, encoder_config) for m, e in encoders.items()}


def open_checked_cache(path: str | os.PathLike, encoders: dict, dataset: Dataset,
                       encoder_config: EncoderConfig, on_bad_image: str = "error") -> Cache:
    """Open the cache and refuse it unless its fingerprints match these encoders and this dataset,
    and each row was encoded from what its item holds now (`check_item_inputs`). A cache not
    built yet, or not finished, is refused with the command that builds this one."""
    try:
        cache = open_cache(path)
    except StoreError as error:
        if error.hint != BUILD_HINT:
            raise
        raise StoreError(error.message, where=error.where,
                         hint=f"build it (a stopped build resumes where it stopped): "
                              f"{build_command(dataset, encoder_config, on_bad_image)}") from None
    cache.check(expected_fingerprints(encoders, dataset, encoder_config))
    check_item_inputs(cache, dataset, encoder_config, on_bad_image)
    return cache


def build_command(dataset: Dataset, encoder_config: EncoderConfig, on_bad_image: str = "error") -> str:
    """The `mmsr cache build` command line that makes the cache `encoder_config` names for
    `dataset`: every encoder setting that differs from its default, as a --set."""
    defaults = asdict(EncoderConfig())
    sets = [f"encoders.{key}={_yaml_value(value)}" for key, value in asdict(encoder_config).items()
            if value != defaults.get(key)]
    if on_bad_image != "error":
        sets.append(f"on_bad_image={on_bad_image}")
    return " ".join(["mmsr cache build --dataset", shlex.quote(str(dataset.root)),
                     *(f"--set {shlex.quote(item)}" for item in sets)])


def _yaml_value(value) -> str:
    """How --set (a YAML scalar) reads `value` back."""
    if isinstance(value, str) and value and all(c.isalnum() or c in "-_./:" for c in value):
        return value
    return json.dumps(value)


def item_digests(dataset: Dataset, modality: str, encoder_config: EncoderConfig) -> list[str]:
    """Per item, a digest of what the `modality` encoder reads of it: the text it is given
    (`Dataset.item_text` over encoders.text_fields), the bytes of its picture file, or both."""
    fields = tuple(encoder_config.text_fields)
    out = []
    for index in range(dataset.num_items):
        h = hashlib.blake2b(digest_size=12)
        if modality in READS_TEXT:
            h.update(dataset.item_text(index, fields).encode("utf-8"))
            h.update(b"\0")
        if modality in READS_PICTURE:
            picture = dataset.image_path(index)
            h.update(b"no picture" if picture is None else picture.read_bytes() if picture.is_file()
                     else b"missing " + str(picture).encode("utf-8"))
        out.append(h.hexdigest())
    return out


def inputs_version(dataset: Dataset, modality: str) -> str:
    """The version of what the `modality` encoder reads that its recorded digests are kept for:
    meta.json's content hash (written with the dataset) and a stamp of the files as they are now,
    the size and modification time of items.jsonl and, for a modality that reads pictures, of
    every item's picture. The stamp changes when a file is edited by hand, which the content hash
    cannot see; a stat per picture costs far less than reading it. "" (never trusted) for a
    dataset without a content hash."""
    content = dataset.meta.get("content_hash", "")
    if not content:
        return ""
    stamp = hashlib.blake2b(digest_size=12)
    paths = [dataset.root / "items.jsonl"]
    if modality in READS_PICTURE:
        paths += [dataset.image_path(i) for i in range(dataset.num_items)]
    for path in paths:
        if path is None:
            stamp.update(b"-\0")
            continue
        try:
            status = os.stat(path)
            stamp.update(f"{status.st_size} {status.st_mtime_ns}\0".encode())
        except OSError:
            stamp.update(b"missing\0")
    return f"{content}+{stamp.hexdigest()}"


def current_digests(dataset: Dataset, modality: str, encoder_config: EncoderConfig,
                    recorded: tuple[str, list[str]] | None) -> tuple[str, list[str]]:
    """(`inputs_version`, `item_digests`) of the dataset as it is: the `recorded` (source,
    digests) when they were read from this very version of it and cover every item, else every
    item's inputs read again (pictures included)."""
    version = inputs_version(dataset, modality)
    if recorded is not None and version and recorded[0] == version and len(recorded[1]) == dataset.num_items:
        return recorded
    return version, item_digests(dataset, modality, encoder_config)


# The source recorded for the digests of a cache built before they were kept (`legacy_digests`),
# and the digest given to a row whose inputs were modified after it was encoded: no digest of
# real inputs equals it, so every check refuses that row.
LEGACY_SOURCE = "adopted: built before item digests were kept"
MODIFIED_AFTER_ENCODING = "modified after it was encoded"


def legacy_digests(cache_dir: Path, dataset: Dataset, modality: str,
                   encoder_config: EncoderConfig) -> tuple[str, list[str]] | None:
    """Digests for a cache whose build kept none for `modality` (mmsr before 2026-12-04), from the
    files' times: a row was encoded from what its inputs hold now when items.jsonl (its text, and
    where its picture is) and its picture file were last modified before its chunk's manifest
    marker was written, and then gets their digest; any other row gets `MODIFIED_AFTER_ENCODING`,
    so every check refuses it. A picture missing now counts as modified unless its chunk recorded
    it as unreadable then. Rows of chunks not finished yet get today's digests: they will be
    encoded from today's inputs. The source is `inputs_version` when no row was modified (so the
    inputs are not read a second time), else `LEGACY_SOURCE`. None when the cache keeps digests
    for `modality`, has no finished chunk of it, or lists other items than the dataset's first
    ones (the fingerprint or the writer refuses that cache; nothing is adopted into it)."""
    if read_item_digests(cache_dir, modality) is not None:
        return None
    records = manifest.read(cache_dir, modality)
    ids = dataset.item_ids()
    cached = read_item_ids(cache_dir)
    if not records or cached != ids[:len(cached)]:
        return None
    digests = item_digests(dataset, modality, encoder_config)
    listed_at = _mtime_ns(dataset.root / "items.jsonl")
    modified = False
    for chunk, record in records.items():
        encoded_at = _mtime_ns(manifest.marker_path(cache_dir, modality, chunk))
        unreadable_then = "\n".join(record.problems)
        for row in range(record.start, min(record.stop, len(digests))):
            times = [listed_at]
            picture = dataset.image_path(row) if modality in READS_PICTURE else None
            if picture is not None:
                picture_time = _mtime_ns(picture)
                if picture_time is not None or f"item {ids[row]!r}:" not in unreadable_then:
                    times.append(picture_time)  # None: missing now, read then, so modified
            if encoded_at is None or any(t is None or t > encoded_at for t in times):
                digests[row] = MODIFIED_AFTER_ENCODING
                modified = True
    return (LEGACY_SOURCE if modified else inputs_version(dataset, modality)), digests


def adopt_legacy_digests(cache_dir: Path, dataset: Dataset, modality: str,
                         encoder_config: EncoderConfig) -> tuple[str, list[str]] | None:
    """`legacy_digests`, written into the cache where it can be (then every later build and open
    checks the rows against them as against a new cache's; a cache this process cannot write is
    worked out again at each open)."""
    digests = legacy_digests(cache_dir, dataset, modality, encoder_config)
    if digests is not None:
        _record_digests(cache_dir, modality, *digests)
    return digests


def _mtime_ns(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def check_item_inputs(cache: Cache, dataset: Dataset, encoder_config: EncoderConfig,
                      on_bad_image: str = "error") -> None:
    """Refuse a cache whose rows were encoded from other texts or pictures than the dataset's
    items hold now: a dataset regenerated or re-imported under the same name, with the same item
    ids, or its files edited by hand. Fast when the dataset is the version the build read
    (`inputs_version`: its content hash, and the sizes and times of the files each modality reads);
    otherwise every item's inputs are read again (pictures included). A cache built before the
    digests were kept is checked once by its files' times (`legacy_digests`), which it then keeps."""
    for modality in cache.modalities:
        stored = cache.item_digests(modality) or adopt_legacy_digests(cache.path, dataset, modality, encoder_config)
        if stored is None:
            continue
        version, now = current_digests(dataset, modality, encoder_config, stored)
        changed = changed_rows(stored[1], now)
        if changed:
            ids = dataset.item_ids()
            how = (f"had files modified after this cache (built before it kept a record of its inputs) encoded "
                   f"them" if stored[0] == LEGACY_SOURCE else f"changed {modality} since this cache was built")
            raise MMSRError(f"{len(changed):,} item{'s' if len(changed) > 1 else ''} of dataset {dataset.name} "
                            f"{how} (the first: item {ids[changed[0]]!r})", where=cache.path,
                            hint=f"rebuild it: {build_command(dataset, encoder_config, on_bad_image)} --overwrite")
        if version and stored[0] != version and len(now) == len(stored[1]):
            # Unchanged rows under the dataset's current version: the next open reads no input
            # again (a data root copied without its files' times, a new version with the same items).
            _record_digests(cache.path, modality, version, now)


def _record_digests(cache_dir: Path, modality: str, source: str, digests: list[str]) -> None:
    """Write a cache's item digests where this process may; a cache it cannot write (read-only,
    a full disk) is worked out again at its next open instead."""
    try:
        write_item_digests(cache_dir, modality, source, digests)
    except (OSError, OutOfSpaceError, UnwritableError):
        pass
