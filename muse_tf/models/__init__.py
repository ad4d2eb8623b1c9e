"""Models: MUSE and the paper's baselines, selected by ``ModelConfig.variant``."""

from muse_tf import tracing
from muse_tf.models.muse import MuseModel

tracing.keep_keras_unconverted()  # before any model is traced: tracing cost (muse_tf.tracing)

__all__ = ["MuseModel"]
