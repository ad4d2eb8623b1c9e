"""Test session set-up: the Keras 2 API for TFRS, quiet TensorFlow logs, the history store fixtures."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from muse_tf import keras2  # noqa: E402

keras2.select()  # before any test module imports TensorFlow

# The history store's fixtures: a real redis-server, and `backend` (SQLite and that server).
from tests.history_backends import backend  # noqa: E402, F401
from tests.redis_server import redis_server  # noqa: E402, F401


@pytest.fixture
def random_normal_draws(monkeypatch):
    """The arguments of every draw by tf-keras's ``RandomNormal`` (every ID table's initializer,
    ``InPlaceRandomNormal``, included) from here on: empty when a build draws no table."""
    import tf_keras

    draws = []
    draw = tf_keras.initializers.RandomNormal.__call__
    monkeypatch.setattr(tf_keras.initializers.RandomNormal, "__call__",
                        lambda self, *args, **kwargs: draws.append(args) or draw(self, *args, **kwargs))
    return draws
