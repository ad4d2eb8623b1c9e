"""TF Serving's gRPC API for one Servable: PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus).

Bounded like ``tensorflow_model_server`` configured with ``--grpc_channel_arguments`` and
``--grpc_max_threads``: a message size limit (``grpc.max_receive_message_length``) and a fixed pool
of handler threads. Beyond TF Serving, each input TensorProto is checked before it becomes an
array: its declared shape must hold at most ``max_tensor_elements`` values and exactly as many
values as it carries, so a few hundred bytes cannot declare (and make the server allocate) 50M
elements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.defaults import (
    DEFAULT_GRPC_MAX_THREADS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TENSOR_ELEMENTS,
)
from serving.servable import InvalidArgument, Servable, ServingError

logger = logging.getLogger(__name__)


def _version(spec: model_pb2.ModelSpec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _check_spec(servable: Servable, spec: model_pb2.ModelSpec) -> None:
    """Refuses a request for another model, version or version label."""
    servable.check_spec(spec.name, _version(spec), spec.version_label)


def _abort(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the RPC with the error's status; anything unexpected is INTERNAL (and logged)."""
    if isinstance(error, ServingError):
        context.abort(getattr(grpc.StatusCode, error.code), str(error))
    else:
        logger.exception("gRPC request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


# Where a TensorProto of each dtype keeps its values when not in ``tensor_content``, and how many
# entries make one element.
_VALUE_FIELDS = {
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    **{dtype: ("int_val", 1) for dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16,
                                          types_pb2.DT_INT32, types_pb2.DT_UINT8,
                                          types_pb2.DT_UINT16)},
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}
_ALL_VALUE_FIELDS = {field for field, _ in _VALUE_FIELDS.values()}


def _carried_values(name: str, proto: tensor_pb2.TensorProto) -> int:
    """How many elements the proto's bytes hold (``tensor_content`` or its dtype's value field)."""
    if proto.dtype not in _VALUE_FIELDS:
        raise InvalidArgument(f"Input {name!r} has an unsupported dtype enum {proto.dtype}.")
    field, per_element = _VALUE_FIELDS[proto.dtype]
    dtype = tf.dtypes.as_dtype(proto.dtype)
    others = sorted(f for f in _ALL_VALUE_FIELDS - {field} if len(getattr(proto, f)))
    if others:
        raise InvalidArgument(
            f"Input {name!r} is {dtype.name} but carries values in {', '.join(others)}."
        )
    listed = len(getattr(proto, field)) // per_element
    if not proto.tensor_content:
        return listed
    itemsize = np.dtype(dtype.as_numpy_dtype).itemsize if dtype != tf.string else 0
    if listed or not itemsize or len(proto.tensor_content) % itemsize:
        raise InvalidArgument(
            f"Input {name!r}: tensor_content of {len(proto.tensor_content)} bytes is not a whole "
            f"number of {dtype.name} values (or comes with other value fields)."
        )
    return len(proto.tensor_content) // itemsize


def tensor_from_proto(
    name: str, proto: tensor_pb2.TensorProto, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
) -> np.ndarray:
    """The input as an array, refused before anything is allocated if its declared shape is
    unknown, negative, larger than ``max_elements`` or disagrees with the values it carries.

    (TensorFlow itself would repeat the last value to fill a larger declared shape; requests that
    rely on that are refused here.)
    """
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"Input {name!r} must declare its shape (unknown_rank is set).")
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):
        raise InvalidArgument(f"Input {name!r} declares a negative dimension: {dims}.")
    elements = 1
    for size in dims:  # Python integers: no overflow, and stops as soon as the cap is passed
        elements *= size
        if elements > max_elements:
            raise InvalidArgument(
                f"Input {name!r} declares shape {dims}, more than the server's "
                f"max_tensor_elements={max_elements} values."
            )
    carried = _carried_values(name, proto)
    if carried != elements:
        raise InvalidArgument(
            f"Input {name!r} declares shape {dims} ({elements} values) but carries {carried}."
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # a malformed TensorProto
        raise InvalidArgument(f"Input {name!r} is not a valid TensorProto: {error}") from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's ``PredictionService``: Predict and GetModelMetadata (other RPCs: UNIMPLEMENTED)."""

    def __init__(self, servable: Servable, max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS):
        self._servable = servable
        self._max_tensor_elements = max_tensor_elements

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Runs the requested signature; honours ``output_filter``; errors abort the RPC."""
        try:
            spec = request.model_spec
            _check_spec(self._servable, spec)
            inputs = {
                name: tensor_from_proto(name, proto, self._max_tensor_elements)
                for name, proto in request.inputs.items()
            }
            outputs, notes = self._servable.predict_annotated(inputs, spec.signature_name)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise InvalidArgument(f"output tensor alias not found in signature: {unknown[0]}")
        except Exception as error:
            _abort(context, error)
        if notes:  # rank_by_user says which history it used
            context.set_trailing_metadata(tuple(notes.items()))
        response = predict_pb2.PredictResponse(
            model_spec=self._servable.model_spec(spec.signature_name)
        )
        for name in request.output_filter or outputs:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The SignatureDefs (the only metadata field TF Serving defines)."""
        try:
            _check_spec(self._servable, request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise InvalidArgument(
                    'metadata_field must be ["signature_def"], the only one supported.'
                )
        except Exception as error:
            _abort(context, error)
        return self._servable.metadata()


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ``ModelService``: GetModelStatus only (no model-config reloads)."""

    def __init__(self, servable: Servable):
        self._servable = servable

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The loaded version, AVAILABLE."""
        try:
            _check_spec(self._servable, request.model_spec)
        except Exception as error:
            _abort(context, error)
        return self._servable.status()


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's ``--grpc_channel_arguments``: ``key=value,key=value``; integer values as ints."""
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"gRPC channel argument {item!r} is not of the form key=value.")
        arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return arguments


def make_grpc_server(
    servable: Servable,
    host: str,
    port: int,
    threads: int = DEFAULT_GRPC_MAX_THREADS,
    channel_arguments: Sequence[tuple[str, int | str]] = (),
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
) -> grpc.Server:
    """A (not yet started) gRPC server for ``servable`` on ``host:port``.

    Args:
        threads: handler threads (``--grpc_max_threads``); further calls queue in gRPC.
        channel_arguments: gRPC server options; they override the defaults
            (``grpc.max_receive_message_length`` = ``DEFAULT_MAX_MESSAGE_BYTES``).
        max_tensor_elements: the most values one input tensor may declare.
    """
    options = dict(
        [
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ]
    )
    options.update(channel_arguments)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), options=list(options.items())
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(servable, max_tensor_elements), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(servable), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"Cannot bind gRPC to {host}:{port}.")
    return server
