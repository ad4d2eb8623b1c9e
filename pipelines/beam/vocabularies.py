"""Step 2, vocabularies: (vocabulary, ID) -> (train count, SCL rows) by a combiner; the IDs are
grouped into order-preserving ranges of their value (``lookups.BUCKET_BITS``) and each range
applies ``vocab.keep_ids``. A range's first index is the number of kept IDs in lower ranges (a side
input of one number per range), so index = position in the sorted vocabulary + 2, as the local
engine assigns it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipelines.beam import files, lookups, metrics
from pipelines.common import vocab
from pipelines.common.raw_schema import MISSING, RawSchema

_FORCED_SOURCE = {source: target for target, source in vocab.FORCED.items()}


def _ids_to_count(
    element: tuple[np.ndarray, pa.RecordBatch], table: str, schema: RawSchema
) -> Iterator[tuple[tuple[str, int], tuple[int, int]]]:
    """((vocabulary, ID), (train count, SCL rows)) of a batch, one pair per distinct ID."""
    _, batch = element
    for name, raw_ids in vocab.ids_to_count(table, batch, schema):
        unique, counts = np.unique(raw_ids[raw_ids != MISSING], return_counts=True)
        target = _FORCED_SOURCE.get(name, name)
        forced = name in _FORCED_SOURCE
        for raw, count in zip(unique.tolist(), counts.tolist()):
            yield (target, raw), ((0, count) if forced else (count, 0))


def _add_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    counts = forced = 0
    for count, scl in pairs:
        counts += count
        forced += scl
    return counts, forced


def _keep_range(
    element: tuple[tuple[str, int], Iterable[tuple[int, int, int]]], min_count: dict[str, int]
) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """One range of one vocabulary: its kept IDs (ascending), statistics as metrics."""
    (name, bucket), rows = element
    ids, counts, forced = (np.asarray(c, np.int64) for c in zip(*rows))
    order = np.argsort(ids)
    kept, stats = vocab.keep_ids(ids[order], counts[order], forced[order], min_count[name])
    for field, value in dataclasses.asdict(stats).items():
        metrics.count(f"vocab/{name}/{field}", value)
    if len(kept):
        yield (name, bucket), kept


def _chunk(
    element: tuple[tuple[str, int], np.ndarray], offsets: dict, work: str
) -> tuple[tuple[str, int], lookups.Chunk]:
    (name, bucket), ids = element
    files.save(files.range_path(work, "vocab", name, bucket), ids)
    return (name, bucket), lookups.Chunk(offsets[(name, bucket)], ids)


def kept_ranges(
    reads: dict[str, beam.PCollection], min_count: dict[str, int], work: str, schema: RawSchema
) -> beam.PCollection:
    """((vocabulary, range), Chunk) of every range that keeps an ID; each range's IDs are also
    written to its range file for the launcher to concatenate."""
    counted = [
        reads[table] | f"count {table}" >> beam.FlatMap(_ids_to_count, table, schema)
        for table in dict.fromkeys((*vocab.counted_columns(schema), schema.scl_embeddings))
    ]
    kept = (
        counted
        | "all counts" >> beam.Flatten()
        | "sum counts" >> beam.CombinePerKey(_add_pairs)
        | "by range"
        >> beam.Map(lambda kv: ((kv[0][0], int(lookups.id_bucket(kv[0][1]))), (kv[0][1], *kv[1])))
        | "group ranges" >> beam.GroupByKey()
        | "keep" >> beam.FlatMap(_keep_range, min_count)
    )
    offsets = (
        kept
        | "range sizes" >> beam.Map(lambda kv: (kv[0], len(kv[1])))
        | "all sizes" >> beam.combiners.ToList()
        | "offsets" >> beam.Map(lookups.range_offsets)
    )
    return kept | "chunks" >> beam.Map(_chunk, beam.pvalue.AsSingleton(offsets), work)
