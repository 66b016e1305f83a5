"""The paper's baselines as model kinds (mmsr.train.kinds): each learns through the shared
trainer, each scores what its paper scores, and each refuses what it cannot do."""

import json

import numpy as np
import pytest
import torch

from mmsr.errors import MMSRError
from mmsr.train.kinds import kind_names
from test_train import _cli, _config, _fits_a_batch, _sets, _train, assert_two_processes_train_as_one, \
    built_cache, kill_and_resume  # noqa: F401  (built_cache is a fixture)

# The tiny text encoder is 32 wide: 8 codes of 4 dimensions each.
KIND_SETTINGS = {"vqrec": ["model.vq_codes=8"]}


@pytest.mark.parametrize("kind", kind_names())
def test_every_model_kind_learns(built_cache, kind):
    losses = _fits_a_batch(built_cache + [f"model.kind={kind}", "model.fusion=gate", *KIND_SETTINGS.get(kind, [])])
    assert losses[-1] < 0.95 * losses[0], losses


def _model(overrides, dataset_root):
    from mmsr.data.dataset import load_dataset
    from mmsr.train.feeds import open_feed, prepare_items
    from mmsr.train.model import build_model

    config = _config(overrides)
    dataset = load_dataset(dataset_root)
    torch.manual_seed(0)
    model = build_model(config, dataset.num_items, item_field=dataset.item_field).eval()
    feed, description = open_feed(config, model, dataset, True, torch.device("cpu"))
    prepare_items(model, config, dataset, True, torch.device("cpu"))
    return model, feed, description, dataset


def test_fdsa_reads_ids_and_content_and_scores_against_the_id_half(built_cache, small_demo):
    model, feed, description, dataset = _model(built_cache + ["model.kind=fdsa"], small_demo)
    assert description.startswith("ids and cache")
    ids = torch.tensor([0, 5, 7])
    vectors = model.item_vectors(ids, feed)
    assert vectors.shape == (3, 64)  # [ID | features]
    torch.testing.assert_close(model.score_vectors(vectors), model.items.embedding(ids))
    # The category feature: items of one category share their token, others do not.
    categories = dataset.item_categories()
    same = [i for i, c in enumerate(categories) if c == categories[0]][:2]
    table = model.items.tokens("category")
    assert torch.equal(table[same[0]], table[same[1]])
    assert len({tuple(row.tolist()) for row in table}) == len(set(categories))
    # FDSA takes its features as given: no encoder weight trains, none is saved.
    assert not any(p.requires_grad for p in model.items.encoders.parameters())
    from mmsr.train.model import trainable_state

    assert not [k for k in trainable_state(model) if ".encoders." in k]


def test_fdsa_title_words_are_a_feature_of_their_own(built_cache, small_demo):
    """model.side_features=['category', 'title']: each field its own token table and embedding (a
    feature column each, as RecBole's FDSA embeds its token fields), titles split into words."""
    from mmsr.models.fdsa import field_tokens
    from mmsr.train.model import trainable_state

    model, feed, _, dataset = _model(built_cache + ["model.kind=fdsa", "encoders.text_model=", "encoders.vision_model=",
                                                    "model.side_features=['category', 'title']"], small_demo)
    titles = dataset.item_field("title")
    assert titles == [item["title"] for item in dataset.items] and all(titles)
    table, vocabulary = field_tokens(titles)
    assert torch.equal(model.items.tokens("title"), table)
    # Word tokens, lower-cased: an item's row spells its title's words.
    assert [vocabulary[t] for t in table[0].tolist() if t] == titles[0].lower().split()
    keys = set(trainable_state(model))
    assert {"items.category_embedding.weight", "items.title_embedding.weight"} <= keys
    assert model.items.title_embedding.num_embeddings == len(vocabulary)
    # Both fields reach the feature half: changing the title table changes it, the ID half not.
    ids = torch.tensor([0, 1, 2])
    before = model.item_vectors(ids, feed)
    with torch.no_grad():
        model.items.title_embedding.weight[1:] += 1.0
    after = model.item_vectors(ids, feed)
    half = model.items.dim
    torch.testing.assert_close(after[:, :half], before[:, :half])
    assert not torch.allclose(after[:, half:], before[:, half:])
    # model.side_tokens reaches each field's table, told which field it splits (the demo's titles split
    # alike either way, so the fields are given here).
    from mmsr.train.model import build_model

    texts = {"title": ["Birdcage, The", "The Birdcage"], "category": ["Drama, Comedy", "Drama"]}

    def fields(name: str) -> list[str]:
        return [texts[name][i % 2] for i in range(dataset.num_items)]

    for split, title_words in (("words", ["birdcage", "the"]), ("recbole", ["Birdcage,", "The", "Birdcage"])):
        config = _config(built_cache + ["model.kind=fdsa", "encoders.text_model=", "encoders.vision_model=",
                                        "model.side_features=['category', 'title']", f"model.side_tokens={split}"])
        items = build_model(config, dataset.num_items, item_field=fields).items
        for name in ("title", "category"):
            assert torch.equal(items.tokens(name), field_tokens(fields(name), split=split, field=name)[0])
        assert items.title_embedding.num_embeddings == 1 + len(title_words)
        assert items.category_embedding.num_embeddings == 3  # <pad>, drama, comedy: the ", " separates


def test_side_min_items_drops_the_words_of_one_item_alone():
    from mmsr.models.fdsa import field_tokens

    texts = ["Star Wars", "Star Trek", "Heat", "Trek, Star"]
    table, vocabulary = field_tokens(texts)
    assert vocabulary == ["<pad>", "star", "wars", "trek", "heat"]
    assert table.tolist() == [[1, 2], [1, 3], [4, 0], [3, 1]]
    table, vocabulary = field_tokens(texts, min_items=2)  # "wars" and "heat" are one title's own
    assert vocabulary == ["<pad>", "star", "trek"]
    assert table.tolist() == [[1, 0], [1, 2], [0, 0], [2, 1]]  # "Heat" keeps no word: a zero vector


def test_side_tokens_recbole_splits_as_recbole_splits_a_token_seq_field():
    """model.side_tokens=recbole: spaces alone and the case kept, so a title's "Birdcage," is a word of
    its own; the category's ", " (the importers' list separator, RecBole's spaces) still separates."""
    from mmsr.models.fdsa import field_tokens

    titles = ["Birdcage, The", "The Birdcage", "Star Wars|Trek"]
    _, vocabulary = field_tokens(titles, split="recbole", field="title")
    assert vocabulary == ["<pad>", "Birdcage,", "The", "Birdcage", "Star", "Wars|Trek"]
    _, vocabulary = field_tokens(titles)  # "words": lower-cased, split on the punctuation too
    assert vocabulary == ["<pad>", "birdcage", "the", "star", "wars", "trek"]
    table, vocabulary = field_tokens(["Animation, Children's, Comedy", " Film-Noir "], split="recbole",
                                     field="category")
    assert vocabulary == ["<pad>", "Animation", "Children's", "Comedy", "Film-Noir"]
    assert table.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_fdsa_feature_attention_weighs_two_columns_and_passes_one_through():
    """model.fdsa_attention: each scorer gives one column weight 1 (the feature is the column), and with
    two columns the weights follow the scorer: tanh-linear's w . tanh(x) + b, RecBole's Linear-ReLU-Linear."""
    from mmsr.models.fdsa import FEATURE_ATTENTIONS, FDSAItemTower

    genres = (torch.tensor([[1, 2], [2, 0], [3, 0]]), 4)
    titles = (torch.tensor([[1, 0], [2, 3], [3, 0]]), 4)
    ids = torch.tensor([0, 1, 2])
    for name in FEATURE_ATTENTIONS:
        torch.manual_seed(0)
        one = FDSAItemTower(3, 8, {}, {"category": genres}, attention=name)
        torch.testing.assert_close(one.features(ids, {}), one.category_embedding(genres[0][ids]) * one.scale)
        torch.manual_seed(0)
        two = FDSAItemTower(3, 8, {}, {"category": genres, "title": titles}, attention=name)
        columns = torch.stack([two.category_embedding(genres[0][ids]), two.title_embedding(titles[0][ids])], dim=1)
        a = two.attention
        if name == "tanh-linear":
            energy = columns.tanh() @ a.weight.T + a.bias
        else:
            energy = torch.relu(columns @ a[0].weight.T + a[0].bias) @ a[2].weight.T + a[2].bias
        weights = torch.softmax(energy, dim=1)
        torch.testing.assert_close(two.features(ids, {}), (weights * columns).sum(1) * two.scale)
    with pytest.raises(MMSRError, match="unknown feature attention 'gated'"):
        FDSAItemTower(3, 8, {}, {"category": genres}, attention="gated")


def test_direct_token_tables_start_where_rescaled_ones_do_and_learn_sqrt_d_times_faster():
    """model.fdsa_token_tables: from one draw, "direct" gives the same features as "rescaled" (the
    default), and one Adam step moves them about √D times further, as it moves the ID table."""
    from mmsr.models.fdsa import TOKEN_TABLES, FDSAItemTower

    dim = 16
    genres = (torch.tensor([[1, 2], [2, 0], [3, 0]]), 4)
    titles = (torch.tensor([[1, 0], [2, 3], [3, 0]]), 4)
    ids = torch.tensor([0, 1, 2])
    towers = {}
    for name in TOKEN_TABLES:
        torch.manual_seed(0)
        towers[name] = FDSAItemTower(3, dim, {}, {"category": genres, "title": titles}, token_tables=name)
    rescaled, direct = towers["rescaled"], towers["direct"]
    assert direct.title_embedding.weight[1:].std().item() < rescaled.title_embedding.weight[1:].std().item() / 2
    torch.testing.assert_close(direct.features(ids, {}), rescaled.features(ids, {}))
    moved = {}
    for name, tower in towers.items():
        start = tower.features(ids, {}).detach()
        optimizer = torch.optim.Adam(tower.parameters(), lr=1e-3)
        tower.features(ids, {}).sum().backward()
        optimizer.step()
        moved[name] = (tower.features(ids, {}).detach() - start).abs().mean().item()
    # The attention's own step moves both alike; the tables' step is √D = 4 times larger in use.
    assert 2.0 < moved["direct"] / moved["rescaled"] <= dim ** 0.5 * 1.05
    with pytest.raises(MMSRError, match="unknown token-table storage 'wide'"):
        FDSAItemTower(3, dim, {}, {"category": genres}, token_tables="wide")


def test_recbole_init_starts_fdsas_own_linears_at_n_0_002_and_keeps_the_encoders(built_cache, small_demo):
    """model.fdsa_init="recbole": every Linear FDSA owns (the content projections, the feature
    attention, both streams' blocks, the merge) starts at N(0, 0.02) with zero bias, as RecBole's
    `_init_weights`; the encoders' pretrained tops and every other weight are the default build's."""
    from torch import nn

    default = _model(built_cache + ["model.kind=fdsa"], small_demo)[0]
    recbole = _model(built_cache + ["model.kind=fdsa", "model.fdsa_init=recbole"], small_demo)[0]
    own = {name: module for name, module in recbole.named_modules()
           if isinstance(module, nn.Linear) and not name.startswith("items.encoders.")}
    assert {"items.attention", "user.merge"} <= set(own) and any(n.startswith("items.project.") for n in own)
    assert any(n.startswith("user.id_stream.") for n in own) and any(n.startswith("user.feature_stream.") for n in own)
    weights = torch.cat([m.weight.detach().flatten() for m in own.values()])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
    assert all(m.bias is None or not m.bias.any() for m in own.values())
    before = default.state_dict()
    renewed = {f"{name}.{part}" for name in own for part in ("weight", "bias")}
    kept = [key for key in before if key not in renewed]
    assert any(key.startswith("items.encoders.") for key in kept) and "items.embedding.weight" in kept
    for key, value in recbole.state_dict().items():
        if key in kept:
            assert torch.equal(value, before[key]), key
    default_merge = default.user.merge.weight.std().item()
    assert default_merge > 0.03, default_merge  # PyTorch's own start differs, so the test tells them apart


def test_vqrec_items_are_sums_of_opq_codes_of_their_text(built_cache, small_demo):
    model, feed, description, dataset = _model(built_cache + ["model.kind=vqrec", "model.vq_codes=8"], small_demo)
    assert description == "ids"
    codes = model.items.item_codes
    assert codes.shape == (dataset.num_items, 8) and int(codes.min()) >= 0 and int(codes.max()) < 256
    assert len({tuple(row.tolist()) for row in codes}) > dataset.num_items // 2  # items are told apart
    ids = torch.tensor([3, 4])
    expected = torch.stack([model.items.embedding.weight[codes[i] + torch.arange(8) * 256].sum(0) for i in ids])
    torch.testing.assert_close(model.item_vectors(ids, feed), expected)


def test_vqrec_quantizer_is_faiss_opq_and_deterministic():
    from mmsr.models.vqrec import quantize

    features = np.random.RandomState(0).randn(600, 32).astype(np.float32)
    a, b = quantize(features, 8), quantize(features, 8, bits=6)
    assert np.array_equal(a, quantize(features, 8)) and a.max() < 256 and b.max() < 64
    twins = np.vstack([features, features[:5]])
    assert np.array_equal(quantize(twins, 8)[-5:], quantize(twins, 8)[:5])  # same text, same codes
    with pytest.raises(MMSRError, match="not divisible into 5 codes"):
        quantize(features, 5)
    with pytest.raises(MMSRError, match="cannot train 256 centroids"):
        quantize(features[:100], 8)


def test_baseline_runs_save_what_eval_needs(built_cache, tmp_path):
    """VQRec's codes and FDSA's two streams come back from the run directory alone."""
    from mmsr.eval.runner import evaluate_run

    for kind, extra in (("vqrec", ["model.vq_codes=8"]), ("fdsa", [])):
        run = tmp_path / kind
        best = _train(built_cache + [f"model.kind={kind}", "optim.epochs=2", *extra], run)
        again = evaluate_run(run, "valid", ks="10,20")
        assert again["metrics"] == pytest.approx(best["valid"]), kind


# Settings the config refuses before anything is built: (overrides, the message).
REFUSED_SETTINGS = [
    (["model.kind=carca2"], "model.kind='carca2' is not a known model kind; choose one of .*fdsa"),
    (["model.kind=vqrec", "encoders.text_model="],
     'model.kind=vqrec quantizes the items\' text, but encoders.text_model is ""'),
    (["model.kind=fdsa", "model.vq_codes=8"], "model.vq_codes=8 is ignored by model kind 'fdsa'"),
    (["model.kind=idsr", "model.fdsa_shared=true"], "model.fdsa_shared=True is ignored by model kind 'idsr'"),
    (["model.kind=fdsa", "model.side_features=['title', 'category', 'title']"],
     "model.side_features names 'title' more than once"),
    (["model.kind=fdsa", "model.side_min_items=0"], "model.side_min_items=0 counts the items a word must appear in"),
    (["model.kind=idsr", "model.side_min_items=2"], "model.side_min_items=2 is ignored by model kind 'idsr'"),
    (["model.kind=fdsa", "model.side_features=['brand']"], "model.side_features has 'brand'"),
    (["model.kind=fdsa", "model.fdsa_attention=gated"],
     "model.fdsa_attention='gated' is not a feature attention; choose one of tanh-linear, mlp"),
    (["model.kind=idsr", "model.fdsa_attention=mlp"], "model.fdsa_attention='mlp' is ignored by model kind 'idsr'"),
    (["model.kind=fdsa", "model.side_tokens=chars"],
     "model.side_tokens='chars' is not a way to split a side feature into words; choose one of words, recbole"),
    (["model.kind=idsr", "model.side_tokens=recbole"], "model.side_tokens='recbole' is ignored by model kind 'idsr'"),
    (["model.kind=fdsa", "model.fdsa_token_tables=wide"],
     "model.fdsa_token_tables='wide' is not a way to store the token tables; choose one of rescaled, direct"),
    (["model.kind=fdsa", "model.fdsa_init=xavier"],
     "model.fdsa_init='xavier' is not a way to start the Linear layers; choose one of torch, recbole"),
    (["model.kind=idsr", "model.fdsa_init=recbole"], "model.fdsa_init='recbole' is ignored by model kind 'idsr'"),
]


def test_bad_baseline_settings_are_refused(built_cache, small_demo, tmp_path):
    for overrides, message in REFUSED_SETTINGS:
        with pytest.raises(MMSRError, match=message):
            _config(built_cache + overrides)
    # Refused when the model is built: they depend on the sequence model or on the dataset.
    with pytest.raises(MMSRError, match="only self-attention streams have"):
        _model(built_cache + ["model.kind=fdsa", "model.sequence=gru4rec", "model.fdsa_shared=true"], small_demo)
    with pytest.raises(MMSRError, match="asks for 'category', but no word of it is found in 100000 items or more"):
        _model(built_cache + ["model.kind=fdsa", "model.side_min_items=100000"], small_demo)
    # A dataset without categories: FDSA's category feature names the fix.
    from mmsr.data.dataset import DatasetWriter, load_dataset

    root = tmp_path / "plain"
    with DatasetWriter(root) as writer:
        for i in range(4):
            writer.add_item(f"i{i}", title=f"item {i}")
        for u in range(3):
            for t, i in enumerate((0, 1, 2, 3, u % 4)):
                writer.add_interaction(f"u{u}", f"i{i}", t)
    with pytest.raises(MMSRError, match="no item of this dataset has one"):
        _model(built_cache + ["model.kind=fdsa", f"dataset={root}", "encoders.vision_model="], root)
    assert load_dataset(root).item_categories() == ["", "", "", ""]


def _vqrec_end_to_end(small_demo, tiny_models):
    # No cache: VQRec's codes come from the text encoder run on the raw texts once.
    return [f"dataset={small_demo}", "model.kind=vqrec", f"encoders.text_model={tiny_models['text']}",
            "encoders.vision_model=", "encoders.max_text_len=16", "model.vq_codes=8", "model.dim=16",
            "optim.batch_size=32", "optim.epochs=2", "model.dropout=0.0", "checkpoint_every_steps=2"]


def test_vqrec_resumes_bit_identically_and_trains_under_torchrun_as_in_one_process(small_demo, tiny_models,
                                                                                    mmsr_home):
    overrides = _vqrec_end_to_end(small_demo, tiny_models)
    (a, b), last = kill_and_resume(overrides, 9, mmsr_home)
    assert a["global_step"] == b["global_step"] == 14
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert last[0]["valid"] == last[1]["valid"]
    # The uninterrupted one-process run is the reference for two processes too (each training
    # launch costs the suite seconds; checkpointing every 2 steps changes no weight).
    assert_two_processes_train_as_one(overrides, mmsr_home, single="whole")
    saved = json.loads((mmsr_home / "runs/ddp/config.json").read_text())
    assert saved["model"]["kind"] == "vqrec"


@pytest.mark.parametrize("kind", ["fdsa", "vqrec"])
def test_table_kinds_train_with_the_full_softmax(built_cache, kind):
    """FDSA and VQRec score against a table (IDs, code sums), so RecBole's CE is affordable."""
    losses = _fits_a_batch(built_cache + [f"model.kind={kind}", "optim.loss=softmax", *KIND_SETTINGS.get(kind, [])])
    assert losses[-1] < 0.95 * losses[0], losses


def test_carca_learns_and_refuses_batch_losses(built_cache):
    losses = _fits_a_batch(built_cache + ["model.kind=carca", "optim.loss=bce"])
    assert losses[-1] < 0.95 * losses[0], losses
    with pytest.raises(MMSRError, match="model.kind=carca scores each candidate through cross-attention"):
        _config(built_cache + ["model.kind=carca", "optim.loss=mixed"])


def test_carca_scorer_tells_candidates_apart_at_an_id_tables_scale():
    """Candidates come at an ID table's scale (std 0.02), the sequence states out of a LayerNorm.
    Without the candidate norm a fresh scorer's attention was uniform and its scores varied 15x
    more across users than across candidates (0.022 against 0.325 here): it could learn little
    beyond popularity (demo test HR@10 0.033)."""
    from mmsr.models.carca import CrossAttentionScorer
    from mmsr.models.sequence import create_sequence_model

    torch.manual_seed(0)
    sequence, scorer = create_sequence_model("sasrec", dim=128, max_len=20).eval(), CrossAttentionScorer(128).eval()
    mask = torch.ones(64, 20, dtype=torch.bool)
    with torch.no_grad():
        states = sequence(torch.randn(64, 20, 128) * 0.02, mask)
        scores = scorer.matrix(states, mask, torch.randn(500, 128) * 0.02)  # [users, candidates]
    assert scores.std(dim=1).mean() > scores.std(dim=0).mean()


def test_ranking_rule_on_score_rows_equals_faiss_and_brute_force():
    """One rule for both backends: exact score rows give the ranks FAISS gives for inner products."""
    from mmsr.eval.search import Histories, rank_targets, ranks_from_scores

    rng = np.random.RandomState(0)
    items = rng.randn(300, 16).astype(np.float32)
    items[7] = items[3]  # a tie with the target must count in its favour
    users = rng.randn(40, 16).astype(np.float32)
    targets = rng.randint(0, 300, 40)
    targets[0] = 3
    histories = Histories.from_lists([rng.choice(300, rng.randint(0, 30), replace=False) for _ in range(40)])
    scores = users.astype(np.float64) @ items.T.astype(np.float64)
    for masks in (histories, None):
        brute = []
        for u in range(40):
            banned = set(histories.items[histories.offsets[u]:histories.offsets[u + 1]]) if masks else set()
            higher = [i for i in range(300) if i != targets[u] and i not in banned and scores[u, i] > scores[u, targets[u]]]
            brute.append(min(len(higher) + 1, 51))
        ours = ranks_from_scores(scores, targets, masks, max_k=50)
        faiss_ranks = rank_targets(items, users, targets, masks if masks else None, mask_history=masks is not None,
                                   max_k=50)
        assert ours.tolist() == brute == faiss_ranks.tolist()


def test_carca_evaluates_by_exact_batched_scoring(built_cache, tmp_path):
    """Its run directory gives back the trainer's validation figures, scored item by item, and
    `mmsr eval` names the backend; recommend ranks with the same scorer."""
    from mmsr.eval.recommend import recommend
    from mmsr.eval.runner import evaluate_run

    run = tmp_path / "carca"
    best = _train(built_cache + ["model.kind=carca", "optim.loss=bce", "optim.epochs=2"], run)
    said = []
    again = evaluate_run(run, "valid", ks="10,20", log=said.append)
    assert again["metrics"] == pytest.approx(best["valid"])
    assert again["search"].startswith("exact-batched") and said == []
    # A backend asked for by name cannot rank it: said, not silently dropped, and not refused.
    asked = evaluate_run(run, "valid", ks="10,20", search_backend="faiss", log=said.append)
    assert asked["metrics"] == again["metrics"] and asked["backend"] == {"name": "exact-batched", "requested": "faiss"}
    assert said == ["note: --search-backend faiss does not apply to this model: its scores depend on the candidate "
                    "(no inner product), so every item is scored exactly (exact-batched)"]
    top = recommend(run, ["i00001", "i00002"], k=5)
    assert len(top["items"]) == 5 and not {"i00001", "i00002"} & {row["item"] for row in top["items"]}
    scores = [row["score"] for row in top["items"]]
    assert scores == sorted(scores, reverse=True)
    # k past the catalogue: every other item, the history still out (it was listed last, at
    # -inf, which JSON cannot hold), and a note; k below 1 refused as on the FAISS path.
    from mmsr.data.dataset import load_dataset

    catalogue = load_dataset(_config(built_cache).dataset).num_items
    everything = recommend(run, ["i00001", "i00002"], k=10 ** 9)
    assert len(everything["items"]) == catalogue - 2
    assert not {"i00001", "i00002"} & {row["item"] for row in everything["items"]}
    assert all(np.isfinite(row["score"]) for row in everything["items"])
    assert everything["notes"] == [f"only {catalogue - 2} items are left once the history is excluded; all of them "
                                   "are listed"]
    for k in (0, -3):
        with pytest.raises(MMSRError, match=f"k must be positive, got {k}"):
            recommend(run, ["i00001"], k=k)


def test_vqrec_codes_do_not_depend_on_faiss_threads(monkeypatch):
    """FAISS's k-means sums in an order that follows its thread count (3,000 x 128 features:
    28% of the codes moved between 1 and 4 threads; too slow for a test), so VQRec trains its
    quantizer on one thread whatever FAISS is set to, and leaves the setting as it found it."""
    import faiss

    from mmsr.models.vqrec import quantize

    threads_seen = []

    class RecordingOPQ(faiss.OPQMatrix):
        def train(self, x):
            threads_seen.append(faiss.omp_get_max_threads())
            return super().train(x)

    monkeypatch.setattr(faiss, "OPQMatrix", RecordingOPQ)
    features = np.random.RandomState(0).randn(600, 32).astype(np.float32)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(4)
        codes = quantize(features, 8)
        assert faiss.omp_get_max_threads() == 4
    finally:
        faiss.omp_set_num_threads(before)
    assert threads_seen == [1] and codes.shape == (600, 8)


def test_fdsa_category_features_start_at_the_id_tables_scale():
    """RecBole starts its feature tables at N(0, 0.02), as mmsr's ID table; the genres once came
    in at 6x that (nn.EmbeddingBag's N(0, 1) times the feature scale)."""
    import torch

    from mmsr.models.fdsa import FDSAItemTower, field_tokens

    torch.manual_seed(0)
    table, vocabulary = field_tokens([f"genre{i % 40}|genre{(i * 7) % 40}" for i in range(2000)])
    tower = FDSAItemTower(2000, 64, {}, {"category": (table, len(vocabulary))})
    ids = torch.arange(2000)
    features = tower.features(ids, {})
    ids_std, features_std = tower.embedding(ids).std().item(), features.std().item()
    assert 0.7 < features_std / ids_std < 1.0, (features_std, ids_std)  # two tokens averaged: 1/sqrt(2) of one
    assert torch.count_nonzero(tower.category_embedding.weight[0]) == 0  # padding


@pytest.mark.parametrize("sequence", ["sasrec", "sasrec-postnorm"])
def test_fdsa_shared_streams_have_one_position_table_and_one_layer_norm_as_recboles(sequence):
    """model.fdsa_shared: RecBole's FDSA adds one position table to both streams and runs one
    LayerNorm over both streams and the merged vector. Off (the default), each has its own."""
    import torch

    from mmsr.models.fdsa import FDSAUserTower
    from mmsr.models.sequence import create_sequence_model

    def stream():
        return create_sequence_model(sequence, dim=16, max_len=8, layers=1, heads=2, dropout=0.0)

    def norm_of(s):
        return s.input_norm if sequence == "sasrec-postnorm" else s.norm

    torch.manual_seed(0)
    separate = FDSAUserTower(stream(), stream(), 16)
    assert separate.id_stream.position is not separate.feature_stream.position
    assert len({id(m) for m in (norm_of(separate.id_stream), norm_of(separate.feature_stream), separate.out[0])}) == 3
    tower = FDSAUserTower(stream(), stream(), 16, shared=True)
    ids_stream, feature_stream = tower.id_stream, tower.feature_stream
    shared = norm_of(ids_stream)
    assert feature_stream.position is ids_stream.position is tower.position
    assert isinstance(shared, torch.nn.LayerNorm) and tower.out[0] is shared is tower.norm is norm_of(feature_stream)
    count = sum(p.numel() for p in separate.parameters())
    assert sum(p.numel() for p in tower.parameters()) == count - 8 * 16 - 2 * 2 * 16  # one table and two norms less
    # The tower's own names for them: a checkpoint of the unshared layout lacks these, so load_weights
    # refuses it instead of loading two tables into one.
    assert {"position.weight", "norm.weight", "norm.bias"} <= set(tower.state_dict())
    assert not {"position.weight", "norm.weight"} & set(separate.state_dict())

    # Learning moves the one table: a step through the feature stream alone changes the ID stream's positions.
    items, mask = torch.randn(3, 8, 16), torch.ones(3, 8, dtype=torch.bool)
    before = ids_stream.position.weight.detach().clone()
    optimizer = torch.optim.SGD(tower.parameters(), lr=1.0)
    feature_stream(items, mask).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, ids_stream.position.weight)


def test_fdsa_shared_needs_self_attention_streams():
    import torch

    from mmsr.models.fdsa import FDSAUserTower
    from mmsr.models.sequence import create_sequence_model

    streams = [create_sequence_model("gru4rec", dim=16, max_len=8, layers=1, heads=2, dropout=0.0) for _ in range(2)]
    assert isinstance(FDSAUserTower(*streams, 16).out[0], torch.nn.LayerNorm)
    with pytest.raises(MMSRError, match="only self-attention streams have"):
        FDSAUserTower(*streams, 16, shared=True)


def test_bench_fdsa_feature_weights_reads_the_trained_attention(built_cache, small_demo, tmp_path):
    """bench/fdsa_feature_weights.py: per column, the weight the run's own attention gives each item,
    caught as `mmsr eval` embeds the items; a run of another kind is refused."""
    import sys
    from pathlib import Path

    from mmsr.train.run import load_run

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import fdsa_feature_weights  # bench/fdsa_feature_weights.py

    overrides = ["model.kind=fdsa", "encoders.text_model=", "encoders.vision_model=",
                 "model.side_features=['category', 'title']", "model.fdsa_attention=mlp", "optim.epochs=1"]
    _train(built_cache + overrides, tmp_path / "fdsa", from_cache=False)
    run = load_run(tmp_path / "fdsa", device="cpu")
    found = fdsa_feature_weights.feature_weights(run)
    tower, ids = run.model.items, torch.arange(run.dataset.num_items)
    with torch.no_grad():
        columns = torch.stack([tower.category_embedding(tower.tokens("category")[ids]),
                               tower.title_embedding(tower.tokens("title")[ids])], dim=1)
        weights = torch.softmax(tower.attention(columns), dim=1).squeeze(-1)
    assert list(found) == ["category", "title"]
    for i, name in enumerate(found):
        assert found[name]["mean"] == pytest.approx(float(weights[:, i].mean()), abs=1e-4)
        assert found[name]["median"] == pytest.approx(float(torch.quantile(weights[:, i], 0.5)), abs=1e-4)
    _train(built_cache + ["model.kind=idsr", "optim.epochs=1"], tmp_path / "idsr")
    with pytest.raises(MMSRError, match="only fdsa runs weigh feature columns"):
        fdsa_feature_weights.feature_weights(load_run(tmp_path / "idsr", device="cpu"))


@pytest.mark.parametrize("kind", kind_names())
def test_every_kind_is_sized_before_it_is_built_and_built_as_without_the_sizing(built_cache, small_demo, kind,
                                                                                 monkeypatch):
    from mmsr.data.dataset import load_dataset
    from mmsr.train import model as model_lib
    from mmsr.train.kinds import KindInputs, build_towers

    config = _config(built_cache + [f"model.kind={kind}", *KIND_SETTINGS.get(kind, [])])
    dataset = load_dataset(config.dataset)
    sized = []
    monkeypatch.setattr(model_lib, "available_memory", lambda: sized.append(kind) or 10**12)
    torch.manual_seed(0)
    built = model_lib.build_model(config, dataset.num_items, item_field=dataset.item_field)
    assert sized == [kind, kind]  # whether memory can be read, then what is left after the meta-device pass
    torch.manual_seed(0)  # the towers alone, as build_model built them before it sized them
    items, user, scorer = build_towers(config, KindInputs(dataset.num_items, None, dataset.item_field))
    alone = {**{f"items.{k}": v for k, v in items.state_dict().items()},
             **{f"user.{k}": v for k, v in user.state_dict().items()},
             **({f"scorer.{k}": v for k, v in scorer.state_dict().items()} if scorer is not None else {})}
    state = {k: v for k, v in built.state_dict().items() if not k.startswith("loss.")}
    assert state.keys() == alone.keys()
    for key, value in state.items():
        assert not value.is_meta and torch.equal(value, alone[key]), key  # the same draws from the RNG


def test_a_model_too_big_for_the_memory_left_is_refused_by_its_settings_before_it_is_allocated(built_cache,
                                                                                             monkeypatch):
    from mmsr.train import model as model_lib

    config = _config(built_cache + ["model.kind=idsr", "model.dim=64"])
    monkeypatch.setattr(model_lib, "available_memory", lambda: 50_000)  # bytes: less than 60 x 64 floats
    allocated = []
    monkeypatch.setattr(torch.nn.Embedding, "reset_parameters", lambda self: allocated.append(self))
    with pytest.raises(MMSRError, match="does not fit in memory") as error:
        model_lib.build_model(config, 1000, copies=model_lib.TRAINING_COPIES)
    assert "model.dim = 64 (1,000 items)" in str(error.value) and "to train" in str(error.value)
    assert allocated and all(table.weight.is_meta for table in allocated)  # only the sizing pass's meta tables were made
    monkeypatch.setattr(model_lib, "available_memory", lambda: 10**9)
    model_lib.build_model(config, 1000, copies=model_lib.TRAINING_COPIES)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "10000")  # torchrun's processes on one machine share what is left
    with pytest.raises(MMSRError, match=r"100.0 kB is available for each of the 10000 processes on this machine"):
        model_lib.build_model(config, 1000, copies=model_lib.TRAINING_COPIES)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(model_lib, "available_memory", lambda: None)  # another OS: nothing to check against
    model_lib.build_model(config, 1000)
    monkeypatch.setattr(model_lib, "available_memory", lambda: 10**15)
    with pytest.raises(MMSRError, match="more bytes than a 64-bit machine can address"):  # even sizing overflows
        model_lib.build_model(_config(built_cache + ["model.kind=idsr", "model.dim=1000000000"]), 1000)


def test_an_allocation_the_machine_refuses_names_the_setting(built_cache, monkeypatch):
    from mmsr.train import model as model_lib

    config = _config(built_cache + ["model.kind=idsr", "model.dim=64"])
    monkeypatch.setattr(model_lib, "available_memory", lambda: None)

    def refused(*_, **__):  # the CPU allocator's words when the kernel will not reserve the memory
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 24000000000 bytes. Error code 12")

    monkeypatch.setattr(model_lib, "build_towers", refused)
    with pytest.raises(MMSRError, match="asked for 24.0 GB at once") as error:
        model_lib.build_model(config, 60)
    assert "model.dim" in str(error.value)
    monkeypatch.setattr(model_lib, "build_towers", lambda *_: 1 / 0)  # any other failure stays itself
    with pytest.raises(ZeroDivisionError):
        model_lib.build_model(config, 60)


def test_training_memory_counts_what_training_adds_to_each_weight():
    from mmsr.train.model import _sizes

    with torch.device("meta"):
        new, frozen = torch.nn.Linear(10, 10), torch.nn.Linear(10, 10).requires_grad_(False)  # 110 floats each
    pretrained = torch.nn.Linear(10, 10)  # an encoder's top, loaded for real already: training adds its copies
    tower = torch.nn.ModuleList([new, frozen, pretrained])
    tower.register_buffer("table", torch.zeros(5, device="meta"))
    weights, needed = _sizes([tower], 4)
    assert weights == (110 + 110 + 5) * 4  # the new tensors
    assert needed == (110 * 4 + 110 + 5 + 110 * 3) * 4  # trainable x4, frozen and buffers once, pretrained +3
