"""Synthetic Taobao-MM data: deterministic, sized as configured, with a planted signal."""

import filecmp

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from muse_tf.contract import dataset_dir, records
from muse_tf.data import synthetic_dataset
from muse_tf.data.synthetic import SyntheticConfig
from muse_tf.jobs.metrics import auc
from pipelines import synthetic
from pipelines.common import synthetic_parquet
from pipelines.common.options import ConversionOptions
from pipelines.local import driver
from tests.pipeline_helpers import TABLES, as_rows, read_samples, reference_split

SMALL = SyntheticConfig(users=40, behaviours_per_user=60, items=400, clusters=10, seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A dataset big enough for the statistical checks (about 2,400 samples)."""
    config = SyntheticConfig(
        users=300,
        behaviours_per_user=200,
        samples_per_user=8,
        items=3000,
        clusters=20,
        short_history_fraction=0.1,
        seed=7,
    )
    directory = tmp_path_factory.mktemp("synthetic")
    synthetic_parquet.generate(config, str(directory))
    tables = {name: pd.read_parquet(directory / f"{name}.parquet") for name in TABLES}
    return config, tables


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path):
    synthetic_parquet.generate(SMALL, str(tmp_path / "a"))
    synthetic_parquet.generate(SMALL, str(tmp_path / "b"))
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 4})
    synthetic_parquet.generate(other, str(tmp_path / "c"))
    names = [f"{name}.parquet" for name in TABLES]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert match == names and not mismatch and not errors
    _, differ, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", names, shallow=False)
    assert len(differ) == len(names)


def test_sizes_follow_the_configuration(generated):
    config, tables = generated
    train, test = tables["train_samples"], tables["test_samples"]
    users = pd.concat([tables["train_user_features"], tables["test_user_features"]])
    assert users["129_1"].nunique() == config.users
    assert set(train["129_1"]) | set(test["129_1"]) == set(users["129_1"])
    samples = len(train) + len(test)
    assert abs(samples / config.users - config.samples_per_user) < 0.5
    assert abs(len(test) / samples - config.test_fraction) < 0.03
    lengths = users.drop_duplicates("129_1")["150_2_180"].map(len)
    assert lengths.max() == config.behaviours_per_user
    assert abs((lengths < config.behaviours_per_user).mean() - config.short_history_fraction) < 0.05
    assert (users["150_2_180"].map(len) == users["151_2_180"].map(len)).all()
    assert len(tables["item_features"]) == config.items
    coverage = len(tables["scl_embedding_int8_p90"]) / config.items
    assert abs(coverage - config.scl_coverage) < 0.03
    vectors = np.stack(tables["scl_embedding_int8_p90"]["205_c"].to_numpy()).astype(float) / 127
    norms = np.linalg.norm(vectors, axis=1)
    assert vectors.shape[1] == 128 and np.all((norms > 0.9) & (norms <= 1.0))
    labels = np.stack(train["label_0"].to_numpy())
    assert set(map(tuple, labels)) == {(1, 0), (0, 1)}
    assert 0.05 < labels[:, 1].mean() < 0.3


def test_item_popularity_has_the_configured_long_tail(generated):
    config, tables = generated
    behaviours = np.concatenate(tables["train_user_features"]["150_2_180"].to_numpy())
    counts = pd.Series(behaviours).value_counts().to_numpy()
    ranks = np.arange(1, len(counts) + 1)
    head = (ranks >= 5) & (ranks <= 300)
    slope = np.polyfit(np.log(ranks[head]), np.log(counts[head]), 1)[0]
    assert abs(slope + config.zipf_exponent) < 0.3
    top_percent = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_percent > 0.2
    assert np.mean(counts <= 2) > 0.2


def _top_k_cosine(tables, history_window):
    """Per train sample: mean top-20 cosine of SCL vectors, target vs the user's history."""
    scl = tables["scl_embedding_int8_p90"]
    vectors = dict(zip(scl["205"], np.stack(scl["205_c"].to_numpy()).astype(np.float32)))
    zero = np.zeros(128, np.float32)
    histories = dict(
        zip(tables["train_user_features"]["129_1"], tables["train_user_features"]["150_2_180"])
    )
    scores = []
    for user, item in zip(tables["train_samples"]["129_1"], tables["train_samples"]["205"]):
        history = np.stack([vectors.get(i, zero) for i in histories[user][-history_window:]])
        target = vectors.get(item, zero)
        norms = np.linalg.norm(history, axis=1) * np.linalg.norm(target) + 1e-9
        similarity = np.sort(history @ target / norms)[-20:]
        scores.append(similarity.mean())
    return np.array(scores)


def test_planted_signal_beats_chance_and_needs_the_whole_history(generated):
    config, tables = generated
    labels = np.stack(tables["train_samples"]["label_0"].to_numpy())[:, 1]
    whole = auc(labels, _top_k_cosine(tables, config.behaviours_per_user))
    latest_50 = auc(labels, _top_k_cosine(tables, 50))
    assert whole > 0.65
    assert whole - latest_50 > 0.05


def test_conversion_in_parallel_writes_the_same_bytes_and_the_source_values(tmp_path):
    synthetic_parquet.generate(SMALL, str(tmp_path / "in"))
    for workers in (1, 2):
        driver.convert(
            ConversionOptions(
                str(tmp_path / "in"),
                str(tmp_path / f"out{workers}"),
                history_cap=50,
                shards={"train": 3, "test": 2},
            ),
            workers=workers,
        )
    comparison = filecmp.dircmp(tmp_path / "out1", tmp_path / "out2")
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for sub in comparison.subdirs.values():
        assert not sub.diff_files and not sub.left_only and not sub.right_only
    tables = {name: pd.read_parquet(tmp_path / "in" / f"{name}.parquet") for name in TABLES}
    expected, rejected = reference_split(tables, str(tmp_path / "out1"), "train", 50)
    read = read_samples(dataset_dir.split_files(str(tmp_path / "out1"), "train"), 50)
    assert as_rows(read) == sorted(expected) and not rejected


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    assert "--behaviours-per-user" in capsys.readouterr().out
    synthetic.main(
        [
            "--output",
            str(tmp_path),
            "--users",
            "5",
            "--behaviours-per-user",
            "7",
            "--items",
            "50",
            "--clusters",
            "5",
        ]
    )
    users = pd.read_parquet(tmp_path / "train_user_features.parquet")
    assert users["150_2_180"].map(len).max() <= 7 and users["129_1"].nunique() <= 5
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--output", str(tmp_path), "--items", "3"])
    assert exit_info.value.code == 2


def _records(path):
    """Each record of a shard as {feature: list of values}, in file order."""
    out = []
    for raw in tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION):
        example = tf.train.Example.FromString(raw.numpy())
        out.append({k: list(v.int64_list.value) for k, v in example.features.feature.items()})
    return out


def test_direct_dataset_equals_the_converted_parquet_form(tmp_path):
    # The embedded default dataset skips Parquet; the conversion of the Parquet form is its reference.
    synthetic_parquet.generate(SMALL, str(tmp_path / "parquet"))
    shards = synthetic_dataset.SHARDS_PER_SPLIT
    options = ConversionOptions(str(tmp_path / "parquet"), str(tmp_path / "converted"),
                                history_cap=SMALL.behaviours_per_user,
                                shards={"train": shards, "test": shards})
    driver.convert(options, workers=1)
    direct = str(tmp_path / "direct")
    synthetic_dataset.write_dataset(SMALL, direct)
    converted = str(tmp_path / "converted")
    for name, ids in dataset_dir.load_vocabularies(converted).items():
        np.testing.assert_array_equal(dataset_dir.load_vocabulary(direct, name), ids, err_msg=name)
    np.testing.assert_array_equal(dataset_dir.load_multimodal_table(direct),
                                  dataset_dir.load_multimodal_table(converted))
    for split in ("train", "test"):
        expected, written = dataset_dir.split_files(converted, split), dataset_dir.split_files(direct, split)
        assert [p.replace(converted, direct) for p in expected] == written
        for reference, path in zip(expected, written):
            records = _records(path)
            assert records and records == _records(reference)
        assert dataset_dir.split_samples(dataset_dir.load_manifest(direct), split) == (
            dataset_dir.split_samples(dataset_dir.load_manifest(converted), split))
