"""Finds, checks and streams the raw Parquet tables of a feature spec (``raw_schema``; Taobao-MM's:
the full release's files or the demo's).

A table ``T`` (e.g. ``train_samples``) is read from every file matching ``T.parquet``,
``T[._-]*.parquet`` (``T.part_0000.parquet``, ``T-00001.parquet``) or ``T/**/*.parquet``. Every
file's schema is checked before any work starts; an unreadable file stops the run with its name.

ID columns come back as int64 NumPy arrays in which a null becomes 0: the release writes 0 for an
empty field, so 0 and null both mean "missing" and no vocabulary ever holds 0. An unsigned column
holding a value above the int64 range stops the run naming its file and column. Page checksums are
verified wherever the writer stored them (Parquet's optional CRC), so a damaged page is named
instead of decoding to wrong IDs.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import raw_schema
from pipelines.common.raw_schema import MISSING, RawSchema

BATCH_BYTES = 16 << 20  # decoded bytes per record batch


class InputError(ValueError):
    """Input that cannot be converted; the message names the file (and column)."""


def _local_glob(pattern: str) -> list[str]:
    return glob.glob(pattern, recursive=True)


def discover_tables(
    input_dir: str,
    schema: RawSchema,
    match: Callable[[str], list[str]] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Files of the tables ``names`` (default: all of ``schema``'s) under ``input_dir``, sorted.
    ``match`` lists the paths of a glob pattern (default: the local file system; the Beam pipeline
    passes its file systems').

    Raises:
        InputError: naming a table with no file.
    """
    if match is None:
        if not os.path.isdir(input_dir):
            raise InputError(f"Input directory {input_dir} does not exist.")
        match = _local_glob
    tables = {}
    for table in schema.table_columns if names is None else names:
        patterns = (f"{table}.parquet", f"{table}[._-]*.parquet", f"{table}/**/*.parquet")
        files = set()
        for pattern in patterns:
            files.update(match(os.path.join(input_dir, pattern)))
        if not files:
            raise InputError(
                f"{input_dir}: no Parquet file for table {table!r} (looked for "
                f"{', '.join(patterns)})."
            )
        tables[table] = sorted(files)
    return tables


def _type_matches(arrow_type: pa.DataType, expected: str) -> bool:
    if expected == raw_schema.ID:
        return pa.types.is_integer(arrow_type)
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    if expected == raw_schema.INT8_LIST:
        return pa.types.is_int8(arrow_type.value_type)
    if expected == raw_schema.FLOAT_LIST:
        return pa.types.is_floating(arrow_type.value_type)
    return pa.types.is_integer(arrow_type.value_type)


def open_checked(
    path: str, table: str, schema: RawSchema, source: BinaryIO | None = None
) -> pq.ParquetFile:
    """Opens ``path`` (or ``source``, the file already opened) and checks it has ``table``'s
    columns and types (``schema``'s).

    Raises:
        InputError: naming the file, and the column when the schema is wrong.
    """
    try:
        parquet_file = pq.ParquetFile(
            source if source is not None else path, page_checksum_verification=True
        )
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{path}: unreadable Parquet file ({err}).") from err
    columns = schema.table_columns[table]
    arrow_schema = parquet_file.schema_arrow
    for column, expected in columns.items():
        if column not in arrow_schema.names:
            raise InputError(
                f"{path}: column {column!r} missing; table {table!r} needs "
                f"{list(columns)}, the file has {arrow_schema.names}."
            )
        actual = arrow_schema.field(column).type
        if not _type_matches(actual, expected):
            raise InputError(f"{path}: column {column!r} is {actual}, expected {expected}.")
    return parquet_file


def batch_rows(parquet_file: pq.ParquetFile) -> int:
    """Rows per record batch so that a batch decodes to about BATCH_BYTES: ~1,000 user rows of
    1,000-long histories, 10 of 100,000-long ones, 65,536 sample rows."""
    meta = parquet_file.metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(np.clip(BATCH_BYTES * meta.num_rows // max(size, 1), 1, 65_536))


def read_batches(
    path: str, table: str, schema: RawSchema, row_groups: list[int] | None,
    source: BinaryIO | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``table``'s columns (see ``batch_rows``), so memory stays bounded even
    for files written as one huge row group. ``source``: the file already opened.

    Raises:
        InputError: naming the file when it cannot be decoded.
    """
    parquet_file = open_checked(path, table, schema, source)
    try:
        for batch in parquet_file.iter_batches(
            batch_size=batch_rows(parquet_file),
            row_groups=row_groups,
            columns=list(schema.table_columns[table]),
        ):
            _check_int64_range(path, batch)
            yield batch
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{path}: unreadable Parquet data ({err}).") from err


def _check_int64_range(path: str, batch: pa.RecordBatch) -> None:
    """Refuses unsigned IDs that int64 cannot hold (they would otherwise fail the cast, unnamed)."""
    for column, array in zip(batch.schema.names, batch.columns):
        nested = pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
        values = pc.list_flatten(array) if nested else array
        if pa.types.is_uint64(values.type):
            largest = pc.max(values).as_py()
            if largest is not None and largest > np.iinfo(np.int64).max:
                raise InputError(
                    f"{path}: column {column!r} holds the ID {largest}, above the int64 range "
                    f"(IDs must be below 2^63)."
                )


def num_row_groups(path: str, table: str, schema: RawSchema) -> int:
    """Row groups of a file, after checking its schema (``open_checked``)."""
    return open_checked(path, table, schema).metadata.num_row_groups


def ids(data: pa.RecordBatch | pa.Table, column: str) -> np.ndarray:
    """An ID column as int64, null -> ``MISSING`` (0)."""
    array = data.column(column)
    return pc.fill_null(array.cast(pa.int64()), MISSING).to_numpy(zero_copy_only=False)


def _list_array(data: pa.RecordBatch | pa.Table, column: str) -> pa.Array:
    array = data.column(column)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    return array


def _lengths(array: pa.Array) -> np.ndarray:
    lengths = pc.fill_null(pc.list_value_length(array), 0)
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64)


def list_lengths(data: pa.RecordBatch | pa.Table, column: str) -> np.ndarray:
    """A list column's row lengths (null -> 0), whatever its values' type."""
    return _lengths(_list_array(data, column))


def id_lists(
    data: pa.RecordBatch | pa.Table, column: str, fill: int = MISSING
) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (flat int64 values, null element -> ``fill``; row lengths, null -> 0)."""
    array = _list_array(data, column)
    values = pc.fill_null(pc.list_flatten(array).cast(pa.int64()), fill)
    return values.to_numpy(zero_copy_only=False), _lengths(array)


def vector_lists(
    data: pa.RecordBatch | pa.Table, column: str, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """A vector column as (flat values of ``dtype``: int8, float16 or float32, null element -> 0;
    row lengths, null -> 0)."""
    if dtype == "int8":
        values, lengths = id_lists(data, column, fill=0)
        return values.astype(np.int8), lengths
    array = _list_array(data, column)
    values = pc.fill_null(pc.list_flatten(array).cast(pa.float32()), 0.0)
    return values.to_numpy(zero_copy_only=False).astype(dtype), _lengths(array)


def row_offsets(lengths: np.ndarray) -> np.ndarray:
    """(N,) lengths -> (N + 1,) offsets of each row in the flat values."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def take_rows(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The flat values and lengths of ``rows`` of a ragged array given as (values, offsets)."""
    lengths = offsets[rows + 1] - offsets[rows]
    starts = np.repeat(offsets[rows] - row_offsets(lengths)[:-1], lengths)
    return values[starts + np.arange(len(starts))], lengths
