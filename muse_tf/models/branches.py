"""MuseModel's named branches: embeddings, short-term, lifelong and tower.

Shapes: B = targets scored, L = history length, R = recent behaviours, K = behaviours kept by the
search unit, D = ID embedding width, M = multimodal width. Per-user tensors (histories) may have
batch 1 while per-target ones have batch B.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from muse_tf.config import ModelConfig
from muse_tf.contract import features
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.layers import (
    MLP,
    InPlaceRandomNormal,
    LinearTargetAttention,
    SemanticAwareTargetAttention,
    SimTier,
    TargetAttention,
    gather_history,
)
from muse_tf.layers.search import (
    SearchInputs,
    in_xla,
    item_cosines,
    make_search_unit,
    read_precomputed,
)
from muse_tf.layers.simtier import tier_count


def broadcast_rows(x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Repeats a batch-1 per-user tensor to ``rows`` rows (a no-op when it already has them)."""
    return tf.broadcast_to(x, tf.concat([[rows], tf.shape(x)[1:]], axis=0))


def zeros(rows: tf.Tensor, width: int) -> tf.Tensor:
    """(rows, width) zeros: a tower input the variant does not have (the official code feeds
    zeros rather than dropping the columns, so the tower's shape and initial scale stay fixed)."""
    return tf.zeros(tf.stack([rows, width]), tf.float32)


def simtier_width(config: ModelConfig) -> int:
    """Width of one SimTier feature: tiers x tier embedding width."""
    return tier_count(config.simtier_eps) * config.simtier_dim


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """(B, K, C), (B, K) -> (B, C): mean over valid positions, zeros if none."""
    weights = tf.cast(mask, values.dtype)[..., None]
    return tf.reduce_sum(values * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)


def _gather_rows(rows: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """``tf.gather(rows, positions)`` for (U, D) rows and (N,) int64 positions, as the product of
    an (N, U) sparse one-hot matrix with ``rows``: the same values, and a gradient that sums each
    row's positions by the transposed product. ``tf.gather``'s gradient sums them with
    UnsortedSegmentSum, ~10x slower on CPU (50K x 16 rows: 5.0 against 0.5 ms on TF 2.21)."""
    count = tf.size(positions, out_type=tf.int64)
    one_hot = tf.sparse.SparseTensor(
        tf.stack([tf.range(count), positions], axis=1),
        tf.ones([count], rows.dtype),
        tf.stack([count, tf.shape(rows, out_type=tf.int64)[0]]),
    )
    return tf.sparse.sparse_dense_matmul(one_hot, rows)


class EmbeddingBranch(tf_keras.layers.Layer):
    """One learned table per vocabulary of the feature spec (``FeatureSpec.vocabularies``); every
    ID lookup of the model goes through ``lookup``, so a sharded or differently optimised table
    changes this class only.

    Args:
        vocab_sizes: rows of each table, by vocabulary name.
        dim: D, the width of every table the spec does not size otherwise (Taobao-MM's profile
            features 3-5 get D // 2 as in the official code).
        spec: the feature spec: its vocabularies and their widths.
    """

    def __init__(self, vocab_sizes: Mapping[str, int], dim: int, spec: FeatureSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec  # (a frozen dataclass: no trackable state)
        self.tables = {
            name: tf_keras.layers.Embedding(
                vocab_sizes[name],
                width,
                # The official N(0, 0.001), truncated at +-2 in absolute terms: in effect untruncated
                # (and a third cheaper to draw than a 2-sigma truncation, 3.8 s at 10M x 16).
                embeddings_initializer=InPlaceRandomNormal(stddev=0.001),
                name=f"{name}_embedding",
            )
            for name, width in spec.embedding_widths(dim).items()
        }

    def lookup(self, feature: str, indices: tf.Tensor) -> tf.Tensor:
        """Indices of ``feature`` (a model feature of the spec) -> (..., width) embeddings.

        Each distinct index is looked up once and gathered back to every position: the table's
        gradient then holds one row per distinct index (summed over its positions), not one per
        position (B x L for a history), so the sparse optimizer and the gradient's transfer
        handle the rows a batch touches, not its lookups. Not under XLA, whose ``tf.unique``
        costs more than it saves."""
        table = self.tables[self.spec.vocabulary[feature]]
        if in_xla():  # XLA's tf.unique over SIM-soft's B x L history indices: ~80 s a step
            return table(indices)
        distinct, position = tf.unique(tf.reshape(indices, [-1]), out_idx=tf.int64)
        rows = _gather_rows(table(distinct), position)
        return tf.reshape(rows, tf.concat([tf.shape(indices), [table.output_dim]], 0))

    def behaviour(self, items: tf.Tensor, categories: tf.Tensor) -> tf.Tensor:
        """(...) item and category indices -> (..., 2D): a target's or a behaviour's embedding."""
        return tf.concat(
            [self.lookup(features.ITEM_ID, items), self.lookup(features.ITEM_CATEGORY, categories)], -1
        )


class ShortTermBranch(tf_keras.layers.Layer):
    """Target attention over the R most recent behaviours (``config.short_term_attention``), their
    mean embedding and SimTier over their multimodal similarities to the target (zeros for
    ``din_id_only``)."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.recent_length = config.recent_length
        self.simtier_width = simtier_width(config)
        self.attention = (
            LinearTargetAttention(name="short_term_attention")
            if config.short_term_attention == "linear"
            else TargetAttention(config.din_attention_units, name="short_term_attention")
        )
        self.simtier = (
            SimTier(config.simtier_eps, config.simtier_dim, name="recent_simtier")
            if config.spec.recent_simtier
            else None
        )

    def call(
        self, target: tf.Tensor, history: SearchInputs, embeddings: EmbeddingBranch,
        training: bool | None = None,
    ) -> list[tf.Tensor]:
        """target (B, 2D) -> [attention (B, 2D), mean (B, 2D), SimTier or zeros (B, tiers)]."""
        recent = self.recent_length
        rows = tf.shape(history.target_items)[0]
        recent_mask = broadcast_rows(history.history_mask[:, -recent:], rows)
        recent_emb = embeddings.behaviour(
            broadcast_rows(history.history_items[:, -recent:], rows),
            broadcast_rows(history.history_categories[:, -recent:], rows),
        )
        outputs = [
            self.attention(target, recent_emb, recent_mask, training=training),
            masked_mean(recent_emb, recent_mask),
        ]
        if self.simtier is not None:
            similarity, has_vector = item_cosines(
                history.target_items, history.history_items[:, -recent:], history.multimodal
            )
            outputs.append(self.simtier(similarity, recent_mask & has_vector))
        else:
            outputs.append(zeros(rows, self.simtier_width))
        return outputs


class LifelongBranch(tf_keras.layers.Layer):
    """The search unit named by the variant keeps K of all L behaviours (unless the input pipeline
    already did, ``read_precomputed``); the exact search unit then summarises them: their mean
    embedding, SA-TA or TA, and SimTier over their multimodal similarities, as the variant says;
    what the variant lacks is zeros. Without a search unit (DIN) all three are zeros, as the
    official ``din`` zeroes them."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        spec = config.spec
        self.attention_width = 2 * config.embedding_dim
        self.simtier_width = simtier_width(config)
        self.search_unit = make_search_unit(spec.gsu, config.top_k, name="gsu")
        self.attention = (
            SemanticAwareTargetAttention(
                2 * config.embedding_dim, heads=config.attention_heads,
                semantic=spec.attention == "sata", name="lifelong_attention",
            )
            if spec.attention
            else None
        )
        self.simtier = (
            SimTier(config.simtier_eps, config.simtier_dim, name="lifelong_simtier")
            if spec.simtier
            else None
        )

    def call(
        self,
        target: tf.Tensor,
        history: SearchInputs,
        embeddings: EmbeddingBranch,
        model_inputs: Mapping[str, tf.Tensor],
    ) -> list[tf.Tensor]:
        """target (B, 2D); ``model_inputs`` are read for a precomputed search only.
        -> [mean (B, 2D), attention or zeros (B, 2D), SimTier or zeros (B, tiers)]."""
        result = read_precomputed(model_inputs, self.search_unit)
        if result is None:
            result = self.search_unit.search(history)
        indices, _, valid = result
        kept_emb = embeddings.behaviour(
            gather_history(history.history_items, indices),
            gather_history(history.history_categories, indices),
        )
        similarity, similarity_valid = self.search_unit.multimodal_similarity(history, result)
        rows = tf.shape(target)[0]
        outputs = [masked_mean(kept_emb, valid)]
        if self.attention is not None:
            outputs.append(self.attention(target, kept_emb, valid, similarity))
        else:
            outputs.append(zeros(rows, self.attention_width))
        if self.simtier is not None:
            outputs.append(self.simtier(similarity, similarity_valid))
        else:
            outputs.append(zeros(rows, self.simtier_width))
        return outputs


class Tower(tf_keras.layers.Layer):
    """An optional DCN cross layer, then the Dice MLP to one click logit: (B, C) -> (B,)."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.cross = tfrs.layers.dcn.Cross(name="cross") if config.use_cross else None
        self.mlp = MLP(config.mlp_units, activation="dice", output_units=1, name="mlp")

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if self.cross is not None:
            x = self.cross(x)
        return self.mlp(x, training=training)[:, 0]
