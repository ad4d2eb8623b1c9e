"""Models: MUSE and the paper's baselines, selected by ``ModelConfig.variant``."""

from muse_tf.models.muse import MuseModel

__all__ = ["MuseModel"]
