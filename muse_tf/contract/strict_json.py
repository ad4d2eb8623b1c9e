"""JSON files that every parser reads: an undefined metric (NaN, e.g. a GAUC with no user who has
both a click and a non-click) is written as ``null``, never as the bare ``NaN`` Python's json module
emits by default and strict parsers (JavaScript, jq, Go) reject. And JSON read as arrays without
NumPy's silent conversions (``array``), as the serving request readers need.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT64_RANGE = "[-2^63, 2^63 - 1]"


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``finite(value)``; anything still non-finite raises ValueError."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def dump(value: Any, f: IO[str], **kwargs: Any) -> None:
    """``json.dump`` of ``finite(value)`` (see ``dumps``)."""
    json.dump(finite(value), f, allow_nan=False, **kwargs)


def _leaves(value: Any, depth: int) -> Iterable[Any]:
    """The values of a rectangular nested list ``depth`` levels deep."""
    leaves: Iterable[Any] = [value]
    for _ in range(depth):
        leaves = itertools.chain.from_iterable(leaves)
    return leaves


def array(name: str, value: Any) -> np.ndarray:
    """A decoded JSON value as a NumPy array, refusing what NumPy would silently change: true or
    false among numbers (read as 1 and 0), integers outside int64 (read as uint64, float64 or
    objects, then wrapped or rounded), and nulls or objects.

    Raises:
        ValueError: starting with ``name`` (e.g. "Input 'user_id'"), saying what is wrong.
    """
    try:
        result = np.asarray(value)
    except ValueError as error:  # ragged lists
        raise ValueError(f"{name} is not a rectangular array: {error}") from None
    if result.dtype.kind not in "iufO":  # booleans only, or strings
        return result
    kinds = set(map(type, _leaves(value, result.ndim)))
    if bool in kinds:
        raise ValueError(f"{name} holds true or false among numbers; booleans are not numbers.")
    if int in kinds and result.dtype.kind != "i":  # int64 holds all of them otherwise
        for leaf in _leaves(value, result.ndim):
            if type(leaf) is int and not INT64_MIN <= leaf <= INT64_MAX:
                raise ValueError(f"{name} holds {leaf}, outside the int64 range {INT64_RANGE}.")
    if result.dtype.kind == "O":
        raise ValueError(f"{name} holds null or an object where numbers or strings belong.")
    return result
