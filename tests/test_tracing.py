"""AutoGraph leaves tf-keras unconverted (muse_tf.models.tracing) and the traced step is unchanged."""

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.python.autograph.impl import conversion

from muse_tf.data import reader
from muse_tf.jobs import seeding
from muse_tf.layers import SimTier
from muse_tf.models import MuseModel, tracing
from muse_tf.ops import item_search
from tests.test_model import make_batch, make_model


def test_keras_internals_and_the_model_code_are_left_unconverted_and_the_input_side_is_not():
    assert tracing.keep_keras_unconverted()  # the installed TensorFlow has the rules table
    assert tracing.keep_keras_unconverted()  # idempotent
    assert conversion.is_allowlisted(tf_keras.layers.Layer.__call__)
    assert conversion.is_allowlisted(tf_keras.Model.train_step)
    assert conversion.is_allowlisted(tf_keras.metrics.AUC.update_state)
    assert conversion.is_allowlisted(MuseModel.call)
    assert conversion.is_allowlisted(MuseModel.train_step)
    assert conversion.is_allowlisted(SimTier.call)
    assert conversion.is_allowlisted(item_search.cosine_search_items)
    assert not conversion.is_allowlisted(reader.make_dataset)


def test_the_train_step_is_traced_once():
    """The optimizers' slots exist before the first trace (``MuseModel.make_train_function``), so
    ``tf.function`` does not trace the step a second time to leave variable creation out."""
    rng = np.random.default_rng(3)
    x = make_batch(rng, batch=8, length=12)
    y = (rng.random(8) < 0.5).astype(np.float32)
    for embedding_optimizer in ("sparse_adam", None):
        model, _ = make_model("muse")
        model(x)  # built, as the training job builds it (muse_tf.jobs.runs.build_model)
        model.compile(tf_keras.optimizers.Adam(0.01), embedding_optimizer=embedding_optimizer)
        model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=2, verbose=0)
        assert model.train_function.experimental_get_tracing_count() == 1


def _trained_weights(run_eagerly):
    seeding.set_seed(0)
    rng = np.random.default_rng(3)
    x = make_batch(rng, batch=32, length=12)
    y = (rng.random(32) < 0.5).astype(np.float32)
    model, _ = make_model("muse")
    model.compile(tf_keras.optimizers.Adam(0.01),
                  embedding_optimizer=tf_keras.optimizers.Adam(0.01), run_eagerly=run_eagerly)
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=3,
                        verbose=0)
    return history.history["loss"], [w.numpy() for w in model.weights]


def test_traced_training_matches_eager_execution():
    """Eager execution runs no AutoGraph at all: the reference for the traced train step."""
    graph_loss, graph_weights = _trained_weights(run_eagerly=False)
    eager_loss, eager_weights = _trained_weights(run_eagerly=True)
    np.testing.assert_allclose(graph_loss, eager_loss, rtol=1e-4)
    assert len(graph_weights) == len(eager_weights)
    for graph, eager in zip(graph_weights, eager_weights):
        np.testing.assert_allclose(graph, eager, rtol=1e-4, atol=1e-5)
