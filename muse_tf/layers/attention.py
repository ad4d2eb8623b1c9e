"""Target attention over behaviour sequences.

Shapes: B = targets, K = behaviours attended over, Dq / Dk = query / key widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras

from muse_tf.layers.mlp import MLP, dense_initializers


def silu(x: tf.Tensor) -> tf.Tensor:
    """SiLU, x * sigmoid(x), differentiated by autodiff. ``tf.nn.silu``'s custom gradient is kept
    in TensorFlow's global gradient registry with the graph it was traced in
    (tensorflow/tensorflow#97697): each model trained in a process then stayed in memory with
    its tables and optimizer slots, e.g. the trained model beside the one evaluation loads."""
    return x * tf.sigmoid(x)


def masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis among ``mask``-True positions; a row with none gives zeros.

    Args:
        scores: (..., K) float.
        mask: bool, broadcastable to ``scores``; True = take part in the softmax.

    Returns:
        (..., K) weights summing to 1 over the valid positions (0 elsewhere).
    """
    mask = tf.cast(mask, tf.bool)
    scores = tf.where(mask, scores, tf.constant(scores.dtype.min, scores.dtype))
    weights = tf.nn.softmax(scores, axis=-1)
    return tf.where(mask, weights, tf.zeros_like(weights))


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class SemanticAwareTargetAttention(tf_keras.layers.Layer):
    """Target attention whose ID score is fused with a multimodal similarity (MUSE's SA-TA).

    q = SiLU(W_q e_target), k_i = SiLU(W_k e_i), v_i = SiLU(W_v e_i), a_id,i = k_i . q (per head).
    With ``semantic=True`` the score is a_i = g1 a_id,i + g2 (r_i / tau) + g3 a_id,i (r_i / tau)
    with g1..g3 (init 1) and tau (init ``tau_init``) learned; otherwise a_i = a_id,i (plain target
    attention). Output: softmax over the valid positions of a, times v, heads concatenated.

    Example:
    >>> att = SemanticAwareTargetAttention(units=8)
    >>> att(tf.ones([2, 6]), tf.ones([2, 5, 6]), tf.ones([2, 5], bool), tf.zeros([2, 5])).shape
    TensorShape([2, 8])

    Args:
        units: width of q, k and v (and of the output); divisible by ``heads``.
        heads: attention heads (the paper uses 1).
        semantic: fuse the similarity into the score.
        tau_init: initial temperature of the similarity.

    Call arguments:
        query: (B, Dq) target embedding.
        keys: (B, K, Dk) behaviour embeddings (also the values).
        mask: (B, K) bool, True = attend to this behaviour.
        similarities: (B, K) multimodal cosine r; required when ``semantic``.

    Returns:
        (B, units); zeros for a row with no valid behaviour.
    """

    def __init__(
        self, units: int, heads: int = 1, semantic: bool = True, tau_init: float = 0.1, **kwargs
    ):
        super().__init__(**kwargs)
        if units <= 0 or heads <= 0 or units % heads:
            raise ValueError(
                f"Invalid `units`/`heads`: {units}/{heads}. Both positive, units divisible by heads."
            )
        self.units = units
        self.heads = heads
        self.semantic = semantic
        self.tau_init = tau_init
        self.query_dense = tf_keras.layers.Dense(units, activation=silu, name="query")
        self.key_dense = tf_keras.layers.Dense(units, activation=silu, name="key")
        self.value_dense = tf_keras.layers.Dense(units, activation=silu, name="value")

    def build(self, input_shape: tf.TensorShape | None = None) -> None:
        if self.semantic:
            self.gates = self.add_weight(name="gates", shape=[3], initializer="ones")
            self.tau = self.add_weight(
                name="tau", shape=[], initializer=tf_keras.initializers.Constant(self.tau_init)
            )
        super().build(input_shape)

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        return tf.reshape(x, tf.concat([shape[:-1], [self.heads, self.units // self.heads]], 0))

    def call(
        self,
        query: tf.Tensor,
        keys: tf.Tensor,
        mask: tf.Tensor,
        similarities: tf.Tensor | None = None,
    ) -> tf.Tensor:
        q = self._split_heads(self.query_dense(query))  # (B, H, d)
        k = self._split_heads(self.key_dense(keys))  # (B, K, H, d)
        v = self._split_heads(self.value_dense(keys))
        # Products and sums, not einsum: its batched (1 x d) products cost more, backward most.
        scores = tf.transpose(tf.reduce_sum(q[:, None] * k, axis=-1), [0, 2, 1])  # (B, H, K)
        if self.semantic:
            if similarities is None:
                raise ValueError("SemanticAwareTargetAttention(semantic=True) needs `similarities`.")
            r = tf.cast(similarities, scores.dtype)[:, None, :] / self.tau
            g1, g2, g3 = tf.unstack(self.gates)
            scores = g1 * scores + g2 * r + g3 * scores * r
        weights = masked_softmax(scores, mask[:, None, :])
        out = tf.reduce_sum(tf.transpose(weights, [0, 2, 1])[..., None] * v, axis=1)  # (B, H, d)
        return tf.reshape(out, [-1, self.units])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "heads": self.heads,
            "semantic": self.semantic,
            "tau_init": self.tau_init,
        }


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class LinearTargetAttention(tf_keras.layers.Layer):
    """The official code's short-term attention (its ``realtime_att``): linear projections, a
    dot-product score and a softmax.

    q = W_q e_target + b_q, k_i = W_k e_i + b_k (no activation); a_i = k_i . q (no scaling),
    softmax over the valid positions; output sum_i a_i k_i (the projected keys are the values).
    Weights start N(0, 1/fan_in) and biases 0.1, as the official ``FCRepeat``.

    The keys are never projected one by one: k_i . q = e_i . (W_k^T q) + b_k . q, whose second
    term is the same for every behaviour of a row (the softmax drops it), and sum_i a_i k_i =
    W_k (sum_i a_i e_i) + b_k sum_i a_i; so the only per-behaviour work is two products of width D
    (equal to the direct form to float rounding).

    Example:
    >>> LinearTargetAttention()(tf.ones([2, 4]), tf.ones([2, 3, 4]), tf.ones([2, 3], bool)).shape
    TensorShape([2, 4])

    Args:
        units: width of q and k (and of the output); None = the query's width (as the official).

    Call arguments:
        query: (B, Dq) target embedding.
        keys: (B, K, D) behaviour embeddings, the query's width (as the official).
        mask: (B, K) bool, True = a real behaviour.
        training: unused (nothing here depends on it).

    Returns:
        (B, units); zeros for a row with no valid behaviour.
    """

    def __init__(self, units: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if units is not None and units <= 0:
            raise ValueError(f"Invalid value for `units`: {units}. Expected a positive int or None.")
        self.units = units

    def build(self, input_shape: tf.TensorShape) -> None:  # the query's shape
        width = self.units or int(input_shape[-1])
        self.query_dense = tf_keras.layers.Dense(width, **dense_initializers(), name="query")
        self.key_dense = tf_keras.layers.Dense(width, **dense_initializers(), name="key")
        for dense in (self.query_dense, self.key_dense):
            with tf.name_scope(dense.name):
                dense.build(input_shape)
        super().build(input_shape)

    def call(
        self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        q = self.query_dense(query)  # (B, units)
        kernel, bias = self.key_dense.kernel, self.key_dense.bias
        query_in_key_space = tf.matmul(q, kernel, transpose_b=True)  # (B, D): W_k^T q
        scores = tf.reduce_sum(keys * query_in_key_space[:, None, :], -1)  # (B, K), less b_k . q
        weights = masked_softmax(scores, mask)
        attended = tf.reduce_sum(weights[..., None] * keys, axis=1)  # (B, D)
        return tf.matmul(attended, kernel) + tf.reduce_sum(weights, -1, keepdims=True) * bias

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class TargetAttention(tf_keras.layers.Layer):
    """DIN's activation unit: an MLP scores each behaviour against the target.

    score_i = MLP([q, k_i, q - k_i, q * k_i]); output = sum_i w_i k_i with w_i = score_i on valid
    positions (DIN keeps raw scores) or, with ``use_softmax``, their softmax over valid positions.

    Example:
    >>> TargetAttention([8])(tf.ones([2, 4]), tf.ones([2, 3, 4]), tf.ones([2, 3], bool)).shape
    TensorShape([2, 4])

    Args:
        hidden_units: widths of the scoring MLP.
        activation: its activation (``"dice"`` as in DIN, or a Keras name).
        use_softmax: normalise the scores.

    Call arguments:
        query: (B, D) target embedding.
        keys: (B, K, D) behaviour embeddings, same width as the query.
        mask: (B, K) bool, True = a real behaviour.
        training: for Dice.

    Returns:
        (B, D); zeros for a row with no valid behaviour.
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = (64, 32),
        activation: str = "dice",
        use_softmax: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_units = list(hidden_units)
        self.activation = activation
        self.use_softmax = use_softmax
        self.scorer = MLP(self.hidden_units, activation=activation, output_units=1, name="scorer")

    def build(self, input_shape: tf.TensorShape) -> None:
        # The scorer's first layer is applied by ``_first_layer``, never called: built here.
        first = self.scorer.first_layer
        with tf.name_scope(self.scorer.name), tf.name_scope(first.name):
            first.build(tf.TensorShape([None, 4 * int(input_shape[-1])]))
        super().build(input_shape)

    def _first_layer(self, query: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
        """The scorer's first dense layer on [q, k, q - k, q * k] (B, K, 4D) without building that
        input: with its kernel in four blocks W1..W4 it is q (W1 + W3) + k (W2 - W3) + (q * k) W4
        + b, the query's term once per row instead of once per behaviour; half the products."""
        dense = self.scorer.first_layer
        w_query, w_key, w_difference, w_product = tf.split(dense.kernel, 4, axis=0)
        per_row = tf.matmul(query, w_query + w_difference)
        if dense.use_bias:
            per_row = tf.nn.bias_add(per_row, dense.bias)
        per_behaviour = tf.tensordot(
            tf.concat([keys, query[:, None, :] * keys], -1),
            tf.concat([w_key - w_difference, w_product], 0),
            1,
        )
        return dense.activation(per_behaviour + per_row[:, None, :])

    def call(
        self, query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        hidden = self._first_layer(query, keys)
        scores = self.scorer(hidden, training=training, first_layer_done=True)[..., 0]
        scores = tf.cast(scores, keys.dtype)
        if self.use_softmax:
            weights = masked_softmax(scores, mask)
        else:
            weights = tf.where(tf.cast(mask, tf.bool), scores, tf.zeros_like(scores))
        return tf.reduce_sum(weights[..., None] * keys, axis=1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "activation": self.activation,
            "use_softmax": self.use_softmax,
        }
