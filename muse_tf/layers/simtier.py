"""SimTier: a learned histogram of similarity scores."""

from __future__ import annotations

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class SimTier(tf_keras.layers.Layer):
    """Summarises K similarities as counts per similarity tier, weighted by learned tier embeddings.

    tier(r) = ceil(r / eps) + 1 / eps. The official code keeps T = 2/eps + 2 tiers (22 for eps =
    0.1): [-1, 1] spans tiers 0 .. 2/eps, and the last one catches float rounding above 1. Here r is
    clipped to [-1, 1] first, so an item's similarity to itself (1 up to rounding, which differs
    between the training, precomputed and serving searches) always lands in tier 2/eps, and the
    last tier stays empty; it is kept so the layout (and the 44 features) match the paper's. The
    output is log(1 + count_t) * w_t for every tier t, flattened; only valid positions are counted.

    Example:
    >>> SimTier()(tf.zeros([4, 50]), tf.ones([4, 50], bool)).shape
    TensorShape([4, 22])

    Args:
        eps: tier width; 1/eps must be a whole number.
        dim: width of each tier's embedding w_t (initialised U(0, 1)).

    Call arguments:
        similarities: (B, K) float in [-1, 1].
        mask: (B, K) bool, True = count this position.

    Returns:
        (B, T * dim).
    """

    def __init__(self, eps: float = 0.1, dim: int = 1, **kwargs):
        super().__init__(**kwargs)
        tiers_per_unit = round(1.0 / eps) if eps > 0 else 0
        if eps <= 0 or abs(tiers_per_unit * eps - 1.0) > 1e-9:
            raise ValueError(f"Invalid value for `eps`: {eps}. 1/eps must be a positive integer.")
        if dim <= 0:
            raise ValueError(f"Invalid value for `dim`: {dim}. Expected a positive int.")
        self.eps = eps
        self.dim = dim
        self.tiers_per_unit = tiers_per_unit
        self.num_tiers = 2 * tiers_per_unit + 2

    def build(self, input_shape: tf.TensorShape) -> None:
        self.tier_embeddings = self.add_weight(
            name="tier_embeddings",
            shape=[self.num_tiers, self.dim],
            initializer=tf_keras.initializers.RandomUniform(0.0, 1.0),
        )
        super().build(input_shape)

    def tiers(self, similarities: tf.Tensor) -> tf.Tensor:
        """(B, K) similarities -> (B, K) int32 tier indices in [0, T)."""
        clipped = tf.clip_by_value(tf.cast(similarities, tf.float32), -1.0, 1.0)
        scaled = tf.math.ceil(clipped * float(self.tiers_per_unit))
        return tf.cast(scaled, tf.int32) + self.tiers_per_unit

    def call(self, similarities: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        one_hot = tf.one_hot(self.tiers(similarities), self.num_tiers, dtype=self.compute_dtype)
        counts = tf.reduce_sum(one_hot * tf.cast(mask, self.compute_dtype)[..., None], axis=1)
        weighted = tf.math.log1p(counts)[..., None] * self.tier_embeddings
        return tf.reshape(weighted, [-1, self.num_tiers * self.dim])

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape([input_shape[0], self.num_tiers * self.dim])

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps, "dim": self.dim}
