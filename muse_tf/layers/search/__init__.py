"""General search units (GSU): pick K of a user's L behaviours for one target item.

``units``: the family (one class per strategy, ``SEARCH_UNITS`` by config name); ``precomputed``:
reading the search the input pipeline did. The pure TensorFlow parts, which the input side shares,
are in ``muse_tf.ops``: ``topk`` (the rules the units share), ``item_search`` (the multimodal search
from item indices on its fast paths), ``precompute`` (that search done by the input pipeline).
"""

from muse_tf.layers.search.precomputed import read_precomputed
from muse_tf.layers.search.units import (
    SEARCH_UNITS,
    CategoryGSU,
    CosineGSU,
    EmbeddingGSU,
    EmbeddingLookup,
    IdCategoryGSU,
    MultimodalIdGSU,
    SearchInputs,
    SearchUnit,
    make_search_unit,
)
from muse_tf.ops.item_search import (
    cosine_search_items,
    identical_rows,
    in_xla,
    item_cosines,
    unit_item_vectors,
)
from muse_tf.ops.precompute import GSU_INDICES, GSU_SCORES, GSU_VALID, PRECOMPUTED_GSU, gsu_precompute
from muse_tf.ops.topk import (
    INVALID_SCORE,
    SearchResult,
    cosine_similarity,
    gather_history,
    has_embedding,
    top_k_valid,
    unit_dot,
)

__all__ = [
    "GSU_INDICES",
    "GSU_SCORES",
    "GSU_VALID",
    "INVALID_SCORE",
    "PRECOMPUTED_GSU",
    "SEARCH_UNITS",
    "CategoryGSU",
    "CosineGSU",
    "EmbeddingGSU",
    "EmbeddingLookup",
    "IdCategoryGSU",
    "MultimodalIdGSU",
    "SearchInputs",
    "SearchResult",
    "SearchUnit",
    "cosine_search_items",
    "cosine_similarity",
    "gather_history",
    "gsu_precompute",
    "has_embedding",
    "identical_rows",
    "in_xla",
    "item_cosines",
    "make_search_unit",
    "read_precomputed",
    "top_k_valid",
    "unit_dot",
    "unit_item_vectors",
]
