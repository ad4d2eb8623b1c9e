"""The embedded history store: one SQLite file (standard library), no server.

Tables: ``users(user_id, version, head, length, profile)`` and ``chunks(user_id, chunk_no,
pairs)``, the layout of ``serving.history.chunks``. The file is in WAL mode, so readers never wait
for a writer; every write or append is one ``BEGIN IMMEDIATE`` transaction, which serialises
writers across processes. Each thread has its own connection; this process's writers queue on a
lock first, since SQLite's own wait for a busy file sleeps up to 100 ms at a time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from serving.history import chunks
from serving.history.store import DEFAULT_CAP, CorruptRecord, HistoryStore, StoreUnavailable, UserRecord

PREFIX = "sqlite:///"
# SQLite's host parameter limit was 999 before 3.32.
_IDS_PER_QUERY = 900
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, version INTEGER NOT NULL,"
    " head INTEGER NOT NULL, length INTEGER NOT NULL, profile TEXT)",
    "CREATE TABLE IF NOT EXISTS chunks (user_id INTEGER NOT NULL, chunk_no INTEGER NOT NULL,"
    " pairs BLOB NOT NULL, PRIMARY KEY (user_id, chunk_no)) WITHOUT ROWID",
)


class SqliteStore(HistoryStore):
    """``sqlite:///PATH``: PATH is relative to the working directory, ``sqlite:////abs/path``
    absolute; the file is created on first use.

    Args:
        timeout_s: how long a call waits for other writers' locks before StoreUnavailable.
    """

    def __init__(self, url: str, cap: int = DEFAULT_CAP, timeout_s: float = 1.0):
        super().__init__(cap)
        if not url.startswith(PREFIX) or not url[len(PREFIX):]:
            raise ValueError(f"history store URL {url!r}: expected sqlite:///PATH")
        self.url, self.path, self.timeout_s = url, url[len(PREFIX):], timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pid = os.getpid()
        with self._transaction("BEGIN IMMEDIATE") as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child: SQLite's must not cross fork)."""
        if self._pid != os.getpid():
            self._local, self._connections, self._pid = threading.local(), [], os.getpid()
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                     check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as error:
                raise self._unavailable(error) from None
            with self._lock:
                self._connections.append(db)
            self._local.db = db
        return db

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(f"history store {self.url}: {error}")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, after this process's other writers (within the timeout)."""
        start = time.monotonic()
        if not self._write_lock.acquire(timeout=self.timeout_s):
            raise StoreUnavailable(f"history store {self.url}: other writers held it for "
                                   f"{self.timeout_s} s")
        try:
            left = self.timeout_s - (time.monotonic() - start)
            with self._transaction("BEGIN IMMEDIATE", left) as db:
                yield db
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def _transaction(self, begin: str, wait_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction on this thread's connection, waiting ``wait_s`` (default: the timeout)
        for a lock, rolled back on any error; SQLite's errors (a lock held past the wait, an
        unreadable file) become StoreUnavailable."""
        db = self._connection()
        wait_s = self.timeout_s if wait_s is None else wait_s
        try:
            db.execute(f"PRAGMA busy_timeout = {max(0, int(wait_s * 1000))}")
            db.execute(begin)
            yield db
            db.execute("COMMIT")
        except BaseException as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise self._unavailable(error) from None
            raise

    def read_many(self, user_ids: Sequence[int], newest: int) -> list[UserRecord | None]:
        ids = [chunks.user_id_of(user) for user in user_ids]
        found: dict[int, UserRecord] = {}
        with self._transaction("BEGIN") as db:  # one snapshot for every user
            unique = list(dict.fromkeys(ids))
            rows = []
            for first in range(0, len(unique), _IDS_PER_QUERY):
                batch = unique[first:first + _IDS_PER_QUERY]
                rows += db.execute(
                    "SELECT user_id, version, head, length, profile FROM users"
                    f" WHERE user_id IN ({','.join('?' * len(batch))})", batch
                ).fetchall()
            for user, version, head, length, profile in rows:
                _, span = chunks.span(head, length, newest)
                blobs = dict(db.execute(
                    "SELECT chunk_no, pairs FROM chunks WHERE user_id = ? AND chunk_no BETWEEN ? AND ?",
                    (user, span.start, span.stop - 1),
                ).fetchall())
                items, categories = chunks.decode(
                    user, head, length, newest, [blobs.get(chunk) for chunk in span]
                )
                found[user] = UserRecord(items, categories, chunks.decode_profile(user, profile),
                                         version)
        return [found.get(user) for user in ids]

    def write(
        self,
        user_id: int,
        items: Sequence[int],
        categories: Sequence[int],
        profile: Mapping[str, int] | None = None,
    ) -> int:
        user = chunks.user_id_of(user_id)
        data = chunks.behaviours(user, items, categories)
        plan = chunks.plan_append(0, 0, b"", data, self.cap)
        with self._writing() as db:
            db.execute("DELETE FROM chunks WHERE user_id = ?", (user,))
            return self._commit(db, user, plan, chunks.encode_profile(profile), replace=True)

    def append(self, user_id: int, items: Sequence[int], categories: Sequence[int]) -> int:
        user = chunks.user_id_of(user_id)
        data = chunks.behaviours(user, items, categories)
        with self._writing() as db:
            row = db.execute("SELECT head, length FROM users WHERE user_id = ?", (user,)).fetchone()
            head, length = row or (0, 0)
            end = head + length
            last = b""
            if end % chunks.CHUNK:
                found = db.execute("SELECT pairs FROM chunks WHERE user_id = ? AND chunk_no = ?",
                                   (user, end // chunks.CHUNK)).fetchone()
                last = found[0] if found else b""
                if len(last) != (end % chunks.CHUNK) * chunks.PAIR_BYTES:
                    raise CorruptRecord(f"user {user}: history chunk {end // chunks.CHUNK} is "
                                        f"{len(last)} bytes, expected "
                                        f"{(end % chunks.CHUNK) * chunks.PAIR_BYTES}")
            plan = chunks.plan_append(head, length, last, data, self.cap)
            return self._commit(db, user, plan, None, replace=False)

    @staticmethod
    def _commit(
        db: sqlite3.Connection, user: int, plan: chunks.Plan, profile: str | None, replace: bool
    ) -> int:
        """Applies ``plan`` and bumps the version (a write also sets the profile)."""
        if plan.drop:
            db.execute("DELETE FROM chunks WHERE user_id = ? AND chunk_no BETWEEN ? AND ?",
                       (user, plan.drop.start, plan.drop.stop - 1))
        db.executemany("INSERT OR REPLACE INTO chunks (user_id, chunk_no, pairs) VALUES (?, ?, ?)",
                       [(user, chunk, blob) for chunk, blob in plan.put.items()])
        if replace:
            update = "head = excluded.head, length = excluded.length, profile = excluded.profile"
        else:
            update = "head = excluded.head, length = excluded.length"
        return db.execute(
            "INSERT INTO users (user_id, version, head, length, profile) VALUES (?, 1, ?, ?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET version = version + 1, {update}"
            " RETURNING version",
            (user, plan.head, plan.length, profile),
        ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
