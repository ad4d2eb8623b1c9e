"""One seed fixes Python's, NumPy's and TensorFlow's generators, and the initial weights."""

import random

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.jobs import seeding


def _draws():
    draws = (random.random(), np.random.rand(2), tf.random.uniform([2]).numpy())
    layer = tf_keras.layers.Dense(3)
    layer.build((None, 4))
    return (*draws, layer.kernel.numpy())


def test_same_seed_same_draws_and_weights():
    seeding.set_seed(7)
    first = _draws()
    seeding.set_seed(7)
    second = _draws()
    # Python's and NumPy's global generators follow their own seeded references.
    assert first[0] == second[0] == random.Random(7).random()
    np.testing.assert_array_equal(first[1], np.random.RandomState(7).rand(2))
    for a, b in zip(first[1:], second[1:]):
        np.testing.assert_array_equal(a, b)
    seeding.set_seed(8)
    third = _draws()
    assert not np.array_equal(first[2], third[2]) and not np.array_equal(first[3], third[3])


@pytest.mark.parametrize("seed", [1.0, "1", True, None])
def test_non_integer_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="`seed`"):
        seeding.set_seed(seed)
