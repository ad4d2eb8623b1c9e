"""JSON files that every parser reads: an undefined metric (NaN, e.g. a GAUC with no user who has
both a click and a non-click) is written as ``null``, never as the bare ``NaN`` Python's json module
emits by default and strict parsers (JavaScript, jq, Go) reject."""

from __future__ import annotations

import json
import math
from typing import IO, Any


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
