"""The model's side of MUSE's multimodal search done in the input pipeline
(``muse_tf.ops.precompute``): a model whose unit is a ``CosineGSU`` reads the precomputed result
(``read_precomputed``) and skips the search over all L behaviours; without these inputs (e.g. when
serving) it searches in-graph. Both run ``cosine_search_items`` (``CosineGSU.search``).
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from muse_tf.layers.search.units import CosineGSU, SearchUnit
from muse_tf.ops.precompute import PRECOMPUTED_GSU
from muse_tf.ops.topk import SearchResult


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
