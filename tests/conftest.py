"""Test session set-up: the Keras 2 API for TFRS, quiet TensorFlow logs, the `redis_server` fixture."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from muse_tf import keras2  # noqa: E402

keras2.select()  # before any test module imports TensorFlow

from tests.redis_server import redis_server  # noqa: E402, F401  (a real redis-server fixture)
