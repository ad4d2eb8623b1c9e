"""The run directory: a finished run's model comes back whole, or is refused naming what is missing."""

import dataclasses
import glob
import json
import os
import re

import numpy as np
import pytest

from muse_tf import artifacts, cli, export, runs
from muse_tf.config import ExperimentConfig
from tests import serving_case as sc
from tests.cli_helpers import assert_usage_error, full_disk_open


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=3)


def _finished_run(tmp_path, case, model_config):
    run = runs.RunDir(str(tmp_path / "run"))
    run.write_config(ExperimentConfig(model=model_config))
    case.model.save_weights(run.final_weights)
    return run


def test_a_finished_run_rebuilds_its_model(case, tmp_path):
    run = _finished_run(tmp_path, case, case.model.config)
    model, experiment = runs.load_trained_model(run.root)
    assert experiment.model == case.model.config
    def names(variables):  # without the model's own (uniquified) name
        return [v.name.split("/", 1)[-1] for v in variables]

    assert names(model.variables) == names(case.model.variables)
    for rebuilt, saved in zip(model.variables, case.model.variables):
        np.testing.assert_array_equal(rebuilt.numpy(), saved.numpy())


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
    data = tmp_path / "data"  # passes for a converted dataset: the weights are read first
    data.mkdir()
    (data / artifacts.MANIFEST).write_text(json.dumps({"schema_version": artifacts.SCHEMA_VERSION}))
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


def test_an_unfinished_run_of_another_config_is_refused(tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    first = ExperimentConfig()
    assert run.check_can_start(first) is None  # an empty directory
    run.start(first)
    assert run.check_can_start(ExperimentConfig()) is None  # the same config continues
    other = ExperimentConfig()
    other.model.use_cross = True
    with pytest.raises(runs.RunDirectoryError, match="unfinished run of another config.*--overwrite"):
        run.check_can_start(other)


def test_starting_over_deletes_the_run_and_nothing_else(tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    run.start(ExperimentConfig())
    run.finish({"steps_run": 1})
    (tmp_path / "run" / "notes.txt").write_text("kept")
    with pytest.raises(runs.RunDirectoryError, match="finished run.*--overwrite"):
        run.check_can_start(ExperimentConfig())
    run.clear()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    assert run.check_can_start(ExperimentConfig()) is None
