"""SimTier: a learned histogram of similarity scores."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

# Float32 rounding moves the cosine of two identical 128-d unit vectors from 1 by ~1e-7; two
# distinct int8 vectors are further from 1 unless they differ by only a few units.
IDENTICAL_MARGIN = 1e-5


def tier_count(eps: float) -> int:
    """T = 2/eps + 2, the number of tiers of width ``eps`` (22 for 0.1); 1/eps must be whole."""
    tiers_per_unit = round(1.0 / eps) if eps > 0 else 0
    if eps <= 0 or abs(tiers_per_unit * eps - 1.0) > 1e-9:
        raise ValueError(f"Invalid value for `eps`: {eps}. 1/eps must be a positive integer.")
    return 2 * tiers_per_unit + 2


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class SimTier(tf_keras.layers.Layer):
    """Summarises K similarities as counts per similarity tier, weighted by learned tier embeddings.

    tier(r) = ceil(r / eps) + 1 / eps over [-1, 1] (tiers 0 .. 2/eps), plus one more tier, 2/eps + 1,
    for identical vectors: r >= 1 - ``IDENTICAL_MARGIN`` (the target itself in the history, or a
    duplicate vector). T = 2/eps + 2 tiers, 22 for eps = 0.1, as in the official code. There the
    last tier catches float rounding above 1, so an item's similarity to itself lands in it or in
    the tier below depending on rounding, which differs between implementations (and here between
    the training, precomputed and serving searches); the margin makes that deterministic, and keeps
    the exact-match signal the rounding carried. The output is log(1 + count_t) * w_t for every
    tier t, flattened; only valid positions are counted.

    Example:
    >>> SimTier()(tf.zeros([4, 50]), tf.ones([4, 50], bool)).shape
    TensorShape([4, 22])

    Args:
        eps: tier width; 1/eps must be a whole number.
        dim: width of each tier's embedding w_t (initialised U(0, 1)).

    Call arguments:
        similarities: (B, K) float cosines.
        mask: (B, K) bool, True = count this position.

    Returns:
        (B, T * dim).
    """

    def __init__(self, eps: float = 0.1, dim: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_tiers = tier_count(eps)
        if dim <= 0:
            raise ValueError(f"Invalid value for `dim`: {dim}. Expected a positive int.")
        self.eps = eps
        self.dim = dim
        self.tiers_per_unit = (self.num_tiers - 2) // 2

    def build(self, input_shape: tf.TensorShape) -> None:
        self.tier_embeddings = self.add_weight(
            name="tier_embeddings",
            shape=[self.num_tiers, self.dim],
            initializer=tf_keras.initializers.RandomUniform(0.0, 1.0),
        )
        super().build(input_shape)

    def tiers(self, similarities: tf.Tensor) -> tf.Tensor:
        """(B, K) similarities -> (B, K) int32 tier indices in [0, T)."""
        similarities = tf.cast(similarities, tf.float32)
        clipped = tf.clip_by_value(similarities, -1.0, 1.0)
        tier = tf.cast(tf.math.ceil(clipped * float(self.tiers_per_unit)), tf.int32) + self.tiers_per_unit
        return tf.where(similarities >= 1.0 - IDENTICAL_MARGIN, self.num_tiers - 1, tier)

    def call(self, similarities: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        one_hot = tf.one_hot(self.tiers(similarities), self.num_tiers, dtype=self.compute_dtype)
        counts = tf.reduce_sum(one_hot * tf.cast(mask, self.compute_dtype)[..., None], axis=1)
        weighted = tf.math.log1p(counts)[..., None] * self.tier_embeddings
        return tf.reshape(weighted, [-1, self.num_tiers * self.dim])

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape([input_shape[0], self.num_tiers * self.dim])

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps, "dim": self.dim}
