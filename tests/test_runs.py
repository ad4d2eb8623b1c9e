"""The run directory: a finished run's model comes back whole, or is refused naming what is missing."""

import dataclasses

import numpy as np
import pytest

from muse_tf import runs
from muse_tf.config import ExperimentConfig
from tests import serving_case as sc


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
