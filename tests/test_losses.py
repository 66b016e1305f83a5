"""Every registered loss: its value against the formula, logQ's effect, training, DDP, resume, bad input."""

import math

import numpy as np
import pytest
import torch

from mmsr import config as config_lib
from mmsr.errors import MMSRError
from mmsr.train.config import TrainConfig
from mmsr.train.batches import OWN_ITEMS, PAD, OwnItems
from mmsr.train.losses import LOSSES, LossInputs, create_loss, loss_names, smoothed_cross_entropy
from test_train import _fits_a_batch as fits_a_batch, assert_two_processes_train_as_one  # the trainer tests' helpers

# Three items of four, 2-d vectors, two target positions.
TABLE = [[1.0, 0.0], [0.0, 1.0], [0.5, -1.0], [-1.0, 0.5]]
USERS = [[0.3, 0.8], [1.2, -0.4]]
TARGETS = [1, 0]
NEGATIVES = [3, 2]
BATCH_ITEMS = [0, 1, 2]  # distinct items of the batch, sorted: the in-batch candidates
COUNTS = [6, 2, 1, 0]  # training occurrences; item 3 never seen


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softmax_ce(user, target, candidates, shift=lambda item: 0.0):
    logits = {c: _dot(user, TABLE[c]) - shift(c) for c in candidates}
    return -logits[target] + math.log(sum(math.exp(v) for v in logits.values()))


def _log_q(item):
    return math.log((COUNTS[item] + 1) / (sum(COUNTS) + len(COUNTS)))


EXPECTED = {  # written out from each loss's formula
    "bce": sum(math.log(1 + math.exp(-_dot(u, TABLE[t]))) + math.log(1 + math.exp(_dot(u, TABLE[n])))
               for u, t, n in zip(USERS, TARGETS, NEGATIVES)),
    "bpr": sum(math.log(1 + math.exp(-(_dot(u, TABLE[t]) - _dot(u, TABLE[n]))))
               for u, t, n in zip(USERS, TARGETS, NEGATIVES)),
    "inbatch": sum(_softmax_ce(u, t, BATCH_ITEMS) for u, t in zip(USERS, TARGETS)),
    "inbatch-logq": sum(_softmax_ce(u, t, BATCH_ITEMS, _log_q) for u, t in zip(USERS, TARGETS)),
    "mixed": sum(_softmax_ce(u, t, BATCH_ITEMS) for u, t in zip(USERS, TARGETS)),  # the batch already holds them
    "softmax": sum(_softmax_ce(u, t, range(len(TABLE))) for u, t in zip(USERS, TARGETS)),
}


def _inputs(table=None, users=None, targets=TARGETS, negatives=NEGATIVES, candidates=BATCH_ITEMS):
    table = torch.tensor(TABLE, dtype=torch.float64) if table is None else table
    users = torch.tensor(USERS, dtype=torch.float64) if users is None else users
    ids = torch.tensor(candidates)
    return LossInputs(users=users, targets=torch.tensor(targets), target_vectors=table[torch.tensor(targets)],
                      negative_vectors=table[torch.tensor(negatives)], item_ids=ids, item_vectors=table[ids],
                      all_items=lambda: table)


def test_every_loss_has_a_hand_computed_case():
    assert sorted(EXPECTED) == loss_names()


@pytest.mark.parametrize("name", loss_names())
def test_loss_value_matches_its_formula(name):
    loss = create_loss(name, train_counts=np.array(COUNTS))
    assert float(loss(_inputs())) == pytest.approx(EXPECTED[name], rel=1e-6)


def test_logq_correction_favours_rare_items_on_a_popularity_skewed_batch():
    """Item 0 is popular (1000 training occurrences), items 1-3 rare. Plain in-batch softmax
    pushes the popular item down as a negative every time it is in the batch; logQ scales that
    push down, and pushes the rare negatives harder instead."""
    counts = np.array([1000, 2, 1, 1])
    user = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    push = {}
    for name in ("inbatch", "inbatch-logq"):
        table = torch.tensor(TABLE, dtype=torch.float64, requires_grad=True)
        loss = create_loss(name, train_counts=counts)
        loss(_inputs(table, user, targets=[1], negatives=[3], candidates=[0, 1, 2, 3])).backward()
        # d loss / d score of each item: its softmax probability as a negative (minus 1 for the target)
        push[name] = table.grad @ user[0] / user[0].dot(user[0])
    assert push["inbatch-logq"][0] < 0.2 * push["inbatch"][0]  # the popular negative: pushed far less
    assert push["inbatch-logq"][3] > push["inbatch"][3] > 0  # a rare negative: pushed harder
    assert push["inbatch-logq"][1] > push["inbatch"][1]  # the rare target: a smaller pull up, it already wins
    assert push["inbatch"][0] == pytest.approx(math.exp(0.5) / (2 * math.exp(0.5) + 2 * math.exp(-0.25)))


def _smoothed_ce(user, target, candidates, smoothing, shift=lambda item: 0.0):
    """(1 - s) * -log p(target) + s * the mean over the candidates of -log p(c), by hand."""
    logits = {c: _dot(user, TABLE[c]) - shift(c) for c in candidates}
    log_z = math.log(sum(math.exp(v) for v in logits.values()))
    minus_log_p = {c: log_z - v for c, v in logits.items()}
    return (1 - smoothing) * minus_log_p[target] + smoothing * sum(minus_log_p.values()) / len(candidates)


@pytest.mark.parametrize("name", LOSSES.taking("label_smoothing"))
def test_label_smoothing_matches_its_formula_and_skips_taken_out_candidates(name):
    """Position 0's user trains on item 2 later (`later-masked` takes it out): its smoothing is
    spread over items 0 and 1 alone, and the loss stays finite; position 1 keeps every candidate."""
    shift = _log_q if name == "inbatch-logq" else (lambda item: 0.0)
    candidates = list(range(len(TABLE))) if name == "softmax" else BATCH_ITEMS
    plain = create_loss(name, train_counts=np.array(COUNTS), label_smoothing=0.2)
    assert float(plain(_inputs())) == pytest.approx(
        sum(_smoothed_ce(u, t, candidates, 0.2, shift) for u, t in zip(USERS, TARGETS)), rel=1e-6)
    masked = create_loss(name, train_counts=np.array(COUNTS), own_items="later-masked", label_smoothing=0.2)
    inputs = _inputs()
    inputs.own = OwnItems(items=torch.tensor([[1, 2], [0, _NO]]), last=torch.tensor([[0, 1], [0, -1]]),
                          at=torch.tensor([[0], [0]]))
    inputs.positions = torch.tensor([[True], [True]])
    expected = (_smoothed_ce(USERS[0], 1, [c for c in candidates if c != 2], 0.2, shift)
                + _smoothed_ce(USERS[1], 0, candidates, 0.2, shift))
    assert float(masked(inputs)) == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_agrees_with_torchs_where_no_candidate_is_taken_out():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 3, 6, 2, 2])
    assert float(smoothed_cross_entropy(logits, target, 0.1)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")), rel=1e-9)


# One user trained on [5, 2, 7, 2, 9] (item 2 twice), one on [1, 3]; rows as TrainBatches cuts them
# (inputs [:-1], targets [1:], left-padded to 4), `at` where each target sits in its user's sequence.
_NO = torch.iinfo(torch.int64).max
OWN = OwnItems(items=torch.tensor([[2, 5, 7, 9], [1, 3, _NO, _NO]]), last=torch.tensor([[3, 0, 2, 4], [0, 1, -1, -1]]),
               at=torch.tensor([[1, 2, 3, 4], [PAD, PAD, PAD, 1]]))
OWN_MASK = torch.tensor([[True, True, True, True], [False, False, False, True]])
OWN_TARGETS = torch.tensor([2, 7, 2, 9, 3])
OWN_CANDIDATES = torch.tensor([1, 2, 3, 5, 7, 9])
TAKEN_OUT = {  # per target position, worked out by hand
    "later-masked": [{7, 9}, {2, 9}, {9}, set(), set()],  # what the user trains on after the position
    "all-masked": [{5, 7, 9}, {2, 5, 9}, {5, 7, 9}, {2, 5, 7}, {1}],  # all of the user's items
}


@pytest.mark.parametrize("mode", sorted(TAKEN_OUT))
def test_own_items_taken_out_of_each_positions_candidates(mode):
    out = OWN.taken_out(mode, OWN_CANDIDATES, OWN_MASK, OWN_TARGETS)
    got = [set(OWN_CANDIDATES[row].tolist()) for row in out]
    assert got == TAKEN_OUT[mode]


@pytest.mark.parametrize("name", [n for n in loss_names() if "own_items" in LOSSES.params(n)])
def test_a_later_item_is_no_candidate_of_the_softmax_losses(name):
    """Position 0 (target 1) belongs to a user who trains on item 2 after it: item 2 leaves its
    softmax; position 1's user has nothing later, so its candidates stay whole."""
    shift = _log_q if name == "inbatch-logq" else (lambda item: 0.0)
    candidates = range(len(TABLE)) if name == "softmax" else BATCH_ITEMS
    loss = create_loss(name, train_counts=np.array(COUNTS), own_items="later-masked")
    own = OwnItems(items=torch.tensor([[1, 2], [0, _NO]]), last=torch.tensor([[0, 1], [0, -1]]),
                   at=torch.tensor([[0], [0]]))
    inputs = _inputs()
    inputs.own, inputs.positions = own, torch.tensor([[True], [True]])
    expected = (_softmax_ce(USERS[0], 1, [c for c in candidates if c != 2], shift)
                + _softmax_ce(USERS[1], 0, candidates, shift))
    assert float(loss(inputs)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(MMSRError, match="does not carry"):  # a batch built without them
        loss(_inputs())


def test_batches_carry_each_rows_own_items_where_the_loss_takes_them_out(small_demo):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches

    split = split_dataset(load_dataset(small_demo))
    overrides = [f"dataset={small_demo}", "optim.loss=mixed", "optim.windows=all", "split.max_seq_len=6"]
    batches = TrainBatches.for_config(split, _config(overrides + ["optim.own_items=later-masked"]))
    batch = batches.batch(0, 1)
    users = batches.users_of(batches.order(0)[batches.batch_size:2 * batches.batch_size])
    for row, user in enumerate(users):
        sequence = split.train_sequence(user)
        distinct = np.unique(sequence)
        assert batch.own.items[row, :len(distinct)].tolist() == distinct.tolist()
        last = batch.own.last[row, :len(distinct)].numpy()
        assert all(sequence[at] == item and item not in sequence[at + 1:] for item, at in zip(distinct, last))
        mask = batch.mask[row]
        assert sequence[batch.own.at[row, mask].numpy()].tolist() == batch.targets[row, mask].tolist()
    plain = TrainBatches.for_config(split, _config(overrides)).batch(0, 1)
    assert plain.own is None and torch.equal(plain.targets, batch.targets)


def test_logq_smoothing_keeps_unseen_items_finite():
    loss = create_loss("inbatch-logq", train_counts=np.array([5, 0, 0]))
    assert torch.isfinite(loss.log_q).all() and loss.log_q[1] == loss.log_q[2] < loss.log_q[0]
    # Add-one smoothing of the counts [5, 0, 0]: probabilities 6/8, 1/8, 1/8.
    assert loss.log_q.exp().tolist() == pytest.approx([6 / 8, 1 / 8, 1 / 8])


# ----------------------------------------------------------------------------- training


def _config(overrides):
    return config_lib.load(TrainConfig, None, overrides)


def _fits_a_batch(overrides, steps=15):
    return fits_a_batch(overrides, steps=steps, lr=0.003)


@pytest.mark.parametrize("name", loss_names())
def test_every_loss_trains_an_id_model(tiny_overrides, name):
    losses = _fits_a_batch(tiny_overrides + ["model.kind=idsr", f"optim.loss={name}"])
    assert losses[-1] < 0.95 * losses[0], (name, losses)


@pytest.mark.parametrize("mode", [m for m in OWN_ITEMS if m != "negatives"])
def test_a_softmax_loss_without_the_users_own_items_trains(tiny_overrides, mode):
    losses = _fits_a_batch(tiny_overrides + ["model.kind=idsr", "optim.loss=mixed", "optim.windows=all",
                                             f"optim.own_items={mode}"])
    assert losses[-1] < 0.95 * losses[0], (mode, losses)


def test_every_loss_but_full_softmax_trains_a_content_model(tiny_overrides):
    from mmsr.cache_stage import build_cache
    from mmsr.data.dataset import load_dataset

    overrides = tiny_overrides + ["model.fusion=gate"]
    config = _config(overrides)
    build_cache(load_dataset(config.dataset), config.encoders, batch_size=64, num_workers=0)
    for name in loss_names():
        if "item_table" in LOSSES.needs(name):
            continue
        losses = _fits_a_batch(overrides + [f"optim.loss={name}"], steps=25)
        assert losses[-1] < 0.95 * losses[0], (name, losses)


def test_mixed_batches_carry_uniform_items_through_the_feed(small_demo):
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches

    split = split_dataset(load_dataset(small_demo))
    config = _config([f"dataset={small_demo}", "optim.loss=mixed", "optim.mixed_negatives=40"])
    batches = TrainBatches.for_config(split, config)
    batch = batches.batch(0, 3)
    assert batch.uniform.shape == (40,)
    assert torch.equal(batch.uniform, batches.batch(0, 3).uniform)  # seeded by (seed, epoch, step)
    assert not torch.equal(batch.uniform, batches.batch(0, 4).uniform)
    ids, _ = batch.distinct_items()
    assert set(batch.uniform.tolist()) <= set(ids.tolist())
    shards = [batch.shard(rank, 3) for rank in range(3)]
    assert sorted(sum((s.uniform.tolist() for s in shards), [])) == sorted(batch.uniform.tolist())
    # the per-position negatives are the same draws as without the uniform items
    plain = TrainBatches.for_config(split, _config([f"dataset={small_demo}"])).batch(0, 3)
    assert plain.uniform.numel() == 0 and torch.equal(plain.negatives, batch.negatives)


# ----------------------------------------------------------------------------- DDP and resume


def test_two_process_in_batch_losses_match_one_process(small_demo, mmsr_home):
    """The candidates are the global batch's, gathered across processes: 2 processes = 1.

    `mixed` is `inbatch` (the same `InBatch.forward` and `global_candidates` gather) plus the
    uniform items of the global batch, which each process must draw alike, and here without the
    users' later items, which each process takes out of its own rows' candidates: one torchrun
    launch covers all three (each launch costs tens of seconds of the suite)."""
    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "optim.batch_size=32",
                 "model.dropout=0.0", "split.sample_users=96", "eval_every=5", "optim.loss=mixed",
                 "optim.mixed_negatives=7", "optim.own_items=later-masked"]
    assert_two_processes_train_as_one(overrides, mmsr_home)


# ----------------------------------------------------------------------------- bad input


def _error(overrides) -> str:
    with pytest.raises(MMSRError) as error:
        _config(overrides)
    return str(error.value)


def test_an_unknown_loss_lists_the_known_ones():
    message = _error(["optim.loss=focal"])
    assert "optim.loss='focal' is not a known loss" in message
    assert ", ".join(loss_names()) in message


@pytest.mark.parametrize("overrides,expected", [
    (["optim.loss=inbatch", "optim.batch_size=1"], ["optim.batch_size=1", "other users of the batch"]),
    (["optim.loss=mixed", "optim.batch_size=1"], ["optim.batch_size=1"]),
    (["optim.loss=softmax"], ["every item", "item tower", "--set optim.loss=inbatch"]),
    (["optim.loss=bce", "optim.mixed_negatives=8"], ["optim.mixed_negatives=8", "optim.loss='bce'",
                                                    "--set optim.loss=mixed"]),
    (["optim.loss=inbatch-logq", "optim.negatives=any"], ["optim.negatives='any'", "optim.loss=bce or bpr"]),
    (["optim.loss=mixed", "optim.mixed_negatives=0"], ["optim.mixed_negatives=0 must be at least 1"]),
    (["optim.loss=bce", "optim.own_items=later-masked"], ["optim.own_items='later-masked' is ignored",
                                                          "optim.negatives", "--set optim.own_items=negatives",
                                                          "--set optim.loss=inbatch"]),
    (["optim.loss=mixed", "optim.own_items=future"], ["optim.own_items='future' is not known",
                                                      ", ".join(OWN_ITEMS)]),
    (["optim.loss=bce", "optim.label_smoothing=0.1"], ["optim.label_smoothing=0.1 is ignored", "no softmax",
                                                       "--set optim.label_smoothing=0.0"]),
    (["optim.loss=mixed", "optim.label_smoothing=1.0"], ["optim.label_smoothing=1.0 must be at least 0 and below 1"]),
])
def test_a_loss_setting_that_cannot_work_is_refused(overrides, expected):
    message = _error(overrides)
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("overrides", [
    ["optim.loss=softmax", "model.kind=idsr"],
    ["optim.loss=bpr", "optim.negatives=any"],
    ["optim.loss=mixed", "optim.mixed_negatives=8"],
    ["optim.loss=inbatch-logq"],
    ["optim.loss=mixed", "optim.own_items=later-masked"],
    ["optim.loss=softmax", "model.kind=idsr", "optim.own_items=all-masked"],
    ["optim.loss=mixed", "optim.label_smoothing=0.1"],
])
def test_a_loss_setting_that_is_read_loads(overrides):
    _config(overrides)


def test_softmax_is_refused_in_one_line_before_anything_runs():
    message = _error(["optim.loss=softmax"])
    assert "\n" not in message


def test_a_popularity_loss_on_a_split_without_training_interactions_fails_at_build():
    from mmsr.train.model import build_model

    config = _config(["model.kind=idsr", "model.dim=8", "optim.loss=inbatch-logq"])
    with pytest.raises(MMSRError, match="no training interactions"):
        build_model(config, 5, train_counts=np.zeros(5, dtype=np.int64))
    build_model(config, 5)  # rebuilding a trained model to evaluate it needs no counts...
    loss = create_loss("inbatch-logq")
    with pytest.raises(MMSRError, match="train_counts"):  # ...but training it does
        loss(_inputs())


def test_a_process_whose_share_of_the_last_batch_is_empty_trains_as_one(small_demo, mmsr_home):
    """A global batch with fewer rows than processes (here the epoch's last, one row for two
    processes) left one process nothing to encode; it crashed every rank ("cannot reshape
    tensor of 0 elements"), at every epoch's end, so --resume could not get past it. That
    process now runs a stand-in row without targets: it takes part in the candidates' and the
    contrastive views' gathers and in DDP's gradient average, and changes none of them."""
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches

    overrides = [f"dataset={small_demo}", "model.kind=idsr", "model.dim=16", "optim.epochs=1", "model.dropout=0.0",
                 "split.sample_users=96", "eval_every=5", "optim.loss=mixed", "optim.mixed_negatives=7",
                 "optim.own_items=later-masked", "optim.contrastive_weight=1.0"]
    config = _config(overrides)
    rows = len(TrainBatches.for_config(split_dataset(load_dataset(small_demo), config.split), config).row_users)
    assert_two_processes_train_as_one(overrides + [f"optim.batch_size={rows - 1}"], mmsr_home)  # last batch: 1 row


def test_a_content_model_trains_end_to_end_when_a_process_has_no_row(tiny_overrides, mmsr_home):
    """The same stand-in row for a content model trained end to end (the text encoder ran on no
    item and crashed). Not compared with one process: the encoders' own dropout draws differ by
    process."""
    from mmsr.data.dataset import load_dataset
    from mmsr.data.split import split_dataset
    from mmsr.train.batches import TrainBatches
    from test_train import TORCHRUN, _cli, _sets

    overrides = [o for o in tiny_overrides if not o.startswith(("optim.batch_size", "optim.epochs"))] + \
        ["optim.epochs=1", "eval_every=5", "model.fusion=gate", "optim.loss=inbatch"]
    config = _config(overrides)
    rows = len(TrainBatches.for_config(split_dataset(load_dataset(config.dataset), config.split), config).row_users)
    ddp = _cli(["train", "--run-dir", "ddp", *_sets(overrides + [f"optim.batch_size={rows - 1}"])], mmsr_home,
               module=TORCHRUN)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert '"epoch": 1' in (mmsr_home / "runs" / "ddp" / "metrics.jsonl").read_text()
