"""``python -m serving.request`` against the synthetic generator's raw world: the request holds the
user's real history and samples as raw IDs, and an export scores its candidates as the Keras model
scores the same raw IDs looked up by NumPy."""

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from muse_tf.config import ModelConfig
from muse_tf.contract import dataset_dir, features, signatures
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.contract.hashing import partition_of
from muse_tf.data import synthetic
from muse_tf.data.synthetic_dataset import write_dataset
from muse_tf.jobs import saved_model, seeding
from muse_tf.models import MuseModel
from serving import request as request_cli
from serving.servable import Servable
from tests import serving_case as sc
from tests.test_serving import ROOT, _tensorflow_runtime

# Few SCL vectors and mostly test samples: some test users' histories and samples hold items the
# train split never saw, which the records keep only as OOV.
CONFIG = synthetic.SyntheticConfig(
    users=60, behaviours_per_user=80, samples_per_user=2, test_fraction=0.7, items=3000,
    clusters=10, scl_coverage=0.3, short_history_fraction=0.2, seed=5,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("request") / "data")
    write_dataset(CONFIG, path)
    return path


@pytest.fixture(scope="module")
def world():
    """The generator's truth, per test user in generation order: profile IDs, history (catalogue
    indices) and the test samples' raw item IDs and clicks."""
    catalogue = synthetic.Catalogue(CONFIG)
    users = {}
    for _, _, chunk in synthetic.user_chunks(catalogue, CONFIG):
        for (user, profile, history), (_, targets, clicks) in zip(
            chunk["test"]["users"], chunk["test"]["samples"]
        ):
            users[user] = {"profile": profile, "history": history, "targets": targets,
                           "clicks": clicks}
    return catalogue, users


def build(dataset, tmp_path, *args):
    path = tmp_path / "request.json"
    request_cli.main(["--data", dataset, "--output", str(path), *args])
    return json.loads(path.read_text())


def known_or_zero(raw, vocabulary):
    """What the records can give back: the raw ID when the vocabulary holds it, else an ID the
    vocabulary lacks (0 for these vocabularies, which never hold the empty-field ID 0)."""
    assert 0 not in vocabulary
    return np.where(np.isin(raw, vocabulary), raw, 0).tolist()


def item_rows(catalogue, positions, vocabularies):
    """Raw (item, category, attr_213, attr_214) of catalogue ``positions`` as a request holds them:
    the conversion describes an item the item vocabulary lacks as OOV throughout."""
    known = np.isin(catalogue.ids[positions], vocabularies["item"])
    return {
        name: np.where(known, raw, 0).tolist()
        for name, raw in [
            (features.ITEM_ID, catalogue.ids[positions]),
            (features.ITEM_CATEGORY, catalogue.category_ids[positions]),
            (TAOBAO_MM.attribute_features[0], catalogue.attr_ids["213"][positions]),
            (TAOBAO_MM.attribute_features[1], catalogue.attr_ids["214"][positions]),
        ]
    }


def test_rank_request_holds_the_users_history_and_test_items_as_raw_ids(
    dataset, world, tmp_path, capsys
):
    catalogue, users = world
    vocabularies = dataset_dir.load_vocabularies(dataset)
    # The user with the most history IDs outside the vocabulary, so their handling is exercised.
    user = max(users, key=lambda u: np.isin(catalogue.ids[users[u]["history"]],
                                            vocabularies["item"], invert=True).sum())
    truth = users[user]
    body = build(dataset, tmp_path, "--user", str(user), "--random-candidates", "7", "--seed", "3")
    assert body["signature_name"] == "rank"
    inputs = body["inputs"]
    assert set(inputs) == set(signatures.rank_spec())
    assert inputs[features.USER_ID] == user
    profile = [inputs[name] for name in TAOBAO_MM.profile_features]
    assert profile == [known_or_zero(np.array([p]), vocabularies[f"profile_{i}"])[0]
                       for i, p in enumerate(truth["profile"], start=1)]
    assert inputs[features.HISTORY_ITEMS] == known_or_zero(
        catalogue.ids[truth["history"]], vocabularies["item"])
    assert 0 in inputs[features.HISTORY_ITEMS]  # the case the user was chosen for
    assert inputs[features.HISTORY_CATEGORIES] == catalogue.category_ids[truth["history"]].tolist()

    position = {item: p for p, item in enumerate(catalogue.ids.tolist())}
    own = len(truth["targets"])
    assert len(inputs[features.ITEM_ID]) == own + 7
    expected = item_rows(catalogue, [position[t] for t in truth["targets"]], vocabularies)
    for name, values in expected.items():
        assert inputs[name][:own] == values, name
    # The random candidates: distinct known items, not the user's, with their true attributes.
    extra = inputs[features.ITEM_ID][own:]
    assert len(set(extra)) == 7 and not set(extra) & set(truth["targets"].tolist())
    assert np.isin(extra, vocabularies["item"]).all()
    expected = item_rows(catalogue, [position[t] for t in extra], vocabularies)
    for name, values in expected.items():
        assert inputs[name][own:] == values, name
    labels = " ".join(map(str, truth["clicks"].tolist()))
    err = capsys.readouterr().err
    assert f"user {user} " in err and f"labels {labels};" in err, err


def test_default_user_is_the_first_of_the_test_split_and_the_seed_is_reproducible(
    dataset, world, tmp_path
):
    _, users = world
    first = next(u for u in users if partition_of(np.array([u]), 2)[0] == 0)  # shard 0's first
    body = build(dataset, tmp_path, "--random-candidates", "5", "--seed", "1")
    assert body["inputs"][features.USER_ID] == first
    assert build(dataset, tmp_path, "--random-candidates", "5", "--seed", "1") == body
    other = build(dataset, tmp_path, "--random-candidates", "5", "--seed", "2")
    assert other["inputs"][features.ITEM_ID] != body["inputs"][features.ITEM_ID]


def test_user_errors_are_one_line_exit_2(dataset, tmp_path, capsys):
    for args, message in [
        (["--user", "12345"], "has no sample of user 12345"),
        (["--signature", "predict"], "--signature 'predict'"),
        (["--split", "valid"], "no split 'valid'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            build(dataset, tmp_path, *args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        build(str(tmp_path / "nowhere"), tmp_path)
    assert "is not a converted dataset" in capsys.readouterr().err


@pytest.mark.parametrize("user", [str(2**63), str(-(2**63) - 1), str(2**64)])
def test_a_user_id_outside_int64_is_one_line_naming_the_flag_and_the_range(dataset, tmp_path,
                                                                          capsys, user):
    with pytest.raises(SystemExit) as exit_info:
        build(dataset, tmp_path, "--user", user)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (f"python -m serving.request: error: argument --user: user IDs "
                                    f"are int64, in [-2^63, 2^63 - 1]; got {user}")


def test_a_damaged_shard_is_one_line_naming_it(dataset, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = damaged / dataset_dir.load_manifest(str(damaged))["splits"]["test"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SystemExit) as exit_info:
        build(str(damaged), tmp_path)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"Shard {shard} is damaged" in err, err


def test_the_cli_builds_the_request_without_loading_tensorflow(dataset, world, tmp_path):
    catalogue, users = world
    vocabularies = dataset_dir.load_vocabularies(dataset)
    user = list(users)[-1]
    path = tmp_path / "request.json"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "serving.request", "--data", dataset, "--user",
         str(user), "--random-candidates", "0", "--output", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"numpy", "serving.protos"} <= imported  # the log is read
    assert _tensorflow_runtime(imported) == []
    inputs = json.loads(path.read_text())["inputs"]
    truth = users[user]
    assert inputs[features.USER_ID] == user
    assert inputs[features.HISTORY_ITEMS] == known_or_zero(
        catalogue.ids[truth["history"]], vocabularies["item"])
    position = {item: p for p, item in enumerate(catalogue.ids.tolist())}
    expected = item_rows(catalogue, [position[t] for t in truth["targets"]], vocabularies)
    assert {name: inputs[name] for name in expected} == expected


def test_a_record_cut_short_in_a_whole_gzip_stream_is_one_line_naming_its_shard(
    dataset, tmp_path, capsys
):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = damaged / dataset_dir.load_manifest(str(damaged))["splits"]["test"]["shards"][0]["file"]
    content = gzip.decompress(shard.read_bytes())
    shard.write_bytes(gzip.compress(content[: len(content) // 2]))
    with pytest.raises(SystemExit) as exit_info:
        build(str(damaged), tmp_path)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"Shard {shard} is damaged" in err and "cut short" in err, err


def test_an_output_that_is_a_directory_is_one_line_naming_it(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        request_cli.main(["--data", dataset, "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"error: Could not write {tmp_path}: Is a directory" in err, err


@pytest.fixture(scope="module")
def served(dataset, tmp_path_factory):
    """An export of a small MUSE model with trained-size random embeddings, on the dataset's
    vocabularies and multimodal table; its reference is the Keras model on NumPy indices."""
    seeding.set_seed(0)
    vocabularies = dataset_dir.load_vocabularies(dataset)
    config = ModelConfig(vocab_sizes=dataset_dir.vocab_sizes(dataset), embedding_dim=8, top_k=8,
                         recent_length=10, mlp_units=[16], din_attention_units=[8])
    model = MuseModel(config)
    model.set_multimodal_table(np.asarray(dataset_dir.load_multimodal_table(dataset)))
    case = sc.Case(model, {name: np.asarray(ids) for name, ids in vocabularies.items()}, None)
    rng = np.random.default_rng(0)
    rows = sc.rows_request(rng, case.vocabularies, [3, 0], 4)
    model(sc.lookup_rows(case.vocabularies, rows))
    for table in model.embedding_trainable_variables:
        table.assign(rng.normal(0.0, 0.5, table.shape))
    base = str(tmp_path_factory.mktemp("export"))
    saved_model.export_saved_model(model, case.vocabularies, base, "muse")
    return Servable("muse", f"{base}/muse"), case


def as_arrays(inputs):
    return {name: np.asarray(value, np.int64) for name, value in inputs.items()}


def test_the_export_scores_the_request_as_keras_scores_its_raw_ids(dataset, served, tmp_path):
    servable, case = served
    rank = as_arrays(build(dataset, tmp_path, "--random-candidates", "12")["inputs"])
    probability = servable.predict(rank, signatures.RANK)[signatures.PROBABILITY]
    assert len(probability) == len(rank[features.ITEM_ID]) > 12
    assert np.ptp(probability) > 1e-3  # known candidates: the scores differ
    np.testing.assert_allclose(probability, sc.sigmoid(sc.keras_rank(case, rank)), atol=1e-5)

    body = build(dataset, tmp_path, "--random-candidates", "12", "--signature", "serving_default")
    assert body["signature_name"] == "serving_default"
    rows = servable.predict(as_arrays(body["inputs"]), signatures.SERVING_DEFAULT)
    np.testing.assert_allclose(rows[signatures.PROBABILITY], probability, atol=1e-5)


def test_a_rank_by_user_request_is_the_rank_requests_user_id_and_candidates(dataset, tmp_path):
    rank = build(dataset, tmp_path, "--random-candidates", "4")["inputs"]
    body = build(dataset, tmp_path, "--random-candidates", "4", "--signature", "rank_by_user")
    assert body["signature_name"] == "rank_by_user"
    assert body["inputs"] == {name: rank[name] for name in
                              (features.USER_ID, *signatures.CANDIDATE_FEATURES)}
