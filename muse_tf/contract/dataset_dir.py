"""The files a data conversion writes and that training and export reuse.

Layout of a converted dataset directory::

    manifest.json                 counts, schema version, vocabulary sizes (see pipelines/)
    vocab/<name>.npy              int64 raw IDs of vocabulary <name>, ascending; position -> index
                                  by muse_tf.contract.vocabulary (index = position + 2; 0 = PAD, 1 = OOV)
    multimodal_table.npy          int8 (vocab_size("item"), 128): row i = SCL vector of item index i,
                                  all zero where the item has none (and for PAD/OOV)
    train/part-*.tfrecord.gz      GZIP TFRecord shards (format: muse_tf.data.reader)
    test/part-*.tfrecord.gz
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import tensorflow as tf

from muse_tf import cli
from muse_tf.contract import features, vocabulary

MANIFEST = "manifest.json"
VOCAB_DIR = "vocab"
MULTIMODAL_TABLE = "multimodal_table.npy"
SCHEMA_VERSION = 1
CONVERT_COMMAND = "python -m pipelines.taobao_mm --input PARQUET_DIR --output DATA_DIR"


class DatasetError(cli.UsageError, ValueError):
    """A directory that cannot be read as a converted dataset; the message says how to make one."""


class NotADatasetError(DatasetError, FileNotFoundError):
    """The directory holds no ``manifest.json``: it is missing, raw Parquet, or something else."""


def require_dataset(data_dir: str) -> None:
    """Checks that ``data_dir`` was written by a conversion (it holds ``manifest.json``).

    Raises:
        NotADatasetError: naming the directory, what it is instead and the conversion command.
    """
    if tf.io.gfile.exists(os.path.join(data_dir, MANIFEST)):
        return
    command = CONVERT_COMMAND
    if not tf.io.gfile.isdir(data_dir):
        found = "the directory does not exist"
    elif tf.io.gfile.glob(os.path.join(data_dir, "*.parquet")) or tf.io.gfile.glob(
        os.path.join(data_dir, "*", "*.parquet")
    ):
        found = "it holds raw Parquet, which must be converted first"
        command = command.replace("PARQUET_DIR", data_dir)
    else:
        found = f"no {MANIFEST}"
    raise NotADatasetError(
        f"{data_dir} is not a converted dataset ({found}): convert raw Taobao-MM Parquet with "
        f"`{command}` and pass DATA_DIR."
    )


def shard_name(split: str, shard: int, shards: int) -> str:
    """Shard ``shard`` of ``shards`` of a split, relative to the dataset directory, as the manifest
    lists it."""
    return f"{split}/part-{shard:05d}-of-{shards:05d}.tfrecord.gz"


def vocab_path(data_dir: str, name: str) -> str:
    """Where vocabulary ``name`` of a converted dataset lives (``vocab/<name>.npy``)."""
    return os.path.join(data_dir, VOCAB_DIR, f"{name}.npy")


def load_vocabulary(data_dir: str, name: str) -> np.ndarray:
    """Raw int64 IDs of vocabulary ``name``, in index order (``muse_tf.contract.vocabulary``)."""
    path = vocab_path(data_dir, name)
    if not tf.io.gfile.exists(path):
        require_dataset(data_dir)  # (a conversion reads its vocabularies before its manifest)
        raise FileNotFoundError(f"Vocabulary {name!r} not found at {path}; run a pipeline first.")
    return _load_npy(path)


def _load_npy(path: str) -> np.ndarray:
    """``np.load`` for local and remote (gs://, s3://, ...) paths; local files are memory-mapped."""
    if "://" not in path:
        return np.load(path, mmap_mode="r")
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(io.BytesIO(f.read()))


def load_vocabularies(data_dir: str) -> dict[str, np.ndarray]:
    """Every vocabulary of ``features.VOCABULARIES``: name -> (V - 2,) int64 raw IDs in index order."""
    return {name: load_vocabulary(data_dir, name) for name in features.VOCABULARIES}


def vocabularies_digest(data_dir: str) -> str:
    """SHA-256 of every vocabulary's IDs in index order: two datasets with the same digest give
    every ID the same index, and so the same embedding row (what a run records of its data)."""
    digest = hashlib.sha256()
    for name, ids in load_vocabularies(data_dir).items():
        ids = np.ascontiguousarray(ids, "<i8")
        digest.update(f"{name}:{len(ids)}\n".encode())
        digest.update(memoryview(ids).cast("B"))
    return digest.hexdigest()


def vocab_sizes(data_dir: str) -> dict[str, int]:
    """Embedding-table rows per vocabulary, PAD and OOV included."""
    return {name: vocabulary.table_rows(ids) for name, ids in load_vocabularies(data_dir).items()}


def load_multimodal_table(data_dir: str) -> np.ndarray:
    """The frozen SCL table, (V, 128) int8 with V = ``vocab_sizes(data_dir)["item"]``.

    Row i is the vector of item index i (value = trunc(127 v), so scale by 1/127); an all-zero
    row means the item has none. Local files are memory-mapped, not read.
    """
    path = os.path.join(data_dir, MULTIMODAL_TABLE)
    if not tf.io.gfile.exists(path):
        require_dataset(data_dir)
        raise FileNotFoundError(f"Multimodal table not found at {path}; run a pipeline first.")
    return _load_npy(path)


def load_manifest(data_dir: str) -> dict:
    """The conversion's ``manifest.json`` (counts, vocabulary sizes, shards per split).

    Raises:
        NotADatasetError: when ``data_dir`` is not a converted dataset.
        DatasetError: when it was written by another schema version (re-run the conversion).
    """
    require_dataset(data_dir)
    path = os.path.join(data_dir, MANIFEST)
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, this muse_tf reads "
            f"{SCHEMA_VERSION}. Re-run the conversion ({CONVERT_COMMAND})."
        )
    return manifest


def split_samples(manifest: dict, split: str) -> int:
    """Samples written to ``split`` according to a conversion's manifest."""
    try:
        return int(manifest["splits"][split]["samples_written"])
    except KeyError as err:
        raise ValueError(f"The manifest has no sample count for split {split!r}.") from err
