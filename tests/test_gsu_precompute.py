"""MUSE's multimodal search precomputed by the input pipeline (``muse_tf.layers.search.gsu_precompute``)
against a NumPy brute force and against the model's in-graph search; the deduplicated lookup
behind both."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.config import ModelConfig
from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import reader
from muse_tf.jobs import seeding
from muse_tf.layers import search
from muse_tf.models import MuseModel
from muse_tf.ops import item_vectors
from pipelines.common.join import UserRecords
from pipelines.common.tfrecord_writer import ShardWriter
from tests import reference

VOCAB = 80
SCALE = 1.0 / 127.0
NO_VECTOR = [0, 1, 7, 8, 9]  # PAD, OOV and three items without a multimodal vector
USER_SIDE = (features.USER_ID, *TAOBAO_MM.profile_features, *features.SEQUENCE_FEATURES)


def make_table(seed=0, dtype="int8"):
    rng = np.random.default_rng(seed)
    table = rng.integers(-127, 128, (VOCAB, 128)).astype(np.int8)
    table[NO_VECTOR] = 0
    return table if dtype == "int8" else (table * SCALE).astype(np.float32)


def make_model(table, variant="muse", top_k=6, seed=0):
    dtype = "int8" if table.dtype == np.int8 else "float32"
    config = ModelConfig(variant=variant, vocab_sizes={n: VOCAB for n in TAOBAO_MM.vocabularies},
                         embedding_dim=8, top_k=top_k, recent_length=5, mlp_units=[16, 8],
                         din_attention_units=[8], multimodal_dtype=dtype)
    seeding.set_seed(seed)
    model = MuseModel(config)
    model.set_multimodal_table(table)
    rng = np.random.default_rng(seed)
    model(make_batch(rng, 2, 4))
    for table in model.embedding_trainable_variables:  # trained-size: a wrong pick shows
        table.assign(rng.normal(0.0, 0.5, table.shape))
    return model


def make_batch(rng, batch, length, samples_per_user=1):
    """Histories with left padding (one all-padding), items without vectors, repeated items (ties)
    and, with ``samples_per_user`` > 1, histories shared by consecutive samples."""
    users = -(-batch // samples_per_user)
    history = rng.integers(1, 25, (users, length))  # few distinct items: many exact ties
    history[:, : length // 3] = np.where(rng.random((users, length // 3)) < 0.7, features.PAD,
                                         history[:, : length // 3])
    history[0] = features.PAD
    owner = np.repeat(np.arange(users), samples_per_user)[:batch]
    x = {name: rng.integers(1, VOCAB, batch) for name in TAOBAO_MM.scalar_features}
    x[features.ITEM_ID][:2] = [7, 1]  # a target without a vector, and OOV
    x[features.HISTORY_ITEMS] = history[owner]
    x[features.HISTORY_CATEGORIES] = np.where(history[owner] > 0, history[owner] % 5 + 1, 0)
    for name in (features.USER_ID, *TAOBAO_MM.profile_features):
        x[name] = x[name][owner]
    return {k: tf.constant(v, tf.int64) for k, v in x.items()}


@pytest.mark.parametrize("batch,length,k", [(9, 30, 6), (5, 4, 6), (12, 60, 50)])
def test_precomputed_search_matches_numpy_bruteforce(batch, length, k):
    table = make_table(1)
    x = make_batch(np.random.default_rng(batch + length), batch, length, samples_per_user=3)
    out = search.gsu_precompute(table, k)(x)
    indices, scores, valid = (out[name].numpy() for name in search.PRECOMPUTED_GSU)
    assert indices.shape == scores.shape == valid.shape == (batch, k)
    assert indices.dtype == np.int32 and valid.dtype == bool
    items = x[features.HISTORY_ITEMS].numpy()
    vectors = table.astype(np.float64) * SCALE
    expected_idx, expected_scores, expected_valid = reference.cosine_topk(
        vectors[x[features.ITEM_ID].numpy()], vectors[items], items != features.PAD, k)
    reference.assert_search_matches((indices, scores, valid),
                                    (expected_idx, expected_scores, expected_valid), atol=1e-6)
    assert (indices < length).all()
    assert not valid[0].any()  # the all-padding history


@pytest.mark.parametrize("dtype", ["int8", "float32"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("batch,length,share", [(16, 40, 4), (7, 12, 1), (6, 3, 2)])
def test_model_output_with_precomputed_search_equals_in_graph(dtype, training, batch, length, share):
    table = make_table(2, dtype)
    model = make_model(table)
    x = make_batch(np.random.default_rng(batch * length), batch, length, share)
    with_search = search.gsu_precompute(table, model.config.top_k)(x)
    in_graph = model(x, training=training).numpy()
    precomputed = model(with_search, training=training).numpy()
    np.testing.assert_allclose(precomputed, in_graph, rtol=0, atol=1e-6)


def test_precomputed_search_trains_like_the_in_graph_search():
    table = make_table(3)
    x = make_batch(np.random.default_rng(5), 12, 20, 3)
    labels = tf.constant(np.random.default_rng(6).integers(0, 2, 12), tf.float32)
    after_step = []
    for inputs in (x, search.gsu_precompute(table, 6)(x)):
        model = make_model(table, seed=1)
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-2))
        model.train_step((inputs, labels))
        after_step.append(model(x, training=False).numpy())
    np.testing.assert_allclose(after_step[0], after_step[1], rtol=0, atol=1e-6)


def _write_shards(tmp_path, rng, shards=2):
    paths = []
    for shard in range(shards):
        users = np.arange(10) + 10 * shard
        lengths, counts = rng.integers(0, 30, 10), rng.integers(1, 5, 10)
        user = {features.USER_KEY: users + 100, features.USER_ID: users + 2}
        for i, name in enumerate(TAOBAO_MM.profile_features):
            user[name] = rng.integers(1, 5, 10) + i
        history = {features.HISTORY_ITEMS: rng.integers(1, 40, lengths.sum())}
        history[features.HISTORY_CATEGORIES] = history[features.HISTORY_ITEMS] % 5 + 1
        samples = {name: rng.integers(1, 20, counts.sum())
                   for name in (features.ITEM_ID, features.ITEM_CATEGORY, *TAOBAO_MM.attribute_features)}
        samples[features.LABEL] = rng.integers(0, 2, counts.sum())
        path = str(tmp_path / f"part-{shard}.tfrecord.gz")
        with ShardWriter(path, TAOBAO_MM) as writer:
            writer.write(UserRecords(user, history, lengths, samples, counts))
        paths.append(path)
    return paths


def test_make_dataset_adds_the_search_and_the_model_agrees(tmp_path):
    table = make_table(4)
    model = make_model(table)
    files = _write_shards(tmp_path, np.random.default_rng(7))
    plain = list(reader.make_dataset(files, 8, history_length=25, deterministic=True))
    searched = list(reader.make_dataset(files, 8, history_length=25, deterministic=True,
                                      precompute_gsu=table, top_k=6))
    assert len(plain) == len(searched) > 1
    for (x, y), (xs, ys) in zip(plain, searched):
        np.testing.assert_array_equal(y, ys)
        for name in x:
            np.testing.assert_array_equal(x[name], xs[name])
        assert xs[search.GSU_INDICES].shape == (len(y), 6)
        np.testing.assert_allclose(model(xs).numpy(), model(x).numpy(), rtol=0, atol=1e-6)


def test_model_refuses_a_precomputed_search_it_cannot_use():
    table = make_table(5)
    x = make_batch(np.random.default_rng(8), 4, 10)
    with_search = search.gsu_precompute(table, 6)(x)
    with pytest.raises(ValueError, match="multimodal GSU only"):
        make_model(table, variant="sim_soft")(with_search)
    with pytest.raises(ValueError, match="K = 6"):
        make_model(table, top_k=5)(with_search)
    with pytest.raises(KeyError, match="need all of"):
        make_model(table)({k: v for k, v in with_search.items() if k != search.GSU_VALID})


def _vectors(table):
    return item_vectors.constant_vectors(table)


@pytest.mark.parametrize("jit", [False, True])
def test_deduplicated_unit_vectors_equal_normalising_every_position(jit):
    table = make_table(6, "float32")
    items = make_batch(np.random.default_rng(9), 10, 30, 2)[features.HISTORY_ITEMS]
    vectors = _vectors(table)
    unit, has_vector = tf.function(lambda: search.unit_item_vectors(items, vectors), jit_compile=jit)()
    expected = tf.math.l2_normalize(tf.gather(table, items), axis=-1)
    np.testing.assert_allclose(unit.numpy(), expected.numpy(), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(has_vector.numpy(), ~np.isin(items.numpy(), NO_VECTOR))
    shared_unit, _ = search.unit_item_vectors(items[:1], vectors)  # batch 1: no deduplication
    np.testing.assert_allclose(shared_unit.numpy(), expected.numpy()[:1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("case", ["repeated histories", "one shared history", "xla"])
def test_item_cosines_equal_numpy_for_each_way_of_scoring(case):
    table = make_table(12)
    x = make_batch(np.random.default_rng(12), 20, 40, samples_per_user=4)
    targets, items = x[features.ITEM_ID], x[features.HISTORY_ITEMS]
    if case == "one shared history":
        items = items[3:4]
    run = lambda: search.item_cosines(targets, items, _vectors(table))  # noqa: E731
    cosine, has_vector = tf.function(run, jit_compile=case == "xla")()
    rows = table.astype(np.float64)
    norms = np.linalg.norm(rows, axis=-1)
    unit = np.divide(rows, norms[:, None], out=np.zeros_like(rows), where=norms[:, None] > 0)
    history = np.broadcast_to(items.numpy(), (20, 40))
    expected = np.einsum("bd,bld->bl", unit[targets.numpy()], unit[history])
    np.testing.assert_allclose(cosine.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(has_vector.numpy(), ~np.isin(items.numpy(), NO_VECTOR))


def test_identical_rows_groups_equal_histories():
    rng = np.random.default_rng(10)
    distinct = rng.integers(0, 5, (6, 7))
    distinct[1] = distinct[0][::-1]  # same items, other order: a different history
    owner = rng.integers(0, 6, 40)
    group, first = (t.numpy() for t in search.identical_rows(tf.constant(distinct[owner])))
    rows = distinct[owner]
    same = (rows[:, None, :] == rows[None, :, :]).all(-1)
    np.testing.assert_array_equal(group[:, None] == group[None, :], same)
    np.testing.assert_array_equal(rows[first[group]], rows)
    assert all(first[g] == np.flatnonzero(group == g).min() for g in range(len(first)))


def test_grouped_search_equals_the_layer_on_repeated_histories():
    rng = np.random.default_rng(11)
    table = make_table(7, "float32")
    x = make_batch(rng, 30, 50, samples_per_user=7)
    items = x[features.HISTORY_ITEMS]
    mask = items != features.PAD
    expected = search.CosineGSU(10)(tf.gather(table, x[features.ITEM_ID]), tf.gather(table, items), mask)
    got = search.cosine_search_items(x[features.ITEM_ID], items, mask, _vectors(table), 10)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[2], expected[2])
    np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=1e-6)
