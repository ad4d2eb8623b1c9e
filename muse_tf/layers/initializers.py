"""Initializers whose peak memory is the variable they fill, for tables of millions of rows."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import tensorflow as tf
import tf_keras

# Whether tables_to_be_restored's block is open, per thread.
_RESTORING = threading.local()


@contextlib.contextmanager
def tables_to_be_restored() -> Iterator[None]:
    """Inside the block, ``InPlaceRandomNormal`` gives zeros instead of drawing: for a model built
    only to have every weight restored (``runs.build_model(restored=True)``: a finished run's
    load, a resume from a backup), where the draw (10M x 16: 1.1-1.5 s on two cores) would be
    overwritten unread. Zeros, not uninitialised memory: its pages are touched once either way, by
    the zeros or else by the restore."""
    outer = getattr(_RESTORING, "active", False)
    _RESTORING.active = True
    try:
        yield
    finally:
        _RESTORING.active = outer


@tf_keras.utils.register_keras_serializable(package="muse_tf")
class InPlaceRandomNormal(tf_keras.initializers.RandomNormal):
    """tf-keras's ``RandomNormal``, the same values, drawn in one buffer.

    Eagerly, tf-keras draws N(0, 1), scales it, then shifts it: three full-size tensors alive at
    once before the variable exists (1.9 GB for a 10M x 16 float table, each page touched for the
    first time). Run as one graph function, the scale and the shift overwrite the draw in place.
    The shape enters the function as a tensor: with a constant shape Grappler would fold the
    whole draw into a constant, holding it twice and taking longer. Inside a graph, or for a
    DTensor layout, it is tf-keras's own call.
    """

    def __call__(self, shape: Sequence[int], dtype: tf.dtypes.DType | str | None = None,
                 **kwargs) -> tf.Tensor:
        if not tf.executing_eagerly() or "layout" in kwargs:
            return super().__call__(shape, dtype, **kwargs)
        shape = kwargs.pop("partition_shape", shape)  # a shard's shape (sharded variables)
        if getattr(_RESTORING, "active", False):
            return tf.zeros(shape, dtype or tf_keras.backend.floatx())
        draw = super().__call__
        dims = tf.constant(tf.TensorShape(shape).as_list(), tf.int64)
        # A new function per call: its Python (tf-keras's seed bookkeeping) runs once, as eagerly.
        # Traced by get_concrete_function: calling the tf.function itself would warn of retracing
        # from the fifth table on.
        function = tf.function(lambda shape_tensor: draw(shape_tensor, dtype, **kwargs), autograph=False)
        return function.get_concrete_function(dims)(dims)
