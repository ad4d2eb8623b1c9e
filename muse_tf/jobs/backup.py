"""The training backup (``BackupAndRestore``), which records an epoch as done only once it has ended.

Keras's callback backs an epoch up as finished at its last step (or, saving once per epoch, first
among the callbacks at its end): a run killed before the other callbacks ended that epoch
(validation, its checkpoint, its ``history.csv`` row, early stopping's decision) resumed at the
next epoch, and that epoch's validation never happened. Here the last step is not backed up and
the epoch's end is backed up by ``EpochBackup.finished``, the last callback: a run killed before
it resumes within the epoch and ends it again.
"""

from __future__ import annotations

import tf_keras


class EpochBackup(tf_keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (kept when training ends) that leaves an epoch's end to ``finished``,
    which must be the last callback of ``fit``; this one comes first, so that the others see the
    restored state."""

    def __init__(self, backup_dir: str, save_freq: int | str) -> None:
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.finished = _EpochFinished(self)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch + 1 == self.params.get("steps"):  # the epoch's end is ``finished``'s
            self._batches_count = 0
            return
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Nothing yet: the other callbacks have not ended the epoch."""


class _EpochFinished(tf_keras.callbacks.Callback):
    """Backs the epoch up as finished, after every other callback has ended it."""

    def __init__(self, backup: EpochBackup) -> None:
        super().__init__()
        self.backup = backup
        self._chief_worker_only = False  # saving is collective: every worker takes part

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.backup._backup(epoch=epoch)
