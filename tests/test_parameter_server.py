"""A parameter-server cluster on loopback: a chief, two workers and two parameter servers, each a
``python -m muse_tf.train`` process, train the tiny dataset with the tables sharded over the two
parameter servers; the result evaluates and exports like any other run."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from muse_tf import train
from muse_tf.contract import dataset_dir, signatures
from muse_tf.data import reader
from muse_tf.jobs.runs import RunDir, build_model, load_trained_model
from tests import serving_case as sc
from tests.cli_helpers import assert_usage_error
from tests.test_train import (  # noqa: F401  (dataset is a fixture)
    ROOT,
    TINY,
    _free_ports,
    _history_losses,
    _metrics,
    dataset,
)

EPOCHS, STEPS = 3, 8
INITIAL_STDDEV = 0.001  # of the ID embedding tables (models/branches.py)
# Small enough that the tiny tables (hundreds of rows) are split in two; the dense weights too.
MIN_SHARD_BYTES = 1024


def _cluster(ports):
    addresses = [f"localhost:{port}" for port in ports]
    return {"chief": addresses[:1], "worker": addresses[1:3], "ps": addresses[3:5]}


def _start(args, cluster, task_type, index, log_dir):
    tf_config = {"cluster": cluster, "task": {"type": task_type, "index": index}}
    log = open(log_dir / f"{task_type}-{index}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)})
    proc.log = log
    return proc


def _binary_cross_entropy(labels, logits):
    """NumPy: mean BCE of logits against 0/1 labels."""
    logits = np.asarray(logits, np.float64)
    return float(np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))))


@pytest.fixture(scope="module")
def cluster_run(dataset, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """The finished run directory, and the logs of every process."""
    root = tmp_path_factory.mktemp("ps")
    model_dir = root / "run"
    cluster = _cluster(_free_ports(5))
    args = ["-m", "muse_tf.train", "--data", dataset, "--model-dir", str(model_dir),
            "--verbose", "2", "--set", f"train.epochs={EPOCHS}",
            "--set", f"train.steps_per_epoch={STEPS}",
            "--set", f"train.ps_min_shard_bytes={MIN_SHARD_BYTES}", *TINY]
    servers = [_start(args, cluster, kind, i, root) for kind in ("ps", "worker") for i in range(2)]
    chief = _start(args, cluster, "chief", 0, root)
    try:
        chief.wait(timeout=600)
        # The workers and parameter servers serve until stopped; none may have died meanwhile.
        assert [p.poll() for p in servers] == [None] * 4, "a worker or ps process exited"
    finally:
        for proc in [chief, *servers]:
            proc.kill()
            proc.wait()
            proc.log.close()
    logs = {path.stem: path.read_text() for path in root.glob("*.log")}
    assert chief.returncode == 0, logs["chief-0"][-4000:]
    return model_dir, logs


def test_workers_and_parameter_servers_only_serve(cluster_run):
    model_dir, logs = cluster_run
    for name in ("worker-0", "worker-1", "ps-0", "ps-1"):
        assert "parameter-server cluster" in logs[name], logs[name][-2000:]
        assert "Training" not in logs[name]
    # Only the chief wrote the run directory (no per-worker directories).
    assert not os.path.exists(os.path.join(str(model_dir), "workers"))


def test_tables_are_sharded_over_both_parameter_servers(cluster_run, dataset):  # noqa: F811
    model_dir, _ = cluster_run
    placement = _metrics(model_dir)["sharded_variables"]
    vocab_sizes = dataset_dir.vocab_sizes(dataset)
    tables = {
        "muse_model/item_embedding/embeddings:0": vocab_sizes["item"],
        "muse_model/user_embedding/embeddings:0": vocab_sizes["user"],
        "multimodal/table:0": vocab_sizes["item"],
        "multimodal/inverse_norms:0": vocab_sizes["item"],
    }
    for name, rows in tables.items():
        assert name in placement, sorted(placement)
        shards = placement[name]
        assert sorted(s["device"].split("/device")[0] for s in shards) == [
            "/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"], shards
        assert sum(s["rows"] for s in shards) == rows


def test_the_loss_falls(cluster_run, dataset):  # noqa: F811
    model_dir, _ = cluster_run
    losses = _history_losses(model_dir)
    assert len(losses) == EPOCHS
    assert losses[-1] < losses[0], losses
    result = _metrics(model_dir)
    assert result["optimizer_iterations"] == result["expected_iterations"] == EPOCHS * STEPS
    # Independently of the training's own figures: the trained model, loaded whole from the run
    # directory, predicts the training split better than a fresh model of the same config.
    trained, experiment = load_trained_model(str(model_dir))
    fresh = build_model(experiment)
    train = reader.make_dataset(dataset_dir.split_files(dataset, "train"), 256,
                              history_length=experiment.train.history_length)
    labels, trained_logits, fresh_logits = [], [], []
    for batch, label in train:
        labels.append(label.numpy())
        trained_logits.append(trained(batch, training=False).numpy())
        fresh_logits.append(fresh(batch, training=False).numpy())
    labels = np.concatenate(labels)
    assert (_binary_cross_entropy(labels, np.concatenate(trained_logits))
            < _binary_cross_entropy(labels, np.concatenate(fresh_logits)))


def test_sparse_updates_reached_every_shard(cluster_run):
    """Rows of the item table on each parameter server moved past where their initialiser puts
    them (a normal, beyond 4.5 stddev in about one value in 150,000), so SparseAdam updated both
    shards."""
    model_dir, _ = cluster_run
    model, _ = load_trained_model(str(model_dir))
    table = model.embeddings.tables["item"].embeddings.numpy()
    init_bound = 4.5 * INITIAL_STDDEV
    shards = _metrics(model_dir)["sharded_variables"]["muse_model/item_embedding/embeddings:0"]
    start = 0
    for shard in shards:
        rows = table[start : start + shard["rows"]]
        assert (np.abs(rows).max(axis=1) > init_bound).sum() > 10, shard
        start += shard["rows"]


def test_the_export_scores_like_the_trained_model(cluster_run, dataset):  # noqa: F811
    import tensorflow as tf

    model_dir, _ = cluster_run
    export_dir = _metrics(model_dir)["export"]
    assert export_dir.startswith(RunDir(str(model_dir)).export)
    loaded = tf.saved_model.load(export_dir)
    model, _ = load_trained_model(str(model_dir))
    vocabularies = dataset_dir.load_vocabularies(dataset)
    case = sc.Case(model, vocabularies, item_category=None)
    request = sc.rank_request(np.random.default_rng(0), vocabularies, 30, candidates=5)
    outputs = loaded.signatures[signatures.RANK](
        **{name: tf.constant(np.asarray(value)) for name, value in request.items()}
    )
    reference = sc.keras_rank(case, request)
    assert np.ptp(reference) > 1e-4, reference  # the candidates' scores differ
    np.testing.assert_allclose(outputs[signatures.LOGIT].numpy(), reference, rtol=0, atol=1e-5)


def test_a_chief_names_a_missing_task_after_a_bounded_wait(monkeypatch, capsys):
    """Without the wait, TensorFlow's chief waits for the missing parameter server forever."""
    listening = socket.socket()
    listening.bind(("localhost", 0))
    listening.listen()
    try:
        ports = [listening.getsockname()[1], *_free_ports(2)]
        cluster = {"worker": [f"localhost:{ports[0]}"], "ps": [f"localhost:{ports[1]}"],
                   "chief": [f"localhost:{ports[2]}"]}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                    "task": {"type": "chief", "index": 0}}))
        started = time.monotonic()
        assert_usage_error(capsys, train.main, "muse_tf.train",
                           rf"no answer from ps:0 \(localhost:{ports[1]}\) within 1 s",
                           ["--data", "unused", "--cluster-timeout", "1"])
        assert time.monotonic() - started < 30
    finally:
        listening.close()
