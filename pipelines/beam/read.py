"""Step 1, read: every row group of every file is a task (spread by a Reshuffle), read as record
batches of bounded size that carry each row's input position (file, row): "first row wins" and
the order of a user's samples follow it, so every runner writes the same records."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.beam import metrics
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import RawSchema

POSITION_BITS = 40  # input position = file index << 40 | row in file


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One read task: a row group of one file of ``table`` and the file row it starts at."""

    table: str
    path: str
    file_index: int
    row_group: int
    first_row: int


def row_groups(tables: dict[str, list[str]], schema: RawSchema) -> list[RowGroup]:
    """Every row group of every file (opening each file checks its schema before the run)."""
    tasks = []
    for table, paths in tables.items():
        for file_index, path in enumerate(paths):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                meta = pi.open_checked(path, table, schema, f).metadata
            first = 0
            for group in range(meta.num_row_groups):
                tasks.append(RowGroup(table, path, file_index, group, first))
                first += meta.row_group(group).num_rows
    return tasks


class ReadRowGroup(beam.DoFn):
    """A row group as record batches of bounded size, each with its rows' input positions."""

    def __init__(self, schema: RawSchema) -> None:
        super().__init__()
        self.schema = schema

    def process(self, task: RowGroup) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        first = (task.file_index << POSITION_BITS) + task.first_row
        with FileSystems.open(task.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for batch in pi.read_batches(task.path, task.table, self.schema, [task.row_group], f):
                metrics.count(f"input_rows/{task.table}", batch.num_rows)
                yield first + np.arange(batch.num_rows, dtype=np.int64), batch
                first += batch.num_rows


def read_table(
    pipeline: beam.Pipeline, table: str, tasks: list[RowGroup], schema: RawSchema
) -> beam.PCollection:
    """The record batches of ``table`` (its tasks among ``tasks``), each with its positions."""
    return (
        pipeline
        | f"row groups {table}" >> beam.Create([t for t in tasks if t.table == table])
        | f"spread {table}" >> beam.Reshuffle()
        | f"read {table}" >> beam.ParDo(ReadRowGroup(schema))
    )


def concat_by_position(
    pieces: Iterable[tuple[np.ndarray, pa.RecordBatch]],
) -> pa.Table | None:
    """Record batch pieces as one table in input order (None when there are none)."""
    pieces = list(pieces)
    if not pieces:
        return None
    order = np.argsort(np.concatenate([p for p, _ in pieces]), kind="stable")
    table = pa.Table.from_batches([b for _, b in pieces]).combine_chunks()
    return table.take(pa.array(order))
