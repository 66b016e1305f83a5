"""The demo's two samplers draw from the same choice rule; the grouped one streams large datasets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from mmsr.data import demo_choices
from mmsr.data.demo import CATEGORIES, COLOURS, _draw_items, generate_demo
from mmsr.data.demo_choices import (
    B_CATEGORY,
    B_COLOUR,
    NOISE_SHARE,
    choose_sampler,
    exact_sequences,
    grouped_sequences,
)
from mmsr.errors import MMSRError

N_COLOURS, N_CATEGORIES = len(COLOURS), len(CATEGORIES)


def _pair_probabilities(items) -> dict[tuple[int, int], float]:
    """P(first pick, second pick) of a two-step sequence, by hand from the rule: a taste drawn
    uniformly over colour x category, a noise coin per step, no repeats. (With two steps the
    colour switch cannot happen: it comes at step 2 at the earliest.)"""
    pop = items.popularity
    n = len(pop)
    joint = np.zeros((n, n))
    for colour in range(N_COLOURS):
        for category in range(N_CATEGORIES):
            w = pop * np.exp(B_COLOUR * (items.colour == colour) + B_CATEGORY * (items.category == category))
            first = NOISE_SHARE * pop / pop.sum() + (1 - NOISE_SHARE) * w / w.sum()
            for a in range(n):
                rest_pop, rest_w = pop.copy(), w.copy()
                rest_pop[a] = rest_w[a] = 0.0
                second = NOISE_SHARE * rest_pop / rest_pop.sum() + (1 - NOISE_SHARE) * rest_w / rest_w.sum()
                joint[a] += first[a] * second
    joint /= N_COLOURS * N_CATEGORIES
    return {(a, b): joint[a, b] for a in range(n) for b in range(n) if a != b}


@pytest.mark.parametrize("sampler", [exact_sequences, grouped_sequences])
def test_both_samplers_draw_the_rule(sampler):
    items = _draw_items(np.random.default_rng(3), 12)
    users = 20_000
    drawn = Counter(tuple(picks.tolist()) for _, picks, _ in sampler(
        np.random.default_rng(5), items.popularity, items.colour, items.category, users, 2, 2,
        N_COLOURS, N_CATEGORIES))
    expected = _pair_probabilities(items)
    # Pool the rare pairs so that every cell expects at least 5 draws (the chi-square rule).
    common = [pair for pair, p in expected.items() if p * users >= 5]
    rare = [pair for pair in expected if pair not in common]
    observed = [drawn[pair] for pair in common] + ([sum(drawn[pair] for pair in rare)] if rare else [])
    wanted = [expected[pair] * users for pair in common] + ([sum(expected[pair] for pair in rare) * users]
                                                            if rare else [])
    assert abs(sum(wanted) - users) < 1e-6  # the hand computation is a distribution
    assert set(drawn) <= set(expected)  # never a repeat
    assert chisquare(observed, wanted).pvalue > 1e-3  # fixed seeds: deterministic, not flaky


def test_grouped_sequences_are_valid_and_deterministic():
    items = _draw_items(np.random.default_rng(0), 300)

    def draw():
        return [(u, p.copy(), t.copy()) for u, p, t in grouped_sequences(
            np.random.default_rng(9), items.popularity, items.colour, items.category, 500, 3, 60,
            N_COLOURS, N_CATEGORIES)]

    first, again = draw(), draw()
    assert [u for u, _, _ in first] == list(range(500))
    for (_, picks, times), (_, picks2, times2) in zip(first, again):
        assert 3 <= len(picks) <= 60
        assert len(set(picks.tolist())) == len(picks)
        assert (np.diff(times) >= 60).all() and (np.diff(times) < 86_400).all()
        assert np.array_equal(picks, picks2) and np.array_equal(times, times2)


def test_grouped_sampler_streams_chunk_by_chunk(monkeypatch):
    """A user is handed on before later chunks are drawn: memory is one chunk, not the dataset."""
    monkeypatch.setattr(demo_choices, "CHUNK_USERS", 4)
    items = _draw_items(np.random.default_rng(0), 50)
    drawn_chunks = []
    real_pick = demo_choices.GroupedPicker.pick

    def counting_pick(self, colour, *rest):
        if len(colour) > 1:  # a chunk's vectorised draw, not a single redraw
            drawn_chunks.append(len(colour))
        return real_pick(self, colour, *rest)

    monkeypatch.setattr(demo_choices.GroupedPicker, "pick", counting_pick)
    stream = grouped_sequences(np.random.default_rng(1), items.popularity, items.colour, items.category, 40, 5, 9,
                               N_COLOURS, N_CATEGORIES)
    next(stream)
    assert len(drawn_chunks) == 1
    assert sum(1 for _ in stream) == 39 and len(drawn_chunks) == 10


def test_auto_keeps_the_original_draws_for_small_catalogues():
    assert choose_sampler("auto", 3000) == "exact"
    assert choose_sampler("auto", 85_000) == "grouped"
    assert choose_sampler("grouped", 3000) == "grouped"
    with pytest.raises(MMSRError, match="unknown demo sampler 'fast'"):
        choose_sampler("fast", 3000)


def test_generate_demo_with_the_scale_options(tmp_path):
    from mmsr.data.dataset import load_dataset

    generate_demo(tmp_path / "big", items=40, users=30, min_len=6, max_len=12, image_size=32, sampler="grouped")
    dataset = load_dataset(tmp_path / "big")
    counts = np.bincount(dataset.inter_user)
    assert dataset.meta["counts"]["users"] == 30 and counts.min() >= 6 and counts.max() <= 12
    assert dataset.load_picture(0)[0].size == (32, 32)
    generate_demo(tmp_path / "text-only", items=40, users=5, image_size=0)
    assert load_dataset(tmp_path / "text-only").meta["counts"]["items_with_image"] == 0
    for bad, message in (({"min_len": 0}, "min length"), ({"min_len": 9, "max_len": 8}, "min length"),
                         ({"image_size": 8}, "16 pixels")):
        with pytest.raises(MMSRError, match=message):
            generate_demo(tmp_path / "bad", items=40, users=3, **bad)
    assert not (tmp_path / "bad").exists()


def test_a_demo_that_cannot_be_made_is_refused_before_its_progress_bar(tmp_path, monkeypatch):
    """`mmsr data demo --items 2` drew an empty bar at 0% above its error."""
    import contextlib

    from mmsr.data.demo import create_demo

    monkeypatch.setenv("MMSR_HOME", str(tmp_path))
    opened = []

    @contextlib.contextmanager
    def progress(label, total):
        opened.append(label)
        yield lambda n=1: None

    for bad, message in (({"items": 2}, "at least 10 items"), ({"min_len": 9, "max_len": 8}, "--min-length"),
                         ({"image_size": 8}, "--image-size 16"), ({"domain": -1}, "negative"),
                         ({"sampler": "fast"}, "unknown demo sampler 'fast'")):
        with pytest.raises(MMSRError, match=message):
            create_demo("bad", **{"items": 40, "users": 3, **bad}, progress=progress)
    assert opened == [] and not (tmp_path / "datasets" / "bad").exists()


def test_fast_interaction_reader_equals_the_line_reader(tmp_path, monkeypatch):
    """The block-wise reader gives the line-by-line reader's arrays, users in first-appearance
    order across blocks; anything unusual falls back to the line reader and its errors."""
    from mmsr.data import dataset as dataset_module
    from mmsr.data.dataset import _read_interactions_by_line, load_dataset

    root = generate_demo(tmp_path / "d", items=40, users=25, sampler="grouped", image_size=16)
    table = root / "interactions.tsv"
    monkeypatch.setattr(dataset_module, "READ_BLOCK_BYTES", 97)  # many blocks, cut mid-line
    loaded = load_dataset(root)
    expected = _read_interactions_by_line(table, loaded.item_index)
    assert loaded.user_ids == expected[0]
    for got, want in zip((loaded.inter_user, loaded.inter_item, loaded.inter_time), expected[1:]):
        assert np.array_equal(got, want)
    assert dataset_module._parse_interactions_fast(table, loaded.item_index) is not None

    lines = table.read_text().splitlines()
    for body, fast_ok in ((lines[:5] + [""] + lines[5:], False), ([line + "\r" for line in lines], False)):
        table.write_text("\n".join(body) + "\n")
        assert (dataset_module._parse_interactions_fast(table, loaded.item_index) is not None) == fast_ok
        assert np.array_equal(load_dataset(root).inter_item, expected[2])
    table.write_text("\n".join(lines[:7] + [lines[7].replace("\ti", "\tnope")] + lines[8:]) + "\n")
    with pytest.raises(MMSRError, match="unknown item") as error:
        load_dataset(root)
    assert f"{table}:8" in str(error.value)
