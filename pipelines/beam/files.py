"""The files the Beam engine writes besides the record shards (the range files of the vocabularies
and of the multimodal table), and the launcher's look-ups, through Beam's file systems (local,
``gs://``, ...)."""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def save(path: str, array: np.ndarray) -> None:
    """Writes ``array`` as a ``.npy`` file."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        np.save(f, array)


def load(path: str) -> np.ndarray:
    """Reads a ``.npy`` file."""
    with open_read(path) as f:
        return np.load(io.BytesIO(f.read()))


def range_path(work: str, kind: str, name: str, bucket: int) -> str:
    """The file of one value range of a vocabulary (``kind`` "vocab") or of its table rows."""
    return f"{work}/{kind}/{name}/r{bucket:05d}.npy"


def ranges(work: str, kind: str, name: str) -> list[str]:
    """Every range file of ``name``, in range order."""
    return sorted(match(f"{work}/{kind}/{name}/r*.npy"))


def open_read(path: str) -> BinaryIO:
    """``path`` opened for reading, as it is stored."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def match(pattern: str) -> list[str]:
    """The paths matching ``pattern``."""
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def size(path: str) -> int:
    """The bytes of the file ``path``."""
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
