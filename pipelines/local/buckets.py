"""User buckets: samples and user features routed by a hash of the user ID (a grace hash join).

Neither side of the samples x user-features join fits in memory at full scale (76M samples, 8.8M
users x 2,000 history IDs), so both are spilled by ``partition_of(user, shards)``: bucket k of a
split holds every sample and every feature row of its users, and becomes output shard k. Each
user's history is therefore written once per dataset. A sample with a missing user ID lands in
the bucket of ID 0 and is rejected there, so it is still counted.

Files: ``<bucket_dir>/<split>/<kind>/b<k>/<tag>.parquet`` (tags sort in input order, which makes
"first row wins" rules deterministic).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from muse_tf.contract.hashing import order_by_partition, partition_of
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import RawSchema

SAMPLES = "samples"
USERS = "users"
_EMPTY_TYPES = {
    "integer": pa.int64(),
    "list<integer>": pa.list_(pa.int64()),
}


def bucket_path(bucket_dir: str, split: str, kind: str, bucket: int, tag: str) -> str:
    """The spill file of one scan task (``tag``) for one bucket of a split's samples or users."""
    return os.path.join(bucket_dir, split, kind, f"b{bucket:05d}", f"{tag}.parquet")


class BucketSpill:
    """Parquet writers, one per bucket, for one scan task (opened lazily, closed atomically)."""

    def __init__(
        self, bucket_dir: str, split: str, kind: str, tag: str, buckets: int, user_id: str
    ) -> None:
        self.user_id = user_id  # the raw user ID column
        self._paths = [bucket_path(bucket_dir, split, kind, k, tag) for k in range(buckets)]
        self._writers: dict[int, pq.ParquetWriter] = {}

    def write(self, batch: pa.RecordBatch) -> None:
        """Appends each row of ``batch`` to the bucket of its user, in input order."""
        users = pi.ids(batch, self.user_id)
        buckets = len(self._paths)
        order, bounds = order_by_partition(partition_of(users, buckets), buckets)
        for bucket in range(buckets):
            rows = order[bounds[bucket] : bounds[bucket + 1]]
            if not len(rows):
                continue
            if bucket not in self._writers:
                os.makedirs(os.path.dirname(self._paths[bucket]), exist_ok=True)
                self._writers[bucket] = pq.ParquetWriter(f"{self._paths[bucket]}.tmp", batch.schema)
            self._writers[bucket].write_batch(batch.take(pa.array(rows)))

    def close(self) -> None:
        """Finishes every file and gives it its final name (a crash leaves only ``.tmp`` files)."""
        for bucket, writer in self._writers.items():
            writer.close()
            os.replace(f"{self._paths[bucket]}.tmp", self._paths[bucket])


def _bucket_files(bucket_dir: str, split: str, kind: str, bucket: int) -> list[str]:
    return sorted(glob.glob(bucket_path(bucket_dir, split, kind, bucket, "*")))


def iter_bucket(bucket_dir: str, split: str, kind: str, bucket: int) -> Iterator[pa.RecordBatch]:
    """The spilled rows of one bucket in input order, in batches of bounded size."""
    for path in _bucket_files(bucket_dir, split, kind, bucket):
        parquet_file = pq.ParquetFile(path)
        yield from parquet_file.iter_batches(batch_size=pi.batch_rows(parquet_file))


def read_bucket(
    bucket_dir: str, split: str, kind: str, bucket: int, table: str, schema: RawSchema
) -> pa.Table:
    """Every spilled row of one bucket in input order (an empty table when there are none)."""
    tables = [pq.read_table(f) for f in _bucket_files(bucket_dir, split, kind, bucket)]
    if not tables:
        columns = schema.table_columns[table]
        return pa.table({name: pa.array([], _EMPTY_TYPES[kind]) for name, kind in columns.items()})
    return pa.concat_tables(tables, promote_options="permissive")
