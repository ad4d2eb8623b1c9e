"""SavedModel export for TF Serving: raw Taobao-MM IDs in, click probability and logit out.

The export is self-contained: the ID -> index vocabularies (asset files feeding
``tf.lookup.StaticHashTable``), the frozen multimodal table and the weights are all inside it, and it
uses core TensorFlow ops only, so stock ``tensorflow_model_server`` (and the C API) can load it.
Layout, as TF Serving expects::

    <export_base>/<model_name>/<version>/
        saved_model.pb, variables/, assets/vocab_<name>.txt,
        assets.extra/tf_serving_warmup_requests
        assets.extra/versions.json   {"tensorflow": ..., "tf_keras": ..., "muse_tf": ...}: the
                                     versions that wrote it (pick the TF Serving image by it)
        assets.extra/source_run.json {"run": ..., "training_sha256": ...}: the training run it
                                     came from (``RunDir.identity``); one model name, one run
        assets.extra/feature_spec.json  the feature spec its inputs follow

Signatures (every input int64 raw IDs as in the raw files; unknown IDs score as OOV). The profile
and attribute inputs are the model's feature spec's (``ModelConfig.features``, recorded as
``assets.extra/feature_spec.json``); Taobao-MM's are ``user_profile_1..5``, ``item_attr_213/214``:

``serving_default``: B independent rows.
    user_id, <profile features>, item_id, item_category, <attribute features>: (B,).
    history_items, history_categories: (B, W) **right-padded**, oldest to newest.
    history_length: (B,) valid entries per row (0..W); entries past it are ignored, so any pad value
    (and TF Serving's batching padding) is harmless.

``rank``: one user and C candidate items; the history is searched once for all C candidates.
    user_id, <profile features>: scalars. history_items, history_categories: (L,), oldest to
    newest, no padding (L may be 0). item_id, item_category, <attribute features>: (C,).

Outputs of both: ``probability`` and ``logit``, float32, one per row / candidate.

Limits, checked in the graph so stock TF Serving enforces them too (violations, and mismatched
lengths, fail with an InvalidArgument error): W and L are at most ``max_history_length``; C is at
most ``max_candidates``; B x W is at most ``max_history_values``. The defaults bound one request's
memory: ``rank`` with C = 5,000 candidates at L = 100,000 took 2.3 GB above the loaded model, and
``serving_default`` with B x W = 10 x 100,000 took 0.8 GB (``benchmarks.memory``).

``muse_tf.train`` exports at the end of a run; ``python -m muse_tf.export`` (``muse_tf/export.py``)
exports a finished run again, e.g. with another ``--max-history-length`` or with the items created
since training (``muse_tf.jobs.item_refresh``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

import muse_tf
from muse_tf import cli
from muse_tf.config import ModelConfig
from muse_tf.contract import features, limits, vocabulary, warmup
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec
from muse_tf.contract.signatures import (
    FEATURE_SPEC_FILE,
    LOGIT,
    PROBABILITY,
    RANK,
    SERVING_DEFAULT,
    VALID_HISTORY_LENGTH,
    rank_spec,
    serving_default_spec,
)
from muse_tf.jobs import runs
from muse_tf.models import MuseModel

VERSIONS_FILE = os.path.join("assets.extra", "versions.json")
SOURCE_FILE = os.path.join("assets.extra", "source_run.json")
ALLOW_OTHER_RUNS_FLAG = "--allow-other-runs"


class OtherRunError(cli.UsageError, FileExistsError):
    """The model directory holds versions of another training run: TF Serving would serve
    whichever is newest under one name."""


def _same_size(tensors: Mapping[str, tf.Tensor], names: Sequence[str], size: tf.Tensor) -> list:
    """Checks that every input after ``names[0]`` has ``size`` (the size of ``names[0]``) values."""
    return [
        tf.debugging.assert_equal(
            tf.size(tensors[name], out_type=tf.int32),
            size,
            message=f"`{name}` must have as many values as `{names[0]}`",
        )
        for name in names[1:]
    ]


def _left_align(indices: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
    """Right-padded (B, W) with ``lengths`` valid entries -> left-padded with PAD, >= 1 column."""
    width = tf.shape(indices)[1]
    # Reversing the valid prefix, blanking the rest and reversing the row keeps the order.
    flipped = tf.reverse_sequence(indices, lengths, seq_axis=1, batch_axis=0)
    valid = tf.range(width, dtype=lengths.dtype)[None, :] < lengths[:, None]
    left = tf.reverse(tf.where(valid, flipped, tf.zeros_like(flipped)), axis=[1])
    return tf.pad(left, [[0, 0], [tf.maximum(1 - width, 0), 0]])


class ServingModule(tf.Module):
    """Raw-ID front end (vocabulary tables, input checks, padding) around a built MuseModel.

    The Keras model itself is not tracked (only its variables are), so the export holds just the
    serving graph and no Keras metadata.
    """

    def __init__(
        self,
        model: MuseModel,
        vocab_files: Mapping[str, str],
        max_history_length: int,
        max_candidates: int,
        max_history_values: int,
    ):
        super().__init__(name="muse_serving")
        self.model_variables = list(model.variables)
        spec = self.feature_spec = model.config.features
        self.tables = {
            name: vocabulary.lookup_table(path) for name, path in vocab_files.items()
        }
        max_length = tf.constant(max_history_length, tf.int32)

        def score(indices: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            logit = model(indices, training=False)
            return {PROBABILITY: tf.sigmoid(logit), LOGIT: logit}

        def length_checks(width: tf.Tensor) -> list:
            return [
                tf.debugging.assert_less_equal(
                    width,
                    max_length,
                    message=f"the history is longer than max_history_length={max_history_length}",
                )
            ]

        def at_most(value: tf.Tensor, limit: int, message: str) -> tf.Operation:
            # int64, so that rows x width cannot overflow before it is compared.
            return tf.debugging.assert_less_equal(
                tf.cast(value, tf.int64), tf.constant(limit, tf.int64), message=message
            )

        @tf.function(input_signature=[serving_default_spec(spec)])
        def serving_default(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            lengths = inputs[VALID_HISTORY_LENGTH]
            items = inputs[features.HISTORY_ITEMS]
            rows = tf.size(lengths, out_type=tf.int32)
            width = tf.shape(items)[1]
            checks = [
                at_most(
                    tf.size(items, out_type=tf.int64),
                    max_history_values,
                    f"rows x width of `history_items` exceeds max_history_values="
                    f"{max_history_values}",
                )
            ]
            checks += _same_size(inputs, (VALID_HISTORY_LENGTH, *spec.scalar_features), rows)
            checks += length_checks(width) + [
                tf.debugging.assert_equal(
                    tf.shape(inputs[features.HISTORY_CATEGORIES]),
                    tf.shape(items),
                    message="`history_categories` must have the shape of `history_items`",
                ),
                tf.debugging.assert_equal(
                    tf.shape(items)[0],
                    rows,
                    message="`history_items` must have one row per `history_length` value",
                ),
                tf.debugging.assert_non_negative(lengths, message="`history_length` is negative"),
                tf.debugging.assert_less_equal(
                    lengths,
                    tf.cast(width, tf.int64),
                    message="`history_length` exceeds the width of `history_items`",
                ),
            ]
            with tf.control_dependencies(checks):
                indices = {
                    name: self._lookup(name, inputs[name]) for name in spec.scalar_features
                }
                for name in features.SEQUENCE_FEATURES:
                    indices[name] = _left_align(self._lookup(name, inputs[name]), lengths)
            return score(indices)

        @tf.function(input_signature=[rank_spec(spec)])
        def rank(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            length = tf.size(inputs[features.HISTORY_ITEMS], out_type=tf.int32)
            candidates = tf.size(inputs[features.ITEM_ID], out_type=tf.int32)
            checks = [
                at_most(
                    candidates,
                    max_candidates,
                    f"more than max_candidates={max_candidates} candidates",
                )
            ]
            checks += _same_size(inputs, features.SEQUENCE_FEATURES, length)
            checks += _same_size(inputs, spec.candidate_features, candidates)
            checks += length_checks(length)
            with tf.control_dependencies(checks):
                indices = {
                    name: self._lookup(name, inputs[name]) for name in spec.candidate_features
                }
                for name in spec.user_features:
                    indices[name] = tf.reshape(self._lookup(name, inputs[name]), [1])
                for name in features.SEQUENCE_FEATURES:
                    history = self._lookup(name, inputs[name])[None, :]
                    indices[name] = tf.pad(history, [[0, 0], [tf.maximum(1 - length, 0), 0]])
            return score(indices)

        self.serving_default = serving_default
        self.rank = rank

    def _lookup(self, feature: str, raw_ids: tf.Tensor) -> tf.Tensor:
        """Raw IDs -> model indices (``muse_tf.contract.vocabulary``'s rule)."""
        vocab = self.feature_spec.vocabulary[feature]
        return vocabulary.lookup_in_graph(self.tables[vocab], raw_ids)


def _check_vocabularies(config: ModelConfig, vocabularies: Mapping[str, np.ndarray]) -> None:
    expected = config.features.vocabularies
    for name in expected:
        if name not in vocabularies:
            raise ValueError(f"Vocabulary {name!r} is missing; expected {list(expected)}.")
        ids = np.asarray(vocabularies[name])
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) == 0:
            raise ValueError(f"Vocabulary {name!r} must be a non-empty 1-D integer array.")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"Vocabulary {name!r} has duplicate IDs.")
        if vocabulary.table_rows(ids) != config.vocab_sizes[name]:
            raise ValueError(
                f"Vocabulary {name!r} has {len(ids)} IDs, but the model's vocab_sizes[{name!r}] is "
                f"{config.vocab_sizes[name]} (IDs + {vocabulary.RESERVED})."
            )


def _write_feature_spec(export_dir: str, config: ModelConfig) -> None:
    """Records the feature spec the signatures' inputs follow (for clients building requests)."""
    with open(os.path.join(export_dir, FEATURE_SPEC_FILE), "w") as f:
        f.write(config.features.dumps())


def _write_versions(export_dir: str) -> None:
    """Records which TensorFlow wrote the export: TF Serving must be at least that version."""
    versions = {
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "muse_tf": muse_tf.__version__,
    }
    with open(os.path.join(export_dir, VERSIONS_FILE), "w") as f:
        json.dump(versions, f, indent=1)


def _source_of(version_dir: str) -> dict | None:
    path = os.path.join(version_dir, SOURCE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_one_run(model_dir: str, source: Mapping[str, str]) -> None:
    """Checks that every version in ``model_dir`` was exported from the run ``source``.

    Raises:
        OtherRunError: naming the other run (or saying it is unrecorded) and the flag to add
            this one anyway.
    """
    if not os.path.isdir(model_dir):
        return
    for entry in sorted(os.listdir(model_dir)):
        if not entry.isdigit():
            continue
        other = _source_of(os.path.join(model_dir, entry))
        if other is not None and other.get("training_sha256") == source["training_sha256"]:
            continue
        named = (f"the run {other['run']}" if other else
                 f"a run it does not record (no {SOURCE_FILE})")
        raise OtherRunError(
            f"{model_dir} holds version {entry} of {named}; adding the run {source['run']} "
            f"would serve two unrelated models under the name {os.path.basename(model_dir)!r}: use "
            f"another --export-dir or --model-name, or pass {ALLOW_OTHER_RUNS_FLAG} to add it anyway."
        )


@contextlib.contextmanager
def _no_staging_path_logged() -> Iterator[None]:
    """Keeps ``tf.saved_model.save``'s INFO line "Assets written to: <dir>" out of the logs: it
    names the staging directory, which is renamed away (a notebook showed it twice, through
    TensorFlow's handler and the root logger's); the caller reports the version directory."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _next_version(model_dir: str) -> int:
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def warmup_requests(
    vocabularies: Mapping[str, np.ndarray], spec: FeatureSpec = TAOBAO_MM
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Small requests for both signatures (known IDs; a full, an empty and an unpadded history)."""

    def ids(name: str, count: int) -> np.ndarray:
        known = np.asarray(vocabularies[spec.vocabulary[name]], np.int64)
        return np.resize(known, count)

    rows = {name: ids(name, 2) for name in spec.scalar_features}
    rows.update({name: ids(name, 6).reshape(2, 3) for name in features.SEQUENCE_FEATURES})
    rows[VALID_HISTORY_LENGTH] = np.array([3, 0], np.int64)
    ranked = {name: ids(name, 1)[0] for name in spec.user_features}
    ranked.update({name: ids(name, 4) for name in features.SEQUENCE_FEATURES})
    ranked.update({name: ids(name, 3) for name in spec.candidate_features})
    return [(SERVING_DEFAULT, rows), (RANK, ranked)]


def export_saved_model(
    model: MuseModel,
    vocabularies: dict[str, np.ndarray],
    export_base: str,
    model_name: str,
    version: int | None = None,
    *,
    max_history_length: int = limits.MAX_HISTORY_LENGTH,
    max_candidates: int = limits.MAX_CANDIDATES,
    max_history_values: int = limits.MAX_HISTORY_VALUES,
    source: Mapping[str, str] | None = None,
    allow_other_runs: bool = False,
) -> str:
    """Writes ``model`` as ``<export_base>/<model_name>/<version>/`` for TF Serving.

    Args:
        model: a MuseModel with its weights and multimodal table loaded.
        vocabularies: raw int64 IDs per vocabulary name (``dataset_dir.load_vocabularies``), in index
            order; each must match ``model.config.vocab_sizes``.
        export_base: the directory TF Serving's ``base_path`` points above.
        model_name: the served model's name.
        version: the version directory; None = one more than the newest existing version.
        max_history_length: the longest history a request may carry (W or L).
        max_candidates: the most candidates (C) one ``rank`` request may score.
        max_history_values: the largest rows x width (B x W) of a ``serving_default`` request.
        source: the training run it comes from (``RunDir.identity``), recorded in the export; the
            versions already in the model directory must come from it too (``check_one_run``)
            unless ``allow_other_runs``. None: not recorded, not checked.

    Returns:
        The version directory. It appears atomically (renamed into place once complete), so a
        TF Serving instance polling ``export_base`` never loads a half-written version.

    Raises:
        OtherRunError: as ``check_one_run``.
    """
    for name, value in (
        ("max_history_length", max_history_length),
        ("max_candidates", max_candidates),
        ("max_history_values", max_history_values),
    ):
        if value < 1:
            raise ValueError(f"Invalid value for `{name}`: {value}.")
    _check_vocabularies(model.config, vocabularies)
    model_dir = os.path.join(export_base, model_name)
    if source is not None and not allow_other_runs:
        check_one_run(model_dir, source)
    version = _next_version(model_dir) if version is None else version
    final_dir = os.path.join(model_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} already exists; choose another version.")
    with cli.writing(model_dir):  # e.g. a file in the way
        os.makedirs(model_dir, exist_ok=True)
    model(runs.dummy_inputs(model.config.features), training=False)  # creates any weight not built yet

    with cli.writing(final_dir):  # a full disk: one line naming the export
        staging = tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir)
        try:
            vocab_files = {}
            with tempfile.TemporaryDirectory() as vocab_dir:
                for name in model.config.features.vocabularies:
                    vocab_files[name] = os.path.join(vocab_dir, f"vocab_{name}.txt")
                    vocabulary.write_table_file(vocab_files[name], vocabularies[name])
                module = ServingModule(
                    model, vocab_files, max_history_length, max_candidates, max_history_values
                )
                export_dir = os.path.join(staging, "saved_model")
                with _no_staging_path_logged():
                    tf.saved_model.save(
                        module,
                        export_dir,
                        signatures={SERVING_DEFAULT: module.serving_default, RANK: module.rank},
                    )
            warmup.write_warmup_requests(
                export_dir, model_name, warmup_requests(vocabularies, model.config.features)
            )
            _write_versions(export_dir)
            _write_feature_spec(export_dir, model.config)
            if source is not None:
                with open(os.path.join(export_dir, SOURCE_FILE), "w") as f:
                    json.dump(dict(source), f, indent=1)
            os.rename(export_dir, final_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final_dir
