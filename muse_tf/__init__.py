"""muse-tf: MUSE lifelong user-interest modelling for CTR prediction in TensorFlow/Keras.

TensorFlow Recommenders needs the Keras 2 API (tf-keras). On TF 2.16 ``tf.keras`` is Keras 3 unless
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is first imported, so this module sets it and
refuses to run on a process where Keras 3 already won.
"""

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _check_legacy_keras() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        raise ImportError(
            "muse_tf needs the Keras 2 API, but TF_USE_LEGACY_KERAS is set to "
            f"{os.environ['TF_USE_LEGACY_KERAS']!r}. Unset it or set TF_USE_LEGACY_KERAS=1."
        )
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        if not tf.keras.__name__.startswith("tf_keras"):
            raise ImportError(
                "TensorFlow was imported before muse_tf and bound tf.keras to Keras 3, which "
                "tensorflow-recommenders cannot use. Import muse_tf before tensorflow, or set "
                "TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
            )


_check_legacy_keras()

__version__ = "0.1.0"
