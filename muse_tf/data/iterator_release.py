"""Deletes tf.data iterators on a background thread, because deleting one can block for a minute.

Why: the iterator of an autotuned pipeline (the default) runs a model thread that sleeps between
optimisations, for a period that doubles up to 60 s (TensorFlow's ``Model::OptimizeLoop``).
Deleting the iterator cancels that thread, but the wake-up can be lost:
``CancellationManager::StartCancel`` runs the callback that wakes the thread before it records
itself as cancelled, so the thread may see no cancellation and sleep out the rest of its period
while the deleting thread waits for it. Seen in ``fit`` (its iterator dies as it returns), in
evaluation and in validation; measured, with and without autotuning, by
``benchmarks/iterator_release.py``. The wait releases the GIL, so another thread can take it while
the caller goes on; the threads are not daemons, so the interpreter waits for them at exit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import tensorflow as tf

THREAD_NAME = "muse-tf-iterator-release"


def release_in_background(held: list) -> threading.Thread:
    """Empties ``held`` on a new thread; when it holds the only references to iterators, they are
    deleted there."""
    thread = threading.Thread(target=held.clear, name=THREAD_NAME)
    thread.start()
    return thread


def elements(dataset: Iterable) -> Iterator[Any]:
    """The elements of ``dataset``; once iteration stops, its iterator is deleted in the
    background."""
    held = [iter(dataset)]
    try:
        yield from held[0]
    finally:
        release_in_background(held)


class KeptIterators(tf.distribute.DistributedDataset):
    """A distributed dataset for ``Model.fit`` that keeps the iterators made from it, so that they
    are not deleted when ``fit`` returns but by ``release``, in the background. It wraps a
    distributed dataset, or a plain one (the default strategy's), which ``fit`` then takes as
    already distributed."""

    def __init__(self, dataset: tf.data.Dataset | tf.distribute.DistributedDataset):
        self._dataset = dataset
        self._held: list = []

    def __iter__(self) -> tf.distribute.DistributedIterator:
        iterator = iter(self._dataset)
        self._held.append(iterator)
        return iterator

    @property
    def element_spec(self) -> Any:
        return self._dataset.element_spec

    def release(self) -> threading.Thread:
        """Deletes the iterators made so far on a background thread (returned)."""
        held, self._held = self._held, []
        return release_in_background(held)
