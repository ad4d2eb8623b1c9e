"""Step 4, items: item_features and SCL rows join their item range, apply ``item_tables``' rules
and write the range's rows of the multimodal table; the item ranges then carry each item's
attribute indices and whether it has a vector (samples never see the vector itself)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from muse_tf.contract import vocabulary
from pipelines.beam import files, lookups, metrics, read
from pipelines.common import item_tables
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import RawSchema


def _route_items(
    element: tuple[np.ndarray, pa.RecordBatch], schema: RawSchema
) -> Iterator[tuple[tuple[str, int], tuple[np.ndarray, pa.RecordBatch]]]:
    """Item rows (item_features or SCL) to the item range of their item."""
    positions, batch = element
    for bucket, rows in lookups.by_bucket(pi.ids(batch, schema.item_id)):
        yield ("item", bucket), (positions[rows], batch.take(pa.array(rows)))


def _item_range(
    element: tuple[tuple[str, int], dict[str, Iterable]], work: str, schema: RawSchema
) -> Iterator[tuple[tuple[str, int], tuple[lookups.Chunk, np.ndarray, np.ndarray]]]:
    """One item range: first rows of item_features and SCL, the range's multimodal rows written;
    yields (range, (chunk with has_vector, raw attributes, has-a-row)) when the range is kept."""
    (_, bucket), groups = element
    chunk = next(iter(groups["chunk"]), None) or lookups.Chunk(0, np.zeros(0, np.int64))
    size = len(chunk.ids) + vocabulary.RESERVED
    columns = item_tables.attribute_columns(schema)
    raw_attributes = np.zeros((size, len(columns)), np.int64)
    has_row = np.zeros(size, bool)
    counts = item_tables.attribute_counts()
    attribute_rows = read.concat_by_position(groups["features"])
    if attribute_rows is not None:
        new, index = item_tables.attribute_rows(
            attribute_rows, chunk.ids, lambda i: has_row[i], counts, schema
        )
        has_row[index] = True
        raw_attributes[index] = np.stack([pi.ids(attribute_rows, c)[new] for c in columns], axis=1)
    for name, value in counts.items():
        metrics.count(f"item_features/{name}", value)
    vectors = np.zeros((size, schema.embedding_dim), schema.vector_dtype)
    counts = item_tables.multimodal_counts()
    scl_rows = read.concat_by_position(groups["scl"])
    if scl_rows is not None:
        new_vectors, index = item_tables.multimodal_rows(
            scl_rows, chunk.ids, lambda i: np.any(vectors[i] != 0, axis=1), counts, schema
        )
        vectors[index] = new_vectors
    for name, value in counts.items():
        metrics.count(f"multimodal/{name}", value)
    if len(chunk.ids):
        files.save(files.range_path(work, "multimodal", "item", bucket), vectors[vocabulary.RESERVED :])
        chunk.payload["has_vector"] = np.any(vectors[vocabulary.RESERVED :] != 0, axis=1)
        yield (
            ("item", bucket),
            (
                chunk,
                raw_attributes[vocabulary.RESERVED :],
                has_row[vocabulary.RESERVED :],
            ),
        )


def _attribute_features(schema: RawSchema) -> list[str]:
    """The features of the item table's attribute columns (``item_tables.attribute_columns``)."""
    return [schema.column_feature[c] for c in item_tables.attribute_columns(schema)]


def _attribute_request(
    element: tuple, schema: RawSchema
) -> tuple[tuple[str, int], dict[str, np.ndarray]]:
    key, (_, raw_attributes, has_row) = element
    return key, {
        schema.spec.vocabulary[name]: np.unique(raw_attributes[has_row, i])
        for i, name in enumerate(_attribute_features(schema))
    }


def _item_chunk(element: tuple, schema: RawSchema) -> tuple[tuple[str, int], lookups.Chunk]:
    """An item range with its attributes as indices (PAD where item_features has no row)."""
    key, groups = element
    chunk, raw_attributes, has_row = next(iter(groups["item"]))
    answers = next(iter(groups["answers"]), {})
    fetched = lookups.FetchedLookups(answers, schema.spec)
    attributes = np.zeros(raw_attributes.shape, np.int64)
    for i, name in enumerate(_attribute_features(schema)):
        attributes[has_row, i] = fetched.index(name, raw_attributes[has_row, i])
    chunk.payload["attributes"] = attributes
    return key, chunk


def lookup_ranges(
    reads: dict[str, beam.PCollection], chunks: beam.PCollection, work: str, schema: RawSchema
) -> beam.PCollection:
    """``chunks`` (the kept ranges of every vocabulary) with the item ranges' payload added."""
    item_rows = {
        name: reads[table] | f"route {name} {table}" >> beam.FlatMap(_route_items, schema)
        for name, table in (("features", schema.item_features), ("scl", schema.scl_embeddings))
    }
    item_ranges = (
        {"chunk": chunks | "item ranges" >> beam.Filter(lambda kv: kv[0][0] == "item"), **item_rows}
        | "join items" >> beam.CoGroupByKey()
        | "item tables" >> beam.FlatMap(_item_range, work, schema)
    )
    attribute_answers = lookups.fetch(
        "attributes", item_ranges | "attribute IDs" >> beam.Map(_attribute_request, schema), chunks,
        schema.spec,
    )
    item_chunks = (
        {"item": item_ranges, "answers": attribute_answers}
        | "items with attributes" >> beam.CoGroupByKey()
        | "item chunks" >> beam.Map(_item_chunk, schema)
    )
    return (
        chunks | "other ranges" >> beam.Filter(lambda kv: kv[0][0] != "item"),
        item_chunks,
    ) | "lookup ranges" >> beam.Flatten()
