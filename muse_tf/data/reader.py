"""tf.data input: converted TFRecord shards -> ``(features, label)`` batches of the model contract.

Shards hold one record per user (schema, encoding and parsing: ``muse_tf.contract.records``).

Reading parses batches of records with one vectorised ``parse_example``, expands them to samples
in memory (each sample gathers its user's row), left-pads or truncates the history to the requested
``history_length`` (newest behaviour in the last column), then rebatches to ``batch_size``.
Shapes: B = batch, L = ``history_length``. Samples of one user stay in the same parsed block, so
shuffling mixes users (and files), not the samples within a user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from muse_tf.contract import dataset_dir, records
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec

# Record-level shuffle buffer (user records of a few KB at L = 1,000: at most ~10 MB).
SHUFFLE_BUFFER_RECORDS = 1024
# Records per vectorised parse: Taobao-MM has ~11 samples per user, so a parsed block of
# batch_size / 8 records yields a little more than one output batch.
SAMPLES_PER_RECORD_HINT = 8


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
    feature_spec: FeatureSpec = TAOBAO_MM,
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
        feature_spec: the shards' feature spec (``dataset_dir.load_feature_spec``; a model's
            ``config.features``): which profile and attribute features the records hold.

    Returns:
        A dataset of ``(features, label)``: ``features`` maps every name of
        ``feature_spec.model_features`` to int64 (B,) or, for histories, (B, L), plus ``user_key``
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
    paths = dataset_dir.resolve_files(files)
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
        lambda block: records.parse_user_records(block, history_length, feature_spec),
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
