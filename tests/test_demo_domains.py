"""Demo domains: `mmsr data demo --domain K` draws a catalogue disjoint from every other
domain's under the same rules and vocabulary; domain 0 is the demo, byte for byte."""

import collections
import json
import re

import numpy as np
import pytest

from mmsr.data.demo import CATEGORIES, DEFAULT_CONTENT_HASH, MATERIALS, STYLES, Domain, generate_demo
from mmsr.errors import MMSRError

# The default demo's content_hash (items.jsonl, interactions.tsv and every picture) as generated
# before domains existed; JPEG bytes come from Pillow's encoder, so a Pillow upgrade may move it.
DEFAULT_HASH = "b1324311c88d26b6dfd7f0ebb81bb2d1805311caa554678648eaf1120e8379c7"
# Smaller generations by the same old code, for a quick check of the other parameters' paths.
OLD_HASHES = {(60, 30, 0, 224): "73324df475730600c5964555b6462bd6b58895fbf1a135026276b778e914bd49",
              (60, 30, 3, 32): "4d485c8b4055effcf8def47d0d4be0dc26fcb52f95be8e132cd2088c2ed9110f"}
SMALL = {"items": 40, "users": 30, "image_size": 32}


def _meta(root) -> dict:
    return json.loads((root / "meta.json").read_text())


def _items(root) -> list[dict]:
    return [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]


def _users(root) -> set[str]:
    return {line.split("\t")[0] for line in (root / "interactions.tsv").read_text().splitlines()[1:]}


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    return {k: generate_demo(root / f"d{k}", name=f"d{k}", domain=k, **SMALL) for k in (0, 1, 2)}


def test_default_demo_unchanged(mmsr_home):
    from typer.testing import CliRunner

    from mmsr_cli.data import app

    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    meta = _meta(mmsr_home / "datasets" / "demo")
    assert meta["content_hash"] == DEFAULT_HASH
    # The default request records no generator options (its meta.json is what it always was), and
    # the code knows its hash, so that a kept default demo can still be compared with a request.
    assert "generator" not in meta and DEFAULT_CONTENT_HASH == DEFAULT_HASH
    again = CliRunner().invoke(app, ["demo", "--seed", "4"])
    assert "it was generated with seed 0, not seed 4" in " ".join(again.output.split()), again.output


@pytest.mark.parametrize("items,users,seed,image_size", list(OLD_HASHES))
def test_domain_zero_is_the_old_demo(tmp_path, items, users, seed, image_size):
    root = generate_demo(tmp_path / "d", items=items, users=users, seed=seed, image_size=image_size, domain=0)
    assert _meta(root)["content_hash"] == OLD_HASHES[(items, users, seed, image_size)]


def test_domains_are_disjoint(domains):
    items = {k: _items(root) for k, root in domains.items()}
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not {i["id"] for i in items[a]} & {i["id"] for i in items[b]}
        assert not _users(domains[a]) & _users(domains[b])
        titles_a, titles_b = {i["title"] for i in items[a]}, {i["title"] for i in items[b]}
        assert len(titles_a & titles_b) <= 0.1 * len(titles_a), (a, b)  # the brands differ
        first = [(domains[k] / items[k][0]["image"]).read_bytes() for k in (a, b)]
        assert first[0] != first[1]
    assert all(i["id"].startswith("d1-i") for i in items[1]) and all(u.startswith("d2-u") for u in _users(domains[2]))


def test_same_vocabulary_and_rule(domains):
    """Every domain writes the same attribute words, and its users stick to a category far
    more than the same sequences would with the items' categories shuffled."""
    title = re.compile(rf"^({'|'.join(s.capitalize() for s in STYLES)}) ({'|'.join(MATERIALS)}) "
                       rf"({'|'.join(CATEGORIES)}) by \w+$")
    shuffle = np.random.default_rng(0)
    for root in domains.values():
        items = _items(root)
        assert all(title.match(item["title"]) for item in items)
        assert {item["category"] for item in items} <= set(CATEGORIES)
        category = {item["id"]: item["category"] for item in items}
        shuffled = dict(zip(category, shuffle.permutation(list(category.values()))))
        assert _stickiness(root, category) > 1.2 * _stickiness(root, shuffled)


def _stickiness(root, category: dict) -> float:
    """Mean share of a user's items in their most frequent category."""
    sequences = collections.defaultdict(list)
    for line in (root / "interactions.tsv").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        sequences[user].append(category[item])
    return float(np.mean([collections.Counter(s).most_common(1)[0][1] / len(s) for s in sequences.values()]))


def test_deterministic_per_seed_and_domain(domains, tmp_path):
    again = generate_demo(tmp_path / "again", domain=1, **SMALL)
    assert _meta(again)["content_hash"] == _meta(domains[1])["content_hash"]
    other_seed = generate_demo(tmp_path / "seed1", domain=1, seed=1, **SMALL)
    hashes = {_meta(root)["content_hash"] for root in [*domains.values(), other_seed]}
    assert len(hashes) == 4


def test_streams_never_coincide():
    """numpy pads short seeds with zeros ([s, 1] == [s, 1, 0]); the spawn keys cannot meet
    domain 0's streams nor each other."""
    first = {(k, s): Domain(5, k).rng(s).integers(2**62) for k in (0, 1, 2, 3) for s in (0, 1, 2, 3)}
    assert len(set(first.values())) == len(first)
    assert Domain(5, 1).rng(0).integers(2**62) != np.random.default_rng([5, 1]).integers(2**62)
    assert Domain(5, 0).rng(1).integers(2**62) == np.random.default_rng([5, 1]).integers(2**62)


def test_sizes_honoured_and_refusals(tmp_path):
    root = generate_demo(tmp_path / "d3", domain=3, items=25, users=12, image_size=32)
    counts = _meta(root)["counts"]
    assert counts["items"] == 25 and counts["users"] == 12
    with pytest.raises(MMSRError, match="negative"):
        generate_demo(tmp_path / "bad", domain=-1, **SMALL)
    assert not (tmp_path / "bad").exists()


def test_cli_domain_gets_its_own_name(mmsr_home):
    from typer.testing import CliRunner

    from mmsr_cli.data import app

    result = CliRunner().invoke(app, ["demo", "--domain", "2", "--items", "30", "--users", "10"])
    assert result.exit_code == 0, result.output
    meta = _meta(mmsr_home / "datasets" / "demo-d2")
    assert meta["name"] == "demo-d2" and meta["counts"]["items"] == 30 and meta["counts"]["users"] == 10
    assert not (mmsr_home / "datasets" / "demo").exists()
