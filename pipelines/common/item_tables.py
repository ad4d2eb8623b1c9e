"""Item-side tables aligned with the item vocabulary (row i = item index i), as mmap-able ``.npy``.

* ``multimodal_table.npy`` int8 (V, 128): the SCL vector of each item, zero where there is none
  (and for PAD/OOV). An all-zero row means "no vector", for the model and for the counts.
* ``item_attributes.npy`` int32 (V, 3): category, attr_213 and attr_214 *indices* of each item;
  0 (PAD) where item_features has no row for it.

Both are filled by one sequential pass over their table, so the first row of a duplicated item
wins deterministically; memory is one record batch plus the (memory-mapped) output.

Rules: a row whose item is missing (null/0) or not in the item vocabulary is counted and skipped
(only train items and SCL items have a row to fill); an SCL vector whose length is not 128 is
``malformed``; a repeated item is ``duplicate``. rows_in = written + sum of the other counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from muse_tf.contract import features, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from pipelines.common import parquet_input as pi
from pipelines.common import taobao_mm_schema as release

ATTRIBUTE_COLUMNS = (release.ITEM_CATEGORY, *release.ATTRIBUTE_COLUMNS)
ATTRIBUTE_FEATURES = tuple(release.COLUMN_FEATURE[column] for column in ATTRIBUTE_COLUMNS)
IsSet = Callable[[np.ndarray], np.ndarray]  # item indices -> already filled by an earlier row


def _first_new_rows(indices: np.ndarray, already_set: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each index not set before (first row wins)."""
    _, first = np.unique(indices, return_index=True)
    first = np.sort(first)
    return first[~already_set[first]]


def attribute_rows(
    batch: pa.RecordBatch, item_vocab: np.ndarray, is_set: IsSet, counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of an item_features batch that fill the table, and their item indices in
    ``item_vocab``: present, in the vocabulary, first of their item (``is_set`` tells which
    indices earlier batches filled). Adds the batch's row counts to ``counts``."""
    raw_items = pi.ids(batch, release.ITEM_ID)
    index = vocabulary.lookup(item_vocab, raw_items, assume_sorted=True)
    present = raw_items != release.MISSING
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
    batch: pa.RecordBatch, item_vocab: np.ndarray, is_set: IsSet, counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The (K, 128) int8 vectors of an SCL batch that fill the table, and their item indices in
    ``item_vocab``: present, 128 long, in the vocabulary, first of their item. Adds the batch's
    row counts to ``counts``."""
    raw_items = pi.ids(batch, release.ITEM_ID)
    vectors, lengths = pi.id_lists(batch, release.SCL_VECTOR)
    index = vocabulary.lookup(item_vocab, raw_items, assume_sorted=True)
    present = raw_items != release.MISSING
    well_formed = lengths == release.EMBEDDING_DIM
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
    return flat.reshape(-1, release.EMBEDDING_DIM).astype(np.int8), index[new]


def attribute_counts() -> dict[str, int]:
    """Zeroed row counts of the item attribute table."""
    return {"rows_in": 0, "written": 0, "missing_id": 0, "not_in_vocab": 0, "duplicate": 0}


def multimodal_counts() -> dict[str, int]:
    """Zeroed row counts of the multimodal table."""
    return {**attribute_counts(), "malformed": 0}


def build_attribute_table(
    files: list[str], vocabs: dict[str, np.ndarray], out: np.ndarray
) -> dict[str, int]:
    """Fills ``out`` (V, 3), zero-initialised, from item_features files; returns row counts."""
    counts = attribute_counts()
    for path in files:
        for batch in pi.read_batches(path, release.ITEM_FEATURES, None):
            new, index = attribute_rows(batch, vocabs["item"], lambda i: out[i, 0] != 0, counts)
            out[index] = np.stack(
                [
                    vocabulary.lookup(
                        vocabs[TAOBAO_MM.vocabulary[name]], pi.ids(batch, column)[new], assume_sorted=True
                    )
                    for column, name in zip(ATTRIBUTE_COLUMNS, ATTRIBUTE_FEATURES)
                ],
                axis=1,
            )
    return counts


def build_multimodal_table(
    files: list[str], item_vocab: np.ndarray, out: np.ndarray
) -> dict[str, int]:
    """Fills ``out`` (V, 128) int8, zero-initialised, from SCL files; returns row counts."""
    counts = multimodal_counts()
    for path in files:
        for batch in pi.read_batches(path, release.SCL_EMBEDDINGS, None):
            vectors, index = multimodal_rows(
                batch, item_vocab, lambda i: np.any(out[i] != 0, axis=1), counts
            )
            out[index] = vectors
    return counts
