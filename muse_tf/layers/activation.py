"""Dice, the data-adaptive activation of DIN."""

from __future__ import annotations

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class Dice(tf_keras.layers.Layer):
    """Dice(x) = p(x) * x + (1 - p(x)) * alpha * x, with p(x) = sigmoid(BN(x)).

    BN standardises over every axis but the last, without its own scale or offset, so the switch
    point follows the data's mean and variance; alpha (one per channel, init 0) is learned.

    Args:
        epsilon: BN's variance epsilon.
        momentum: BN's moving-average momentum; 0.9 equals PyTorch's default (0.1 in its
            convention), which tracks the batch statistics closely enough for short runs.

    Call arguments:
        inputs: (..., C).
        training: whether BN uses batch statistics.

    Returns:
        Same shape as ``inputs``.
    """

    def __init__(self, epsilon: float = 1e-8, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum
        self.batch_norm = tf_keras.layers.BatchNormalization(
            center=False, scale=False, epsilon=epsilon, momentum=momentum, name="batch_norm"
        )

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("Dice needs a known last dimension.")
        self.alpha = self.add_weight(name="alpha", shape=[channels], initializer="zeros")
        self.batch_norm.build(input_shape)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        p = tf.sigmoid(self.batch_norm(inputs, training=training))
        # = p x + (1 - p) alpha x, in three passes over x's size instead of five
        return inputs * (self.alpha + (1.0 - self.alpha) * p)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}
