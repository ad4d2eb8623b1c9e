"""AUC and GAUC computed exactly over a whole evaluation set, overall and by bucket (NumPy only).

GAUC = sum_u n_u AUC_u / sum_u n_u over users u with both classes, n_u = impressions of u. Ties in
score count one half, as in the Mann-Whitney statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


HISTORY_LENGTH_EDGES = (0, 1, 51, 201, 501, 1001)
POPULARITY_EDGES = (0, 1, 10, 100, 1000)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Human-readable names of the half-open buckets [e_i, e_{i+1}) plus [e_last, inf)."""
    names = [f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}" for lo, hi in zip(edges[:-1], edges[1:])]
    return [*names, f"{edges[-1]}+"]


def gauc_by_bucket(
    scored: dict[str, np.ndarray], values: np.ndarray, edges: Sequence[int]
) -> list[dict]:
    """Splits the scored rows by ``values`` into buckets and summarises each one.

    Args:
        scored: aligned (N,) columns, as ``scoring.predict_dataset`` returns.
        values: (N,) the quantity to bucket by, e.g. ``scored["history_length"]``.
        edges: ascending bucket starts; row n falls in [e_i, e_{i+1}) or, past the last, [e_last,
            inf). Rows below ``edges[0]`` are in no bucket.

    Returns:
        One dict per bucket (empty ones included): ``bucket`` (its label, ``bucket_labels``) and
        ``summarize``'s ``auc``, ``gauc``, ``examples``, ``click_rate``.
    """
    bucket = np.searchsorted(np.asarray(edges), values, side="right") - 1
    rows = []
    for index, name in enumerate(bucket_labels(edges)):
        selected = bucket == index
        subset = {key: column[selected] for key, column in scored.items()}
        rows.append({"bucket": name, **summarize(subset)})
    return rows
