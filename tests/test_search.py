"""General search units against brute-force NumPy references."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.config import VARIANTS, ModelConfig
from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.layers import (
    CategoryGSU,
    CosineGSU,
    EmbeddingGSU,
    SearchInputs,
    SearchUnit,
    gather_history,
    search,
)
from muse_tf.ops import item_vectors
from tests import reference
from tests.reference import assert_search_matches


def _random_case(rng, batch, length, dim, pad_rate=0.2, zero_rate=0.1):
    target = rng.normal(size=(batch, dim)).astype(np.float32)
    history = rng.normal(size=(batch, length, dim)).astype(np.float32)
    history[rng.random((batch, length)) < zero_rate] = 0.0
    mask = rng.random((batch, length)) >= pad_rate
    return target, history, mask


@pytest.mark.parametrize("length,k", [(1, 5), (7, 5), (40, 5), (60, 50), (3, 50)])
def test_cosine_gsu_matches_bruteforce(length, k):
    rng = np.random.default_rng(length * 100 + k)
    target, history, mask = _random_case(rng, 6, length, 16)
    mask[0] = False  # an all-padding history
    expected = reference.cosine_topk(target, history, mask, k)
    assert_search_matches(CosineGSU(top_k=k)(target, history, mask), expected)


def test_invalid_never_outranks_negative_cosines():
    # Every real behaviour points away from the target (cosine < 0); padding, zero vectors and
    # padding with a *positive* cosine must all still rank below them.
    rng = np.random.default_rng(1)
    target = np.ones((2, 8), np.float32)
    history = -np.abs(rng.normal(size=(2, 10, 8))).astype(np.float32)
    history[:, :3] = np.abs(history[:, :3])  # padding slots holding attractive vectors
    history[:, 3:5] = 0.0  # items without an embedding
    mask = np.ones((2, 10), bool)
    mask[:, :3] = False
    indices, scores, valid = (np.asarray(t) for t in CosineGSU(top_k=8)(target, history, mask))
    assert valid[:, :5].all() and not valid[:, 5:].any()
    assert set(indices[0, :5]) == {5, 6, 7, 8, 9}
    assert (scores[:, :5] < 0).all()
    assert_search_matches((indices, scores, valid), reference.cosine_topk(target, history, mask, 8))


def test_ties_go_to_the_most_recent_behaviour():
    vec = np.array([1.0, 2.0, 3.0], np.float32)
    history = np.stack([vec, -vec, vec, vec, -vec])[None]
    indices, scores, valid = CosineGSU(top_k=4)(vec[None], history, np.ones((1, 5), bool))
    np.testing.assert_array_equal(np.asarray(indices)[0], [3, 2, 0, 4])
    expected = reference.cosine_topk(vec[None], history, np.ones((1, 5), bool), 4)
    assert_search_matches((indices, scores, valid), expected)


def test_cosine_gsu_at_100k_history():
    rng = np.random.default_rng(7)
    target, history, mask = _random_case(rng, 2, 100_000, 128, pad_rate=0.05, zero_rate=0.01)
    history = (np.clip(history / 4, -1, 1) * 127).astype(np.int8).astype(np.float32)
    expected = reference.cosine_topk(target, history, mask, 50)
    assert_search_matches(CosineGSU(top_k=50)(target, history, mask), expected)


def test_shared_history_equals_tiled_history():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(5, 16)).astype(np.float32)
    history = rng.normal(size=(1, 30, 16)).astype(np.float32)
    mask = rng.random((1, 30)) > 0.3
    gsu = CosineGSU(top_k=10)
    shared = [np.asarray(t) for t in gsu(target, history, mask)]
    tiled = [np.asarray(t) for t in gsu(target, np.repeat(history, 5, 0), np.repeat(mask, 5, 0))]
    for a, b in zip(shared, tiled):
        np.testing.assert_array_equal(a, b)
    assert_search_matches(shared, reference.cosine_topk(target, history, mask, 10))


def _item_table(rng, items=60, no_vector=(0, 1, 5, 6)):
    table = rng.integers(-127, 128, (items, 32)).astype(np.int8)
    table[list(no_vector)] = 0
    return table


@pytest.mark.parametrize("strategy", ["shared", "grouped", "xla"])
@pytest.mark.parametrize("length,k", [(40, 8), (5, 8), (1, 3), (70, 50)])
def test_cosine_search_items_matches_bruteforce(strategy, length, k):
    """Each of cosine_search_items' strategies on an int8 table, with padding, items without a
    vector, repeated items (exact ties), targets without a vector and L < K."""
    rng = np.random.default_rng(length * 10 + k)
    table = _item_table(rng)
    vectors = item_vectors.constant_vectors(table)
    targets = rng.integers(1, 60, 6)
    targets[:2] = [5, 1]  # no vector: every cosine is 0
    if strategy == "shared":
        history = rng.integers(0, 20, (1, length))  # few distinct items: ties; 0 = padding
    else:
        history = rng.integers(0, 20, (3, length))[[0, 0, 1, 2, 2, 2]]  # repeated histories
        history[1, :] = 0  # an all-padding row
    mask = history != 0

    def run():
        return search.cosine_search_items(targets, history, mask, vectors, k)

    result = tf.function(run, jit_compile=True)() if strategy == "xla" else run()
    expected = reference.cosine_topk(table[targets], table[history], mask, k)
    assert_search_matches(result, expected, atol=1e-6)


@pytest.mark.parametrize("strategy", ["grouped", "xla"])
def test_cosine_search_items_of_an_empty_batch(strategy):
    """No target at all (an empty batch or request) gives empty results, not an error."""
    vectors = item_vectors.constant_vectors(_item_table(np.random.default_rng(3)))
    history = np.zeros((0, 9), np.int64)

    def run():
        return search.cosine_search_items(np.zeros(0, np.int64), history, history != 0, vectors, 4)

    result = tf.function(run, jit_compile=True)() if strategy == "xla" else run()
    assert [tuple(t.shape) for t in result] == [(0, 4)] * 3


def test_gather_history_per_row_and_shared():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(3, 9, 2)).astype(np.float32)
    indices = rng.integers(0, 9, size=(3, 4)).astype(np.int32)
    np.testing.assert_array_equal(
        gather_history(values, indices), np.take_along_axis(values, indices[..., None], 1)
    )
    np.testing.assert_array_equal(gather_history(values[:1], indices), values[0][indices])


def test_category_gsu_keeps_most_recent_matches():
    rng = np.random.default_rng(5)
    cats = rng.integers(1, 4, size=(6, 25))
    mask = rng.random((6, 25)) > 0.2
    target = rng.integers(1, 5, size=6)  # category 4 never occurs: no match at all
    indices, _, valid = (np.asarray(t) for t in CategoryGSU(top_k=5)(target, cats, mask))
    exp_indices, exp_valid = reference.category_topk(target, cats, mask, 5)
    np.testing.assert_array_equal(valid, exp_valid)
    for b, row in enumerate(exp_indices):
        assert [i for i, v in zip(indices[b], valid[b]) if v] == [p for p in row if p is not None]


def test_embedding_gsu_concatenates_parts_and_blocks_gradients():
    rng = np.random.default_rng(6)
    item_t, cat_t = (tf.Variable(rng.normal(size=(3, 4)).astype(np.float32)) for _ in range(2))
    item_h, cat_h = (tf.Variable(rng.normal(size=(3, 12, 4)).astype(np.float32)) for _ in range(2))
    mask = np.ones((3, 12), bool)
    with tf.GradientTape() as tape:
        _, scores, _ = EmbeddingGSU(top_k=4)([item_t, cat_t], [item_h, cat_h], mask)
        loss = tf.reduce_sum(scores)
    assert all(g is None for g in tape.gradient(loss, [item_t, cat_t, item_h, cat_h]))
    concat_t = np.concatenate([item_t.numpy(), cat_t.numpy()], -1)
    concat_h = np.concatenate([item_h.numpy(), cat_h.numpy()], -1)
    expected = reference.cosine_topk(concat_t, concat_h, mask, 4)
    assert_search_matches(EmbeddingGSU(top_k=4)([item_t, cat_t], [item_h, cat_h], mask), expected)


def test_search_units_have_no_weights_and_round_trip_config():
    for cls in search.SEARCH_UNITS.values():
        layer = cls(top_k=7, name="s")
        clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
        assert type(clone) is cls and clone.top_k == 7 and not layer.trainable_weights
    with pytest.raises(ValueError, match="top_k"):
        CosineGSU(top_k=0)


def test_registry_holds_every_variants_unit_and_is_the_configs_choice():
    assert all(issubclass(cls, SearchUnit) for cls in search.SEARCH_UNITS.values())
    assert {v.gsu for v in VARIANTS.values()} - {None} <= set(search.SEARCH_UNITS)
    for name in search.SEARCH_UNITS:
        assert ModelConfig(gsu=name).spec.gsu == name
        assert type(search.make_search_unit(name, 3)) is search.SEARCH_UNITS[name]
    with pytest.raises(ValueError, match="Unknown `gsu` 'nope'.*mm_id"):
        ModelConfig(gsu="nope")


class _Tables:
    """Learned-embedding stand-in: one NumPy table per vocabulary (``EmbeddingLookup``)."""

    def __init__(self, rng, rows):
        self.tables = {name: rng.normal(size=(rows, 6)).astype(np.float32)
                       for name in TAOBAO_MM.vocabularies}

    def numpy(self, feature, indices):
        return self.tables[TAOBAO_MM.vocabulary[feature]][indices]

    def lookup(self, feature, indices):
        return tf.constant(self.numpy(feature, np.asarray(indices)))


def _expected_search(gsu, table, tables, t_items, t_cats, h_items, h_cats, mask, k):
    """Each strategy written out in NumPy: (indices, scores or None, valid)."""
    def cos(target, history):
        target, history = np.asarray(target, np.float64), np.asarray(history, np.float64)
        history = np.broadcast_to(history, (len(target),) + history.shape[1:])
        t, h = np.linalg.norm(target, axis=-1), np.linalg.norm(history, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.einsum("bd,bld->bl", target, history) / (t[:, None] * h)
        return np.nan_to_num(out)

    item = (features.ITEM_ID, features.HISTORY_ITEMS)
    category = (features.ITEM_CATEGORY, features.HISTORY_CATEGORIES)
    emb = {name: tables.numpy(name, idx) for name, idx in
           zip(item + category, (t_items, h_items, t_cats, h_cats))}
    if gsu == "mm":
        return reference.cosine_topk(table[t_items], table[h_items], mask, k)
    if gsu == "id":
        return reference.cosine_topk(emb[item[0]], emb[item[1]], mask, k)
    if gsu == "id_category":
        return reference.cosine_topk(np.concatenate([emb[item[0]], emb[category[0]]], -1),
                                     np.concatenate([emb[item[1]], emb[category[1]]], -1), mask, k)
    if gsu == "category":
        indices, valid = reference.category_topk(t_cats, h_cats, mask, k)
        return indices, None, valid
    assert gsu == "mm_id"
    scores = cos(table[t_items], table[h_items]) + cos(emb[item[0]], emb[item[1]])
    usable = np.broadcast_to(mask & table[h_items].any(-1), scores.shape)
    return reference.topk_by_score(scores, usable, k)


@pytest.mark.parametrize("gsu", sorted(search.SEARCH_UNITS))
@pytest.mark.parametrize("shared", [False, True])
def test_every_unit_searches_model_indices_like_its_numpy_definition(gsu, shared):
    """``search`` on indices, the frozen table and learned embeddings, per registered strategy,
    and the multimodal similarity it hands to the ESU."""
    rng = np.random.default_rng(len(gsu) + 10 * shared)
    table = _item_table(rng)
    tables = _Tables(rng, 60)
    k, length = 6, 25
    t_items = rng.integers(1, 60, 5)
    t_cats = t_items % 4 + 1
    h_items = rng.integers(0, 30, (1 if shared else 5, length))  # 0 = padding; repeats: ties
    h_cats = np.where(h_items > 0, h_items % 4 + 1, 0)
    mask = h_items != 0
    inputs = SearchInputs(
        target_items=tf.constant(t_items), history_items=tf.constant(h_items),
        history_mask=tf.constant(mask), multimodal=item_vectors.constant_vectors(table),
        target_categories=tf.constant(t_cats), history_categories=tf.constant(h_cats),
        embeddings=tables,
    )
    unit = search.make_search_unit(gsu, k)
    result = unit.search(inputs)
    exp_indices, exp_scores, exp_valid = _expected_search(
        gsu, table, tables, t_items, t_cats, h_items, h_cats, mask, k)
    indices, scores, valid = (np.asarray(t) for t in result)
    np.testing.assert_array_equal(valid, exp_valid)
    for b, row in enumerate(exp_indices):
        assert [i for i, v in zip(indices[b], valid[b]) if v] == [p for p in row if p is not None]
    if exp_scores is not None:
        np.testing.assert_allclose(scores, exp_scores, atol=1e-5)

    similarity, similarity_valid = (np.asarray(t) for t in unit.multimodal_similarity(inputs, result))
    kept = table[np.broadcast_to(h_items, (5, length))[np.arange(5)[:, None], indices]]
    target = table[t_items].astype(np.float64)
    norms = np.linalg.norm(kept, axis=-1) * np.linalg.norm(target, axis=-1)[:, None]
    np.testing.assert_array_equal(similarity_valid, valid & kept.any(-1))  # a target without a
    expected = np.einsum("bd,bkd->bk", target, kept) / np.where(norms > 0, norms, 1)  # vector: 0
    np.testing.assert_allclose(similarity[similarity_valid], expected[similarity_valid], atol=1e-6)
