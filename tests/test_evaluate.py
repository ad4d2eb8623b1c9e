"""GAUC breakdowns by bucket against a brute-force reference."""

import json

import numpy as np
import pytest

from muse_tf.jobs import evaluation
from muse_tf.jobs.evaluation import plot_buckets
from muse_tf.jobs.metrics import HISTORY_LENGTH_EDGES, bucket_labels, gauc_by_bucket
from tests import reference


def users_with_both_classes(labels, groups):
    """Brute force: users with at least one click and at least one non-click."""
    return sum(1 for g in set(groups.tolist()) if len(set(labels[groups == g].tolist())) == 2)


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
        assert row["users"] == len(set(scored["groups"][sel].tolist()))
        assert row["gauc_users"] == users_with_both_classes(scored["labels"][sel], scored["groups"][sel])
        expected = reference.group_auc_bruteforce(scored["labels"][sel], scored["logits"][sel],
                                                  scored["groups"][sel])
        assert row["gauc"] == pytest.approx(expected, nan_ok=True)
    assert sum(row["examples"] for row in rows) == n  # every sample lands in a bucket


def test_bucket_labels_and_empty_buckets_plot(tmp_path):
    assert bucket_labels((0, 1, 10)) == ["0", "1-9", "10+"]
    empty = {"labels": np.array([], int), "logits": np.array([]), "groups": np.array([], int)}
    rows = gauc_by_bucket(empty, np.array([], int), (0, 1))
    assert all(row["examples"] == 0 and np.isnan(row["gauc"]) for row in rows)
    plot_buckets({"nothing": {"model": rows}}, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def two_models_with_an_undefined_and_a_thin_bucket():
    """Bucket "0": 3 users, each with one class only (GAUC undefined). Bucket "1-9": 2 users with
    one click and one non-click each, ranked right (GAUC exactly 1 on 4 samples). Bucket "10+":
    30 users with 6 samples each."""
    rng = np.random.default_rng(1)
    labels = [1, 1, 0, 0, 0, 1, 0, 1, 0]
    groups = [0, 0, 1, 1, 2, 3, 3, 4, 4]
    values = [0, 0, 0, 0, 0, 5, 5, 5, 5]
    logits = [0.3, 0.1, 0.2, 0.4, 0.0, 2.0, -1.0, 1.5, 0.5]
    for user in range(10, 40):
        labels += [0, 0, 0, 1, 1, 0]
        groups += [user] * 6
        values += [int(rng.integers(10, 100))] * 6
        logits += rng.normal(size=6).tolist()
    scored = {"labels": np.array(labels), "logits": np.array(logits), "groups": np.array(groups)}
    return scored, np.array(values)


def test_undefined_bucket_is_nan_with_its_counts_and_thin_bucket_keeps_its_value():
    scored, values = two_models_with_an_undefined_and_a_thin_bucket()
    rows = gauc_by_bucket(scored, values, (0, 1, 10))
    undefined, thin, wide = rows
    assert undefined["bucket"] == "0" and np.isnan(undefined["gauc"])
    assert (undefined["examples"], undefined["users"], undefined["gauc_users"]) == (5, 3, 0)
    assert (thin["examples"], thin["users"], thin["gauc_users"]) == (4, 2, 2)
    assert thin["gauc"] == reference.group_auc_bruteforce(
        scored["labels"][values == 5], scored["logits"][values == 5], scored["groups"][values == 5]
    ) == 1.0
    sel = values >= 10
    assert wide["gauc"] == pytest.approx(reference.group_auc_bruteforce(
        scored["labels"][sel], scored["logits"][sel], scored["groups"][sel]))
    assert wide["gauc_users"] == 30
    # What the plot draws: n/a for the undefined bucket and for the one resting on 2 users.
    plotted = [evaluation.plotted_gauc(row) for row in rows]
    assert np.isnan(plotted[0]) and np.isnan(plotted[1]) and plotted[2] == wide["gauc"]


def test_undefined_bucket_is_null_in_the_json(tmp_path):
    from muse_tf.contract import strict_json

    scored, values = two_models_with_an_undefined_and_a_thin_bucket()
    rows = json.loads(strict_json.dumps(gauc_by_bucket(scored, values, (0, 1, 10))))
    assert rows[0]["gauc"] is None and rows[0]["examples"] == 5 and rows[0]["gauc_users"] == 0
    assert np.isnan(evaluation.plotted_gauc(rows[0]))  # rows read back from JSON plot too


def test_plot_buckets_writes_two_models_with_na_buckets(tmp_path):
    scored, values = two_models_with_an_undefined_and_a_thin_bucket()
    other = {**scored, "logits": -scored["logits"]}
    breakdown = {"MUSE": gauc_by_bucket(scored, values, (0, 1, 10)),
                 "DIN": gauc_by_bucket(other, values, (0, 1, 10))}
    path = tmp_path / "buckets.png"
    plot_buckets({"history length": breakdown}, str(path), title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_buckets_refuses_models_scored_on_different_rows(tmp_path):
    scored, values = two_models_with_an_undefined_and_a_thin_bucket()
    fewer = {key: column[2:] for key, column in scored.items()}
    breakdown = {"MUSE": gauc_by_bucket(scored, values, (0, 1, 10)),
                 "DIN": gauc_by_bucket(fewer, values[2:], (0, 1, 10))}
    with pytest.raises(ValueError, match="not scored on the same samples"):
        plot_buckets({"history length": breakdown}, str(tmp_path / "x.png"))
