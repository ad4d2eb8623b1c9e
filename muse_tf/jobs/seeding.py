"""One seed for Python's, NumPy's and TensorFlow's global generators, on every supported Python.

``tf_keras.utils.set_random_seed`` does the same but, in tf-keras 2.16-2.18, also installs a seed
generator whose ``randint(1, 1e9)`` Python 3.12 rejects (a float bound), so it is not used here.
"""

import random

import numpy as np
import tensorflow as tf


def set_seed(seed: int) -> None:
    """Seeds ``random``, ``numpy.random`` and ``tf.random`` (weight initialisers follow from these)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"Invalid value for `seed`: {seed!r} (an int is required).")
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
