"""Scoring: a Keras model or a SavedModel export turned into scores over a dataset.

Every "model -> scores" of the library is here: validation, evaluation and ``python -m
muse_tf.predict`` stream ``scored_batches`` of a scorer (``model_scorer`` for a model in inference
mode, ``export_scorer`` for an export's serving signature); the NumPy metrics over the scores are
``muse_tf.jobs.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tf_keras

from muse_tf.contract import features, limits, signatures, vocabulary
from muse_tf.data import iterator_release
from muse_tf.jobs import metrics

Batch = Mapping[str, tf.Tensor]
Scorer = Callable[[Batch], dict[str, np.ndarray]]


def scored_batches(
    score: Scorer, dataset: Iterable
) -> Iterator[dict[str, np.ndarray]]:
    """Scores a ``(features, label)`` dataset batch by batch, so a caller can stream the results.

    Args:
        score: maps a batch's features to named (B,) NumPy outputs, ``logits`` among them.
        dataset: yields ``(features, label (B,))`` with ``user_key`` in the features, as
            ``muse_tf.data.reader.make_dataset`` does.

    Yields:
        Per batch, aligned (B,) arrays: ``score``'s outputs, ``labels`` (int64), ``groups`` (the
        raw ``user_key``), and when the features hold them ``item_id`` (target item index) and
        ``history_length`` (non-PAD behaviours).
    """
    for batch_features, batch_labels in iterator_release.elements(dataset):
        if features.USER_KEY not in batch_features:
            raise KeyError(f"GAUC needs the `{features.USER_KEY}` feature in every batch.")
        columns = dict(score(batch_features))
        columns["labels"] = np.asarray(batch_labels).astype(np.int64)
        columns["groups"] = batch_features[features.USER_KEY].numpy()
        if features.ITEM_ID in batch_features:
            columns["item_id"] = batch_features[features.ITEM_ID].numpy()
        if features.HISTORY_ITEMS in batch_features:
            history = batch_features[features.HISTORY_ITEMS].numpy()
            columns["history_length"] = (history != features.PAD).sum(axis=1)
        yield columns


def model_scorer(model: tf_keras.Model) -> Scorer:
    """The model in inference mode as one traced function, a ``score`` for ``scored_batches``:
    features -> (B,) ``logits`` and ``probability``. Build it once per model and reuse it: each
    new one traces the model again."""

    @tf.function
    def step(batch_features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        logits = model(batch_features, training=False)
        return logits, tf.sigmoid(logits)

    def score(batch_features: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
        logits, probability = step(batch_features)
        return {"logits": logits.numpy(), "probability": probability.numpy()}

    return score


def concatenate(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``scored_batches``' columns over the whole dataset, each concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    for columns in batches:
        for name, values in columns.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def predict_dataset(model: tf_keras.Model, dataset: Iterable) -> dict[str, np.ndarray]:
    """Scores a whole ``(features, label)`` dataset once, in inference mode.

    Args:
        model: maps a feature dict to (B,) logits (a ``MuseModel``).
        dataset: as ``scored_batches`` reads it.

    Returns:
        ``scored_batches``' columns over the N samples, concatenated: ``logits``,
        ``probability``, ``labels``, ``groups``, ``item_id``, ``history_length``.
    """
    return concatenate(scored_batches(model_scorer(model), dataset))


def evaluate_auc_gauc(model: tf_keras.Model, dataset: Iterable) -> dict[str, float]:
    """Exact AUC and GAUC of ``model`` over the whole ``dataset`` (not a per-batch average).

    Returns:
        ``metrics.summarize``'s ``auc``, ``gauc``, counts and ``click_rate``.
    """
    return metrics.summarize(predict_dataset(model, dataset))




def export_scorer(
    export_dir: str, vocabularies: Mapping[str, np.ndarray], max_values: int | None = None
) -> Scorer:
    """A batch scorer through an export's ``serving_default`` signature: the records' indices
    become raw IDs again (PAD and OOV become an ID the vocabulary lacks,
    ``vocabulary.unknown_id``, so the export looks them up as OOV) and histories are right-padded
    with their lengths, as a client sends them. Calls are split so that rows x width stays
    within ``max_values`` (the export's default ``limits.MAX_HISTORY_VALUES``)."""
    max_values = max_values or limits.MAX_HISTORY_VALUES
    signature = tf.saved_model.load(export_dir).signatures[signatures.SERVING_DEFAULT]

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        return {"logits": outputs[signatures.LOGIT].numpy(),
                "probability": outputs[signatures.PROBABILITY].numpy()}

    unknown = {name: vocabulary.unknown_id(ids) for name, ids in vocabularies.items()}
    spec = signatures.export_feature_spec(export_dir)

    def score(batch: Batch, target_items: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``target_items``: the batch's raw target item IDs, fed instead of the records' (whose
        OOV index has lost an ID the export may know)."""
        inputs = {}
        for name in spec.model_features:
            table = spec.vocabulary[name]
            inputs[name] = vocabulary.raw_ids(vocabularies[table], batch[name].numpy(), unknown[table])
        if target_items is not None:
            inputs[features.ITEM_ID] = np.asarray(target_items, np.int64)
        items = batch[features.HISTORY_ITEMS].numpy()
        lengths = (items != features.PAD).sum(axis=1)
        width = items.shape[1]
        # Left-padded rows -> right-padded: row r shifts left by its padding, width - lengths[r].
        shift = (np.arange(width)[None, :] + (width - lengths)[:, None]) % width
        for name in features.SEQUENCE_FEATURES:
            inputs[name] = np.take_along_axis(inputs[name], shift, axis=1)
        inputs[signatures.VALID_HISTORY_LENGTH] = lengths.astype(np.int64)
        rows = max(1, max_values // max(width, 1))
        parts = [call({name: value[start : start + rows] for name, value in inputs.items()})
                 for start in range(0, len(lengths), rows)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    return score
