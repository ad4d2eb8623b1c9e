"""muse-tf: MUSE lifelong user-interest modelling for CTR prediction in TensorFlow/Keras.

Importing the library selects the Keras 2 API (``muse_tf.keras2``) before any of its modules
imports TensorFlow.
"""

from muse_tf import keras2

keras2.select()

__version__ = "0.1.0"
