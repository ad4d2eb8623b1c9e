"""The training backup (``BackupAndRestore``): on a time interval (or a step interval), written in
the background where TensorFlow can, and recording an epoch as done only once it has ended.

Keras's callback backs an epoch up as finished at its last step (or, saving once per epoch, first
among the callbacks at its end): a run killed before the other callbacks ended that epoch
(validation, its checkpoint, its ``history.csv`` row, early stopping's decision) resumed at the
next epoch, and that epoch's validation never happened. Here the last step is not backed up and
the epoch's end is backed up by ``EpochBackup.finished``, the last callback: a run killed before
it resumes within the epoch and ends it again.

Mid-epoch backups come every ``every_seconds`` (and/or ``every_steps``): a fixed step interval
backs a large model up more often than its training is worth (each backup writes every table and
its optimizer moments). A single worker writes them asynchronously
(``tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)``): training goes on
while a copy of the state is written, and the backup in use stays the previous one until the new
one is complete.
"""

from __future__ import annotations

import csv
import functools
import os
import time
import weakref

import tensorflow as tf
import tf_keras


def async_options() -> tf.train.CheckpointOptions | None:
    """Options that write a checkpoint in the background, or None where this TensorFlow has none."""
    try:
        return tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)
    except TypeError:  # a TensorFlow without asynchronous checkpoints: written synchronously
        return None


class EpochBackup(tf_keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (kept when training ends) that backs up mid-epoch every
    ``every_seconds`` or ``every_steps`` (whichever comes first; None = not by that measure, both
    None or ``epoch_level`` = at epochs' ends only) and leaves an epoch's end to ``finished``, which
    must be the last callback of ``fit``; this one comes first, so that the others see the restored
    state."""

    # Checkpoints that may still be writing a backup in the background, of this process's fits.
    _writing: weakref.WeakSet = weakref.WeakSet()

    def __init__(
        self,
        backup_dir: str,
        every_seconds: float | None = None,
        every_steps: int | None = None,
        epoch_level: bool = False,
    ) -> None:
        mid_epoch = not epoch_level and bool(every_seconds or every_steps)
        # An integer save_freq makes the backup record the step within the epoch.
        super().__init__(backup_dir, save_freq=1 if mid_epoch else "epoch", delete_checkpoint=False)
        self.every_seconds, self.every_steps = every_seconds, every_steps
        self.finished = _EpochFinished(self)
        self._last_backup = self._now()

    def on_train_begin(self, logs: dict | None = None) -> None:
        wait_for_backups()  # an earlier fit that failed may still be writing
        super().on_train_begin(logs)
        self._last_backup = self._now()
        manager = self._training_state.write_checkpoint_manager
        options = async_options()
        # One process only: the workers of a cluster delete their temporary copies as save
        # returns, and a parameter-server cluster's tables live on other hosts.
        strategy = self.model.distribute_strategy
        cluster = self._multi_worker() or isinstance(strategy, tf.distribute.ParameterServerStrategy)
        if options is not None and not cluster:
            manager.save = functools.partial(manager.save, options=options)
            self._writing.add(manager.checkpoint)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch + 1 == self.params.get("steps"):  # the epoch's end is ``finished``'s
            self._batches_count = 0
            return
        self._batches_count += 1
        if self._due():
            self._backup(epoch=self._current_epoch, batch=batch)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Waits for a backup still being written: the run may read or delete it next."""
        self._training_state.write_checkpoint_manager.checkpoint.sync()
        super().on_train_end(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Nothing yet: the other callbacks have not ended the epoch."""

    def _backup(self, epoch: int, batch: int = 0) -> None:
        super()._backup(epoch, batch)
        self._batches_count = 0
        self._last_backup = self._now()

    def _due(self) -> bool:
        """Whether a mid-epoch backup is due; the workers of a cluster agree (saving is
        collective), every worker backing up as soon as one is due."""
        due = bool(self.every_steps) and self._batches_count >= self.every_steps
        if self.every_seconds:
            late = self._now() - self._last_backup >= self.every_seconds
            if self._multi_worker():
                strategy = self.model.distribute_strategy
                votes = strategy.run(lambda: tf.constant(1.0 if late else 0.0))
                late = bool(strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0)
            due = due or late
        return due

    def _now(self) -> float:
        return time.monotonic()

    def _multi_worker(self) -> bool:
        return self.model.distribute_strategy.extended._in_multi_worker_mode()


def wait_for_backups() -> None:
    """Waits until the backups this process's fits were writing in the background are complete:
    a fit that raised (a kill, an interrupt) does not wait for its last one."""
    for checkpoint in list(EpochBackup._writing):
        checkpoint.sync()


class _EpochFinished(tf_keras.callbacks.Callback):
    """Backs the epoch up as finished, after every other callback has ended it; not the last
    epoch's end, whose state the final weights hold as ``fit`` returns (a run killed in between
    resumes from the backup before)."""

    def __init__(self, backup: EpochBackup) -> None:
        super().__init__()
        self.backup = backup
        self._chief_worker_only = False  # saving is collective: every worker takes part

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 < self.params["epochs"] and not self.model.stop_training:
            self.backup._backup(epoch=epoch)


class ResumedHistory(tf_keras.callbacks.Callback):
    """Drops the rows of ``history.csv`` (Keras's ``CSVLogger``, appending) of the epochs a resumed
    run trains again, so each epoch has one row: an epoch logged and then killed before its end
    was backed up (the last epoch's end never is; the final weights follow) is trained again from
    the backup before."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self._first_epoch:
            return
        self._first_epoch = False
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if int(row[0]) < epoch]
        if len(kept) < len(rows):
            with open(self.path, "r+", newline="") as f:  # in place: CSVLogger appends to this file
                csv.writer(f).writerows(kept)
                f.truncate()
