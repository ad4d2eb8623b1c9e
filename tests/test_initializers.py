"""InPlaceRandomNormal against tf-keras's RandomNormal: the same values on every path it takes
(eagerly, in a graph, a shard of a sharded variable, seeded or not), and through serialization;
zeros for tables to be restored."""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.jobs import seeding
from muse_tf.layers import InPlaceRandomNormal
from muse_tf.layers.initializers import tables_to_be_restored
from muse_tf.models.branches import EmbeddingBranch


def _draws(cls, global_seed, calls, **config):
    """The values of ``calls`` successive calls of one initializer, after seeding everything."""
    seeding.set_seed(global_seed)
    initializer = cls(**config)
    return [initializer(**call).numpy() for call in calls]


# tf-keras warns that an unseeded initializer called again repeats its values: both must.
@pytest.mark.filterwarnings("ignore:The initializer")
@pytest.mark.parametrize("config", [
    {"stddev": 0.001},
    {"mean": 0.5, "stddev": 2.0},
    {"stddev": 0.1, "seed": 7},
])
def test_eager_draws_equal_tf_keras(config):
    calls = [{"shape": (300, 16)}, {"shape": [7, 5], "dtype": "float64"}, {"shape": (300, 16)}]
    expected = _draws(tf_keras.initializers.RandomNormal, 3, calls, **config)
    got = _draws(InPlaceRandomNormal, 3, calls, **config)
    for want, have in zip(expected, got):
        assert have.dtype == want.dtype and have.shape == want.shape
        np.testing.assert_array_equal(have, want)
    assert np.std(got[0]) == pytest.approx(config["stddev"], rel=0.1)


def test_shard_of_a_sharded_variable_equals_tf_keras():
    calls = [{"shape": (40, 4), "partition_shape": (10, 4), "partition_offset": (10, 0)},
             {"shape": (40, 4), "partition_shape": (30, 4), "partition_offset": (10, 0)}]
    expected = _draws(tf_keras.initializers.RandomNormal, 5, calls, stddev=1.0, seed=11)
    got = _draws(InPlaceRandomNormal, 5, calls, stddev=1.0, seed=11)
    assert [g.shape for g in got] == [(10, 4), (30, 4)]
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have, want)


def test_inside_a_graph_it_is_tf_keras_call():
    def draw(cls):
        seeding.set_seed(2)
        initializer = cls(stddev=0.5, seed=4)
        return tf.function(lambda: initializer((6, 3)))().numpy()

    np.testing.assert_array_equal(draw(InPlaceRandomNormal), draw(tf_keras.initializers.RandomNormal))


def test_many_tables_draw_without_retracing_warnings(caplog):
    """A model has a table per vocabulary (10 for Taobao-MM): each draw is a function of its own,
    which TensorFlow must not report as excessive retracing."""
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for rows in range(1, 9):
            InPlaceRandomNormal(stddev=0.1, seed=rows)((rows, 4))
    assert "retracing" not in caplog.text


def test_tables_to_be_restored_are_zeros_and_draws_resume_after():
    """Inside ``tables_to_be_restored`` (nested too) a table is zeros of its shape and dtype (a
    shard's, for a sharded variable); after the block, tf-keras's draws again."""
    initializer = InPlaceRandomNormal(stddev=0.1, seed=5)
    with tables_to_be_restored():
        with tables_to_be_restored():
            inner = initializer((6, 3), "float64")
        outer = initializer((40, 4), partition_shape=(10, 4), partition_offset=(10, 0))
    assert inner.dtype == tf.float64 and inner.shape == (6, 3) and not np.any(inner.numpy())
    assert outer.shape == (10, 4) and not np.any(outer.numpy())
    drawn = tf_keras.initializers.RandomNormal(stddev=0.1, seed=5)((6, 3))
    np.testing.assert_array_equal(initializer((6, 3)), drawn)


def test_serialization_round_trip():
    initializer = InPlaceRandomNormal(mean=0.1, stddev=0.01, seed=3)
    restored = tf_keras.initializers.deserialize(tf_keras.initializers.serialize(initializer))
    assert type(restored) is InPlaceRandomNormal
    assert restored.get_config() == {"mean": 0.1, "stddev": 0.01, "seed": 3}


def test_embedding_tables_draw_it():
    from muse_tf.contract.feature_spec import TAOBAO_MM

    branch = EmbeddingBranch({name: 10 for name in TAOBAO_MM.vocabularies}, 8, TAOBAO_MM)
    assert {type(t.embeddings_initializer) for t in branch.tables.values()} == {InPlaceRandomNormal}
