"""The run directory: a finished run's model comes back whole, or is refused naming what is missing;
one process at a time works in it; it is scored only with its own config and dataset."""

import concurrent.futures
import dataclasses
import gc
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import weakref

import numpy as np
import pytest
import tensorflow as tf
import yaml

from muse_tf import cli, evaluate, export
from muse_tf.config import ExperimentConfig
from muse_tf.contract import dataset_dir, lock
from muse_tf.jobs import runs
from tests import serving_case as sc
from tests.cli_helpers import assert_usage_error, full_disk_open
from tests.test_model import make_batch, make_model


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=3)


@pytest.fixture()
def data_dir(case, tmp_path):
    return sc.write_dataset(tmp_path / "data", case.vocabularies)


def _finished_run(tmp_path, case, model_config):
    data = sc.write_dataset(tmp_path / "run-data", case.vocabularies)
    return sc.write_finished_run(tmp_path / "run", case, data, model_config)


def _fake_backup(run):
    """What BackupAndRestore leaves once it has saved: the run has trained something."""
    os.makedirs(os.path.join(run.backup, "chief"), exist_ok=True)
    with open(os.path.join(run.backup, "chief", "checkpoint"), "w") as f:
        f.write("model_checkpoint_path: \"ckpt-1\"\n")


def test_a_finished_run_rebuilds_its_model(case, tmp_path, random_normal_draws):
    """Every weight comes back, and no ID table is drawn at random only to be overwritten."""
    run = _finished_run(tmp_path, case, case.model.config)
    random_normal_draws.clear()
    model, experiment = runs.load_trained_model(run.root)
    assert random_normal_draws == []
    assert experiment.model == case.model.config
    def names(variables):  # without the model's own (uniquified) name
        return [v.name.split("/", 1)[-1] for v in variables]

    assert names(model.variables) == names(case.model.variables)
    for rebuilt, saved in zip(model.variables, case.model.variables):
        np.testing.assert_array_equal(rebuilt.numpy(), saved.numpy())


def test_a_load_first_frees_a_model_dropped_before_it(case, tmp_path):
    """Evaluation after training loads the run's model while the trained one is garbage that
    Keras's reference cycles hold: the load collects it first, so the two never hold their
    tables at once (at 10M item rows the job's peak: 7.2 -> 5.9 GB)."""
    run = _finished_run(tmp_path, case, case.model.config)
    trained, _ = make_model("din")
    trained.compile(optimizer="adam")
    x = make_batch(np.random.default_rng(1))
    trained.fit(x, np.ones(8, np.float32), verbose=0)
    gone = weakref.ref(trained)
    gc.disable()
    try:
        del trained
        assert gone() is not None  # only a collection frees it
        runs.load_trained_model(run.root)
        assert gone() is None
    finally:
        gc.enable()


def test_final_weights_leave_the_frozen_table_to_the_dataset(case, tmp_path):
    """The final weights hold no multimodal table: a load takes the run's own, from ``--data``
    when it holds it, else from the dataset the run records (``--data`` may hold other vectors,
    as a conversion of raw candidates does), and refuses to load without it, naming the files."""
    run = _finished_run(tmp_path, case, case.model.config)
    assert not [name for name, _ in tf.train.list_variables(run.final_weights) if "multimodal" in name]
    data = str(tmp_path / "run-data")
    trained_table = np.load(os.path.join(data, dataset_dir.MULTIMODAL_TABLE))
    other = str(tmp_path / "other")
    shutil.copytree(data, other)
    path = os.path.join(other, dataset_dir.MULTIMODAL_TABLE)
    np.save(path, np.zeros_like(trained_table))
    for data_dir in (None, other):
        model, _ = runs.load_trained_model(run.root, data_dir)
        np.testing.assert_array_equal(model.multimodal.get_table(), trained_table)
    shutil.rmtree(data)
    with pytest.raises(runs.RunDirectoryError, match=f"which neither {re.escape(path)} nor "
                       f"{re.escape(os.path.join(data, dataset_dir.MULTIMODAL_TABLE))} holds"):
        runs.load_trained_model(run.root, other)


def test_weights_that_do_not_cover_the_model_are_refused(case, tmp_path):
    # config.yaml asks for a DCN cross layer the saved weights never had.
    run = _finished_run(tmp_path, case, dataclasses.replace(case.model.config, use_cross=True))
    with pytest.raises(runs.RunDirectoryError, match=r"do not cover the model; missing: .*cross"):
        runs.load_trained_model(run.root)


@pytest.mark.parametrize("damaged", ["data-*", "index"])
def test_truncated_weights_are_refused_naming_them(case, tmp_path, damaged):
    run = _finished_run(tmp_path, case, case.model.config)
    (path,) = glob.glob(f"{run.final_weights}.{damaged}")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    message = re.escape(f"The weights {run.final_weights} (.index and .data-* files) are damaged "
                        "or truncated")
    with pytest.raises(runs.RunDirectoryError, match=message):
        runs.load_trained_model(run.root)


def test_a_command_loading_truncated_weights_ends_in_one_line_naming_them(case, tmp_path, capsys):
    """Evaluate, export and predict load a run through ``runs.load_trained_model``."""
    run = _finished_run(tmp_path, case, case.model.config)
    (path,) = glob.glob(f"{run.final_weights}.data-*")
    with open(path, "r+b") as f:
        f.truncate(100)
    data = json.loads(open(run.dataset_record).read())["data"]  # the run's own dataset
    assert_usage_error(capsys, export.main, "muse_tf.export",
                       re.escape(f"The weights {run.final_weights} ") + ".* Read less bytes",
                       ["--data", str(data), "--model-dir", run.root,
                        "--export-dir", str(tmp_path / "exports")])


def test_a_full_disk_while_writing_a_run_file_names_it(tmp_path, monkeypatch):
    run = runs.RunDir(str(tmp_path / "run"))
    monkeypatch.setattr(runs, "open", full_disk_open, raising=False)
    with pytest.raises(cli.WriteError) as error:
        run.write_config(ExperimentConfig())
    assert str(error.value) == f"Could not write {run.config}: No space left on device"
    assert isinstance(error.value, OSError)  # for library callers, as before


def test_an_unfinished_run_of_another_config_is_refused(data_dir, tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    first = ExperimentConfig()
    assert run.check_can_start(first, data_dir) is None  # an empty directory
    run.start(first, data_dir)
    _fake_backup(run)
    assert run.check_can_start(ExperimentConfig(), data_dir) is None  # the same config continues
    other = ExperimentConfig()
    other.model.use_cross = True
    with pytest.raises(runs.RunDirectoryError, match="unfinished run of another config.*--overwrite"):
        run.check_can_start(other, data_dir)


def test_a_start_that_never_backed_up_does_not_block_another_config(data_dir, tmp_path):
    """A start that failed before its first backup (e.g. on a config error) trained nothing: the
    corrected command may start afresh."""
    run = runs.RunDir(str(tmp_path / "run"))
    run.start(ExperimentConfig(), data_dir)
    other = ExperimentConfig()
    other.model.use_cross = True
    assert run.check_can_start(other, data_dir) is None


def test_resuming_on_another_dataset_is_refused(case, data_dir, tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    run.start(ExperimentConfig(), data_dir)
    _fake_backup(run)
    other = sc.write_dataset(tmp_path / "other", {**case.vocabularies,
                                                  "user": case.vocabularies["user"][::-1]})
    with pytest.raises(runs.RunDirectoryError, match=f"--data {other} is not the dataset"):
        run.check_can_start(ExperimentConfig(), other)


def test_resuming_with_another_multimodal_table_is_refused_naming_it(data_dir, tmp_path):
    """The backup leaves the frozen table out: a resume reloads it, so it must be the same file."""
    run = runs.RunDir(str(tmp_path / "run"))
    run.start(ExperimentConfig(), data_dir)
    _fake_backup(run)
    path = os.path.join(data_dir, dataset_dir.MULTIMODAL_TABLE)
    table = np.load(path)
    assert run.check_can_start(ExperimentConfig(), data_dir) is None  # the same table
    table[1, 0] = 1
    np.save(path, table)
    with pytest.raises(runs.RunDirectoryError, match=f"^{re.escape(path)} is not the multimodal "
                       "table .*--overwrite"):
        run.check_can_start(ExperimentConfig(), data_dir)


def test_table_digest_is_read_once_per_version_of_the_file(data_dir, monkeypatch):
    """A settled file is read once however often a run asks; a rewrite is read again, even one
    made within the same clock tick as the read (the file just written is never remembered)."""
    path = os.path.join(data_dir, dataset_dir.MULTIMODAL_TABLE)
    reads = []
    real_open = dataset_dir.open_file
    monkeypatch.setattr(dataset_dir, "open_file", lambda p, mode="r": reads.append(p) or real_open(p, mode))

    def sha256():
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def rewrite(settled: bool):
        table = np.load(path)
        table[1, 0] = (int(table[1, 0]) + 1) % 100
        np.save(path, table)
        if settled:
            old = os.stat(path).st_mtime - 60
            os.utime(path, (old, old))

    rewrite(settled=True)
    assert [dataset_dir.multimodal_table_digest(data_dir) for _ in range(3)] == [sha256()] * 3
    assert len(reads) == 1
    rewrite(settled=False)  # a new version, just written: read at each ask
    for _ in range(2):
        assert dataset_dir.multimodal_table_digest(data_dir) == sha256()
        rewrite(settled=False)
    assert dataset_dir.multimodal_table_digest(data_dir) == sha256()
    assert len(reads) == 4


def test_an_ask_during_the_background_read_of_the_digest_waits_for_it(data_dir, monkeypatch):
    """The read ``start_multimodal_table_digest`` begins is the one an ask gets: the file is read
    once, not again by an ask made while it runs; an error is raised by the ask, not lost."""
    path = os.path.join(data_dir, dataset_dir.MULTIMODAL_TABLE)
    old = os.stat(path).st_mtime - 60  # settled: remembered once read
    os.utime(path, (old, old))
    reads, reading, release = [], threading.Event(), threading.Event()
    real_open = dataset_dir.open_file

    def gated_open(p, mode="r"):
        reads.append(threading.current_thread().name)
        reading.set()
        assert release.wait(30)
        return real_open(p, mode)

    monkeypatch.setattr(dataset_dir, "open_file", gated_open)
    dataset_dir.start_multimodal_table_digest(data_dir)
    assert reading.wait(30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asked = pool.submit(dataset_dir.multimodal_table_digest, data_dir)
        # Time for an ask that did not wait to reach the file (and be counted) before the release.
        assert not concurrent.futures.wait([asked], timeout=0.5).done
        release.set()
        with open(path, "rb") as f:
            assert asked.result(30) == hashlib.sha256(f.read()).hexdigest()
    assert len(reads) == 1

    os.remove(path)
    dataset_dir.start_multimodal_table_digest(data_dir)
    with pytest.raises(FileNotFoundError, match="multimodal_table.npy"):
        dataset_dir.multimodal_table_digest(data_dir)


def test_starting_over_deletes_the_run_and_nothing_else(data_dir, tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    run.start(ExperimentConfig(), data_dir)
    run.finish({"steps_run": 1})
    (tmp_path / "run" / "notes.txt").write_text("kept")
    with pytest.raises(runs.RunDirectoryError, match="finished run.*--overwrite"):
        run.check_can_start(ExperimentConfig(), data_dir)
    run.clear()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    assert run.check_can_start(ExperimentConfig(), data_dir) is None


# -- one process at a time -------------------------------------------------------------------

def _export_argv(run, data_dir, tmp_path):
    return ["--model-dir", run.root, "--data", data_dir, "--export-dir", str(tmp_path / "out")]


def test_evaluation_and_export_of_a_busy_run_are_refused_naming_the_holder(case, tmp_path, capsys):
    run = _finished_run(tmp_path, case, case.model.config)
    data = json.loads(open(run.dataset_record).read())["data"]
    holder = rf"pid {os.getpid()} on {socket.gethostname()}, running `.*pytest.*` since \d{{4}}-"
    with run.hold():
        assert_usage_error(capsys, export.main, "muse_tf.export", f"{run.root} is in use by {holder}",
                           _export_argv(run, data, tmp_path))
        assert_usage_error(capsys, evaluate.main, "muse_tf.evaluate", f"is in use by {holder}",
                           ["--model-dir", run.root, "--data", data])
    assert not (tmp_path / "out").exists()
    assert os.path.getsize(run.lock) == 0  # released: nobody holds it


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_holder(run, **holder):
    os.makedirs(run.root, exist_ok=True)
    with open(run.lock, "w") as f:
        json.dump({"pid": _dead_pid(), "host": socket.gethostname(), "command": "python -m x",
                   "started": "2026-01-01T00:00:00+00:00", **holder}, f)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    run = runs.RunDir(str(tmp_path / "run"))
    _write_holder(run)
    with run.hold():
        assert json.loads(open(run.lock).read())["pid"] == os.getpid()
    assert "Taking over the stale lock" in capsys.readouterr().out
    assert os.path.getsize(run.lock) == 0


def test_a_lock_of_a_live_process_or_of_another_host_is_not_taken_over(tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    # A record without a flock (as on a filesystem without flock): its process decides.
    _write_holder(run, pid=os.getppid())
    with pytest.raises(lock.BusyError, match=f"pid {os.getppid()} on "):
        with run.hold():
            pass
    _write_holder(run, host="elsewhere.example")
    with pytest.raises(lock.BusyError,
                       match=f"on elsewhere.example.*If that process is gone, delete {run.lock}"):
        with run.hold():
            pass


def test_a_worker_holds_its_own_lock_beside_the_chiefs(tmp_path, monkeypatch):
    run = runs.RunDir(str(tmp_path / "run"))
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    with run.hold():  # worker 0, the chief
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                    "task": {"type": "worker", "index": 1}}))
        worker = run.worker()
        assert worker.lock == str(tmp_path / "run" / "workers" / "worker-1" / "lock")
        with worker.hold():
            pass


# -- scored only with its own config and dataset ----------------------------------------------

def test_a_run_recorded_before_the_short_term_attention_option_rebuilds_its_din_model(tmp_path):
    """Runs before ``short_term_attention`` trained DIN's unit and wrote neither the key nor a
    digest of it: such a run still loads, as DIN's unit, and its digest still matches."""
    old = sc.make_case(seed=4, short_term_attention="din")
    run = _finished_run(tmp_path, old, old.model.config)
    values = yaml.safe_load(open(run.config))
    del values["model"]["short_term_attention"]  # config.yaml and digest as the old version wrote
    with open(run.config, "w") as f:
        yaml.safe_dump(values, f)
    record = json.loads(open(run.training_record).read())
    record["config_sha256"] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    with open(run.training_record, "w") as f:
        json.dump(record, f)
    model, experiment = runs.load_trained_model(run.root)
    assert experiment.model.short_term_attention == "din"
    assert type(model.short_term.attention).__name__ == "TargetAttention"
    for rebuilt, saved in zip(model.variables, old.model.variables):
        np.testing.assert_array_equal(rebuilt.numpy(), saved.numpy())


def test_an_edited_config_is_refused_though_the_weights_fit(case, tmp_path, capsys):
    run = _finished_run(tmp_path, case, case.model.config)
    values = yaml.safe_load(open(run.config))
    values["model"]["top_k"] = 3  # the same variables: the weights would load
    with open(run.config, "w") as f:
        yaml.safe_dump(values, f)
    with pytest.raises(runs.RunDirectoryError, match=f"{run.config} is not the config .* edited"):
        runs.load_trained_model(run.root)
    data = json.loads(open(run.dataset_record).read())["data"]
    assert_usage_error(capsys, export.main, "muse_tf.export",
                       f"{run.config} is not the config.*restore it", _export_argv(run, data, tmp_path))
    assert not (tmp_path / "out").exists()


def test_another_dataset_of_the_same_sizes_is_refused_naming_both(case, tmp_path, capsys):
    run = _finished_run(tmp_path, case, case.model.config)
    trained_on = json.loads(open(run.dataset_record).read())["data"]
    runs.load_trained_model(run.root, trained_on)  # its own dataset
    shifted = {**case.vocabularies, "item": case.vocabularies["item"] + 1}  # the same sizes
    other = sc.write_dataset(tmp_path / "other", shifted)
    message = f"--data {other} is not the dataset {run.root} was trained on \\({trained_on}\\)"
    with pytest.raises(runs.RunDirectoryError, match=message):
        runs.load_trained_model(run.root, other)
    assert_usage_error(capsys, export.main, "muse_tf.export", message,
                       _export_argv(run, other, tmp_path))
    os.remove(run.dataset_record)  # a run of an older muse_tf
    with pytest.raises(runs.RunDirectoryError, match="does not record the dataset.*--overwrite"):
        runs.load_trained_model(run.root, trained_on)


# -- one served name, one run -----------------------------------------------------------------

def test_export_into_a_name_holding_another_runs_versions_is_refused_naming_both(case, tmp_path, capsys):
    data = sc.write_dataset(tmp_path / "data", case.vocabularies)
    first = sc.write_finished_run(tmp_path / "first", case, data)
    second = sc.write_finished_run(tmp_path / "second", case, data)
    second.record_training(ExperimentConfig(model=case.model.config), {"steps_run": 1})
    out = tmp_path / "out" / "muse"
    assert export.main(_export_argv(first, data, tmp_path)) == str(out / "1")
    # The same run again is a new version of the same model.
    assert export.main(_export_argv(first, data, tmp_path)) == str(out / "2")
    assert_usage_error(
        capsys, export.main, "muse_tf.export",
        f"{out} holds version 1 of the run {first.root}; adding the run {second.root} .*"
        "--allow-other-runs", _export_argv(second, data, tmp_path),
    )
    assert sorted(os.listdir(out)) == ["1", "2"]
    # Training the first run over makes it another model: refused too.
    first.record_training(ExperimentConfig(model=case.model.config), {"steps_run": 3})
    assert_usage_error(capsys, export.main, "muse_tf.export", f"the run {first.root}; adding",
                       _export_argv(first, data, tmp_path))
    assert export.main([*_export_argv(second, data, tmp_path), "--allow-other-runs"]) == str(out / "3")
    with open(out / "3" / "assets.extra" / "source_run.json") as f:
        assert json.load(f)["run"] == os.path.abspath(second.root)

