"""The candidates ``python -m pipelines.predict`` scores (a split's samples table) and the way its
scores find their rows again.

Labels are optional: a table without ``label_0`` is converted through a copy labelled "no click"
(``conversion_copy``), and its output has no ``label`` column. The conversion writes one record per
user with the user's samples in input order, and every rule that rejects a sample after the
sample-only rules (``join.sample_columns``) rejects all of its user's samples, so the k-th scored
sample of a user is the k-th of that user's samples that passed those rules (``RowMatcher``). The
output is then written in the input's row order (files in name order), with the raw IDs read from
the input (never blank: an item the run does not know is scored as OOV), the row key and the carried
columns beside the scores; rejected samples are counted, not written.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_tf.contract import features, vocabulary
from pipelines.common import join
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import RawSchema

OUTPUT_COLUMNS = ("user_id", "item_id", "label", "probability", "logit")
NO_CLICK = [1, 0]  # the label the conversion copy of a label-free table carries


@dataclasses.dataclass
class Candidates:
    """The samples table of ``paths`` (files in input order): its rows parsed by the sample-only
    rules, whether it has labels, and the columns passed through: the row key and the carried."""

    table: str
    paths: list[str]
    schema: RawSchema
    columns: join.SampleColumns
    has_labels: bool
    row_key: str | None
    carry: list[str]

    @property
    def passed_through(self) -> list[str]:
        return ([self.row_key] if self.row_key else []) + self.carry

    @property
    def rows(self) -> int:
        return len(self.columns.users)


def _check_column(path: str, schema: pa.Schema, column: str, flag: str) -> None:
    if column not in schema.names:
        raise pi.InputError(f"{flag} {column}: {path} has no column {column!r} (it has "
                            f"{schema.names}).")
    if column in OUTPUT_COLUMNS:
        raise pi.InputError(f"{flag} {column}: the output has its own column {column!r}; "
                            "rename it in the input.")


def _key_columns(table: pa.Table, has_labels: bool, schema: RawSchema) -> pa.Table:
    """The user, item and label columns the conversion reads; ``NO_CLICK`` without labels."""
    rows = table.num_rows
    labels = (table.column(schema.labels) if has_labels else pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * rows + 1, 2), pa.int32()), pa.array(np.tile(NO_CLICK, rows))))
    return pa.table({schema.labels: labels, schema.user_id: table.column(schema.user_id),
                     schema.item_id: table.column(schema.item_id)})


def read(paths: Sequence[str], table: str, schema: RawSchema, row_key: str | None = None,
         carry: Sequence[str] = ()) -> Candidates:
    """Reads the candidates' user, item and (if present) label columns and checks the columns to
    pass through: the row key must exist, be non-null and unique; carried columns must exist.

    Raises:
        pi.InputError: naming the file and the column (or the flag).
    """
    carry = [c for c in dict.fromkeys(carry) if c != row_key]
    passed_through = ([row_key] if row_key else []) + carry
    labels_in = []
    for path in paths:
        try:
            file_schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as err:
            raise pi.InputError(f"{path}: unreadable Parquet file ({err}).") from err
        for column in (schema.user_id, schema.item_id):
            if column not in file_schema.names:
                raise pi.InputError(f"{path}: column {column!r} missing; the candidates need "
                                    f"{schema.user_id} (user) and {schema.item_id} (item).")
        labels_in.append(schema.labels in file_schema.names)
        for column in passed_through:
            _check_column(path, file_schema, column, "--row-key" if column == row_key else "--carry")
    if len(set(labels_in)) > 1:
        raise pi.InputError(f"{table}: some files have {schema.labels!r} and some do not "
                            f"({', '.join(p for p, has in zip(paths, labels_in) if not has)}).")
    has_labels = bool(labels_in) and labels_in[0]
    wanted = [schema.user_id, schema.item_id] + ([schema.labels] if has_labels else [])
    keys = pa.concat_tables([pq.read_table(p, columns=wanted) for p in paths])
    if row_key:
        key = pa.concat_tables([pq.read_table(p, columns=[row_key]) for p in paths]).column(0)
        if key.null_count or len(key.unique()) != len(key):
            raise pi.InputError(f"--row-key {row_key}: {key.null_count} null and "
                                f"{len(key) - key.null_count - len(key.drop_null().unique())} "
                                f"repeated values in "
                                f"{table}; a row key names each row once.")
    columns = join.sample_columns(_key_columns(keys, has_labels, schema), schema)
    return Candidates(table, list(paths), schema, columns, has_labels, row_key, carry)


def conversion_copy(candidates: Candidates, directory: str) -> list[str]:
    """The files the conversion reads as the samples table: the candidates' own, or without
    labels a copy of their user and item columns labelled ``NO_CLICK`` in ``directory``."""
    if candidates.has_labels:
        return candidates.paths
    path = os.path.join(directory, f"{candidates.table}.parquet")
    schema, writer = candidates.schema, None
    for source in candidates.paths:
        for batch in pq.ParquetFile(source).iter_batches(columns=[schema.user_id, schema.item_id]):
            part = _key_columns(pa.Table.from_batches([batch]), False, schema)
            writer = writer or pq.ParquetWriter(path, part.schema)
            writer.write_table(part)
    if writer is None:  # no row at all: an empty table of the right columns
        empty = pa.table({schema.user_id: pa.array([], pa.int64()),
                          schema.item_id: pa.array([], pa.int64())})
        pq.write_table(_key_columns(empty, False, schema), path)
    else:
        writer.close()
    return [path]


class RowMatcher:
    """Finds the input row of each scored sample, batch by batch of the scoring order: the k-th
    scored sample of a user is the k-th of the user's samples that passed the sample-only rules
    (their order in the user's record, as ``join.ShardJoin`` takes them)."""

    def __init__(self, candidates: Candidates) -> None:
        columns = candidates.columns
        waiting = np.flatnonzero(columns.reason == join.UNDECIDED)
        self.table = candidates.table
        self.waiting = waiting[np.argsort(columns.users[waiting], kind="stable")]
        self.waiting_users = columns.users[self.waiting]
        self.items = columns.items
        self.seen: dict[int, int] = {}  # scored samples so far, by user

    def rows(self, users: np.ndarray) -> np.ndarray:
        """The input rows of the next scored samples, given their users.

        Raises:
            RuntimeError: when a user has more scored samples than input rows (a broken record).
        """
        order = np.argsort(users, kind="stable")
        distinct, first, counts = np.unique(users[order], return_index=True, return_counts=True)
        before = np.array([self.seen.get(user, 0) for user in distinct.tolist()], np.int64)
        self.seen.update(zip(distinct.tolist(), (before + counts).tolist()))
        rank = np.empty(len(users), np.int64)
        rank[order] = np.repeat(before - first, counts) + np.arange(len(users))
        start = np.searchsorted(self.waiting_users, users, side="left")
        stop = np.searchsorted(self.waiting_users, users, side="right")
        if np.any(start + rank >= stop):
            raise RuntimeError(f"{self.table}: a user has more scored samples than input rows.")
        return self.waiting[start + rank]

    def items_of(self, users: np.ndarray) -> np.ndarray:
        """The raw target items of the next scored samples (``rows``' items)."""
        return self.items[self.rows(users)]


def check_rows(candidates: Candidates, rows: np.ndarray, item_index: np.ndarray,
               labels: np.ndarray, item_vocabulary: np.ndarray) -> None:
    """Checks that the scored samples are their rows' (same item, same label).

    Raises:
        RuntimeError: naming the first row that differs.
    """
    columns = candidates.columns
    expected = vocabulary.lookup(item_vocabulary, columns.items[rows], assume_sorted=True)
    wrong = (expected != item_index) | (candidates.has_labels & (columns.labels[rows] != labels))
    if wrong.any():
        raise RuntimeError(f"{candidates.table}: the score of input row {rows[wrong][0]} came "
                           "back with another item or label; the records lost their order.")


def unknown_items(item_index: np.ndarray) -> int:
    """Scored samples whose item the dataset's vocabulary lacks (an OOV index in the records)."""
    return int(np.count_nonzero(item_index == features.OOV))


def output_schema(candidates: Candidates) -> pa.Schema:
    """The row key, the raw IDs, the label if the input has labels, the scores, the carried
    columns (their input types)."""
    source = pq.read_schema(candidates.paths[0])
    fields = [source.field(candidates.row_key)] if candidates.row_key else []
    fields += [pa.field("user_id", pa.int64()), pa.field("item_id", pa.int64())]
    if candidates.has_labels:
        fields.append(pa.field("label", pa.int64()))
    fields += [pa.field("probability", pa.float32()), pa.field("logit", pa.float32())]
    return pa.schema(fields + [source.field(c) for c in candidates.carry])


def output_tables(candidates: Candidates, rows: np.ndarray, logits: np.ndarray,
                  probabilities: np.ndarray) -> Iterator[pa.Table]:
    """The scored rows in input order, batch by batch of the input (``output_schema``)."""
    schema = output_schema(candidates)
    position = np.full(candidates.rows, -1, np.int64)
    position[rows] = np.arange(len(rows))
    columns = candidates.columns
    start = 0
    for path in candidates.paths:
        parquet_file = pq.ParquetFile(path)
        read = candidates.passed_through or [candidates.schema.user_id]
        for batch in parquet_file.iter_batches(columns=read,
                                               batch_size=pi.batch_rows(parquet_file)):
            where = position[start : start + batch.num_rows]
            kept = np.flatnonzero(where >= 0)
            scored, input_row = where[kept], start + kept
            values = {"user_id": pa.array(columns.users[input_row], pa.int64()),
                      "item_id": pa.array(columns.items[input_row], pa.int64()),
                      "label": pa.array(columns.labels[input_row], pa.int64()),
                      "probability": pa.array(probabilities[scored], pa.float32()),
                      "logit": pa.array(logits[scored], pa.float32())}
            taken = batch.take(pa.array(kept))
            values.update({c: taken.column(c) for c in candidates.passed_through})
            yield pa.Table.from_arrays([values[name] for name in schema.names], schema=schema)
            start += batch.num_rows
