"""TF Serving's gRPC API for one Servable: PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus), with TF Serving's message size limit (2 GiB), so that requests
carrying 100K-long histories fit."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import MAX_GRPC_MESSAGE_BYTES
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


def _to_array(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # a malformed TensorProto
        raise InvalidArgument(f"Input {name!r} is not a valid TensorProto: {error}") from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's ``PredictionService``: Predict and GetModelMetadata (other RPCs: UNIMPLEMENTED)."""

    def __init__(self, servable: Servable):
        self._servable = servable

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Runs the requested signature; honours ``output_filter``; errors abort the RPC."""
        try:
            spec = request.model_spec
            _check_spec(self._servable, spec)
            inputs = {name: _to_array(name, proto) for name, proto in request.inputs.items()}
            outputs = self._servable.predict(inputs, spec.signature_name)
            unknown = sorted(set(request.output_filter) - set(outputs))
            if unknown:
                raise InvalidArgument(f"output tensor alias not found in signature: {unknown[0]}")
        except Exception as error:
            _abort(context, error)
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


def make_grpc_server(servable: Servable, host: str, port: int, threads: int = 8) -> grpc.Server:
    """A (not yet started) gRPC server for ``servable`` on ``host:port``."""
    options = [
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(servable), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(servable), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"Cannot bind gRPC to {host}:{port}.")
    return server
