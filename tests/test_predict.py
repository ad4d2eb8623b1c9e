"""Scoring files (``python -m muse_tf.predict``): a tiny trained run scores the test split; the
written file's AUC/GAUC equal the run's evaluation, its raw IDs are the raw test samples', and the
export scores like the run."""

import errno
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import yaml

from muse_tf import evaluate, predict, train
from muse_tf.contract import dataset_dir
from muse_tf.jobs import evaluation
from muse_tf.jobs.runs import RunDir
from tests import reference
from tests.cli_helpers import assert_usage_error, full_disk_open
from tests.pipeline_helpers import DEMO_DIR as DEMO
from tests.test_train import TINY, dataset  # noqa: F401  (the tiny converted dataset fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):  # noqa: F811
    """A tiny finished run on ``dataset``: evaluated and exported (export/muse/1)."""
    model_dir = tmp_path_factory.mktemp("predict") / "run"
    train.main(["--data", dataset, "--model-dir", str(model_dir), "--verbose", "0",
                "--set", "train.steps_per_epoch=3", *TINY])
    return str(model_dir)


def _evaluation(model_dir):
    with open(RunDir(model_dir).metrics) as f:
        return json.load(f)["eval"]


def _raw_test_samples(dataset):  # noqa: F811
    """(user, item or None when the run's item vocabulary lacks it, label) of every raw test
    sample, read from the synthetic Parquet the dataset was converted from."""
    samples = pq.read_table(Path(dataset).parent / "parquet" / "test_samples.parquet").to_pydict()
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())
    return sorted((user, item if item in known else None, int(labels[1]))
                  for user, item, labels in zip(samples["129_1"], samples["205"], samples["label_0"]))


def test_scored_file_matches_evaluation_and_raw_ids(dataset, run_dir, tmp_path):  # noqa: F811
    output = tmp_path / "scores.parquet"
    result = predict.main(["--data", dataset, "--model-dir", run_dir, "--output", str(output),
                           "--batch-size", "64"])
    table = pq.read_table(output).to_pydict()
    evaluation = _evaluation(run_dir)
    assert result["rows"] == len(table["logit"]) == evaluation["examples"]

    labels, logits = np.array(table["label"]), np.array(table["logit"])
    users = np.array(table["user_id"])
    auc = reference.group_auc_bruteforce(labels, logits, np.zeros_like(users))
    gauc = reference.group_auc_bruteforce(labels, logits, users)
    assert auc == pytest.approx(evaluation["auc"], abs=1e-6)
    assert gauc == pytest.approx(evaluation["gauc"], abs=1e-6)
    np.testing.assert_allclose(table["probability"], 1 / (1 + np.exp(-logits)), rtol=1e-5)

    # Raw IDs: exactly the raw test samples (the conversion rejected none), unknown items null.
    assert not any(dataset_dir.load_manifest(dataset)["splits"]["test"]["rejected"].values())
    rows = sorted(zip(table["user_id"], table["item_id"], table["label"]),
                  key=lambda row: (row[0], -1 if row[1] is None else row[1], row[2]))
    expected = sorted(_raw_test_samples(dataset),
                      key=lambda row: (row[0], -1 if row[1] is None else row[1], row[2]))
    assert rows == expected
    assert result["unknown_items"] == sum(item is None for item in table["item_id"])

    # Streamed: one row group per batch of 64.
    groups = pq.ParquetFile(output).metadata.num_row_groups
    assert groups == math.ceil(result["rows"] / 64)


def test_export_scores_like_the_run_into_csv(dataset, run_dir, tmp_path):  # noqa: F811
    by_run = tmp_path / "run.parquet"
    by_export = tmp_path / "export.csv"
    predict.main(["--data", dataset, "--model-dir", run_dir, "--output", str(by_run), "--quiet"])
    # The export's model directory: the newest version is found (export/muse/1).
    predict.main(["--data", dataset, "--export", str(Path(RunDir(run_dir).export, "muse")),
                  "--output", str(by_export), "--quiet", "--batch-size", "50"])
    run_rows = pq.read_table(by_run).to_pydict()
    export_rows = pcsv.read_csv(by_export).to_pydict()
    for name in ("user_id", "item_id", "label"):
        assert export_rows[name] == run_rows[name], name
    np.testing.assert_allclose(export_rows["probability"], run_rows["probability"], atol=1e-5)
    np.testing.assert_allclose(export_rows["logit"], run_rows["logit"], atol=1e-4)


def test_a_damaged_shard_is_named_and_leaves_no_file(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = Path(damaged, dataset_dir.load_manifest(str(damaged))["splits"]["test"]["shards"][0]["file"])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    output = tmp_path / "scores.parquet"
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--data", str(damaged), "--model-dir", run_dir, "--output", str(output),
                      "--quiet"])
    assert exit_info.value.code == 2
    assert f"{shard.name} is damaged" in capsys.readouterr().err
    assert not list(tmp_path.glob("scores.parquet*"))


class _FullDiskParquetWriter:
    """pyarrow's writer on a full disk: it creates the file, then its OSError names no file."""

    def __init__(self, path, schema):
        open(path, "wb").close()

    def write_table(self, table):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space "
                                    "left on device")

    def close(self):
        pass


def test_a_full_disk_while_scoring_names_the_output_and_leaves_no_file(
        dataset, run_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pq, "ParquetWriter", _FullDiskParquetWriter)
    output = tmp_path / "scores.parquet"
    assert_usage_error(capsys, predict.main, "muse_tf.predict",
                       re.escape(f"Could not write {output}: Error writing bytes to file"),
                       ["--data", dataset, "--model-dir", run_dir, "--output", str(output),
                        "--quiet"])
    assert not list(tmp_path.glob("scores.parquet*"))


def test_a_full_disk_while_writing_the_evaluation_names_the_file(
        dataset, run_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(evaluation, "open", full_disk_open, raising=False)
    written = RunDir(str(tmp_path / "eval")).eval_metrics
    assert_usage_error(capsys, evaluate.main, "muse_tf.evaluate",
                       re.escape(f"Could not write {written}: No space left on device"),
                       ["--data", dataset, "--model-dir", run_dir, "--output",
                        str(tmp_path / "eval")])


def test_evaluate_keeps_the_runs_own_results_unless_overwrite(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    run = RunDir(str(tmp_path / "run"))
    shutil.copytree(run_dir, run.root)
    with open(run.eval_metrics, "w") as f:
        f.write("the run's own")
    argv = ["--data", dataset, "--model-dir", run.root]
    assert_usage_error(capsys, evaluate.main, "muse_tf.evaluate",
                       re.escape(f"{run.eval_metrics} already holds an evaluation") + ".*--output DIR.*"
                       "--overwrite", argv)
    assert Path(run.eval_metrics).read_text() == "the run's own"
    result = evaluate.main([*argv, "--overwrite"])
    assert result["gauc"] == pytest.approx(_evaluation(run_dir)["gauc"], abs=1e-6)
    with open(run.eval_metrics) as f:
        assert json.load(f)["examples"] == _evaluation(run_dir)["examples"]


@pytest.mark.parametrize("argv, message", [
    (["--data", ".", "--output", "scores.txt"], "unknown extension '.txt'"),
    (["--data", "no/such/dir", "--output", "scores.csv"], "no/such/dir.* is not a converted"),
    (["--data", ".", "--output", "scores.csv", "--batch-size", "0"],
     "--batch-size must be positive"),
])
def test_user_errors_are_one_line(argv, message, tmp_path, capsys):
    assert_usage_error(capsys, predict.main, "muse_tf.predict", message,
                       ["--model-dir", str(tmp_path), *argv])


def test_another_dataset_is_refused_naming_both_directories(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    """Vocabularies of the same sizes (scores from the wrong embedding rows) or larger (indices
    beyond the tables) are refused alike, before anything is scored."""
    for name, grow in (("same-sizes", False), ("larger", True)):
        other = tmp_path / name
        shutil.copytree(dataset, other)
        users = np.array(dataset_dir.load_vocabulary(str(other), "user"))
        users = np.r_[users, users[-1] + 1] if grow else np.r_[users[:-1], users[-1] + 1]
        np.save(dataset_dir.vocab_path(str(other), "user"), users)
        message = rf"--data {other} is not the dataset {run_dir} was trained on \({dataset}\)"
        output = tmp_path / "scores.parquet"
        assert_usage_error(capsys, predict.main, "muse_tf.predict", message,
                           ["--data", str(other), "--model-dir", run_dir, "--output", str(output)])
        assert not list(tmp_path.glob("scores.parquet*"))
    assert_usage_error(capsys, evaluate.main, "muse_tf.evaluate", message,
                       ["--data", str(other), "--model-dir", run_dir, "--output", str(tmp_path)])
    # Raw Parquet is converted with --data's vocabularies: the run is checked against --data
    # itself, before the conversion, so the line names it (not the temporary conversion).
    from pipelines import predict as raw_predict

    assert_usage_error(capsys, raw_predict.main, "pipelines.predict", message,
                       ["--parquet", str(Path(dataset).parent / "parquet"), "--data", str(other),
                        "--model-dir", run_dir, "--output", str(output), "--work-dir", str(tmp_path)])


def test_an_edited_config_is_refused_though_the_weights_fit(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    edited = tmp_path / "run"
    shutil.copytree(run_dir, edited)
    config = RunDir(str(edited)).config
    values = yaml.safe_load(Path(config).read_text())
    values["model"]["top_k"] = 3
    Path(config).write_text(yaml.safe_dump(values))
    assert_usage_error(capsys, predict.main, "muse_tf.predict",
                       f"{config} is not the config .* edited since; restore it",
                       ["--data", dataset, "--model-dir", str(edited), "--output",
                        str(tmp_path / "scores.csv")])


def test_help_loads_no_tensorflow():
    code = ("import sys; from muse_tf import predict; predict.arguments().format_help(); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def _with_rejected_samples(parquet_dir, target):
    """A copy of the raw tables whose test samples gain a malformed label and a user without
    features (two samples the join must reject, not lose) and a target item no vocabulary holds
    (scored, with a null item_id), and whose first test user (not the first sample's) gets three
    categories more than items (its samples rejected, every other user scored as before).

    Returns the samples in, the first sample and the malformed user."""
    import pyarrow as pa

    shutil.copytree(parquet_dir, target)
    path = Path(target, "test_samples.parquet")
    samples = pq.read_table(path)
    first = samples.slice(0, 1).to_pylist()[0]
    extra = [{**first, "label_0": [1, 1]}, {**first, "129_1": 987_654_321_987},
             {**first, "205": 987_654_321_987}]
    pq.write_table(pa.concat_tables([samples, pa.Table.from_pylist(extra, samples.schema)]), path)
    users_path = Path(target, "test_user_features.parquet")
    users = pq.read_table(users_path).to_pylist()
    row = next(r for r in users if r["129_1"] != first["129_1"])
    row["151_2_180"] = row["151_2_180"] + [1, 2, 3]
    pq.write_table(pa.Table.from_pylist(users, pq.read_schema(users_path)), users_path)
    return samples.num_rows + len(extra), first, row["129_1"]


def test_raw_parquet_scores_like_its_conversion(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    from pipelines import predict as raw_predict

    raw = tmp_path / "raw"
    samples_in, first, malformed = _with_rejected_samples(Path(dataset).parent / "parquet", raw)
    converted = tmp_path / "converted.parquet"
    predict.main(["--data", dataset, "--model-dir", run_dir, "--output", str(converted), "--quiet"])
    scored = tmp_path / "raw.parquet"
    work = tmp_path / "work"
    work.mkdir()
    result = raw_predict.main(["--parquet", str(raw), "--data", dataset, "--model-dir", run_dir,
                               "--output", str(scored), "--quiet", "--work-dir", str(work)])

    expected = pq.read_table(converted).to_pydict()
    malformed_rows = [u == malformed for u in expected["user_id"]]
    assert any(malformed_rows)
    expected = {name: [v for v, bad in zip(values, malformed_rows) if not bad]
                for name, values in expected.items()}
    assert result["samples_in"] == samples_in
    assert {k: v for k, v in result["rejected"].items() if v} == {
        "malformed_label": 1, "user_without_features": 1, "malformed_history": sum(malformed_rows)}
    assert result["rows"] + sum(result["rejected"].values()) == samples_in
    assert "1 with an item the run does not know" in capsys.readouterr().out
    actual = pq.read_table(scored).to_pydict()
    # The unknown item's sample: scored, its item_id null; the others as in the conversion.
    unknown = [i for i, item in enumerate(actual["item_id"]) if item is None]
    assert result["unknown_items"] == len(unknown) == 1
    assert actual["user_id"][unknown[0]] == first["129_1"]
    actual = {name: values[: unknown[0]] + values[unknown[0] + 1 :] for name, values in actual.items()}
    for name in ("user_id", "item_id", "label"):
        assert actual[name] == expected[name], name
    np.testing.assert_allclose(actual["logit"], expected["logit"], atol=1e-6)
    assert not list(work.iterdir())  # the temporary conversion is gone


def test_demo_parquet_loses_no_sample(dataset, run_dir, tmp_path):  # noqa: F811
    """The real demo's test tables: their samples' users are not in the demo's user features,
    so half of them are re-pointed at demo users (scored) and half kept (rejected)."""
    from pipelines import predict as raw_predict

    if not DEMO.is_dir():
        pytest.skip(f"the Taobao-MM demo Parquet is absent ({DEMO})")
    raw = tmp_path / "demo"
    shutil.copytree(DEMO, raw)
    samples = pq.read_table(raw / "test_samples.parquet").to_pandas()
    users = pq.read_table(raw / "test_user_features.parquet", columns=["129_1"])["129_1"]
    half = len(samples) // 2
    samples.loc[: half - 1, "129_1"] = np.resize(users.to_numpy(), half)
    samples.to_parquet(raw / "test_samples.parquet", index=False)

    result = raw_predict.main(["--parquet", str(raw), "--data", dataset, "--model-dir", run_dir,
                               "--output", str(tmp_path / "demo.csv"), "--quiet"])
    scored = pcsv.read_csv(tmp_path / "demo.csv").to_pydict()
    assert result["samples_in"] == len(samples)
    assert result["rows"] == len(scored["logit"]) == half
    assert {k: v for k, v in result["rejected"].items() if v} == {
        "user_without_features": len(samples) - half}
    # Real item IDs the synthetic run's vocabulary lacks come out null, none is invented.
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())
    expected = [item if item in known else None for item in samples["205"][:half]]
    assert sorted(scored["item_id"], key=str) == sorted(expected, key=str)
    assert sorted(scored["user_id"]) == sorted(samples["129_1"][:half])
