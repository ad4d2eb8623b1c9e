"""The general search units (GSU), one class per strategy, and the registry of their config names.

Every unit is a weight-free Keras layer with two faces:

* ``call``: the strategy on tensors (vectors or categories), for use on its own;
* ``search(SearchInputs)``: the strategy on a model's indices, reading the frozen multimodal table
  and the learned embeddings it needs. ``MuseModel`` calls only this, so a new unit is one class
  here and one line in ``SEARCH_UNITS``.

Shapes: B = targets, L = history length, K = kept, d = vector width; a history may have batch 1
(one user, B candidates). The top-K rules (invalid last, ties to the newest, padded results marked
invalid, no gradient) are ``topk``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import tensorflow as tf
import tf_keras

from muse_tf.contract import features
from muse_tf.ops.item_search import cosine_search_items
from muse_tf.ops.item_vectors import ItemVectors
from muse_tf.ops.topk import (
    SearchResult,
    cosine_similarity,
    cosine_top_k,
    gather_history,
    top_k_valid,
    unit_dot,
)


class EmbeddingLookup(Protocol):
    """Where learned ID embeddings come from (``MuseModel.embeddings``)."""

    def lookup(self, feature: str, indices: tf.Tensor) -> tf.Tensor:
        """Indices of ``feature`` (a ``muse_tf.contract.features`` name) -> their embeddings."""


@dataclasses.dataclass(frozen=True)
class SearchInputs:
    """All that a unit may search with.

    Attributes:
        target_items: (B,) item indices of the targets.
        history_items: (B|1, L) item indices, left-padded.
        history_mask: (B|1, L) bool, True = a real behaviour.
        multimodal: the frozen multimodal table as unit vectors.
        target_categories: (B,) category indices of the targets.
        history_categories: (B|1, L) category indices of the behaviours.
        embeddings: the learned ID embeddings.

    The last three may be None where only ``CosineGSU`` searches (the input pipeline).
    """

    target_items: tf.Tensor
    history_items: tf.Tensor
    history_mask: tf.Tensor
    multimodal: ItemVectors
    target_categories: tf.Tensor | None = None
    history_categories: tf.Tensor | None = None
    embeddings: EmbeddingLookup | None = None


class SearchUnit(tf_keras.layers.Layer):
    """The interface of every GSU: keep ``top_k`` behaviours of each target's history.

    Subclasses implement ``search`` and, if their scores are the multimodal similarity itself,
    override ``multimodal_similarity`` to return them instead of recomputing.
    """

    def __init__(self, top_k: int = 50, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"Invalid value for `top_k`: {top_k}. Expected a positive int.")
        self.top_k = top_k

    def search(self, inputs: SearchInputs) -> SearchResult:
        """indices (B, K) int32 positions in the history, scores (B, K), valid (B, K) bool."""
        raise NotImplementedError

    def multimodal_similarity(
        self, inputs: SearchInputs, result: SearchResult
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The multimodal cosine r (B, K) of each kept behaviour with its target, and where it is
        defined (B, K) (kept, and the behaviour has a vector): what SA-TA and SimTier read."""
        indices, _, valid = result
        target, _ = inputs.multimodal.unit(inputs.target_items)
        kept, kept_has_vector = inputs.multimodal.unit(gather_history(inputs.history_items, indices))
        return unit_dot(target, kept), valid & kept_has_vector

    def get_config(self) -> dict:
        return {**super().get_config(), "top_k": self.top_k}


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class CosineGSU(SearchUnit):
    """Keeps the K behaviours whose embedding is most cosine-similar to the target's (MUSE's GSU).

    r_i = cos(v_target, v_i); keep the top K by r. Behaviours whose embedding is all zero (items
    without a multimodal vector) are treated like padding. No weights, no gradient.
    ``search`` reads the frozen multimodal table (``cosine_search_items``); its scores are r.

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
        return cosine_top_k(target, history, history_mask, self.top_k)

    def search(self, inputs: SearchInputs) -> SearchResult:
        return cosine_search_items(
            inputs.target_items, inputs.history_items, inputs.history_mask, inputs.multimodal,
            self.top_k,
        )

    def multimodal_similarity(
        self, inputs: SearchInputs, result: SearchResult
    ) -> tuple[tf.Tensor, tf.Tensor]:
        _, scores, valid = result  # the search already excluded items without a vector
        return scores, valid


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class EmbeddingGSU(SearchUnit):
    """Cosine search over learned ID embeddings (the paper's "ID" GSU; ``search`` reads the item
    embedding).

    The embeddings are the model's current trainable tables; the search takes no gradient, as in
    SIM-soft. Several embeddings (e.g. item and category) are concatenated before the cosine.

    Call arguments:
        target: (B, d) or a list of (B, d_j) parts.
        history: (B|1, L, d) or a list of (B|1, L, d_j) parts, in the same order.
        history_mask: (B|1, L) bool.

    Returns:
        As ``CosineGSU``.
    """

    # (target feature, history feature) pairs whose embeddings ``search`` concatenates.
    PARTS: tuple[tuple[str, str], ...] = ((features.ITEM_ID, features.HISTORY_ITEMS),)

    def call(
        self,
        target: tf.Tensor | Sequence[tf.Tensor],
        history: tf.Tensor | Sequence[tf.Tensor],
        history_mask: tf.Tensor,
    ) -> SearchResult:
        if isinstance(target, list | tuple):
            target = tf.concat(target, axis=-1)
            history = tf.concat(history, axis=-1)
        return cosine_top_k(target, history, history_mask, self.top_k)

    def search(self, inputs: SearchInputs) -> SearchResult:
        indices = {
            features.ITEM_ID: inputs.target_items,
            features.ITEM_CATEGORY: inputs.target_categories,
            features.HISTORY_ITEMS: inputs.history_items,
            features.HISTORY_CATEGORIES: inputs.history_categories,
        }
        lookup = inputs.embeddings.lookup
        target = [lookup(name, indices[name]) for name, _ in self.PARTS]
        history = [lookup(name, indices[name]) for _, name in self.PARTS]
        return self(target, history, inputs.history_mask)


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class IdCategoryGSU(EmbeddingGSU):
    """``EmbeddingGSU`` over the item and category embeddings concatenated (SIM-soft)."""

    PARTS = (
        (features.ITEM_ID, features.HISTORY_ITEMS),
        (features.ITEM_CATEGORY, features.HISTORY_CATEGORIES),
    )


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class CategoryGSU(SearchUnit):
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

    def search(self, inputs: SearchInputs) -> SearchResult:
        return self(inputs.target_categories, inputs.history_categories, inputs.history_mask)


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MultimodalIdGSU(SearchUnit):
    """Keeps the K behaviours with the largest sum of the multimodal and the item-ID cosines
    (the paper's retrieval study). Behaviours without a multimodal vector are never kept.

    Call arguments:
        target: (multimodal (B, M) unit vectors, item ID embeddings (B, d)).
        history: (multimodal (B|1, L, M) unit vectors, item ID embeddings (B|1, L, d)).
        history_mask: (B|1, L) bool, True = a real behaviour with a multimodal vector.

    Returns:
        indices (B, K) int32, scores (B, K) (the sums), valid (B, K) bool; best first.
    """

    def call(
        self,
        target: Sequence[tf.Tensor],
        history: Sequence[tf.Tensor],
        history_mask: tf.Tensor,
    ) -> SearchResult:
        (target_unit, target_id), (history_unit, history_id) = target, history
        scores = unit_dot(tf.stop_gradient(target_unit), tf.stop_gradient(history_unit))
        scores += cosine_similarity(tf.stop_gradient(target_id), tf.stop_gradient(history_id))
        return top_k_valid(scores, history_mask, self.top_k)

    def search(self, inputs: SearchInputs) -> SearchResult:
        target_unit, _ = inputs.multimodal.unit(inputs.target_items)
        history_unit, has_vector = inputs.multimodal.unit(inputs.history_items)
        lookup = inputs.embeddings.lookup
        return self(
            [target_unit, lookup(features.ITEM_ID, inputs.target_items)],
            [history_unit, lookup(features.HISTORY_ITEMS, inputs.history_items)],
            tf.cast(inputs.history_mask, tf.bool) & has_vector,
        )


# ``ModelConfig.gsu`` (and each variant's search unit) -> the class that searches.
SEARCH_UNITS: dict[str, type[SearchUnit]] = {
    "mm": CosineGSU,
    "id": EmbeddingGSU,
    "id_category": IdCategoryGSU,
    "category": CategoryGSU,
    "mm_id": MultimodalIdGSU,
}


def make_search_unit(gsu: str, top_k: int, **kwargs) -> SearchUnit:
    """The unit registered as ``gsu`` keeping ``top_k`` behaviours."""
    if gsu not in SEARCH_UNITS:
        raise ValueError(f"Unknown `gsu` {gsu!r}; choose one of {list(SEARCH_UNITS)}.")
    return SEARCH_UNITS[gsu](top_k, **kwargs)
