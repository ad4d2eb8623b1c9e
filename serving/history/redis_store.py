"""The distributed history store: Redis or anything speaking its protocol (Valkey, Dragonfly).

A user is two hashes sharing the hash tag ``{u:<id>}``, so both live on one Redis Cluster slot:
``{u:<id>}:meta`` (``version``, ``head``, ``length``, ``profile`` JSON) and ``{u:<id>}:chunks``
(chunk number -> packed pairs, the layout of ``serving.history.chunks``). Every write or append is
one Lua script naming both keys (atomic per user, trim and version bump included); ``read_many``
is one read-only script per user, pipelined in one round trip.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.history import chunks
from serving.history.store import (
    DEFAULT_CAP,
    CorruptRecord,
    HistoryStore,
    StoreUnavailable,
    UserRecord,
)

# redis-py's pure-Python reply parser reads the socket this much at a time: its 64 KB default
# makes a 100K history (1.6 MB) about 3x slower to read.
SOCKET_READ_BYTES = 1 << 20
# KEYS: meta, chunks. ARGV: packed pairs, cap, chunk size, "1" to replace (a write), profile JSON
# ("" for none; a write only). chunks.plan_append in Lua; returns the new version.
_APPEND = """
local data, cap, C, replace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local head, length = 0, 0
if replace then
  redis.call('DEL', KEYS[2])
  if ARGV[5] == '' then redis.call('HDEL', KEYS[1], 'profile')
  else redis.call('HSET', KEYS[1], 'profile', ARGV[5]) end
else
  local meta = redis.call('HMGET', KEYS[1], 'head', 'length')
  head, length = tonumber(meta[1] or '0'), tonumber(meta[2] or '0')
  if head == nil or length == nil then return redis.error_reply('CORRUPT head/length not numbers') end
end
local e = head + length
local count = #data / 16
local ne = e + count
local nh = math.max(head, ne - cap)
local first_drop, stop_drop
if nh >= e then
  first_drop, stop_drop = math.floor(head / C), math.ceil(e / C)
  local kept = ne - nh
  data = string.sub(data, (count - kept) * 16 + 1)
  e, nh, ne = 0, 0, kept
else
  first_drop, stop_drop = math.floor(head / C), math.floor(nh / C)
end
for k = first_drop, stop_drop - 1 do redis.call('HDEL', KEYS[2], k) end
local p, off = e, 1
while p < ne do
  local k = math.floor(p / C)
  local take = math.min((k + 1) * C, ne) - p
  local piece = string.sub(data, off, off + take * 16 - 1)
  if p % C ~= 0 then
    local last = redis.call('HGET', KEYS[2], k) or ''
    if #last ~= (p % C) * 16 then
      return redis.error_reply('CORRUPT history chunk ' .. k .. ' is ' .. #last .. ' bytes')
    end
    piece = last .. piece
  end
  redis.call('HSET', KEYS[2], k, piece)
  p, off = p + take, off + take * 16
end
redis.call('HSET', KEYS[1], 'head', nh, 'length', ne - nh)
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""
# KEYS: meta, chunks. ARGV: newest, chunk size. Returns false for an unknown user, else
# {version, head, length, profile ('' for none), the blobs of chunks.span's chunks}.
_READ = """
local m = redis.call('HMGET', KEYS[1], 'version', 'head', 'length', 'profile')
if not m[1] then return false end
local head, length, C = tonumber(m[2]), tonumber(m[3]), tonumber(ARGV[2])
if head == nil or length == nil then return {m[1], m[2] or '', m[3] or '', m[4] or ''} end
local e = head + length
local s = math.max(head, e - tonumber(ARGV[1]))
local out = {m[1], m[2], m[3], m[4] or ''}
if e > s then
  local fields = {}
  for k = math.floor(s / C), math.ceil(e / C) - 1 do fields[#fields + 1] = k end
  local blobs = redis.call('HMGET', KEYS[2], unpack(fields))
  for i = 1, #fields do out[#out + 1] = blobs[i] or '' end
end
return out
"""


def _keys(user: int) -> list[str]:
    tag = f"{{u:{user}}}"
    return [f"{tag}:meta", f"{tag}:chunks"]


class RedisStore(HistoryStore):
    """``redis://[:PASSWORD@]HOST:PORT/DB`` (``rediss://`` for TLS, ``unix:///path.sock``).

    Args:
        timeout_s: the socket timeout of each round trip (connecting included); no retries, so a
            server that is down or slow gives StoreUnavailable within it.
    """

    def __init__(self, url: str, cap: int = DEFAULT_CAP, timeout_s: float = 1.0):
        super().__init__(cap)
        self.url = _redacted(url)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"history store URL {self.url!r}: the database must be a number")
        try:
            self._redis = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                socket_read_size=SOCKET_READ_BYTES,
            )
        except ValueError as error:
            raise ValueError(f"history store URL {self.url!r}: {error}") from None
        self._append = self._redis.register_script(_APPEND)
        self._read = self._redis.register_script(_READ)

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"history store {self.url}: {type(error).__name__}: {error}")

    def read_many(self, user_ids: Sequence[int], newest: int) -> list[UserRecord | None]:
        ids = [chunks.user_id_of(user) for user in user_ids]
        try:
            replies = self._pipelined_reads(ids, newest)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from None
        return [self._record(user, reply, newest) for user, reply in zip(ids, replies)]

    def _pipelined_reads(self, ids: list[int], newest: int) -> list:
        """The read script's replies in one round trip; loads the script first if the server lacks
        it (a restarted server)."""
        try:
            return self._read_pipeline(ids, newest).execute()
        except redis.exceptions.NoScriptError:
            self._redis.script_load(_READ)
            return self._read_pipeline(ids, newest).execute()

    def _read_pipeline(self, ids: list[int], newest: int) -> redis.client.Pipeline:
        pipe = self._redis.pipeline(transaction=False)
        for user in ids:
            pipe.evalsha(self._read.sha, 2, *_keys(user), max(newest, 0), chunks.CHUNK)
        return pipe

    @staticmethod
    def _record(user: int, reply: list | None, newest: int) -> UserRecord | None:
        if reply is None:
            return None
        version, head, length, profile, *blobs = reply
        try:
            version, head, length = int(version), int(head), int(length)
        except ValueError:
            raise CorruptRecord(
                f"user {user}: stored version/head/length {version!r}/{head!r}/{length!r} "
                "are not numbers"
            ) from None
        items, categories = chunks.decode(user, head, length, newest, blobs)
        return UserRecord(items, categories, chunks.decode_profile(user, profile or None), version)

    def write(
        self,
        user_id: int,
        items: Sequence[int],
        categories: Sequence[int],
        profile: Mapping[str, int] | None = None,
    ) -> int:
        user = chunks.user_id_of(user_id)
        data = chunks.behaviours(user, items, categories)
        return self._run(user, data, "1", chunks.encode_profile(profile) or "")

    def append(self, user_id: int, items: Sequence[int], categories: Sequence[int]) -> int:
        user = chunks.user_id_of(user_id)
        return self._run(user, chunks.behaviours(user, items, categories), "0", "")

    def _run(self, user: int, data: bytes, replace: str, profile: str) -> int:
        try:
            return int(self._append(keys=_keys(user),
                                    args=[data, self.cap, chunks.CHUNK, replace, profile]))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise self._unavailable(error) from None
        except redis.ResponseError as error:
            if "CORRUPT" in str(error):
                raise CorruptRecord(f"user {user}: {str(error).split('CORRUPT', 1)[1].strip()}") from None
            raise

    def close(self) -> None:
        self._redis.close()


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
