"""MUSE's multimodal search done in the input pipeline instead of inside every training step.

``CosineGSU`` has no learned weights: its top-K depends only on the sample and the frozen table, so
``gsu_precompute`` can add it to a batch ahead of the model (``muse_tf.data.reader.make_dataset(...,
precompute_gsu=table)``), on the host and overlapping the step; the model reads it with
``muse_tf.layers.search.read_precomputed``. Both run ``cosine_search_items`` (``CosineGSU.search``),
here with no Keras layer, so the input side imports none.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from muse_tf.contract import features
from muse_tf.ops.item_search import cosine_search_items
from muse_tf.ops.item_vectors import constant_vectors

# The optional model inputs, one SearchResult per sample: indices (B, K) int32, scores (B, K)
# float32, valid (B, K) bool.
GSU_INDICES, GSU_SCORES, GSU_VALID = "gsu_indices", "gsu_scores", "gsu_valid"
PRECOMPUTED_GSU = (GSU_INDICES, GSU_SCORES, GSU_VALID)

Features = dict[str, tf.Tensor]


def gsu_precompute(table: np.ndarray, top_k: int) -> Callable[[Features], Features]:
    """A function adding ``PRECOMPUTED_GSU`` to a batch of model inputs.

    Args:
        table: the frozen multimodal table (V, M) exactly as given to
            ``MuseModel.set_multimodal_table`` (int8 or float32).
        top_k: K; must equal the model's ``top_k``.
    """
    vectors = constant_vectors(table)

    def add_search(batch: Features) -> Features:
        items = tf.cast(batch[features.HISTORY_ITEMS], tf.int32)
        result = cosine_search_items(
            tf.cast(batch[features.ITEM_ID], tf.int32), items, tf.not_equal(items, features.PAD),
            vectors, top_k,
        )
        return {**batch, **dict(zip(PRECOMPUTED_GSU, result))}

    return add_search
