"""Writes user records as one GZIP TFRecord shard (the format ``muse_tf.data`` reads).

One ``tf.train.Example`` per user and shard: the user's features and history once, then parallel
lists of the user's samples. The file appears under its final name only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from muse_tf import data
from pipelines.join import UserRecords


def _int64_feature(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))


def encode_records(records: UserRecords) -> Iterator[bytes]:
    """Serialized ``tf.train.Example`` of each user record, in order."""
    history_offsets = np.concatenate([[0], np.cumsum(records.history_lengths)])
    sample_offsets = np.concatenate([[0], np.cumsum(records.sample_counts)])
    for u in range(len(records.sample_counts)):
        feature = {name: _int64_feature(records.user[name][u : u + 1]) for name in records.user}
        for name, values in records.history.items():
            feature[name] = _int64_feature(values[history_offsets[u] : history_offsets[u + 1]])
        for name, values in records.samples.items():
            feature[name] = _int64_feature(values[sample_offsets[u] : sample_offsets[u + 1]])
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        yield example.SerializeToString()


class ShardWriter:
    """Appends user records to one shard; the file gets its final name only when closed cleanly.

    Use as a context manager; ``size`` is the file's bytes once closed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        self._tmp = f"{path}.tmp"
        options = tf.io.TFRecordOptions(compression_type=data.SHARD_COMPRESSION)
        self._writer = tf.io.TFRecordWriter(self._tmp, options)

    def write(self, records: UserRecords) -> None:
        """Appends one Example per user of ``records``.

        Raises:
            ValueError: when ``records`` lacks a feature of the record schema (``muse_tf.data``).
        """
        names = {*records.user, *records.history, *records.samples}
        missing = set(data.RECORD_USER_FEATURES + data.RECORD_HISTORY + data.RECORD_SAMPLE_FEATURES)
        if missing - names:
            raise ValueError(f"User records lack feature(s) {sorted(missing - names)}.")
        for record in encode_records(records):
            self._writer.write(record)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
            self.size = os.path.getsize(self.path)
