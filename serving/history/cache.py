"""The prefetch cache in front of a history store: what ``rank_by_user`` reads first.

As in the MUSE paper's deployment, a caller that knows which users are about to be ranked (the
matching stage) prefetches them, so the ranking request finds the history in memory. Entries are
per user, bounded by a byte budget (least recently used first out) and a time to live; concurrent
misses for one user share one store read (single flight). Writes through the server evict the
user's entry, and a read that began before such a write does not put its older record back. A
writer that bypasses the server is seen at most ``ttl_s`` after it wrote: the staleness bound.
Unknown users are cached too (as None), under the same bound.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future

from serving.history.store import UserRecord

# Bytes counted per entry beyond its arrays: the entry, its key and dictionary slots, the profile.
ENTRY_OVERHEAD_BYTES = 512


def record_bytes(record: UserRecord | None) -> int:
    """What an entry costs the byte budget."""
    if record is None:
        return ENTRY_OVERHEAD_BYTES
    return record.items.nbytes + record.categories.nbytes + ENTRY_OVERHEAD_BYTES


@dataclasses.dataclass
class _Entry:
    record: UserRecord | None
    expires: float
    size: int


@dataclasses.dataclass
class _Flight:
    """One store read in progress; ``stale`` once a write evicted its user meanwhile."""

    result: Future
    stale: bool = False


class HistoryCache:
    """Users' records, read through ``read_many`` on a miss.

    Args:
        read_many: user IDs -> their records (None for an unknown user), in one store round trip.
        max_bytes: the byte budget of all entries; 0 caches nothing (reads still coalesce).
        ttl_s: an entry's life after its read.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        read_many: Callable[[Sequence[int]], list[UserRecord | None]],
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read_many, self.max_bytes, self.ttl_s, self._clock = read_many, max_bytes, ttl_s, clock
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._flights: dict[int, _Flight] = {}
        self._lock = threading.Lock()  # guards the two dicts and the counters; never held over a read
        self.bytes = 0
        self.hits = self.misses = self.reads = 0

    def get(self, user_id: int) -> UserRecord | None:
        """The user's record (None: unknown), from memory or one shared store read.

        Raises:
            whatever ``read_many`` raises (StoreUnavailable, CorruptRecord), to every waiter.
        """
        return self._load([user_id])[0]

    def prefetch(self, user_ids: Iterable[int]) -> int:
        """Loads the users not cached yet in one store read; returns how many were read."""
        return len(self._load(list(dict.fromkeys(user_ids)), count_read=True))

    def evict(self, user_id: int) -> None:
        """Drops the user's entry, and keeps a read in flight from caching what it read."""
        with self._lock:
            self._drop(user_id)
            flight = self._flights.pop(user_id, None)
            if flight is not None:
                flight.stale = True

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, user_ids: list[int], count_read: bool = False) -> list:
        """Each user's record; reads the missing ones (that no other thread is reading) at once.
        With ``count_read``, returns the users this call read instead."""
        found: dict[int, UserRecord | None] = {}
        waiting: dict[int, Future] = {}
        mine: dict[int, _Flight] = {}
        with self._lock:
            now = self._clock()
            for user in user_ids:
                entry = self._entries.get(user)
                if entry is not None and entry.expires > now:
                    self._entries.move_to_end(user)
                    self.hits += 1
                    found[user] = entry.record
                    continue
                self.misses += 1
                if user in self._flights:
                    waiting[user] = self._flights[user].result
                else:
                    mine[user] = self._flights[user] = _Flight(Future())
            if mine:
                self.reads += 1
        if mine:
            self._read(mine)
        for user, future in waiting.items():
            found[user] = future.result()
        for user, flight in mine.items():
            found[user] = flight.result.result()
        return list(mine) if count_read else [found[user] for user in user_ids]

    def _read(self, flights: dict[int, _Flight]) -> None:
        """One store read for ``flights``' users; fills their futures, caches what is not stale."""
        try:
            records = self._read_many(list(flights))
        except BaseException as error:
            with self._lock:
                for user, flight in flights.items():
                    if self._flights.get(user) is flight:
                        del self._flights[user]
            for flight in flights.values():
                flight.result.set_exception(error)
            return
        with self._lock:
            expires = self._clock() + self.ttl_s
            for (user, flight), record in zip(flights.items(), records):
                if self._flights.get(user) is flight:
                    del self._flights[user]
                if not flight.stale:
                    self._put(user, _Entry(record, expires, record_bytes(record)))
        for flight, record in zip(flights.values(), records):
            flight.result.set_result(record)

    def _put(self, user_id: int, entry: _Entry) -> None:
        """Caches the entry, evicting the least recently used ones past the budget (caller locks)."""
        self._drop(user_id)
        if entry.size > self.max_bytes:
            return
        self._entries[user_id] = entry
        self.bytes += entry.size
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= oldest.size

    def _drop(self, user_id: int) -> None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            self.bytes -= entry.size
