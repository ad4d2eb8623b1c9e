"""TF Serving's request protos and TensorProto <-> NumPy, without loading TensorFlow.

``tensorflow_serving.apis`` imports TensorFlow's generated protos (``tensorflow.core.framework.*_pb2``),
and importing any of them runs ``tensorflow/__init__``, which loads the whole runtime (5-7 s and
its native start-up logs). ``apis()`` imports the generated modules alone, so that a client starts
in well under a second; ``tensor_proto`` and ``ndarray`` stand in for ``tf.make_tensor_proto`` and
``tf.make_ndarray`` on the numeric types. A process that imports TensorFlow later gets the same
proto modules (they stay in ``sys.modules``), and one that has already imported it is left alone.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

import numpy as np

# TensorFlow's DataType names and the NumPy types of their values (the numeric types; TF Serving's
# REST metadata names the same enum).
NUMPY_TYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
}
# The TensorProto field that holds each type's values when ``tensor_content`` is empty.
_VALUE_FIELDS = {
    "DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_HALF": "half_val",
    "DT_INT8": "int_val", "DT_INT16": "int_val", "DT_INT32": "int_val", "DT_UINT8": "int_val",
    "DT_UINT16": "int_val", "DT_INT64": "int64_val", "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val", "DT_BOOL": "bool_val",
}
_APIS = ("model_pb2", "predict_pb2", "get_model_status_pb2", "get_model_metadata_pb2",
         "prediction_service_pb2_grpc", "model_service_pb2_grpc")


def _import_without_tensorflow_init(names: Sequence[str]) -> dict[str, types.ModuleType]:
    """The modules ``names`` (dotted paths), imported with a bare package object in TensorFlow's
    place unless TensorFlow is loaded: its submodules import from its directory without running
    its __init__."""
    stub = None
    if "tensorflow" not in sys.modules:
        stub = importlib.util.module_from_spec(
            importlib.machinery.ModuleSpec("tensorflow", None, is_package=True)
        )
        stub.__path__ = list(importlib.util.find_spec("tensorflow").submodule_search_locations)
        sys.modules["tensorflow"] = stub
    try:
        return {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in names}
    finally:
        if stub is not None and sys.modules.get("tensorflow") is stub:
            del sys.modules["tensorflow"]


@functools.cache
def apis() -> types.SimpleNamespace:
    """The ``tensorflow_serving.apis`` modules the clients use, and ``types_pb2``/``tensor_pb2``,
    by name (``apis().predict_pb2``)."""
    return types.SimpleNamespace(**_import_without_tensorflow_init(
        [*(f"tensorflow_serving.apis.{name}" for name in _APIS),
         *(f"tensorflow.core.framework.{name}" for name in ("types_pb2", "tensor_pb2"))]
    ))


@functools.cache
def example() -> types.ModuleType:
    """``tensorflow.core.example.example_pb2`` (``tf.train.Example``, the converted records)."""
    return _import_without_tensorflow_init(["tensorflow.core.example.example_pb2"])["example_pb2"]


def tensor_proto(value: Any) -> Any:
    """``value`` (array-like of a numeric or bool type) as a TensorProto, like
    ``tf.make_tensor_proto``.

    Raises:
        ValueError: for a type without a TensorFlow numeric counterpart (e.g. strings).
    """
    array = np.asarray(value)
    name = next((name for name, kind in NUMPY_TYPES.items() if array.dtype == kind), None)
    if name is None:
        raise ValueError(f"cannot send an array of {array.dtype}; send numbers (int64 IDs).")
    protos = apis()
    proto = protos.tensor_pb2.TensorProto(
        dtype=protos.types_pb2.DataType.Value(name),
        tensor_content=np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes(),
    )
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def ndarray(proto: Any) -> np.ndarray:
    """A TensorProto's values, like ``tf.make_ndarray``: from ``tensor_content``, else from the
    type's value field, whose last value repeats to fill the shape (an empty one means zeros).

    Raises:
        ValueError: for a type without a NumPy numeric counterpart.
    """
    name = apis().types_pb2.DataType.Name(proto.dtype)
    if name not in NUMPY_TYPES:
        raise ValueError(f"cannot read a tensor of {name}.")
    dtype = np.dtype(NUMPY_TYPES[name])
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[name])
    if name == "DT_HALF":  # the bits of each half, in an int32 field
        array = np.array(values, np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype)
    size = int(np.prod(shape))
    if array.size < size:
        fill = array[-1] if array.size else dtype.type(0)
        array = np.concatenate([array, np.full(size - array.size, fill, dtype)])
    return array.reshape(shape)
