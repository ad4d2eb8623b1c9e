"""benchmarks.versus_official without torch: a missing official checkout or torch Python is one line
naming the flag, and the official side's inputs hold muse-tf's batch, vocabularies and table."""

import numpy as np
import pytest

from benchmarks import fixtures, versus_official
from muse_tf.contract.feature_spec import TAOBAO_MM
from tests.cli_helpers import assert_usage_error

MODULE = "benchmarks.versus_official"


@pytest.fixture()
def official_dir(tmp_path):
    """A directory that passes for a checkout of the official code until it is imported."""
    (tmp_path / "MUSE" / "model").mkdir(parents=True)
    (tmp_path / "MUSE" / "model" / "muse.py").write_text("")
    return tmp_path / "MUSE"


@pytest.fixture()
def python_without_torch(tmp_path):
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    path.chmod(0o755)
    return path


def test_a_missing_official_checkout_torch_python_or_malloc_is_one_line_naming_the_flag(
        capsys, tmp_path, official_dir, python_without_torch):
    for argv, pattern in [
        ([], "--official-dir is required"),
        (["--official-dir", str(tmp_path / "absent")], "--official-dir .*absent holds no model/muse.py"),
        (["--official-dir", str(official_dir)], "--torch-python is required"),
        (["--official-dir", str(official_dir), "--torch-python", str(tmp_path / "absent")],
         "--torch-python .*absent cannot be run"),
        (["--official-dir", str(official_dir), "--torch-python", str(python_without_torch)],
         "--torch-python .*python cannot import torch: ModuleNotFoundError"),
        (["--official-dir", str(official_dir), "--torch-python", str(python_without_torch),
          "--official-malloc", str(tmp_path / "libabsent.so")],
         "--official-malloc .*libabsent.so does not exist"),
    ]:
        assert_usage_error(capsys, versus_official.main, MODULE, pattern,
                           [*argv, "--output", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


def test_the_official_inputs_hold_the_same_batch_vocabularies_and_table(tmp_path):
    path = tmp_path / "inputs.npz"
    versus_official.write_inputs(str(path), 24, 30)
    sizes = fixtures.train_vocab_sizes()
    x, y = fixtures.training_batch(sizes, 24, 30)
    table = fixtures.multimodal_table(sizes["item"])
    with np.load(path) as data:
        for column, feature in TAOBAO_MM.column_feature.items():
            ids = data[f"batch/{column}"]
            np.testing.assert_array_equal(ids, x[feature].numpy(), err_msg=column)
            rows = int(data[f"rows/{column}"])
            assert rows == sizes[TAOBAO_MM.vocabulary[feature]], column
            # The official lookup: position in the sorted raw IDs + 1, 0 when absent.
            keys = np.arange(1, rows)
            position = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            np.testing.assert_array_equal(np.where(keys[position] == ids, position + 1, 0), ids)
        np.testing.assert_array_equal(data["batch/label"], np.stack([1 - y, y], 1).astype(np.int64))
        # The official table: the keys' rows, a zero row for every other item.
        rebuilt = np.zeros_like(table)
        rebuilt[data["scl_keys"]] = data["scl_values"]
        np.testing.assert_array_equal(rebuilt, table)
        assert data["scl_values"].dtype == np.int8 and data["scl_values"].any(axis=1).all()
