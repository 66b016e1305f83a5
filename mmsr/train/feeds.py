"""Item feeds: item ids -> what the item tower reads. All file and cache I/O happens here,
outside the model's `forward`.

    CacheFeed  slices of the cached lower-layer states, held in RAM, memory-mapped or on GPU;
    StreamFeed rows of the cache decoded as asked (a loaded run's one pass over the items);
    RawFeed    the frozen lower layers run on raw text and pictures (end-to-end mode: eval, no grad);
    IdFeed     IDSR: the ids themselves.

Both content feeds produce the same states (hidden [N,T,D], mask [N,T] per modality), so the
cached and end-to-end paths share one code path from `upper` onwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Union

import torch

from mmsr.caches import cache_path, check_inputs, open_checked_cache
from mmsr.data.dataset import BadImagePolicy, Dataset
from mmsr.errors import MMSRError
from mmsr.models.layers import PooledState, pooled_upper
from mmsr.torchrun_env import env_int
from mmsr.train.config import TrainConfig
from mmsr_store import Cache
from mmsr_store.memory import available_memory, human_bytes, mapped_file_rss

States = dict[str, tuple[torch.Tensor, torch.Tensor]]
ItemInputs = Union[States, torch.Tensor]  # states for content towers, ids for the ID tower


class ItemFeed(Protocol):
    def __call__(self, ids: torch.Tensor) -> ItemInputs: ...


class IdFeed:
    """IDSR's feed: an ID item tower reads the ids."""

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return ids


# A memory-mapped feed hands back its mapped pages (Cache.release_pages) once this many bytes of
# them have become resident in the process, so the pages an epoch reads do not pile up in its
# RSS: they stay in the page cache, shared and reclaimable.
MMAP_RESIDENT_BYTES = 256 << 20


class CacheFeed:
    """Rows of the loaded states, gathered in bulk for a batch's items (never a zarr read).

    `release` (memory-mapped states only) is called once the process's mapped file pages have
    grown by MMAP_RESIDENT_BYTES since the last call. That growth is measured (RssFile), not
    counted from the rows gathered: a read maps far more than its row, the kernel's fault-around
    and the page cache's large folios included. At a million items of 2 kB rows, one batch's
    2,800 rows mapped 841 MB, and counting rows let the whole 2 GB file become resident.
    Without /proc, the gathered bytes are counted instead.
    """

    def __init__(self, states: States, device: torch.device, release: Callable[[], None] | None = None,
                 pooled: dict[str, torch.Tensor] | None = None):
        self.states = states
        self.device = device
        self.release = release
        # {modality: [items, D]}: modalities pooled once (`pool_items`), handed over as PooledState.
        self.pooled = pooled or {}
        # Bytes one item's rows take, every modality together: what a gather touches per id at least.
        self._row_bytes = sum(t[0].numel() * t.element_size() for pair in states.values() for t in pair if len(t))
        self._gathered = 0
        self._mapped_since = mapped_file_rss() if release is not None else None

    def __call__(self, ids: torch.Tensor) -> States:
        out = {}
        for modality, (hidden, mask) in self.states.items():
            index = ids.to(hidden.device)
            # index_select copies whole rows: 1.4x faster than hidden[index] on [3,000, 65, 384] float16
            # (Intel Xeon, 2 threads), the same bytes.
            out[modality] = (torch.index_select(hidden, 0, index).to(self.device, non_blocking=True),
                             torch.index_select(mask, 0, index).to(self.device))
        for modality, table in self.pooled.items():
            out[modality] = PooledState(table[ids.to(table.device)])
        if self.release is not None:
            self._gathered += ids.numel() * self._row_bytes
            if self._resident_growth() >= MMAP_RESIDENT_BYTES:
                self.release()
                self._gathered = 0
                self._mapped_since = mapped_file_rss()
        return out

    def _resident_growth(self) -> int:
        mapped = mapped_file_rss()
        if mapped is None or self._mapped_since is None:
            return self._gathered
        return mapped - self._mapped_since


class StreamFeed:
    """Rows read from the store as asked, a chunk decoded at a time (`Cache.rows`): for a loaded
    run, which embeds each item at most once (evaluation, recommend, plots), so loading every
    state first would only add the whole cache to the process's memory (3.3 GB at HM's shape)."""

    def __init__(self, readers: dict, device: torch.device):
        self.readers = readers
        self.device = device

    def __call__(self, ids: torch.Tensor) -> States:
        wanted = ids.cpu().numpy()
        out = {}
        for modality, read in self.readers.items():
            hidden, mask = read(wanted)
            out[modality] = (torch.from_numpy(hidden).to(self.device), torch.from_numpy(mask).to(self.device))
        return out


class RawFeed:
    """Runs each encoder's frozen lower layers on raw text and pictures, every call.

    Pictures follow `on_bad_image` as in the cache build: "error" stops with the item named,
    "skip" leaves the item without a picture, "placeholder" gives it a grey one.
    """

    def __init__(self, dataset: Dataset, encoders: dict, text_fields: list[str], device: torch.device,
                 on_bad_image: BadImagePolicy = "error", image_size: int = 224):
        self.dataset = dataset
        self.encoders = encoders
        self.text_fields = text_fields
        self.device = device
        self.on_bad_image = on_bad_image
        self.image_size = image_size

    def raw(self, modality: str, ids: list[int]) -> list:
        """Texts, pictures (None for an item without one), or (text, picture) pairs for a joint model."""
        out = []
        for i in ids:
            value, problem = self.dataset.encoder_input(i, modality, self.text_fields, self.on_bad_image,
                                                        self.image_size)
            if problem and self.on_bad_image == "error":
                raise MMSRError(problem, hint="restore the file, or train with --set on_bad_image=skip|placeholder "
                                              "(as `mmsr cache build` does)")
            out.append(value)
        return out

    def __call__(self, ids: torch.Tensor) -> States:
        id_list = ids.tolist()
        out = {}
        for modality, encoder in self.encoders.items():
            raw = self.raw(modality, id_list)
            present = [k for k, value in enumerate(raw) if value is not None]
            batch = encoder.preprocess([raw[k] for k in present])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            with torch.no_grad():
                hidden, mask = encoder.lower_forward(batch)
            if len(present) < len(raw):  # items without a picture: zeros, nothing valid (as in the cache)
                full = hidden.new_zeros((len(raw),) + hidden.shape[1:])
                full_mask = mask.new_zeros((len(raw),) + mask.shape[1:])
                full[present], full_mask[present] = hidden, mask
                hidden, mask = full, full_mask
            out[modality] = (hidden, mask)
        return out


class WithIds:
    """For towers that read both (FDSA): {"ids": ids, "states": the content feed's states}."""

    def __init__(self, states: "ItemFeed | None"):
        self.states = states

    def __call__(self, ids: torch.Tensor) -> dict:
        return {"ids": ids, "states": self.states(ids) if self.states is not None else {}}


def open_feed(config: TrainConfig, model, dataset: Dataset, from_cache: bool,
              device: torch.device, *, stream: bool = False) -> tuple[ItemFeed, str]:
    """The model's item feed and a description of it, by what its item tower reads
    (`model.item_inputs`): ids, the zarr cache (checked against this model's fingerprints,
    loaded in bulk into `config.cache_into`, or with `stream` read from the store as asked: for
    one pass over the items), raw inputs, or ids with either."""
    if model.item_inputs == "ids":
        return IdFeed(), "ids"
    encoders = model.encoders
    pool_once = getattr(model.items, "pooled_once", lambda: [])()
    states, description = (open_states_feed(config, encoders, dataset, from_cache, device, stream=stream,
                                            pool_once=pool_once) if encoders else (None, "no content"))
    if model.item_inputs == "ids+states":
        return WithIds(states), f"ids and {description}"
    return states, description


def open_states_feed(config: TrainConfig, encoders: dict, dataset: Dataset, from_cache: bool,
                     device: torch.device, *, stream: bool = False, pool_once=()) -> tuple[ItemFeed, str]:
    """The lower-layer states of `encoders`: from the cache, or computed from raw inputs.
    `pool_once` (the item tower's `pooled_once`): modalities a loaded cache hands over pooled,
    each item's vector computed once here and its states then dropped; a stream (one pass over
    the items anyway) and the end-to-end feed keep the states."""
    check_inputs(dataset, config.encoders)
    if not from_cache:
        return (RawFeed(dataset, encoders, config.encoders.text_fields, device, on_bad_image=config.on_bad_image,
                        image_size=config.encoders.image_size), "end-to-end (lower layers every step)")
    path: Path = cache_path(dataset, config.encoders)
    cache = open_checked_cache(path, encoders, dataset, config.encoders, config.on_bad_image)
    built_with = cache.build_options.get("on_bad_image", "error")
    if "image" in encoders and built_with != config.on_bad_image:
        raise MMSRError(f"the cache was built with on_bad_image={built_with}, this run says "
                        f"{config.on_bad_image}", where=path,
                        hint=f"train with --set on_bad_image={built_with}, or rebuild the cache with "
                             f"--set on_bad_image={config.on_bad_image} --overwrite")
    if stream:
        return StreamFeed({m: cache.rows(m) for m in encoders}, device), f"cache {path} (streamed, a chunk at a time)"
    into, why = choose_cache_into(config.cache_into, cache, tuple(encoders), device)
    states = {m: cache.load(m, into=into, device=device if into == "cuda" else None) for m in encoders}
    release = cache.release_pages if into == "mmap" else None
    # One pass over a pooled modality's states, mapped pages handed back as in training; then dropped.
    pooled = {m: pool_items(encoders[m], m, CacheFeed({m: states.pop(m)}, device, release=release),
                            dataset.num_items, config.eval_batch_size, device) for m in pool_once}
    feed = CacheFeed(states, device, release=release, pooled=pooled)
    once = f"; {', '.join(pooled)} pooled once" if pooled else ""
    return feed, f"cache {path} ({into}{': ' + why if why else ''}{once})"


@torch.no_grad()
def pool_items(encoder, modality: str, feed: ItemFeed, num_items: int, batch_size: int,
               device: torch.device) -> torch.Tensor:
    """[items, D] float32 on `device`: every item's `upper` output, masked-mean pooled, from `feed`'s
    states of `modality`, `batch_size` items at a time."""
    out = []
    for start in range(0, num_items, batch_size):
        ids = torch.arange(start, min(num_items, start + batch_size), device=device)
        out.append(pooled_upper(encoder, feed(ids)[modality]))
    return torch.cat(out) if out else torch.zeros(0, encoder.output_size, device=device)


# cache_into="auto" off GPU loads into RAM while the states take at most this share of the
# available memory; the rest is for the model, the optimizer, batches and the evaluation.
# Beyond it, mmap: the kernel pages the states in and out of its page cache as they are read.
AUTO_RAM_FRACTION = 0.5
# cache_into="ram" is refused beyond this share, before anything is allocated: past it the run
# would be OOM-killed part way (after minutes of loading, or epochs later) instead of told now.
RAM_FRACTION = 0.8
# On a GPU, "auto" puts the states there while they take at most this share of its free memory
# (the rest is for the model, activations and the evaluation's item matrix), and "cuda" is
# refused beyond GPU_FRACTION, before anything is allocated.
AUTO_GPU_FRACTION = 0.5
GPU_FRACTION = 0.9
RAM_HINT = ("train with --set cache_into=mmap: the states are memory-mapped from a copy on disk and paged in "
            "as read (or cache_into=auto, which picks it)")


def choose_cache_into(requested: str, cache: Cache, modalities: tuple[str, ...],
                      device: torch.device) -> tuple[str, str]:
    """(where `cache.load` puts the states of `modalities`, why: "" or a note for the feed's
    description) for `config.cache_into`. The rule is documented in docs/cache.md ("Loading")."""
    if requested not in _CACHE_INTO:
        raise MMSRError(f"unknown cache_into {requested!r}", hint="use auto, ram, mmap or cuda")
    # Every torchrun process on this node loads its own copy into RAM (mmap shares one).
    processes = max(1, env_int("LOCAL_WORLD_SIZE", 1))
    copy = sum(cache.nbytes(m) for m in modalities)
    return _CACHE_INTO[requested](_Budget(cache.path, copy, available_memory(), processes), device)


class _Budget:
    """What loading would take (`copy`: one process's states; `need`: all of this node's
    processes' copies in RAM) against what is available (`free`, None where the platform does
    not say). On a GPU each process holds one copy on its own device."""

    def __init__(self, path: Path, copy: int, free: int | None, processes: int):
        self.path, self.copy, self.free, self.processes = path, copy, free, processes
        self.need = copy * processes

    def states(self) -> str:
        per = f" ({self.processes} processes on this node, a copy each)" if self.processes > 1 else ""
        return f"{human_bytes(self.need)} of states{per}"

    def fits(self, fraction: float) -> bool:
        return self.free is None or self.need <= fraction * self.free


def gpu_free_memory(device: torch.device) -> int:
    """Bytes free on `device` now (the CUDA driver's count, other processes' use included)."""
    return int(torch.cuda.mem_get_info(device)[0])


def _auto(budget: _Budget, device: torch.device) -> tuple[str, str]:
    if device.type != "cuda":
        return _auto_host(budget)
    free = gpu_free_memory(device)
    if budget.copy <= AUTO_GPU_FRACTION * free:
        return "cuda", ""
    # Too big for the GPU: the host rule, with both reasons in the feed's description.
    into, why = _auto_host(budget)
    return into, f"{human_bytes(budget.copy)} of states > {AUTO_GPU_FRACTION:.0%} of {human_bytes(free)} free " \
                 f"on {device}; {why}"


def _auto_host(budget: _Budget) -> tuple[str, str]:
    if budget.free is None:
        return "ram", "available memory unknown"
    share = f"{AUTO_RAM_FRACTION:.0%} of {human_bytes(budget.free)} available"
    if budget.fits(AUTO_RAM_FRACTION):
        return "ram", f"{budget.states()} <= {share}"
    return "mmap", f"{budget.states()} > {share}"


def _ram(budget: _Budget, device: torch.device) -> tuple[str, str]:
    if not budget.fits(RAM_FRACTION):
        raise MMSRError(f"cache_into=ram needs {budget.states()} in RAM, but only {human_bytes(budget.free)} is "
                        f"available (ram is refused beyond {RAM_FRACTION:.0%} of it, to leave room for training)",
                        where=budget.path, hint=RAM_HINT)
    return "ram", ""


def _cuda(budget: _Budget, device: torch.device) -> tuple[str, str]:
    if device.type != "cuda":
        raise MMSRError(f"cache_into=cuda but the run's device is {device}", where=budget.path,
                        hint="set device = \"cuda\" (or auto on a GPU machine), or cache_into = \"auto\"")
    free = gpu_free_memory(device)
    if budget.copy > GPU_FRACTION * free:
        raise MMSRError(f"cache_into=cuda needs {human_bytes(budget.copy)} of states on {device}, but only "
                        f"{human_bytes(free)} is free there", where=budget.path,
                        hint="train with --set cache_into=auto: it keeps the states in host RAM or "
                             "memory-maps them, and copies each batch's rows to the GPU")
    return "cuda", ""


def _as_asked(into: str) -> Callable[[_Budget, torch.device], tuple[str, str]]:
    return lambda budget, device: (into, "")


# config.cache_into -> how it resolves to a load target, and why.
_CACHE_INTO: dict[str, Callable[[_Budget, torch.device], tuple[str, str]]] = {
    "auto": _auto, "ram": _ram, "mmap": _as_asked("mmap"), "cuda": _cuda,
}


@torch.no_grad()
def pooled_features(config: TrainConfig, modality: str, dataset: Dataset, from_cache: bool,
                    device: torch.device) -> torch.Tensor:
    """[items, D] the masked-mean pooled output of the config's `modality` encoder, run whole
    and frozen: what a model that takes its content as given features reads once (VQRec)."""
    from mmsr.encoders import create_encoders  # deferred: only the baselines that quantize content need it

    encoder = create_encoders(config.encoders, only=(modality,))[modality].to(device).eval()
    feed, _ = open_states_feed(config, {modality: encoder}, dataset, from_cache, device)
    return pool_items(encoder, modality, feed, dataset.num_items, config.eval_batch_size, device).cpu()


def prepare_items(model, config: TrainConfig, dataset: Dataset, from_cache: bool, device: torch.device) -> None:
    """What an item tower fixes once before training from its frozen content (VQRec's codes);
    nothing for the others. A resumed run and `mmsr eval` restore it with the weights instead."""
    modality = getattr(model.items, "needs_features", None)
    if modality:
        model.items.prepare(pooled_features(config, modality, dataset, from_cache, device))
