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
import pandas as pd
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import yaml

from muse_tf import evaluate, predict, train
from muse_tf.contract import dataset_dir
from muse_tf.contract.feature_spec import TAOBAO_MM
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
    assert "1 with an item the run does not know (scored as OOV)" in capsys.readouterr().out
    actual = pq.read_table(scored).to_pydict()
    # In the input's order: the raw samples but the rejected ones (the malformed label, the user
    # without features, the malformed user's), with raw IDs: the unknown item's too.
    samples = pq.read_table(raw / "test_samples.parquet").to_pydict()
    rejected = {samples_in - 3, samples_in - 2}
    kept = [i for i, user in enumerate(samples["129_1"]) if user != malformed and i not in rejected]
    assert actual["user_id"] == [samples["129_1"][i] for i in kept]
    assert actual["item_id"] == [samples["205"][i] for i in kept]
    assert actual["label"] == [samples["label_0"][i][1] for i in kept]
    assert result["unknown_items"] == 1 and actual["item_id"][-1] == 987_654_321_987
    # The scores are the conversion's (which lists them by user, an unknown item as null).
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())

    def by_sample(table, drop_last=False):
        rows = list(zip(table["user_id"], table["item_id"], table["label"], table["logit"]))
        rows = [(u, i if i in known else -1, label, logit) for u, i, label, logit in rows]
        return sorted(rows[:-1] if drop_last else rows)

    actual_rows, expected_rows = by_sample(actual, drop_last=True), by_sample(expected)
    assert [row[:3] for row in actual_rows] == [row[:3] for row in expected_rows]
    np.testing.assert_allclose([row[3] for row in actual_rows], [row[3] for row in expected_rows],
                               atol=1e-6)
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
    # The scored half in the input's order, with the real item IDs the synthetic run's
    # vocabulary lacks (scored as OOV, counted).
    assert scored["user_id"] == samples["129_1"][:half].tolist()
    assert scored["item_id"] == samples["205"][:half].tolist()
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())
    assert result["unknown_items"] == sum(item not in known for item in samples["205"][:half])


def _signature_logits(export_dir, raw_dir, candidates, data_dir):
    """The reference: every candidate row scored by the export's ``serving_default`` with raw IDs
    read from the raw tables, as a client builds them (history: the user's first row, missing
    items dropped, the most recent ``history_cap``). As the conversion rules say, a target item
    ``data_dir``'s vocabulary lacks has no category or attributes, and any other ID it lacks is
    unknown (0); the target item's own ID is always given."""
    import tensorflow as tf

    from muse_tf.contract import features, signatures, vocabulary

    vocabularies = dataset_dir.load_vocabularies(data_dir)
    cap = dataset_dir.load_manifest(data_dir)["history_cap"]
    users = pq.read_table(raw_dir / "test_user_features.parquet").to_pandas()
    users = users.drop_duplicates("129_1").set_index("129_1")
    items = pq.read_table(raw_dir / "item_features.parquet").to_pandas()
    items = items.drop_duplicates("205").set_index("205")
    known_items = set(vocabularies["item"].tolist())
    unknown = {name: vocabulary.unknown_id(ids) for name, ids in vocabularies.items()}
    inputs = {name: [] for name in (*TAOBAO_MM.model_features, signatures.VALID_HISTORY_LENGTH)}
    def known(name, raw):
        ids = vocabularies[TAOBAO_MM.vocabulary[name]]
        return np.where(np.isin(raw, ids), raw, unknown[TAOBAO_MM.vocabulary[name]])

    for user, item in zip(candidates["129_1"], candidates["205"]):
        row = users.loc[user]
        history = np.asarray(row["150_2_180"], np.int64)
        categories = np.asarray(row["151_2_180"], np.int64)[history != 0][-cap:]
        history = known(features.HISTORY_ITEMS, history[history != 0][-cap:])
        categories = known(features.HISTORY_CATEGORIES, categories)
        inputs[features.USER_ID].append(known(features.USER_ID, user))
        for i, name in enumerate(TAOBAO_MM.profile_features, start=1):
            inputs[name].append(known(name, row[f"130_{i}"]))
        inputs[features.ITEM_ID].append(item)
        attributes = items.loc[item] if item in known_items and item in items.index else None
        for name, column in zip((features.ITEM_CATEGORY, *TAOBAO_MM.attribute_features),
                                ("206", "213", "214")):
            table = TAOBAO_MM.vocabulary[name]
            inputs[name].append(unknown[table] if attributes is None
                                else known(name, attributes[column]))
        inputs[features.HISTORY_ITEMS].append(history)
        inputs[features.HISTORY_CATEGORIES].append(categories)
        inputs[signatures.VALID_HISTORY_LENGTH].append(len(history))
    width = max(inputs[signatures.VALID_HISTORY_LENGTH])
    for name in features.SEQUENCE_FEATURES:
        inputs[name] = [np.pad(values, (0, width - len(values))) for values in inputs[name]]
    signature = tf.saved_model.load(str(export_dir)).signatures[signatures.SERVING_DEFAULT]
    logits = []
    for start in range(0, len(candidates), 50):
        batch = {name: tf.constant(np.asarray(values[start:start + 50], np.int64))
                 for name, values in inputs.items()}
        logits.append(signature(**batch)[signatures.LOGIT].numpy().ravel())
    return np.concatenate(logits)


def _label_free_candidates(parquet_dir, target, new_items_per_user=3, seed=0):
    """A candidates copy of the raw test tables: the test samples plus ``new_items_per_user`` items
    no table knows for each test user, shuffled, without ``label_0``, with a row key
    (``request_id``) and two extra columns (``campaign``, ``bid``). Returns it as a DataFrame."""
    shutil.copytree(parquet_dir, target)
    path = Path(target, "test_samples.parquet")
    samples = pq.read_table(path).to_pandas().drop(columns=["label_0"])
    users = samples["129_1"].unique()
    new = [(user, 9_000_000_000_000 + k * len(users) + i)
           for i, user in enumerate(users) for k in range(new_items_per_user)]
    candidates = pd.concat([samples, pd.DataFrame(new, columns=["129_1", "205"])],
                           ignore_index=True)
    rng = np.random.default_rng(seed)
    candidates = candidates.iloc[rng.permutation(len(candidates))].reset_index(drop=True)
    candidates.insert(0, "request_id", [f"req-{i:05d}" for i in rng.permutation(len(candidates))])
    candidates["campaign"] = [f"c{i % 7}" for i in range(len(candidates))]
    candidates["bid"] = rng.random(len(candidates))
    candidates.to_parquet(path, index=False)
    return candidates, len(new)


def test_label_free_candidates_join_back_row_for_row(dataset, run_dir, tmp_path, capsys):  # noqa: F811
    """New items for every user, rows shuffled, no labels, a row key and two carried columns: the
    output has the input's rows in the input's order with their raw IDs and carried values, and
    each score is the export's ``serving_default`` score of that row's raw IDs."""
    from pipelines import predict as raw_predict

    raw = tmp_path / "candidates"
    candidates, new_items = _label_free_candidates(Path(dataset).parent / "parquet", raw)
    output = tmp_path / "scores.parquet"
    export = Path(RunDir(run_dir).export, "muse", "1")
    result = raw_predict.main(["--parquet", str(raw), "--data", dataset, "--export", str(export),
                               "--output", str(output), "--quiet", "--batch-size", "64",
                               "--row-key", "request_id", "--carry", "campaign,bid"])
    table = pq.read_table(output)
    assert table.column_names == ["request_id", "user_id", "item_id", "probability", "logit",
                                  "campaign", "bid"]
    scored = table.to_pydict()
    assert result["rows"] == result["samples_in"] == len(candidates)
    for column, name in (("request_id", "request_id"), ("129_1", "user_id"), ("205", "item_id"),
                         ("campaign", "campaign"), ("bid", "bid")):
        assert scored[name] == candidates[column].tolist(), name
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())
    unknown = int(sum(item not in known for item in candidates["205"]))
    assert unknown >= new_items
    assert result["unknown_items"] == unknown
    assert f"{unknown:,} with an item the run does not know (given to the export by raw ID" in (
        capsys.readouterr().out)
    expected = _signature_logits(export, raw, candidates, dataset)
    np.testing.assert_allclose(scored["logit"], expected, atol=1e-4)
    np.testing.assert_allclose(scored["probability"], 1 / (1 + np.exp(-expected)), atol=1e-5)


def test_candidates_in_csv_keep_their_order_without_a_row_key(dataset, run_dir, tmp_path):  # noqa: F811
    """Labelled, shuffled candidates without --row-key: the CSV lists them in the input's order,
    labels included, and scores as the label-free copy of the same rows does."""
    from pipelines import predict as raw_predict

    raw = tmp_path / "candidates"
    candidates, _ = _label_free_candidates(Path(dataset).parent / "parquet", raw, seed=1)
    labelled = raw.parent / "labelled"
    shutil.copytree(raw, labelled)
    clicks = (np.arange(len(candidates)) % 3 == 0).astype(int)
    candidates.assign(label_0=[[1 - c, c] for c in clicks]).to_parquet(
        labelled / "test_samples.parquet", index=False)
    common = ["--data", dataset, "--model-dir", run_dir, "--quiet"]
    raw_predict.main(["--parquet", str(labelled), "--output", str(tmp_path / "l.csv"), *common])
    raw_predict.main(["--parquet", str(raw), "--output", str(tmp_path / "f.csv"), *common])
    with_labels = pcsv.read_csv(tmp_path / "l.csv").to_pydict()
    without = pcsv.read_csv(tmp_path / "f.csv").to_pydict()
    assert list(with_labels) == ["user_id", "item_id", "label", "probability", "logit"]
    assert with_labels["label"] == clicks.tolist()
    assert with_labels["user_id"] == without["user_id"] == candidates["129_1"].tolist()
    assert with_labels["item_id"] == without["item_id"] == candidates["205"].tolist()
    np.testing.assert_allclose(with_labels["logit"], without["logit"], atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--row-key", "nope"], r"--row-key nope: .*test_samples\.parquet has no column 'nope'"),
    (["--row-key", "campaign"], r"--row-key campaign: 0 null and \d+ repeated values"),
    (["--carry", "bid,nope"], r"--carry nope: .*test_samples\.parquet has no column 'nope'"),
    (["--carry", "bid,probability"],
     "--carry probability: the output has its own column 'probability'"),
])
def test_candidate_column_errors_are_one_line(flags, message, dataset, run_dir, tmp_path, capsys):  # noqa: F811
    from pipelines import predict as raw_predict

    raw = tmp_path / "candidates"
    candidates, _ = _label_free_candidates(Path(dataset).parent / "parquet", raw)
    candidates.assign(probability=0.5).to_parquet(raw / "test_samples.parquet", index=False)
    output = tmp_path / "scores.parquet"
    assert_usage_error(capsys, raw_predict.main, "pipelines.predict", message,
                       ["--parquet", str(raw), "--data", dataset, "--model-dir", run_dir,
                        "--output", str(output), *flags])
    assert not list(tmp_path.glob("scores.parquet*"))


def test_an_item_the_dataset_lacks_is_given_to_the_export_by_its_raw_id(
        dataset, run_dir, tmp_path):  # noqa: F811
    """--data without the five commonest test items (the records hold OOV for them) and the run's
    export, which knows them (as a refreshed export knows new items): their rows score as the
    export scores their raw IDs, not as OOV items."""
    from pipelines import predict as raw_predict

    raw = tmp_path / "candidates"
    candidates, _ = _label_free_candidates(Path(dataset).parent / "parquet", raw,
                                           new_items_per_user=0)
    lacking = tmp_path / "lacking"
    shutil.copytree(dataset, lacking)
    items = dataset_dir.load_vocabulary(dataset, "item")
    commonest = candidates["205"].value_counts().index[:5].to_numpy()
    assert np.isin(commonest, items).all()
    np.save(dataset_dir.vocab_path(str(lacking), "item"), np.setdiff1d(items, commonest))
    export = Path(RunDir(run_dir).export, "muse", "1")
    output = tmp_path / "scores.parquet"
    result = raw_predict.main(["--parquet", str(raw), "--data", str(lacking), "--export",
                               str(export), "--output", str(output), "--quiet"])
    logits = pq.read_table(output)["logit"].to_numpy()
    lacked = candidates["205"].isin(commonest).to_numpy()
    assert result["unknown_items"] >= lacked.sum() > 0
    expected = _signature_logits(export, raw, candidates, str(lacking))
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    as_oov = _signature_logits(export, raw, candidates.assign(**{"205": np.where(
        lacked, 0, candidates["205"])}), str(lacking))
    assert np.abs(as_oov[lacked] - expected[lacked]).max() > 1e-3  # the raw ID is what counts


def test_new_items_score_with_their_vectors_through_a_refreshed_export(dataset, run_dir, tmp_path):  # noqa: F811
    """Label-free candidates with new items, the run exported with those items' vectors
    (``muse_tf.export --items``): pipelines.predict scores every row as the refreshed export's
    ``serving_default`` scores its raw IDs, and the new items' scores move with their vectors."""
    import pyarrow as pa

    from muse_tf import export as export_command
    from pipelines import predict as raw_predict

    raw = tmp_path / "candidates"
    candidates, _ = _label_free_candidates(Path(dataset).parent / "parquet", raw)
    known = set(dataset_dir.load_vocabulary(dataset, "item").tolist())
    new = sorted({item for item in candidates["205"] if item not in known})
    vectors = np.random.default_rng(5).integers(-127, 128, (len(new), 128)).astype(np.int8)
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array(new, pa.int64()),
                             "item_vector": pa.array(list(vectors), pa.list_(pa.int8()))}), items)
    exports = tmp_path / "exports"
    common = ["--model-dir", run_dir, "--data", dataset, "--export-dir", str(exports)]
    export_command.main(common)
    export_command.main([*common, "--items", str(items)])
    versions = sorted((exports / "muse").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in versions] == ["1", "2"]
    scores = {}
    for version in versions:
        output = tmp_path / f"scores-{version.name}.parquet"
        raw_predict.main(["--parquet", str(raw), "--data", dataset, "--export", str(version),
                          "--output", str(output), "--quiet"])
        scores[version.name] = pq.read_table(output)["logit"].to_numpy()
    np.testing.assert_allclose(scores["2"], _signature_logits(versions[1], raw, candidates, dataset),
                               atol=1e-4)
    is_new = candidates["205"].isin(new).to_numpy()
    assert np.abs(scores["2"][is_new] - scores["1"][is_new]).max() > 1e-3
