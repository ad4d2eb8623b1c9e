"""Exact AUC/GAUC against brute-force pairwise counting."""

import numpy as np
import pytest
import tensorflow as tf

from muse_tf.contract import features
from muse_tf.jobs.metrics import auc, group_auc
from muse_tf.jobs.scoring import evaluate_auc_gauc
from tests import reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 400
    groups = rng.integers(0, 30, n) * 7919 + 10**15  # large, non-contiguous keys
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(size=n) + labels * 0.5, 1)  # rounding makes many ties
    expected = reference.group_auc_bruteforce(labels, scores, groups)
    assert group_auc(labels, scores, groups) == pytest.approx(expected, abs=1e-12)


def test_single_class_groups_are_skipped():
    labels = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.1, 0.3, 0.4, 0.8, 0.7])
    groups = np.array([1, 1, 2, 2, 3, 3])  # groups 2 and 3 have one class
    assert group_auc(labels, scores, groups) == pytest.approx(1.0)
    assert np.isnan(group_auc(labels[2:], scores[2:], groups[2:]))


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 10, 300).astype(float)
    expected = reference.group_auc_bruteforce(labels, scores, np.zeros(300))
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels"):
        group_auc(np.array([0, 2]), np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="groups"):
        group_auc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([1]))


def test_evaluate_over_a_dataset_is_exact_not_per_batch():
    rng = np.random.default_rng(8)
    n = 257
    keys = rng.integers(0, 20, n).astype(np.int64)
    labels = rng.integers(0, 2, n).astype(np.float32)
    x = rng.normal(size=n).astype(np.float32)

    class Identity(tf.Module):
        def __call__(self, batch, training=False):
            return batch["x"]

    data = tf.data.Dataset.from_tensor_slices(({"x": x, features.USER_KEY: keys}, labels)).batch(16)
    result = evaluate_auc_gauc(Identity(), data)
    assert result["examples"] == n
    assert result["gauc"] == pytest.approx(reference.group_auc_bruteforce(labels, x, keys))
    assert result["auc"] == pytest.approx(reference.group_auc_bruteforce(labels, x, np.zeros(n)))
