"""The two history-store backends the store and loader tests run on: a SQLite file and a real
Redis server (``tests.redis_server``), each opened on a clean namespace and damaged from outside."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import redis

from serving.history import chunks
from serving.history.store import open_store

# A round trip's deadline in these tests.
TIMEOUT_S = 0.3


class Backend:
    """Opens stores of one backend on a clean namespace and damages them from outside."""

    def __init__(self, url: str):
        self.url = url

    def open(self, cap: int = 10 * chunks.CHUNK, timeout_s: float = TIMEOUT_S):
        return open_store(self.url, cap=cap, timeout_s=timeout_s)


class SqliteBackend(Backend):
    def raw(self) -> sqlite3.Connection:
        return sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)

    def corrupt_chunk(self, user: int) -> None:
        with contextlib.closing(self.raw()) as db:
            db.execute("UPDATE chunks SET pairs = x'0102' WHERE user_id = ?", (user,))

    def corrupt_profile(self, user: int) -> None:
        with contextlib.closing(self.raw()) as db:
            db.execute("UPDATE users SET profile = 'not json' WHERE user_id = ?", (user,))


class RedisBackend(Backend):
    def __init__(self, server):
        super().__init__(server.url)
        self.server = server
        redis.Redis.from_url(self.url).flushdb()

    def corrupt_chunk(self, user: int) -> None:
        redis.Redis.from_url(self.url).hset(f"{{u:{user}}}:chunks", "0", b"\x01\x02")

    def corrupt_profile(self, user: int) -> None:
        redis.Redis.from_url(self.url).hset(f"{{u:{user}}}:meta", "profile", "not json")


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """Each test that takes it runs on SQLite and on Redis."""
    if request.param == "sqlite":
        return SqliteBackend(f"sqlite:///{tmp_path / 'history.db'}")
    return RedisBackend(request.getfixturevalue("redis_server"))
