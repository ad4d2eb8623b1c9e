"""GAUC breakdowns by bucket against a brute-force reference."""

import numpy as np
import pytest

from muse_tf.evaluate import HISTORY_LENGTH_EDGES, bucket_labels, gauc_by_bucket, plot_buckets
from tests import reference


def test_gauc_by_bucket_matches_bruteforce_per_bucket():
    rng = np.random.default_rng(0)
    n = 600
    scored = {
        "labels": rng.integers(0, 2, n),
        "logits": np.round(rng.normal(size=n), 1),
        "groups": rng.integers(0, 40, n),
    }
    values = rng.integers(0, 1500, n)
    edges = HISTORY_LENGTH_EDGES
    rows = gauc_by_bucket(scored, values, edges)
    assert [row["bucket"] for row in rows] == ["0", "1-50", "51-200", "201-500", "501-1000", "1001+"]
    bounds = [*edges, np.inf]
    for row, lo, hi in zip(rows, bounds[:-1], bounds[1:]):
        sel = (values >= lo) & (values < hi)
        assert row["examples"] == sel.sum()
        expected = reference.group_auc_bruteforce(scored["labels"][sel], scored["logits"][sel],
                                                  scored["groups"][sel])
        assert row["gauc"] == pytest.approx(expected, nan_ok=True)
    assert sum(row["examples"] for row in rows) == n  # every sample lands in a bucket


def test_bucket_labels_and_empty_buckets_plot(tmp_path):
    assert bucket_labels((0, 1, 10)) == ["0", "1-9", "10+"]
    empty = {"labels": np.array([], int), "logits": np.array([]), "groups": np.array([], int)}
    rows = gauc_by_bucket(empty, np.array([], int), (0, 1))
    assert all(row["examples"] == 0 and np.isnan(row["gauc"]) for row in rows)
    plot_buckets({"nothing": rows}, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
