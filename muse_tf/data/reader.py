"""tf.data input: converted TFRecord shards -> ``(features, label)`` batches of the model contract.

Shards hold one record per user (schema, encoding and parsing: ``muse_tf.contract.records``).

Reading parses batches of records with one vectorised ``parse_example``, expands them to samples
in memory (each sample gathers its user's row), left-pads or truncates the history to the requested
``history_length`` (newest behaviour in the last column), then rebatches to ``batch_size``.
Shapes: B = batch, L = ``history_length``. Samples of one user stay in the same parsed block, so
shuffling mixes users (and files), not the samples within a user.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from muse_tf.contract import dataset_dir, records

# Schemes TensorFlow reads natively, and those that need tensorflow-io's filesystem plugins.
_NATIVE_SCHEMES = ("gs",)
_TFIO_SCHEMES = ("s3", "hdfs", "az")
# tensorflow-io's last release (0.37.1) is built against TensorFlow 2.16: on any other TensorFlow
# its native filesystem plugins do not load, so it is not even imported there.
_TFIO_TENSORFLOW = "2.16"
# Record-level shuffle buffer (user records of a few KB at L = 1,000: at most ~10 MB).
SHUFFLE_BUFFER_RECORDS = 1024
# Records per vectorised parse: Taobao-MM has ~11 samples per user, so a parsed block of
# batch_size / 8 records yields a little more than one output batch.
SAMPLES_PER_RECORD_HINT = 8


def ensure_filesystems(paths: Sequence[str]) -> None:
    """Registers the filesystems ``paths`` need; tensorflow-io is imported only for its schemes.

    Raises:
        ValueError: for a scheme neither TensorFlow nor tensorflow-io reads.
        ImportError: when an s3/hdfs/az path is used without tensorflow-io installed, or with a
            TensorFlow other than 2.16.
    """
    schemes = {path.split("://", 1)[0] for path in paths if "://" in path}
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
        paths = sorted(tf.io.gfile.glob(files))
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
    manifest = dataset_dir.load_manifest(data_dir)
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{data_dir}: no split {split!r}; the manifest lists {sorted(splits)}.")
    paths = [os.path.join(data_dir, shard["file"]) for shard in splits[split]["shards"]]
    for path in paths:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"Shard {path} is listed in the manifest but missing.")
    return paths


def make_dataset(
    files: str | Sequence[str],
    batch_size: int,
    *,
    history_length: int,
    shuffle: bool = False,
    seed: int | None = None,
    deterministic: bool = False,
    repeat: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool = False,
    precompute_gsu: np.ndarray | None = None,
    top_k: int | None = None,
    users: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(features, label)`` from converted shards.

    Args:
        files: a glob pattern or a list of shards (local, ``gs://``, or through tensorflow-io
            ``s3://``, ``hdfs://``, ``az://``).
        batch_size: samples per yielded batch (per replica under ``tf.distribute``).
        history_length: L; longer histories keep their most recent L behaviours, shorter ones are
            left-padded with PAD.
        shuffle: shuffle the file order each epoch and user records through a buffer.
        seed: shuffle seed; required when both ``shuffle`` and ``deterministic`` are set.
        deterministic: keep a reproducible element order (slower interleave/parse).
        repeat: repeat indefinitely (files are reshuffled each epoch).
        input_context: shards the *files* across ``input_context.num_input_pipelines`` workers.
        drop_remainder: drop the last partial batch (static batch dimension).
        precompute_gsu: the model's frozen multimodal table: adds MUSE's search result to every
            batch (``gsu_precompute``), so a multimodal-GSU MuseModel skips its search. Trade-off:
            the step no longer gathers and normalises the L x 128 history, but the input pipeline
            does that work instead (on the host CPU, overlapping the step), holds a copy of the
            table, and fixes K and the table at dataset creation; the result depends on nothing
            learned, so it may also be cached across epochs (``.cache()``). Not for searches over
            learned embeddings (SIM-soft). Serving is unaffected: the export searches in-graph.
        top_k: K of the precomputed search: the model's ``top_k`` (required with
            ``precompute_gsu``).
        users: keeps only the users it selects: maps (U,) raw user IDs (``user_key``) to (U,)
            bool, applied to whole user records before they are expanded to samples
            (``muse_tf.jobs.validation`` holds users out this way); None keeps every user.

    Returns:
        A dataset of ``(features, label)``: ``features`` maps every name of
        ``features.MODEL_FEATURES`` to int64 (B,) or, for histories, (B, L), plus ``user_key``
        (B,) int64 (raw user ID) and, with ``precompute_gsu``, the three
        ``muse_tf.layers.search.PRECOMPUTED_GSU`` (B, K); ``label`` is float32 (B,) in {0, 1}.

    TensorFlow's reader errors on a damaged shard (``DataLossError``) do not name the file;
    ``verify_shards`` does.
    """
    if batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    if history_length <= 0:
        raise ValueError(f"`history_length` must be positive, got {history_length}.")
    if precompute_gsu is not None and top_k is None:
        raise ValueError("`precompute_gsu` needs `top_k`, the model's (ModelConfig.top_k).")
    if shuffle and deterministic and seed is None:
        raise ValueError("Deterministic shuffling needs a `seed`.")
    paths = resolve_files(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(paths) < pipelines:
            raise ValueError(
                f"{len(paths)} shard(s) cannot be split across {pipelines} input pipelines; "
                "convert with more shards."
            )
        paths = paths[input_context.input_pipeline_id :: pipelines]

    dataset = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION),
        cycle_length=min(len(paths), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER_RECORDS, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(max(1, batch_size // SAMPLES_PER_RECORD_HINT))
    if users is not None:
        dataset = dataset.map(
            lambda block: tf.boolean_mask(block, users(records.user_keys(block))),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    dataset = dataset.map(
        lambda block: records.parse_user_records(block, history_length),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
    if precompute_gsu is not None:
        # Imported here: the conversion pipelines import this module and need no search.
        from muse_tf.ops.precompute import gsu_precompute

        add_search = gsu_precompute(precompute_gsu, top_k)
        dataset = dataset.map(
            lambda batch, label: (add_search(batch), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def verify_shards(files: str | Sequence[str]) -> dict[str, int]:
    """Checks every shard's GZIP stream to its end and reads every record; returns records per
    shard.

    TensorFlow's GZIP reader ends a truncated shard silently when the cut falls on a flush
    boundary, so the stream is first decompressed with Python's ``gzip``, which requires the
    end-of-stream marker and checks the CRC.

    Raises:
        ValueError: naming the first shard that is damaged or is not a GZIP TFRecord file.
    """
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
        with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
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
    expected = dataset_dir.split_samples(dataset_dir.load_manifest(data_dir), split)
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
    try:
        yield
    except tf.errors.DataLossError:
        verify_shards(files)
        raise
