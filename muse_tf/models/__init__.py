"""Models: MUSE and the paper's baselines, selected by ``ModelConfig.variant``."""

from muse_tf.models import tracing
from muse_tf.models.muse import MuseModel

tracing.keep_keras_unconverted()  # before any model is traced: tracing cost (muse_tf.models.tracing)

__all__ = ["MuseModel"]
