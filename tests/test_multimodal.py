"""The frozen multimodal table layer: stored form, inverse norms, unit vectors."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.layers import MultimodalTable
from muse_tf.ops import item_vectors
from muse_tf.ops.item_vectors import inverse_norms


def _item_table(rng, items=60, dim=32, no_vector=(0, 1, 5, 6)):
    table = rng.integers(-127, 128, (items, dim)).astype(np.int8)
    table[list(no_vector)] = 0
    return table


def _unit_rows(table, idx):
    rows = table[idx].astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-300)


def test_inverse_norms_in_chunks():
    table = _item_table(np.random.default_rng(12))
    inverse = inverse_norms(table, chunk=7)  # several chunks, one partial
    norms = np.linalg.norm(table.astype(np.float64), axis=1)
    np.testing.assert_allclose(inverse[norms > 0], 1 / norms[norms > 0], rtol=1e-7)
    np.testing.assert_array_equal(inverse[norms == 0], 0.0)


@pytest.mark.parametrize("storage", ["int8", "float32"])
def test_layer_and_constant_vectors_are_the_unit_rows(storage):
    table = _item_table(np.random.default_rng(13))
    given = table if storage == "int8" else table / np.float32(127.0)  # a scale leaves cosines
    layer = MultimodalTable(60, 32, storage)
    layer.set_table(given)
    idx = tf.constant([[2, 5], [0, 59]])
    for vectors in (layer.vectors, item_vectors.constant_vectors(given)):
        unit, has_vector = vectors.unit(idx)
        np.testing.assert_allclose(unit.numpy(), _unit_rows(table, idx.numpy()), rtol=0, atol=1e-7)
        np.testing.assert_array_equal(has_vector.numpy(), [[True, False], [False, True]])
        np.testing.assert_allclose(vectors.raw(idx).numpy(), given[idx.numpy()], rtol=0, atol=0)
    assert not layer.trainable_weights and len(layer.weights) == 2
    stored = 32 // 4 if storage == "int8" else 32  # int8: four values per int32 word
    assert layer.weights[0].shape == (60, stored)


def test_bad_tables_are_named_and_config_round_trips():
    layer = MultimodalTable(60, 32, name="mm")
    table = _item_table(np.random.default_rng(14))
    with pytest.raises(ValueError, match="shape"):
        layer.set_table(table[:10])
    with pytest.raises(ValueError, match="int8"):
        layer.set_table(table.astype(np.float32))
    with pytest.raises(ValueError, match="storage"):
        MultimodalTable(60, 32, "int4")
    clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
    assert (type(clone), clone.vocab_size, clone.dim, clone.storage) == (MultimodalTable, 60, 32, "int8")
