"""The frozen multimodal item table: stored rows, their inverse norms, and unit vectors read from them.

Shapes: V = item vocabulary rows, M = vector width. Row ``i`` is the vector of item index ``i``; an
all-zero row means the item has no vector.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

STORAGE_CHOICES = ("int8", "float32")


def pack_int8(table: np.ndarray) -> np.ndarray:
    """(V, M) int8 -> (V, M / 4) int32: four values per word, the stored form of an int8 table
    (1 byte per value, in a dtype that multi-worker collectives can broadcast; they reject int8)."""
    table = np.ascontiguousarray(table)
    if table.dtype != np.int8 or table.ndim != 2 or table.shape[1] % 4:
        raise ValueError(f"Expected a (V, M) int8 table with M divisible by 4, got {table.dtype} "
                         f"{table.shape}.")
    return table.view(np.int32)


def inverse_norms(table: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(V, M) vectors -> (V,) float32 1 / ||row||, 0 for an all-zero row (an item without a vector).

    Stored beside a frozen table, it turns a looked-up row into a unit vector with one scaling,
    and tells whether an item has a vector without reading its row (``ItemVectors``).
    """
    table = np.asarray(table)
    inverse = np.zeros(len(table), np.float32)
    for start in range(0, len(table), chunk):  # in chunks: a float64 copy of the whole is 8x its size
        squared = np.square(table[start : start + chunk], dtype=np.float64).sum(axis=1)
        inverse[start : start + chunk] = np.divide(
            1.0, np.sqrt(squared), out=np.zeros_like(squared), where=squared > 0
        )
    return inverse


class ItemVectors:
    """A frozen item-vector table read as unit vectors: all that a multimodal cosine needs.

    Scaling a row by its stored inverse norm replaces normalising it after every lookup (a sum of
    squares and a square root per behaviour), and the int8 de-quantisation scale drops out: a
    cosine does not depend on it. Built by ``MultimodalTable`` (``vectors`` or
    ``constant_vectors``), not by hand.

    Args:
        table: (V, dim) float32, or (V, dim / 4) int32 holding int8 values packed by ``pack_int8``.
        inverse_norm_table: (V,) float32 from ``inverse_norms(table)``.
        dim: the vector width.
    """

    def __init__(self, table: tf.Tensor, inverse_norm_table: tf.Tensor, dim: int):
        self.table = table
        self.inverse_norm_table = inverse_norm_table
        self.dim = dim

    def raw(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (..., dim) float32 stored rows, not normalised."""
        rows = tf.gather(self.table, items)
        if rows.dtype == tf.float32:
            return rows
        quantised = tf.reshape(tf.bitcast(rows, tf.int8), tf.concat([tf.shape(items), [self.dim]], 0))
        return tf.cast(quantised, tf.float32)

    def inverse_norm(self, items: tf.Tensor) -> tf.Tensor:
        """(...) item indices -> (...) 1 / ||row||, 0 for an item without a vector."""
        return tf.gather(self.inverse_norm_table, items)

    def unit(self, items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(...) item indices -> unit vectors (..., dim) (zero where none), has-vector (...)."""
        inverse_norm = self.inverse_norm(items)
        return self.raw(items) * inverse_norm[..., None], inverse_norm > 0


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MultimodalTable(tf_keras.layers.Layer):
    """The frozen (V, M) multimodal table as two non-trainable weights: the stored rows and their
    inverse norms. No gradient reaches them; they enter a model only through ``vectors``.

    int8 vectors are stored four to an int32 word (``pack_int8``): 1 byte per value, in a dtype
    that multi-worker collectives can broadcast. Fill the weights with ``set_table``.

    Args:
        vocab_size: V, rows (the item vocabulary, PAD and OOV included).
        dim: M, the vector width (a multiple of 4 for int8).
        storage: ``int8`` (e.g. Taobao-MM's trunc(127 v)) or ``float32``.
    """

    def __init__(self, vocab_size: int, dim: int, storage: str = "int8", **kwargs):
        super().__init__(**kwargs)
        if storage not in STORAGE_CHOICES:
            raise ValueError(f"Invalid value for `storage`: {storage!r}; choose one of {STORAGE_CHOICES}.")
        self.vocab_size, self.dim, self.storage = vocab_size, dim, storage
        packed = storage == "int8"
        with tf.name_scope(self.name):  # created here, not in build: loadable before any call
            self.table = self.add_weight(
                name="table",
                shape=[vocab_size, dim // 4 if packed else dim],
                dtype="int32" if packed else "float32",
                initializer="zeros",
                trainable=False,
            )
            self.inverse_norms = self.add_weight(
                name="inverse_norms", shape=[vocab_size], dtype="float32", initializer="zeros",
                trainable=False,
            )

    @staticmethod
    def stored_form(table: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray]:
        """(V, M) vectors -> (stored rows, inverse norms), the two weights' values."""
        table = np.asarray(table)
        if storage == "int8" and table.dtype != np.int8:
            raise ValueError(f"multimodal table must be int8, got {table.dtype}.")
        stored = pack_int8(table) if storage == "int8" else table.astype(np.float32)
        return stored, inverse_norms(table)

    def set_table(self, table: np.ndarray) -> None:
        """Loads the vectors (V, M), one row per item index (all zero for an item without one)."""
        table = np.asarray(table)
        if table.shape != (self.vocab_size, self.dim):
            raise ValueError(
                f"multimodal table has shape {table.shape}, model expects {(self.vocab_size, self.dim)}."
            )
        stored, inverse = self.stored_form(table, self.storage)
        self.inverse_norms.assign(inverse)
        self.table.assign(stored)

    @property
    def vectors(self) -> ItemVectors:
        """The weights read as unit vectors (no gradient)."""
        return ItemVectors(tf.stop_gradient(self.table), tf.stop_gradient(self.inverse_norms), self.dim)

    @classmethod
    def constant_vectors(cls, table: np.ndarray) -> ItemVectors:
        """``vectors`` of a layer holding ``table`` (int8 stored packed, anything else as float32),
        as constants: for the input pipeline, which must not capture a model's variables."""
        table = np.asarray(table)
        stored, inverse = cls.stored_form(table, "int8" if table.dtype == np.int8 else "float32")
        return ItemVectors(tf.constant(stored), tf.constant(inverse), table.shape[1])

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim,
                "storage": self.storage}
