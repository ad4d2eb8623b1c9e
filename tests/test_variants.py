"""Each variant's feature set against the official code's definition (docs/fidelity.md).

The official model (alimama-tech/MUSE, model/muse.py and trainer.py) always feeds its tower the same
layout: short-term attention, recent mean, recent SimTier, target and user embeddings, and the
lifelong K-mean, attention and SimTier. Its ``din`` zeroes only the three lifelong features; its
SIM-hard keeps the K most recent behaviours of the target's category, SIM-soft the K closest by
cosine of learned item + category embeddings, MUSE the K closest by multimodal cosine; all three then
use the multimodal similarity of what they kept. Each test changes one input the definition says a
variant does (or does not) read and checks the output moves only then; where the retrieved set
matters it is computed here with NumPy from the model's own embedding weights.
"""

import numpy as np
import pytest

from muse_tf.config import VARIANTS, ModelConfig
from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.jobs import seeding
from muse_tf.layers import LinearTargetAttention, TargetAttention
from muse_tf.models import MuseModel

VOCAB, D, K, R, L, ROWS = 400, 8, 6, 5, 30, 3
OLD = L - R  # positions 0 .. OLD-1 are outside the recent window
TIERS = 22  # SimTier of eps 0.1


def build(variant, seed=0, **overrides):
    seeding.set_seed(seed)  # the weights, whatever ran before in the process
    cfg = ModelConfig(variant=variant, vocab_sizes={name: VOCAB for name in TAOBAO_MM.vocabularies},
                      embedding_dim=D, top_k=K, recent_length=R, mlp_units=[16, 8],
                      din_attention_units=[8], **overrides)
    model = MuseModel(cfg)
    rng = np.random.default_rng(seed)
    table = rng.integers(-127, 128, size=(VOCAB, 128)).astype(np.int8)
    table[[features.PAD, features.OOV]] = 0
    model.set_multimodal_table(table)
    scored(model, batch())  # builds every weight
    return model, table


def batch(seed=1):
    """ROWS rows with disjoint, repeat-free histories (so one item's vector or embedding touches one
    position of one row) and distinct targets."""
    rng = np.random.default_rng(seed)
    x = {name: rng.integers(2, 40, ROWS) for name in TAOBAO_MM.scalar_features}
    x[features.ITEM_ID] = rng.choice(np.arange(2, 40), ROWS, replace=False)
    x[features.HISTORY_ITEMS] = np.stack(
        [rng.choice(np.arange(40 + 100 * r, 140 + 100 * r), L, replace=False) for r in range(ROWS)])
    x[features.HISTORY_CATEGORIES] = rng.integers(2, 6, (ROWS, L))
    return x


def scored(model, x):
    """Logits in inference mode (Dice uses its moving statistics, so rows are independent)."""
    return model(x, training=False).numpy()


def widen_embeddings(model, seed=2):
    """Embeddings of order 1 instead of 1e-3, so a changed behaviour visibly moves the output."""
    rng = np.random.default_rng(seed)
    for layer in model.embeddings.tables.values():
        layer.embeddings.assign(rng.normal(0, 0.5, layer.embeddings.shape).astype(np.float32))


def assert_only_row_changed(before, after, row):
    others = [r for r in range(ROWS) if r != row]
    np.testing.assert_allclose(after[others], before[others], atol=1e-6)
    assert abs(after[row] - before[row]) > 1e-5


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_feeds_the_official_tower_width(variant):
    # model/muse.py sizes its tower for D * (3 + 4) + D/2 * 3 + 2 * 2 * (2D) + 22 * 2 inputs,
    # whatever the method: a feature a method lacks is zeros, not a narrower tower.
    model, _ = build(variant)
    assert model.tower.mlp.dense_layers[0].kernel.shape[0] == 15 * D + 3 * (D // 2) + 2 * TIERS


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recent_multimodal_similarity_reaches_every_variant_but_din_id_only(variant):
    model, table = build(variant)
    x = batch()
    before = scored(model, x)
    changed = table.copy()
    row = 1
    # The newest behaviour's vector becomes the target's: similarity ~0 -> 1, another tier.
    changed[x[features.HISTORY_ITEMS][row, -1]] = table[x[features.ITEM_ID][row]]
    model.set_multimodal_table(changed)
    after = scored(model, x)
    if variant == "din_id_only":
        np.testing.assert_allclose(after, before, atol=1e-6)
    else:
        assert_only_row_changed(before, after, row)


@pytest.mark.parametrize("variant", ["din", "din_id_only"])
def test_din_ignores_every_behaviour_older_than_the_recent_window(variant):
    model, table = build(variant)
    widen_embeddings(model)
    x = batch()
    before = scored(model, x)
    changed_table = table.copy()
    old = {k: v.copy() for k, v in x.items()}
    for row in range(ROWS):
        for pos in (0, 7, OLD - 1):
            old[features.HISTORY_ITEMS][row, pos] = 390 - 3 * row - pos % 3  # an unseen item
            old[features.HISTORY_CATEGORIES][row, pos] = 9
            changed_table[old[features.HISTORY_ITEMS][row, pos]] = table[x[features.ITEM_ID][row]]
    model.set_multimodal_table(changed_table)
    np.testing.assert_allclose(scored(model, old), before, atol=1e-6)


@pytest.mark.parametrize("choice, layer", [("linear", LinearTargetAttention), ("din", TargetAttention)])
def test_the_short_term_attention_is_the_configured_one_over_the_recent_window(choice, layer):
    model, _ = build("din", short_term_attention=choice)
    assert type(model.short_term.attention) is layer
    widen_embeddings(model)
    x = batch()
    before = scored(model, x)
    recent_item = _replace_item(x, 1, L - 1, 395)  # the newest behaviour becomes an unseen item
    assert_only_row_changed(before, scored(model, recent_item), 1)
    older = _replace_item(x, 1, OLD - 1, 395)  # outside the window: DIN never reads it
    np.testing.assert_allclose(scored(model, older), before, atol=1e-6)


def _replace_item(x, row, pos, item):
    out = {k: v.copy() for k, v in x.items()}
    out[features.HISTORY_ITEMS][row, pos] = item
    return out


def test_sim_hard_keeps_the_k_most_recent_behaviours_of_the_target_category():
    model, _ = build("sim_hard")
    widen_embeddings(model)
    x = batch()
    row = 0
    target_category = 7
    x[features.ITEM_CATEGORY][row] = target_category
    matches = [2, 4, 6, 8, 10, 12, 14, 16]  # K + 2 old matches: the two oldest fall outside
    x[features.HISTORY_CATEGORIES][row, matches] = target_category
    before = scored(model, x)
    fresh = 395
    # Official: argsort of (category == target) keeps the last K matches, newest first.
    kept = [p for p in range(L) if x[features.HISTORY_CATEGORIES][row, p] == target_category][-K:]
    assert kept == matches[-K:]
    assert_only_row_changed(before, scored(model, _replace_item(x, row, matches[-1], fresh)), row)
    for ignored in (matches[0], matches[1], 17):  # beyond K matches; another category
        np.testing.assert_allclose(scored(model, _replace_item(x, row, ignored, fresh)), before,
                                   atol=1e-6)


def _id_cosines(model, x, row, with_category):
    """Cosine of each behaviour with the target over learned embeddings (the SIM-soft search)."""
    item = model.embeddings.tables["item"].embeddings.numpy()
    category = model.embeddings.tables["category"].embeddings.numpy()
    target = item[x[features.ITEM_ID][row]]
    history = item[x[features.HISTORY_ITEMS][row]]
    if with_category:
        target = np.concatenate([target, category[x[features.ITEM_CATEGORY][row]]])
        history = np.concatenate([history, category[x[features.HISTORY_CATEGORIES][row]]], -1)
    return unit(history) @ unit(target)


def _old_inside_and_outside(scores):
    """An old position among the top K by ``scores`` and the old position ranked last."""
    top = set(np.argsort(-scores, kind="stable")[:K])
    inside = [p for p in np.argsort(-scores, kind="stable") if p < OLD and p in top]
    assert inside, "no old behaviour among the top K; pick another seed"
    return inside[0], int(np.argmin(np.where(np.arange(L) < OLD, scores, np.inf)))


def _only_the_retrieved_behaviour_moves_the_output(model, x, row, inside, outside, change):
    """``change(pos)`` alters behaviour ``pos`` of ``row`` (starting from the original each time):
    the output must move for ``inside`` (retrieved) and not for ``outside``."""
    before = scored(model, x)
    for pos, moves in ((inside, True), (outside, False)):
        change(pos)
        after = scored(model, x)
        if moves:
            assert_only_row_changed(before, after, row)
        else:
            np.testing.assert_allclose(after, before, atol=1e-6)


def _perfect_multimodal_match(model, table, x, row):
    """``change(pos)``: behaviour ``pos`` gets the target's multimodal vector, which SA-TA and
    SimTier see if the search found it, and a learned-embedding search never sees."""

    def change(pos):
        changed = table.copy()
        changed[x[features.HISTORY_ITEMS][row, pos]] = table[x[features.ITEM_ID][row]]
        model.set_multimodal_table(changed)

    return change


def test_sim_soft_searches_learned_embeddings_and_reads_multimodal_similarity_of_what_it_found():
    model, table = build("sim_soft")
    widen_embeddings(model)
    x = batch()
    row = 2
    inside, outside = _old_inside_and_outside(_id_cosines(model, x, row, with_category=True))

    _only_the_retrieved_behaviour_moves_the_output(model, x, row, inside, outside,
                                                   _perfect_multimodal_match(model, table, x, row))


def test_sim_soft_search_counts_the_category_embedding_too():
    """The official SIM-soft scores behaviours by item and category embeddings together: a
    behaviour that only the joint cosine ranks in the top K is retrieved, one that only the item
    cosine would rank there is not."""
    model, table = build("sim_soft")
    widen_embeddings(model)
    x = batch()
    row = 2
    joint = _id_cosines(model, x, row, with_category=True)
    item_only = _id_cosines(model, x, row, with_category=False)
    top_joint = set(np.argsort(-joint, kind="stable")[:K])
    top_item = set(np.argsort(-item_only, kind="stable")[:K])
    only_joint = [p for p in range(OLD) if p in top_joint and p not in top_item]
    only_item = [p for p in range(OLD) if p in top_item and p not in top_joint]
    assert only_joint and only_item, "the two searches agree on this seed; pick another"

    _only_the_retrieved_behaviour_moves_the_output(model, x, row, only_joint[0], only_item[0],
                                                   _perfect_multimodal_match(model, table, x, row))


def test_muse_searches_multimodal_vectors_not_learned_embeddings():
    model, table = build("muse")
    widen_embeddings(model)
    x = batch()
    row = 1
    mm = unit(table[x[features.HISTORY_ITEMS][row]]) @ unit(table[x[features.ITEM_ID][row]])
    inside, outside = _old_inside_and_outside(mm)
    item_table = model.embeddings.tables["item"].embeddings
    original = item_table.numpy()

    def perfect_id_match(pos):
        # The best ID match, invisible to the multimodal search unless it already found it.
        changed = original.copy()
        changed[x[features.HISTORY_ITEMS][row, pos]] = original[x[features.ITEM_ID][row]]
        item_table.assign(changed)

    _only_the_retrieved_behaviour_moves_the_output(model, x, row, inside, outside, perfect_id_match)
