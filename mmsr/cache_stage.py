"""The encoder stage: run the frozen lower layers over every item once, into a zarr cache.

    dataset = load_dataset("demo")
    report = build_cache(dataset, EncoderConfig(), batch_size=64, num_workers=2)
    cache = open_cache(report.path)

Read top to bottom: build the encoders, work out each modality's (T, D) and fingerprint,
open the store (create, resume or extend it), then for every unfinished chunk this process
owns: preprocess in DataLoader workers (tokenising, decoding pictures), run `lower` under
inference mode, and hand whole chunks to a writer thread. Where a cache lives and the
fingerprint it must carry are in `mmsr.caches`, which the trainer's feed reads too.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from mmsr import config as config_lib
from mmsr.atomic import atomic_write_text
from mmsr.caches import adopt_legacy_digests, cache_path, check_inputs, current_digests, expected_fingerprint, \
    record_owner
from mmsr.data.dataset import BAD_IMAGE_POLICIES, Dataset, load_dataset, placeholder_picture
from mmsr.distributed import device_problem, pick_device
from mmsr.encoders import create_encoders
from mmsr.encoders.config import EncoderConfig
from mmsr.errors import Interrupted, MMSRError, stop_signal
from mmsr.progress import ProgressFactory, no_progress
from mmsr.train.config import TRAIN_ONLY_KEYS, TrainConfig, cache_section
from mmsr_store import CacheWriter, ChunkTask, ModalitySpec, Shard, VerifyReport, manifest, open_cache, verify_cache
from mmsr_store.layout import atomic_write_json, chunk_items_for, read_item_digests
from mmsr_store.reader import read_build_options
from mmsr_store.verify import invalidate

CONFIG_FILE = "config.yaml"


@dataclass
class CacheBuildConfig:
    """What `mmsr cache build` reads from --config / --set; saved as CACHE/config.yaml."""

    dataset: str = "demo"
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 64
    num_workers: int = 2
    on_bad_image: str = "error"  # error | skip (no image: zeros, all-False mask) | placeholder (grey picture)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chunk_items: int = 0  # items per zarr chunk; 0 sizes chunks to about 8 MiB
    seed: int = 0

    def __post_init__(self):
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}")
        if self.batch_size < 1 or self.num_workers < 0 or self.chunk_items < 0:
            raise ValueError("batch_size must be >= 1, num_workers and chunk_items >= 0")
        if problem := device_problem(self.device):
            raise ValueError(f"device={self.device!r} {problem}")
        if problem := config_lib.seed_problem(self.seed):
            raise ValueError(f"seed={self.seed!r} {problem}")


# Flags named like an EncoderConfig field (--text-model, --max-text-len, ...) set the encoders
# section; taken from the dataclass so that a new encoder setting needs no second list.
ENCODER_FIELDS = frozenset(f.name for f in fields(EncoderConfig))


def load_build_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                      **flags: Any) -> CacheBuildConfig:
    """defaults <- config file <- `--set` overrides <- flags, for `mmsr cache build`.

    `flags`: CacheBuildConfig's fields (dataset, batch_size, seed, ...) and EncoderConfig's
    (text_model, image_size, ...) by name; None means not given. The file may be a whole
    training config: only its dataset, seed and encoders are read, so one file drives
    `mmsr cache build` and `mmsr train`. Unknown keys and wrong types are gathered into one error.
    """
    dotted = {(f"encoders.{name}" if name in ENCODER_FIELDS else name): value for name, value in flags.items()}
    # A --set only training reads (model.*, optim.*) is taken as the file's sections are, so one
    # list of --set drives both commands; its names are still checked.
    training_only = [item for item in overrides or []
                     if item.partition("=")[0].strip().split(".")[0] in TRAIN_ONLY_KEYS]
    unknown = config_lib.unknown_keys(TrainConfig, config_lib.parse_overrides(training_only))
    if unknown:
        raise MMSRError("invalid --set: " + "; ".join(unknown))
    kept = [item for item in overrides or [] if item not in training_only]
    return config_lib.load(CacheBuildConfig, path, kept, dotted, from_file=cache_section)


@dataclass
class ModalityReport:
    modality: str
    tokens: int
    dim: int
    chunk_items: int
    encoded_items: int = 0  # by this process, this run
    written_chunks: int = 0
    seconds: float = 0.0
    lower_seconds: float = 0.0  # of which inside encoder.lower

    @property
    def items_per_s(self) -> float:
        return self.encoded_items / self.seconds if self.seconds else 0.0


@dataclass
class BuildReport:
    path: Path
    dataset: str
    num_items: int
    shard: str
    modalities: dict[str, ModalityReport]
    remaining_chunks: dict[str, int]  # over all shards; all zero: the cache is complete
    problems: list[str]
    on_bad_image: str

    @property
    def complete(self) -> bool:
        return not any(self.remaining_chunks.values())

    def to_json(self) -> dict:
        return {"path": str(self.path), "dataset": self.dataset, "num_items": self.num_items, "shard": self.shard,
                "complete": self.complete, "remaining_chunks": self.remaining_chunks,
                "on_bad_image": self.on_bad_image, "problems": self.problems,
                "modalities": {m: {**asdict(r), "items_per_s": round(r.items_per_s, 2)}
                               for m, r in self.modalities.items()}}


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One preprocessed batch of rows [start, stop) of one chunk (made in a DataLoader worker)."""

    task: int  # index into the task list
    start: int
    stop: int
    inputs: dict | None  # encoder.preprocess output for the rows in `present`; None if no row has input
    present: torch.Tensor  # bool [rows]: rows with input (a picture); text rows are always present
    problems: list[str]
    error: str | None = None  # a bad image under on_bad_image=error, raised in the main process

    def pin_memory(self) -> "Batch":  # called by the DataLoader's pin-memory thread (GPU builds)
        self.as_tensors()
        if self.inputs is not None:
            self.inputs = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return self

    # A worker's batch crosses to the main process as numpy arrays, pickled into the queue's one
    # message: a tensor would cross as shared memory, one file-descriptor handshake per tensor,
    # which cost about as much as a tiny encoder's whole forward on the batch (cProfile of a
    # 100K-item build: 6,252 handshakes, 17 of its 75 s).
    def as_arrays(self) -> "Batch":
        self.inputs = None if self.inputs is None else {k: v.numpy() if isinstance(v, torch.Tensor) else v
                                                        for k, v in self.inputs.items()}
        self.present = self.present.numpy() if isinstance(self.present, torch.Tensor) else self.present
        return self

    def as_tensors(self) -> "Batch":
        self.inputs = None if self.inputs is None else {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                                                        for k, v in self.inputs.items()}
        self.present = torch.from_numpy(self.present) if isinstance(self.present, np.ndarray) else self.present
        return self


class _BatchSource(torch.utils.data.Dataset):
    """Index i -> the preprocessed batch i. Runs in DataLoader workers: pure CPU, no model calls."""

    def __init__(self, dataset: Dataset, encoder, modality: str, spans: list[tuple[int, int, int]],
                 text_fields: tuple[str, ...], on_bad_image: str, image_size: int):
        self.dataset, self.encoder, self.modality, self.spans = dataset, encoder, modality, spans
        self.text_fields, self.on_bad_image, self.image_size = text_fields, on_bad_image, image_size

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int) -> Batch:
        task, start, stop = self.spans[index]
        # A joint model cannot leave a picture out, so its bad pictures are always placeholders.
        fallback = ("placeholder (a joint model always reads a picture)" if self.modality == "joint"
                    else self.on_bad_image)
        raw, present, problems = [], [], []
        for i in range(start, stop):
            value, problem = self.dataset.encoder_input(i, self.modality, self.text_fields, self.on_bad_image,
                                                        self.image_size)
            if problem and self.on_bad_image == "error":
                return Batch(task, start, stop, None, torch.zeros(0, dtype=torch.bool), [], error=problem)
            if problem:
                problems.append(f"{problem} -> {fallback}")
            present.append(value is not None)
            if value is not None:
                raw.append(value)
        inputs = self.encoder.preprocess(raw) if raw else None
        return Batch(task, start, stop, inputs, torch.tensor(present, dtype=torch.bool), problems)



def batch_spans(tasks: list[ChunkTask], batch_size: int) -> list[tuple[int, int, int]]:
    """(task, start, stop) batches; a batch never crosses a chunk, and always starts at the same
    row for the same chunk, so a resumed chunk sees exactly the batches of an uninterrupted build."""
    spans = []
    for t, task in enumerate(tasks):
        for start in range(task.todo_start, task.stop, batch_size):
            spans.append((t, start, min(task.stop, start + batch_size)))
    return spans


def iter_batches(dataset: Dataset, encoder, modality: str, spans, *, encoder_config: EncoderConfig,
                 num_workers: int, on_bad_image: str = "error", pin_memory: bool = False) -> Iterator[Batch]:
    source = _BatchSource(dataset, encoder, modality, spans, tuple(encoder_config.text_fields), on_bad_image,
                          encoder_config.image_size)
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
        worker_init_fn=functools.partial(_worker_init, build=os.getpid()) if num_workers else None,
        collate_fn=_shipped if num_workers else _as_is)
    for batch in loader:
        yield batch.as_tensors()


def _shipped(batch: Batch) -> Batch:
    """Runs in the worker (batch_size=None: the collate step is per batch): see Batch.as_arrays."""
    return batch.as_arrays()


def _as_is(batch: Batch) -> Batch:
    return batch


def _worker_init(_worker_id: int, build: int) -> None:
    torch.set_num_threads(1)  # preprocessing is per-item Python/PIL work; leave the cores to the model
    # A SIGTERM to the whole process group (timeout, systemd, scancel, torchrun's killpg) reaches
    # the workers too. Dying by it, a worker made the build's SIGCHLD handler raise "DataLoader
    # worker is killed by signal" over the build's own way out (a traceback, exit 1 for 143); the
    # build stops its workers itself as it leaves.
    signal.signal(signal.SIGTERM, _leave_quietly)
    _die_with(build)


def _leave_quietly(signum, frame) -> None:
    os._exit(0)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(build: int) -> None:
    """On Linux, have the kernel kill this worker when the build process that forked it dies.
    A build killed with SIGKILL (an out-of-memory kill, a scheduler's) cannot stop its workers,
    and torch's own watchdog only runs while a worker waits for work: one blocked handing a batch
    to the dead build stayed for good, holding memory. Elsewhere the watchdog is all there is."""
    if not sys.platform.startswith("linux") or os.getppid() != build:
        return  # not forked by the build (a forkserver's or spawn's worker inherits none of its locks)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != build:  # it died between the two reads
        os._exit(1)


def to_device(inputs: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def encode_rows(encoder, batch: Batch, tokens: int, dim: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """lower() on one batch -> float16 hidden [rows, T, D] and bool mask [rows, T] on the CPU.

    Padding positions (mask False) are zeroed; rows without input (no picture) are all zeros
    with an all-False mask.
    """
    rows = batch.stop - batch.start
    hidden_out = torch.zeros((rows, tokens, dim), dtype=torch.float16)
    mask_out = torch.zeros((rows, tokens), dtype=torch.bool)
    if batch.inputs is None:
        return hidden_out.numpy(), mask_out.numpy()
    hidden, mask = encoder.lower(to_device(batch.inputs, device))
    n, t, d = hidden.shape
    if d != dim or t > tokens or mask.shape != (n, t):
        raise MMSRError(f"{encoder.modality} encoder returned hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)}; "
                        f"the cache holds {tokens} tokens of {dim}", where=f"items {batch.start}..{batch.stop - 1}")
    # The mask may come back on the CPU from an encoder that runs on a GPU (a plug-in's choice).
    hidden = hidden.to(torch.float16).masked_fill(~mask.bool().to(hidden.device).unsqueeze(-1), 0).cpu()
    present = batch.present.nonzero().squeeze(1)
    hidden_out[present, :t] = hidden
    mask_out[present, :t] = mask.bool().cpu()
    return hidden_out.numpy(), mask_out.numpy()


# ----------------------------------------------------------------------------- the stage


def probe_shape(encoder, modality: str, encoder_config: EncoderConfig, device: torch.device) -> tuple[int, int]:
    """(T, D) of `lower` for this encoder: one tiny forward on a blank input."""
    picture = placeholder_picture(encoder_config.image_size)
    raw = {"text": ["probe"], "image": [picture], "joint": [("probe", picture)]}[modality]
    hidden, _ = encoder.lower(to_device(encoder.preprocess(raw), device))
    tokens, dim = int(hidden.shape[1]), int(hidden.shape[2])
    if modality == "text":
        tokens = max(tokens, encoder_config.max_text_len)  # dynamic-padding tokenizers: room for the longest
    return tokens, dim


def preprocessed_batches(dataset: Dataset, encoder, modality: str, encoder_config: EncoderConfig, *,
                         batch_size: int, device: torch.device) -> list[dict]:
    """Every batch of inputs a full build feeds to `lower` (same chunks, same batch edges),
    preprocessed in this process. Benchmarks time the bare `lower` on these."""
    tokens, dim = probe_shape(encoder, modality, encoder_config, device)
    chunk = chunk_items_for(tokens, dim)
    tasks = [ChunkTask(modality, c, start, min(dataset.num_items, start + chunk), start)
             for c, start in enumerate(range(0, dataset.num_items, chunk))]
    source = _BatchSource(dataset, encoder, modality, batch_spans(tasks, batch_size), tuple(encoder_config.text_fields),
                          "error", encoder_config.image_size)
    return [source[i].inputs for i in range(len(source))]


def build_cache(dataset: Dataset, encoder_config: EncoderConfig, *, batch_size: int = 64, num_workers: int = 2,
                shard: Shard | str | None = None, on_bad_image: str = "error", device: str = "auto",
                chunk_items: int = 0, overwrite: bool = False, cache_dir: str | os.PathLike | None = None,
                encoders: dict | None = None, progress: ProgressFactory | None = None,
                resolved_config: dict | None = None, seed: int = 0) -> BuildReport:
    """Encode every unfinished chunk this process owns; resumable, shardable, incremental.

    `encoders` ({modality: SplitEncoder}) defaults to `create_encoders(encoder_config)`.
    `progress(description, total, unit="items")` is a context manager yielding `advance(n)`
    (e.g. `mmsr_cli.common.progress_bar`). Returns what this process did; the cache is
    complete when `report.complete`.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise MMSRError(f"unknown on_bad_image policy {on_bad_image!r}", hint="use error, skip or placeholder")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    progress = progress or no_progress
    torch.manual_seed(seed)
    target = pick_device(device)
    encoders = encoders if encoders is not None else create_encoders(encoder_config)
    wanted = set(encoder_config.modalities)
    if set(encoders) != wanted:
        raise MMSRError(f"encoders for {sorted(encoders)} but the config enables {sorted(wanted)}")
    check_inputs(dataset, encoder_config)
    path = Path(cache_dir) if cache_dir is not None else cache_path(dataset, encoder_config)

    specs, reports = {}, {}
    for modality, encoder in sorted(encoders.items()):
        if encoder.modality != modality:
            raise MMSRError(f"the {modality} slot holds a {encoder.modality} encoder")
        encoder.to(target).eval()
        tokens, dim = probe_shape(encoder, modality, encoder_config, target)
        specs[modality] = ModalitySpec(tokens, dim, expected_fingerprint(encoder, dataset, encoder_config),
                                       chunk_items or None)

    if not overwrite:  # rows of an old cache that kept no digests are checked by its files' times
        for m in specs:
            adopt_legacy_digests(path, dataset, m, encoder_config)
    # A rerun on the version of the dataset the cache recorded reads no picture again for them.
    digests = {m: current_digests(dataset, m, encoder_config, read_item_digests(path, m)) for m in specs}
    wiped = False
    try:
        with CacheWriter(path, item_ids=dataset.item_ids(), specs=specs, shard=shard,
                         build={"on_bad_image": on_bad_image}, overwrite=overwrite, item_digests=digests) as writer:
            wiped = overwrite
            if cache_dir is None:  # $MMSR_HOME's caches of this dataset's name: this dataset's now
                record_owner(path, dataset)
            if resolved_config is not None:
                _write_config(path / CONFIG_FILE, resolved_config)
            for modality in sorted(specs):
                spec = specs[modality]
                reports[modality] = ModalityReport(modality, spec.tokens, spec.dim, writer.chunk_items(modality))
                _encode_modality(writer, dataset, encoders[modality], modality, spec, encoder_config,
                                 batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image,
                                 device=target, progress=progress, report=reports[modality])
            remaining = writer.remaining()
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as the CLI raises it (mmsr.errors.Terminated)
        if not wiped:
            raise  # nothing deleted yet: the same command, --overwrite and all, is the one to rerun
        # Rerunning the very command would delete the chunks finished since, a second time.
        raise BuildInterrupted(stop_signal(stop), "the old cache was deleted (--overwrite); the chunks finished "
                               "since are kept", where=path, hint="rerun the command without --overwrite to resume; "
                                                                 "with it they are deleted again") from None
    problems = _all_problems(path, specs)
    report = BuildReport(path, dataset.name, dataset.num_items, str(shard), reports, remaining, problems, on_bad_image)
    atomic_write_json(path / "report.json", report.to_json())
    return report


class BuildInterrupted(Interrupted):
    """Ctrl-C or SIGTERM in a build after --overwrite deleted the old cache."""


def _encode_modality(writer: CacheWriter, dataset: Dataset, encoder, modality: str, spec: ModalitySpec,
                     encoder_config: EncoderConfig, *, batch_size: int, num_workers: int, on_bad_image: str,
                     device: torch.device, progress: ProgressFactory, report: ModalityReport) -> None:
    tasks = writer.pending(modality)
    total = sum(task.todo for task in tasks)
    if not tasks:
        return
    spans = batch_spans(tasks, batch_size)
    # Whole chunks are assembled here, then written by one background thread (zarr compresses
    # and writes while the model runs on the next batches). At most two chunks wait for it.
    buffers: dict[int, tuple[np.ndarray, np.ndarray, list[str], list[int]]] = {}
    pending: list[Future] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmsr-cache-writer") as pool, \
            progress(f"{modality} ({getattr(encoder, 'spec', None) or encoder.name})", total, unit="items") as advance:
        try:
            for batch in iter_batches(dataset, encoder, modality, spans, encoder_config=encoder_config,
                                      num_workers=num_workers, on_bad_image=on_bad_image,
                                      pin_memory=device.type == "cuda"):
                if batch.error:
                    raise MMSRError(batch.error, where=dataset.root,
                                    hint="fix or remove the picture, or rerun with --set on_bad_image=skip|placeholder "
                                         "(finished chunks are kept)")
                task = tasks[batch.task]
                if batch.task not in buffers:
                    rows = task.todo
                    buffers[batch.task] = (np.empty((rows, spec.tokens, spec.dim), np.float16),
                                           np.empty((rows, spec.tokens), bool), [], [0])
                hidden, mask, problems, filled = buffers[batch.task]
                t0 = time.perf_counter()
                h, m = encode_rows(encoder, batch, spec.tokens, spec.dim, device)
                report.lower_seconds += time.perf_counter() - t0
                a, b = batch.start - task.todo_start, batch.stop - task.todo_start
                hidden[a:b], mask[a:b] = h, m
                problems.extend(batch.problems)
                filled[0] += b - a
                if filled[0] == task.todo:
                    del buffers[batch.task]
                    while len(pending) >= 2:
                        pending.pop(0).result()
                    pending.append(pool.submit(writer.write_chunk, task, hidden, mask, problems))
                    report.written_chunks += 1
                report.encoded_items += b - a
                advance(b - a)
        finally:
            # Finished chunks reach the manifest even when a later batch fails. Waiting does not
            # raise: a later chunk's error must not replace the first one on its way out.
            failures = [error for error in (future.exception() for future in pending) if error is not None]
        if failures:
            raise failures[0]
    report.seconds = time.perf_counter() - started


def _all_problems(path: Path, specs: dict) -> list[str]:
    out = []
    for modality in sorted(specs):
        records = manifest.read(path, modality)
        out += [p for chunk in sorted(records) for p in records[chunk].problems]
    return out


def build_from_config(cfg: CacheBuildConfig, *, shard: Shard | str | None = None, overwrite: bool = False,
                      cache_dir: str | os.PathLike | None = None, encoders: dict | None = None,
                      progress: ProgressFactory | None = None, dataset: Dataset | None = None) -> BuildReport:
    """`build_cache` with every option `cfg` holds, and `cfg` saved whole as CACHE/config.yaml.

    The one way from a build config to a cache, for `mmsr cache build`, a study and a repair: a
    copy that saved part of the config (a study once left out `on_bad_image`) made a later
    repair rebuild with other options, which the store refuses. `dataset`: `cfg.dataset` when the
    caller has loaded it already."""
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset, check_images=False)
    return build_cache(dataset, cfg.encoders, batch_size=cfg.batch_size,
                       num_workers=cfg.num_workers, shard=shard, on_bad_image=cfg.on_bad_image, device=cfg.device,
                       chunk_items=cfg.chunk_items, overwrite=overwrite, cache_dir=cache_dir, encoders=encoders,
                       progress=progress, resolved_config=asdict(cfg), seed=cfg.seed)


def _write_config(path: Path, resolved: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))


# ----------------------------------------------------------------------------- repair


@dataclass
class RepairReport:
    before: VerifyReport
    build: BuildReport | None  # None: nothing to redo
    after: VerifyReport  # of the re-encoded chunks only

    @property
    def ok(self) -> bool:
        return self.after.ok and (self.build is None or self.build.complete)


def repair_cache(path: str | os.PathLike, *, progress: ProgressFactory | None = None,
                 encoders: dict | None = None) -> RepairReport:
    """Verify the cache, then re-encode exactly its damaged and unfinished chunks.

    The damaged chunks lose their manifest markers, and the normal resumable build, run with the
    options saved in CACHE/config.yaml, redoes every chunk without one; on the CPU it rewrites
    the same bytes. `encoders` as in `build_cache` (tests pass stand-ins).
    """
    path = Path(path).expanduser()
    before = verify_cache(path, progress)
    if before.ok:
        return RepairReport(before, None, before)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise MMSRError(f"cannot repair: no {CONFIG_FILE}, so the options this cache was built with are unknown",
                        where=path, hint="delete the cache and build it again with `mmsr cache build`")
    cfg = load_build_config(config_file)
    # The store's own record of on_bad_image is what its writer checks a build against; a
    # config.yaml written by an older study lacks the option and would load the default.
    recorded = read_build_options(path).get("on_bad_image")  # open_cache would refuse an unfinished cache
    if recorded is not None and recorded != cfg.on_bad_image:
        cfg = replace(cfg, on_bad_image=recorded)
    invalidate(path, before.bad)
    redo = {m: set(chunks) for m, chunks in before.unfinished.items()}
    for bad in before.bad:
        redo.setdefault(bad.modality, set()).add(bad.chunk)
    # One process redoes every shard's chunks: the damage is rarely where one shard would look.
    build = build_from_config(cfg, shard=Shard(), cache_dir=path, encoders=encoders, progress=progress)
    return RepairReport(before, build, verify_cache(path, progress, only=redo))
