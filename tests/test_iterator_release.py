"""Iterators are deleted on the release thread, never on the caller's (whose wait TensorFlow's lost
wake-up can stretch to a minute), and nothing is lost or changed on the way: the elements are the
dataset's, and ``fit`` trains on a kept distributed dataset as on the dataset itself."""

import threading
import weakref

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.data import iterator_release
from muse_tf.jobs import seeding


def _join_release_threads():
    for thread in threading.enumerate():
        if thread.name == iterator_release.THREAD_NAME:
            thread.join(timeout=120)


class _Watched:
    """An iterable that records on which thread each iterator it made was deleted."""

    def __init__(self, dataset):
        self.dataset, self.deleted_on = dataset, []

    def __iter__(self):
        iterator = iter(self.dataset)
        weakref.finalize(iterator, lambda: self.deleted_on.append(threading.current_thread().name))
        return iterator


def _autotuned(n):
    return tf.data.Dataset.range(n).map(lambda i: i * i, num_parallel_calls=tf.data.AUTOTUNE)


def test_elements_are_the_datasets_and_the_iterator_dies_on_the_release_thread():
    watched = _Watched(_autotuned(37))
    values = [int(v) for v in iterator_release.elements(watched)]
    _join_release_threads()
    assert values == [i * i for i in range(37)]
    assert watched.deleted_on == [iterator_release.THREAD_NAME]


def test_an_iteration_stopped_early_releases_its_iterator_too():
    watched = _Watched(_autotuned(1000))
    stream = iterator_release.elements(watched)
    assert [int(next(stream)) for _ in range(3)] == [0, 1, 4]
    stream.close()
    _join_release_threads()
    assert watched.deleted_on == [iterator_release.THREAD_NAME]


class _WatchedKept(iterator_release.KeptIterators):
    deleted_on: list

    def __iter__(self):
        iterator = super().__iter__()
        self.deleted_on = []
        weakref.finalize(iterator, lambda: self.deleted_on.append(threading.current_thread().name))
        return iterator


def _regression(strategy, inputs):
    seeding.set_seed(3)
    with strategy.scope():
        model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(4,))])
        model.compile(tf_keras.optimizers.SGD(0.05), "mse")
    history = model.fit(inputs, epochs=2, steps_per_epoch=3, verbose=0)
    return model, history.history["loss"]


@pytest.mark.parametrize("mirrored", [True, False], ids=["mirrored", "default-strategy"])
def test_fit_trains_on_kept_iterators_as_on_the_dataset_and_leaves_them_to_release(mirrored):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if mirrored else tf.distribute.get_strategy()
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)

    def dataset_fn(context):
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    plain_model, plain_loss = _regression(
        strategy, strategy.distribute_datasets_from_function(dataset_fn)
    )
    kept = _WatchedKept(strategy.distribute_datasets_from_function(dataset_fn))
    kept_model, kept_loss = _regression(strategy, kept)

    assert int(kept_model.optimizer.iterations.numpy()) == 6
    np.testing.assert_allclose(kept_loss, plain_loss, rtol=1e-6)
    for kept_weight, plain_weight in zip(kept_model.get_weights(), plain_model.get_weights()):
        np.testing.assert_allclose(kept_weight, plain_weight, rtol=1e-6)
    assert kept.deleted_on == []  # fit returned without deleting it
    kept.release().join(timeout=120)
    assert kept.deleted_on == [iterator_release.THREAD_NAME]


def test_the_training_job_leaves_a_plain_datasets_iterators_to_the_background(monkeypatch):
    """The default strategy (one device) hands ``fit`` a plain tf.data dataset: its iterators are
    deleted on the background thread too, not as ``fit`` returns."""
    from muse_tf.jobs import training

    made = []

    class Recorded(_WatchedKept):
        def __init__(self, dataset):
            super().__init__(dataset)
            made.append(self)

    monkeypatch.setattr(iterator_release, "KeptIterators", Recorded)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(4,))])
    model.compile(tf_keras.optimizers.SGD(0.05), "mse")
    dataset = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).repeat().batch(8)
    training.keras_fit(model, dataset, epochs=1, steps_per_epoch=3, verbose=0)
    assert len(made) == 1
    for _ in range(1200):  # the release thread runs on its own
        if made[0].deleted_on:
            break
        threading.Event().wait(0.1)
    assert made[0].deleted_on == [iterator_release.THREAD_NAME]
