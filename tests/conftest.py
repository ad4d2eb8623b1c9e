"""Test session set-up: the Keras 2 API for TFRS, quiet TensorFlow logs."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import muse_tf  # noqa: E402,F401  (must precede any TensorFlow import)
