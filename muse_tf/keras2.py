"""Keras 2 mode, the one switch every entry point into muse-tf goes through.

TensorFlow Recommenders needs the Keras 2 API (tf-keras). On TF 2.16 ``tf.keras`` is Keras 3 unless
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported, so ``select()`` must run
before the first ``import tensorflow``: ``muse_tf`` calls it when it is imported, and each package
above it (``pipelines``, ``serving``, ``benchmarks``, the tests) calls it in its ``__init__``,
before any of its modules imports TensorFlow. This module imports nothing heavy.
"""

import os
import sys

LEGACY_KERAS = "TF_USE_LEGACY_KERAS"


def select() -> None:
    """Selects the Keras 2 API for this process (idempotent).

    Raises:
        ImportError: when the environment asks for Keras 3, or TensorFlow was already imported
            with ``tf.keras`` bound to Keras 3.
    """
    os.environ.setdefault(LEGACY_KERAS, "1")
    if os.environ[LEGACY_KERAS] not in ("1", "true", "True"):
        raise ImportError(
            f"muse_tf needs the Keras 2 API, but {LEGACY_KERAS} is set to "
            f"{os.environ[LEGACY_KERAS]!r}. Unset it or set {LEGACY_KERAS}=1."
        )
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        if not tf.keras.__name__.startswith("tf_keras"):
            raise ImportError(
                "TensorFlow was imported before muse_tf and bound tf.keras to Keras 3, which "
                "tensorflow-recommenders cannot use. Import muse_tf before tensorflow, or set "
                f"{LEGACY_KERAS}=1 in the environment before starting Python."
            )
