"""A 64-bit mixing bijection (the SplitMix64 finaliser) and the partitioning built on it.

Partitions must stay balanced whatever the ID distribution: Taobao-MM IDs are already hashed, but
synthetic or re-indexed inputs may be small consecutive integers, so IDs are mixed first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))
_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def mix64(values: np.ndarray) -> np.ndarray:
    """Bijective, well-spread uint64 image of int64/uint64 ``values`` (0 maps to 0)."""
    z = np.ascontiguousarray(values).astype(np.uint64, copy=True)
    z ^= z >> _SHIFTS[0]
    z *= _MULTIPLIERS[0]
    z ^= z >> _SHIFTS[1]
    z *= _MULTIPLIERS[1]
    z ^= z >> _SHIFTS[2]
    return z


def mix64_graph(values: tf.Tensor) -> tf.Tensor:
    """``mix64`` as TensorFlow ops: (N,) int64 tf.Tensor -> (N,) uint64, for input pipelines that
    run where no Python does (tf.data workers of a remote cluster)."""
    import tensorflow as tf  # here: the NumPy functions serve pipelines that load no TensorFlow

    z = tf.bitcast(tf.cast(values, tf.int64), tf.uint64)
    for shift, multiplier in zip(_SHIFTS, (*_MULTIPLIERS, None)):
        z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(shift, tf.uint64)))
        if multiplier is not None:
            z = z * tf.constant(multiplier, tf.uint64)
    return z


def partition_of(ids: np.ndarray, num_partitions: int) -> np.ndarray:
    """Partition in [0, num_partitions) of each int64 ID, int64."""
    if num_partitions <= 0:
        raise ValueError(f"`num_partitions` must be positive, got {num_partitions}.")
    return (mix64(ids) % np.uint64(num_partitions)).astype(np.int64)


def order_by_partition(
    partitions: np.ndarray, num_partitions: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stable order of the rows by partition, and where each partition starts in it
    ((num_partitions + 1,) bounds): partition p is ``order[bounds[p]:bounds[p + 1]]``."""
    order = np.argsort(partitions, kind="stable")
    return order, np.searchsorted(partitions[order], np.arange(num_partitions + 1))
