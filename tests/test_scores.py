"""model.score: the cosine rule's value by hand, training under it, and evaluation ranking by it."""

import math

import numpy as np
import pytest
import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.models.scores import SCORES, create_score
from mmsr.train.config import TrainConfig
from mmsr.train.losses import create_loss
from test_eval import brute_force_ranks
from test_losses import BATCH_ITEMS, TABLE, TARGETS, USERS, _inputs
from test_train import _fits_a_batch, _train, built_cache  # noqa: F401 (a fixture)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)


def test_cosine_inbatch_loss_matches_its_formula():
    """The losses see cos(u, i) / τ when the model's vectors go through the cosine rule."""
    score, tau = create_score("cosine", temperature=0.2), 0.2
    table = score.items(torch.tensor(TABLE, dtype=torch.float64))
    users = score.users(torch.tensor(USERS, dtype=torch.float64))
    got = float(create_loss("inbatch")(_inputs(table=table, users=users)))
    expected = 0.0
    for user, target in zip(USERS, TARGETS):
        logits = {c: _cos(user, TABLE[c]) / tau for c in BATCH_ITEMS}
        expected += -logits[target] + math.log(sum(math.exp(v) for v in logits.values()))
    assert got == pytest.approx(expected, rel=1e-6)  # the losses take float32 logits


def test_dot_changes_nothing():
    vectors = torch.randn(5, 3)
    dot = create_score("dot")
    assert torch.equal(dot.items(vectors), vectors) and torch.equal(dot.users(vectors), vectors)


@pytest.mark.parametrize("kind,extra", [("idsr", []), ("mmsr", ["model.fusion=gate"])])
def test_a_cosine_model_learns(built_cache, kind, extra):
    losses = _fits_a_batch(built_cache + extra + [f"model.kind={kind}", "model.score=cosine",
                                                   "optim.loss=inbatch"])
    assert losses[-1] < 0.95 * losses[0], losses


def test_evaluation_ranks_a_cosine_model_by_cosine(tiny_overrides, tmp_path):
    """Trained under the cosine rule, `case_ranks` (FAISS over the scored vectors) ranks every
    test case as brute-force cosine similarity over the raw towers' outputs does, and the same
    raw vectors ranked by inner product give other ranks (the rule is not a no-op)."""
    from mmsr.eval.runner import case_ranks
    from mmsr.eval.towers import item_matrix, user_matrix
    from mmsr.train.run import load_run

    overrides = tiny_overrides + ["model.kind=idsr", "model.score=cosine", "model.temperature=0.05",
                                  "optim.loss=mixed", "optim.epochs=2"]
    _train(overrides, tmp_path / "run")
    loaded = load_run(tmp_path / "run", checkpoint="best", device="cpu")
    model, split = loaded.model, loaded.split
    got = case_ranks(model, loaded.feed, split, "test", max_k=20, search_backend="faiss").ranks

    cases = split.cases("test")
    max_len = split.config.max_seq_len
    histories = [split.history(u, p, max_len) for u, p in zip(cases.users, cases.positions)]
    full = [split.items[split.offsets[u]:split.offsets[u] + p] for u, p in zip(cases.users, cases.positions)]
    targets = split.items[split.offsets[cases.users] + cases.positions]
    raw_items = item_matrix(model, loaded.feed, split.num_items, 64, torch.device("cpu"))
    model.score = create_score("dot")  # the towers' own outputs, before the rule
    raw_users = user_matrix(model, raw_items, histories, max_len, 64, torch.device("cpu")).numpy()
    cosine = torch.nn.functional.normalize(raw_items, dim=-1).numpy()
    np.testing.assert_array_equal(got, brute_force_ranks(cosine, raw_users, targets, full, True, 20))
    by_dot = brute_force_ranks(raw_items.numpy(), raw_users, targets, full, True, 20)
    assert (by_dot != got).any()


def test_learned_cosine_starts_at_its_temperature_trains_it_and_keeps_it_above_the_floor():
    users, items = torch.randn(4, 3), torch.randn(6, 3)
    fixed, learned = create_score("cosine", temperature=0.2), create_score("cosine-learned", temperature=0.2)
    assert torch.allclose(learned.users(users), fixed.users(users)) and torch.equal(learned.items(items), fixed.items(items))
    assert learned.trained() == {"temperature": 0.2} and fixed.trained() == {}
    logits = learned.users(users) @ learned.items(items).T
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert learned.log_scale.grad is not None and float(learned.log_scale.grad) != 0.0
    with torch.no_grad():
        learned.log_scale.fill_(math.log(1000.0))  # a temperature of 0.001: below CLIP's clamp
    assert learned.trained() == {"temperature": 0.01}
    assert torch.allclose(learned.users(users), create_score("cosine", temperature=0.01).users(users))


def test_a_learned_temperature_is_recorded_saved_and_reloaded(tiny_overrides, tmp_path):
    """Each epoch's record holds the temperature training reached, and the checkpoint keeps it:
    the reloaded model's score is the trained one, not model.temperature again."""
    import json

    from mmsr.train.run import load_run

    _train(tiny_overrides + ["model.kind=idsr", "model.score=cosine-learned", "model.temperature=0.1",
                             "optim.loss=inbatch", "optim.epochs=2"], tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    temperatures = [r["temperature"] for r in records]
    assert len(temperatures) == 2 and temperatures[-1] != 0.1, temperatures
    loaded = load_run(tmp_path / "run", checkpoint="last", device="cpu")
    assert loaded.model.score.trained() == {"temperature": temperatures[-1]}


@pytest.mark.parametrize("overrides,expected", [
    (["model.score=angle"], ["model.score='angle' is not a known score", ", ".join(SCORES.names())]),
    (["model.temperature=0.2"], ["model.temperature=0.2 is ignored by score 'dot'", "cosine"]),
    (["model.score=cosine", "model.temperature=0"], ["model.temperature=0.0", "above 0"]),
    (["model.score=cosine-learned", "model.temperature=0.005"], ["model.temperature=0.005", "below the 0.01",
                                                                 "model.score=cosine"]),
    (["model.score=cosine", "model.kind=carca", "optim.loss=bce"], ["model.kind=carca", "cross-attention",
                                                                    "remove model.score"]),
])
def test_a_score_setting_that_cannot_work_is_refused(overrides, expected):
    with pytest.raises(MMSRError) as error:
        config_lib.load(TrainConfig, None, overrides)
    for part in expected:
        assert part in str(error.value), (part, str(error.value))
