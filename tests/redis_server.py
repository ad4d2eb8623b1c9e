"""A real ``redis-server`` for tests: a free loopback port, persistence off, stopped by its PID.

Without the binary the tests that need it skip with the reason, except under CI (the environment
variable ``CI`` set, as ``.ci/run`` runs), where that fails them: CI installs Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

BINARY = "redis-server"
START_TIMEOUT_S = 10.0


class RedisServer:
    """One ``redis-server`` process; ``kill`` and ``start`` again reuse the same port."""

    def __init__(self, binary: str):
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Starts the server and waits until it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited at start: "
                                   f"{self.process.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary} on port {self.port} did not answer PING in "
                           f"{START_TIMEOUT_S} s")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) but its port open: a store past its deadline."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stops the server at once (SIGKILL to its PID), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.process.stderr.close()
        self.process = None


def redis_binary() -> str:
    """The ``redis-server`` path; skips the test without one, or fails it under CI."""
    path = shutil.which(BINARY)
    if path is None:
        reason = f"{BINARY} not found on PATH (Debian/Ubuntu: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Redis tests")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def redis_server():
    """A running ``RedisServer`` for the session (tests that kill it start it again)."""
    server = RedisServer(redis_binary())
    server.start()
    yield server
    server.kill()
