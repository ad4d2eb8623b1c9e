"""A failed write names its file (both engines), so the command's one-line error says which."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Makes an OSError of the block name ``path`` when it names no file: a buffered write that
    fails on a full disk does not, and the command's one-line error says which file it was."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), path) from err
