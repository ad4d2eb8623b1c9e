"""Test session set-up: the Keras 2 API for TFRS, quiet TensorFlow logs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from muse_tf import keras2  # noqa: E402

keras2.select()  # before any test module imports TensorFlow
