"""GZIP TFRecord shards read without TensorFlow, so that ``serving.request`` starts in well under a
second.

A TFRecord file holds, per record (little-endian): uint64 length, uint32 masked CRC-32C of the
length, the data, uint32 masked CRC-32C of the data. The record CRCs are not checked (CRC-32C has
no implementation here without TensorFlow); the GZIP stream's own CRC-32 is, when a shard is read
to its end, and a cut anywhere (a flush boundary included) is found.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator

from muse_tf.contract import dataset_dir, records

_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_FOOTER_BYTES = 4  # masked CRC of the data


def read_records(path: str) -> Iterator[bytes]:
    """The serialized records of GZIP TFRecord file ``path``, in order.

    Raises:
        ValueError: naming ``path`` when it is cut short or is not a GZIP TFRecord file.
    """
    count = 0
    try:
        with dataset_dir.open_file(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            while header := stream.read(_HEADER.size):
                if len(header) < _HEADER.size:
                    raise EOFError("a record header is cut short")
                length, _ = _HEADER.unpack(header)
                data = stream.read(length)
                if len(data) < length or len(stream.read(_FOOTER_BYTES)) < _FOOTER_BYTES:
                    raise EOFError("a record is cut short")
                count += 1
                yield data
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"Shard {path} is damaged or not a {records.COMPRESSION} TFRecord file "
            f"(after {count} records): {err}"
        ) from err
