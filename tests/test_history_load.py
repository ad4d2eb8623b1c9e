"""``python -m serving.history.load`` into both stores, checked against the synthetic generator's
truth and against records written by hand."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from muse_tf.contract import dataset_dir, features, records
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import synthetic
from muse_tf.data.synthetic_dataset import write_dataset
from serving.history import load
from serving.history.store import open_store

WORLD = synthetic.SyntheticConfig(
    users=40, behaviours_per_user=60, samples_per_user=2, test_fraction=0.6, items=2000,
    clusters=8, scl_coverage=0.3, short_history_fraction=0.3, seed=11,
)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("history-load") / "data")
    write_dataset(WORLD, path)
    return path


def known_or_unknown(raw, vocabulary):
    """What records can give back of raw IDs: the ID when the vocabulary holds it, else an ID it
    lacks (0: these vocabularies never hold the empty-field ID)."""
    assert 0 not in vocabulary
    return np.where(np.isin(raw, vocabulary), raw, 0).tolist()


def test_loaded_histories_and_profiles_are_the_generators_raw_ids(backend, synthetic_data, capsys):
    cap = 50
    counts = load.main(["--data", synthetic_data, "--store", backend.url, "--cap", str(cap)])
    vocabularies = dataset_dir.load_vocabularies(synthetic_data)
    catalogue = synthetic.Catalogue(WORLD)
    truth = {}
    for _, _, chunk in synthetic.user_chunks(catalogue, WORLD):
        for split in chunk.values():
            truth.update({user: (profile, history) for user, profile, history in split["users"]})
    store = backend.open()
    records = store.read_many(list(truth), 10 * cap)
    for (profile, history), record in zip(truth.values(), records):
        history = history[-cap:]
        assert record.items.tolist() == known_or_unknown(catalogue.ids[history], vocabularies["item"])
        assert record.categories.tolist() == known_or_unknown(catalogue.category_ids[history],
                                                              vocabularies["category"])
        assert record.profile == {
            name: known_or_unknown(np.array([value]), vocabularies[f"profile_{i}"])[0]
            for i, (name, value) in enumerate(zip(TAOBAO_MM.profile_features, profile), start=1)
        }
    assert counts["users_written"] == len(truth) == WORLD.users
    assert counts["behaviours_written"] == sum(min(len(h), cap) for _, h in truth.values())
    manifest = dataset_dir.load_manifest(synthetic_data)
    in_splits = sum(split["users_written"] for split in manifest["splits"].values())
    assert counts["records_read"] == in_splits
    assert counts["records_read"] == counts["records_written"] + counts["records_not_longer"]
    out = capsys.readouterr()
    assert f"users written {WORLD.users}, behaviours written {counts['behaviours_written']}" in out.out
    assert "load: [4/4] " in out.err


# A hand-made dataset: vocabulary raw IDs (index = position + 2) and, per split, users as
# (raw user ID, profile indices, history item indices, history category indices).
HAND_VOCABULARIES = {name: np.array([-(2**63), -5, 7, 2**63 - 1], np.int64)
                     for name in TAOBAO_MM.vocabularies}
HAND_SPLITS = {
    "train": [(1, [2, 3, 4, 5, 1], [2, 3], [2, 3]),      # shorter than its test history
              (2, [5, 5, 5, 5, 5], [2, 3, 4, 5], [5, 4, 3, 2]),  # longer than its test history
              (3, [2, 2, 2, 2, 2], [2, 2], [3, 3]),       # as long as its test history
              (4, [2, 2, 2, 2, 2], [2, 9], [2, 2]),       # item index 9: outside the vocabulary
              (5, [2, 2, 2, 2, 2], [2, 2], [9, 2])],      # category index 9: the same
    "test": [(1, [3, 3, 3, 3, 3], [5, 4, 1, 0, 2], [2, 2, 2, 2, 2]),
             (2, [4, 4, 4, 4, 4], [3], [3]),
             (3, [4, 4, 4, 4, 4], [4, 5], [5, 4])],
}


def write_hand_dataset(path) -> str:
    """HAND_SPLITS as a converted dataset: one shard per split, one sample per user."""
    os.makedirs(os.path.join(path, dataset_dir.VOCAB_DIR))
    for name, ids in HAND_VOCABULARIES.items():
        np.save(dataset_dir.vocab_path(str(path), name), ids)
    splits = {}
    for split, users in HAND_SPLITS.items():
        os.makedirs(os.path.join(path, split))
        user = {features.USER_KEY: np.array([u[0] for u in users]),
                features.USER_ID: np.full(len(users), 2)}
        user.update({name: np.array([u[1][i] for u in users])
                     for i, name in enumerate(TAOBAO_MM.profile_features)})
        history = {features.HISTORY_ITEMS: np.concatenate([u[2] for u in users]),
                   features.HISTORY_CATEGORIES: np.concatenate([u[3] for u in users])}
        samples = {name: np.full(len(users), 2) for name in records.sample_features(TAOBAO_MM)}
        shard = dataset_dir.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(os.path.join(path, shard), records.COMPRESSION) as writer:
            for record in records.encode_user_records(
                user, history, np.array([len(u[2]) for u in users]), samples,
                np.ones(len(users), np.int64), TAOBAO_MM,
            ):
                writer.write(record)
        splits[split] = dataset_dir.split_summary(
            [{"file": shard, "samples_written": len(users), "bytes": 1}])
    manifest = dataset_dir.build_manifest(source="hand", history_cap=10, vocab_sizes={},
                                          splits=splits, feature_spec=TAOBAO_MM)
    with open(os.path.join(path, dataset_dir.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return str(path)


def hand_raw(indices):
    """Raw IDs of HAND_VOCABULARIES indices: PAD and OOV become 0, an ID none of them holds."""
    return [0 if index < 2 else int(HAND_VOCABULARIES["item"][index - 2]) for index in indices]


def test_a_user_in_two_splits_keeps_the_longest_history_and_its_profile(tmp_path, capsys):
    data = write_hand_dataset(tmp_path / "data")
    url = f"sqlite:///{tmp_path / 'history.db'}"
    counts = load.main(["--data", data, "--store", url])
    store = open_store(url)
    expected = {1: HAND_SPLITS["test"][0], 2: HAND_SPLITS["train"][1], 3: HAND_SPLITS["test"][2]}
    for user, (_, profile, items, categories) in expected.items():
        record = store.read(user, 100)
        assert record.items.tolist() == hand_raw(items)
        assert record.categories.tolist() == hand_raw(categories)
        assert record.profile == dict(zip(TAOBAO_MM.profile_features, hand_raw(profile)))
    assert store.read(4, 100) is None and store.read(5, 100) is None
    assert counts == {"users_written": 3, "behaviours_written": 5 + 4 + 2, "records_read": 8,
                      "records_written": 4, "records_not_longer": 2,
                      "rejected": {"history_items index outside its vocabulary": 1,
                                   "history_categories index outside its vocabulary": 1}}
    err = capsys.readouterr().err
    assert f"{data}/train/part-00000-of-00001.tfrecord.gz: user 4 rejected: history_items" in err


def test_load_errors_are_one_line_exit_2_naming_the_file_or_url(tmp_path, capsys):
    data = write_hand_dataset(tmp_path / "data")
    shard = os.path.join(data, dataset_dir.shard_name("test", 0, 1))
    with open(shard, "rb") as f:
        whole = f.read()
    with open(shard, "wb") as f:
        f.write(whole[: len(whole) // 2])
    store = f"sqlite:///{tmp_path / 'history.db'}"
    for args, message in [
        (["--data", data, "--store", store], f"Shard {shard} is damaged"),
        (["--data", data, "--store", "mysql://db"], "history store URL 'mysql://db'"),
        (["--data", str(tmp_path), "--store", store], "is not a converted dataset"),
        (["--data", data, "--store", store, "--split", "valid"], "no split 'valid'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            load.main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("python -m serving.history.load: error:")
