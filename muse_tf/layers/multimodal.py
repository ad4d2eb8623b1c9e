"""The frozen multimodal item table as a layer: stored rows and their inverse norms (their stored
form and the unit vectors read from them: ``muse_tf.ops.item_vectors``).

Shapes: V = item vocabulary rows, M = vector width. Row ``i`` is the vector of item index ``i``; an
all-zero row means the item has no vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tf_keras

from muse_tf.ops.item_vectors import STORAGE_CHOICES, ItemVectors, stored_form


def _assign_rows(variable: tf.Variable, rows: np.ndarray, chunk: int = 1 << 16) -> None:
    """Writes ``rows`` into ``variable`` a chunk of rows at a time, so that loading a table (e.g. a
    memory-mapped file) holds no second full copy beside the variable's own; works on mirrored and
    sharded variables alike."""
    for start in range(0, len(rows), chunk):
        stop = min(start + chunk, len(rows))
        values = tf.constant(rows[start:stop], variable.dtype)
        variable.scatter_update(tf.IndexedSlices(values, tf.range(start, stop)))


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class MultimodalTable(tf_keras.layers.Layer):
    """The frozen (V, M) multimodal table as two non-trainable weights: the stored rows and their
    inverse norms. No gradient reaches them; they enter a model only through ``vectors``.

    int8 vectors are stored four to an int32 word (``pack_int8``): 1 byte per value, in a dtype
    that multi-worker collectives can broadcast. Fill the weights with ``set_table``.

    Checkpoints written inside ``left_out_of_checkpoints`` (training's backups) hold neither
    weight: the table never changes, so it is loaded again from its file instead; a SavedModel
    always holds it.

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
        self._checkpointed = True

    @contextlib.contextmanager
    def left_out_of_checkpoints(self) -> Iterator[None]:
        """Checkpoints saved in the ``with`` block leave both weights out (and restores leave
        them as they are): a backup's size and time do not grow with a table it never changes."""
        self._checkpointed = False
        try:
            yield
        finally:
            self._checkpointed = True

    def _trackable_children(self, save_type: str = "checkpoint", **kwargs) -> dict:
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint" and not self._checkpointed:
            frozen = (self.table, self.inverse_norms)
            children = {k: v for k, v in children.items() if not any(v is w for w in frozen)}
        return children

    def set_table(self, table: np.ndarray) -> None:
        """Loads the vectors (V, M), one row per item index (all zero for an item without one)."""
        table = np.asarray(table)
        if table.shape != (self.vocab_size, self.dim):
            raise ValueError(
                f"multimodal table has shape {table.shape}, model expects {(self.vocab_size, self.dim)}."
            )
        stored, inverse = stored_form(table, self.storage)
        _assign_rows(self.inverse_norms, inverse)
        _assign_rows(self.table, stored)

    def get_table(self) -> np.ndarray:
        """The (V, M) vectors ``set_table`` loaded: int8, or float32."""
        stored = self.table.numpy()
        return stored.view(np.int8) if self.storage == "int8" else stored

    @property
    def vectors(self) -> ItemVectors:
        """The weights read as unit vectors. The variables themselves are passed (non-trainable, so
        no gradient reaches them): a step reads only the rows it looks up, never a copy of the
        whole table."""
        return ItemVectors(self.table, self.inverse_norms, self.dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim,
                "storage": self.storage}
