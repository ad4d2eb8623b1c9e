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

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.python.ops import control_flow_util  # the XLA-context test tf_keras also uses

# Below any cosine similarity, so masked positions are chosen last.
INVALID_SCORE = -2.0

# (indices (B, K) int32, scores (B, K), valid (B, K) bool)
SearchResult = tuple[tf.Tensor, tf.Tensor, tf.Tensor]

# Optional model inputs: a multimodal search done ahead of the model (``muse_tf.data.make_dataset``
# with ``precompute_gsu``), one SearchResult per sample. MuseModel uses them instead of searching.
GSU_INDICES, GSU_SCORES, GSU_VALID = "gsu_indices", "gsu_scores", "gsu_valid"
PRECOMPUTED_GSU = (GSU_INDICES, GSU_SCORES, GSU_VALID)


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


def pack_int8(table: np.ndarray) -> np.ndarray:
    """(V, M) int8 -> (V, M / 4) int32: four values per word, the stored form of an int8 table
    (1 byte per value, in a dtype that multi-worker collectives can broadcast; they reject int8)."""
    table = np.ascontiguousarray(table)
    if table.dtype != np.int8 or table.ndim != 2 or table.shape[1] % 4:
        raise ValueError(f"Expected a (V, M) int8 table with M divisible by 4, got {table.dtype} "
                         f"{table.shape}.")
    return table.view(np.int32)


def inverse_norms(table: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(V, M) vectors -> (V,) float32 1 / ||row||, 0 for an all-zero row (an item without a vector).

    Stored beside a frozen table, it turns a looked-up row into a unit vector with one scaling,
    and tells whether an item has a vector without reading its row (``ItemVectors``).
    """
    table = np.asarray(table)
    inverse = np.zeros(len(table), np.float32)
    for start in range(0, len(table), chunk):  # in chunks: a float64 copy of the whole is 8x its size
        squared = np.square(table[start : start + chunk], dtype=np.float64).sum(axis=1)
        inverse[start : start + chunk] = np.divide(
            1.0, np.sqrt(squared), out=np.zeros_like(squared), where=squared > 0
        )
    return inverse


class ItemVectors:
    """A frozen item-vector table read as unit vectors: all that a multimodal cosine needs.

    Scaling a row by its stored inverse norm replaces normalising it after every lookup (a sum of
    squares and a square root per behaviour), and the int8 de-quantisation scale drops out: a
    cosine does not depend on it.

    Args:
        table: (V, dim) float32, or (V, dim / 4) int32 holding int8 values packed by ``pack_int8``.
        inverse_norm_table: (V,) float32 from ``inverse_norms(table)``.
        dim: the vector width.
    """

    def __init__(self, table: tf.Tensor, inverse_norm_table: tf.Tensor, dim: int):
        self.table = table
        self.inverse_norm_table = inverse_norm_table
        self.dim = dim

    def raw(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (..., dim) float32 stored rows, not normalised."""
        rows = tf.gather(self.table, items)
        if rows.dtype == tf.float32:
            return rows
        quantised = tf.reshape(tf.bitcast(rows, tf.int8), tf.concat([tf.shape(items), [self.dim]], 0))
        return tf.cast(quantised, tf.float32)

    def inverse_norm(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (...) 1 / ||row||, 0 for an item without a vector."""
        return tf.gather(self.inverse_norm_table, items)

    def unit(self, items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(...) item indices -> unit vectors (..., dim) (zero where none), has-vector (...)."""
        inverse_norm = self.inverse_norm(items)
        return self.raw(items) * inverse_norm[..., None], inverse_norm > 0


def _in_xla() -> bool:
    """Whether the graph is being compiled by XLA (``jit_compile``), which cannot compile ops
    whose output size depends on the data (``tf.unique``, ``tf.where``)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def unit_item_vectors(items: tf.Tensor, vectors: ItemVectors) -> tuple[tf.Tensor, tf.Tensor]:
    """Unit vectors of behaviours, and whether each has a vector: (B, L) -> (B, L, d), (B, L).

    Histories repeat items (popular items recur), so each *distinct* item is looked up once and
    its unit vector then gathered: per position that leaves a copy of d floats instead of a
    lookup, a cast and a scaling. The values are those of ``vectors.unit(items)``. Not for one
    history (nothing to share) nor under XLA.
    """
    if items.shape[0] == 1 or _in_xla():
        return vectors.unit(items)
    distinct, position = tf.unique(tf.reshape(items, [-1]))
    unit, has_vector = vectors.unit(distinct)
    shape = tf.shape(items)
    return (
        tf.reshape(tf.gather(unit, position), tf.concat([shape, [vectors.dim]], 0)),
        tf.reshape(tf.gather(has_vector, position), shape),
    )


def identical_rows(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Groups equal rows: (B, L) -> group of each row (B,) int32, first row of each group (G,).

    Rows are matched by a 64-bit fingerprint, then checked: should two different rows ever share
    one, every row becomes its own group, so the result is always exact.
    """
    rows = tf.shape(values)[0]
    keys, group = tf.unique(tf.bitcast(tf.fingerprint(values), tf.int64))
    first = tf.math.unsorted_segment_min(tf.range(rows), group, tf.size(keys))
    exact = tf.reduce_all(tf.equal(tf.gather(values, tf.gather(first, group)), values))
    return tf.cond(exact, lambda: (group, first), lambda: (tf.range(rows), tf.range(rows)))


def _grouped_unit_dot(
    target: tf.Tensor, items: tf.Tensor, vectors: ItemVectors
) -> tuple[tf.Tensor, tf.Tensor]:
    """``unit_dot(target, unit_item_vectors(items))`` with each distinct history done once.

    In a training batch the samples of one user share a history (the reader expands each user
    record to its samples), so B rows hold only G distinct histories. Each is looked up once, and
    its targets are scored in one (n x d) @ (d x L) product, instead of B (1 x d) @ (d x L)
    products over a (B, L, d) copy: the largest cost of the search, gone.

    Returns:
        scores (B, L) and has-vector (B, L).
    """
    group, first = identical_rows(items)
    history_unit, has_vector = unit_item_vectors(tf.gather(items, first), vectors)  # (G, L, d)
    order = tf.argsort(group, stable=True)
    sorted_group = tf.gather(group, order)
    by_group = tf.RaggedTensor.from_value_rowids(
        tf.gather(target, order), sorted_group, nrows=tf.shape(first)[0]
    )
    scores = tf.matmul(by_group.to_tensor(), history_unit, transpose_b=True)  # (G, n_max, L)
    slot_sorted = tf.range(tf.shape(group)[0]) - tf.gather(by_group.row_starts(), sorted_group)
    slot = tf.scatter_nd(order[:, None], slot_sorted, tf.shape(group))
    return tf.gather_nd(scores, tf.stack([group, slot], axis=-1)), tf.gather(has_vector, group)


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

    def search_items(
        self,
        target_items: tf.Tensor,
        history_items: tf.Tensor,
        history_mask: tf.Tensor,
        vectors: ItemVectors,
    ) -> SearchResult:
        """The same search from item indices and a frozen table: ``cosine_search_items``."""
        return cosine_search_items(target_items, history_items, history_mask, vectors, self.top_k)


def cosine_search_items(
    target_items: tf.Tensor,
    history_items: tf.Tensor,
    history_mask: tf.Tensor,
    vectors: ItemVectors,
    k: int,
) -> SearchResult:
    """``CosineGSU`` given item indices and a frozen table instead of the (B, L, d) history itself.

    Equals ``CosineGSU(k)(vectors.raw(target_items), vectors.raw(history_items), history_mask)``
    (to float rounding) without its largest costs, by one of three strategies:

    * one history shared by all B targets (serving's ``rank``): only its real behaviours with a
      vector are read, newest first, and scored in one (B x d) @ (d x n) product, so nothing of
      size B x L is masked or reversed (``_shared_history_search``);
    * B histories: each distinct history is scored once (``identical_rows``) and each distinct
      behaviour looked up once (``unit_item_vectors``);
    * under XLA, which needs static shapes: every position, then ``top_k_valid``.

    MuseModel and the input pipeline's precomputed search (``muse_tf.data``) both call this.

    Args:
        target_items: (B,) target item indices.
        history_items: (B, L) or (1, L) item indices.
        history_mask: (B|1, L) bool, True = a real behaviour.
        vectors: the frozen table, e.g. ``MuseModel.multimodal_vectors``.
        k: K.

    Returns:
        As ``CosineGSU``.
    """
    target, _ = vectors.unit(target_items)
    history_mask = tf.cast(history_mask, tf.bool)
    if _in_xla():
        history_unit, has_vector = vectors.unit(history_items)
        return top_k_valid(unit_dot(target, history_unit), history_mask & has_vector, k)
    if history_items.shape[0] == 1:
        return _shared_history_search(target, history_items[0], history_mask[0], vectors, k)
    scores, has_vector = _grouped_unit_dot(target, history_items, vectors)
    return top_k_valid(scores, history_mask & has_vector, k)


def _shared_history_search(
    target: tf.Tensor, items: tf.Tensor, mask: tf.Tensor, vectors: ItemVectors, k: int
) -> SearchResult:
    """Top-K of one history (L,) for B unit targets (B, d), reading only what can be chosen.

    Positions are taken newest first so that ``tf.math.top_k``'s ties (to the lower index) go to
    the newest behaviour; padding and items without a vector are dropped before the lookup.
    """
    length = tf.size(items)
    newest_first = tf.reverse(items, axis=[0])
    inverse_norm = vectors.inverse_norm(newest_first)
    kept = tf.cast(tf.where(tf.reverse(mask, axis=[0]) & (inverse_norm > 0))[:, 0], tf.int32)
    unit = vectors.raw(tf.gather(newest_first, kept)) * tf.gather(inverse_norm, kept)[:, None]
    scores = tf.matmul(target, unit, transpose_b=True)  # (B, n)
    shortfall = tf.maximum(k - tf.size(kept), 0)
    scores = tf.pad(scores, [[0, 0], [0, shortfall]], constant_values=INVALID_SCORE)
    top_scores, slot = tf.math.top_k(scores, k=k, sorted=True)
    # Slots past the n kept positions are padding: position 0, marked invalid.
    position = tf.pad(length - 1 - kept, [[0, shortfall]])
    return tf.gather(position, slot), top_scores, slot < tf.size(kept)


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
