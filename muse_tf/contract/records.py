"""The converted dataset's record schema: how one user's record is encoded and parsed.

``pipelines/`` writes, and ``muse_tf.data.reader`` reads, GZIP TFRecord shards of ``tf.train.Example`` user
records. A record holds one user's features and history **once**, plus parallel lists of that user's
samples in the shard (see ``pipelines/README.md`` for why, with bytes-per-sample figures)::

    user_key, user_id, <profile features>       int64 [1]    raw user ID, then vocabulary indices
    history_items, history_categories           int64 [H]    indices, oldest -> newest, H <= the
                                                             conversion's ``--history-cap``
    item_id, item_category, <attributes>        int64 [S]    one entry per sample of this user
    label                                       int64 [S]    0 / 1

The profile and attribute features are the dataset's feature spec's (``FeatureSpec``; Taobao-MM's:
``user_profile_1..5``, ``item_attr_213/214``).

Parsing expands a batch of records to samples (each sample gathers its user's row) and left-pads or
truncates the history to the training window (newest behaviour in the last column).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from muse_tf.contract import features
from muse_tf.contract.feature_spec import FeatureSpec

if TYPE_CHECKING:  # TensorFlow is imported by the functions that run it: reading a record's
    import tensorflow as tf  # features (serving.request) does not load the runtime

HISTORY_FEATURES = features.SEQUENCE_FEATURES
COMPRESSION = "GZIP"


def user_features(spec: FeatureSpec) -> tuple[str, ...]:
    """A record's per-user scalars: the raw user ID, the user ID, the profile features."""
    return (features.USER_KEY, *spec.user_features)


def sample_features(spec: FeatureSpec) -> tuple[str, ...]:
    """A record's per-sample lists: the candidate features and the label."""
    return (*spec.candidate_features, features.LABEL)


def record_features(spec: FeatureSpec) -> tuple[str, ...]:
    """Every feature of a user record."""
    return user_features(spec) + HISTORY_FEATURES + sample_features(spec)


def parse_spec(spec: FeatureSpec) -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    """``tf.io.parse_example`` features of a user record: user scalars, ragged lists."""
    import tensorflow as tf

    parsing: dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature] = {
        name: tf.io.FixedLenFeature([], tf.int64) for name in user_features(spec)
    }
    for name in HISTORY_FEATURES + sample_features(spec):
        parsing[name] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
    return parsing


def _int64_feature(values: np.ndarray) -> tf.train.Feature:
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))


def encode_user_records(
    user: Mapping[str, np.ndarray],
    history: Mapping[str, np.ndarray],
    history_lengths: np.ndarray,
    samples: Mapping[str, np.ndarray],
    sample_counts: np.ndarray,
    spec: FeatureSpec,
) -> Iterator[bytes]:
    """Serialized records of U users, in order, from column-wise arrays.

    Args:
        user: user feature -> (U,) values.
        history: history feature -> (H,) values, user after user; ``history_lengths`` (U,).
        samples: sample feature -> (S,) values, user after user; ``sample_counts`` (U,).
        spec: the dataset's feature spec (which profile and attribute features a record holds).

    Raises:
        ValueError: naming the features of the schema the arrays lack.
    """
    import tensorflow as tf

    missing = set(record_features(spec)) - {*user, *history, *samples}
    if missing:
        raise ValueError(f"User records lack feature(s) {sorted(missing)}.")
    history_offsets = np.concatenate([[0], np.cumsum(history_lengths)])
    sample_offsets = np.concatenate([[0], np.cumsum(sample_counts)])
    for u in range(len(sample_counts)):
        feature = {name: _int64_feature(user[name][u : u + 1]) for name in user_features(spec)}
        for name in HISTORY_FEATURES:
            values = history[name][history_offsets[u] : history_offsets[u + 1]]
            feature[name] = _int64_feature(values)
        for name in sample_features(spec):
            feature[name] = _int64_feature(samples[name][sample_offsets[u] : sample_offsets[u + 1]])
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        # Map order is per process in protobuf 5+: deterministic output keeps shards byte-identical
        # whichever worker or engine wrote them.
        yield example.SerializeToString(deterministic=True)


def user_keys(serialized: tf.Tensor) -> tf.Tensor:
    """(U,) serialized user records -> their (U,) raw user IDs, parsing nothing else."""
    import tensorflow as tf

    spec = {features.USER_KEY: tf.io.FixedLenFeature([], tf.int64)}
    return tf.io.parse_example(serialized, spec)[features.USER_KEY]


def left_pad_recent(ragged: tf.RaggedTensor, length: int) -> tf.Tensor:
    """(N, None) -> (N, length): the last ``length`` values of each row, left-padded with PAD."""
    import tensorflow as tf

    starts = ragged.row_starts()
    limits = ragged.row_limits()
    flat_index = limits[:, None] - length + tf.range(length, dtype=limits.dtype)[None, :]
    # Position 0 of the padded values is PAD, so invalid positions (and empty inputs) gather it.
    padded_values = tf.concat([tf.constant([features.PAD], ragged.values.dtype), ragged.values], 0)
    return tf.gather(padded_values, tf.where(flat_index >= starts[:, None], flat_index + 1, 0))


def parse_user_records(
    serialized: tf.Tensor, history_length: int, spec: FeatureSpec
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """(U,) serialized user records -> S samples: ``({name: (S,) or (S, L)}, label (S,))``."""
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, parse_spec(spec))
    sample_names = sample_features(spec)
    per_sample = [parsed[name] for name in sample_names]
    history = [parsed[name] for name in HISTORY_FEATURES]
    checks = [
        tf.debugging.assert_equal(
            ragged.row_lengths(),
            per_sample[0].row_lengths(),
            message=f"Corrupt user record: `{name}` and `{features.ITEM_ID}` differ in length.",
        )
        for name, ragged in zip(sample_names[1:], per_sample[1:])
    ]
    checks.append(
        tf.debugging.assert_equal(
            history[0].row_lengths(),
            history[1].row_lengths(),
            message="Corrupt user record: history items and categories differ in length.",
        )
    )
    with tf.control_dependencies(checks):
        sample_user = tf.identity(per_sample[0].value_rowids())
    out = {name: tf.gather(parsed[name], sample_user) for name in user_features(spec)}
    for name in HISTORY_FEATURES:
        out[name] = tf.gather(left_pad_recent(parsed[name], history_length), sample_user)
    for name, ragged in zip(sample_names, per_sample):
        out[name] = ragged.values
    label = tf.cast(out.pop(features.LABEL), tf.float32)
    return out, label
