"""The converted dataset directory, for every writer (both conversion engines, the synthetic
writer) and every reader (training, evaluation, export, prediction, serving's request tool): its
layout, the manifest's keys, shard naming and the integrity of a split.

Layout of a converted dataset directory::

    manifest.json                 schema version, source, history cap, the feature spec the data was
                                  converted through (``load_feature_spec``), vocabulary sizes, per
                                  split its totals and shards (``build_manifest``; engines add
                                  sections)
    vocab/<name>.npy              int64 raw IDs of vocabulary <name>, ascending; position -> index
                                  by muse_tf.contract.vocabulary (index = position + 2; 0 = PAD, 1 = OOV)
    multimodal_table.npy          (vocab_size("item"), dim) of the spec's dtype (Taobao-MM: 128 int8):
                                  row i = the vector of item index i, all zero where the item has
                                  none (and for PAD/OOV)
    train/part-*.tfrecord.gz      GZIP TFRecord shards (format: muse_tf.data.reader)
    test/part-*.tfrecord.gz
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import IO

import numpy as np

from muse_tf import cli
from muse_tf.contract import records, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec

MANIFEST = "manifest.json"
VOCAB_DIR = "vocab"
MULTIMODAL_TABLE = "multimodal_table.npy"
FEATURE_SPEC_KEY = "feature_spec"  # the manifest's copy of the spec the data was converted through
SCHEMA_VERSION = 1
CONVERT_COMMAND = "python -m pipelines.taobao_mm --input PARQUET_DIR --output DATA_DIR"
# Schemes TensorFlow reads natively, and those that need tensorflow-io's filesystem plugins.
_NATIVE_SCHEMES = ("gs",)
_TFIO_SCHEMES = ("s3", "hdfs", "az")
# tensorflow-io's last release (0.37.1) is built against TensorFlow 2.16: on any other TensorFlow
# its native filesystem plugins do not load, so it is not even imported there.
_TFIO_TENSORFLOW = "2.16"
# multimodal_table_digest's memory: path -> (the file's version, its digest).
_TABLE_DIGESTS: dict[str, tuple[tuple, str]] = {}
_SETTLED_SECONDS = 2.0
# Held while a digest is read: an ask during a read in the background waits for its result.
_DIGEST_LOCK = threading.Lock()


class DatasetError(cli.UsageError, ValueError):
    """A directory that cannot be read as a converted dataset; the message says how to make one."""


class NotADatasetError(DatasetError, FileNotFoundError):
    """The directory holds no ``manifest.json``: it is missing, raw Parquet, or something else."""


def _gfile():
    """TensorFlow's filesystem layer, imported for remote paths only: a local dataset's manifest,
    vocabularies and shard list are read without loading TensorFlow (serving.request)."""
    import tensorflow as tf

    return tf.io.gfile


def _exists(path: str) -> bool:
    return os.path.exists(path) if "://" not in path else _gfile().exists(path)


def _isdir(path: str) -> bool:
    return os.path.isdir(path) if "://" not in path else _gfile().isdir(path)


def _glob(pattern: str) -> list[str]:
    return glob.glob(pattern) if "://" not in pattern else _gfile().glob(pattern)


def open_file(path: str, mode: str = "r") -> IO:
    """``open``, or TensorFlow's GFile for a remote path."""
    return open(path, mode) if "://" not in path else _gfile().GFile(path, mode)


def require_dataset(data_dir: str) -> None:
    """Checks that ``data_dir`` was written by a conversion (it holds ``manifest.json``).

    Raises:
        NotADatasetError: naming the directory, what it is instead and the conversion command.
    """
    if _exists(os.path.join(data_dir, MANIFEST)):
        return
    command = CONVERT_COMMAND
    if not _isdir(data_dir):
        found = "the directory does not exist"
    elif _glob(os.path.join(data_dir, "*.parquet")) or _glob(
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
    if not _exists(path):
        require_dataset(data_dir)  # (a conversion reads its vocabularies before its manifest)
        raise FileNotFoundError(f"Vocabulary {name!r} not found at {path}; run a pipeline first.")
    return _load_npy(path)


def _load_npy(path: str) -> np.ndarray:
    """``np.load`` for local and remote (gs://, s3://, ...) paths; local files are memory-mapped.

    Raises:
        DatasetError: naming a file that is not a whole ``.npy`` array (truncated, or another kind).
    """
    try:
        if "://" not in path:
            return np.load(path, mmap_mode="r")
        with _gfile().GFile(path, "rb") as f:
            return np.load(io.BytesIO(f.read()))
    except (ValueError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable .npy array ({e}): the conversion wrote it "
                           f"damaged or something replaced it; re-run the conversion "
                           f"({CONVERT_COMMAND}).") from e


def load_vocabularies(data_dir: str, spec: FeatureSpec | None = None) -> dict[str, np.ndarray]:
    """Every vocabulary of the feature spec (default: the dataset's, ``load_feature_spec``):
    name -> (V - 2,) int64 raw IDs in index order."""
    spec = spec or load_feature_spec(data_dir)
    return {name: load_vocabulary(data_dir, name) for name in spec.vocabularies}


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
    """The frozen multimodal table, (V, dim) of the spec's dtype with V = ``vocab_sizes(data_dir)["item"]``
    (Taobao-MM: 128 int8 SCL values, trunc(127 v)).

    Row i is the vector of item index i; an all-zero row means the item has none. Local files are
    memory-mapped, not read.
    """
    path = os.path.join(data_dir, MULTIMODAL_TABLE)
    if not _exists(path):
        require_dataset(data_dir)
        raise FileNotFoundError(f"Multimodal table not found at {path}; run a pipeline first.")
    return _load_npy(path)


def multimodal_table_digest(data_dir: str) -> str:
    """SHA-256 of the multimodal table file: what a run records of the frozen table its backups
    leave out, so that a resume reloads the same one.

    Read once per process while the file stays the same (its size, modification time and, if
    local, inode): a run's start, its resume check and the load for evaluation each ask, and
    each read takes ~1 s per GB. As in git's index, a file modified less than
    ``_SETTLED_SECONDS`` before it was read is read again next time: file times are coarse
    (a clock tick), so a rewrite within the same tick would keep them."""
    with _DIGEST_LOCK:
        return _read_table_digest(os.path.join(data_dir, MULTIMODAL_TABLE))


def start_multimodal_table_digest(data_dir: str) -> None:
    """Starts reading ``multimodal_table_digest`` in a background thread, so that the first ask
    finds it read: hashing releases the GIL, and the work before the ask (building the model,
    loading the table) leaves a core idle much of the time (at 10M rows the read is ~1 s). Any
    error is left to that ask, which reads the file again and raises it."""

    def read() -> None:
        with contextlib.suppress(Exception):
            multimodal_table_digest(data_dir)

    threading.Thread(target=read, name="multimodal-table-digest", daemon=True).start()


def _read_table_digest(path: str) -> str:
    """``multimodal_table_digest`` of the file at ``path``, its lock held."""
    if "://" in path:
        stat = _gfile().stat(path)
        version, modified_ns = (stat.length, stat.mtime_nsec), stat.mtime_nsec
    else:
        stat = os.stat(path)
        version = (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
        modified_ns = stat.st_mtime_ns
    known_version, known_digest = _TABLE_DIGESTS.get(path, (None, None))
    if known_version == version:
        return known_digest
    started_ns = time.time_ns()
    digest = hashlib.sha256()
    with open_file(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if started_ns - modified_ns > _SETTLED_SECONDS * 1e9:
        _TABLE_DIGESTS[path] = (version, digest.hexdigest())
    return digest.hexdigest()


def load_manifest(data_dir: str) -> dict:
    """The conversion's ``manifest.json`` (counts, vocabulary sizes, shards per split).

    Raises:
        NotADatasetError: when ``data_dir`` is not a converted dataset.
        DatasetError: when it was written by another schema version (re-run the conversion).
    """
    require_dataset(data_dir)
    path = os.path.join(data_dir, MANIFEST)
    with open_file(path) as f:
        manifest = json.load(f)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {manifest.get('schema_version')!r}, this muse_tf reads "
            f"{SCHEMA_VERSION}. Re-run the conversion ({CONVERT_COMMAND})."
        )
    return manifest


def load_feature_spec(data_dir: str) -> FeatureSpec:
    """The feature spec ``data_dir`` was converted through, from its manifest; a dataset whose
    manifest records none was converted before specs existed, from Taobao-MM (``TAOBAO_MM``)."""
    recorded = load_manifest(data_dir).get(FEATURE_SPEC_KEY)
    if recorded is None:
        return TAOBAO_MM
    return FeatureSpec.from_dict(recorded, source=f"{os.path.join(data_dir, MANIFEST)} {FEATURE_SPEC_KEY}")


def split_samples(manifest: dict, split: str) -> int:
    """Samples written to ``split`` according to a conversion's manifest."""
    try:
        return int(manifest["splits"][split]["samples_written"])
    except KeyError as err:
        raise ValueError(f"The manifest has no sample count for split {split!r}.") from err

def sum_counts(shards: list[dict]) -> dict:
    """Adds per-shard counts (numbers and nested dicts of numbers) into split totals."""
    total: dict = {}
    for shard in shards:
        for key, value in shard.items():
            if isinstance(value, dict):
                total[key] = {k: total.get(key, {}).get(k, 0) + v for k, v in value.items()}
            elif isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


def split_summary(shards: list[dict], totals: dict | None = None) -> dict:
    """A split's manifest entry: its totals (default: ``sum_counts(shards)``), bytes per sample
    and the shards (``file`` as ``shard_name`` gives it, ``bytes``, and their counts)."""
    totals = sum_counts(shards) if totals is None else totals
    written = totals["samples_written"]
    bytes_per_sample = round(totals["bytes"] / written, 1) if written else None
    return {**totals, "bytes_per_sample": bytes_per_sample, "shards": shards}


def build_manifest(
    *, source: str, history_cap: int, feature_spec: FeatureSpec, vocab_sizes: dict[str, int],
    splits: dict[str, dict], **sections,
) -> dict:
    """``manifest.json`` as every writer writes it: the keys readers rely on (``schema_version``,
    ``history_cap``, ``feature_spec``, ``vocab_sizes``, ``splits`` of ``split_summary`` entries)
    and the writer's own ``sections`` (e.g. a conversion's vocabulary statistics and input rows)."""
    return {"schema_version": SCHEMA_VERSION, "source": source, "history_cap": history_cap,
            FEATURE_SPEC_KEY: feature_spec.to_dict(), "vocab_sizes": vocab_sizes, **sections,
            "splits": splits}


def ensure_filesystems(paths: Sequence[str]) -> None:
    """Registers the filesystems ``paths`` need; tensorflow-io is imported only for its schemes.

    Raises:
        ValueError: for a scheme neither TensorFlow nor tensorflow-io reads.
        ImportError: when an s3/hdfs/az path is used without tensorflow-io installed, or with a
            TensorFlow other than 2.16.
    """
    schemes = {path.split("://", 1)[0] for path in paths if "://" in path}
    if not schemes:
        return
    import tensorflow as tf

    missing = schemes - set(tf.io.gfile.get_registered_schemes())
    if not missing:
        return
    unknown = missing - set(_TFIO_SCHEMES) - set(_NATIVE_SCHEMES)
    if unknown:
        raise ValueError(
            f"Unsupported path scheme(s) {sorted(unknown)}: use local paths, gs:// or, with "
            f"tensorflow-io, {', '.join(s + '://' for s in _TFIO_SCHEMES)}."
        )
    if not tf.__version__.startswith(_TFIO_TENSORFLOW + "."):
        raise ImportError(
            f"Reading {sorted(missing)} paths needs tensorflow-io, which works only with TensorFlow "
            f"{_TFIO_TENSORFLOW}, not {tf.__version__}. Use the legacy set (Python 3.11: "
            "pip install -c requirements/constraints.txt 'muse-tf[io]'), or copy the data to a "
            "local or gs:// path."
        )
    try:
        import tensorflow_io  # noqa: F401  (registers s3, hdfs, az, ... on import)
    except ImportError as err:
        raise ImportError(
            f"Reading {sorted(missing)} paths needs tensorflow-io: pip install 'muse-tf[io]'."
        ) from err


def resolve_files(files: str | Sequence[str]) -> list[str]:
    """A glob pattern (sorted matches) or an explicit list of shard paths, local or remote.

    Raises:
        FileNotFoundError: naming the pattern that matched nothing or the local file that is absent.
    """
    if isinstance(files, str):
        ensure_filesystems([files])
        paths = sorted(_glob(files))
        if not paths:
            raise FileNotFoundError(f"No shard matches {files!r}.")
        return paths
    paths = [os.fspath(path) for path in files]
    if not paths:
        raise ValueError("`files` is an empty list.")
    ensure_filesystems(paths)
    for path in paths:
        if "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(f"Shard {path} does not exist.")
    return paths


def split_files(data_dir: str, split: str) -> list[str]:
    """The shards of ``split`` listed by a converted directory's manifest, in order; the directory
    may be local or remote (``gs://``, or with tensorflow-io ``s3://``, ``hdfs://``, ``az://``).

    Raises:
        ValueError: for a split the manifest does not have.
        FileNotFoundError: naming a listed shard that is missing.
    """
    ensure_filesystems([data_dir])
    manifest = load_manifest(data_dir)
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{data_dir}: no split {split!r}; the manifest lists {sorted(splits)}.")
    paths = [os.path.join(data_dir, shard["file"]) for shard in splits[split]["shards"]]
    for path in paths:
        if not _exists(path):
            raise FileNotFoundError(f"Shard {path} is listed in the manifest but missing.")
    return paths


def verify_shards(files: str | Sequence[str]) -> dict[str, int]:
    """Checks every shard's GZIP stream to its end and reads every record; returns records per
    shard.

    TensorFlow's GZIP reader ends a truncated shard silently when the cut falls on a flush
    boundary, so the stream is first decompressed with Python's ``gzip``, which requires the
    end-of-stream marker and checks the CRC.

    Raises:
        ValueError: naming the first shard that is damaged or is not a GZIP TFRecord file.
    """
    import tensorflow as tf

    counts = {}
    for path in resolve_files(files):
        _check_gzip_stream(path)
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION):
                count += 1
        except tf.errors.OpError as err:
            raise ValueError(
                f"Shard {path} is damaged or not a {records.COMPRESSION} TFRecord file "
                f"(after {count} records): {err.message}"
            ) from err
        counts[path] = count
    return counts


def _check_gzip_stream(path: str, chunk_bytes: int = 1 << 20) -> None:
    """Decompresses ``path`` to its end (in chunks, any filesystem TensorFlow reads)."""
    try:
        with open_file(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            while stream.read(chunk_bytes):
                pass
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"Shard {path} is damaged or not a {records.COMPRESSION} TFRecord file: {err}"
        ) from err


def check_split_read_whole(data_dir: str, split: str, samples_read: int) -> None:
    """Checks that reading ``split`` gave every sample its manifest counts: a shard truncated on
    a GZIP flush boundary reads as a clean, shorter file.

    Raises:
        ValueError: naming the damaged shard, else the shortfall.
    """
    expected = split_samples(load_manifest(data_dir), split)
    if samples_read != expected:
        verify_shards(split_files(data_dir, split))
        raise ValueError(
            f"{data_dir}: read {samples_read} samples of split {split!r}, its manifest counts "
            f"{expected}; the shards no longer match their manifest (re-convert or copy them again)."
        )


@contextlib.contextmanager
def damaged_shards_named(files: str | Sequence[str]) -> Iterator[None]:
    """Turns a bare DataLossError raised while reading ``files`` into ``verify_shards``'s
    ValueError naming the damaged shard (re-raises the original if every shard reads)."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.DataLossError:
        verify_shards(files)
        raise
