"""The vocabulary index rule: raw ID -> embedding-table index, the same in NumPy and in the graph.

A vocabulary is the array of its kept raw IDs; the ID at position p has index ``p + RESERVED``,
index ``features.PAD`` (0) marks padding and ``features.OOV`` (1) any ID the vocabulary lacks, so an
embedding table has ``len(ids) + RESERVED`` rows. The conversion (``pipelines/``), the artefact
readers and the SavedModel's lookup tables (``muse_tf.jobs.saved_model``) all map IDs through this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from muse_tf.contract import features

if TYPE_CHECKING:  # the graph-table helpers import it: mapping IDs in NumPy does not load TensorFlow
    import tensorflow as tf

RESERVED = 2  # PAD and OOV


def table_rows(ids: np.ndarray) -> int:
    """Embedding-table rows of a vocabulary of ``ids``: its IDs plus PAD and OOV."""
    return len(ids) + RESERVED


def _index(position: np.ndarray, found: np.ndarray) -> np.ndarray:
    return np.where(found, position + RESERVED, features.OOV).astype(np.int64)


def lookup(vocabulary: np.ndarray, raw_ids: np.ndarray, *, assume_sorted: bool = False) -> np.ndarray:
    """Indices of ``raw_ids`` (any shape) in ``vocabulary`` (OOV when absent), with NumPy.

    Args:
        vocabulary: (V,) distinct raw IDs in index order (a memmap works).
        raw_ids: raw int64 IDs.
        assume_sorted: ``vocabulary`` is ascending (as the conversion writes it): skips the sort.
    """
    raw_ids = np.asarray(raw_ids, np.int64)
    if len(vocabulary) == 0:
        return np.full(raw_ids.shape, features.OOV, np.int64)
    order = None if assume_sorted else np.argsort(vocabulary, kind="stable")
    sorted_ids = vocabulary if order is None else vocabulary[order]
    pos = np.minimum(np.searchsorted(sorted_ids, raw_ids), len(sorted_ids) - 1)
    found = np.asarray(sorted_ids[pos]) == raw_ids
    return _index(pos if order is None else order[pos], found)


def raw_ids(vocabulary: np.ndarray, indices: np.ndarray, unknown: int) -> np.ndarray:
    """The raw IDs of vocabulary ``indices`` (any shape): ``lookup``'s inverse. PAD and OOV no
    longer say which raw ID they stood for, so they become ``unknown`` (see ``unknown_id``)."""
    indices = np.asarray(indices, np.int64)
    if ((indices < 0) | (indices >= table_rows(vocabulary))).any():
        raise ValueError(
            f"Indices outside the vocabulary of {len(vocabulary)} IDs (+ {RESERVED} reserved)."
        )
    known = indices >= RESERVED
    out = np.full(indices.shape, unknown, np.int64)
    out[known] = np.asarray(vocabulary)[indices[known] - RESERVED]
    return out


def unknown_id(vocabulary: np.ndarray) -> int:
    """An int64 ID that ``vocabulary`` lacks, so that ``lookup`` maps it to OOV: 0 (the empty
    field of the Taobao-MM files) unless the vocabulary holds it, else the largest free ID below."""
    ids = np.asarray(vocabulary, np.int64)
    taken = np.unique(-ids[(ids <= 0) & (ids >= -len(ids))])  # 0, 1, ... for 0, -1, ...
    free = np.setdiff1d(np.arange(len(taken) + 1), taken)
    return -int(free[0])


def write_table_file(path: str, ids: np.ndarray, chunk: int = 1 << 20) -> None:
    """The text file ``lookup_table`` reads: one decimal ID per line, line p = position p."""
    ids = np.asarray(ids, np.int64)
    with open(path, "w") as f:
        for start in range(0, len(ids), chunk):
            f.write("".join(f"{value}\n" for value in ids[start : start + chunk].tolist()))


def lookup_table(path: str) -> tf.lookup.StaticHashTable:
    """A graph table raw ID -> position from ``write_table_file``'s file (-1 when absent)."""
    import tensorflow as tf

    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            path,
            tf.int64,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=-1,
    )


def lookup_in_graph(table: tf.lookup.StaticHashTable, raw_ids: tf.Tensor) -> tf.Tensor:
    """Indices of int64 ``raw_ids`` through ``lookup_table``'s table: ``lookup``'s rule in-graph."""
    import tensorflow as tf

    position = table.lookup(raw_ids)
    return tf.where(position < 0, tf.constant(features.OOV, tf.int64), position + RESERVED)
