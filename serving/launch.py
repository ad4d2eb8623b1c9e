"""Start ``python -m serving.server`` as a subprocess for development, tests and benchmarks.

One place knows how to pick free loopback ports, wait until the server has loaded its model and
answers, and always stop it, so callers do not each re-implement the start-up handshake.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import grpc
import requests

from muse_tf.contract import signatures

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_http(port: int, raw: bytes, wait_s: float) -> tuple[bytes, bool]:
    """Sends ``raw`` bytes to 127.0.0.1:``port`` on a new connection, for probing the REST front
    end with requests no HTTP client would send. Returns what came back, and whether the server
    closed the connection (False: still open after ``wait_s``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        conn.sendall(raw)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
    return received, True


def trickle_http(port: int, raw: bytes, interval_s: float, max_s: float) -> tuple[bytes, float | None]:
    """Sends ``raw`` to 127.0.0.1:``port`` one byte every ``interval_s`` (a slow-loris client: it
    never stalls for long) until the server answers or closes, or ``max_s`` has passed. Returns
    what came back, and the seconds until the server closed the connection (None: still open)."""
    started, received = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=interval_s) as conn:
        for byte in raw[: int(max_s / interval_s)]:
            try:
                conn.sendall(bytes([byte]))
                chunk = conn.recv(65536)  # the pause before the next byte, unless answered
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                break
            while chunk:
                received += chunk
                chunk = conn.recv(65536)
            break
        else:
            return received, None
    return received, time.monotonic() - started


def http_statuses(received: bytes) -> list[int]:
    """The status codes of the HTTP responses in ``received``."""
    lines = received.split(b"\r\n")
    return [int(line.split()[1]) for line in lines if line.startswith(b"HTTP/1.")]


@dataclasses.dataclass(frozen=True)
class LocalServer:
    """A running server: its ports (``rest_port`` 0 when REST is off), process and log file."""

    grpc_port: int
    rest_port: int
    process: subprocess.Popen
    log_path: str


def _log_tail(path: str, chars: int = 3000) -> str:
    with open(path) as f:
        return f.read()[-chars:]


def _wait_until_ready(server: LocalServer, model_name: str, timeout_s: float) -> None:
    """Returns once gRPC (and REST, if on) answer; raises with the log's tail otherwise."""
    deadline = time.time() + timeout_s
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    # One future, cancelled before the channel closes: a future left waiting keeps a thread polling
    # the channel, which then raises "Channel closed" in the background.
    ready = grpc.channel_ready_future(channel)
    try:
        rest_url = f"http://127.0.0.1:{server.rest_port}/v1/models/{model_name}"
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"serving.server exited with {server.process.returncode}:\n"
                                   f"{_log_tail(server.log_path)}")
            if time.time() > deadline:
                raise TimeoutError(f"serving.server did not start in {timeout_s:.0f} s:\n"
                                   f"{_log_tail(server.log_path)}")
            try:
                ready.result(timeout=2)
                if not server.rest_port or requests.get(rest_url, timeout=2).ok:
                    return
            except (grpc.FutureTimeoutError, requests.ConnectionError):
                pass
            time.sleep(0.2)
    finally:
        ready.cancel()
        channel.close()


@contextlib.contextmanager
def local_server(
    model_base_path: str | None,
    model_name: str = signatures.DEFAULT_MODEL_NAME,
    rest: bool = True,
    log_path: str | None = None,
    ready_timeout_s: float = 180.0,
    extra_args: Sequence[str] = (),
) -> Iterator[LocalServer]:
    """``python -m serving.server`` on 127.0.0.1 with free ports; stopped on exit, whatever happens.

    Args:
        model_base_path: directory of numeric version directories (``<base>/<model_name>``);
            None for a server that forwards (``--forward_to`` in ``extra_args``, and ``log_path``).
        model_name: the name requests must use.
        rest: also serve REST.
        log_path: the server's stdout/stderr (default: beside ``model_base_path``).
        ready_timeout_s: how long to wait for the model to load.
        extra_args: further ``serving.server`` flags (e.g. its limits).

    Yields:
        The ``LocalServer``, once it answers.
    """
    grpc_port, rest_port = free_port(), free_port() if rest else 0
    log_path = log_path or os.path.join(os.path.dirname(model_base_path), f"server-{grpc_port}.log")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _REPO_ROOT}
    model = [] if model_base_path is None else ["--model_base_path", model_base_path]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--model_name", model_name,
             *model, "--port", str(grpc_port),
             "--rest_api_port", str(rest_port), "--host", "127.0.0.1", *extra_args],
            cwd=_REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        server = LocalServer(grpc_port, rest_port, process, log_path)
        try:
            _wait_until_ready(server, model_name, ready_timeout_s)
            yield server
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
