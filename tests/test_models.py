"""Every registered fusion and sequence model: shapes, causality, and a forward/backward pass."""

import pytest
import torch

from mmsr.errors import MMSRError
from mmsr.models.fusion import FUSIONS, PRETRAINED_FUSIONS, create_fusion, fusion_names
from mmsr.models.sequence import SEQUENCE_MODELS, create_sequence_model, sequence_model_names

KNOB_VALUES = {"layers": (1, 2), "heads": (2, 4)}  # two values of each knob a registry entry may declare


def _tokens(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, 5, 12, generator=g)
    text_mask = torch.ones(n, 5, dtype=torch.bool)
    text_mask[0, 2:] = False
    image = torch.randn(n, 7, 20, generator=g)
    return {"text": (text, text_mask), "image": (image, torch.ones(n, 7, dtype=torch.bool))}


BUILT_FROM_DIMENSIONS = [n for n in fusion_names() if n not in PRETRAINED_FUSIONS]


@pytest.mark.parametrize("name", [n for n in BUILT_FROM_DIMENSIONS if n != "pool"])
def test_fusion_forward_backward(name):
    torch.manual_seed(0)
    fusion = create_fusion(name, input_dims={"text": 12, "image": 20}, dim=16, heads=2)
    out = fusion(_tokens())
    assert out.shape == (6, 16)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in fusion.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", BUILT_FROM_DIMENSIONS)
def test_fresh_fusion_tells_items_apart(name):
    """Different items must come out of a fresh fusion as different vectors. The Coarse+ DNN
    stacked on the fusion let its biases outweigh the items (mean pairwise cosine 0.62-0.92
    here), and those rows trailed their fusions by 26-60% on the demo."""
    torch.manual_seed(0)
    fusion = create_fusion(name, input_dims={"text": 48, "image": 48}, dim=32, heads=2).eval()
    # Items that differ as a whole (a per-item offset), not only token by token.
    tokens = {m: (torch.randn(64, 6, 48) + torch.randn(64, 1, 48), torch.ones(64, 6, dtype=torch.bool))
              for m in ("text", "image")}
    with torch.no_grad():
        out = fusion(tokens)
    cosine = torch.nn.functional.cosine_similarity(out[:, None], out[None], dim=-1)
    assert cosine[~torch.eye(64, dtype=torch.bool)].mean() < 0.3


@pytest.mark.parametrize("name", ["gate", "film+dnn", "concat"])
def test_standardized_fusion_removes_the_direction_pretrained_states_share(name):
    """Pretrained states share one large direction (the demo's DINOv2-S pooled states: the
    catalogue mean is 82% of an item's norm, mean pairwise cosine 0.68). A LayerNorm per item
    keeps it, so fresh item vectors start alike; standardising each channel over the items
    (model.fusion_standardize) removes it, during training and, through the running
    statistics, at evaluation."""
    torch.manual_seed(0)
    shared = 4 * torch.randn(1, 1, 48)
    tokens = {m: (shared + torch.randn(256, 6, 48) + torch.randn(256, 1, 48), torch.ones(256, 6, dtype=torch.bool))
              for m in ("text", "image")}

    def mean_cosine(out):
        cosine = torch.nn.functional.cosine_similarity(out[:, None], out[None], dim=-1)
        return cosine[~torch.eye(len(out), dtype=torch.bool)].mean().item()

    plain = create_fusion(name, input_dims={"text": 48, "image": 48}, dim=32).eval()
    standardized = create_fusion(name, input_dims={"text": 48, "image": 48}, dim=32, standardize=True)
    with torch.no_grad():
        before = mean_cosine(plain(tokens))
        for _ in range(50):  # training steps' forwards: the running statistics settle on these items
            trained = standardized.train()(tokens)
        evaluated = standardized.eval()(tokens)
    assert before > 0.5, before
    assert mean_cosine(trained) < 0.2 and mean_cosine(evaluated) < 0.2, (mean_cosine(trained), mean_cosine(evaluated))
    # Evaluation sees what training saw (the running variance is the unbiased one: close, not equal).
    assert (trained - evaluated).norm() < 0.05 * trained.norm()
    assert any("running_mean" in key for key in standardized.state_dict())  # kept in checkpoints


def _train_output(name, **rates):
    """A fresh fusion's output in train mode, with the same weights and the same random draws
    whatever the dropout rates."""
    torch.manual_seed(0)
    fusion = create_fusion(name, input_dims={"text": 12, "image": 20}, dim=16, heads=2, **rates).train()
    torch.manual_seed(1)
    return fusion(_tokens())


@pytest.mark.parametrize("name", BUILT_FROM_DIMENSIONS)
def test_attention_dropout_is_declared_exactly_by_the_fusions_it_changes(name):
    """model.fusion_attention_dropout acts in training only, so it is checked in train mode, with
    every other dropout off."""
    def output(rate):
        return _train_output(name, dropout=0.0, attention_dropout=rate)

    assert torch.equal(output(0.0), output(0.0))  # nothing else random in train mode
    assert (not torch.equal(output(0.0), output(0.5))) == ("attention_dropout" in FUSIONS.params(name))


@pytest.mark.parametrize("name", ["merge-attn", "coattn"])
def test_attention_dropout_follows_dropout_unless_set(name):
    assert torch.equal(_train_output(name, dropout=0.3), _train_output(name, dropout=0.3, attention_dropout=0.3))
    assert not torch.equal(_train_output(name, dropout=0.3), _train_output(name, dropout=0.3, attention_dropout=0.0))


@pytest.mark.parametrize("overrides, message", [
    (["model.fusion=coattn", "model.fusion_standardize=true"],
     "model.fusion_standardize=True is ignored by fusion 'coattn'"),
    (["model.fusion=gate", "model.fusion_attention_dropout=0"],
     r"model.fusion_attention_dropout=0.0 is ignored by fusion 'gate'.*coattn, coattn\+dnn, merge-attn, merge-attn\+dnn"),
    (["model.fusion=merge-attn", "model.fusion_attention_dropout=1"],
     r"model.fusion_attention_dropout=1.0 is a probability of dropping a unit: it must be in \[0, 1\)"),
    (["model.dropout=-0.1"], r"model.dropout=-0.1 is a probability"),
    (["model.fusion=merge-attn", "model.fusion_pooling=attention"],
     "model.fusion_pooling='attention' is ignored by fusion 'merge-attn'.*gate"),
    (["model.fusion=gate", "model.fusion_pooling=max"],
     "model.fusion_pooling='max' is not a pooling; choose one of mean, attention"),
])
def test_config_refuses_a_fusion_setting_it_cannot_use(overrides, message):
    from mmsr import config as config_lib
    from mmsr.train.config import TrainConfig

    with pytest.raises(MMSRError, match=message):
        config_lib.load(TrainConfig, None, overrides)


TABLE_III_FUSIONS = [f"{coarse}{dnn}" for coarse in ("sum", "concat", "gate", "film") for dnn in ("", "+dnn")] + [
    "coattn", "merge-attn"]


@pytest.mark.parametrize("name", TABLE_III_FUSIONS)
def test_every_fusion_of_table_iii_is_registered(name):
    assert name in fusion_names()


def test_merge_attention_runs_on_one_modality():
    """MMSR-T's token tower (a fusion named explicitly on a text-only model): one vector per item,
    padding ignored, every weight learns."""
    torch.manual_seed(0)
    fusion = create_fusion("merge-attn", input_dims={"text": 12}, dim=16, heads=2, dropout=0.0).eval()
    text, mask = _tokens()["text"]
    out = fusion({"text": (text, mask)})
    assert out.shape == (6, 16) and torch.isfinite(out).all()
    padded = text.clone()
    padded[0, 2:] = 1e4  # item 0's padding
    assert torch.allclose(fusion({"text": (padded, mask)}), out, atol=1e-5)
    fusion.train()
    fusion({"text": (text, mask)}).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())


def test_trim_padding_drops_only_the_trailing_slots_no_row_uses():
    from mmsr.models.layers import trim_padding

    hidden = torch.randn(3, 6, 4)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, :2] = mask[1, :4] = True  # row 2: no token (an item without this modality)
    mask[1, 1] = False  # a hole inside the used width stays
    trimmed, kept = trim_padding(hidden, mask)
    assert torch.equal(trimmed, hidden[:, :4]) and torch.equal(kept, mask[:, :4])
    for whole in (torch.ones(3, 6, dtype=torch.bool), torch.zeros(3, 6, dtype=torch.bool)):
        # every slot used (a ViT's patches), or none (no item of the batch has a picture): unchanged,
        # so that a top that reshapes its tokens to the patch grid still can
        same, same_mask = trim_padding(hidden, whole)
        assert same is hidden and same_mask is whole


def test_length_groups_run_items_of_like_length_together_and_give_each_its_own_row():
    from mmsr.models.layers import PooledState, in_length_groups, masked_mean, trim_padding

    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 3, 6, 2, 2, 4, 1])
    mask = torch.arange(6) < lengths[:, None]
    hidden = torch.randn(8, 6, 4)
    pooled = torch.randn(8, 3)
    seen = []

    def run(states):  # per item, as a tower is: the trimmed tokens' mean beside the pooled vector
        tokens, kept = trim_padding(*states["text"])
        seen.append((tokens.shape[0], tokens.shape[1]))
        return torch.cat([masked_mean(tokens, kept), states["image"].vectors], 1)

    states = {"text": (hidden, mask), "image": PooledState(pooled)}
    whole = run(states)
    seen.clear()
    grouped = in_length_groups(run, states, groups=4, min_items=2)
    torch.testing.assert_close(grouped, whole)  # every row back in its place, pooled rows with it
    # sorted lengths 1 1 | 2 2 | 3 4 | 5 6: each group trimmed to its own longest item
    assert seen == [(2, 1), (2, 2), (2, 4), (2, 6)]
    seen.clear()
    in_length_groups(run, states, groups=4, min_items=3)  # two groups of at least three items
    assert seen == [(4, 2), (4, 6)]
    # Pictures each item has whole or not at all weigh nothing in the order: the text alone sorts.
    patches = torch.randn(8, 5, 4)
    has_picture = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)[:, None].expand(8, 5)
    seen.clear()
    in_length_groups(run, {"text": (hidden, mask), "image": PooledState(pooled), "patches": (patches, has_picture)},
                     groups=4, min_items=2)
    assert seen == [(2, 1), (2, 2), (2, 4), (2, 6)]
    for groups, min_items, same_lengths in ((1, 1, False), (4, 5, False), (4, 1, True)):
        seen.clear()
        text = (hidden, torch.ones_like(mask)) if same_lengths else (hidden, mask)
        in_length_groups(run, {"text": text, "image": PooledState(pooled)}, groups=groups, min_items=min_items)
        assert len(seen) == 1  # off, too few items, or nothing to gain: one call, as before
    seen.clear()
    in_length_groups(run, {"text": (hidden, torch.zeros_like(mask)), "image": PooledState(pooled),
                           "patches": (patches, has_picture)}, groups=4, min_items=1)
    assert len(seen) == 1  # only whole-or-nothing modalities (and an empty text): nothing to trim


def test_padding_tokens_do_not_change_fusion_output():
    torch.manual_seed(0)
    fusion = create_fusion("merge-attn", input_dims={"text": 12, "image": 20}, dim=16, heads=2).eval()
    inputs = _tokens()
    before = fusion(inputs)
    text, mask = inputs["text"]
    text = text.clone()
    text[0, 2:] = 1e3  # garbage in masked positions
    after = fusion({"text": (text, mask), "image": inputs["image"]})
    torch.testing.assert_close(before, after)


def test_coarse_fusion_refuses_one_modality():
    with pytest.raises(MMSRError, match="pool"):
        create_fusion("gate", input_dims={"text": 12}, dim=16)


@pytest.mark.parametrize("name", BUILT_FROM_DIMENSIONS)
def test_fusion_declares_exactly_the_knobs_it_reads(name):
    """The config refuses a knob that a fusion does not declare, so an undeclared knob must change nothing
    and a declared one must change the output."""
    def output(**knob):
        torch.manual_seed(0)
        with torch.no_grad():
            return create_fusion(name, input_dims={"text": 12, "image": 20}, dim=16, **knob).eval()(_tokens())

    for param, (a, b) in KNOB_VALUES.items():
        changed = not torch.equal(output(**{param: a}), output(**{param: b}))
        assert changed == (param in FUSIONS.params(name)), param


@pytest.mark.parametrize("name", fusion_names())
def test_fusion_declares_the_modalities_it_needs(name):
    if FUSIONS.needs(name):
        with pytest.raises(MMSRError, match="pool"):
            create_fusion(name, input_dims={"image": 20}, dim=16)
    else:
        assert create_fusion(name, input_dims={"image": 20}, dim=16)(_tokens()).shape == (6, 16)


@pytest.mark.parametrize("name", sequence_model_names())
def test_sequence_model_declares_exactly_the_knobs_it_reads(name):
    items, mask = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(0)), torch.ones(3, 8, dtype=torch.bool)

    def output(**knob):
        torch.manual_seed(0)
        with torch.no_grad():
            return create_sequence_model(name, dim=16, max_len=8, **knob).eval()(items, mask)

    for param, (a, b) in KNOB_VALUES.items():
        changed = not torch.equal(output(**{param: a}), output(**{param: b}))
        assert changed == (param in SEQUENCE_MODELS.params(name)), param


@pytest.mark.parametrize("name", sequence_model_names())
def test_sequence_model_is_causal_and_trains(name):
    torch.manual_seed(0)
    model = create_sequence_model(name, dim=16, max_len=8).eval()
    items = torch.randn(3, 8, 16)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    out = model(items, mask)
    assert out.shape == (3, 8, 16)
    assert torch.isfinite(out).all()
    changed = items.clone()
    changed[:, 5:] += 1.0  # the future must not change earlier positions
    torch.testing.assert_close(model(changed, mask)[:, :5], out[:, :5])
    model.train()
    model(items, mask).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sequence_model_names())
def test_sequence_model_tells_users_apart_at_an_id_tables_scale(name):
    """Item vectors come at the scale of an ID table (std 0.02). A model whose biases drown
    them gives every user the same vector at the start, and then learns little beyond
    popularity: GRU4Rec without its input norm scored a pairwise cosine of 1.000 here, and
    reached test HR@10 0.036 on the demo against 0.098 with it."""
    torch.manual_seed(0)
    model = create_sequence_model(name, dim=64, max_len=20).eval()
    items, mask = torch.randn(64, 20, 64) * 0.02, torch.ones(64, 20, dtype=torch.bool)
    with torch.no_grad():
        users = model(items, mask)[:, -1]
    cosine = torch.nn.functional.cosine_similarity(users[:, None], users[None], dim=-1)
    assert cosine[~torch.eye(64, dtype=torch.bool)].mean() < 0.99


def test_sasrec_ignores_padding_content():
    torch.manual_seed(0)
    model = create_sequence_model("sasrec", dim=16, max_len=8).eval()
    items = torch.randn(2, 8, 16)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, :4] = False
    garbage = items.clone()
    garbage[:, :4] = 50.0
    torch.testing.assert_close(model(items, mask)[:, 4:], model(garbage, mask)[:, 4:])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_sasrec_last_state_is_the_last_position_of_forward(layers):
    """Evaluation's shortcut (the top block for the last position alone) gives forward's last
    state, with left padding and a sequence with a single item."""
    torch.manual_seed(0)
    model = create_sequence_model("sasrec", dim=16, max_len=8, layers=layers).eval()
    items = torch.randn(4, 8, 16)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[1, :3] = False
    mask[2, :7] = False
    with torch.no_grad():
        last = model.last_state(items * mask.unsqueeze(-1), mask)
        full = model(items * mask.unsqueeze(-1), mask)[:, -1]
    assert last.shape == (4, 16)
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)


def test_a_built_models_evaluation_state_takes_the_sasrec_shortcut(monkeypatch):
    """Evaluation's user vectors (`Recommender.last_user_vectors`) reach SASRec.last_state
    through the model's user tower (the same UserTower for every SASRec kind but FDSA), and
    equal the full forward's last position."""
    from mmsr import config as config_lib
    from mmsr.models.sequence import SASRec
    from mmsr.train.config import TrainConfig
    from mmsr.train.model import build_model

    config = config_lib.load(TrainConfig, None, ["model.kind=idsr", "model.dim=16"])
    model = build_model(config, 30).eval()
    calls = []
    real = SASRec.last_state
    monkeypatch.setattr(SASRec, "last_state", lambda self, *args: calls.append(1) or real(self, *args))
    torch.manual_seed(0)
    length = config.split.max_seq_len
    vectors, mask = torch.randn(3, length, 16), torch.ones(3, length, dtype=torch.bool)
    mask[0, :5] = False
    with torch.no_grad():
        last = model.last_user_vectors(vectors, mask)
        full = model.user_vectors(vectors, mask)[:, -1]
    assert calls and last.shape == (3, 16)
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)


def test_postnorm_sasrec_normalises_after_each_residual_and_sasrec_keeps_its_weights():
    """`sasrec-postnorm` (RecBole's layout): each block is norm(x + attn(x)), then norm(x + mlp(x)),
    on a normalised input and with no final norm; `sasrec` gains no parameter from the option,
    so its checkpoints still load."""
    torch.manual_seed(0)
    items, mask = torch.randn(3, 8, 16), torch.ones(3, 8, dtype=torch.bool)
    mask[0, :3] = False
    post = create_sequence_model("sasrec-postnorm", dim=16, max_len=8, layers=1).eval()
    block = post.blocks[0]
    with torch.no_grad():
        x = post.input_norm(items + post.position.weight) * mask[..., None]
        allowed = (torch.ones(8, 8, dtype=torch.bool).tril() & mask[:, None, :]) | torch.eye(8, dtype=torch.bool)
        h = block.norm1(x + block.attn(x, x, allowed[:, None]))
        expected = block.norm2(h + block.mlp(h))
        torch.testing.assert_close(post(items, mask), expected)
        torch.testing.assert_close(post.last_state(items, mask), expected[:, -1])
    pre = create_sequence_model("sasrec", dim=16, max_len=8)
    assert "input_norm.weight" in post.state_dict() and "norm.weight" not in post.state_dict()
    assert not any(key.startswith("input_norm") for key in pre.state_dict()) and "norm.weight" in pre.state_dict()


def test_masked_mean_skips_the_mask_product_only_where_it_is_the_identity():
    """All tokens valid (a ViT's patches): the shortcut gives the weighted form's values and
    gradients bit for bit. Padding, a row with no valid token and no tokens at all keep the
    weighted form's answers (zeros where nothing is valid, never NaN)."""
    from mmsr.models.layers import masked_mean

    torch.manual_seed(0)

    def weighted(tokens, mask):  # the definition the shortcut must equal
        weight = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weight).sum(1) / weight.sum(1).clamp_min(1.0)

    for mask in (torch.ones(40, 65, dtype=torch.bool), torch.rand(40, 65) > 0.3):
        mask[3] = mask[3] if mask.all() else False  # a row with no valid token where some are padded
        results = []
        for mean in (masked_mean, weighted):
            tokens = (torch.randn(40, 65, 24, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
            out = mean(tokens, mask)
            (out * torch.linspace(-1, 1, 24)).sum().backward()
            results.append((out.detach(), tokens.grad))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
        if not mask.all():
            assert torch.equal(results[0][0][3], torch.zeros(24))
    assert torch.equal(masked_mean(torch.zeros(5, 0, 8), torch.zeros(5, 0, dtype=torch.bool)), torch.zeros(5, 8))
    # Half precision keeps the weighted form, rounded denominator included (bfloat16: 257 -> 256).
    half = torch.randn(3, 257, 8).to(torch.bfloat16)
    assert torch.equal(masked_mean(half, torch.ones(3, 257, dtype=torch.bool)),
                       weighted(half, torch.ones(3, 257, dtype=torch.bool)))


@pytest.mark.parametrize("name", ["pool", "gate+dnn"])
def test_attention_pooling_starts_as_the_masked_mean_and_learns_which_tokens_count(name):
    """pooling="attention" scores start at zero, so a fresh tower is the mean's to rounding; an
    item with no valid token (no picture) gives zeros with finite gradients; a step moves the
    scores; and the tower is never pooled once."""
    torch.manual_seed(0)
    attention = create_fusion(name, input_dims={"text": 12, "image": 20}, dim=16, pooling="attention").eval()
    pool = create_fusion(name, input_dims={"text": 12, "image": 20}, dim=16).eval()
    assert not attention.pools_first and pool.pools_first
    pool.load_state_dict({k: v for k, v in attention.state_dict().items() if "score." not in k})
    inputs = _tokens()
    image, image_mask = inputs["image"]
    image_mask = image_mask.clone()
    image_mask[1] = False  # item 1 has no picture
    inputs["image"] = (image, image_mask)
    torch.testing.assert_close(attention(inputs), pool(inputs))

    garbage = {**inputs, "text": (inputs["text"][0].clone(), inputs["text"][1])}
    garbage["text"][0][0, 2:] = 1e3  # masked positions of item 0
    torch.testing.assert_close(attention(garbage), attention(inputs))

    out = attention(inputs)
    out[:, 0].sum().backward()
    grads = [p.grad for p in attention.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    score = getattr(attention, "base", attention).score["text"][1].weight  # gate+dnn: its gate's
    assert score.grad.abs().sum() > 0
    with torch.no_grad():
        score -= 10.0 * score.grad
    assert not torch.allclose(attention(inputs), pool(inputs))
    torch.testing.assert_close(attention(garbage), attention(inputs))  # padding ignored by trained scores too
