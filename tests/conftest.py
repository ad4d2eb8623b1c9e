"""Test session set-up: the Keras 2 API for TFRS, quiet TensorFlow logs, the history store fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from muse_tf import keras2  # noqa: E402

keras2.select()  # before any test module imports TensorFlow

# The history store's fixtures: a real redis-server, and `backend` (SQLite and that server).
from tests.history_backends import backend  # noqa: E402, F401
from tests.redis_server import redis_server  # noqa: E402, F401
