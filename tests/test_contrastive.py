"""The contrastive term on the user tower (`optim.contrastive_weight`): its value against the
formula, its place in the model's loss, training, DDP and bad input."""

import math

import pytest
import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.train.batches import PAD
from mmsr.train.config import TrainConfig
from mmsr.train.contrastive import ViewContrast, nt_xent
from test_train import _fits_a_batch as fits_a_batch, _loss, assert_two_processes_train_as_one

FIRST = [[1.0, 0.0], [0.6, 0.8], [0.0, -2.0]]
SECOND = [[0.8, 0.6], [0.0, 1.0], [1.0, -1.0]]


def _config(overrides):
    return config_lib.load(TrainConfig, None, overrides)


def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _expected_nt_xent(temperature):
    """Written out: a view's candidates are the other five views, its positive its row's other one."""
    views = FIRST + SECOND
    rows = len(FIRST)

    def direction(query, positive):
        logits = {v: _cosine(views[query], views[v]) / temperature for v in range(len(views)) if v != query}
        return -logits[positive] + math.log(sum(math.exp(value) for value in logits.values()))

    return [(direction(r, r + rows) + direction(r + rows, r)) / 2 for r in range(rows)]


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_nt_xent_matches_its_formula(temperature):
    got = nt_xent(torch.tensor(FIRST), torch.tensor(SECOND), temperature)
    assert got.tolist() == pytest.approx(_expected_nt_xent(temperature), rel=1e-5)


def test_the_term_weighs_each_row_by_its_target_positions():
    term = ViewContrast(0.1, 0.5)(torch.tensor(FIRST), torch.tensor(SECOND), torch.tensor([3, 1, 0]))
    per_row = _expected_nt_xent(0.5)
    assert float(term) == pytest.approx(0.1 * (3 * per_row[0] + per_row[1]), rel=1e-5)


def _model_and_batch(overrides):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches
    from mmsr.train.feeds import open_feed
    from mmsr.train.model import build_model

    config = _config(overrides)
    dataset = load_dataset(config.dataset)
    split = split_dataset(dataset, config.split)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items, train_counts=split.train_counts)
    feed, _ = open_feed(config, model, dataset, True, torch.device("cpu"))
    return model, TrainBatches.for_config(split, config).batch(0, 0), feed


def test_the_model_adds_the_term_in_training_only(small_demo):
    """Without dropout both views are the training pass's last states, so the model's loss with the
    term is the loss without it plus the term computed from those states, and evaluation mode
    leaves it out."""
    base = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "model.dropout=0.0", "optim.loss=mixed",
            "optim.windows=all", "optim.batch_size=16"]
    plain, batch, feed = _model_and_batch(base)
    with_term, _, _ = _model_and_batch(base + ["optim.contrastive_weight=0.5", "optim.contrastive_temperature=0.2"])
    assert plain.contrast is None
    with_term.load_state_dict(plain.state_dict())
    with torch.no_grad():
        without, _ = _loss(plain, batch, feed)
        total, _ = _loss(with_term, batch, feed)
        ids, rows = batch.distinct_items()
        in_mask = batch.inputs != PAD
        states = plain.user_vectors(plain.encode_items(feed(ids))[rows[0]] * in_mask.unsqueeze(-1), in_mask)[:, -1]
        term = 0.5 * (nt_xent(states, states, 0.2) * batch.mask.sum(1)).sum()
        assert float(term) > 0.01 * float(without)
        assert float(total) == pytest.approx(float(without + term), rel=1e-5)
        with_term.eval()
        assert float(_loss(with_term, batch, feed)[0]) == pytest.approx(float(without), rel=1e-6)


def test_a_model_trains_with_the_term(tiny_overrides):
    losses = fits_a_batch(tiny_overrides + ["model.kind=idsr", "optim.loss=mixed", "optim.contrastive_weight=0.1"],
                          steps=15, lr=0.003)
    assert losses[-1] < 0.95 * losses[0], losses


def test_two_processes_train_as_one_with_the_term(small_demo, mmsr_home):
    """Each process gathers the others' views as negatives; without dropout the views are the
    same on every rank, so the weights must match one process's. A term read over each rank's
    rows alone would not."""
    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "optim.batch_size=32",
                 "model.dropout=0.0", "split.sample_users=96", "eval_every=5", "optim.loss=inbatch",
                 "optim.contrastive_weight=1.0", "optim.contrastive_temperature=0.1"]
    assert_two_processes_train_as_one(overrides, mmsr_home)


@pytest.mark.parametrize("overrides,expected", [
    (["optim.contrastive_weight=-0.1"], ["optim.contrastive_weight=-0.1 must be at least 0"]),
    (["optim.contrastive_weight=0.1", "optim.contrastive_temperature=0"],
     ["optim.contrastive_temperature=0.0 divides the views' cosine", "above 0"]),
    (["optim.contrastive_temperature=0.2"], ["optim.contrastive_temperature=0.2 is ignored",
                                             "--set optim.contrastive_weight=0.1",
                                             "--set optim.contrastive_temperature=0.05"]),
])
def test_a_contrastive_setting_that_cannot_work_is_refused(overrides, expected):
    with pytest.raises(MMSRError) as error:
        _config(overrides)
    for part in expected:
        assert part in str(error.value), (part, str(error.value))


def test_a_stand_in_row_changes_neither_the_loss_nor_the_term(small_demo):
    """The row a process gets when a global batch has fewer rows than processes (Batch.shard: the
    first row, no target) adds no target, no candidate and no contrastive view: the loss of a
    batch with it is the loss without it. Two processes cannot show this for the views (a one-row
    batch has no negative either way), so it is checked here, in one process."""
    from mmsr.train.batches import Batch

    model, batch, feed = _model_and_batch([f"dataset={small_demo}", "model.kind=idsr", "model.dim=16",
                                           "model.dropout=0.0", "optim.loss=mixed", "optim.own_items=later-masked",
                                           "optim.windows=all", "optim.batch_size=4",
                                           "optim.contrastive_weight=1.0", "optim.contrastive_temperature=0.5"])
    stand_in = batch.shard(4, 5)  # a fifth process of a four-row batch
    assert len(stand_in.inputs) == 1 and not stand_in.mask.any()
    assert torch.equal(stand_in.inputs[0], batch.inputs[0])
    joined = Batch(*(torch.cat([a, b]) for a, b in zip(
        (batch.inputs, batch.targets, batch.negatives, batch.mask),
        (stand_in.inputs, stand_in.targets, stand_in.negatives, stand_in.mask))), batch.uniform,
        own=type(batch.own)(*(torch.cat([a, b]) for a, b in zip(
            (batch.own.items, batch.own.last, batch.own.at), (stand_in.own.items, stand_in.own.last, stand_in.own.at)))))
    with torch.no_grad():
        alone, count = _loss(model, batch, feed)
        with_it, count_with = _loss(model, joined, feed)
    assert int(count) == int(count_with)
    assert float(with_it) == pytest.approx(float(alone), rel=1e-6)
