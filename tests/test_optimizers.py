"""SparseAdam against torch's SparseAdam (NumPy), the fused dense Adam and AdamW against tf-keras's
formula (NumPy), under MirroredStrategy, and through checkpoints."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf.config import VARIANTS
from muse_tf.jobs import seeding
from muse_tf.models.optimizers import FusedAdam, FusedAdamW, SparseAdam, dense_optimizer, learning_rate
from tests.reference import Adam as ReferenceAdam
from tests.reference import SparseAdam as ReferenceSparseAdam
from tests.reference import warmup_cosine
from tests.test_model import make_batch, make_model

ROOT = Path(__file__).resolve().parents[1]
ROWS, WIDTH, LR = 12, 3, 0.05
# Per step: row indices (repeats summed, rows 9-11 never present) and a seed for the values.
STEPS = [[0, 3, 3, 5], [5, 1], [3, 3, 3, 0, 7], [2], [8, 0, 5, 5]]


def _gradients():
    rng = np.random.default_rng(0)
    return [(np.array(idx), rng.normal(size=(len(idx), WIDTH))) for idx in STEPS]


def _initial_table():
    return np.random.default_rng(1).normal(size=(ROWS, WIDTH))


def _reference_after(steps):
    reference = ReferenceSparseAdam(_initial_table(), LR)
    for indices, values in _gradients()[:steps]:
        reference.apply(indices, values)
    return reference


def _slots(optimizer, variable):
    index = optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()


@pytest.mark.parametrize("graph", [False, True])
def test_sparse_adam_is_torch_sparse_adam(graph):
    table = tf.Variable(_initial_table(), dtype=tf.float32)
    optimizer = SparseAdam(LR)

    def apply(indices, values):
        optimizer.apply_gradients([(tf.IndexedSlices(values, indices, tf.constant([ROWS, WIDTH])), table)])

    step = tf.function(apply) if graph else apply
    reference = ReferenceSparseAdam(_initial_table(), LR)
    untouched = np.setdiff1d(np.arange(ROWS), np.concatenate(STEPS))
    for number, (indices, values) in enumerate(_gradients()):
        step(tf.constant(indices, tf.int64), tf.constant(values, tf.float32))
        reference.apply(indices, values)
        if number == 1:
            row_1_after_its_last_step = table.numpy()[1].copy()
        np.testing.assert_allclose(table.numpy(), reference.table, rtol=1e-5, atol=1e-6)
        m, v = _slots(optimizer, table)
        np.testing.assert_allclose(m, reference.m, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(v, reference.v, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(table.numpy()[untouched], _initial_table().astype(np.float32)[untouched])
    # Row 1 is present only at the second step: dense Adam would keep moving it after that.
    np.testing.assert_array_equal(table.numpy()[1], row_1_after_its_last_step)


def test_sparse_adam_follows_the_warmup_cosine_schedule():
    """Each step uses the scheduled rate of its step number: 0 at the first (the table stays, the
    moments move), the peak after the warm-up, then down a cosine."""
    total, warmup_fraction = len(STEPS), 0.4
    schedule = learning_rate(LR, "warmup_cosine", total, warmup_fraction)
    reference_rate = warmup_cosine(LR, total, warmup_fraction)
    np.testing.assert_allclose([float(schedule(t)) for t in range(total)],
                               [reference_rate(t) for t in range(total)], rtol=1e-6, atol=1e-9)
    assert learning_rate(LR, "constant", total, warmup_fraction) == LR
    table = tf.Variable(_initial_table(), dtype=tf.float32)
    optimizer = SparseAdam(schedule)
    reference = ReferenceSparseAdam(_initial_table(), reference_rate)
    for indices, values in _gradients():
        optimizer.apply_gradients([(tf.IndexedSlices(tf.constant(values, tf.float32),
                                                     tf.constant(indices, tf.int64),
                                                     tf.constant([ROWS, WIDTH])), table)])
        reference.apply(indices, values)
        np.testing.assert_allclose(table.numpy(), reference.table, rtol=1e-5, atol=1e-6)
    assert reference.table[0, 0] != _initial_table()[0, 0]


def test_dense_gradients_are_refused_by_name():
    table = tf.Variable(np.zeros((ROWS, WIDTH), np.float32), name="item_table")
    with pytest.raises(TypeError, match="dense gradient for item_table"):
        SparseAdam(LR).apply_gradients([(tf.ones((ROWS, WIDTH)), table)])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_embedding_table_gets_a_sparse_gradient(variant):
    model, _ = make_model(variant)
    x = make_batch(np.random.default_rng(3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True))
    tables = model.embedding_trainable_variables
    gradients = tape.gradient(loss, tables)
    assert all(g is None or isinstance(g, tf.IndexedSlices) for g in gradients)
    item = model.embeddings.tables["item"].embeddings
    item_gradient = gradients[[t is item for t in tables].index(True)]
    assert item_gradient.indices.shape[0] < item.shape[0] * 4  # rows of the batch, not of the table


# Run in a subprocess: the two logical CPUs must be set before TensorFlow starts.
TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    import muse_tf
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
""")


def _on_two_replicas(script: str, payload) -> list:
    """What ``script`` (after ``TWO_REPLICAS``, reading ``payload`` from argv) prints last, as JSON."""
    proc = subprocess.run([sys.executable, "-c", TWO_REPLICAS + script, json.dumps(payload)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MIRRORED_SCRIPT = textwrap.dedent("""
    from muse_tf.models.optimizers import SparseAdam
    table0, lr, steps = json.loads(sys.argv[1])
    with strategy.scope():
        table = tf.Variable(np.array(table0, np.float32))
        optimizer = SparseAdam(lr)

    @tf.function
    def step(per_replica):
        def apply(indices, values):
            grad = tf.IndexedSlices(values, indices, tf.constant(list(table.shape)))
            optimizer.apply_gradients([(grad, table)])
        strategy.run(apply, args=per_replica)

    for replica_steps in steps:  # [[indices, values] for each replica]
        per_replica = [strategy.experimental_distribute_values_from_function(
            lambda ctx, k=k: tf.constant(replica_steps[ctx.replica_id_in_sync_group][k],
                                         tf.int64 if k == 0 else tf.float32)) for k in (0, 1)]
        step(per_replica)
    print(json.dumps([t.numpy().tolist() for t in table.values]))
""")


def test_two_replicas_update_like_one_with_the_summed_gradient():
    """MirroredStrategy all-reduces the replicas' IndexedSlices (a concatenation): the update is
    SparseAdam's on both replicas' rows summed, identical on both devices."""
    grads = _gradients()
    steps = [[[indices.tolist(), values.tolist()] for indices, values in grads[i : i + 2]] for i in (0, 2)]
    copies = np.array(_on_two_replicas(MIRRORED_SCRIPT, [_initial_table().tolist(), LR, steps]))
    reference = ReferenceSparseAdam(_initial_table(), LR)
    for (i0, v0), (i1, v1) in zip(grads[0::2], grads[1::2]):
        reference.apply(np.concatenate([i0, i1]), np.concatenate([v0, v1]))
    assert copies.shape == (2, ROWS, WIDTH)
    for copy in copies:
        np.testing.assert_allclose(copy, reference.table, rtol=1e-5, atol=1e-6)


def _fit(model, data, epochs, callbacks=()):
    model.fit(data, epochs=epochs, steps_per_epoch=3, callbacks=list(callbacks), verbose=0)


class _StopAtEpoch(tf_keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _compiled_model():
    """DIN: the embedding tables and the two optimizers of MUSE, in a graph that traces quickly."""
    seeding.set_seed(0)
    model, _ = make_model("din")
    model.compile(optimizer=dense_optimizer("adamw", 0.01), embedding_optimizer=SparseAdam(0.05))
    return model


def test_backup_and_restore_resumes_the_sparse_moments(tmp_path):
    """A run interrupted after epoch 1 and resumed from its backup ends where an uninterrupted run
    does: the tables' SparseAdam moments and step count come back with the weights."""
    rng = np.random.default_rng(9)
    x = make_batch(rng, batch=48, length=12, pad_rows=())
    y = (rng.random(48) < 0.5).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    straight = _compiled_model()
    _fit(straight, data, epochs=2)

    backup = tf_keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = _compiled_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(interrupted, data, epochs=2, callbacks=[backup, _StopAtEpoch(1)])
    resumed = _compiled_model()
    _fit(resumed, data, epochs=2, callbacks=[tf_keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])

    assert int(resumed.embedding_optimizer.iterations.numpy()) == 6
    item = resumed.embeddings.tables["item"].embeddings
    straight_item = straight.embeddings.tables["item"].embeddings
    for got, want in zip(_slots(resumed.embedding_optimizer, item),
                         _slots(straight.embedding_optimizer, straight_item)):
        assert np.abs(want).sum() > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(resumed.weights, straight.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6, err_msg=got.name)


def test_checkpoint_round_trip_restores_the_slots(tmp_path):
    model = _compiled_model()
    x = make_batch(np.random.default_rng(10), batch=16, length=12)
    model.train_on_batch(x, np.ones(16, np.float32))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = _compiled_model()
    restored(x)
    tf.train.Checkpoint(model=restored).restore(path)
    # The slots are created on the first update and filled from the checkpoint then.
    model.train_on_batch(x, np.zeros(16, np.float32))
    restored.train_on_batch(x, np.zeros(16, np.float32))
    table = model.embeddings.tables["item"].embeddings
    restored_table = restored.embeddings.tables["item"].embeddings
    np.testing.assert_allclose(restored_table.numpy(), table.numpy(), rtol=1e-5, atol=1e-7)
    for got, want in zip(_slots(restored.embedding_optimizer, restored_table),
                         _slots(model.embedding_optimizer, table)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_saved_weights_are_the_model_without_the_optimizers_moments(tmp_path):
    """``save_weights`` (final weights, per-epoch weights) writes every model weight, frozen table
    included, and no optimizer state; a checkpoint of the whole object still holds the moments."""
    from muse_tf.jobs import runs

    model = _compiled_model()
    x = make_batch(np.random.default_rng(11), batch=16, length=12)
    model.train_on_batch(x, np.ones(16, np.float32))
    model.save_weights(str(tmp_path / "weights"))
    saved = dict(tf.train.list_variables(str(tmp_path / "weights")))
    assert not [name for name in saved if "optimizer" in name]
    loaded, _ = make_model("din", seed=1)  # as a finished run's model comes back: uncompiled
    loaded(x)
    runs.load_weights_covering(loaded, str(tmp_path / "weights"))  # refuses a weight left out
    for got, want in zip(loaded.variables, model.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.name)
    whole = tf.train.Checkpoint(model=model).save(str(tmp_path / "whole"))
    assert any("embedding_optimizer" in name for name, _ in tf.train.list_variables(whole))


def test_serialised_config_round_trips():
    optimizer = SparseAdam(0.02, beta_1=0.8, epsilon=1e-6)
    clone = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(optimizer))
    assert isinstance(clone, SparseAdam)
    assert (clone.beta_1, clone.beta_2, clone.epsilon) == (0.8, 0.999, 1e-6)
    assert float(clone.learning_rate) == pytest.approx(0.02)


def test_unknown_dense_optimizer_is_named():
    with pytest.raises(ValueError, match="'sgd'"):
        dense_optimizer("sgd", 0.1)


DENSE_SHAPES = [(4, 3), (3,)]
DENSE_CASES = {  # name: (fused, tf-keras's own, NumPy reference), with the same arguments
    "adam": (lambda: FusedAdam(LR), lambda: tf_keras.optimizers.Adam(LR), lambda w: ReferenceAdam(w, LR)),
    "adamw": (lambda: FusedAdamW(LR, weight_decay=0.1, epsilon=1e-8),
              lambda: tf_keras.optimizers.AdamW(LR, weight_decay=0.1, epsilon=1e-8),
              lambda w: ReferenceAdam(w, LR, eps=1e-8, weight_decay=0.1)),
}


def _dense_start():
    rng = np.random.default_rng(4)
    return [rng.normal(size=shape) for shape in DENSE_SHAPES]


def _dense_weights():
    return [tf.Variable(w, dtype=tf.float32) for w in _dense_start()]


def _dense_gradients(steps=5, seed=5):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=shape) for shape in DENSE_SHAPES] for _ in range(steps)]


def _run_dense(optimizer, gradients, mode):
    """``gradients`` applied to ``_dense_start()``: eagerly, in a tf.function or compiled by XLA."""
    weights = _dense_weights()

    def apply(*grads):
        optimizer.apply_gradients(zip(grads, weights))

    step = apply if mode == "eager" else tf.function(apply, jit_compile=mode == "xla")
    for grads in gradients:
        step(*[tf.constant(g, tf.float32) for g in grads])
    return weights


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("name", sorted(DENSE_CASES))
def test_fused_dense_update_is_tf_keras_adam(name, mode):
    fused, stock, reference_of = DENSE_CASES[name]
    gradients = _dense_gradients()
    optimizer = fused()
    got = _run_dense(optimizer, gradients, mode)
    want = _run_dense(stock(), gradients, mode)
    reference = reference_of(_dense_start())
    for grads in gradients:
        reference.apply(grads)
    for index, (g, w, r) in enumerate(zip(got, want, reference.weights)):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)  # float rounding
        m, v = _slots(optimizer, g)
        np.testing.assert_allclose(m, reference.m[index], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(v, reference.v[index], rtol=1e-4, atol=1e-9)


def _op_types(function) -> list[str]:
    """The op of every node of a concrete function's graph and of the functions it calls."""
    graph = function.graph.as_graph_def()
    return [node.op for node in graph.node] + [
        node.op for nested in graph.library.function for node in nested.node_def]


def test_the_fused_update_is_one_kernel_per_weight():
    weights = _dense_weights()
    optimizer = dense_optimizer("adamw", LR)
    apply = tf.function(lambda *grads: optimizer.apply_gradients(zip(grads, weights)))
    types = _op_types(apply.get_concrete_function(*[tf.TensorSpec(s) for s in DENSE_SHAPES]))
    assert types.count("ResourceApplyAdam") == len(weights)
    # tf-keras's own update writes the moments with AssignAddVariableOp, twice per weight.
    assert types.count("AssignAddVariableOp") <= 1  # the step counter


def test_the_fused_update_reads_a_checkpoint_of_tf_keras_adamw(tmp_path):
    """A run's backup written with tf-keras's AdamW resumes with the fused one: same slots."""
    gradients = _dense_gradients(steps=6)
    make = DENSE_CASES["adamw"]
    straight = _run_dense(make[1](), gradients, "graph")
    before_optimizer = make[1]()
    before = _run_dense(before_optimizer, gradients[:3], "graph")
    path = tf.train.Checkpoint(weights=before, optimizer=before_optimizer).save(str(tmp_path / "c"))
    weights = _dense_weights()
    optimizer = make[0]()
    optimizer.build(weights)
    tf.train.Checkpoint(weights=weights, optimizer=optimizer).restore(path).assert_consumed()
    for grads in gradients[3:]:
        optimizer.apply_gradients(zip([tf.constant(g, tf.float32) for g in grads], weights))
    for got, want in zip(weights, straight):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


DENSE_MIRRORED_SCRIPT = textwrap.dedent("""
    from muse_tf.models.optimizers import dense_optimizer
    start, lr, steps = json.loads(sys.argv[1])
    with strategy.scope():
        weights = [tf.Variable(np.array(w, np.float32)) for w in start]
        optimizer = dense_optimizer("adamw", lr)

    @tf.function
    def step(per_replica):
        strategy.run(lambda *grads: optimizer.apply_gradients(zip(grads, weights)), args=per_replica)

    for replica_grads in steps:  # [[a gradient per weight] for each replica]
        step([strategy.experimental_distribute_values_from_function(
            lambda ctx, k=k: tf.constant(replica_grads[ctx.replica_id_in_sync_group][k], tf.float32))
            for k in range(len(weights))])
    print(json.dumps([[copy.numpy().tolist() for copy in w.values] for w in weights]))
""")


def test_two_replicas_apply_the_fused_update_with_the_summed_gradient():
    gradients = _dense_gradients(steps=4)
    steps = [[[g.tolist() for g in grads] for grads in gradients[i : i + 2]] for i in (0, 2)]
    copies = _on_two_replicas(DENSE_MIRRORED_SCRIPT, [[w.tolist() for w in _dense_start()], LR, steps])
    reference = ReferenceAdam(_dense_start(), LR, eps=1e-8, weight_decay=0.01)
    for first, second in zip(gradients[0::2], gradients[1::2]):
        reference.apply([a + b for a, b in zip(first, second)])
    for weight_copies, want in zip(copies, reference.weights):
        assert len(weight_copies) == 2
        for copy in weight_copies:
            np.testing.assert_allclose(np.array(copy), want, rtol=1e-5, atol=1e-6)


def test_fused_optimizers_serialise_as_themselves():
    optimizer = dense_optimizer("adamw", 0.02)
    clone = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(optimizer))
    assert isinstance(clone, FusedAdamW)
    assert (clone.weight_decay, clone.epsilon) == (0.01, 1e-8)
    serialised = tf_keras.optimizers.serialize(FusedAdam(0.1))
    assert isinstance(tf_keras.optimizers.deserialize(serialised), FusedAdam)


def test_a_lookup_hands_the_optimizer_each_distinct_row_once():
    """Against NumPy: the looked-up rows, and a gradient of one row per distinct index holding the
    sum over its positions (not one row per position)."""
    from muse_tf.contract import features
    from muse_tf.contract.feature_spec import TAOBAO_MM
    from muse_tf.models.branches import EmbeddingBranch

    branch = EmbeddingBranch({name: 30 for name in TAOBAO_MM.vocabularies}, 4, TAOBAO_MM)
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 12, size=(3, 40))  # many repeats
    weights = rng.normal(size=(3, 40, 4)).astype(np.float32)
    table = branch.tables["item"]
    with tf.GradientTape() as tape:
        rows = branch.lookup(features.HISTORY_ITEMS, tf.constant(indices, tf.int32))
        loss = tf.reduce_sum(rows * weights)
    gradient = tape.gradient(loss, table.embeddings)
    values = table.embeddings.numpy()
    np.testing.assert_array_equal(rows.numpy(), values[indices])
    assert isinstance(gradient, tf.IndexedSlices)
    assert sorted(gradient.indices.numpy()) == sorted(np.unique(indices))
    expected = np.zeros_like(values)
    np.add.at(expected, indices, weights)
    dense = np.zeros_like(values)
    dense[gradient.indices.numpy()] = gradient.values.numpy()
    np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-6)


def test_a_lookups_gradient_sums_positions_without_unsorted_segment_sum():
    """The positions' gradients are summed per distinct row by a sparse product: TensorFlow's
    UnsortedSegmentSum, which tf.gather's gradient uses, is ~10x slower on CPU (TF 2.21)."""
    from muse_tf.contract import features
    from muse_tf.contract.feature_spec import TAOBAO_MM
    from muse_tf.models.branches import EmbeddingBranch

    branch = EmbeddingBranch({name: 30 for name in TAOBAO_MM.vocabularies}, 4, TAOBAO_MM)
    table = branch.tables["item"]
    table.build(None)

    @tf.function
    def gradient(indices):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(branch.lookup(features.HISTORY_ITEMS, indices))
        return tape.gradient(loss, table.embeddings).values

    indices = tf.constant(np.random.default_rng(7).integers(0, 12, size=(3, 40)), tf.int32)
    ops = {op.type for op in gradient.get_concrete_function(indices).graph.get_operations()}
    assert "SparseTensorDenseMatMul" in ops and "UnsortedSegmentSum" not in ops, sorted(ops)


def test_a_lookup_under_xla_reads_every_position_without_unique():
    """XLA compiles tf.unique over a batch's B x L history indices into a step of ~80 s (SIM-soft's
    search), so under XLA each position is looked up; the rows are the same."""
    from muse_tf.contract import features
    from muse_tf.contract.feature_spec import TAOBAO_MM
    from muse_tf.models.branches import EmbeddingBranch

    branch = EmbeddingBranch({name: 30 for name in TAOBAO_MM.vocabularies}, 4, TAOBAO_MM)
    indices = tf.constant(np.random.default_rng(6).integers(0, 12, size=(3, 40)), tf.int32)
    lookup = tf.function(lambda i: branch.lookup(features.HISTORY_ITEMS, i), jit_compile=True)
    np.testing.assert_array_equal(lookup(indices).numpy(),
                                  branch.tables["item"].embeddings.numpy()[indices.numpy()])
    ops = {op.type for op in lookup.get_concrete_function(indices).graph.get_operations()}
    assert "Unique" not in ops
    plain = tf.function(lambda i: branch.lookup(features.HISTORY_ITEMS, i))
    assert "Unique" in {op.type for op in plain.get_concrete_function(indices).graph.get_operations()}


@pytest.mark.parametrize("variant", ["muse", "din"])
def test_deduplicated_lookups_leave_logits_and_gradients_as_plain_lookups(variant, monkeypatch):
    """The model with each distinct row looked up once, against the same model looking up every
    position (Keras's Embedding): the same logits, gradients equal to float rounding."""
    from muse_tf.models.branches import EmbeddingBranch

    model, _ = make_model(variant)
    x = make_batch(np.random.default_rng(3))

    def logits_and_gradients():
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            loss = tf.reduce_sum(logits * tf.range(1.0, 1.0 + tf.cast(tf.size(logits), tf.float32)))
        gradients = tape.gradient(loss, model.trainable_variables)
        return logits.numpy(), [tf.convert_to_tensor(g).numpy() for g in gradients]

    deduplicated = logits_and_gradients()
    monkeypatch.setattr(EmbeddingBranch, "lookup",
                        lambda self, feature, indices: self.tables[self.spec.vocabulary[feature]](indices))
    plain = logits_and_gradients()
    np.testing.assert_array_equal(deduplicated[0], plain[0])
    for got, want in zip(deduplicated[1], plain[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _whole_table_tensors(graph: tf.Graph, rows: int) -> list[str]:
    """The ops of ``graph`` that produce a tensor of a table's every row (a whole-table read,
    product or copy), the variables' handles aside."""
    return [f"{op.type} {op.name}" for op in graph.get_operations() if op.type != "VarHandleOp"
            and any(out.shape.rank and out.shape[0] == rows for out in op.outputs)]


def test_sparse_adam_reads_and_writes_only_the_rows_of_the_gradient():
    """Its step costs the rows a batch touched, not the table: no tensor of every row is made (a
    weight decay of 0 would still multiply and write back the whole table)."""
    table = tf.Variable(_initial_table(), dtype=tf.float32)
    optimizer = SparseAdam(LR)
    apply = tf.function(lambda indices, values: optimizer.apply_gradients(
        [(tf.IndexedSlices(values, indices, tf.constant([ROWS, WIDTH])), table)]))
    indices, values = _gradients()[0]
    apply(tf.constant(indices, tf.int64), tf.constant(values, tf.float32))
    graph = apply.get_concrete_function(tf.constant(indices, tf.int64),
                                        tf.constant(values, tf.float32)).graph
    assert _whole_table_tensors(graph, ROWS) == []


def test_the_training_strategy_on_one_device_looks_tables_up_by_row():
    """Under the strategy the training job picks on one device, the train step reads, updates and
    searches the tables by row: a step's cost does not grow with the vocabulary (a mirrored
    variable is read whole by every lookup, and then copied by the update)."""
    from muse_tf.config import ExperimentConfig, ModelConfig
    from muse_tf.contract.feature_spec import TAOBAO_MM
    from muse_tf.jobs import distribute, training
    from muse_tf.models import MuseModel

    rows = 1013  # no other tensor of the step has this many rows
    x = make_batch(np.random.default_rng(4))
    y = np.random.default_rng(5).integers(0, 2, len(x[next(iter(x))])).astype(np.float32)
    strategy = distribute.make_strategy()
    with strategy.scope():
        model = MuseModel(ModelConfig(vocab_sizes={name: rows for name in TAOBAO_MM.vocabularies},
                                      embedding_dim=8, top_k=6, recent_length=5, mlp_units=[16, 8],
                                      din_attention_units=[8]))
        model.set_multimodal_table(np.random.default_rng(6).integers(
            -127, 128, size=(rows, 128)).astype(np.int8))
        training.compile_model(model, ExperimentConfig(), total_steps=1)
    inputs = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.fit(inputs, steps_per_epoch=1, verbose=0)
    graph = model.train_function.get_concrete_function(iter(inputs)).graph
    assert _whole_table_tensors(graph, rows) == []
    # The start line names it for people, not by its private class.
    assert distribute.strategy_name(strategy) == "TensorFlow's default strategy"
