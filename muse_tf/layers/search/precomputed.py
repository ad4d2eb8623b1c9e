"""MUSE's multimodal search done in the input pipeline instead of inside every training step.

``CosineGSU`` has no learned weights: its top-K depends only on the sample and the frozen table, so
``gsu_precompute`` can add it to a batch ahead of the model (``muse_tf.data.reader.make_dataset(...,
precompute_gsu=table)``), on the host and overlapping the step. A model whose unit is a
``CosineGSU`` then reads it (``read_precomputed``) and skips the search over all L behaviours;
without these inputs (e.g. when serving) it searches in-graph. Both run ``CosineGSU.search``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from muse_tf.contract import features
from muse_tf.layers.multimodal import MultimodalTable
from muse_tf.layers.search.units import CosineGSU, SearchInputs, SearchUnit
from muse_tf.ops.topk import SearchResult

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
    vectors = MultimodalTable.constant_vectors(table)
    unit = CosineGSU(top_k)

    def add_search(batch: Features) -> Features:
        items = tf.cast(batch[features.HISTORY_ITEMS], tf.int32)
        result = unit.search(
            SearchInputs(
                target_items=tf.cast(batch[features.ITEM_ID], tf.int32),
                history_items=items,
                history_mask=tf.not_equal(items, features.PAD),
                multimodal=vectors,
            )
        )
        return {**batch, **dict(zip(PRECOMPUTED_GSU, result))}

    return add_search


def read_precomputed(inputs: Mapping[str, tf.Tensor], unit: SearchUnit) -> SearchResult | None:
    """The search result the input pipeline added to ``inputs``, or None if it added none.

    Raises:
        KeyError: only some of ``PRECOMPUTED_GSU`` are present.
        ValueError: ``unit`` is not the multimodal search, or its K differs.
    """
    present = [name for name in PRECOMPUTED_GSU if name in inputs]
    if not present:
        return None
    if len(present) != len(PRECOMPUTED_GSU):
        raise KeyError(f"Precomputed search inputs need all of {list(PRECOMPUTED_GSU)}, got {present}.")
    if not isinstance(unit, CosineGSU):
        raise ValueError(
            f"Precomputed search results apply to the multimodal GSU only (CosineGSU); this model "
            f"searches with {type(unit).__name__}."
        )
    indices, scores, valid = (inputs[name] for name in PRECOMPUTED_GSU)
    width = indices.shape[-1]
    if width is not None and width != unit.top_k:
        raise ValueError(f"Precomputed search has K = {width}, the model top_k = {unit.top_k}.")
    return tf.cast(indices, tf.int32), tf.cast(scores, tf.float32), tf.cast(valid, tf.bool)
