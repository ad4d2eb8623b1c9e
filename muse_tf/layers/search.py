"""General search units (GSU): pick K of a user's L behaviours for one target item.

Shapes: B = targets in the batch, L = history length, K = behaviours kept, d = embedding width.
A history may have batch size B (one history per target) or 1 (one user scoring B candidate items):
the second is served without copying the history B times.

Rules shared by every unit here:
* an invalid position (padding, or an item without an embedding) never outranks a valid one;
* ties go to the more recent behaviour (histories are left-padded, newest last);
* when fewer than K positions exist, the result is padded and marked invalid;
* no gradient flows through the search.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras

# Below any cosine similarity, so masked positions are chosen last.
INVALID_SCORE = -2.0

# (indices (B, K) int32, scores (B, K), valid (B, K) bool)
SearchResult = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


def gather_history(values: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Gathers per-behaviour values at search results.

    Args:
        values: (B, L, ...) or (1, L, ...) for a history shared by all B rows.
        indices: (B, K) int32 positions in [0, L).

    Returns:
        (B, K, ...) values at ``indices``; a shared history is read in place, not tiled.
    """
    values = tf.convert_to_tensor(values)
    indices = tf.convert_to_tensor(indices, tf.int32)
    shape = tf.shape(values)
    length = shape[1]
    per_row = tf.cast(shape[0] > 1, tf.int32)
    offsets = tf.range(tf.shape(indices)[0], dtype=tf.int32) * length * per_row
    flat = tf.reshape(values, tf.concat([[-1], shape[2:]], axis=0))
    return tf.gather(flat, indices + offsets[:, None])


def top_k_valid(scores: tf.Tensor, valid: tf.Tensor, k: int) -> SearchResult:
    """Top-K of ``scores`` among ``valid`` positions, ties to the newest.

    Args:
        scores: (B, L) float; values of valid positions must exceed ``INVALID_SCORE``.
        valid: (B, L) or (1, L) bool.
        k: K, may exceed L.

    Returns:
        indices (B, K) int32, scores (B, K) (``INVALID_SCORE`` where invalid) and valid (B, K) bool,
        best first.
    """
    scores = tf.where(valid, scores, tf.constant(INVALID_SCORE, scores.dtype))
    length = tf.shape(scores)[1]
    # top_k breaks ties towards the lower index; reversing makes that the newest behaviour.
    newest_first = tf.reverse(scores, axis=[1])
    newest_first = tf.pad(
        newest_first, [[0, 0], [0, tf.maximum(k - length, 0)]], constant_values=INVALID_SCORE
    )
    top_scores, reversed_idx = tf.math.top_k(newest_first, k=k, sorted=True)
    indices = length - 1 - reversed_idx
    exists = indices >= 0
    indices = tf.maximum(indices, 0)
    top_valid = gather_history(valid[..., None], indices)[..., 0] & exists
    return indices, top_scores, top_valid


def cosine_similarity(target: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
    """Cosine of each target with each behaviour: target (B, d), history (B|1, L, d) -> (B, L).

    A zero vector has similarity 0 with everything.
    """
    target = tf.math.l2_normalize(target, axis=-1)
    history = tf.math.l2_normalize(history, axis=-1)
    return tf.squeeze(tf.matmul(target[:, None, :], history, transpose_b=True), axis=1)


def has_embedding(history: tf.Tensor) -> tf.Tensor:
    """(B, L, d) -> (B, L) bool: False for all-zero rows (items without a vector)."""
    return tf.reduce_any(tf.not_equal(history, 0), axis=-1)


class _SearchUnit(tf_keras.layers.Layer):
    """Base: holds ``top_k`` and its config."""

    def __init__(self, top_k: int = 50, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"Invalid value for `top_k`: {top_k}. Expected a positive int.")
        self.top_k = top_k

    def get_config(self) -> dict:
        return {**super().get_config(), "top_k": self.top_k}


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class CosineGSU(_SearchUnit):
    """Keeps the K behaviours whose embedding is most cosine-similar to the target's (MUSE's GSU).

    r_i = cos(v_target, v_i); keep the top K by r. Behaviours whose embedding is all zero (items
    without a multimodal vector) are treated like padding. No weights, no gradient.

    Example:
    >>> gsu = CosineGSU(top_k=2)
    >>> idx, scores, valid = gsu(tf.ones([3, 8]), tf.random.normal([3, 5, 8]), tf.ones([3, 5], bool))
    >>> idx.shape, scores.shape, valid.shape
    (TensorShape([3, 2]), TensorShape([3, 2]), TensorShape([3, 2]))

    Call arguments:
        target: (B, d) target embeddings.
        history: (B, L, d), or (1, L, d) for one history shared by all B targets.
        history_mask: (B, L) or (1, L) bool, True = a real behaviour.

    Returns:
        indices (B, K) int32 positions in the history, scores (B, K) cosine similarities
        (``INVALID_SCORE`` where invalid), valid (B, K) bool; sorted by score, best first.
    """

    def call(self, target: tf.Tensor, history: tf.Tensor, history_mask: tf.Tensor) -> SearchResult:
        target = tf.stop_gradient(target)
        history = tf.stop_gradient(history)
        scores = cosine_similarity(target, history)
        valid = tf.logical_and(tf.cast(history_mask, tf.bool), has_embedding(history))
        return top_k_valid(scores, valid, self.top_k)


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class EmbeddingGSU(CosineGSU):
    """Cosine search over learned ID embeddings (SIM-soft; the paper's "ID" GSU).

    The embeddings are the model's current trainable tables; the search takes no gradient, as in
    SIM-soft. Several embeddings (e.g. item and category) are concatenated before the cosine.

    Call arguments:
        target: (B, d) or a list of (B, d_j) parts.
        history: (B|1, L, d) or a list of (B|1, L, d_j) parts, in the same order.
        history_mask: (B|1, L) bool.

    Returns:
        As ``CosineGSU``.
    """

    def call(
        self,
        target: tf.Tensor | Sequence[tf.Tensor],
        history: tf.Tensor | Sequence[tf.Tensor],
        history_mask: tf.Tensor,
    ) -> SearchResult:
        if isinstance(target, list | tuple):
            target = tf.concat(target, axis=-1)
            history = tf.concat(history, axis=-1)
        return super().call(target, history, history_mask)


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class CategoryGSU(_SearchUnit):
    """Keeps the K most recent behaviours in the target's category (SIM-hard).

    Call arguments:
        target_category: (B,) int category index of each target.
        history_categories: (B|1, L) int category index of each behaviour.
        history_mask: (B|1, L) bool, True = a real behaviour.

    Returns:
        indices (B, K) int32, scores (B, K) (0 for a match, ``INVALID_SCORE`` otherwise),
        valid (B, K) bool; most recent first.
    """

    def call(
        self, target_category: tf.Tensor, history_categories: tf.Tensor, history_mask: tf.Tensor
    ) -> SearchResult:
        match = tf.equal(history_categories, tf.cast(target_category, history_categories.dtype)[:, None])
        valid = tf.logical_and(match, tf.cast(history_mask, tf.bool))
        return top_k_valid(tf.zeros(tf.shape(valid), tf.float32), valid, self.top_k)
