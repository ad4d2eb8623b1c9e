"""The top-K rules every general search unit (GSU) shares, and the cosines they score with.

Shapes: B = targets in the batch, L = history length, K = behaviours kept, d = embedding width.
A history may have batch size B (one history per target) or 1 (one user scoring B candidate items):
the second is served without copying the history B times.

The rules:
* an invalid position (padding, or an item without an embedding) never outranks a valid one;
* ties go to the more recent behaviour (histories are left-padded, newest last);
* when fewer than K positions exist, the result is padded and marked invalid;
* no gradient flows through the search.
"""

from __future__ import annotations

import tensorflow as tf

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
    return unit_dot(tf.math.l2_normalize(target, axis=-1), tf.math.l2_normalize(history, axis=-1))


def unit_dot(target: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
    """Dot products of already-normalised vectors: (B, d), (B|1, L, d) -> (B, L)."""
    return tf.squeeze(tf.matmul(target[:, None, :], history, transpose_b=True), axis=1)


def has_embedding(history: tf.Tensor) -> tf.Tensor:
    """(B, L, d) -> (B, L) bool: False for all-zero rows (items without a vector)."""
    return tf.reduce_any(tf.not_equal(history, 0), axis=-1)


def cosine_top_k(target: tf.Tensor, history: tf.Tensor, history_mask: tf.Tensor, k: int) -> SearchResult:
    """Top-K behaviours by cosine with the target, no gradient: target (B, d), history (B|1, L, d),
    history_mask (B|1, L). All-zero behaviours (no embedding) are treated like padding."""
    target = tf.stop_gradient(target)
    history = tf.stop_gradient(history)
    scores = cosine_similarity(target, history)
    valid = tf.logical_and(tf.cast(history_mask, tf.bool), has_embedding(history))
    return top_k_valid(scores, valid, k)
