"""TF Serving's REST API for one Servable, on the standard library's threading HTTP server.

Routes (as ``tensorflow_model_server --rest_api_port``):
    GET  /v1/models/NAME[/versions/N]             model status
    GET  /v1/models/NAME[/versions/N]/metadata    signature metadata
    POST /v1/models/NAME[/versions/N]:predict     {"signature_name": ..., "inputs": {...}} (columnar,
                                                  answered with "outputs") or "instances": [{...}]
                                                  (rows, answered with "predictions")
With a history store (``serving.by_user``), also:
    POST /v1/models/NAME:append     {"user_id": ID, "item_id": [...], "category": [...]} -> {"version": N}
    POST /v1/models/NAME:prefetch   {"user_ids": [...]} -> {"read": N} (users read from the store)
and ``rank_by_user`` answers carry its response metadata as headers (``Muse-History-Length``...).
Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model, version or route),
503 (the history store or forwarded-to server did not answer in time).

Bounds (the first two are ``tensorflow_model_server``'s ``--rest_api_num_threads`` and
``--rest_api_timeout_in_ms``): at most ``num_threads`` connections are handled at once (more get
503 and are closed); a connection idle or stalled for ``timeout_s`` is dropped; a request whose
headers and body have not all arrived ``request_timeout_s`` after the server began waiting for it
gets 408 and is closed (a client trickling a byte at a time never stalls, yet must not hold a
connection slot for long); a body above ``max_body_bytes`` is refused with 413 before it is read.
A body must come with a valid ``Content-Length`` (400 otherwise); ``Transfer-Encoding`` (chunked)
bodies are refused with 411. Every refusal that leaves body bytes unread closes the connection, so
they are never parsed as a request.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from muse_tf.contract import strict_json
from serving.defaults import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_NUM_THREADS,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
)
from serving.servable import InvalidArgument, NotFound, Servable, ServingError, check_arrays

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?:/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:predict|:append|:prefetch)?$"
)
_POST_ACTIONS = (":predict", ":append", ":prefetch")
_INT64 = tf.TensorSpec([], tf.int64)
_INT64_LIST = tf.TensorSpec([None], tf.int64)
# NumPy kinds of JSON-decoded values each input kind accepts (O = tf.string).
_JSON_KINDS = {"i": "iu", "u": "iu", "f": "iuf", "b": "b", "O": "U"}
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,18}$")
logger = logging.getLogger(__name__)


# Print fields left at their defaults: protobuf 5.26 renamed the option of protobuf 4 (legacy set).
_PRINT_DEFAULTS = next(
    name
    for name in ("always_print_fields_with_no_presence", "including_default_value_fields")
    if name in inspect.signature(json_format.MessageToDict).parameters
)


class HttpRefusal(ServingError):
    """A request refused at the HTTP level (length, encoding, size) with its own status."""

    code = "INVALID_ARGUMENT"

    def __init__(self, http_status: int, message: str):
        super().__init__(message)
        self.http_status = http_status


class _DeadlinePassed(OSError):
    """A request's headers and body did not all arrive within the request timeout."""


class _DeadlineReader(io.RawIOBase):
    """A connection's reads: each waits at most ``timeout`` (an idle or stalled client), and those
    of one request all end by its deadline (a client trickling a byte at a time never stalls)."""

    def __init__(self, connection: socket.socket, timeout: float):
        self._connection, self._timeout = connection, timeout
        self._deadline = float("inf")  # set by start_request
        self.received = 0  # bytes of the current request read from the connection

    def readable(self) -> bool:
        return True

    def start_request(self, request_timeout: float) -> None:
        """Starts the deadline of the next request."""
        self._deadline, self.received = time.monotonic() + request_timeout, 0

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed("request deadline passed")
        self._connection.settimeout(min(self._timeout, left))
        try:
            count = self._connection.recv_into(buffer)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise _DeadlinePassed("request deadline passed") from None
            raise
        finally:  # writes keep the per-operation timeout
            self._connection.settimeout(self._timeout)
        self.received += count
        return count


def _closing_response(status: HTTPStatus, message: str) -> bytes:
    """A whole JSON error response that closes the connection, for refusals made before a request
    line is parsed (``BaseHTTPRequestHandler``'s replies need one)."""
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _proto_to_json(message: Any) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True}
    )


def json_to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value as a NumPy array of the input's dtype; refuses values of another type, and
    booleans or integers NumPy would silently convert (``strict_json.array``)."""
    try:
        array = strict_json.array(f"Input {name!r}", value)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
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


def _json_object(data: bytes) -> dict:
    """A request body that must be a JSON object."""
    try:
        body = json.loads(data)
    except ValueError as error:
        raise InvalidArgument(f"JSON Parse error: {error}") from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: nested too deeply.") from None
    if not isinstance(body, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    return body


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
    # Set by make_rest_server; ``timeout`` is the socket timeout of StreamRequestHandler.
    servable: Servable
    max_body_bytes: int
    timeout: float
    request_timeout: float

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader; reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """One request, whose headers and body must arrive within ``request_timeout``; past it
        the client gets 408 (nothing if it sent nothing: an idle keep-alive connection) and the
        connection closes, freeing its slot."""
        self._reader.start_request(self.request_timeout)
        try:
            super().handle_one_request()
        except _DeadlinePassed:
            self.close_connection = True
            if self._reader.received:
                message = f"Request headers not received within {self.request_timeout:g} s."
                try:
                    self.wfile.write(_closing_response(HTTPStatus.REQUEST_TIMEOUT, message))
                except OSError:
                    pass

    def _reply(self, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> None:
        try:
            self._send(status, json.dumps(payload).encode(), headers or {})
        except OSError:  # the client hung up or stopped reading
            self.close_connection = True

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, message: str) -> HttpRefusal:
        """An HTTP-level refusal; the body stays unread, so the connection must close."""
        self.close_connection = True
        return HttpRefusal(status, message)

    def _read_body(self) -> bytes:
        """Read before anything else: left unread, a body would corrupt the connection's next request."""
        if "Transfer-Encoding" in self.headers:
            raise self._refuse(411, "Transfer-Encoding is not supported; send a Content-Length.")
        lengths = self.headers.get_all("Content-Length") or ["0"]
        if len(set(lengths)) > 1 or not _CONTENT_LENGTH.match(lengths[0].strip()):
            raise self._refuse(400, f"Invalid Content-Length header: {', '.join(lengths)!r}.")
        length = int(lengths[0])
        if length > self.max_body_bytes:
            raise self._refuse(
                413, f"Request body of {length} bytes exceeds the limit of {self.max_body_bytes}."
            )
        try:
            body = self.rfile.read(length)
        except _DeadlinePassed:
            raise self._refuse(
                408, f"Request body not received within {self.request_timeout:g} s."
            ) from None
        except OSError:  # a timeout, or the client hung up
            body = b""
        if len(body) != length:  # the client stalled past the timeout or hung up
            raise self._refuse(408, f"Request body incomplete: {len(body)} of {length} bytes.")
        return body

    def _route(self, method: str) -> None:
        try:
            body = self._read_body()
            match = _ROUTE.match(self.path)
            if match is None or (match["action"] in _POST_ACTIONS) != (method == "POST"):
                raise NotFound(f"Malformed request: {method} {self.path}")
            version = int(match["version"]) if match["version"] else None
            self.servable.check_spec(match["name"], version, match["label"])
            if match["action"] == ":predict":
                self._reply(200, *self._predict(body))
            elif method == "POST":
                self._reply(200, self._history_call(match["action"], _json_object(body)))
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

    def _predict(self, data: bytes) -> tuple[dict, dict[str, str]]:
        """The answer's JSON and headers (``rank_by_user``'s response metadata)."""
        body = _json_object(data)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidArgument('"signature_name" must be a string.')
        inputs, rows = _columns(self.servable, body, signature_name)
        arrays, notes = self.servable.predict_annotated(inputs, signature_name)
        outputs = {name: value.tolist() for name, value in arrays.items()}
        if not rows:
            return {"outputs": outputs}, notes
        count = len(next(iter(outputs.values())))
        return {
            "predictions": [
                {name: value[i] for name, value in outputs.items()} for i in range(count)
            ]
        }, notes

    def _history_call(self, action: str, body: dict) -> dict:
        """``:append`` or ``:prefetch`` on a server with a history store."""
        if not hasattr(self.servable, "append"):
            raise NotFound(f"{action} needs a server started with --history_store.")
        fields = {":append": {"user_id": _INT64, "item_id": _INT64_LIST, "category": _INT64_LIST},
                  ":prefetch": {"user_ids": _INT64_LIST}}[action]
        if set(body) != set(fields):
            raise InvalidArgument(f"{action} takes exactly the fields {sorted(fields)}.")
        values = {name: json_to_array(name, body[name], spec) for name, spec in fields.items()}
        check_arrays(fields, values)
        if action == ":prefetch":
            return {"read": self.servable.prefetch(values["user_ids"].tolist())}
        if len(values["item_id"]) != len(values["category"]):
            raise InvalidArgument('"category" must have as many values as "item_id".')
        version = self.servable.append(
            int(values["user_id"]), values["item_id"], values["category"]
        )
        return {"version": version}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class _BoundedHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``num_threads`` at once; the rest get 503 and close."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, num_threads: int):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(num_threads)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(_closing_response(
                    HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections; retry later."
                ))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_rest_server(
    servable: Servable,
    host: str,
    port: int,
    num_threads: int = DEFAULT_NUM_THREADS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> ThreadingHTTPServer:
    """A (not yet serving) HTTP server; call ``serve_forever`` in a thread, ``shutdown`` to stop.

    Args:
        num_threads: connections handled at once (``--rest_api_num_threads``).
        timeout_s: socket timeout; idle keep-alive and stalled clients are dropped after it.
        max_body_bytes: the largest request body accepted (413 above it, before reading).
        request_timeout_s: the time a request's headers and body have to arrive, from when the
            server begins waiting for it (408 and closed after it).
    """
    attributes = {"servable": servable, "timeout": timeout_s, "max_body_bytes": max_body_bytes,
                  "request_timeout": request_timeout_s}
    handler = type("Handler", (_Handler,), attributes)
    return _BoundedHTTPServer((host, port), handler, num_threads)
