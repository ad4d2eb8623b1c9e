"""Writes user records as one GZIP TFRecord shard (format and encoding: ``muse_tf.data``).

One ``tf.train.Example`` per user and shard: the user's features and history once, then parallel
lists of the user's samples. The file appears under its final name only when complete.
"""

from __future__ import annotations

import os

import tensorflow as tf

from muse_tf import data
from pipelines.join import UserRecords


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
        encoded = data.encode_user_records(
            records.user, records.history, records.history_lengths, records.samples,
            records.sample_counts,
        )
        for record in encoded:
            self._writer.write(record)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
            self.size = os.path.getsize(self.path)
