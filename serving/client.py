"""Clients for a model served by TF Serving (or ``serving.server``): one call over REST or gRPC.

    with GrpcClient("127.0.0.1", 8500, "muse") as client:       # or RestClient(..., 8501, ...)
        scores = client.predict(inputs, signature_name="rank")   # {"probability": ..., "logit": ...}

``inputs`` maps input names to NumPy arrays (int64 raw IDs for muse-tf; see serving/README.md for
each signature). REST posts the columnar ``{"inputs": ...}`` format to ``/v1/models/NAME:predict``;
gRPC calls ``PredictionService.Predict`` with TensorProtos. Both return NumPy arrays of the
signature's output dtypes, and raise PredictionError with the server's message on failure.

CLI: ``python -m serving.client --protocol grpc --port 8500 --model_name muse --request
request.json`` where request.json is TF Serving's REST body ``{"signature_name": ..., "inputs":
{input name: value}}`` (``python -m serving.request`` writes one) or just ``{input name: value}``;
``--wait SECONDS`` first waits for a server that is still starting to have the model AVAILABLE.
gRPC and requests are imported by the clients that use them, so the command parses its flags
first; TensorFlow is never loaded (``serving.protos``), so a call starts in well under a second. A
server that does not answer is one line naming the address and what to check.
"""

from __future__ import annotations

import abc
import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from muse_tf import cli
from muse_tf.contract import signatures, strict_json
from serving import MAX_GRPC_MESSAGE_BYTES, protos


class PredictionError(RuntimeError):
    """The server refused or failed a request; the message is the server's, ``code`` the gRPC
    status name (gRPC client only; None otherwise)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class _Client(abc.ABC):
    """The interface both clients share; a context manager that closes its connection."""

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def available_version(self) -> int | None:
        """The newest AVAILABLE version of the model, or None; PredictionError when the server
        does not answer or does not know the model."""

    def wait_until_available(self, timeout_s: float, interval_s: float = 0.5) -> int:
        """Polls the model's status until a version is AVAILABLE (a starting server refuses
        connections, then loads and warms up the model); returns that version.

        Raises:
            PredictionError: none is AVAILABLE after ``timeout_s``; names the last answer.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                version = self.available_version()
                if version is not None:
                    return version
                reason = "no version is AVAILABLE yet"
            except PredictionError as error:
                reason = str(error)
            if time.monotonic() >= deadline:
                raise PredictionError(f"the model is not available after {timeout_s:g} s: {reason}")
            time.sleep(interval_s)

    @abc.abstractmethod
    def predict(
        self, inputs: Mapping[str, Any], signature_name: str = signatures.SERVING_DEFAULT
    ) -> dict[str, np.ndarray]:
        """Runs ``signature_name`` on ``inputs``; returns its outputs by name."""


class RestClient(_Client):
    """TF Serving's REST API at ``http://host:port/v1/models/model_name[/versions/version]``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8501,
        model_name: str = signatures.DEFAULT_MODEL_NAME,
        version: int | None = None,
        timeout: float = 60.0,
    ):
        import requests

        self._url = f"http://{host}:{port}/v1/models/{model_name}"
        if version is not None:
            self._url += f"/versions/{version}"
        self._timeout = timeout
        self._session = requests.Session()
        self._output_dtypes: dict[str, dict[str, np.dtype]] = {}

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        import requests

        try:
            response = self._session.request(method, url, timeout=self._timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PredictionError(
                f"no answer from {url} ({type(error).__name__}): check that the server runs and "
                "serves REST at that host and port (--host, --port)"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text}
        if response.status_code != 200:
            raise PredictionError(f"HTTP {response.status_code}: {payload.get('error', payload)}")
        return payload

    def available_version(self) -> int | None:
        """From ``GET /v1/models/NAME[/versions/N]`` (the model's status)."""
        status = self._call("GET", self._url)
        versions = [
            int(version["version"])
            for version in status.get("model_version_status", [])
            if version.get("state") == "AVAILABLE"
        ]
        return max(versions, default=None)

    def metadata(self) -> dict:
        """``GET .../metadata``: the model spec and its SignatureDefs, as JSON."""
        return self._call("GET", self._url + "/metadata")

    def _dtypes(self, signature_name: str) -> dict[str, np.dtype]:
        """Output dtypes of a signature (JSON numbers carry none), from the model's metadata."""
        if signature_name not in self._output_dtypes:
            served = self.metadata()["metadata"]["signature_def"]["signature_def"]
            if signature_name not in served:
                raise PredictionError(
                    f"Unknown signature {signature_name!r}; available: {sorted(served)}"
                )
            self._output_dtypes[signature_name] = {
                name: protos.NUMPY_TYPES[info["dtype"]]
                for name, info in served[signature_name]["outputs"].items()
            }
        return self._output_dtypes[signature_name]

    def predict(
        self, inputs: Mapping[str, Any], signature_name: str = signatures.SERVING_DEFAULT
    ) -> dict[str, np.ndarray]:
        """POSTs ``inputs`` in the columnar format; outputs cast to the signature's dtypes.

        For muse-tf: ``{"probability": (B,) or (C,), "logit": same}`` float32.
        """
        dtypes = self._dtypes(signature_name)
        body = {
            "signature_name": signature_name,
            "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
        }
        outputs = self._call("POST", self._url + ":predict", data=json.dumps(body))["outputs"]
        if not isinstance(outputs, dict):  # TF Serving drops the name of a single output
            outputs = {next(iter(dtypes)): outputs}
        return {name: np.asarray(value, dtypes[name]) for name, value in outputs.items()}

    def append(self, user_id: int, items: Sequence[int], categories: Sequence[int]) -> int:
        """``POST .../NAME:append``: adds behaviours (oldest first) to the user's stored history
        on a server with a history store; returns the user's new version."""
        body = {"user_id": int(user_id), "item_id": np.asarray(items).tolist(),
                "category": np.asarray(categories).tolist()}
        return int(self._call("POST", self._url + ":append", data=json.dumps(body))["version"])

    def prefetch(self, user_ids: Sequence[int]) -> int:
        """``POST .../NAME:prefetch``: loads the users' histories into the server's cache ahead of
        their ``rank_by_user`` requests; returns how many the server read from its store."""
        body = {"user_ids": np.asarray(user_ids).tolist()}
        return int(self._call("POST", self._url + ":prefetch", data=json.dumps(body))["read"])

    def close(self) -> None:
        """Closes the HTTP session."""
        self._session.close()


class GrpcClient(_Client):
    """TF Serving's ``PredictionService`` at ``host:port``, with message limits raised for long
    histories (gRPC's 4 MiB default would refuse large responses)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        model_name: str = signatures.DEFAULT_MODEL_NAME,
        version: int | None = None,
        timeout: float = 60.0,
        max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES,
    ):
        import grpc

        apis = protos.apis()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._address = f"{host}:{port}"
        self._channel = grpc.insecure_channel(self._address, options=options)
        self._stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = apis.model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._model_name, self._version, self._timeout = model_name, version, timeout

    def _error(self, error: Any) -> PredictionError:
        """A failed call's one line. A server it cannot reach (or that does not answer in time) is
        named with what to check; an error the server sent (e.g. UNAVAILABLE from its history
        store) is the server's message."""
        import grpc

        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or "failed to connect" in details.lower():
            return PredictionError(
                f"no answer from {self._address} ({code.name}: {details}): check that the server "
                "runs and serves gRPC at that host and port (--host, --port)", code.name
            )
        return PredictionError(f"{code.name}: {details}", code.name)

    def available_version(self) -> int | None:
        """From ``ModelService.GetModelStatus``."""
        import grpc

        apis = protos.apis()
        request = apis.get_model_status_pb2.GetModelStatusRequest(
            model_spec=apis.model_pb2.ModelSpec(name=self._model_name)
        )
        if self._version is not None:
            request.model_spec.version.value = self._version
        try:
            response = self._models.GetModelStatus(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        available = apis.get_model_status_pb2.ModelVersionStatus.AVAILABLE
        versions = [s.version for s in response.model_version_status if s.state == available]
        return max(versions, default=None)

    def predict(
        self, inputs: Mapping[str, Any], signature_name: str = signatures.SERVING_DEFAULT
    ) -> dict[str, np.ndarray]:
        """Sends ``inputs`` as TensorProtos of their NumPy dtypes (pass int64 IDs); returns the
        response's tensors, e.g. ``{"probability": (C,), "logit": (C,)}`` float32."""
        import grpc

        apis = protos.apis()
        request = apis.predict_pb2.PredictRequest(
            model_spec=apis.model_pb2.ModelSpec(name=self._model_name, signature_name=signature_name)
        )
        if self._version is not None:
            request.model_spec.version.value = self._version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(protos.tensor_proto(value))
        try:
            response = self._stub.Predict(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return {name: protos.ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self) -> Any:
        """``GetModelMetadata``'s response (a ``GetModelMetadataResponse``: the served version
        and the SignatureDefs packed under ``metadata["signature_def"]``)."""
        import grpc

        apis = protos.apis()
        request = apis.get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=apis.model_pb2.ModelSpec(name=self._model_name), metadata_field=["signature_def"]
        )
        if self._version is not None:
            request.model_spec.version.value = self._version
        try:
            return self._stub.GetModelMetadata(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def close(self) -> None:
        """Closes the gRPC channel."""
        self._channel.close()


def _json_input(name: str, value: Any) -> np.ndarray:
    """JSON integers (and empty lists, which carry no type) as int64, the type of muse-tf's IDs;
    booleans among them and integers outside int64 are refused (``strict_json.array``)."""
    array = strict_json.array(f"input {name!r}", value)
    return array.astype(np.int64) if array.size == 0 else array


def read_request(source: Any) -> tuple[str | None, dict[str, np.ndarray]]:
    """A request file: TF Serving's REST body ``{"signature_name": ..., "inputs": {...}}`` (what
    ``serving.request`` writes) or bare ``{input name: value}``. Returns the body's signature name
    (None when it has none) and the inputs.

    Raises:
        ValueError: the file is not JSON, not an object, or an input is not an array of one type.
    """
    body = json.load(source)
    if not isinstance(body, dict):
        raise ValueError(f"holds a JSON {type(body).__name__}, not an object of inputs.")
    signature_name = None
    if isinstance(body.get("inputs"), dict):
        signature_name, body = body.get("signature_name"), body["inputs"]
        if not isinstance(signature_name, str | None):
            raise ValueError(f'"signature_name" must be a string, got {signature_name!r}.')
    return signature_name, {name: _json_input(name, value) for name, value in body.items()}


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m serving.client``."""
    parser = cli.parser("serving.client", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.description = __doc__
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="grpc")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: 8500 for gRPC, 8501 for REST")
    parser.add_argument("--model_name", default=signatures.DEFAULT_MODEL_NAME)
    parser.add_argument("--version", type=int, help="default: the newest version served")
    parser.add_argument(
        "--signature_name", help="default: the request's signature_name, else serving_default"
    )
    parser.add_argument(
        "--request",
        help='JSON file: {"signature_name": ..., "inputs": {input name: value}} or '
        "{input name: value}; - for stdin. Required unless --wait is given alone",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the model to be AVAILABLE (a server still starting); "
        "without --request, only wait",
    )
    return parser


def predict(args: argparse.Namespace) -> None:
    """Sends ``args.request``; prints the outputs as JSON, or exits 1 with the server's error."""
    if args.request is None and not args.wait:
        raise cli.UsageError("--request is required (or --wait alone, to wait for the model)")
    signature_name, inputs = None, {}
    if args.request is not None:
        try:
            with sys.stdin if args.request == "-" else open(args.request) as f:
                signature_name, inputs = read_request(f)
        except FileNotFoundError:
            raise cli.UsageError(f"--request {args.request}: no such file.") from None
        except OSError as error:  # a directory, an unreadable file
            raise cli.UsageError(f"--request {args.request}: {error.strerror}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise cli.UsageError(f"--request {args.request} is not JSON: {error}") from None
        except ValueError as error:
            raise cli.UsageError(f"--request {args.request}: {error}") from None
    signature_name = args.signature_name or signature_name or signatures.SERVING_DEFAULT
    if args.protocol == "rest":
        client = RestClient(args.host, args.port or 8501, args.model_name, args.version)
    else:
        client = GrpcClient(args.host, args.port or 8500, args.model_name, args.version)
    try:
        with client:
            if args.wait:
                version = client.wait_until_available(args.wait)
                if args.request is None:
                    print(f"model {args.model_name} version {version} is AVAILABLE")
                    return
            outputs = client.predict(inputs, signature_name)
    except PredictionError as error:
        sys.exit(f"error: {error}")
    json.dump({name: value.tolist() for name, value in outputs.items()}, sys.stdout)
    print()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m serving.client``: prints the outputs as JSON; exits non-zero on an error."""
    cli.run(predict, arguments(), argv)


if __name__ == "__main__":
    main()
