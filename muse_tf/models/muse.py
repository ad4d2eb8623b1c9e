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

from muse_tf.config import ModelConfig
from muse_tf.contract import features
from muse_tf.layers import ItemVectors, MultimodalTable, SearchInputs
from muse_tf.models.branches import (
    EmbeddingBranch,
    LifelongBranch,
    ShortTermBranch,
    Tower,
    broadcast_rows,
    simtier_width,
    zeros,
)
from muse_tf.models.optimizers import PAPER_EMBEDDING_LEARNING_RATE, SparseAdam

# A batch: (features, labels), or features holding `features.LABEL`.
Batch = tuple[Mapping[str, tf.Tensor], tf.Tensor] | Mapping[str, tf.Tensor]

# Checkpoint keys that only the layout before the named branches wrote (the multimodal table was
# a weight of the model itself, the embedding tables a dict attribute): such a checkpoint's
# variable paths no longer match, and TensorFlow would restore nothing from it without saying so.
OLD_LAYOUT_KEYS = (
    "multimodal_table/.ATTRIBUTES/VARIABLE_VALUE",
    "multimodal_inverse_norms/.ATTRIBUTES/VARIABLE_VALUE",
)


def refuse_old_checkpoint(path: str) -> None:
    """Raises ValueError if the TensorFlow checkpoint at ``path`` (a prefix, or a directory with a
    ``checkpoint`` file) has the old layout (``OLD_LAYOUT_KEYS``, also under a prefix such as
    BackupAndRestore's ``model/``). Anything unreadable as a checkpoint is left to the loader."""
    try:
        keys = [name for name, _ in tf.train.list_variables(path)]
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError):
        return
    old = [key for key in keys if any(key == k or key.endswith("/" + k) for k in OLD_LAYOUT_KEYS)]
    if old:
        raise ValueError(
            f"{path} is a checkpoint of the MuseModel layout before its named branches (it holds "
            f"{old[0]!r}); its variable paths do not match this version, so nothing would be "
            "restored. Retrain, or load it with a muse-tf version from before the change (docs/training.md, "
            "'Checkpoints')."
        )


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MuseModel(tfrs.models.Model):
    """MUSE: a multimodal search over the lifelong history, then SimTier + SA-TA, then a tower.

    The variant (``config.variant``) chooses the search unit and the features the tower receives,
    so the paper's baselines (DIN, SIM-hard, SIM-soft) and ablations are the same class with the
    same tower input layout; a feature a variant lacks is zeros (docs/fidelity.md). The model is
    its named branches (``muse_tf.models.branches``), wired in ``call``:

    * ``embeddings``: the learned ID tables (``embedding_trainable_variables``);
    * ``multimodal``: the frozen multimodal table (``vocab_sizes["item"]`` x M, int8 or float32),
      a ``MultimodalTable``: fill it with ``set_multimodal_table`` before training, read it with
      ``multimodal_vectors``; the vectors enter the network only through cosine similarities,
      and no gradient reaches them;
    * ``short_term``, ``lifelong`` (None for DIN) and ``tower``: every other trainable weight
      (``dense_trainable_variables``).

    Call arguments:
        inputs: dict of ``config.features.model_features`` (int indices, see
            ``muse_tf.contract.features`` and ``muse_tf.contract.feature_spec``);
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
        self.embeddings = EmbeddingBranch(
            cfg.vocab_sizes, cfg.embedding_dim, cfg.features, name="embeddings"
        )
        self.multimodal = MultimodalTable(
            cfg.vocab_sizes["item"], cfg.multimodal_dim, cfg.multimodal_dtype, name="multimodal"
        )
        self.short_term = ShortTermBranch(cfg, name="short_term")
        self.lifelong = LifelongBranch(cfg, name="lifelong") if cfg.spec.gsu is not None else None
        self.tower = Tower(cfg, name="tower")
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

    # -- variable groups ---------------------------------------------------------------------
    @property
    def embedding_trainable_variables(self) -> list[tf.Variable]:
        """The ID embedding tables (the paper's embedding learning rate), in the order of
        ``config.features.vocabularies``."""
        return [v for table in self.embeddings.tables.values() for v in table.trainable_variables]

    @property
    def dense_trainable_variables(self) -> list[tf.Variable]:
        """Every other trainable weight: short-term, lifelong and tower branches."""
        branches = (self.short_term, self.lifelong, self.tower)
        return [v for branch in branches if branch is not None for v in branch.trainable_variables]

    # -- frozen multimodal table -------------------------------------------------------------
    def set_multimodal_table(self, table: np.ndarray) -> None:
        """Loads the frozen multimodal vectors (V, M), one row per item index (all zero for an item
        without a vector), and their inverse norms (``MultimodalTable.set_table``)."""
        self.multimodal.set_table(table)

    @property
    def multimodal_vectors(self) -> ItemVectors:
        """The frozen multimodal table, read as unit vectors (no gradient)."""
        return self.multimodal.vectors

    # -- forward -----------------------------------------------------------------------------
    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        spec = self.config.features
        missing = [name for name in spec.model_features if name not in inputs]
        if missing:
            raise KeyError(f"MuseModel inputs lack {missing}; see muse_tf.contract.feature_spec.")
        x = {name: tf.cast(inputs[name], tf.int32) for name in spec.model_features}
        rows = tf.shape(x[features.ITEM_ID])[0]
        history = SearchInputs(
            target_items=x[features.ITEM_ID],
            history_items=x[features.HISTORY_ITEMS],
            history_mask=tf.not_equal(x[features.HISTORY_ITEMS], features.PAD),
            multimodal=self.multimodal.vectors,
            target_categories=x[features.ITEM_CATEGORY],
            history_categories=x[features.HISTORY_CATEGORIES],
            embeddings=self.embeddings,
        )
        target = self.embeddings.behaviour(x[features.ITEM_ID], x[features.ITEM_CATEGORY])
        parts = [
            target,
            *(self.embeddings.lookup(name, x[name]) for name in spec.attribute_features),
            *(
                broadcast_rows(self.embeddings.lookup(name, x[name]), rows)
                for name in spec.user_features
            ),
        ]
        parts += self.short_term(target, history, self.embeddings, training=training)
        if self.lifelong is not None:
            parts += self.lifelong(target, history, self.embeddings, inputs)
        else:  # DIN: the official code zeroes the K-mean, the attention and the SimTier
            parts.append(zeros(rows, 4 * self.config.embedding_dim + simtier_width(self.config)))
        return self.tower(tf.concat(parts, axis=-1), training=training)

    # -- training ----------------------------------------------------------------------------
    def compile(
        self,
        optimizer: str | tf_keras.optimizers.Optimizer = "adam",
        embedding_optimizer: str | tf_keras.optimizers.Optimizer | None = "sparse_adam",
        **kwargs,
    ) -> None:
        """Keras ``compile``, plus a separate optimizer for the embedding tables.

        ``embedding_optimizer`` defaults to ``SparseAdam`` at the paper's 2e-3, which updates only
        the rows a batch looks up (a step's cost does not grow with the tables); None trains the
        tables with ``optimizer`` too. The paper trains every other weight at 2e-4.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if embedding_optimizer == "sparse_adam":
            embedding_optimizer = SparseAdam(PAPER_EMBEDDING_LEARNING_RATE)
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

    def make_train_function(self, force: bool = False) -> object:
        """Keras ``make_train_function``, with the optimizers' slots created first: a
        ``tf.function`` whose first trace creates variables traces the step a second time, so
        creating them here halves the first step's tracing."""
        if self.built:
            for optimizer, variables in self._optimizer_groups():
                if isinstance(optimizer, tf_keras.optimizers.Optimizer):  # not the legacy ones
                    optimizer.build(variables)
        return super().make_train_function(force)

    def _optimizer_groups(self) -> list[tuple[tf_keras.optimizers.Optimizer, list[tf.Variable]]]:
        """Each optimizer with the variables it trains: the embedding optimizer the tables and
        ``optimizer`` the rest, or ``optimizer`` everything when there is no embedding optimizer."""
        if self.embedding_optimizer is None:
            return [(self.optimizer, self.trainable_variables)]
        return [(self.embedding_optimizer, self.embedding_trainable_variables),
                (self.optimizer, self.dense_trainable_variables)]

    def train_step(self, inputs: Batch) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            if self.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.losses))
        groups = self._optimizer_groups()
        gradients = tape.gradient(loss, [v for _, variables in groups for v in variables])
        # One replica has nothing to sum across replicas; tf-keras's sum would still wrap the
        # dense gradients in tf.distribute's all-reduce, whose custom gradient keeps the traced
        # step, and through it every variable, in TensorFlow's gradient registry for good
        # (tensorflow/tensorflow#97697; also ``layers.attention.silu``).
        aggregate = tf.distribute.get_replica_context().num_replicas_in_sync > 1
        start = 0
        for optimizer, variables in groups:
            optimizer.apply_gradients(zip(gradients[start : start + len(variables)], variables),
                                      experimental_aggregate_gradients=aggregate)
            start += len(variables)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, inputs: Batch) -> dict[str, tf.Tensor]:
        self.compute_loss(inputs, training=False)
        return {metric.name: metric.result() for metric in self.metrics}

    def save_weights(self, filepath: str, *args, **kwargs) -> None:
        """Keras ``save_weights`` without the optimizers' state: the weights are the trained model,
        while Adam's two moments would triple every table's bytes. A resume reads the backup
        (``muse_tf.jobs.backup``), which holds them."""
        self._optimizers_checkpointed = False
        try:
            super().save_weights(filepath, *args, **kwargs)
        finally:
            self._optimizers_checkpointed = True

    def _trackable_children(self, save_type: str = "checkpoint", **kwargs) -> dict:
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint" and not getattr(self, "_optimizers_checkpointed", True):
            optimizers = (self.optimizer, self.embedding_optimizer)
            children = {k: v for k, v in children.items()
                        if not any(v is o for o in optimizers if o is not None)}
        return children

    def load_weights(self, filepath: str, *args, **kwargs) -> object:
        """Keras ``load_weights``, refusing a checkpoint of the old layout (``refuse_old_checkpoint``)."""
        refuse_old_checkpoint(filepath)
        return super().load_weights(filepath, *args, **kwargs)

    def get_config(self) -> dict:
        return {"config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> MuseModel:
        return cls(**config)
