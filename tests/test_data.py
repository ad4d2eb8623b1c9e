"""The tf.data reader: user records -> per-sample batches in the model's input contract."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from muse_tf.contract import dataset_dir, features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import reader
from pipelines.common.join import UserRecords
from pipelines.common.tfrecord_writer import ShardWriter
from tests.pipeline_helpers import as_rows, read_samples

USERS_PER_SHARD = 12
SHARDS = 3


def _records(rng, first_user):
    """Random user records: histories of 0..9 behaviours, 1..4 samples each, unique item IDs."""
    users = np.arange(first_user, first_user + USERS_PER_SHARD)
    history_lengths = rng.integers(0, 10, len(users))
    sample_counts = rng.integers(1, 5, len(users))
    user = {features.USER_KEY: users * 1000 + 7, features.USER_ID: users + 2}
    for i, name in enumerate(TAOBAO_MM.profile_features):
        user[name] = rng.integers(1, 5, len(users)) + i
    h, s = history_lengths.sum(), sample_counts.sum()
    history = {name: rng.integers(1, 50, h) for name in features.SEQUENCE_FEATURES}
    first_item = first_user * 100
    samples = {
        features.ITEM_ID: np.arange(first_item, first_item + s),
        features.ITEM_CATEGORY: rng.integers(1, 9, s),
        TAOBAO_MM.attribute_features[0]: rng.integers(1, 9, s),
        TAOBAO_MM.attribute_features[1]: rng.integers(1, 9, s),
        features.LABEL: rng.integers(0, 2, s),
    }
    return UserRecords(user, history, history_lengths, samples, sample_counts)


def write_shard(path, records):
    with ShardWriter(path, TAOBAO_MM) as writer:
        writer.write(records)


def _expected(records, history_length):
    """Per-sample rows computed with NumPy: user features repeated, recent history left-padded."""
    out = {name: [] for name in (*records.user, *records.history, *records.samples)}
    history_offsets = np.concatenate([[0], np.cumsum(records.history_lengths)])
    sample_offsets = np.concatenate([[0], np.cumsum(records.sample_counts)])
    for u, count in enumerate(records.sample_counts):
        for j in range(sample_offsets[u], sample_offsets[u] + count):
            for name, values in records.user.items():
                out[name].append(values[u])
            for name, values in records.history.items():
                behaviours = list(values[history_offsets[u] : history_offsets[u + 1]])
                recent = behaviours[max(0, len(behaviours) - history_length) :]
                out[name].append([features.PAD] * (history_length - len(recent)) + recent)
            for name, values in records.samples.items():
                out[name].append(values[j])
    out = {name: np.array(values) for name, values in out.items()}
    out["label"] = out.pop(features.LABEL).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    paths, records = [], []
    for k in range(SHARDS):
        records.append(_records(rng, first_user=k * USERS_PER_SHARD))
        paths.append(str(directory / f"part-{k:05d}-of-{SHARDS:05d}.tfrecord.gz"))
        write_shard(paths[-1], records[-1])
    return paths, records


def _expected_all(records, history_length):
    parts = [_expected(r, history_length) for r in records]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@pytest.mark.parametrize("history_length", [4, 12])
def test_every_sample_is_read_with_its_users_recent_history_left_padded(shards, history_length):
    paths, records = shards
    read = read_samples(paths, history_length)
    assert set(read) == {*TAOBAO_MM.model_features, features.USER_KEY, "label"}
    assert as_rows(read) == as_rows(_expected_all(records, history_length))


def test_one_shard_keeps_record_and_sample_order(shards):
    paths, records = shards
    read = read_samples(paths[:1], 6)
    expected = _expected(records[0], 6)
    for name, values in expected.items():
        np.testing.assert_array_equal(read[name], values, err_msg=name)


def test_batches_have_the_requested_size_and_a_static_history_length(shards):
    paths, _ = shards
    total = sum(len(r.samples[features.ITEM_ID]) for r in shards[1])
    sizes = [len(y) for _, y in reader.make_dataset(paths, 16, history_length=5)]
    assert sum(sizes) == total and all(s == 16 for s in sizes[:-1])
    dataset = reader.make_dataset(paths, 16, history_length=5, drop_remainder=True)
    features_spec, label_spec = dataset.element_spec
    assert features_spec[features.HISTORY_ITEMS].shape.as_list() == [16, 5]
    assert features_spec[features.ITEM_ID].dtype == tf.int64
    assert label_spec.shape.as_list() == [16] and label_spec.dtype == tf.float32
    assert [len(y) for _, y in dataset] == [16] * (total // 16)


def _item_order(dataset):
    return np.concatenate([f[features.ITEM_ID] for f, _ in dataset.as_numpy_iterator()])


def test_seeded_shuffle_is_reproducible_and_covers_every_sample(shards):
    paths, _ = shards

    def make(seed):
        return reader.make_dataset(
            paths, 8, history_length=3, shuffle=True, seed=seed, deterministic=True
        )

    plain = _item_order(reader.make_dataset(paths, 8, history_length=3, deterministic=True))
    first, again, other = _item_order(make(1)), _item_order(make(1)), _item_order(make(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, plain) and not np.array_equal(first, other)
    assert sorted(first) == sorted(plain)
    repeated = reader.make_dataset(paths, 8, history_length=3, repeat=True).take(40)
    assert len(_item_order(repeated)) == 320
    with pytest.raises(ValueError, match="needs a `seed`"):
        reader.make_dataset(paths, 8, history_length=3, shuffle=True, deterministic=True)


def test_input_context_splits_the_shards_across_workers(shards):
    paths, _ = shards
    parts = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        parts.append(
            _item_order(reader.make_dataset(paths, 8, history_length=3, input_context=context))
        )
    assert not set(parts[0]) & set(parts[1])
    assert sorted(np.concatenate(parts)) == sorted(
        _item_order(reader.make_dataset(paths, 8, history_length=3))
    )
    context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=0)
    with pytest.raises(ValueError, match="3 shard"):
        reader.make_dataset(paths, 8, history_length=3, input_context=context)


def test_glob_patterns_and_missing_files(shards, tmp_path):
    paths, _ = shards
    pattern = paths[0].replace("part-00000", "part-*")
    assert dataset_dir.resolve_files(pattern) == paths
    with pytest.raises(FileNotFoundError, match="No shard matches"):
        reader.make_dataset(str(tmp_path / "*.gz"), 8, history_length=3)
    with pytest.raises(FileNotFoundError, match="absent.tfrecord.gz"):
        reader.make_dataset([paths[0], str(tmp_path / "absent.tfrecord.gz")], 8, history_length=3)
    with pytest.raises(ValueError, match="Unsupported path scheme"):
        reader.make_dataset(["ftp://host/a.tfrecord.gz"], 8, history_length=3)


def _converted_directory(root, paths):
    """``paths`` copied to ``root``/train/ (any TensorFlow filesystem) with a manifest listing them;
    returns their names relative to ``root``."""
    names = [f"train/{path.rsplit('/', 1)[1]}" for path in paths]
    tf.io.gfile.makedirs(f"{root}/train")
    for path, name in zip(paths, names):
        tf.io.gfile.copy(path, f"{root}/{name}", overwrite=True)
    manifest = {
        "schema_version": dataset_dir.SCHEMA_VERSION,
        "splits": {"train": {"shards": [{"file": n} for n in names]}},
    }
    with tf.io.gfile.GFile(f"{root}/{dataset_dir.MANIFEST}", "w") as f:
        f.write(json.dumps(manifest))
    return names


def test_split_files_follows_the_manifest(shards, tmp_path):
    paths, _ = shards
    names = _converted_directory(str(tmp_path), paths)
    assert dataset_dir.split_files(str(tmp_path), "train") == [str(tmp_path / n) for n in names]
    with pytest.raises(ValueError, match="no split 'test'"):
        dataset_dir.split_files(str(tmp_path), "test")
    (tmp_path / names[1]).unlink()
    with pytest.raises(FileNotFoundError, match="listed in the manifest but missing"):
        dataset_dir.split_files(str(tmp_path), "train")


def test_a_converted_directory_on_a_remote_filesystem_is_read(shards):
    # TensorFlow's in-memory ram:// filesystem stands in for gs:// (the same tf.io.gfile calls).
    paths, _ = shards
    root = "ram://muse_tf_test_split_files"
    names = _converted_directory(root, paths)
    files = dataset_dir.split_files(root, "train")
    assert files == [f"{root}/{n}" for n in names]
    assert as_rows(read_samples(files, 6)) == as_rows(read_samples(paths, 6))
    tf.io.gfile.remove(files[1])
    with pytest.raises(FileNotFoundError, match="listed in the manifest but missing"):
        dataset_dir.split_files(root, "train")


def test_a_damaged_shard_is_named(shards, tmp_path):
    paths, _ = shards
    content = open(paths[1], "rb").read()
    # Cuts all through the file. TensorFlow's reader misses some (a cut on a flush boundary reads
    # as a clean end): verify_shards names every one, and a reader error is turned into the name.
    reader_errors = 0
    for cut in np.linspace(10, len(content) - 1, 12).astype(int):
        damaged = tmp_path / f"damaged-{cut}.tfrecord.gz"
        damaged.write_bytes(content[:cut])
        pair = [paths[0], str(damaged)]
        with pytest.raises(ValueError, match=f"damaged-{cut}.tfrecord.gz is damaged"):
            dataset_dir.verify_shards(pair)
        try:
            with dataset_dir.damaged_shards_named(pair):
                read_samples(pair, 3)
        except ValueError as err:
            assert f"damaged-{cut}.tfrecord.gz is damaged" in str(err)
            reader_errors += 1
    assert reader_errors > 0
    assert dataset_dir.verify_shards(paths) == {p: USERS_PER_SHARD for p in paths}


def test_a_record_with_inconsistent_sample_lists_fails_clearly(tmp_path):
    path = str(tmp_path / "bad.tfrecord.gz")
    records = _records(np.random.default_rng(1), 0)
    records.samples[features.LABEL] = records.samples[features.LABEL][:-1]
    write_shard(path, records)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`label` and `item_id` differ"):
        read_samples([path], 3)


def _stdout_of_fresh_python(code: str) -> str:
    """Runs ``code`` in a new interpreter (filesystem registration is process-wide)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_remote_schemes_register_through_tensorflow_io_only_when_used():
    if not tf.__version__.startswith("2.16."):
        pytest.skip(f"tensorflow-io works only with TensorFlow 2.16, this is {tf.__version__}")
    code = (
        "import sys, muse_tf.data.reader as d, tensorflow as tf\n"
        "before = set(tf.io.gfile.get_registered_schemes())\n"
        "loaded = 'tensorflow_io' in sys.modules\n"
        "d.make_dataset(['s3://b/a.tfrecord.gz', 'hdfs://nn/b.tfrecord.gz',"
        " 'az://acct/c/d.tfrecord.gz', 'gs://b/e.tfrecord.gz'], 4, history_length=3)\n"
        "after = set(tf.io.gfile.get_registered_schemes())\n"
        "print(loaded, 's3' in before, sorted({'s3', 'hdfs', 'az', 'gs'} - after))\n"
    )
    assert _stdout_of_fresh_python(code).split("\n")[-2] == "False False []"


def test_remote_schemes_on_newer_tensorflow_fail_clearly_and_gs_still_works():
    if tf.__version__.startswith("2.16."):
        pytest.skip("TensorFlow 2.16 reads s3/hdfs/az through tensorflow-io (test above)")
    code = (
        "import sys, muse_tf.data.reader as d, tensorflow as tf\n"
        "d.make_dataset(['gs://b/e.tfrecord.gz'], 4, history_length=3)\n"
        "for path in ('s3://b/a.tfrecord.gz', 'hdfs://nn/b.tfrecord.gz', 'az://a/c/d.tfrecord.gz'):\n"
        "    try:\n"
        "        d.make_dataset([path, 'gs://b/e.tfrecord.gz'], 4, history_length=3)\n"
        "    except ImportError as err:\n"
        "        print(err)\n"
        "print('tensorflow_io' in sys.modules, 'gs' in tf.io.gfile.get_registered_schemes())\n"
    )
    *errors, flags = _stdout_of_fresh_python(code).strip().split("\n")
    assert flags == "False True"
    assert len(errors) == 3
    for scheme, error in zip(("s3", "hdfs", "az"), errors):
        assert error.startswith(f"Reading ['{scheme}'] paths needs tensorflow-io")
        assert f"only with TensorFlow 2.16, not {tf.__version__}" in error


def test_a_split_shorter_than_its_manifest_is_refused(tmp_path):
    """A shard cut on a GZIP flush boundary reads as a clean, shorter file: the count against the
    manifest catches it, and names the shard when one is damaged."""
    from muse_tf.data.synthetic import SyntheticConfig
    from pipelines.common import synthetic_parquet
    from pipelines.common.options import ConversionOptions
    from pipelines.local import driver

    sizes = SyntheticConfig(users=30, behaviours_per_user=20, items=200, clusters=4)
    synthetic_parquet.generate(sizes, str(tmp_path / "parquet"))
    converted = str(tmp_path / "converted")
    driver.convert(ConversionOptions(str(tmp_path / "parquet"), converted, history_cap=20,
                                     shards={"train": 1, "test": 1}), workers=1)
    files = dataset_dir.split_files(converted, "test")
    read = sum(int(labels.shape[0]) for _, labels in reader.make_dataset(files, 16, history_length=20))
    dataset_dir.check_split_read_whole(converted, "test", read)
    with pytest.raises(ValueError, match=f"read {read - 1} samples of split 'test'.*counts {read}"):
        dataset_dir.check_split_read_whole(converted, "test", read - 1)
    content = open(files[0], "rb").read()
    with open(files[0], "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(ValueError, match=f"{os.path.basename(files[0])} is damaged"):
        dataset_dir.check_split_read_whole(converted, "test", read // 2)
