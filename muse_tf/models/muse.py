"""The MUSE CTR model and its baselines, one class configured by ``ModelConfig``.

Shapes: B = targets scored, L = history length, R = recent behaviours (short-term branch),
K = behaviours kept by the search unit, D = ID embedding width, M = multimodal width.

Every per-user input (user features, histories) may have batch size 1 while the per-target inputs
have batch size B: one user's history is then searched once for all B candidate items, never copied
B times (the serving path for 100K-long histories).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from muse_tf import features
from muse_tf.config import ModelConfig
from muse_tf.layers import (
    MLP,
    CategoryGSU,
    CosineGSU,
    EmbeddingGSU,
    SemanticAwareTargetAttention,
    SimTier,
    TargetAttention,
    cosine_similarity,
    gather_history,
    top_k_valid,
)
from muse_tf.layers.search import PRECOMPUTED_GSU, ItemVectors, inverse_norms, pack_int8, unit_dot

# A batch: (features, labels), or features holding `features.LABEL`.
Batch = tuple[Mapping[str, tf.Tensor], tf.Tensor] | Mapping[str, tf.Tensor]

# The official code gives profile features 3-5 half-width embeddings.
_HALF_WIDTH_VOCABULARIES = ("profile_3", "profile_4", "profile_5")


def _broadcast_rows(x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Repeats a batch-1 per-user tensor to ``rows`` rows (a no-op when it already has them)."""
    return tf.broadcast_to(x, tf.concat([[rows], tf.shape(x)[1:]], axis=0))


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """(B, K, C), (B, K) -> (B, C): mean over valid positions, zeros if none."""
    weights = tf.cast(mask, values.dtype)[..., None]
    return tf.reduce_sum(values * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MuseModel(tfrs.models.Model):
    """MUSE: a multimodal search over the lifelong history, then SimTier + SA-TA, then a tower.

    The variant (``config.variant``) chooses the search unit and the lifelong features, so the
    paper's baselines (DIN, SIM-hard, SIM-soft) and ablations are the same class.

    The frozen multimodal table (``vocab_sizes["item"]`` x M, int8 or float32) is a non-trainable
    weight, with the inverse norm of each row beside it: fill both with ``set_multimodal_table``
    before training, read them with ``multimodal_vectors``. The vectors enter the network only
    through cosine similarities, and no gradient reaches them.

    Call arguments:
        inputs: dict of ``features.MODEL_FEATURES`` (int indices, see ``muse_tf.features``);
            scalar features (B,), sequences (B, L) left-padded with PAD; the per-user ones may be
            batch 1. Other keys are ignored.
        training: for Dice's batch normalisation.

    Returns:
        (B,) click logits.
    """

    def __init__(self, config: ModelConfig | Mapping, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        cfg = self.config
        spec = cfg.spec
        dim = cfg.embedding_dim
        self.embeddings = {
            name: tf_keras.layers.Embedding(
                cfg.vocab_sizes[name],
                dim // 2 if name in _HALF_WIDTH_VOCABULARIES else dim,
                embeddings_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.001),
                name=f"{name}_embedding",
            )
            for name in features.VOCABULARIES
        }
        # int8 vectors are stored four to an int32 word: 1 byte per value, and a dtype that
        # multi-worker collectives can broadcast (they reject int8).
        packed = cfg.multimodal_dtype == "int8"
        self.multimodal_table = self.add_weight(
            name="multimodal_table",
            shape=[cfg.vocab_sizes["item"], cfg.multimodal_dim // 4 if packed else cfg.multimodal_dim],
            dtype="int32" if packed else "float32",
            initializer="zeros",
            trainable=False,
        )
        self.multimodal_inverse_norms = self.add_weight(
            name="multimodal_inverse_norms",
            shape=[cfg.vocab_sizes["item"]],
            dtype="float32",
            initializer="zeros",
            trainable=False,
        )
        self.short_term_attention = TargetAttention(cfg.din_attention_units, name="short_term_attention")
        self.recent_simtier = (
            SimTier(cfg.simtier_eps, cfg.simtier_dim, name="recent_simtier") if spec.simtier else None
        )
        self.search = {
            "mm": CosineGSU(cfg.top_k, name="gsu"),
            "id": EmbeddingGSU(cfg.top_k, name="gsu"),
            "id_category": EmbeddingGSU(cfg.top_k, name="gsu"),
            "category": CategoryGSU(cfg.top_k, name="gsu"),
            "mm_id": None,
            None: None,
        }[spec.gsu]
        self.lifelong_attention = (
            SemanticAwareTargetAttention(
                2 * dim, heads=cfg.attention_heads, semantic=spec.attention == "sata",
                name="lifelong_attention",
            )
            if spec.attention
            else None
        )
        self.lifelong_simtier = (
            SimTier(cfg.simtier_eps, cfg.simtier_dim, name="lifelong_simtier")
            if spec.gsu and spec.simtier
            else None
        )
        self.cross = tfrs.layers.dcn.Cross(name="cross") if cfg.use_cross else None
        self.tower = MLP(cfg.mlp_units, activation="dice", output_units=1, name="tower")
        self.embedding_optimizer = None
        # Per-example losses, averaged over the *global* batch in compute_loss, so gradients are
        # scaled right under tf.distribute; `loss_tracker` reports the mean over the epoch.
        self.loss_tracker = tf_keras.metrics.Mean(name="loss")
        self.task = tfrs.tasks.Ranking(
            loss=tf_keras.losses.BinaryCrossentropy(
                from_logits=True, reduction=tf_keras.losses.Reduction.NONE
            ),
            metrics=[tf_keras.metrics.AUC(from_logits=True, name="auc")],
        )

    # -- frozen multimodal table -------------------------------------------------------------
    def set_multimodal_table(self, table: np.ndarray) -> None:
        """Loads the frozen multimodal vectors (V, M), one row per item index (all zero for an item
        without a vector), and their inverse norms."""
        table = np.asarray(table)
        expected = (self.config.vocab_sizes["item"], self.config.multimodal_dim)
        if table.shape != expected:
            raise ValueError(f"multimodal table has shape {table.shape}, model expects {expected}.")
        int8 = self.config.multimodal_dtype == "int8"
        if int8 and table.dtype != np.int8:
            raise ValueError(f"multimodal table must be int8, got {table.dtype}.")
        self.multimodal_inverse_norms.assign(inverse_norms(table))
        self.multimodal_table.assign(pack_int8(table) if int8 else table.astype(np.float32))

    @property
    def multimodal_vectors(self) -> ItemVectors:
        """The frozen multimodal table, read as unit vectors (no gradient)."""
        return ItemVectors(
            tf.stop_gradient(self.multimodal_table),
            tf.stop_gradient(self.multimodal_inverse_norms),
            self.config.multimodal_dim,
        )

    # -- forward -----------------------------------------------------------------------------
    def _embed(self, name: str, indices: tf.Tensor) -> tf.Tensor:
        return self.embeddings[features.VOCABULARY[name]](indices)

    def _behaviour_embedding(self, items: tf.Tensor, categories: tf.Tensor) -> tf.Tensor:
        """(..., ) item and category indices -> (..., 2D)."""
        return tf.concat(
            [self._embed(features.ITEM_ID, items), self._embed(features.ITEM_CATEGORY, categories)], -1
        )

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        missing = [name for name in features.MODEL_FEATURES if name not in inputs]
        if missing:
            raise KeyError(f"MuseModel inputs lack {missing}; see muse_tf.features.")
        x = {name: tf.cast(inputs[name], tf.int32) for name in features.MODEL_FEATURES}
        spec = self.config.spec
        rows = tf.shape(x[features.ITEM_ID])[0]
        items, categories = x[features.HISTORY_ITEMS], x[features.HISTORY_CATEGORIES]
        mask = tf.not_equal(items, features.PAD)

        target = self._behaviour_embedding(x[features.ITEM_ID], x[features.ITEM_CATEGORY])
        parts = [
            target,
            *(self._embed(name, x[name]) for name in features.ITEM_ATTRS),
            *(
                _broadcast_rows(self._embed(name, x[name]), rows)
                for name in (features.USER_ID, *features.USER_PROFILE)
            ),
        ]

        recent = self.config.recent_length
        recent_items = _broadcast_rows(items[:, -recent:], rows)
        recent_mask = _broadcast_rows(mask[:, -recent:], rows)
        recent_emb = self._behaviour_embedding(recent_items, _broadcast_rows(categories[:, -recent:], rows))
        parts.append(self.short_term_attention(target, recent_emb, recent_mask, training=training))
        parts.append(_masked_mean(recent_emb, recent_mask))

        vectors = self.multimodal_vectors
        target_mm = vectors.unit(x[features.ITEM_ID])[0] if spec.simtier or spec.gsu else None
        if self.recent_simtier is not None:
            recent_mm, recent_has_vector = vectors.unit(items[:, -recent:])  # (B|1, R, M)
            recent_sim = unit_dot(target_mm, recent_mm)
            parts.append(self.recent_simtier(recent_sim, recent_mask & recent_has_vector))

        if spec.gsu is not None:
            precomputed = self._precomputed_search(inputs)
            parts.extend(self._lifelong(x, target, target_mm, mask, precomputed))

        mlp_input = tf.concat(parts, axis=-1)
        if self.cross is not None:
            mlp_input = self.cross(mlp_input)
        return self.tower(mlp_input, training=training)[:, 0]

    def _lifelong(
        self,
        x: dict[str, tf.Tensor],
        target: tf.Tensor,
        target_mm: tf.Tensor,
        mask: tf.Tensor,
        precomputed: tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None = None,
    ) -> list[tf.Tensor]:
        """Search the whole history (unless ``precomputed``), then the ESU features of the K found.

        ``target_mm``: (B, M) unit multimodal vectors of the targets.
        """
        spec = self.config.spec
        items, categories = x[features.HISTORY_ITEMS], x[features.HISTORY_CATEGORIES]
        vectors = self.multimodal_vectors
        if precomputed is not None:
            indices, similarity, valid = precomputed
        elif spec.gsu == "mm":
            indices, similarity, valid = self.search.search_items(
                x[features.ITEM_ID], items, mask, vectors
            )
        elif spec.gsu == "category":
            indices, _, valid = self.search(x[features.ITEM_CATEGORY], categories, mask)
        elif spec.gsu == "mm_id":
            history_mm, has_vector = vectors.unit(items)
            scores = unit_dot(target_mm, history_mm) + cosine_similarity(
                tf.stop_gradient(self._embed(features.ITEM_ID, x[features.ITEM_ID])),
                tf.stop_gradient(self._embed(features.HISTORY_ITEMS, items)),
            )
            indices, _, valid = top_k_valid(scores, mask & has_vector, self.config.top_k)
        else:
            item_parts = [self._embed(features.ITEM_ID, x[features.ITEM_ID])]
            history_parts = [self._embed(features.HISTORY_ITEMS, items)]
            if spec.gsu == "id_category":
                item_parts.append(self._embed(features.ITEM_CATEGORY, x[features.ITEM_CATEGORY]))
                history_parts.append(self._embed(features.HISTORY_CATEGORIES, categories))
            indices, _, valid = self.search(item_parts, history_parts, mask)

        top_items = gather_history(items, indices)
        top_emb = self._behaviour_embedding(top_items, gather_history(categories, indices))
        if spec.gsu == "mm":
            similarity_valid = valid  # the search already excluded items without a vector
        else:
            top_mm, top_has_vector = vectors.unit(top_items)
            similarity = unit_dot(target_mm, top_mm)
            similarity_valid = valid & top_has_vector
        outputs = [_masked_mean(top_emb, valid)]
        if self.lifelong_attention is not None:
            outputs.append(self.lifelong_attention(target, top_emb, valid, similarity))
        if self.lifelong_simtier is not None:
            outputs.append(self.lifelong_simtier(similarity, similarity_valid))
        return outputs

    def _precomputed_search(
        self, inputs: Mapping[str, tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None:
        """The multimodal search's result when the input pipeline computed it (``PRECOMPUTED_GSU``).

        The multimodal GSU has no weights, so its top-K depends only on the data and the frozen
        table: ``muse_tf.data.make_dataset(..., precompute_gsu=table)`` computes it with the same
        code (``cosine_search_items``) and the step then skips the search over all L behaviours.
        Without these inputs (e.g. when serving) the model searches in-graph.
        """
        present = [name for name in PRECOMPUTED_GSU if name in inputs]
        if not present:
            return None
        if len(present) != len(PRECOMPUTED_GSU):
            raise KeyError(f"Precomputed search inputs need all of {list(PRECOMPUTED_GSU)}, got {present}.")
        if self.config.spec.gsu != "mm":
            raise ValueError(
                f"Precomputed search results apply to the multimodal GSU only; variant "
                f"{self.config.variant!r} searches with {self.config.spec.gsu!r}."
            )
        indices, scores, valid = (inputs[name] for name in PRECOMPUTED_GSU)
        width = indices.shape[-1]
        if width is not None and width != self.config.top_k:
            raise ValueError(f"Precomputed search has K = {width}, the model top_k = {self.config.top_k}.")
        return tf.cast(indices, tf.int32), tf.cast(scores, tf.float32), tf.cast(valid, tf.bool)

    # -- training ----------------------------------------------------------------------------
    def compile(
        self,
        optimizer: str | tf_keras.optimizers.Optimizer = "adam",
        embedding_optimizer: str | tf_keras.optimizers.Optimizer | None = None,
        **kwargs,
    ) -> None:
        """Keras ``compile``, plus an optional separate optimizer for the embedding tables.

        The paper trains embeddings with Adam at 2e-3 and every other weight at 2e-4.
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.embedding_optimizer = (
            tf_keras.optimizers.get(embedding_optimizer) if embedding_optimizer is not None else None
        )

    def compute_loss(self, inputs: Batch, training: bool = False) -> tf.Tensor:
        """Mean BCE over the global batch (per replica: sum / global batch size)."""
        features_, labels = inputs if isinstance(inputs, tuple) else (inputs, inputs[features.LABEL])
        logits = self(features_, training=training)
        per_example = self.task(
            labels=tf.cast(labels, tf.float32)[:, None], predictions=logits[:, None], training=training
        )
        self.loss_tracker.update_state(per_example)
        return tf.nn.compute_average_loss(per_example)

    def train_step(self, inputs: Batch) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            if self.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        variables = self.trainable_variables
        pairs = list(zip(tape.gradient(loss, variables), variables))
        if self.embedding_optimizer is None:
            self.optimizer.apply_gradients(pairs)
        else:
            tables = {id(v) for layer in self.embeddings.values() for v in layer.trainable_weights}
            self.embedding_optimizer.apply_gradients([p for p in pairs if id(p[1]) in tables])
            self.optimizer.apply_gradients([p for p in pairs if id(p[1]) not in tables])
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, inputs: Batch) -> dict[str, tf.Tensor]:
        self.compute_loss(inputs, training=False)
        return {metric.name: metric.result() for metric in self.metrics}

    def get_config(self) -> dict:
        return {"config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> MuseModel:
        return cls(**config)
