"""TF Serving's REST API for one Servable, on the standard library's threading HTTP server.

Routes (as ``tensorflow_model_server --rest_api_port``):
    GET  /v1/models/NAME[/versions/N]             model status
    GET  /v1/models/NAME[/versions/N]/metadata    signature metadata
    POST /v1/models/NAME[/versions/N]:predict     {"signature_name": ..., "inputs": {...}} (columnar,
                                                  answered with "outputs") or "instances": [{...}]
                                                  (rows, answered with "predictions")
Errors are ``{"error": "..."}`` with 400 (bad request) or 404 (unknown model, version or route).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from serving.servable import InvalidArgument, NotFound, Servable, ServingError

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?:/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:predict)?$"
)
# NumPy kinds of JSON-decoded values each input kind accepts (O = tf.string).
_JSON_KINDS = {"i": "iu", "u": "iu", "f": "iuf", "b": "b", "O": "U"}
logger = logging.getLogger(__name__)


# Print fields left at their defaults: protobuf 5.26 renamed the option of protobuf 4 (legacy set).
_PRINT_DEFAULTS = next(
    name
    for name in ("always_print_fields_with_no_presence", "including_default_value_fields")
    if name in inspect.signature(json_format.MessageToDict).parameters
)


def _proto_to_json(message: Any) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True}
    )


def json_to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value as a NumPy array of the input's dtype; refuses values of another type."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged lists
        raise InvalidArgument(f"Input {name!r} is not a rectangular array: {error}") from None
    target = np.dtype(spec.dtype.as_numpy_dtype)
    if array.size and array.dtype.kind not in _JSON_KINDS.get(target.kind, target.kind):
        raise InvalidArgument(
            f"Input {name!r} must hold {spec.dtype.name} values, got JSON {array.dtype}."
        )
    if array.size and target.kind in "iu":
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise InvalidArgument(f"Input {name!r} has values outside the {spec.dtype.name} range.")
    return array.astype(target)


def _columns(servable: Servable, body: Mapping, signature_name: str) -> tuple[dict, bool]:
    """The request's inputs as arrays, and whether it used the row ("instances") format."""
    specs = servable.input_specs(signature_name)
    if ("inputs" in body) == ("instances" in body):
        raise InvalidArgument(
            'The request must have exactly one of "inputs" (columnar) or "instances" (rows).'
        )
    if "inputs" in body:
        if not isinstance(body["inputs"], dict):
            raise InvalidArgument('"inputs" must map input names to values.')
        columns = body["inputs"]
    else:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
            raise InvalidArgument(
                '"instances" must be a non-empty list of {input name: value} objects.'
            )
        names = set(rows[0])
        if any(set(row) != names for row in rows):
            raise InvalidArgument("Every instance must have the same input names.")
        columns = {name: [row[name] for row in rows] for name in names}
    servable.check_input_names(signature_name, columns)
    arrays = {name: json_to_array(name, value, specs[name]) for name, value in columns.items()}
    return arrays, "instances" in body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers (~40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    servable: Servable  # set by make_rest_server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        """Read before anything else: left unread, a body would corrupt the connection's next request."""
        try:
            length = int(self.headers.get("Content-Length", 0))
        except ValueError:
            self.close_connection = True
            raise InvalidArgument("Invalid Content-Length header.") from None
        return self.rfile.read(length)

    def _route(self, method: str) -> None:
        try:
            body = self._read_body()
            match = _ROUTE.match(self.path)
            if match is None or (match["action"] == ":predict") != (method == "POST"):
                raise NotFound(f"Malformed request: {method} {self.path}")
            version = int(match["version"]) if match["version"] else None
            self.servable.check_spec(match["name"], version, match["label"])
            if method == "POST":
                self._reply(200, self._predict(body))
            elif match["action"] == "/metadata":
                self._reply(
                    200,
                    {
                        "model_spec": _proto_to_json(self.servable.model_spec()),
                        "metadata": {"signature_def": _proto_to_json(self.servable.signature_defs)},
                    },
                )
            else:
                self._reply(200, _proto_to_json(self.servable.status()))
        except ServingError as error:
            self._reply(error.http_status, {"error": str(error)})
        except Exception as error:  # a bug must cost one request, never the server
            logger.exception("Request %s %s failed", method, self.path)
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    def _predict(self, data: bytes) -> dict:
        try:
            body = json.loads(data)
        except ValueError as error:
            raise InvalidArgument(f"JSON Parse error: {error}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a JSON object.")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidArgument('"signature_name" must be a string.')
        inputs, rows = _columns(self.servable, body, signature_name)
        outputs = {
            name: value.tolist()
            for name, value in self.servable.predict(inputs, signature_name).items()
        }
        if not rows:
            return {"outputs": outputs}
        count = len(next(iter(outputs.values())))
        return {
            "predictions": [
                {name: value[i] for name, value in outputs.items()} for i in range(count)
            ]
        }

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


def make_rest_server(servable: Servable, host: str, port: int) -> ThreadingHTTPServer:
    """A (not yet serving) HTTP server; call ``serve_forever`` in a thread, ``shutdown`` to stop."""
    handler = type("Handler", (_Handler,), {"servable": servable})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
