"""Sidecar mode (``serving.server --forward_to HOST:PORT``): the model runs in another server
(stock ``tensorflow_model_server``), this one forwards each Predict to it over gRPC.

``Remote`` stands where a loaded ``Servable`` would: it takes the model's version and
SignatureDefs from the other server's GetModelMetadata, checks requests against them as the local
server does, and forwards the checked inputs; the other server's errors keep their status.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.client import GrpcClient, PredictionError
from serving.servable import InvalidArgument, NotFound, Servable, ServingError, Unavailable

_ERRORS = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": Unavailable,
}


def split_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port).

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    return host, int(port)


class Remote(Servable):
    """Model ``name`` served at ``target`` (gRPC ``HOST:PORT``).

    Args:
        max_history_length: the export's history limit (the other server does not report it).
        timeout_s: the deadline of each forwarded call.
        wait_s: how long to wait at start for the model to be AVAILABLE there.
    """

    def __init__(
        self, name: str, target: str, max_history_length: int, timeout_s: float, wait_s: float
    ):
        host, port = split_target(target)
        self._client = GrpcClient(host, port, name, timeout=timeout_s)
        try:
            self._client.wait_until_available(wait_s)
            response = self._client.metadata()
        except PredictionError as error:
            self._client.close()
            raise Unavailable(f"{target}: {error}") from None
        self.name, self.path = name, f"grpc://{target}"
        self.version = response.model_spec.version.value
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(self.signature_defs)
        self.max_history_length = max_history_length

    def _run(self, inputs: Mapping[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        try:
            return self._client.predict(inputs, signature_name)
        except PredictionError as error:
            failure = _ERRORS.get(error.code, ServingError)(f"{self.path}: {error}")
            if failure.__class__ is ServingError and error.code:
                failure.code = error.code  # keep the other server's status over gRPC
            raise failure from None

    def warmup(self) -> int:
        """Nothing to warm up here: the other server replays the export's warm-up requests."""
        return 0

    def close(self) -> None:
        self._client.close()
