"""How a demo user picks items, and the two samplers that draw those picks.

The rule (see mmsr/data/demo.py): each user has a taste for one colour and one category,
may switch to a second colour after a random point, and picks items without repeats with
probability proportional to

    popularity(item) * exp(B_COLOUR * [colour matches] + B_CATEGORY * [category matches])

or, on a NOISE_SHARE of the steps, proportional to popularity alone.

Two samplers draw from exactly that distribution:

- `exact`: the demo's original code. Every pick weights every item, so its cost grows with
  interactions x items (hours at the paper's HM shape), and it keeps all sequences in memory
  before the timestamps are drawn. Its random stream defines the default demo's bytes, so it
  stays, unchanged, for catalogues up to EXACT_MAX_ITEMS.
- `grouped`: the same distribution at a cost that grows with the interactions. The weight
  takes only four values per (colour, category) group of items, times popularity, so a pick
  draws a group from 64 masses, then an item of that group by popularity with one binary
  search over a cumulative sum kept in group order. "Without repeats" is rejection: a pick
  that repeats one of the user's earlier picks is drawn again from the same step's weights,
  which is the weights with the taken items zeroed. Users are drawn in chunks, vectorised,
  and handed on as they are done, so memory is bounded by a chunk, not by the dataset.

The two use their random streams differently: the same seed gives different datasets under
the two samplers, each deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from mmsr.errors import MMSRError
from mmsr.registry import Registry

B_COLOUR = 4.0
B_CATEGORY = 4.0
SWITCH_PROB = 0.3
NOISE_SHARE = 0.05
# The exact sampler costs ~10 us per pick per thousand items; at 10,000 items a 2,000-user
# demo still takes about a minute. Beyond that `auto` uses the grouped sampler.
EXACT_MAX_ITEMS = 10_000
# Users drawn at once by the grouped sampler: a few MB of arrays per chunk.
CHUNK_USERS = 8192
FIRST_TIME = 1_700_000_000

# One user's sequence: (user index, item indices in order, their timestamps).
Sequence = tuple[int, np.ndarray, np.ndarray]
Sampler = Callable[..., Iterator[Sequence]]
SAMPLERS: Registry[Sampler] = Registry("demo sampler")


def choose_sampler(name: str, items: int) -> str:
    """`auto` -> the exact sampler for catalogues up to EXACT_MAX_ITEMS, else the grouped one."""
    if name == "auto":
        return "exact" if items <= EXACT_MAX_ITEMS else "grouped"
    if name not in SAMPLERS:
        raise MMSRError(f"unknown demo sampler {name!r}", hint=f"use auto, {', '.join(SAMPLERS.names())}")
    return name


def _length(rng: np.random.Generator, min_len: int, max_len: int, n: int) -> int:
    return min(int(np.clip(min_len + rng.geometric(1 / 9) - 1, min_len, max_len)), n)


@SAMPLERS.register("exact", help="the original draws, byte for byte; cost grows with interactions x items")
def exact_sequences(rng: np.random.Generator, popularity: np.ndarray, colour: np.ndarray, category: np.ndarray,
                    users: int, min_len: int, max_len: int, n_colours: int, n_categories: int) -> Iterator[Sequence]:
    """The demo's original sampler, draw for draw: every sequence first, then the timestamps."""
    n = len(popularity)
    sequences = []
    for _ in range(users):
        length = _length(rng, min_len, max_len, n)
        taste_colour = rng.integers(n_colours)
        taste_category = rng.integers(n_categories)
        switch_at = length if rng.random() > SWITCH_PROB else int(rng.integers(2, max(3, length)))
        second_colour = rng.integers(n_colours)
        chosen: list[int] = []
        taken = np.zeros(n, dtype=bool)
        for step in range(length):
            c = taste_colour if step < switch_at else second_colour
            if rng.random() < NOISE_SHARE:
                weight = popularity.copy()
            else:
                weight = popularity * np.exp(B_COLOUR * (colour == c) + B_CATEGORY * (category == taste_category))
            weight[taken] = 0.0
            pick = int(rng.choice(n, p=weight / weight.sum()))
            taken[pick] = True
            chosen.append(pick)
        sequences.append(chosen)
    for u, chosen in enumerate(sequences):
        t = FIRST_TIME + int(rng.integers(0, 86_400 * 30))
        times = []
        for _ in chosen:
            t += int(rng.integers(60, 86_400))
            times.append(t)
        yield u, np.asarray(chosen, dtype=np.int64), np.asarray(times, dtype=np.int64)


class GroupedPicker:
    """Draws items under the choice rule in O(log items) per pick (see the module doc)."""

    def __init__(self, popularity: np.ndarray, colour: np.ndarray, category: np.ndarray,
                 n_colours: int, n_categories: int):
        self.n_categories = n_categories
        group = colour.astype(np.int64) * n_categories + category
        self.order = np.argsort(group, kind="stable")
        self.cumulative = np.cumsum(popularity[self.order])
        counts = np.bincount(group, minlength=n_colours * n_categories)
        self.last = np.cumsum(counts) - 1  # position of each group's last item in `order`
        self.first = self.last - counts + 1
        # Each group's mass and where its span starts, read off the same running sum that is
        # searched, so that a draw inside a group's span lands on that group's items.
        ends = np.concatenate([[0.0], self.cumulative])[self.last + 1]
        self.start = np.concatenate([[0.0], ends[:-1]])
        self.mass = ends - self.start
        # For every taste (colour, category): the cumulative mass over the groups.
        # Tastes and groups are both (colour, category) pairs, numbered alike.
        colour_of, category_of = np.divmod(np.arange(len(counts)), n_categories)
        boost = np.exp(B_COLOUR * (colour_of[None, :] == colour_of[:, None])
                       + B_CATEGORY * (category_of[None, :] == category_of[:, None]))
        cdf = np.cumsum(boost * self.mass[None, :], axis=1)
        self.taste_cdf = cdf / cdf[:, -1:]

    def pick(self, colour: np.ndarray, category: np.ndarray, noise: np.ndarray,
             u_group: np.ndarray, u_item: np.ndarray) -> np.ndarray:
        """One item per step, for arrays of steps: the active colour and category, whether the
        step is noise (popularity alone), and two uniforms in [0, 1)."""
        taste = colour * self.n_categories + category
        group = (self.taste_cdf[taste] <= u_group[:, None]).sum(axis=1)
        group = np.minimum(group, len(self.mass) - 1)  # a uniform above a cdf rounded below 1
        # Noise steps search the whole cumulative sum; the others only their group's span.
        low = np.where(noise, 0.0, self.start[group])
        span = np.where(noise, self.cumulative[-1], self.mass[group])
        position = np.searchsorted(self.cumulative, low + u_item * span, side="right")
        # Rounding at a span's edge must not step into a neighbouring group.
        lowest = np.where(noise, 0, self.first[group])
        highest = np.where(noise, len(self.order) - 1, self.last[group])
        return self.order[np.clip(position, lowest, highest)]


@SAMPLERS.register("grouped", params=("start_user",),
                   help="the same rule at a cost that grows with the interactions; streamed")
def grouped_sequences(rng: np.random.Generator, popularity: np.ndarray, colour: np.ndarray, category: np.ndarray,
                      users: int, min_len: int, max_len: int, n_colours: int, n_categories: int,
                      start_user: int = 0) -> Iterator[Sequence]:
    """The same rule in O(interactions log items), drawn CHUNK_USERS users at a time.

    A chunk's draws all happen before its first user is handed on, so once a chunk's last user
    is consumed, `rng` stands where the next chunk starts: a generation stopped there resumes
    with that state and `start_user` (a multiple of CHUNK_USERS), draw for draw."""
    if start_user % CHUNK_USERS:
        raise ValueError(f"start_user {start_user} is not at a chunk boundary ({CHUNK_USERS} users)")
    n = len(popularity)
    picker = GroupedPicker(popularity, colour, category, n_colours, n_categories)
    for first in range(start_user, users, CHUNK_USERS):
        count = min(CHUNK_USERS, users - first)
        lengths = np.minimum(np.clip(min_len + rng.geometric(1 / 9, size=count) - 1, min_len, max_len), n)
        taste_colour = rng.integers(n_colours, size=count)
        taste_category = rng.integers(n_categories, size=count)
        switches = rng.random(count) <= SWITCH_PROB
        switch_at = np.where(switches, rng.integers(2, np.maximum(3, lengths)), lengths)
        second_colour = rng.integers(n_colours, size=count)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        owner = np.repeat(np.arange(count), lengths)
        step = np.arange(offsets[-1]) - offsets[owner]
        step_colour = np.where(step < switch_at[owner], taste_colour[owner], second_colour[owner])
        step_category = taste_category[owner]
        noise = rng.random(len(owner)) < NOISE_SHARE
        picks = picker.pick(step_colour, step_category, noise, rng.random(len(owner)), rng.random(len(owner)))
        for user in _users_with_repeats(owner, picks, n):
            _redraw_repeats(picker, rng, picks, slice(offsets[user], offsets[user + 1]),
                            step_colour, step_category, noise)
        gaps = rng.integers(60, 86_400, size=len(owner))
        starts = FIRST_TIME + rng.integers(0, 86_400 * 30, size=count)
        elapsed = np.cumsum(gaps)
        before = elapsed[offsets[:-1]] - gaps[offsets[:-1]]  # every user has at least one step
        times = starts[owner] + elapsed - np.repeat(before, lengths)
        for user in range(count):
            span = slice(offsets[user], offsets[user + 1])
            yield first + user, picks[span], times[span]


def _users_with_repeats(owner: np.ndarray, picks: np.ndarray, n: int) -> np.ndarray:
    key = np.sort(owner.astype(np.int64) * n + picks)
    return np.unique(key[1:][key[1:] == key[:-1]] // n)


def _redraw_repeats(picker: GroupedPicker, rng: np.random.Generator, picks: np.ndarray, span: slice,
                    colour: np.ndarray, category: np.ndarray, noise: np.ndarray) -> None:
    """Rejection, step by step: a pick equal to an earlier *final* pick is drawn again from its
    step's weights until it is new, which samples those weights with the taken items removed."""
    taken: set[int] = set()
    for i in range(span.start, span.stop):
        while int(picks[i]) in taken:
            one = slice(i, i + 1)
            picks[i] = picker.pick(colour[one], category[one], noise[one], rng.random(1), rng.random(1))[0]
        taken.add(int(picks[i]))
