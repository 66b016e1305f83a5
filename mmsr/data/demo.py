"""The embedded demo dataset: synthetic, deterministic, generated offline in seconds.

Each item has six hidden attributes. Three are drawn only in its picture (colour, shape,
pattern); three are written only in its text (category, material, style). Each user has a
taste for one colour and one category, and after a random point of their history may switch
to a second colour. A user picks items with probability proportional to

    popularity(item) * exp(B_COLOUR * [colour matches] + B_CATEGORY * [category matches])

without repeats, where popularity is Zipf-like over a random order of the items. So the
picture explains part of each choice and the text the other part: a text+image model can
beat text alone, image alone and item IDs alone, and most items are seen fewer than ten
times in training (cold), where only content can help. The weights and the two samplers
that draw the choices (the original one, and a streamed one for large datasets) are in
mmsr/data/demo_choices.py.

Domains (`domain=K`) are catalogues drawn under the same rules and attribute vocabulary but
from their own random streams: new items, pictures, brands and users, with ids prefixed
`dK-`, so they are disjoint by construction. Tastes are over attributes that every domain
shows in its pictures and text, so a content model trained on one domain can be tried on
another (transfer, seed §7.2), while item IDs cannot carry over. Domain 0 is the demo as it
always was, byte for byte.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsr import __version__, paths
from mmsr.atomic import refuse_existing, refuse_foreign, refuse_working_folder
from mmsr.config import seed_problem
from mmsr.data.dataset import META_FILE, DatasetWriter, checkpoint_file, load_dataset
from mmsr.data.demo_choices import CHUNK_USERS, SAMPLERS, choose_sampler
from mmsr.errors import MMSRError
from mmsr.locks import output_lock
from mmsr.progress import ProgressFactory, no_progress

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30),
    "purple": (140, 50, 180), "orange": (245, 130, 20), "cyan": (30, 200, 210), "pink": (240, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PATTERNS = ("solid", "stripes", "dots")
CATEGORIES = ("jacket", "sneaker", "backpack", "lamp", "mug", "watch", "scarf", "chair")
MATERIALS = ("leather", "cotton", "wool", "ceramic", "steel", "bamboo")
STYLES = ("vintage", "modern", "sporty", "elegant", "rustic")
BRANDS = ("Norda", "Velo", "Atlas", "Kumo", "Brisa", "Oaken", "Lumen", "Tessa", "Mirro", "Pallo")
# Other domains name their own brands from these syllables: another shop, other makers, so
# titles differ across domains where the attribute words do not.
BRAND_SYLLABLES = ("Ka", "Lo", "Mi", "Ren", "Sa", "To", "Vi", "Nu", "Pe", "Dor", "Ga", "Li", "Bo", "Fen", "Ra")
ZIPF_EXPONENT = 0.6


@dataclass
class DemoItems:
    colour: np.ndarray
    shape: np.ndarray
    pattern: np.ndarray
    category: np.ndarray
    material: np.ndarray
    style: np.ndarray
    brand: np.ndarray
    popularity: np.ndarray


@dataclass(frozen=True)
class Domain:
    """Where a domain's randomness and names come from. Domain 0 keeps the streams, ids and
    brands the demo had before domains existed, so its bytes do not change."""

    seed: int
    index: int = 0

    def rng(self, stream: int) -> np.random.Generator:
        if self.index == 0:
            return np.random.default_rng(self.seed if stream == 0 else [self.seed, stream])
        # A spawn key, not [seed, K, stream]: numpy pads short entropy with zeros, so
        # [seed, 1, 0] is the same stream as domain 0's [seed, 1]. Spawned children never
        # coincide with a parent's entropy nor with each other.
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.index, stream)))

    def prefix(self) -> str:
        return f"d{self.index}-" if self.index else ""

    def item_id(self, i: int) -> str:
        return f"{self.prefix()}i{i:05d}"

    def user_id(self, u: int) -> str:
        return f"{self.prefix()}u{u:05d}"

    def brands(self) -> tuple[str, ...]:
        if self.index == 0:
            return BRANDS
        rng = self.rng(3)
        pairs = rng.choice(len(BRAND_SYLLABLES) ** 2, size=len(BRANDS), replace=False)
        n = len(BRAND_SYLLABLES)
        return tuple(BRAND_SYLLABLES[p // n] + BRAND_SYLLABLES[p % n].lower() for p in pairs)


def _draw_items(rng: np.random.Generator, n: int) -> DemoItems:
    ranks = rng.permutation(n) + 1
    popularity = 1.0 / ranks ** ZIPF_EXPONENT
    return DemoItems(
        colour=rng.integers(len(COLOURS), size=n), shape=rng.integers(len(SHAPES), size=n),
        pattern=rng.integers(len(PATTERNS), size=n), category=rng.integers(len(CATEGORIES), size=n),
        material=rng.integers(len(MATERIALS), size=n), style=rng.integers(len(STYLES), size=n),
        brand=rng.integers(len(BRANDS), size=n), popularity=popularity / popularity.sum(),
    )


def _title(items: DemoItems, i: int, brands: tuple[str, ...] = BRANDS) -> str:
    return (f"{STYLES[items.style[i]].capitalize()} {MATERIALS[items.material[i]]} "
            f"{CATEGORIES[items.category[i]]} by {brands[items.brand[i]]}")


def _description(items: DemoItems, i: int, model_no: int) -> str:
    return (f"A {STYLES[items.style[i]]} {CATEGORIES[items.category[i]]} made of "
            f"{MATERIALS[items.material[i]]}. Model {model_no}.")


def render_image(colour: int, shape: int, pattern: int, rng: np.random.Generator, size: int = 224):
    """A picture showing the visual attributes, with jitter in position, size and background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(225, 250, size=3))
    picture = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(picture)
    rgb = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in list(COLOURS.values())[colour])
    half = int(size * rng.uniform(0.25, 0.38))
    cx, cy = (int(size / 2 + rng.integers(-size // 10, size // 10 + 1)) for _ in range(2))
    box = (cx - half, cy - half, cx + half, cy + half)
    outline = {
        "circle": None, "square": None,
        "triangle": [(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)],
        "diamond": [(cx, cy - half), (cx - half, cy), (cx, cy + half), (cx + half, cy)],
    }[SHAPES[shape]]
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    if SHAPES[shape] == "circle":
        mask_draw.ellipse(box, fill=255)
    elif SHAPES[shape] == "square":
        mask_draw.rectangle(box, fill=255)
    else:
        mask_draw.polygon(outline, fill=255)
    fill = Image.new("RGB", (size, size), rgb)
    if PATTERNS[pattern] != "solid":
        texture = ImageDraw.Draw(fill)
        for step in range(0, size, 14):
            if PATTERNS[pattern] == "stripes":
                texture.rectangle((0, step, size, step + 4), fill=(255, 255, 255))
            else:
                for x in range(step % 28 // 2, size, 14):
                    texture.ellipse((x, step, x + 5, step + 5), fill=(255, 255, 255))
    picture.paste(fill, (0, 0), mask)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(200, 200, 200))
    return picture


# A generation stopped part way (a full disk, a kill) keeps what it wrote in `.NAME.partial`
# beside the dataset, and where it stood in `.NAME.partial.json`: the random streams' states and
# the files' lengths at the last checkpoint. Rerun with the same options, it goes on from there,
# draw for draw, so the dataset is byte for byte what one uninterrupted run writes. Checkpoints
# fall every CHECKPOINT_ITEMS items and, with the grouped sampler, every CHUNK_USERS users (the
# exact sampler draws every sequence before the first is written: its users start again).
CHECKPOINT_ITEMS = 4096


# The default demo's content hash (tests/test_demo_domains.py pins the same; JPEG bytes come from
# Pillow, so a Pillow upgrade may move both): a kept dataset with it and no "generator" record was
# made with DEFAULT_OPTIONS.
DEFAULT_CONTENT_HASH = "b1324311c88d26b6dfd7f0ebb81bb2d1805311caa554678648eaf1120e8379c7"


def generator_options(*, seed: int = 0, domain: int = 0, min_len: int = 5, max_len: int = 40, image_size: int = 224,
                      sampler: str = "auto", items: int = 3000) -> dict:
    """What a generation is asked for besides its size, its sampler resolved (`auto` depends on the
    size): recorded in meta.json ("generator") unless the whole request is the default one, whose
    meta.json stays byte for byte what it always was."""
    return {"seed": seed, "domain": domain, "min_len": min_len, "max_len": max_len, "image_size": image_size,
            "sampler": choose_sampler(sampler, items)}


def check_demo_request(*, items: int, users: int, domain: int = 0, min_len: int = 5, max_len: int = 40,
                       image_size: int = 224, sampler: str = "auto", seed: int = 0) -> None:
    """What a demo cannot be made with, refused before anything is drawn or shown."""
    choose_sampler(sampler, items)  # refuses an unknown name
    if problem := seed_problem(seed):
        raise MMSRError(f"seed {seed} {problem}", hint="--seed 0 draws the demo")
    if items < 10 or users < 1:
        raise MMSRError(f"{items} items and {users} users: the demo needs at least 10 items and 1 user",
                        hint="--items 10 or more, --users 1 or more")
    if not 1 <= min_len <= max_len:
        raise MMSRError(f"sequence lengths {min_len}..{max_len}: need 1 <= min length <= max length",
                        hint="--min-length at least 1 and at most --max-length")
    if image_size and image_size < 16:
        raise MMSRError(f"image size {image_size}: the pictures need at least 16 pixels a side",
                        hint="--image-size 16 or more, or 0 for a text-only catalogue")
    if domain < 0:
        raise MMSRError(f"demo domain {domain} is negative", hint="use --domain 0 (the demo) or a positive number")


DEFAULT_OPTIONS = generator_options()
DEFAULT_SIZE = {"items": 3000, "users": 2000}


def generate_demo(dest: Path, *, name: str = "demo", items: int = 3000, users: int = 2000, seed: int = 0,
                  domain: int = 0, min_len: int = 5, max_len: int = 40, image_size: int = 224, sampler: str = "auto",
                  overwrite: bool = False, progress=None) -> Path:
    """Write the demo dataset to `dest`, whole or not at all, resuming a stopped generation with
    the same options (see CHECKPOINT_ITEMS). `progress(advance)` is called per item and per user.
    `domain` K > 0 draws a catalogue disjoint from every other domain's (see the module doc).
    `sampler` draws the choices (mmsr/data/demo_choices.py): `auto` keeps the original draws up
    to 10,000 items and streams larger datasets in bounded memory."""
    check_demo_request(items=items, users=users, domain=domain, min_len=min_len, max_len=max_len,
                       image_size=image_size, sampler=sampler, seed=seed)
    options = generator_options(seed=seed, domain=domain, min_len=min_len, max_len=max_len, image_size=image_size,
                                sampler=sampler, items=items)
    default = options == DEFAULT_OPTIONS and {"items": items, "users": users} == DEFAULT_SIZE
    sampler = options["sampler"]
    draw_sequences = SAMPLERS.entry(sampler).builder
    users_resume = "start_user" in SAMPLERS.params(sampler)
    catalogue = Domain(seed, domain)
    attrs = _draw_items(catalogue.rng(0), items)
    image_rng, seq_rng, brands = catalogue.rng(1), catalogue.rng(2), catalogue.brands()
    # What the staged bytes depend on: a checkpoint of anything else (other options, another
    # chunking or version of the generator) is not resumed.
    request = {"format": 1, "mmsr": __version__, "chunk_users": CHUNK_USERS, "checkpoint_items": CHECKPOINT_ITEMS,
               "name": name, "items": items, "users": users, "seed": seed, "domain": domain, "min_len": min_len,
               "max_len": max_len, "image_size": image_size, "sampler": sampler}
    dest = Path(dest)
    refuse_existing(dest, overwrite, META_FILE)  # before a stale partial is touched
    staging = dest.parent / f".{dest.name}.partial"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(dest, "demo dataset"):
        state = _saved_state(staging, request)
        with DatasetWriter(dest, name=name, source="demo", overwrite=overwrite, staging=staging,
                           extra_meta={} if default else {"generator": options}) as writer:
            item_ids = [catalogue.item_id(i) for i in range(items)]
            done_items, done_users = (state["items_done"], state["users_done"]) if state else (0, 0)
            if state:
                writer.restore(state, item_ids[:done_items], map(catalogue.user_id, range(done_users)))
                image_rng.bit_generator.state, seq_rng.bit_generator.state = state["image_rng"], state["seq_rng"]
                if progress:
                    progress(done_items + done_users)

            def checkpoint(items_done: int, users_done: int) -> None:
                writer.checkpoint(request=request, items_done=items_done, users_done=users_done,
                                  image_rng=image_rng.bit_generator.state, seq_rng=seq_rng.bit_generator.state)

            for i in range(done_items, items):
                # image_size 0: a text-only catalogue, for benchmarks of the store and the ranking at
                # millions of items, where writing the pictures would take longest.
                picture = (render_image(attrs.colour[i], attrs.shape[i], attrs.pattern[i], image_rng, image_size)
                           if image_size else None)
                writer.add_item(item_ids[i], title=_title(attrs, i, brands),
                                description=_description(attrs, i, 100 + i), category=CATEGORIES[attrs.category[i]],
                                image=picture)
                if progress:
                    progress(1)
                if (i + 1) % CHECKPOINT_ITEMS == 0 or i + 1 == items:
                    checkpoint(i + 1, 0)
            sequences = draw_sequences(seq_rng, attrs.popularity, attrs.colour, attrs.category, users, min_len,
                                       max_len, len(COLOURS), len(CATEGORIES),
                                       **({"start_user": done_users} if users_resume else {}))
            for u, chosen, times in sequences:
                user = catalogue.user_id(u)
                for item, t in zip(chosen.tolist(), times.tolist()):
                    writer.add_interaction(user, item_ids[item], t)
                if progress:
                    progress(1)
                if users_resume and (u + 1) % CHUNK_USERS == 0 and u + 1 < users:
                    checkpoint(items, u + 1)
    return dest


def _saved_state(staging: Path, request: dict) -> dict | None:
    """The checkpoint of a stopped generation of this very request, or None; a staging folder
    that no checkpoint of this request describes is removed (it cannot be resumed)."""
    state_path = checkpoint_file(staging)
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("request") == request and staging.is_dir():
        return state
    shutil.rmtree(staging, ignore_errors=True)
    state_path.unlink(missing_ok=True)
    return None


def default_demo_name(domain: int = 0) -> str:
    """Each domain has its own default name, so generating another domain never finds the
    demo already there and keeps it instead."""
    return f"demo-d{domain}" if domain else "demo"


def kept_note(dest: Path, items: int, users: int, options: dict | None = None) -> str:
    """What to say of an existing demo kept instead of generated: "" when it is what was asked for
    (its size, and `options` as `generator_options` gives them), else how it differs, so that a
    run does not go on unaware with other data than it asked for."""
    meta_path = dest / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    counts = meta.get("counts", {})
    notes = []
    if counts and (counts.get("items"), counts.get("users")) != (items, users):
        notes.append(f"it has {counts.get('items'):,} items and {counts.get('users'):,} users, not the {items:,} and "
                     f"{users:,} asked for")
    recorded = meta.get("generator")
    if recorded is None and meta.get("content_hash") == DEFAULT_CONTENT_HASH:
        recorded = DEFAULT_OPTIONS
    if options is not None and recorded is not None:
        keys = [key for key in options if recorded.get(key) != options[key]]
        if keys:
            notes.append(f"it was generated with {', '.join(f'{key} {recorded.get(key)!r}' for key in keys)}, "
                         f"not {', '.join(f'{key} {options[key]!r}' for key in keys)}")
    elif options is not None and options != DEFAULT_OPTIONS:
        notes.append("its seed, lengths and picture size were not recorded (an earlier mmsr made it), so they may "
                     "not be the ones asked for")
    return "; ".join(notes)


def check_whole(dest: Path) -> None:
    """Refuse to keep an existing dataset that does not load, or whose tables hold other counts
    than its meta.json recorded: one damaged (a table cut short or deleted, meta.json garbled) was
    kept with "keeping it", and the next command failed on it instead. As cheap as any command's
    load (the pictures are checked to exist, not decoded)."""
    hint = "pass --overwrite to generate it again in its place"
    with output_lock(dest, "demo dataset"):  # not while an --overwrite swaps it in: half of each is no damage
        try:
            dataset = load_dataset(dest)
        except MMSRError as error:
            said = f"{error.where}: {error.message}" if error.where else error.message  # its own hint is not ours
            raise MMSRError(f"exists but does not load, so it is not kept: {said}", where=dest, hint=hint) from None
    found = {"items": dataset.num_items, "users": len(dataset.user_ids), "interactions": len(dataset.inter_user)}
    recorded = dataset.meta.get("counts", {})
    if not isinstance(recorded, dict):
        raise MMSRError(f"exists but its meta.json's counts are {type(recorded).__name__}, not a table: damaged, so "
                        "it is not kept", where=dest, hint=hint)
    differ = [key for key in found if isinstance(recorded.get(key), int) and recorded[key] != found[key]]
    if differ:
        said = ", ".join(f"{found[key]:,} {key} (meta.json: {recorded[key]:,})" for key in differ)
        raise MMSRError(f"exists but its tables hold {said}: damaged, so it is not kept", where=dest, hint=hint)


def create_demo(name: str | None = None, *, items: int = 3000, users: int = 2000, seed: int = 0, domain: int = 0,
                overwrite: bool = False, progress: ProgressFactory = no_progress, **shape) -> tuple[Path, bool]:
    """`mmsr data demo`: the demo dataset `name` (under $MMSR_HOME/datasets, or a path; default
    `default_demo_name(domain)`), generated unless it already exists (`overwrite` regenerates
    it). `shape` passes min_len, max_len, image_size and sampler on to `generate_demo`.
    Returns (its directory, whether it was written now)."""
    # Before the progress bar, which an error would otherwise leave drawn at 0% above it.
    check_demo_request(items=items, users=users, domain=domain, seed=seed, **shape)
    name = name or default_demo_name(domain)
    dest = paths.dataset_dir(name)
    refuse_working_folder(dest)
    if dest.exists() and not overwrite:
        if (dest / META_FILE).is_file():
            check_whole(dest)
            return dest, False
        # Not a dataset: an empty folder is taken (as --overwrite would), a folder of the user's own refused.
        refuse_foreign(dest, META_FILE, "written into")
        overwrite = True
    with progress("demo data", items + users) as advance:
        generate_demo(dest, name=Path(name).name, items=items, users=users, seed=seed, domain=domain,
                      overwrite=overwrite, progress=advance, **shape)
    return dest, True
