"""Validation during training: held-out users, per-epoch exact AUC/GAUC, early stopping on them.

``train.validation_fraction`` holds out the training users whose salted SplitMix64 hash
(``muse_tf.contract.hashing.mix64``) falls in the lowest ``fraction`` of the 64-bit range. The choice depends
only on the raw user ID, so it is the same on every run, machine, worker and shard layout; the
salt keeps it independent of the hash partitioning the conversion uses. Whole users are held out,
as GAUC groups by user and a user's samples share one history.

After every epoch ``Validation`` scores the held-out samples (or ``train.validation_split``) and
adds ``val_loss``, ``val_auc`` and ``val_gauc`` (exact, ``muse_tf.jobs.metrics``) to the epoch's logs,
which TensorBoard (its ``validation`` run) and ``history.csv`` then record. ``BestEpoch`` stops
after ``train.early_stopping_patience`` epochs without improvement and loads the best epoch's
checkpoint when training ends, so the saved, evaluated and exported weights are the best ones.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from muse_tf.config import ConfigError, TrainConfig
from muse_tf.contract import dataset_dir, hashing
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.data import iterator_release, reader
from muse_tf.jobs import metrics, runs, scoring

HOLDOUT_SALT = np.uint64(0x6A09E667F3BCC909)  # XORed into the user ID before mixing
_MANTISSA_SHIFT = np.uint64(11)  # keep the top 53 bits: exactly representable as a float64


def held_out(user_keys: tf.Tensor, fraction: float) -> tf.Tensor:
    """(N,) bool: whether each raw int64 user ID is a validation user.

    u = (top 53 bits of mix64(key XOR HOLDOUT_SALT)) / 2^53 is uniform on [0, 1); a user is held
    out when u < ``fraction``. TensorFlow ops only, so the input pipeline runs on any tf.data worker.
    """
    keys = tf.bitwise.bitwise_xor(tf.bitcast(tf.cast(user_keys, tf.int64), tf.uint64),
                                  tf.constant(HOLDOUT_SALT, tf.uint64))
    top = tf.bitwise.right_shift(hashing.mix64_graph(keys), tf.constant(_MANTISSA_SHIFT, tf.uint64))
    return tf.cast(top, tf.float64) / 2.0**53 < fraction


def user_filter(fraction: float, keep_held_out: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """``reader.make_dataset``'s ``users`` predicate: keeps the held-out users, or all the others."""
    return lambda keys: tf.equal(held_out(keys, fraction), keep_held_out)


def training_users(train: TrainConfig) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """The training stream's ``users`` predicate: every user but the held-out ones (None: all)."""
    return user_filter(train.validation_fraction, False) if train.validation_fraction else None


def validation_files(data_dir: str, train: TrainConfig) -> list[str]:
    """The shards validation reads: ``validation_split``'s, or the training split's."""
    return dataset_dir.split_files(data_dir, train.validation_split or "train")


def validation_dataset(data_dir: str, train: TrainConfig) -> tf.data.Dataset:
    """The held-out samples at ``eval_batch_size``, in a fixed order: the sums behind the metrics
    are then bitwise the same on every worker, which must all take the same stopping decision."""
    users = user_filter(train.validation_fraction, True) if train.validation_fraction else None
    return reader.make_dataset(
        validation_files(data_dir, train), train.eval_batch_size,
        history_length=train.history_length, deterministic=True, users=users,
        feature_spec=dataset_dir.load_feature_spec(data_dir),
    )


def check_samples(data_dir: str, train: TrainConfig) -> None:
    """Refuses, before a run starts, validation settings that leave training or validation
    without a sample: the repeated training stream would wait forever for one, and validation
    would fail only after the first epoch. Reads each stream to its first sample (the whole split
    only when there is none).

    Raises:
        ConfigError: naming the setting.
    """
    if not train.validates:
        return
    try:
        files = validation_files(data_dir, train)
    except ValueError as err:
        raise ConfigError(f"`train.validation_split`: {err}") from None
    spec = dataset_dir.load_feature_spec(data_dir)
    if train.validation_split:
        if not _has_sample(files, None, spec):
            raise ConfigError(f"`train.validation_split`: the split {train.validation_split!r} "
                              f"of {data_dir} holds no sample.")
        return
    setting = f"`train.validation_fraction` {train.validation_fraction}"
    if not _has_sample(files, training_users(train), spec):
        raise ConfigError(f"{setting} holds out every user of {data_dir}'s training split, "
                          "leaving none to train on; lower it.")
    if not _has_sample(files, user_filter(train.validation_fraction, True), spec):
        raise ConfigError(f"{setting} holds out no user of {data_dir}'s training split, "
                          "leaving validation without a sample; raise it.")


def _has_sample(
    files: list[str], users: Callable[[tf.Tensor], tf.Tensor] | None, spec: FeatureSpec
) -> bool:
    batches = iterator_release.elements(
        reader.make_dataset(files, 1, history_length=1, users=users, feature_spec=spec)
    )
    try:
        with dataset_dir.damaged_shards_named(files):
            return next(batches, None) is not None
    finally:
        batches.close()


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of 0/1 ``labels`` and ``logits`` (the training loss)."""
    logits = logits.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


class Validation(tf_keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_auc`` and ``val_gauc`` of the held-out data to every epoch's logs.

    Place it before the callbacks that record the logs (TensorBoard, CSVLogger) or read them
    (``BestEpoch``).
    """

    def __init__(self, data_dir: str, train: TrainConfig) -> None:
        super().__init__()
        self.files = validation_files(data_dir, train)
        self.dataset = validation_dataset(data_dir, train)
        self.describe = (f"split {train.validation_split!r}" if train.validation_split else
                         f"the {train.validation_fraction} of training users held out")

    def set_model(self, model: tf_keras.Model) -> None:
        super().set_model(model)
        self.score = scoring.model_scorer(model)  # traced at the first epoch's end, not at each

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        started = time.time()
        with dataset_dir.damaged_shards_named(self.files):
            scored = scoring.concatenate(scoring.scored_batches(self.score, self.dataset))
        if not scored.get("labels", np.zeros(0)).size:
            raise ValueError(f"Validation on {self.describe} found no sample; raise "
                             "`train.validation_fraction` or choose another split.")
        summary = metrics.summarize(scored)
        print(f"Validation after epoch {epoch + 1}: AUC {summary['auc']:.4f} GAUC "
              f"{summary['gauc']:.4f} over {summary['examples']} samples of {self.describe} "
              f"({time.time() - started:.1f} s)")
        if logs is not None:
            logs["val_loss"] = log_loss(scored["labels"], scored["logits"])
            logs["val_auc"] = summary["auc"]
            logs["val_gauc"] = summary["gauc"]


def recorded_scores(history_path: str, monitor: str) -> dict[int, float]:
    """``monitor`` of every epoch in a ``history.csv`` (the last row of a repeated epoch wins:
    a resumed run redoes the epoch it was killed in)."""
    if not os.path.exists(history_path):
        return {}
    with open(history_path, newline="") as f:
        return {int(row["epoch"]): float(row[monitor]) for row in csv.DictReader(f)
                if row.get(monitor) not in (None, "", "NA")}


class BestEpoch(tf_keras.callbacks.Callback):
    """Early stopping on the validation ``monitor`` (higher is better), resumable.

    Stops once ``patience`` epochs have passed since the best one, and when training ends loads
    that epoch's checkpoint (``RunDir.checkpoints``) unless the last epoch is the best. The scores
    of epochs before a restart are read back from ``history.csv``, so a run resumed by
    BackupAndRestore keeps counting; a run that had already stopped trains at most one more step.
    """

    def __init__(self, monitor: str, patience: int, run_dir: runs.RunDir) -> None:
        super().__init__()
        self.monitor = f"val_{monitor}"
        self.patience = patience
        self.run_dir = run_dir
        self.scores: dict[int, float] = {}

    @property
    def best_epoch(self) -> int | None:
        """The first epoch with the highest score (NaN scores never win); None before any."""
        valid = {epoch: score for epoch, score in self.scores.items() if not math.isnan(score)}
        return max(sorted(valid), key=lambda epoch: valid[epoch]) if valid else None

    def _patience_spent(self) -> bool:
        best = self.best_epoch
        return best is not None and max(self.scores) - best >= self.patience

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.scores = recorded_scores(self.run_dir.worker().history, self.monitor)
        if self._patience_spent():
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.scores[epoch] = float((logs or {})[self.monitor])
        if self._patience_spent():
            print(f"Early stopping after epoch {epoch + 1}: {self.monitor} has not improved "
                  f"for {self.patience} epoch(s)")
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        best = self.best_epoch
        if best is None or best == max(self.scores):
            return
        print(f"Keeping the weights of epoch {best + 1}, the best by {self.monitor} "
              f"({self.scores[best]:.4f})")
        self.model.load_weights(self.run_dir.checkpoints.format(epoch=best + 1))


def make_callbacks(data_dir: str, train: TrainConfig, run_dir: runs.RunDir) -> list:
    """The validation callbacks the config asks for (none without validation)."""
    if not train.validates:
        return []
    callbacks: list[tf_keras.callbacks.Callback] = [Validation(data_dir, train)]
    if train.early_stopping_patience:
        # Each epoch's weights, for BestEpoch to go back to (no other reader: they are not written
        # otherwise).
        callbacks += [BestEpoch(train.validation_monitor, train.early_stopping_patience, run_dir),
                      tf_keras.callbacks.ModelCheckpoint(run_dir.checkpoints, save_weights_only=True)]
    return callbacks
