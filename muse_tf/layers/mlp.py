"""Multi-layer perceptron with Dice (or any Keras) activations."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras

from muse_tf.layers.activation import Dice


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MLP(tf_keras.layers.Layer):
    """Dense layers each followed by an activation, then an optional linear output layer.

    Weights start N(0, 1/fan_in) and biases 0.1, as in the official MUSE code. The output layer
    computes in float32, so logits stay float32 under mixed precision.

    Example:
    >>> MLP([8, 4], output_units=1)(tf.ones([2, 5])).shape
    TensorShape([2, 1])

    Args:
        units: hidden widths.
        activation: ``"dice"`` or any name ``tf_keras.activations.get`` accepts.
        output_units: width of the final linear layer; None for no output layer.

    Call arguments:
        inputs: (..., C).
        training: passed to Dice's batch normalisation.

    Returns:
        (..., output_units), or (..., units[-1]) without an output layer.
    """

    def __init__(
        self,
        units: Sequence[int],
        activation: str = "dice",
        output_units: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        if any(u <= 0 for u in self.units):
            raise ValueError(f"Invalid value for `units`: {units}. Widths must be positive.")
        self.activation = activation
        self.output_units = output_units
        self.dense_layers = [
            tf_keras.layers.Dense(u, **dense_initializers(), name=f"dense_{i}")
            for i, u in enumerate(self.units)
        ]
        self.activations = [
            Dice(name=f"dice_{i}")
            if activation == "dice"
            else tf_keras.layers.Activation(activation, name=f"{activation}_{i}")
            for i in range(len(self.units))
        ]
        self.output_layer = (
            tf_keras.layers.Dense(output_units, dtype="float32", **dense_initializers(), name="output")
            if output_units
            else None
        )

    def call(
        self, inputs: tf.Tensor, training: bool | None = None, first_layer_done: bool = False
    ) -> tf.Tensor:
        """``first_layer_done``: ``inputs`` is already the first dense layer's output, computed
        by a caller in a cheaper way of its own (``TargetAttention``)."""
        x = inputs
        for i, (dense, activation) in enumerate(zip(self.dense_layers, self.activations)):
            x = x if i == 0 and first_layer_done else dense(x)
            x = activation(x, training=training) if isinstance(activation, Dice) else activation(x)
        if self.output_layer is None or (first_layer_done and not self.dense_layers):
            return x
        return self.output_layer(x)

    @property
    def first_layer(self) -> tf_keras.layers.Dense | None:
        """The first dense layer (the output layer when there is no hidden one)."""
        return self.dense_layers[0] if self.dense_layers else self.output_layer

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "output_units": self.output_units,
        }


def dense_initializers() -> dict:
    """The official code's dense initialisation (``FCRepeat.reset_parameters``)."""
    return {
        "kernel_initializer": tf_keras.initializers.VarianceScaling(
            1.0, mode="fan_in", distribution="untruncated_normal"
        ),
        "bias_initializer": tf_keras.initializers.Constant(0.1),
    }
