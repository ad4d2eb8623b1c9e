"""Keras layers of MUSE and its baselines."""

from muse_tf.layers.activation import Dice
from muse_tf.layers.attention import (
    LinearTargetAttention,
    SemanticAwareTargetAttention,
    TargetAttention,
    masked_softmax,
)
from muse_tf.layers.initializers import InPlaceRandomNormal
from muse_tf.layers.mlp import MLP
from muse_tf.layers.multimodal import MultimodalTable
from muse_tf.layers.search import (
    INVALID_SCORE,
    SEARCH_UNITS,
    CategoryGSU,
    CosineGSU,
    EmbeddingGSU,
    IdCategoryGSU,
    MultimodalIdGSU,
    SearchInputs,
    SearchUnit,
    cosine_similarity,
    gather_history,
    has_embedding,
    top_k_valid,
)
from muse_tf.layers.simtier import SimTier
from muse_tf.ops.item_vectors import ItemVectors

__all__ = [
    "INVALID_SCORE",
    "MLP",
    "SEARCH_UNITS",
    "CategoryGSU",
    "CosineGSU",
    "Dice",
    "EmbeddingGSU",
    "IdCategoryGSU",
    "InPlaceRandomNormal",
    "ItemVectors",
    "LinearTargetAttention",
    "MultimodalIdGSU",
    "MultimodalTable",
    "SearchInputs",
    "SearchUnit",
    "SemanticAwareTargetAttention",
    "SimTier",
    "TargetAttention",
    "cosine_similarity",
    "gather_history",
    "has_embedding",
    "masked_softmax",
    "top_k_valid",
]
