"""Validation during training: which users are held out, per-epoch metrics, early stopping, resume."""

import csv
import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf import train
from muse_tf.config import ExperimentConfig, TrainConfig
from muse_tf.contract import dataset_dir, hashing
from muse_tf.data import reader
from muse_tf.jobs import scoring, training, validation
from muse_tf.jobs.backup import EpochBackup
from muse_tf.jobs.runs import RunDir, load_trained_model
from tests import reference, test_train

dataset = test_train.dataset  # the tiny converted dataset (a module-scoped fixture)
HISTORY = test_train.HISTORY
TINY = [*test_train.TINY, "--verbose", "0", "--no-export", "--no-eval"]
FRACTION = 0.3
MASK64 = (1 << 64) - 1


def splitmix64_finaliser(x: int) -> int:
    """SplitMix64's finaliser on Python integers (Steele, Lea & Flood 2014), the reference."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def expected_held_out(user_keys, fraction):
    """Users whose salted hash, as a 53-bit fraction of [0, 1), is below ``fraction``."""
    salt = int(validation.HOLDOUT_SALT)
    return {int(k) for k in user_keys
            if (splitmix64_finaliser((int(k) & MASK64) ^ salt) >> 11) < fraction * 2**53}


def _user_keys(batches):
    return np.concatenate([features["user_key"].numpy() for features, _ in batches])


def test_held_out_users_follow_the_reference_hash():
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.integers(-2**63, 2**63 - 1, 4000, dtype=np.int64),
                           np.arange(1, 4001, dtype=np.int64)])  # hashed and consecutive IDs
    chosen = validation.held_out(tf.constant(keys), FRACTION).numpy()
    assert {int(k) for k in keys[chosen]} == expected_held_out(keys, FRACTION)
    assert abs(chosen.mean() - FRACTION) < 0.03  # a fair share, also of consecutive IDs
    assert not validation.held_out(tf.constant(keys), 0.0).numpy().any()
    # The graph mixer (input pipelines) is the NumPy one (conversion partitioning), bit for bit.
    np.testing.assert_array_equal(hashing.mix64_graph(tf.constant(keys)).numpy(), hashing.mix64(keys))


def test_training_stream_excludes_exactly_the_held_out_users(dataset):
    experiment = ExperimentConfig(train=TrainConfig(
        batch_size=16, history_length=HISTORY, eval_batch_size=64, validation_fraction=FRACTION))
    files = dataset_dir.split_files(dataset, "train")
    every = _user_keys(reader.make_dataset(files, 64, history_length=HISTORY))
    held = expected_held_out(np.unique(every), FRACTION)
    assert 0 < len(held) < len(np.unique(every))
    # Two passes of the (repeated) training stream, exactly as fit reads it.
    stream = training.train_dataset(tf.distribute.get_strategy(), dataset, experiment)
    steps = 2 * math.ceil(len(every) / 16)
    trained = _user_keys(batch for _, batch in zip(range(steps), stream))
    assert set(trained.tolist()) == set(every.tolist()) - held
    validated = _user_keys(validation.validation_dataset(dataset, experiment.train))
    assert set(validated.tolist()) == held
    # No sample lost or duplicated: held-out + trained samples = all samples.
    kept = _user_keys(reader.make_dataset(files, 64, history_length=HISTORY,
                                        users=validation.training_users(experiment.train)))
    assert len(kept) + len(validated) == len(every)


class _Scores(tf_keras.callbacks.Callback):
    """Stands in for ``Validation``: a fixed score per epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["val_gauc"] = self.scores[epoch]


@pytest.mark.parametrize("scores, patience, epochs_run, best", [
    ([0.5, 0.7, 0.6, 0.65, 0.8], 2, 4, 1),  # stops 2 epochs after the best, restores it
    ([0.5, 0.6, 0.7], 1, 3, 2),             # the last epoch is the best: nothing to restore
    ([0.5, float("nan"), 0.4, 0.3], 2, 3, 0),  # NaN never wins
])
def test_best_epoch_stops_and_keeps_the_best_weights(tmp_path, scores, patience, epochs_run, best):
    run_dir = RunDir(str(tmp_path))
    os.makedirs(run_dir.root, exist_ok=True)
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.5), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(32, 2)), np.ones((32, 1))
    callbacks = [_Scores(scores), validation.BestEpoch("gauc", patience, run_dir),
                 tf_keras.callbacks.ModelCheckpoint(run_dir.checkpoints, save_weights_only=True),
                 tf_keras.callbacks.CSVLogger(run_dir.history)]
    history = model.fit(x, y, epochs=len(scores), verbose=0, callbacks=callbacks)
    assert len(history.epoch) == epochs_run
    kernel = model.get_weights()[0]
    checkpoint = tf.train.load_checkpoint(run_dir.checkpoints.format(epoch=best + 1))
    saved = [checkpoint.get_tensor(n) for n in checkpoint.get_variable_to_shape_map()
             if "kernel" in n and "OPTIMIZER" not in n]
    np.testing.assert_array_equal(kernel, saved[0])
    # A restarted run reads the recorded epochs back and does not forget its best.
    again = validation.BestEpoch("gauc", patience, run_dir)
    again.set_model(model)
    model.stop_training = False
    again.on_train_begin()
    assert again.best_epoch == best
    assert model.stop_training == (epochs_run < len(scores))


def _history(model_dir):
    with open(RunDir(str(model_dir)).history) as f:
        return list(csv.DictReader(f))


def _score_held_out(model, data_dir, experiment):
    """The held-out samples scored by ``model``, re-selected with the reference hash."""
    files = dataset_dir.split_files(data_dir, "train")
    scored = scoring.predict_dataset(
        model, reader.make_dataset(files, 64, history_length=experiment.train.history_length))
    held = np.isin(scored["groups"], list(expected_held_out(np.unique(scored["groups"]), FRACTION)))
    return {name: column[held] for name, column in scored.items()}


def test_per_epoch_validation_metrics_and_early_stopping_end_to_end(dataset, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    args = ["--data", dataset, "--model-dir", model_dir, *TINY, "--set", "train.epochs=4",
            "--set", f"train.validation_fraction={FRACTION}", "--set", "train.steps_per_epoch=6",
            "--set", "train.backup_every_steps=5", "--set", "train.early_stopping_patience=1",
            "--set", "train.embedding_learning_rate=0.05", "--set", "train.dense_learning_rate=0.02"]
    # Killed (here: failing) at the end of the second epoch (step 12), after a backup at step 10 ...
    calls = {"n": 0}
    original = validation.Validation.on_epoch_end

    def failing(self, epoch, logs=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return original(self, epoch, logs)

    monkeypatch.setattr(validation.Validation, "on_epoch_end", failing)
    with pytest.raises(RuntimeError, match="killed"):
        train.main(args)
    monkeypatch.undo()
    assert RunDir(model_dir).has_backup() and len(_history(model_dir)) == 1
    # ... the restarted run resumes mid-epoch and keeps counting epochs for early stopping.
    result = train.main(args)
    assert 0 < result["resumed_from_step"] < 12
    rows = {int(row["epoch"]): row for row in _history(model_dir)}
    gauc = [float(rows[e]["val_gauc"]) for e in sorted(rows)]
    best = int(np.argmax(gauc))
    assert len(gauc) == min(4, best + 1 + 1), gauc  # stops one epoch after the best
    # Each epoch's figures are those of that epoch's weights on the held-out samples.
    model, experiment = load_trained_model(model_dir)
    for epoch, row in rows.items():
        model.load_weights(RunDir(model_dir).checkpoints.format(epoch=epoch + 1))
        scored = _score_held_out(model, dataset, experiment)
        labels, logits = scored["labels"], scored["logits"].astype(np.float64)
        assert float(row["val_gauc"]) == pytest.approx(
            reference.group_auc_bruteforce(labels, logits, scored["groups"]), abs=1e-6)
        assert float(row["val_auc"]) == pytest.approx(
            reference.group_auc_bruteforce(labels, logits, np.zeros_like(labels)), abs=1e-6)
        bce = np.mean(-labels * np.log(1 / (1 + np.exp(-logits)))
                      - (1 - labels) * np.log(1 - 1 / (1 + np.exp(-logits))))
        assert float(row["val_loss"]) == pytest.approx(bce, rel=1e-5)
    # The final (evaluated, exported) weights are the best epoch's.
    final, _ = load_trained_model(model_dir)
    best_model, _ = load_trained_model(model_dir)
    best_model.load_weights(RunDir(model_dir).checkpoints.format(epoch=best + 1))
    for a, b in zip(final.weights, best_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # TensorBoard's validation run holds one GAUC per epoch.
    events = glob.glob(os.path.join(RunDir(model_dir).logs, "validation", "events.*"))
    tags = [value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value]
    assert tags.count("epoch_gauc") == len(rows)


def test_a_run_killed_after_an_epochs_last_step_validates_that_epoch_on_resume(
    dataset, tmp_path, monkeypatch
):
    model_dir = str(tmp_path / "run")
    args = ["--data", dataset, "--model-dir", model_dir, *TINY, "--set", "train.epochs=2",
            "--set", f"train.validation_fraction={FRACTION}", "--set", "train.steps_per_epoch=4",
            "--set", "train.backup_every_steps=2", "--set", "train.early_stopping_patience=1"]

    def killed(self, epoch, logs=None):  # after the first epoch's last step, a backup step
        raise RuntimeError("killed")

    monkeypatch.setattr(validation.Validation, "on_epoch_end", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train.main(args)
    monkeypatch.undo()
    result = train.main(args)
    assert result["resumed_from_step"] == 2  # the backup within the epoch, not its last step
    rows = _history(model_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert all(float(row["val_gauc"]) > 0 for row in rows), rows


class _Ended(tf_keras.callbacks.Callback):
    """Records the epochs whose end it saw; fails at the end of ``fail_at``."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.fail_at, self.ended = fail_at, []

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.fail_at:
            raise RuntimeError("killed")
        self.ended.append(epoch)


@pytest.mark.parametrize("interval", [{"epoch_level": True}, {"every_steps": 2},
                                      {"every_seconds": 1e-9}])
def test_an_epoch_is_backed_up_as_done_only_after_every_callback_ended_it(tmp_path, interval):
    """Killed at its end (in validation, say) after its last step, the epoch runs its end again on
    resume; Keras's BackupAndRestore would resume at the next epoch."""
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(32, 2)), np.ones((32, 1))

    def fit(ended):
        backup = EpochBackup(str(tmp_path / "backup"), **interval)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                  callbacks=[backup, ended, backup.finished])

    with pytest.raises(RuntimeError, match="killed"):
        fit(_Ended(fail_at=0))
    resumed = _Ended()
    fit(resumed)
    assert resumed.ended == [0, 1]


@pytest.mark.parametrize("every_seconds, every_steps, expected", [
    # One second per step: due at 3 s (step 3 of 4); an epoch's last step is left to its end, and
    # the last epoch's end to the final weights.
    (2.5, None, [(0, 2), (0, "end"), (1, 2)]),
    (None, 2, [(0, 1), (0, "end"), (1, 1)]),
    (2.5, 2, [(0, 1), (0, "end"), (1, 1)]),  # whichever comes first
    (None, None, [(0, "end")]),
])
def test_mid_epoch_backups_come_on_the_time_or_step_interval(
    tmp_path, every_seconds, every_steps, expected
):
    clock = {"now": 0.0}

    class Tick(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock["now"] += 1.0

    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="mse")
    x, y = np.random.default_rng(0).normal(size=(32, 2)), np.ones((32, 1))
    backed_up = []

    class Recording(EpochBackup):
        def _now(self):
            return clock["now"]

        def _backup(self, epoch, batch=None):
            backed_up.append((epoch, "end" if batch is None else batch))
            super()._backup(epoch, batch or 0)

    backup = Recording(str(tmp_path / "backup"), every_seconds, every_steps)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[Tick(), backup, backup.finished])
    assert backed_up == expected


def test_validation_needs_a_sample_and_a_valid_config(dataset, tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience` needs validation"):
        TrainConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(validation_fraction=0.1, validation_split="test")
    with pytest.raises(ValueError, match=r"validation_fraction` must be in \[0, 1\)"):
        TrainConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="no split 'valid'"):
        validation.Validation(dataset, TrainConfig(validation_split="valid"))
