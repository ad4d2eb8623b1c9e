"""AUC and GAUC computed exactly over a whole evaluation set.

GAUC = sum_u n_u AUC_u / sum_u n_u over users u with both classes, n_u = impressions of u. Ties in
score count one half, as in the Mann-Whitney statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras

from muse_tf import features, iterator_release


def _group_rank_sums(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray):
    """Per group: positives, negatives and the rank sum of positives (mid-ranks for ties)."""
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_block = new_group | np.r_[True, s[1:] != s[:-1]]
    group_id = np.cumsum(new_group) - 1
    block_id = np.cumsum(new_block) - 1
    group_start = np.flatnonzero(new_group)
    position = np.arange(n) - group_start[group_id] + 1  # 1-based rank within the group
    block_start = np.flatnonzero(new_block)
    block_end = np.r_[block_start[1:], n] - 1
    mid_rank = (position[block_start] + position[block_end]) / 2.0
    rank = mid_rank[block_id]
    num_groups = len(group_start)
    positives = np.bincount(group_id, weights=y, minlength=num_groups)
    totals = np.bincount(group_id, minlength=num_groups).astype(np.float64)
    rank_sum = np.bincount(group_id, weights=rank * y, minlength=num_groups)
    return positives, totals - positives, rank_sum


def _validate(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None) -> None:
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal 1-D shapes.")
    if groups is not None and groups.shape != labels.shape:
        raise ValueError(f"groups {groups.shape} must match labels {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1.")


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impressions-weighted mean of per-group AUC; groups with a single class are skipped.

    Args:
        labels: (N,) 0/1. scores: (N,) any monotone score (logits or probabilities).
        groups: (N,) group key, e.g. the raw user ID.

    Returns:
        GAUC, or NaN when no group has both classes.
    """
    labels, scores, groups = (np.asarray(a).ravel() for a in (labels, scores, groups))
    _validate(labels, scores, groups)
    if labels.size == 0:
        return float("nan")
    positives, negatives, rank_sum = _group_rank_sums(labels.astype(np.float64), scores, groups)
    both = (positives > 0) & (negatives > 0)
    if not both.any():
        return float("nan")
    p, q = positives[both], negatives[both]
    aucs = (rank_sum[both] - p * (p + 1) / 2.0) / (p * q)
    weights = p + q
    return float(np.sum(aucs * weights) / np.sum(weights))


def gauc_users(labels: np.ndarray, groups: np.ndarray) -> int:
    """How many groups have both a click and a non-click: the ones ``group_auc`` averages over
    (GAUC is undefined, NaN, when there are none)."""
    labels, groups = np.asarray(labels).ravel(), np.asarray(groups).ravel()
    if labels.size == 0:
        return 0
    _, group_id = np.unique(groups, return_inverse=True)
    positives = np.bincount(group_id.ravel(), weights=labels)
    totals = np.bincount(group_id.ravel())
    return int(np.count_nonzero((positives > 0) & (positives < totals)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC of (N,) 0/1 ``labels`` and (N,) ``scores`` (ties count one half); NaN when
    only one class is present."""
    labels = np.asarray(labels).ravel()
    return group_auc(labels, scores, np.zeros(len(labels), np.int64))


def scored_batches(
    score: Callable[[dict[str, tf.Tensor]], dict[str, np.ndarray]], dataset: Iterable
) -> Iterator[dict[str, np.ndarray]]:
    """Scores a ``(features, label)`` dataset batch by batch, so a caller can stream the results.

    Args:
        score: maps a batch's features to named (B,) NumPy outputs, ``logits`` among them.
        dataset: yields ``(features, label (B,))`` with ``user_key`` in the features, as
            ``muse_tf.data.make_dataset`` does.

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


def model_scorer(model: tf_keras.Model) -> Callable[[dict[str, tf.Tensor]], dict[str, np.ndarray]]:
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
        ``summarize``'s ``auc``, ``gauc``, counts and ``click_rate``.
    """
    scored = predict_dataset(model, dataset)
    return summarize(scored)


def summarize(scored: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC, GAUC and counts of a ``predict_dataset`` result (or any subset of its rows).

    Returns:
        ``auc`` and ``gauc`` (NaN when undefined), ``examples`` (N), ``users`` (distinct groups),
        ``gauc_users`` (the users GAUC averages over: both a click and a non-click) and
        ``click_rate`` (mean label).
    """
    labels, logits, groups = scored["labels"], scored["logits"], scored["groups"]
    return {
        "auc": auc(labels, logits),
        "gauc": group_auc(labels, logits, groups),
        "examples": int(len(labels)),
        "users": int(len(np.unique(groups))),
        "gauc_users": gauc_users(labels, groups),
        "click_rate": float(labels.mean()) if len(labels) else float("nan"),
    }
