"""Step 5, users: samples (after ``join.sample_columns``' rules) and user feature rows are grouped
by user, batched, their IDs looked up (``lookups.fetch``), and ``join.ShardJoin`` applies the
remaining rules; ``WriteToTFRecord`` writes the records with the requested shard count."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes

from muse_tf.contract import features
from pipelines.beam import lookups, metrics
from pipelines.common import join
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import MISSING, RawSchema

USERS_PER_BATCH = 256


def _valid_samples(
    element: tuple[np.ndarray, pa.RecordBatch], split: str, schema: RawSchema
) -> Iterator[tuple[int, tuple[int, int, int]]]:
    """(user, (position, item, click)) of the samples that pass the rules needing no join; the
    others are counted as rejected."""
    positions, batch = element
    columns = join.sample_columns(batch, schema)
    metrics.count(f"{split}/samples_in", len(positions))
    for i, reason in enumerate(join.REJECT_REASONS):
        metrics.count(f"{split}/rejected/{reason}", np.count_nonzero(columns.reason == i))
    rows = np.flatnonzero(columns.reason == join.UNDECIDED)
    yield from zip(
        columns.users[rows].tolist(),
        zip(positions[rows].tolist(), columns.items[rows].tolist(), columns.labels[rows].tolist()),
    )


def _user_rows(
    element: tuple[np.ndarray, pa.RecordBatch], split: str, schema: RawSchema
) -> Iterator[tuple]:
    """(user, (position, profile IDs, history items, history categories)) of each user feature
    row with a user ID; rows without one are counted."""
    positions, batch = element
    keys = pi.ids(batch, schema.user_id)
    present = keys != MISSING
    metrics.count(f"{split}/user_rows/in", np.count_nonzero(~present))
    metrics.count(f"{split}/user_rows/missing_id", np.count_nonzero(~present))
    profiles = np.stack(
        [pi.ids(batch, c) for c in schema.profile_columns] or [np.zeros(len(keys), np.int64)], axis=1
    )
    items, item_lengths = pi.id_lists(batch, schema.history_items)
    categories, category_lengths = pi.id_lists(batch, schema.history_categories)
    item_offsets, category_offsets = pi.row_offsets(item_lengths), pi.row_offsets(category_lengths)
    for r in np.flatnonzero(present):
        yield (
            int(keys[r]),
            (
                int(positions[r]),
                profiles[r],
                items[item_offsets[r] : item_offsets[r + 1]],
                categories[category_offsets[r] : category_offsets[r + 1]],
            ),
        )


@dataclasses.dataclass
class UserBatch:
    """A batch of users: their samples and feature rows, each in input order."""

    samples: join.SampleColumns
    users: pa.RecordBatch

    def wanted(self, schema: RawSchema) -> dict[str, np.ndarray]:
        """The raw IDs the batch looks up, by vocabulary."""
        vocab = schema.spec.vocabulary
        ids = {
            vocab[features.USER_ID]: [pi.ids(self.users, schema.user_id)],
            vocab[features.ITEM_ID]: [
                self.samples.items,
                pi.id_lists(self.users, schema.history_items)[0],
            ],
            vocab[features.HISTORY_CATEGORIES]: [
                pi.id_lists(self.users, schema.history_categories)[0]
            ],
        }
        for column, name in zip(schema.profile_columns, schema.spec.profile_features):
            ids[vocab[name]] = [pi.ids(self.users, column)]
        return {name: np.unique(np.concatenate(parts)) for name, parts in ids.items()}


_LIST = pa.list_(pa.int64())


def _user_batch(
    groups: list[tuple[int, dict[str, Iterable]]], schema: RawSchema
) -> tuple[int, UserBatch]:
    """A batch of grouped users -> (its smallest user ID, the batch)."""
    samples = sorted((sample, user) for user, g in groups for sample in g["samples"])
    rows = sorted(((row, user) for user, g in groups for row in g["users"]), key=lambda r: r[0][0])
    columns = {
        schema.user_id: pa.array([user for _, user in rows], pa.int64()),
        **{
            column: pa.array([int(row[1][i]) for row, _ in rows], pa.int64())
            for i, column in enumerate(schema.profile_columns)
        },
        schema.history_items: pa.array([row[2] for row, _ in rows], _LIST),
        schema.history_categories: pa.array([row[3] for row, _ in rows], _LIST),
    }
    sample_columns = join.SampleColumns(
        users=np.asarray([user for _, user in samples], np.int64),
        items=np.asarray([sample[1] for sample, _ in samples], np.int64),
        labels=np.asarray([sample[2] for sample, _ in samples], np.int64),
        reason=np.full(len(samples), join.UNDECIDED),
    )
    batch = UserBatch(sample_columns, pa.RecordBatch.from_pydict(columns))
    return min(user for user, _ in groups), batch


class JoinUsers(beam.DoFn):
    """Applies ``join.ShardJoin`` to a batch of users; their serialized records."""

    def __init__(self, split: str, history_cap: int, schema: RawSchema) -> None:
        self.split = split
        self.history_cap = history_cap
        self.schema = schema

    def process(self, element: tuple[int, dict[str, Iterable]]) -> Iterator[bytes]:
        from pipelines.common import tfrecord_writer  # TensorFlow is loaded by the workers that write

        _, groups = element
        batch = next(iter(groups["batch"]))
        answers = next(iter(groups["answers"]), {})
        joiner = join.ShardJoin(
            batch.samples, lookups.FetchedLookups(answers, self.schema.spec), self.history_cap,
            self.schema,
        )
        records = joiner.add_users(batch.users)
        stats = joiner.finish()
        for name in ("samples_written", "users_written"):
            metrics.count(f"{self.split}/{name}", stats[name])
        for section in ("rejected", "adjusted", "oov", "user_rows"):
            for name, value in stats[section].items():
                metrics.count(f"{self.split}/{section}/{name}", value)
        yield from tfrecord_writer.encode(records, self.schema.spec)


def convert_split(
    split: str,
    reads: dict[str, beam.PCollection],
    chunks: beam.PCollection,
    output: str,
    history_cap: int,
    shards: int,
    schema: RawSchema,
) -> None:
    samples = reads[schema.samples_table[split]] | f"{split}: sample rules" >> beam.FlatMap(
        _valid_samples, split, schema
    )
    users = reads[schema.user_table[split]] | f"{split}: user rows" >> beam.FlatMap(
        _user_rows, split, schema
    )
    batches = (
        {"samples": samples, "users": users}
        | f"{split}: group by user" >> beam.CoGroupByKey()
        | f"{split}: batch users" >> beam.BatchElements(max_batch_size=USERS_PER_BATCH)
        | f"{split}: user batches" >> beam.Map(_user_batch, schema)
    )
    requests = batches | f"{split}: wanted IDs" >> beam.Map(
        lambda kv: (kv[0], kv[1].wanted(schema))
    )
    answers = lookups.fetch(f"{split} lookups", requests, chunks, schema.spec)
    (
        {"batch": batches, "answers": answers}
        | f"{split}: batch with lookups" >> beam.CoGroupByKey()
        | f"{split}: join" >> beam.ParDo(JoinUsers(split, history_cap, schema))
        | f"{split}: write"
        >> beam.io.WriteToTFRecord(
            f"{output}/{split}/part",
            file_name_suffix=".tfrecord.gz",
            num_shards=shards,
            shard_name_template="-SSSSS-of-NNNNN",
            compression_type=CompressionTypes.GZIP,
        )
    )
