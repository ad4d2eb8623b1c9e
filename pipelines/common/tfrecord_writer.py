"""Writes user records as one GZIP TFRecord shard (schema and encoding: ``muse_tf.contract.records``).

The file appears under its final name only when complete.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import tensorflow as tf

from muse_tf.contract import records
from muse_tf.contract.feature_spec import FeatureSpec
from pipelines.common.join import UserRecords


def encode(users: UserRecords, spec: FeatureSpec) -> Iterator[bytes]:
    """Serialized records of ``users`` of ``spec``'s features, in order (both conversion engines
    write these)."""
    return records.encode_user_records(
        users.user, users.history, users.history_lengths, users.samples, users.sample_counts, spec
    )


class ShardWriter:
    """Appends user records to one shard; the file gets its final name only when closed cleanly.

    Use as a context manager; ``size`` is the file's bytes once closed. A failed write (a full
    disk) is an OSError naming the shard.
    """

    def __init__(self, path: str, spec: FeatureSpec) -> None:
        self.path = path
        self.spec = spec
        self.size = 0
        self._tmp = f"{path}.tmp"
        options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
        self._writer = tf.io.TFRecordWriter(self._tmp, options)

    def write(self, users: UserRecords) -> None:
        """Appends one record per user of ``users``.

        Raises:
            ValueError: when ``users`` lacks a feature of the record schema.
        """
        try:
            for record in encode(users, self.spec):
                self._writer.write(record)
        except tf.errors.OpError as err:
            raise self._os_error(err) from None

    def _os_error(self, err: tf.errors.OpError) -> OSError:
        """TensorFlow's write error as an OSError naming the shard (TensorFlow reports a full disk,
        ENOSPC or EDQUOT, as ResourceExhaustedError)."""
        code = errno.ENOSPC if isinstance(err, tf.errors.ResourceExhaustedError) else errno.EIO
        return OSError(code, err.message.rsplit("; ", 1)[-1], self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type | None, *_: object) -> None:
        try:
            self._writer.close()
        except tf.errors.OpError as err:
            if exc_type is None:  # else the block's own error propagates
                raise self._os_error(err) from None
        if exc_type is None:
            os.replace(self._tmp, self.path)
            self.size = os.path.getsize(self.path)
