"""MUSE's multimodal search from item indices and the frozen table, fast on every path it runs.

``cosine_search_items`` is ``CosineGSU``'s search (``CosineGSU.search``), used by the model and by
the input pipeline's precomputed search. Shapes: B = targets, L = history length, K = kept,
d = vector width.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # the XLA-context test tf_keras also uses

from muse_tf.ops.item_vectors import ItemVectors
from muse_tf.ops.topk import INVALID_SCORE, SearchResult, top_k_valid, unit_dot


def in_xla() -> bool:
    """Whether the graph is being compiled by XLA (``jit_compile``), which compiles ops whose
    output size depends on the data (``tf.unique``, ``tf.where``) slowly or not at all."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def unit_item_vectors(items: tf.Tensor, vectors: ItemVectors) -> tuple[tf.Tensor, tf.Tensor]:
    """Unit vectors of behaviours, and whether each has a vector: (B, L) -> (B, L, d), (B, L).

    Histories repeat items (popular items recur), so each *distinct* item is looked up once and
    its unit vector then gathered: per position that leaves a copy of d floats instead of a
    lookup, a cast and a scaling. The values are those of ``vectors.unit(items)``. Not for one
    history (nothing to share) nor under XLA.
    """
    if items.shape[0] == 1 or in_xla():
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
    groups = tf.shape(first)[0]
    # Each row's slot among its group's rows: its rank within the group in a stable sort by group.
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(group), group, groups)
    order = tf.argsort(group, stable=True)
    rank = tf.range(tf.size(group)) - tf.gather(tf.cumsum(sizes, exclusive=True), tf.gather(group, order))
    slot = tf.scatter_nd(order[:, None], rank, tf.shape(group))
    where = tf.stack([group, slot], axis=-1)
    most = tf.maximum(tf.reduce_max(sizes), 0)  # (an empty batch's max is the lowest int)
    by_group = tf.scatter_nd(where, target, tf.stack([groups, most, tf.shape(target)[1]]))
    scores = tf.matmul(by_group, history_unit, transpose_b=True)  # (G, n_max, L)
    return tf.gather_nd(scores, where), tf.gather(has_vector, group)


def item_cosines(
    target_items: tf.Tensor, history_items: tf.Tensor, vectors: ItemVectors
) -> tuple[tf.Tensor, tf.Tensor]:
    """The multimodal cosine of each target with each behaviour of its history, and whether the
    behaviour has a vector: (B,), (B|1, L) -> (B, L), (B|1, L).

    B histories are scored a distinct history at a time (``_grouped_unit_dot``); one shared
    history, or any under XLA (static shapes), position by position."""
    target, _ = vectors.unit(target_items)
    if history_items.shape[0] == 1 or in_xla():
        history, has_vector = vectors.unit(history_items)
        return unit_dot(target, history), has_vector
    return _grouped_unit_dot(target, history_items, vectors)


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
      behaviour looked up once (``unit_item_vectors``), by ``item_cosines``;
    * under XLA, which needs static shapes: every position, then ``top_k_valid``
      (``_static_search``).

    MuseModel and the input pipeline's precomputed search both call this (``CosineGSU.search``).

    Args:
        target_items: (B,) target item indices.
        history_items: (B, L) or (1, L) item indices.
        history_mask: (B|1, L) bool, True = a real behaviour.
        vectors: the frozen table (``MultimodalTable.vectors``).
        k: K.

    Returns:
        As ``CosineGSU``.
    """
    history_mask = tf.cast(history_mask, tf.bool)
    if in_xla():
        return _static_search(target_items, history_items, history_mask, vectors, k)
    if history_items.shape[0] == 1:
        target, _ = vectors.unit(target_items)
        return _shared_history_search(target, history_items[0], history_mask[0], vectors, k)
    scores, has_vector = item_cosines(target_items, history_items, vectors)
    return top_k_valid(scores, history_mask & has_vector, k)


def _static_search(
    target_items: tf.Tensor,
    history_items: tf.Tensor,
    history_mask: tf.Tensor,
    vectors: ItemVectors,
    k: int,
) -> SearchResult:
    """Every position scored, for XLA. Raw vectors are multiplied first and the norms applied
    after: on an int8 table each product and partial sum is an integer below 2^24, exact in
    float32 whatever order XLA's kernels add them in, so repeats of one item tie exactly and
    the newest wins (dots of unit vectors came out 1-2 ulps apart by position on TF 2.21)."""
    dots = unit_dot(vectors.raw(target_items), vectors.raw(history_items))
    history_inverse_norm = vectors.inverse_norm(history_items)
    scores = dots * vectors.inverse_norm(target_items)[:, None] * history_inverse_norm
    return top_k_valid(scores, history_mask & (history_inverse_norm > 0), k)


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
