"""The chunked layout both stores share, so an append never rewrites a long history and trimming
to the cap drops whole chunks.

A user's behaviours have positions ``head .. end - 1`` (``end = head + length``), oldest first;
position p lives in chunk ``p // CHUNK``. A chunk is one blob of little-endian int64
``(item, category)`` pairs covering positions ``k * CHUNK .. min(end, (k + 1) * CHUNK) - 1``: its
first pairs may lie before ``head`` (trimmed but not yet dropped), so its length always follows
from its number and ``end``, which is how a damaged chunk is recognised. An append fills the
last chunk and adds new ones; trimming moves ``head`` and deletes the chunks wholly before it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np

from serving.history.store import CorruptRecord

CHUNK = 1024  # behaviours per chunk: 16 KB of pairs
PAIR_BYTES = 16
_PAIR = np.dtype("<i8")


def behaviours(user_id: int, items: Sequence[int], categories: Sequence[int]) -> bytes:
    """The packed pairs of aligned ``items`` and ``categories``.

    Raises:
        ValueError: naming the user, for lengths that differ or IDs outside int64.
    """
    if len(items) != len(categories):
        raise ValueError(
            f"user {user_id}: {len(items)} items but {len(categories)} categories; they must align"
        )
    try:
        pairs = np.stack([np.asarray(items, np.int64).reshape(-1),
                          np.asarray(categories, np.int64).reshape(-1)], axis=1)
    except (OverflowError, ValueError, TypeError) as error:
        raise ValueError(f"user {user_id}: behaviours must be int64 IDs ({error})") from None
    return pairs.astype(_PAIR, copy=False).tobytes()


def user_id_of(user_id: int) -> int:
    """``user_id`` as a Python int, checked to be an int64 (the records' raw user IDs)."""
    if isinstance(user_id, bool | np.bool_) or not isinstance(user_id, int | np.integer):
        raise ValueError(f"user ID {user_id!r}: expected an int64")
    if not -(2**63) <= int(user_id) < 2**63:
        raise ValueError(f"user ID {user_id}: outside int64")
    return int(user_id)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an append (or a write onto an empty user) changes: the new ``head`` and ``length``,
    the chunks to (re)write and the chunk numbers to delete."""

    head: int
    length: int
    put: dict[int, bytes]
    drop: range


def plan_append(head: int, length: int, last_chunk: bytes, data: bytes, cap: int) -> Plan:
    """The chunks an append of packed ``data`` writes onto ``head``/``length``, trimmed to ``cap``.

    ``last_chunk`` is the blob of chunk ``end // CHUNK`` when ``end`` falls inside it (else
    ignored). ``redis_store``'s script is this function in Lua.
    """
    end = head + length
    count = len(data) // PAIR_BYTES
    new_end = end + count
    new_head = max(head, new_end - cap)
    if new_head >= end:  # every old behaviour drops: start over at position 0
        drop = range(head // CHUNK, -(-end // CHUNK))
        kept = new_end - new_head
        data, head, end, new_head = data[(count - kept) * PAIR_BYTES:], 0, 0, 0
        new_end = kept
    else:
        drop = range(head // CHUNK, new_head // CHUNK)
    put = {}
    position, offset = end, 0
    while position < new_end:
        chunk = position // CHUNK
        take = min((chunk + 1) * CHUNK, new_end) - position
        piece = data[offset:offset + take * PAIR_BYTES]
        put[chunk] = (last_chunk + piece) if position % CHUNK else piece
        position, offset = position + take, offset + take * PAIR_BYTES
    return Plan(new_head, new_end - new_head, put, drop)


def span(head: int, length: int, newest: int) -> tuple[int, range]:
    """The first position of the newest ``newest`` behaviours and the chunk numbers holding them."""
    end = head + length
    start = max(head, end - max(newest, 0))
    return start, range(start // CHUNK, -(-end // CHUNK) if end > start else start // CHUNK)


def decode(
    user_id: int, head: int, length: int, newest: int, blobs: Sequence[bytes | None]
) -> tuple[np.ndarray, np.ndarray]:
    """(items, categories) of the newest ``newest`` behaviours from the blobs of ``span``'s chunks.

    Raises:
        CorruptRecord: naming the user, for a missing chunk or one of the wrong length.
    """
    start, chunks = span(head, length, newest)
    end = head + length
    if len(blobs) != len(chunks):
        raise CorruptRecord(f"user {user_id}: {len(blobs)} chunks stored, expected {len(chunks)}")
    for chunk, blob in zip(chunks, blobs):
        expected = (min(end, (chunk + 1) * CHUNK) - chunk * CHUNK) * PAIR_BYTES
        if blob is None or len(blob) != expected:
            got = "missing" if blob is None else f"{len(blob)} bytes"
            raise CorruptRecord(
                f"user {user_id}: history chunk {chunk} is {got}, expected {expected} bytes"
            )
    if not chunks:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy()
    pairs = np.frombuffer(b"".join(blobs), _PAIR).reshape(-1, 2)
    pairs = pairs[start - chunks[0] * CHUNK:].astype(np.int64, copy=False)  # no copy on x86/ARM
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


def encode_profile(profile: Mapping[str, int] | None) -> str | None:
    """A profile as stored: JSON of its raw int64 features, or None."""
    if profile is None:
        return None
    return json.dumps({str(name): int(value) for name, value in profile.items()}, sort_keys=True)


def decode_profile(user_id: int, text: str | bytes | None) -> dict[str, int] | None:
    """``encode_profile``'s inverse.

    Raises:
        CorruptRecord: naming the user, when the stored text is not a JSON object of integers.
    """
    if text is None:
        return None
    try:
        profile = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptRecord(f"user {user_id}: stored profile is not JSON ({error})") from None
    if not isinstance(profile, dict) or not all(
        type(value) is int for value in profile.values()  # noqa: E721 (bool is no ID)
    ):
        raise CorruptRecord(f"user {user_id}: stored profile {text!r} is not features -> IDs")
    return profile
