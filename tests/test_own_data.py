"""Your own data end to end (docs/your_data.md): the page's feature spec, whose tables,
columns, feature counts, vector width and dtype all differ from Taobao-MM's, through the synthetic
generator, both conversion engines, training, evaluation, the export and both signatures."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from muse_tf.config import ExperimentConfig, ModelConfig, TrainConfig
from muse_tf.contract import dataset_dir, features, signatures, vocabulary
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.data import reader, synthetic_dataset
from muse_tf.data.synthetic import SyntheticConfig
from muse_tf.jobs import runs, training
from pipelines import beam_convert, synthetic, taobao_mm
from tests.test_beam_convert import DIRECT, _records, _without_layout

ROOT = Path(__file__).resolve().parents[1]
HISTORY = 24
SIZES = SyntheticConfig(users=60, behaviours_per_user=HISTORY, items=300, clusters=6,
                        samples_per_user=5.0)


def readme_spec() -> dict:
    """The spec docs/your_data.md shows (the YAML block after ``<!-- own-data-spec -->``)."""
    text = (ROOT / "docs" / "your_data.md").read_text()
    block = re.search(r"<!-- own-data-spec -->\n```yaml\n(.*?)```", text, re.S)
    return yaml.safe_load(block.group(1))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The page's spec as a file, synthetic Parquet of it, and its conversion by both engines
    (through their command lines)."""
    root = tmp_path_factory.mktemp("own")
    spec_file = root / "my_spec.yaml"
    spec_file.write_text(yaml.safe_dump(readme_spec()))
    synthetic.main(["--output", str(root / "parquet"), "--feature-spec", str(spec_file),
                    *(f"--{k.replace('_', '-')}={v}" for k, v in vars(SIZES).items())])
    common = ["--input", str(root / "parquet"), "--feature-spec", str(spec_file),
              "--history-cap", str(HISTORY), "--train-shards", "2", "--test-shards", "2"]
    local = taobao_mm.main([*common, "--output", str(root / "local"), "--workers", "1"])
    beam = beam_convert.main([*common, "--output", str(root / "beam"), *DIRECT])
    return root, FeatureSpec.load(str(spec_file)), local, beam


def test_both_engines_convert_the_spec_to_the_same_dataset_that_records_it(converted):
    root, spec, local, beam = converted
    assert _without_layout(beam) == _without_layout(local)
    assert FeatureSpec.from_dict(local["feature_spec"]) == spec
    assert dataset_dir.load_feature_spec(str(root / "local")) == spec
    assert set(local["vocab_sizes"]) == {"user", "age_band", "gender", "city", "item", "category",
                                         "advertiser"}
    for name in spec.vocabularies:
        np.testing.assert_array_equal(dataset_dir.load_vocabulary(str(root / "beam"), name),
                                      dataset_dir.load_vocabulary(str(root / "local"), name))
    table = dataset_dir.load_multimodal_table(str(root / "local"))
    assert table.dtype == np.float16 and table.shape == (local["vocab_sizes"]["item"], 64)
    np.testing.assert_array_equal(dataset_dir.load_multimodal_table(str(root / "beam")), table)
    for split in ("train", "test"):
        records = _records(root / "local", split)
        assert records and records == _records(root / "beam", split)
        assert set(next(iter(records.values()))) == {
            "user_key", "user_id", "age_band", "gender", "city", "history_items",
            "history_categories", "item_id", "item_category", "advertiser", "label"}


def _raw(data_dir, vocab, indices):
    """Vocabulary indices back to raw IDs (0 for PAD and OOV)."""
    ids = dataset_dir.load_vocabulary(data_dir, vocab)
    return np.where(np.asarray(indices) >= vocabulary.RESERVED,
                    ids[np.maximum(np.asarray(indices) - vocabulary.RESERVED, 0)], 0)


def test_the_records_hold_the_parquet_values_of_the_specs_columns(converted):
    root, spec, _, _ = converted
    data = str(root / "local")
    parquet = {t: pd.read_parquet(root / "parquet" / f"{t}.parquet") for t in
               ("train_users", "train_impressions", "ads", "ad_vectors")}
    users = parquet["train_users"].set_index("uid")
    ads = parquet["ads"].set_index("ad_id")
    vectors = parquet["ad_vectors"].set_index("ad_id")["image_vec"]
    table = dataset_dir.load_multimodal_table(data)
    checked = 0
    for key, record in _records(root / "local", "train").items():
        row = users.loc[key]
        for feature in spec.user_profile:
            assert _raw(data, feature.vocabulary, record[feature.name]) == [row[feature.column]]
        assert list(_raw(data, "item", record["history_items"])) == list(row["clicked_ads"])
        impressions = parquet["train_impressions"].query("uid == @key")
        assert list(_raw(data, "item", record["item_id"])) == list(impressions["ad_id"])
        assert list(record["label"]) == [labels[1] for labels in impressions["clicked"]]
        items = _raw(data, "item", record["item_id"])
        assert list(_raw(data, "advertiser", record["advertiser"])) == list(
            ads.loc[items, "advertiser_id"])
        for item, index in zip(items, record["item_id"]):
            expected = vectors.get(item)
            row = table[index]
            if expected is None:
                assert not row.any()
            else:
                np.testing.assert_array_equal(row, np.asarray(expected, np.float16))
                checked += 1
    assert checked > 0


def test_the_library_writer_writes_the_conversions_dataset_of_the_spec(converted, tmp_path):
    root, spec, _, _ = converted
    direct = str(tmp_path / "direct")
    synthetic_dataset.write_dataset(SIZES, direct, spec)
    assert dataset_dir.load_feature_spec(direct) == spec
    for name in spec.vocabularies:
        np.testing.assert_array_equal(dataset_dir.load_vocabulary(direct, name),
                                      dataset_dir.load_vocabulary(str(root / "local"), name))
    np.testing.assert_array_equal(dataset_dir.load_multimodal_table(direct),
                                  dataset_dir.load_multimodal_table(str(root / "local")))
    for split in ("train", "test"):
        assert _records(Path(direct), split) == _records(root / "local", split)


@pytest.fixture(scope="module")
def trained(converted, tmp_path_factory):
    root, spec, _, _ = converted
    experiment = ExperimentConfig(
        model=ModelConfig(embedding_dim=8, mlp_units=[16], top_k=8, recent_length=8,
                          din_attention_units=[8]),
        train=TrainConfig(batch_size=32, history_length=HISTORY, eval_batch_size=64,
                          warn_below_steps=0),
    )
    model_dir = str(tmp_path_factory.mktemp("run"))
    result = training.run(experiment, str(root / "local"), model_dir, verbose=0)
    return root, spec, model_dir, result


def test_training_builds_the_model_of_the_spec_and_evaluates_it(trained):
    _, spec, model_dir, result = trained
    model, experiment = runs.load_trained_model(model_dir)
    assert experiment.model.feature_spec == spec
    assert (experiment.model.multimodal_dim, experiment.model.multimodal_dtype) == (64, "float32")
    widths = {table.name.split("_embedding")[0]: table.output_dim
              for table in model.embeddings.tables.values()}
    assert widths == {"user": 8, "age_band": 8, "gender": 4, "city": 8, "item": 8, "category": 8,
                      "advertiser": 8}
    assert result["optimizer_iterations"] == result["expected_iterations"] > 0
    assert 0.0 <= result["eval"]["auc"] <= 1.0


def test_the_export_serves_the_spec_features_as_the_model_scores_them(trained):
    root, spec, model_dir, result = trained
    export = result["export"]
    assert signatures.export_feature_spec(export) == spec
    loaded = tf.saved_model.load(export)
    rank = loaded.signatures[signatures.RANK]
    serving_default = loaded.signatures[signatures.SERVING_DEFAULT]
    assert set(rank.structured_input_signature[1]) == {
        "user_id", "age_band", "gender", "city", "history_items", "history_categories",
        "item_id", "item_category", "advertiser"}
    assert set(serving_default.structured_input_signature[1]) == {
        *rank.structured_input_signature[1], signatures.VALID_HISTORY_LENGTH}

    model, _ = runs.load_trained_model(model_dir)
    data = str(root / "local")
    files = dataset_dir.split_files(data, "test")
    batch, _ = next(iter(reader.make_dataset(files, 16, history_length=HISTORY, feature_spec=spec)))
    expected = model(batch, training=False).numpy()

    raw = {name: _raw(data, spec.vocabulary[name], batch[name].numpy())
           for name in spec.model_features}
    # rank: the first sample's user, its history (unpadded), every row's candidate.
    history = batch[features.HISTORY_ITEMS].numpy()[0] != features.PAD
    user_rows = batch[features.USER_KEY].numpy() == batch[features.USER_KEY].numpy()[0]
    inputs = {name: tf.constant(raw[name][0]) for name in spec.user_features}
    inputs.update({name: tf.constant(raw[name][0][history]) for name in features.SEQUENCE_FEATURES})
    inputs.update({name: tf.constant(raw[name]) for name in spec.candidate_features})
    ranked = rank(**inputs)[signatures.LOGIT].numpy()
    np.testing.assert_allclose(ranked[user_rows], expected[user_rows], rtol=1e-4, atol=1e-5)

    # serving_default: every row with its own user, right-padded histories.
    lengths = (history_rows := batch[features.HISTORY_ITEMS].numpy() != features.PAD).sum(1)
    rows = {name: tf.constant(raw[name]) for name in spec.scalar_features}
    for name in features.SEQUENCE_FEATURES:
        right = [np.pad(r[h], (0, HISTORY - h.sum())) for r, h in zip(raw[name], history_rows)]
        rows[name] = tf.constant(np.stack(right))
    rows[signatures.VALID_HISTORY_LENGTH] = tf.constant(lengths.astype(np.int64))
    scored = serving_default(**rows)[signatures.LOGIT].numpy()
    np.testing.assert_allclose(scored, expected, rtol=1e-4, atol=1e-5)
    assert json.loads(Path(export, signatures.FEATURE_SPEC_FILE).read_text()) == spec.to_dict()


def test_label_free_candidates_of_the_spec_score_and_join_back_row_for_row(trained, tmp_path):
    """The spec's test impressions without their label, shuffled, with a row key and a carried
    column, scored by ``pipelines.predict``: every row comes back in the input's order with its
    raw IDs, and its score is the one the run gives the same sample from the converted records."""
    from muse_tf.jobs import prediction
    from pipelines import predict as raw_predict

    root, spec, model_dir, _ = trained
    parquet, candidates_dir = root / "parquet", tmp_path / "candidates"
    shutil.copytree(parquet, candidates_dir)
    samples_table = spec.tables.per_split("samples", "test")
    (path,) = candidates_dir.glob(f"{samples_table}*.parquet")
    samples = pd.read_parquet(path).drop(columns=[spec.label])
    samples = samples.sample(frac=1.0, random_state=0).reset_index(drop=True)
    samples["request"] = [f"r{i}" for i in range(len(samples))]
    samples["slot"] = np.arange(len(samples)) % 3
    samples.to_parquet(path, index=False)

    output = tmp_path / "scores.parquet"
    result = raw_predict.main(["--parquet", str(candidates_dir), "--data", str(root / "local"),
                               "--model-dir", model_dir, "--output", str(output), "--quiet",
                               "--row-key", "request", "--carry", "slot"])
    scored = pd.read_parquet(output)
    assert list(scored.columns) == ["request", "user_id", "item_id", "probability", "logit", "slot"]
    assert result["rows"] == result["samples_in"] == len(samples)
    assert scored["request"].tolist() == samples["request"].tolist()
    assert scored["user_id"].tolist() == samples[spec.user_id].tolist()
    assert scored["item_id"].tolist() == samples[spec.item_id].tolist()
    assert scored["slot"].tolist() == samples["slot"].tolist()

    # The reference: the run's scores of the converted test split, matched by (user, item index).
    batches, vocabularies = prediction.scored_split(str(root / "local"), split="test",
                                                    model_dir=model_dir, progress=False)
    reference = prediction.concatenate_scores(batches)
    expected = pd.DataFrame({"user": reference["groups"], "item": reference["item_id"],
                             "logit": reference["logits"]})
    mine = pd.DataFrame({"user": scored["user_id"],
                         "item": vocabulary.lookup(vocabularies["item"], scored["item_id"]),
                         "logit": scored["logit"]})
    order = ["user", "item", "logit"]
    mine, expected = mine.sort_values(order), expected.sort_values(order)
    np.testing.assert_array_equal(mine[["user", "item"]].to_numpy(), expected[["user", "item"]].to_numpy())
    np.testing.assert_allclose(mine["logit"].to_numpy(), expected["logit"].to_numpy(), rtol=1e-5,
                               atol=1e-5)
