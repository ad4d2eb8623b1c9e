"""MuseModel: variants, shared histories, gradients, save/load, learning."""

import gc

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.config import VARIANTS, ModelConfig
from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.jobs import seeding
from muse_tf.models import MuseModel
from muse_tf.models.muse import refuse_old_checkpoint

VOCAB = 60
USER_SIDE = (features.USER_ID, *TAOBAO_MM.profile_features, *features.SEQUENCE_FEATURES)


def make_model(variant="muse", seed=0, **overrides):
    cfg = ModelConfig(
        variant=variant,
        vocab_sizes={name: VOCAB for name in TAOBAO_MM.vocabularies},
        embedding_dim=8,
        top_k=6,
        recent_length=5,
        mlp_units=[16, 8],
        din_attention_units=[8],
        **overrides,
    )
    model = MuseModel(cfg)
    rng = np.random.default_rng(seed)
    table = rng.integers(-127, 128, size=(VOCAB, 128)).astype(np.int8)
    table[[0, 1, 7, 8]] = 0  # PAD, OOV and two items without a vector
    model.set_multimodal_table(table)
    return model, table


def make_batch(rng, batch=8, length=20, pad_rows=(0,)):
    x = {name: rng.integers(1, VOCAB, batch) for name in TAOBAO_MM.scalar_features}
    x[features.HISTORY_ITEMS] = rng.integers(1, VOCAB, (batch, length))
    for row in pad_rows:  # left padding
        x[features.HISTORY_ITEMS][row, : length // 2] = features.PAD
    # An item's category is a function of the item, as in real data (PAD stays PAD).
    x[features.HISTORY_CATEGORIES] = np.where(x[features.HISTORY_ITEMS] > 0,
                                              x[features.HISTORY_ITEMS] % 4 + 1, features.PAD)
    return x


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_scores_and_is_serializable(variant):
    model, _ = make_model(variant)
    x = make_batch(np.random.default_rng(1))
    x[features.HISTORY_ITEMS][1] = features.PAD  # an empty history
    logits = model(x).numpy()
    assert logits.shape == (8,) and np.isfinite(logits).all()
    clone = MuseModel.from_config(model.get_config())
    assert clone.config == model.config


@pytest.mark.parametrize("variant", ["muse", "sim_soft", "sim_hard", "din"])
def test_one_history_shared_by_many_candidates_equals_tiled_rows(variant):
    model, _ = make_model(variant)
    rng = np.random.default_rng(2)
    x = make_batch(rng, batch=6, pad_rows=())
    # Candidates from the history: similarity 1 up to rounding, which differs between the shared
    # and the per-row search; SimTier must still put them in the same tier.
    x[features.ITEM_ID][:3] = x[features.HISTORY_ITEMS][0, [2, 9, 19]]
    shared = {k: (v[:1] if k in USER_SIDE else v) for k, v in x.items()}
    tiled = {k: (np.repeat(v[:1], 6, 0) if k in USER_SIDE else v) for k, v in x.items()}
    np.testing.assert_allclose(model(shared).numpy(), model(tiled).numpy(), atol=1e-6)


def _old_history_cases(table):
    """A history, the same with its old part permuted, and with an old item made a perfect match."""
    rng = np.random.default_rng(3)
    x = make_batch(rng, batch=4, length=30, pad_rows=())
    permuted = {k: v.copy() for k, v in x.items()}
    order = rng.permutation(25)  # positions 0..24 are older than the recent 5
    for name in features.SEQUENCE_FEATURES:
        permuted[name][:, :25] = x[name][:, order]
    matched = {k: v.copy() for k, v in x.items()}
    matched[features.HISTORY_ITEMS][:, 3] = x[features.ITEM_ID]
    assert not (table[x[features.ITEM_ID]] == 0).all(-1).any()
    return x, permuted, matched


def test_lifelong_branch_sees_old_behaviours_and_din_does_not():
    muse, table = make_model("muse")
    din, _ = make_model("din")
    x, permuted, matched = _old_history_cases(table)
    np.testing.assert_allclose(muse(x).numpy(), muse(permuted).numpy(), atol=1e-6)
    np.testing.assert_allclose(din(x).numpy(), din(matched).numpy(), atol=1e-6)
    assert np.abs(muse(x).numpy() - muse(matched).numpy()).min() > 1e-7


def _unit_rows(table, idx):
    rows = table[idx].astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-300)


def test_multimodal_vectors_are_the_unit_rows_of_an_int8_or_float_table():
    model, table = make_model()
    idx = np.array([[2, 7], [0, 59]])
    unit, has_vector = model.multimodal_vectors.unit(idx)
    np.testing.assert_allclose(unit.numpy(), _unit_rows(table, idx), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(has_vector.numpy(), [[True, False], [False, True]])
    float_model = MuseModel(dict(model.config.to_dict(), multimodal_dtype="float32"))
    float_model.set_multimodal_table(table / np.float32(127.0))  # a scale does not change a cosine
    np.testing.assert_allclose(float_model.multimodal_vectors.unit(idx)[0].numpy(),
                               _unit_rows(table, idx), rtol=0, atol=1e-7)


def test_gradients_reach_id_embeddings_and_attention_never_the_frozen_table():
    model, _ = make_model("muse")
    x = make_batch(np.random.default_rng(4))
    with tf.GradientTape(persistent=True) as tape:
        loss = tf.reduce_sum(model(x, training=True))
    frozen = model.multimodal.weights  # the stored rows and their inverse norms
    assert len(frozen) == 2
    assert all(v is not f for v in model.trainable_variables for f in frozen)
    assert all(tape.gradient(loss, f) is None for f in frozen)
    named = {v.name: g for v, g in zip(model.trainable_variables,
                                       tape.gradient(loss, model.trainable_variables))}
    for part in ("item_embedding", "category_embedding", "lifelong_attention/query",
                 "lifelong_attention/gates", "lifelong_attention/tau", "lifelong_simtier",
                 "short_term_attention"):
        grads = [g for name, g in named.items() if part in name]
        assert grads, part
        assert any(g is not None and np.abs(tf.convert_to_tensor(g).numpy()).sum() > 0
                   for g in grads), part


def test_save_and_load_give_identical_predictions(tmp_path):
    model, table = make_model("muse")
    x = make_batch(np.random.default_rng(5))
    expected = model(x).numpy()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert isinstance(loaded, MuseModel)
    everything = np.arange(VOCAB)
    np.testing.assert_allclose(loaded.multimodal_vectors.unit(everything)[0].numpy(),
                               _unit_rows(table, everything), rtol=0, atol=1e-7)
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)
    model.save_weights(str(tmp_path / "w"))
    fresh = MuseModel.from_config(model.get_config())
    fresh(x)
    fresh.load_weights(str(tmp_path / "w"))
    np.testing.assert_allclose(fresh(x).numpy(), expected, atol=1e-6)


def test_fit_lowers_the_loss_on_a_learnable_problem():
    seeding.set_seed(0)
    rng = np.random.default_rng(6)
    x = make_batch(rng, batch=1024, length=12, pad_rows=())
    # Clicks depend on the target item (an effect only ID embeddings can learn), with label noise:
    # P(click) = 0.8 for every third item, else 0.2. Held-out-free: it checks fitting, not skill.
    click_rate = np.where(x[features.ITEM_ID] % 3 == 0, 0.8, 0.2)
    y = (rng.random(1024) < click_rate).astype(np.float32)
    model, _ = make_model("muse")
    model.compile(tf_keras.optimizers.Adam(0.001))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    first = model.evaluate(data, verbose=0, return_dict=True)
    history = model.fit(data, epochs=6, verbose=0).history
    last = model.evaluate(data, verbose=0, return_dict=True)
    # The training loss, not the evaluated one: Dice's moving statistics trail weights that move
    # this fast on 96 steps, which shifts the evaluated loss (the ranking, AUC, much less).
    assert history["loss"][-1] < 0.9 * first["loss"]
    assert last["auc"] > 0.75


def test_bad_inputs_and_tables_are_named():
    model, table = make_model()
    x = make_batch(np.random.default_rng(7))
    del x[features.ITEM_CATEGORY]
    with pytest.raises(KeyError, match="item_category"):
        model(x)
    with pytest.raises(ValueError, match="shape"):
        model.set_multimodal_table(table[:10])
    with pytest.raises(ValueError, match="int8"):
        model.set_multimodal_table(table.astype(np.float32))


def _is_id_table(variable):
    """Told apart by name, independently of the model's own grouping."""
    return variable.name.endswith("_embedding/embeddings:0")


def test_embeddings_and_dense_weights_follow_their_own_optimizers():
    model, _ = make_model("muse")
    model.compile(optimizer=tf_keras.optimizers.SGD(0.0),
                  embedding_optimizer=tf_keras.optimizers.SGD(1.0))
    x = make_batch(np.random.default_rng(8))
    model(x)  # create the variables
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_on_batch(x, np.ones(8, np.float32))
    changed = [(_is_id_table(v), not np.array_equal(b, v.numpy()))
               for v, b in zip(model.trainable_variables, before)]
    assert any(flag for table, flag in changed if table)
    assert not any(flag for table, flag in changed if not table)


@pytest.mark.parametrize("variant", ["muse", "din", "sim_soft"])
def test_embedding_and_dense_groups_split_the_trainable_weights(variant):
    model, _ = make_model(variant, use_cross=True)
    model(make_batch(np.random.default_rng(9)))
    tables = [v.ref() for v in model.embedding_trainable_variables]
    dense = [v.ref() for v in model.dense_trainable_variables]
    assert len(tables) == len(TAOBAO_MM.vocabularies) and len(set(tables)) == len(tables)
    assert set(tables) == {v.ref() for v in model.trainable_variables if _is_id_table(v)}
    assert set(tables).isdisjoint(dense) and len(set(dense)) == len(dense)
    assert set(tables) | set(dense) == {v.ref() for v in model.trainable_variables}


def test_the_default_spec_builds_the_embedding_tables_of_the_model_before_specs():
    # The tables as the model before feature specs created them: one per Taobao-MM vocabulary,
    # profile features 3-5 at D // 2 (so its checkpoints load; the conversion check is in
    # tests/test_feature_spec.py).
    model, _ = make_model()
    model(make_batch(np.random.default_rng(3)))
    old = ("user", "profile_1", "profile_2", "profile_3", "profile_4", "profile_5", "item",
           "category", "attr_213", "attr_214")
    shapes = {v.name.split("/")[-2]: tuple(v.shape) for v in model.embedding_trainable_variables}
    assert shapes == {f"{name}_embedding": (VOCAB, 4 if name[-1] in "345" and "profile" in name
                                            else 8) for name in old}


def _old_layout_checkpoint(path, model, under=None):
    """A checkpoint with the variable paths the layout before the named branches wrote: the table
    and its inverse norms as weights of the model itself, the ID tables in a dict attribute."""
    old = {
        "multimodal_table": tf.Variable(model.multimodal.weights[0].numpy()),
        "multimodal_inverse_norms": tf.Variable(model.multimodal.weights[1].numpy()),
        "embeddings": {name: tf.train.Checkpoint(embeddings=tf.Variable(v.numpy()))
                       for name, v in zip(TAOBAO_MM.vocabularies, model.embedding_trainable_variables)},
    }
    checkpoint = tf.train.Checkpoint(**old)
    if under:  # e.g. BackupAndRestore writes the model under `model/`
        checkpoint = tf.train.Checkpoint(**{under: checkpoint})
    return checkpoint.write(path)


def test_a_checkpoint_of_the_old_layout_is_refused_by_name(tmp_path):
    model, _ = make_model("muse")
    model(make_batch(np.random.default_rng(10)))
    keys = {name for name, _ in tf.train.list_variables(
        _old_layout_checkpoint(str(tmp_path / "old" / "weights"), model))}
    assert "multimodal_table/.ATTRIBUTES/VARIABLE_VALUE" in keys  # as the old layout named it
    assert "embeddings/item/embeddings/.ATTRIBUTES/VARIABLE_VALUE" in keys
    with pytest.raises(ValueError, match="layout before its named branches.*multimodal_"):
        model.load_weights(str(tmp_path / "old" / "weights"))
    _old_layout_checkpoint(str(tmp_path / "backup" / "ckpt-1"), model, under="model")
    with pytest.raises(ValueError, match="named branches"):
        refuse_old_checkpoint(str(tmp_path / "backup" / "ckpt-1"))
    model.save_weights(str(tmp_path / "new" / "weights"))  # today's layout passes
    refuse_old_checkpoint(str(tmp_path / "new" / "weights"))
    model.load_weights(str(tmp_path / "new" / "weights"))


def _resource_handles() -> int:
    """Resource handles alive in the process: each keeps its variable's memory."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, tf.Tensor) and o.dtype == tf.resource)


def test_a_trained_model_leaves_no_variable_behind():
    """Once a trained MUSE model (SA-TA's SiLU, the dense and the embedding optimizer) is dropped,
    none of its variables stays alive: a custom gradient traced into the step (tf.nn.silu's,
    tf.distribute's all-reduce's) would keep it in TensorFlow's gradient registry for good, and
    with it every table, e.g. beside the model evaluation then loads."""
    from muse_tf.models.optimizers import SparseAdam, dense_optimizer

    before = _resource_handles()
    model, _ = make_model("muse")
    model.compile(optimizer=dense_optimizer("adamw", 0.01), embedding_optimizer=SparseAdam(0.05))
    rng = np.random.default_rng(2)
    x = make_batch(rng)
    model.fit(x, rng.integers(0, 2, 8).astype(np.float32), batch_size=8, epochs=1, verbose=0)
    assert _resource_handles() > before
    del model
    assert _resource_handles() <= before
