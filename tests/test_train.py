"""The training CLI: end to end, MirroredStrategy, two workers, and resuming a killed run."""

import csv
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from muse_tf import evaluate, train
from muse_tf.config import ExperimentConfig, TrainConfig
from muse_tf.contract import dataset_dir
from muse_tf.data import reader
from muse_tf.jobs import backup, distribute, evaluation, metrics, scoring, training
from muse_tf.jobs.runs import RunDir, build_model, load_trained_model
from tests.cli_helpers import assert_usage_error

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 48
TINY = [
    "--set", "model.embedding_dim=8", "--set", "model.mlp_units=[16]", "--set", "model.top_k=8",
    "--set", "model.recent_length=8", "--set", "model.din_attention_units=[8]",
    "--set", "train.batch_size=32", "--set", f"train.history_length={HISTORY}",
    "--set", "train.eval_batch_size=64", "--set", "train.log_every_steps=5",
]


def run(args, timeout=300, env=None, **kwargs):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny converted synthetic dataset with two training shards."""
    from muse_tf.data.synthetic import SyntheticConfig
    from pipelines.common import synthetic_parquet
    from pipelines.common.options import ConversionOptions
    from pipelines.local import driver

    root = tmp_path_factory.mktemp("data")
    sizes = SyntheticConfig(users=80, behaviours_per_user=HISTORY, items=600, clusters=8)
    synthetic_parquet.generate(sizes, str(root / "parquet"))
    driver.convert(ConversionOptions(str(root / "parquet"), str(root / "tfrecord"),
                                     history_cap=HISTORY, shards={"train": 2, "test": 1}),
                   workers=1)
    return str(root / "tfrecord")


def _history_losses(model_dir):
    with open(RunDir(str(model_dir)).history) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _metrics(model_dir):
    with open(RunDir(str(model_dir)).metrics) as f:
        return json.load(f)


def test_default_command_runs_end_to_end(tmp_path):
    proc = run(["-m", "muse_tf.train", "--work-dir", str(tmp_path), "--synthetic-users", "40",
                "--set", "train.epochs=1", *TINY], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = tmp_path / "muse"
    result = _metrics(model_dir)
    assert result["optimizer_iterations"] == result["expected_iterations"] > 0
    assert Path(RunDir(str(model_dir)).eval_plot).stat().st_size > 0
    assert 0.0 <= result["eval"]["auc"] <= 1.0
    assert Path(result["export"], "saved_model.pb").exists()
    assert str(model_dir) in proc.stdout
    # The reported metrics are those of the trained weights, recomputed independently.
    model, experiment = load_trained_model(str(model_dir))
    data_dir = next((tmp_path / "data").glob("synthetic-*[0-9]"))

    test = reader.make_dataset(dataset_dir.split_files(str(data_dir), "test"), 64,
                             history_length=experiment.train.history_length)
    scored = scoring.predict_dataset(model, test)
    assert result["eval"]["examples"] == dataset_dir.split_samples(
        dataset_dir.load_manifest(str(data_dir)), "test")
    np.testing.assert_allclose(metrics.group_auc(scored["labels"], scored["logits"], scored["groups"]),
                               result["eval"]["gauc"], atol=1e-6)
    # `python -m muse_tf.evaluate` on the finished run reports the same figures and breakdowns.
    again = evaluate.main(["--data", str(data_dir), "--model-dir", str(model_dir),
                           "--output", str(tmp_path / "eval")])
    assert again["gauc"] == pytest.approx(result["eval"]["gauc"], abs=1e-6)
    assert sum(row["examples"] for row in again["by_history_length"]) == again["examples"]
    assert sum(row["examples"] for row in again["by_item_popularity"]) == again["examples"]
    assert Path(RunDir(str(tmp_path / "eval")).eval_plot).exists()


MIRRORED_SCRIPT = textwrap.dedent("""
    import csv, json, os, sys
    import muse_tf
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from muse_tf import train
    from muse_tf.jobs import distribute
    data, out, tiny = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    strategies = {
        "single": distribute.make_strategy,  # the job's own choice on one device
        "mirrored": lambda *_: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    for name, make in strategies.items():
        distribute.make_strategy = make
        result = train.main(["--data", data, "--model-dir", os.path.join(out, name), "--no-export",
                             "--no-eval", "--verbose", "0", "--set", "train.deterministic=true",
                             "--set", "train.epochs=3", "--set", "train.steps_per_epoch=4", *tiny])
        print(name, result["replicas"])
""")


def test_mirrored_strategy_on_two_devices_matches_single_device(dataset, tmp_path):
    proc = run(["-c", MIRRORED_SCRIPT, dataset, str(tmp_path), json.dumps(TINY)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "single 1" in proc.stdout and "mirrored 2" in proc.stdout
    single = _history_losses(tmp_path / "single")
    mirrored = _history_losses(tmp_path / "mirrored")
    assert len(single) == len(mirrored) == 3
    # Same data, same initial weights: only Dice's per-replica batch statistics differ.
    np.testing.assert_allclose(mirrored, single, rtol=0.02)
    assert single[-1] < single[0]


GLOBAL_BATCH_SCRIPT = textwrap.dedent("""
    import json, sys
    import muse_tf
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from muse_tf.contract import features
    from muse_tf.jobs import training
    from muse_tf.config import ExperimentConfig, TrainConfig
    per_replica = {}
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        strategy = tf.distribute.MirroredStrategy(devices)
        experiment = ExperimentConfig(train=TrainConfig(history_length=4))  # the default batch
        inputs, _ = next(iter(training.train_dataset(strategy, sys.argv[1], experiment)))
        ids = strategy.experimental_local_results(inputs[features.ITEM_ID])
        per_replica[len(devices)] = [int(t.shape[0]) for t in ids]
    print(json.dumps(per_replica))
""")


def test_the_default_batch_is_1000_per_replica(dataset):
    """The official code's DDP batch: 1,000 samples on each device, so 1,000 on one replica and
    2,000 on two (the dataset repeats to fill a batch larger than its split)."""
    assert TrainConfig().batch_size is None
    proc = run(["-c", GLOBAL_BATCH_SCRIPT, dataset], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"1": [1000], "2": [1000, 1000]}
    # A global batch, when set, is split across the replicas instead.
    assert TrainConfig(batch_size=256).global_batch_size(2) == 256
    assert TrainConfig(per_replica_batch_size=64).global_batch_size(3) == 192


def test_too_few_steps_are_named_before_training(dataset, tmp_path):
    """A split smaller than one global batch, or a run of few steps, is said in one line with the
    numbers; setting the threshold to 0 silences it."""
    samples = dataset_dir.split_samples(dataset_dir.load_manifest(dataset), "train")
    proc = run(["-m", "muse_tf.train", "--data", dataset, "--model-dir", str(tmp_path / "run"),
                "--no-eval", "--no-export", "--verbose", "0", *TINY,
                "--set", "train.batch_size=null"], timeout=600)  # the default 1,000 per replica
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warning,) = [line for line in proc.stderr.splitlines() if line.startswith("Warning:")]
    assert f"has {samples:,} samples, fewer than one global batch of 1,000" in warning
    assert "train.warn_below_steps=0" in warning
    train_config = TrainConfig(batch_size=32)
    steps = samples // 32
    assert steps < train_config.warn_below_steps
    few = training.too_few_steps(train_config, samples, 32)
    assert f"make {steps:,} optimizer step(s) per epoch, {steps:,} in all" in few
    assert training.too_few_steps(TrainConfig(batch_size=32, warn_below_steps=0), samples, 32) is None
    assert training.too_few_steps(TrainConfig(batch_size=32, steps_per_epoch=3), samples, 32) is None


def test_the_embedded_default_run_plans_enough_steps():
    """The default command (2,000 synthetic users, the synthetic config) is not warned about: its
    expected training samples (users x samples per user x train share, less 5%) make enough steps."""
    from muse_tf.data.synthetic import SyntheticConfig

    sizes = SyntheticConfig()
    samples = int(0.95 * sizes.users * sizes.samples_per_user * (1 - sizes.test_fraction))
    default = train.build_experiment(train.arguments().parse_args([])).train
    assert training.too_few_steps(default, samples, default.global_batch_size(1)) is None


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


PROGRESS = re.compile(r"(\d+)/(\d+) \[[=>.]*\].*? - loss: ([\d.]+) - auc: ([\d.]+)")


def test_two_workers_train_together(dataset, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    args = ["-m", "muse_tf.train", "--data", dataset, "--model-dir", str(tmp_path / "run"),
            "--no-export", "--no-eval", "--verbose", "1", "--set", "train.steps_per_epoch=4", *TINY]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env={**os.environ, "TF_CONFIG": json.dumps(tf_config)}))
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    failures = [f"worker {i}: {err[-2000:]}" for i, (p, (_, err)) in enumerate(zip(procs, outputs))
                if p.returncode != 0]
    assert not failures, "\n".join(failures)
    result = _metrics(tmp_path / "run")
    assert result["replicas"] == 2
    assert result["optimizer_iterations"] == result["expected_iterations"] == 4
    # Only the chief names the run directory; the other worker says which task it is.
    (chief, _), (other, _) = outputs
    assert f"run directory {tmp_path / 'run'}" in chief and "Run directory:" in chief
    assert str(tmp_path / "run") not in other and "as worker-1 of the cluster" in other, other
    # Every figure the chief's progress bar shows at the epoch's last step is the epoch's own
    # (history.csv), not a sum over the workers.
    with open(RunDir(str(tmp_path / "run")).history) as f:
        epoch = next(csv.DictReader(f))
    shown = [match.groups()[2:] for match in PROGRESS.finditer(chief) if match[1] == match[2]]
    # At least the epoch's end; the last step's own update too unless the bar throttled it.
    assert shown, chief
    for loss, auc in shown:
        assert float(loss) == pytest.approx(float(epoch["loss"]), abs=1e-4)
        assert float(auc) == pytest.approx(float(epoch["auc"]), abs=1e-4)


def _backup_exists(model_dir):
    return RunDir(str(model_dir)).has_backup()


def test_a_killed_run_resumes_from_its_backup(dataset, tmp_path):
    model_dir = tmp_path / "run"
    args = ["-m", "muse_tf.train", "--data", dataset, "--model-dir", str(model_dir), "--no-export",
            "--no-eval", "--verbose", "0", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=40",
            "--set", "train.backup_every_steps=3", *TINY]
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not _backup_exists(model_dir) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let it get past the first backup, mid-epoch
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # Restarting with another model must not restore the half-trained one into it.
    other = run([*args, "--set", "model.use_cross=true"], timeout=300)
    assert other.returncode != 0
    assert "another config" in other.stderr and "--overwrite" in other.stderr, other.stderr[-2000:]
    proc = run(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _metrics(model_dir)
    assert result["optimizer_iterations"] == result["expected_iterations"] == 80
    assert 0 < result["resumed_from_step"] < 80
    assert result["steps_run"] == 80 - result["resumed_from_step"]
    epoch, step = divmod(result["resumed_from_step"], 40)
    assert (f"Resuming from the backup: epoch {epoch + 1} of 2, after step {step} of 40 (optimizer "
            f"step {result['resumed_from_step']} of 80)") in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("chief", [True, False])
def test_the_chief_reads_the_tables_digest_and_a_fresh_worker_does_not(
    dataset, tmp_path, monkeypatch, chief
):
    """The chief records the frozen table's digest (``dataset.json``) and a resume checks it; a
    worker of a cluster starting afresh needs it for neither, so it leaves the table (1.3 GB at 10M
    item rows) unread."""
    asked = []
    monkeypatch.setattr(dataset_dir, "start_multimodal_table_digest", asked.append)
    monkeypatch.setattr(dataset_dir, "multimodal_table_digest",
                        lambda data_dir: asked.append(data_dir) or "")
    monkeypatch.setattr(distribute, "is_chief", lambda: chief)
    monkeypatch.setattr(distribute, "task_name", lambda: "chief-0" if chief else "worker-1")
    train.main(["--data", dataset, "--model-dir", str(tmp_path / "run"), "--verbose", "0",
                "--no-export", "--no-eval", "--set", "train.steps_per_epoch=2", *TINY])
    assert bool(asked) == chief


def test_training_logs_no_slow_callback_warning(dataset, tmp_path):
    """Keras times the step hooks of the first five steps; TensorBoard's one-off work after the
    first step outlasted a small model's steps."""
    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        train.main(["--data", dataset, "--model-dir", str(tmp_path / "run"), "--verbose", "0",
                    "--no-export", "--no-eval", "--set", "train.steps_per_epoch=8", *TINY])
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [w for w in warnings if "is slow compared to the batch time" in w], warnings
    assert os.listdir(tmp_path / "run" / "logs" / "train")  # TensorBoard still writes


class _Killed(Exception):
    """Ends training where a kill would."""


class _SnapshotThenKill:
    """A callback that records every model and optimizer variable right after the backup (the
    first callback) has backed step ``at_step`` up, or once the backup has restored
    (``at_step=None``), then ends training as a kill would."""

    def __init__(self, at_step=None):
        snapshot = self.snapshot = {}

        def record(model):
            owners = {"model": model.variables, "dense": model.optimizer.variables,
                      "tables": model.embedding_optimizer.variables}
            # By position: a second model in one process gets other variable names.
            snapshot.update({f"{owner}/{i}/{v.name.split('/')[-1]}": np.array(v.numpy())
                             for owner, vs in owners.items() for i, v in enumerate(vs)})
            raise _Killed()

        class Callback(tf_keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if at_step is None:  # the moments are created (and restored) on first use
                    self.model.optimizer.build(self.model.dense_trainable_variables)
                    self.model.embedding_optimizer.build(self.model.embedding_trainable_variables)
                    record(self.model)

            def on_train_batch_end(self, batch, logs=None):
                if batch + 1 == at_step:
                    record(self.model)

        self.callback = Callback()


def test_a_run_killed_after_a_backup_resumes_bit_exact_without_the_table_in_it(
    dataset, tmp_path, monkeypatch, random_normal_draws
):
    """The backup leaves the frozen multimodal table out (its bytes are not written), yet the
    resumed state (every weight, the table reloaded from the dataset, every optimizer moment and
    counter) equals the backed-up state bit for bit; no ID table is drawn at random only for the
    backup to overwrite it."""
    model_dir = tmp_path / "run"
    make_callbacks = training.make_callbacks

    def run_until(kill):
        def callbacks(*args, **kwargs):
            made = make_callbacks(*args, **kwargs)
            return [made[0], kill.callback, *made[1:]]  # right after the backup

        monkeypatch.setattr(training, "make_callbacks", callbacks)
        with pytest.raises(_Killed):
            train.main(["--data", dataset, "--model-dir", str(model_dir), "--verbose", "0",
                        "--no-eval", "--no-export", "--set", "train.steps_per_epoch=8",
                        "--set", "train.backup_every_steps=3", *TINY])
        return kill.snapshot

    backed_up = run_until(_SnapshotThenKill(at_step=6))
    backup.wait_for_backups()  # the kill left the step-6 backup being written in the background
    names = [name for name, _ in tf.train.list_variables(os.path.join(RunDir(str(model_dir)).backup,
                                                                      "chief"))]
    assert not [name for name in names if "multimodal" in name]
    assert any("tables/item/" in name for name in names)
    random_normal_draws.clear()
    restored = run_until(_SnapshotThenKill())
    assert random_normal_draws == []
    table = dataset_dir.load_multimodal_table(dataset)
    assert restored.keys() == backed_up.keys(), set(restored) ^ set(backed_up)
    for name, value in backed_up.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    packed = np.ascontiguousarray(table).view(np.int32)  # four int8 values to an int32 word
    stored = [value for value in restored.values() if value.shape == packed.shape]
    assert len(stored) == 1
    np.testing.assert_array_equal(stored[0], packed)
    step = [value for name, value in restored.items() if name.endswith("iteration:0")]
    assert len(step) == 2 and all(int(value) == 6 for value in step)


def _run_args(dataset, model_dir):
    return ["--data", dataset, "--model-dir", str(model_dir), "--verbose", "0",
            "--set", "train.steps_per_epoch=3", "--set", "train.backup_every_steps=2", *TINY]


def _versions(base):
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


def test_a_finished_run_is_refused_unless_started_over(dataset, tmp_path, capsys):
    model_dir = tmp_path / "run"
    first = train.main(_run_args(dataset, model_dir))
    assert first["export"] == os.path.join(RunDir(str(model_dir)).export, "muse", "1")
    assert_usage_error(capsys, train.main, "muse_tf.train", "holds a finished run.*--overwrite",
                       _run_args(dataset, model_dir))
    assert len(_history_losses(model_dir)) == 1  # no second "epoch 0"
    assert _versions(os.path.join(RunDir(str(model_dir)).export, "muse")) == ["1"]
    again = train.main([*_run_args(dataset, model_dir), "--set", "model.use_cross=true",
                        "--overwrite"])
    assert again["optimizer_iterations"] == again["steps_run"] == 3
    assert len(_history_losses(model_dir)) == 1
    assert _versions(os.path.join(RunDir(str(model_dir)).export, "muse")) == ["1"]
    model, experiment = load_trained_model(str(model_dir))
    assert experiment.model.use_cross and any("cross" in v.name for v in model.variables)


def test_a_failure_after_training_keeps_the_training(dataset, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "run"
    run_dir = RunDir(str(model_dir))

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(training, "export_saved_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train.main(_run_args(dataset, model_dir))
    assert run_dir.has_backup() and not run_dir.is_finished()
    # The final weights are the learned model: no frozen table (the dataset's), no moments.
    saved = [name for name, _ in tf.train.list_variables(run_dir.final_weights)]
    assert any("tables/item/" in name for name in saved)
    assert not [name for name in saved if "multimodal" in name or "optimizer" in name]
    weights = {p.name: p.read_bytes() for p in Path(run_dir.final).iterdir()}
    # Another config may not take over the trained model.
    assert_usage_error(capsys, train.main, "muse_tf.train", "another config.*--overwrite",
                       [*_run_args(dataset, model_dir), "--set", "model.use_cross=true"])
    monkeypatch.undo()
    result = train.main(_run_args(dataset, model_dir))
    # Straight to evaluation and export: no step trained again, the same weights exported.
    assert result["optimizer_iterations"] == result["steps_run"] == 3
    assert len(_history_losses(model_dir)) == 1
    assert {p.name: p.read_bytes() for p in Path(run_dir.final).iterdir()
            if p.name in weights} == weights
    assert Path(result["export"], "saved_model.pb").exists()
    assert run_dir.is_finished() and not os.path.exists(run_dir.backup)


def test_a_run_killed_before_its_final_weights_logs_each_epoch_once(dataset, tmp_path, monkeypatch):
    """The last epoch's end is not backed up (the final weights follow): a run killed in between
    trains that epoch again from the backup before, and its history row is written once."""
    from muse_tf.models import MuseModel

    model_dir = tmp_path / "run"
    save_weights = MuseModel.save_weights

    def killed(self, *args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(MuseModel, "save_weights", killed)
    args = ["--data", dataset, "--model-dir", str(model_dir), "--verbose", "0", "--no-eval",
            "--no-export", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3",
            "--set", "train.backup_every_steps=2", *TINY]
    with pytest.raises(_Killed):
        train.main(args)
    assert len(_history_losses(model_dir)) == 2  # both epochs ended and were logged
    monkeypatch.setattr(MuseModel, "save_weights", save_weights)
    result = train.main(args)
    assert result["resumed_from_step"] == 5  # the second epoch's mid-epoch backup
    with open(RunDir(str(model_dir)).history) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]


def test_a_damaged_test_shard_is_named(dataset, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = dataset_dir.split_files(str(damaged), "test")[0]
    content = Path(shard).read_bytes()
    Path(shard).write_bytes(content[: len(content) // 2])
    experiment = ExperimentConfig(train=TrainConfig(history_length=HISTORY, eval_batch_size=64))
    experiment.model.vocab_sizes = dataset_dir.vocab_sizes(str(damaged))
    with pytest.raises(ValueError, match=f"{os.path.basename(shard)} is damaged"):
        evaluation.evaluate_run(build_model(experiment), str(damaged), experiment.train,
                              str(tmp_path / "eval"))


def test_a_truncated_multimodal_table_ends_in_one_line_naming_it(dataset, tmp_path, capsys):
    """The table is loaded before the run records its start: once the file is whole again, the
    same command trains in the same directory."""
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    table = damaged / dataset_dir.MULTIMODAL_TABLE
    content = table.read_bytes()
    table.write_bytes(content[: len(content) // 2])
    argv = ["--data", str(damaged), "--model-dir", str(tmp_path / "run"), "--verbose", "0",
            "--no-eval", "--no-export", "--set", "train.warn_below_steps=0", *TINY]
    assert_usage_error(capsys, train.main, "muse_tf.train",
                       f"{re.escape(str(table))} is not a readable .npy array", argv)
    table.write_bytes(content)
    assert train.main(argv)["steps_run"] > 0


def test_an_empty_training_split_is_refused_not_waited_on(dataset, tmp_path):
    """A dataset whose training split holds no sample (an older conversion could write one) stops
    with a message before fitting; with no sample to repeat, fit would never return."""
    empty = tmp_path / "empty"
    shutil.copytree(dataset, empty)
    manifest = json.loads((empty / dataset_dir.MANIFEST).read_text())
    manifest["splits"]["train"]["samples_written"] = 0
    (empty / dataset_dir.MANIFEST).write_text(json.dumps(manifest))
    for shard in dataset_dir.split_files(str(empty), "train"):
        os.remove(shard)
    for steps in ([], ["--set", "train.steps_per_epoch=3"]):
        with pytest.raises(ValueError, match="training split holds no sample"):
            train.main(["--data", str(empty), "--model-dir", str(tmp_path / "run"), "--verbose",
                        "0", *TINY, *steps])


def test_a_second_training_in_a_busy_run_is_refused_naming_the_holder(dataset, tmp_path, capsys):
    run_dir = RunDir(str(tmp_path / "run"))
    with run_dir.hold():  # as the first training does
        assert_usage_error(capsys, train.main, "muse_tf.train",
                           rf"{run_dir.root} is in use by pid {os.getpid()} on "
                           rf"{socket.gethostname()}, running `.*pytest.*` since \d{{4}}-",
                           _run_args(dataset, run_dir.root))
    assert os.listdir(run_dir.root) == ["lock"]  # the second wrote nothing


def test_a_start_that_failed_does_not_block_the_corrected_command(dataset, tmp_path, monkeypatch):
    model_dir = tmp_path / "run"

    def failing(*args, **kwargs):
        raise ValueError("a mistake found once the run had started")

    monkeypatch.setattr(training, "keras_fit", failing)
    with pytest.raises(ValueError, match="once the run had started"):
        train.main([*_run_args(dataset, model_dir), "--set", "model.use_cross=true", "--no-export"])
    monkeypatch.undo()
    result = train.main([*_run_args(dataset, model_dir), "--no-export"])
    assert result["optimizer_iterations"] == result["steps_run"] == 3
    assert len(_history_losses(model_dir)) == 1
    _, experiment = load_trained_model(str(model_dir))
    assert not experiment.model.use_cross


@pytest.mark.parametrize("setting, message", [
    ("train.validation_split=valid", r"`train.validation_split`: .*no split 'valid'"),
    ("train.validation_fraction=1e-9", r"`train.validation_fraction` 1e-09 holds out no user"),
])
def test_validation_without_a_sample_is_refused_before_the_run_starts(
    dataset, tmp_path, capsys, setting, message
):
    assert_usage_error(capsys, train.main, "muse_tf.train", message,
                       [*_run_args(dataset, tmp_path / "run"), "--set", setting])
    assert not os.path.exists(RunDir(str(tmp_path / "run")).config)


def test_a_hold_out_of_every_user_is_refused_not_waited_on(dataset, tmp_path):
    """With no training user left, the repeated training stream would wait forever for a sample."""
    proc = run(["-m", "muse_tf.train", *_run_args(dataset, tmp_path / "run"),
                "--set", "train.validation_fraction=0.9999"], timeout=180)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "`train.validation_fraction` 0.9999 holds out every user" in lines[0]
