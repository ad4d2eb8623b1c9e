"""The history store's contract: what ``rank_by_user`` reads and what loaders and appenders write.

A store keeps, per user, the lifelong behaviour sequence (raw int64 item and category IDs, oldest
first) and the raw profile features, so it never depends on one model version's vocabulary. Every
write bumps a per-user version counter; a sequence longer than the store's cap keeps its newest
behaviours. A URL picks the backend: ``sqlite:///path/to/file.db`` (embedded, no server) or
``redis://host:port/db`` (Redis, Valkey, Dragonfly).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from muse_tf.contract import limits

# A store's default cap: the longest history an export accepts.
DEFAULT_CAP = limits.MAX_HISTORY_LENGTH


class StoreError(Exception):
    """A store failure a caller cannot fix by changing its request."""


class StoreUnavailable(StoreError):
    """The store did not answer (down, refused, or past its deadline): never read as an empty
    history. A write or append that ended so may still have been applied."""


class CorruptRecord(StoreError):
    """A stored record that does not decode; the message names the user."""


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """One user's stored state.

    Attributes:
        items: int64 (L,) raw item IDs, oldest first.
        categories: int64 (L,) raw category IDs, aligned with ``items``.
        profile: raw profile features by feature name, or None when none was stored.
        version: the user's write counter; every write or append increases it.
    """

    items: np.ndarray
    categories: np.ndarray
    profile: Mapping[str, int] | None
    version: int


class HistoryStore(abc.ABC):
    """Per-user lifelong histories and profiles behind one small interface.

    Args:
        cap: the most behaviours kept per user; an append past it drops the oldest.
    """

    def __init__(self, cap: int = DEFAULT_CAP):
        if cap < 1:
            raise ValueError(f"history store cap must be at least 1, got {cap}")
        self.cap = cap

    @abc.abstractmethod
    def read_many(self, user_ids: Sequence[int], newest: int) -> list[UserRecord | None]:
        """Each user's newest ``newest`` behaviours (oldest first) and profile, None for an unknown
        user, in one round trip."""

    def read(self, user_id: int, newest: int) -> UserRecord | None:
        """One user's newest ``newest`` behaviours and profile, or None for an unknown user."""
        return self.read_many([user_id], newest)[0]

    @abc.abstractmethod
    def write(
        self,
        user_id: int,
        items: Sequence[int],
        categories: Sequence[int],
        profile: Mapping[str, int] | None = None,
    ) -> int:
        """Replace a user's history (its newest ``cap`` behaviours) and profile; returns the new version."""

    @abc.abstractmethod
    def append(self, user_id: int, items: Sequence[int], categories: Sequence[int]) -> int:
        """Add behaviours after a user's newest, atomically, trimming to ``cap``; returns the new
        version. An unknown user starts with these behaviours and no profile."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def open_store(url: str, cap: int = DEFAULT_CAP, timeout_s: float = 1.0) -> HistoryStore:
    """The store a URL names: ``sqlite:///PATH`` or ``redis://HOST:PORT/DB``.

    ``timeout_s`` bounds each round trip (SQLite: each wait for another writer's lock); past it a
    call raises StoreUnavailable.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        from serving.history.sqlite_store import SqliteStore

        return SqliteStore(url, cap=cap, timeout_s=timeout_s)
    if scheme in ("redis", "rediss", "unix"):
        from serving.history.redis_store import RedisStore

        return RedisStore(url, cap=cap, timeout_s=timeout_s)
    raise ValueError(
        f"history store URL {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB"
    )
