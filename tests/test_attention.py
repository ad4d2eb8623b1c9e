"""SA-TA, the linear and DIN target attentions and Dice against NumPy re-implementations."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.layers import Dice, LinearTargetAttention, SemanticAwareTargetAttention, TargetAttention
from tests import reference


def _dense_weights(layer):
    return [w.numpy() for w in layer.weights]


@pytest.mark.parametrize("heads,semantic", [(1, True), (2, True), (1, False), (4, False)])
def test_sata_matches_reference(heads, semantic):
    rng = np.random.default_rng(heads)
    query = rng.normal(size=(5, 6)).astype(np.float32)
    keys = rng.normal(size=(5, 7, 6)).astype(np.float32)
    sims = rng.uniform(-1, 1, size=(5, 7)).astype(np.float32)
    mask = rng.random((5, 7)) > 0.3
    mask[0] = False
    layer = SemanticAwareTargetAttention(units=8, heads=heads, semantic=semantic)
    layer(query, keys, mask, sims)
    if semantic:  # move away from the initial values so each term matters
        layer.gates.assign([0.7, 1.3, -0.4])
        layer.tau.assign(0.2)
    out = layer(query, keys, mask, sims).numpy()
    wq, bq = _dense_weights(layer.query_dense)
    wk, bk = _dense_weights(layer.key_dense)
    wv, bv = _dense_weights(layer.value_dense)
    extra = dict(gates=layer.gates.numpy(), tau=layer.tau.numpy()) if semantic else {}
    expected = reference.sata(query, keys, mask, sims, wq, bq, wk, bk, wv, bv, heads, **extra)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(out[0], 0.0)  # no valid behaviour: zeros, not NaN


def test_sata_similarity_changes_the_output_only_when_semantic():
    rng = np.random.default_rng(9)
    query, keys = rng.normal(size=(2, 4)), rng.normal(size=(2, 5, 4))
    mask = np.ones((2, 5), bool)
    for semantic, should_change in ((True, True), (False, False)):
        layer = SemanticAwareTargetAttention(units=4, semantic=semantic)
        a = layer(query, keys, mask, np.zeros((2, 5))).numpy()
        b = layer(query, keys, mask, rng.uniform(-1, 1, (2, 5))).numpy()
        assert np.allclose(a, b) != should_change


def test_sata_requires_similarities_when_semantic():
    layer = SemanticAwareTargetAttention(units=4)
    with pytest.raises(ValueError, match="similarities"):
        layer(np.ones((1, 4)), np.ones((1, 2, 4)), np.ones((1, 2), bool))


@pytest.mark.parametrize("units", [None, 5])
def test_linear_target_attention_matches_the_official_definition(units):
    rng = np.random.default_rng(11)
    query = rng.normal(size=(4, 6)).astype(np.float32)
    keys = rng.normal(size=(4, 7, 6)).astype(np.float32)
    mask = rng.random((4, 7)) > 0.3
    mask[0] = False
    layer = LinearTargetAttention(units)
    layer(query, keys, mask)
    for weight in layer.weights:  # biases away from their 0.1 start, different per channel
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    out = layer(query, keys, mask).numpy()
    expected = reference.linear_target_attention(
        query, keys, mask, *_dense_weights(layer.query_dense), *_dense_weights(layer.key_dense))
    assert out.shape == (4, units or 6)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[0], 0.0)  # no valid behaviour: zeros, not NaN


def test_linear_target_attention_gradients_match_the_directly_projected_keys():
    """The layer never projects the keys one by one; its gradients are those of the direct form."""
    rng = np.random.default_rng(12)
    query = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))
    keys = tf.constant(rng.normal(size=(3, 5, 4)).astype(np.float32))
    mask = tf.constant(rng.random((3, 5)) > 0.3) | tf.one_hot([1, 2, 4], 5, on_value=True,
                                                                off_value=False)
    layer = LinearTargetAttention()
    layer(query, keys, mask)

    def direct():
        q = layer.query_dense(query)
        k = layer.key_dense(keys)
        scores = tf.where(mask, tf.einsum("bkd,bd->bk", k, q), -1e9)
        weights = tf.nn.softmax(scores) * tf.cast(mask, tf.float32)
        return tf.einsum("bk,bkd->bd", weights, k)

    results = []
    for run in (lambda: layer(query, keys, mask), direct):
        with tf.GradientTape() as tape:
            tape.watch([query, keys])
            loss = tf.reduce_sum(run() * tf.range(1.0, 5.0))
        results.append(tape.gradient(loss, [query, keys, *layer.trainable_variables]))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_target_attention_matches_reference():
    rng = np.random.default_rng(2)
    query = rng.normal(size=(4, 3)).astype(np.float32)
    keys = rng.normal(size=(4, 6, 3)).astype(np.float32)
    mask = rng.random((4, 6)) > 0.3
    layer = TargetAttention([5], activation="dice")
    out = layer(query, keys, mask, training=False).numpy()
    (w1, b1), dice, (w2, b2) = (
        _dense_weights(layer.scorer.dense_layers[0]),
        layer.scorer.activations[0],
        _dense_weights(layer.scorer.output_layer),
    )
    q = np.broadcast_to(query[:, None], keys.shape)
    hidden = np.concatenate([q, keys, q - keys, q * keys], -1) @ w1 + b1
    bn = dice.batch_norm
    hidden = reference.dice(hidden, dice.alpha.numpy(), bn.moving_mean.numpy(),
                            bn.moving_variance.numpy(), bn.epsilon)
    scores = (hidden @ w2 + b2)[..., 0] * mask
    np.testing.assert_allclose(out, np.einsum("bk,bkd->bd", scores, keys), atol=1e-5)


def _target_attention_by_concatenation(layer, query, keys, mask):
    """DIN's scorer run on the (B, K, 4D) input [q, k, q - k, q * k] itself, Dice in training
    mode (batch statistics), written out in TensorFlow ops: the reference for values and
    gradients."""
    q = tf.broadcast_to(query[:, None], tf.shape(keys))
    x = tf.concat([q, keys, q - keys, q * keys], -1)
    mlp = layer.scorer
    for dense, dice in zip(mlp.dense_layers, mlp.activations):
        x = tf.tensordot(x, dense.kernel, 1) + dense.bias
        mean, variance = tf.nn.moments(x, axes=[0, 1])
        p = tf.sigmoid((x - mean) / tf.sqrt(variance + dice.epsilon))
        x = p * x + (1.0 - p) * dice.alpha * x
    scores = tf.tensordot(x, mlp.output_layer.kernel, 1)[..., 0] + mlp.output_layer.bias
    return tf.reduce_sum(tf.where(mask, scores, 0.0)[..., None] * keys, axis=1)


@pytest.mark.parametrize("hidden_units", [[5, 4], []])
def test_target_attention_values_and_gradients_match_the_concatenated_scorer(hidden_units):
    rng = np.random.default_rng(4)
    query = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
    keys = tf.constant(rng.normal(size=(4, 6, 3)).astype(np.float32))
    mask = tf.constant(rng.random((4, 6)) > 0.3)
    layer = TargetAttention(hidden_units, activation="dice")
    layer(query, keys, mask, training=True)
    for dice in layer.scorer.activations:  # away from 0, so both Dice branches count
        dice.alpha.assign(rng.uniform(-1, 1, dice.alpha.shape).astype(np.float32))
    results = []
    for run in (lambda: layer(query, keys, mask, training=True),
                lambda: _target_attention_by_concatenation(layer, query, keys, mask)):
        with tf.GradientTape() as tape:
            tape.watch([query, keys])
            out = run()
            loss = tf.reduce_sum(out * tf.range(1.0, 4.0))
        results.append([out, *tape.gradient(loss, [query, keys, *layer.trainable_variables])])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_target_attention_never_builds_the_concatenated_scorer_input():
    """The scorer's first layer is applied block by block: no (B, K, 4D) tensor in the graph."""
    layer = TargetAttention([5])
    query, keys, mask = tf.ones([4, 3]), tf.ones([4, 6, 3]), tf.ones([4, 6], bool)
    layer(query, keys, mask)
    graph = tf.function(layer.call).get_concrete_function(query, keys, mask).graph
    shapes = [output.shape.as_list() for op in graph.get_operations() for output in op.outputs]
    assert [4, 6, 12] not in shapes
    assert [4, 6, 6] in shapes  # [k, q * k]: the test does see the block inputs


def test_dice_training_uses_batch_statistics():
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(64, 5)).astype(np.float32)
    layer = Dice()
    layer.build(x.shape)
    layer.alpha.assign(rng.uniform(-1, 1, 5).astype(np.float32))
    out = layer(x, training=True).numpy()
    expected = reference.dice(x, layer.alpha.numpy(), x.mean(0), x.var(0), layer.epsilon)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 5), (16, 4, 5), (1, 5)])
def test_dice_training_updates_the_moving_averages_with_the_biased_batch_variance(shape):
    rng = np.random.default_rng(5)
    x = rng.normal(1e-3, 1e-3, size=shape).astype(np.float32)  # epsilon (1e-8) counts: 1% of it
    layer = Dice(momentum=0.75)
    layer.build(x.shape)
    layer.alpha.assign(rng.uniform(-1, 1, 5).astype(np.float32))
    out = layer(x, training=True).numpy()
    rows = x.reshape(-1, 5).astype(np.float64)
    mean, variance = rows.mean(0), rows.var(0)
    np.testing.assert_allclose(
        out, reference.dice(x, layer.alpha.numpy(), mean, variance, layer.epsilon), rtol=1e-4,
        atol=1e-5)
    bn = layer.batch_norm
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.25 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.75 + 0.25 * variance, rtol=1e-5)


def test_dice_training_normalises_in_one_fused_kernel():
    layer = Dice()
    layer.build([8, 3, 4])
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec([8, 3, 4])).graph
    types = {op.type for op in graph.get_operations()}
    assert "FusedBatchNormV3" in types and "Mean" not in types  # no separate moments


def test_layers_round_trip_config():
    for layer in (
        SemanticAwareTargetAttention(units=6, heads=3, semantic=False, tau_init=0.5),
        LinearTargetAttention(units=5),
        TargetAttention([7, 3], activation="sigmoid", use_softmax=True),
        Dice(epsilon=1e-6, momentum=0.5),
    ):
        clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="units"):
        SemanticAwareTargetAttention(units=6, heads=4)
    with pytest.raises(ValueError, match="units"):
        LinearTargetAttention(units=0)
    assert tf.reduce_all(tf.math.is_finite(TargetAttention([2], use_softmax=True)(
        np.ones((1, 2)), np.ones((1, 3, 2)), np.zeros((1, 3), bool))))
