"""A frozen item-vector table read as unit vectors (pure TensorFlow and NumPy, no Keras): its
stored form, which ``muse_tf.layers.multimodal.MultimodalTable`` holds as weights, and the same form
as constants for the input pipeline.

Shapes: V = item vocabulary rows, M = vector width. Row ``i`` is the vector of item index ``i``; an
all-zero row means the item has no vector.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import tensorflow as tf

STORAGE_CHOICES = ("int8", "float32")


def pack_int8(table: np.ndarray) -> np.ndarray:
    """(V, M) int8 -> (V, M / 4) int32: four values per word, the stored form of an int8 table
    (1 byte per value, in a dtype that multi-worker collectives can broadcast; they reject int8)."""
    table = np.ascontiguousarray(table)
    if table.dtype != np.int8 or table.ndim != 2 or table.shape[1] % 4:
        raise ValueError(f"Expected a (V, M) int8 table with M divisible by 4, got {table.dtype} "
                         f"{table.shape}.")
    return table.view(np.int32)


def inverse_norms(table: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """(V, M) vectors -> (V,) float32 1 / ||row||, 0 for an all-zero row (an item without a vector).

    Stored beside a frozen table, it turns a looked-up row into a unit vector with one scaling,
    and tells whether an item has a vector without reading its row (``ItemVectors``).
    """
    table = np.asarray(table)
    inverse = np.zeros(len(table), np.float32)
    # int8 rows' sums of squares (at most 128 * 128 per value) are exact in float32 for any width
    # up to 1,024, whatever the order of the additions: the same result at a fraction of float64's
    # cost, and einsum's row dot products ~3x faster than squaring and summing.
    exact = np.float32 if table.dtype == np.int8 and table.shape[1] <= 1024 else np.float64

    def fill(start: int) -> None:
        rows = table[start : start + chunk].astype(exact)
        squared = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
        inverse[start : start + chunk] = np.divide(
            1.0, np.sqrt(squared), out=np.zeros_like(squared), where=squared > 0
        )

    # In chunks: a float copy of the whole is 4-8x its size; one of 16K rows stays in cache (2.7x
    # faster than 64K rows at 10M rows). On up to four cores, as NumPy releases the GIL in these
    # loops (10M x 128 on two cores: 0.84 -> 0.25-0.33 s); more would each hold a chunk's copy
    # for little gain once memory bandwidth is the limit.
    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(0, len(table), chunk)))
    return inverse


def stored_form(table: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
    """(V, M) vectors -> (stored rows, inverse norms), the values ``MultimodalTable`` holds."""
    table = np.asarray(table)
    if storage == "int8" and table.dtype != np.int8:
        raise ValueError(f"multimodal table must be int8, got {table.dtype}.")
    stored = pack_int8(table) if storage == "int8" else table.astype(np.float32)
    return stored, inverse_norms(table)


class ItemVectors:
    """A frozen item-vector table read as unit vectors: all that a multimodal cosine needs.

    Scaling a row by its stored inverse norm replaces normalising it after every lookup (a sum of
    squares and a square root per behaviour), and the int8 de-quantisation scale drops out: a
    cosine does not depend on it. Built by ``MultimodalTable.vectors`` or ``constant_vectors``, not
    by hand.

    Rows are looked up on the tables as given (``tf.nn.embedding_lookup``): on a variable that reads
    only the rows asked for, shard by shard when it is partitioned, never the whole table.

    Args:
        table: (V, dim) float32, or (V, dim / 4) int32 holding int8 values packed by ``pack_int8``;
            a tensor or a (possibly sharded) variable.
        inverse_norm_table: (V,) float32 from ``inverse_norms(table)``, same kind.
        dim: the vector width.
    """

    def __init__(self, table: tf.Tensor, inverse_norm_table: tf.Tensor, dim: int):
        self.table = table
        self.inverse_norm_table = inverse_norm_table
        self.dim = dim

    def raw(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (..., dim) float32 stored rows, not normalised."""
        rows = tf.nn.embedding_lookup(self.table, items)
        if rows.dtype == tf.float32:
            return rows
        quantised = tf.reshape(tf.bitcast(rows, tf.int8), tf.concat([tf.shape(items), [self.dim]], 0))
        return tf.cast(quantised, tf.float32)

    def inverse_norm(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (...) 1 / ||row||, 0 for an item without a vector."""
        return tf.nn.embedding_lookup(self.inverse_norm_table, items)

    def unit(self, items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(...) item indices -> unit vectors (..., dim) (zero where none), has-vector (...)."""
        inverse_norm = self.inverse_norm(items)
        return self.raw(items) * inverse_norm[..., None], inverse_norm > 0


def constant_vectors(table: np.ndarray) -> ItemVectors:
    """``MultimodalTable.vectors`` of a layer holding ``table`` (int8 stored packed, anything else
    as float32), as constants: for the input pipeline, which must not capture a model's variables."""
    table = np.asarray(table)
    stored, inverse = stored_form(table, "int8" if table.dtype == np.int8 else "float32")
    return ItemVectors(tf.constant(stored), tf.constant(inverse), table.shape[1])
