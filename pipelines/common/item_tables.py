"""Item-side tables aligned with the item vocabulary (row i = item index i), as mmap-able ``.npy``.

* ``multimodal_table.npy`` (V, dim) of the spec's dtype (Taobao-MM: int8, 128): the vector of each
  item, zero where there is none (and for PAD/OOV). An all-zero row means "no vector", for the
  model and for the counts.
* ``item_attributes.npy`` int32 (V, 1 + A): category and attribute (Taobao-MM: 213, 214)
  *indices* of each item; 0 (PAD) where item_features has no row for it.

Both are filled by one sequential pass over their table, so the first row of a duplicated item
wins deterministically; memory is one record batch plus the (memory-mapped) output.

Rules: a row whose item is missing (null/0) or not in the item vocabulary is counted and skipped
(only train items and SCL items have a row to fill); a vector whose length is not the spec's
``multimodal.dim`` is ``malformed``; a repeated item is ``duplicate``. rows_in = written + sum of
the other counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from muse_tf.contract import features, vocabulary
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import MISSING, RawSchema

IsSet = Callable[[np.ndarray], np.ndarray]  # item indices -> already filled by an earlier row


def _first_new_rows(indices: np.ndarray, already_set: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each index not set before (first row wins)."""
    _, first = np.unique(indices, return_index=True)
    first = np.sort(first)
    return first[~already_set[first]]


def attribute_columns(schema: RawSchema) -> tuple[str, ...]:
    """The item table's columns of the attribute table, in its column order."""
    return (schema.item_category, *schema.attribute_columns)


def attribute_rows(
    batch: pa.RecordBatch, item_vocab: np.ndarray, is_set: IsSet, counts: dict[str, int],
    schema: RawSchema,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of an item_features batch that fill the table, and their item indices in
    ``item_vocab``: present, in the vocabulary, first of their item (``is_set`` tells which
    indices earlier batches filled). Adds the batch's row counts to ``counts``."""
    raw_items = pi.ids(batch, schema.item_id)
    index = vocabulary.lookup(item_vocab, raw_items, assume_sorted=True)
    present = raw_items != MISSING
    usable = present & (index != features.OOV)
    counts["rows_in"] += len(raw_items)
    counts["missing_id"] += int(np.count_nonzero(~present))
    counts["not_in_vocab"] += int(np.count_nonzero(present & ~usable))
    rows = np.flatnonzero(usable)
    new = rows[_first_new_rows(index[rows], is_set(index[rows]))]
    counts["duplicate"] += len(rows) - len(new)
    counts["written"] += len(new)
    return new, index[new]


def multimodal_rows(
    batch: pa.RecordBatch, item_vocab: np.ndarray, is_set: IsSet, counts: dict[str, int],
    schema: RawSchema,
) -> tuple[np.ndarray, np.ndarray]:
    """The (K, dim) vectors of a vector batch that fill the table, and their item indices in
    ``item_vocab``: present, dim long, in the vocabulary, first of their item. Adds the batch's
    row counts to ``counts``."""
    raw_items = pi.ids(batch, schema.item_id)
    vectors, lengths = pi.vector_lists(batch, schema.scl_vector, schema.vector_dtype)
    index = vocabulary.lookup(item_vocab, raw_items, assume_sorted=True)
    present = raw_items != MISSING
    well_formed = lengths == schema.embedding_dim
    usable = present & well_formed & (index != features.OOV)
    counts["rows_in"] += len(raw_items)
    counts["missing_id"] += int(np.count_nonzero(~present))
    counts["malformed"] += int(np.count_nonzero(present & ~well_formed))
    counts["not_in_vocab"] += int(np.count_nonzero(present & well_formed & ~usable))
    rows = np.flatnonzero(usable)
    new = rows[_first_new_rows(index[rows], is_set(index[rows]))]
    counts["duplicate"] += len(rows) - len(new)
    counts["written"] += len(new)
    flat, _ = pi.take_rows(vectors, pi.row_offsets(lengths), new)
    return flat.reshape(-1, schema.embedding_dim), index[new]


def attribute_counts() -> dict[str, int]:
    """Zeroed row counts of the item attribute table."""
    return {"rows_in": 0, "written": 0, "missing_id": 0, "not_in_vocab": 0, "duplicate": 0}


def multimodal_counts() -> dict[str, int]:
    """Zeroed row counts of the multimodal table."""
    return {**attribute_counts(), "malformed": 0}


def build_attribute_table(
    files: list[str], vocabs: dict[str, np.ndarray], out: np.ndarray, schema: RawSchema
) -> dict[str, int]:
    """Fills ``out`` (V, 1 + A), zero-initialised, from item_features files; returns row counts."""
    counts = attribute_counts()
    vocab_of = [schema.spec.vocabulary[schema.column_feature[c]] for c in attribute_columns(schema)]
    for path in files:
        for batch in pi.read_batches(path, schema.item_features, schema, None):
            new, index = attribute_rows(
                batch, vocabs["item"], lambda i: out[i, 0] != 0, counts, schema
            )
            out[index] = np.stack(
                [
                    vocabulary.lookup(vocabs[name], pi.ids(batch, column)[new], assume_sorted=True)
                    for column, name in zip(attribute_columns(schema), vocab_of)
                ],
                axis=1,
            )
    return counts


def build_multimodal_table(
    files: list[str], item_vocab: np.ndarray, out: np.ndarray, schema: RawSchema
) -> dict[str, int]:
    """Fills ``out`` (V, dim), zero-initialised, from vector files; returns row counts."""
    counts = multimodal_counts()
    for path in files:
        for batch in pi.read_batches(path, schema.scl_embeddings, schema, None):
            vectors, index = multimodal_rows(
                batch, item_vocab, lambda i: np.any(out[i] != 0, axis=1), counts, schema
            )
            out[index] = vectors
    return counts
