"""Shared by the export and serving tests: a small MUSE model, synthetic raw-ID vocabularies,
raw-ID requests for both signatures, and reference scores from the Keras model fed with indices
looked up by NumPy (``vocabulary.lookup``), independent of the exported graph."""

import dataclasses
import json
import os

import numpy as np

from muse_tf.config import ExperimentConfig, ModelConfig
from muse_tf.contract import dataset_dir, features, signatures, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.jobs import runs, seeding
from muse_tf.models import MuseModel

SIZES = {
    "user": 50,
    "profile_1": 9,
    "profile_2": 12,
    "profile_3": 7,
    "profile_4": 15,
    "profile_5": 5,
    "item": 300,
    "category": 40,
    "attr_213": 30,
    "attr_214": 20,
}
HUGE_ID = 7_000_000_000_000_000_000


@dataclasses.dataclass
class Case:
    model: MuseModel
    vocabularies: dict
    item_category: np.ndarray  # raw category ID of each item vocabulary position


def make_vocabularies(rng):
    """Distinct int64 raw IDs, including 0 (a real ID, not padding), negatives and huge hashes."""
    vocabularies = {}
    for name, size in SIZES.items():
        ids = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 4 * size))
        vocabularies[name] = rng.permutation(ids)[:size]
    vocabularies["item"][:2] = [HUGE_ID, 0]
    return vocabularies


def make_case(seed=0, variant="muse", **model_overrides):
    seeding.set_seed(seed)  # the same weights whatever ran before in the process
    rng = np.random.default_rng(seed)
    vocabularies = make_vocabularies(rng)
    config = ModelConfig(
        variant=variant,
        vocab_sizes={name: vocabulary.table_rows(ids) for name, ids in vocabularies.items()},
        embedding_dim=8,
        top_k=16,
        recent_length=20,
        mlp_units=[16],
        din_attention_units=[8],
        **model_overrides,
    )
    model = MuseModel(config)
    table = rng.integers(-127, 128, (config.vocab_sizes["item"], 128)).astype(np.int8)
    table[[0, 1, 5, 9, 40]] = 0  # PAD, OOV and items without a multimodal vector
    model.set_multimodal_table(table)
    model(lookup_rows(vocabularies, rows_request(rng, vocabularies, [2], 3)))
    # Trained-size embeddings, so that a wrong index visibly moves the score.
    for table in model.embedding_trainable_variables:
        table.assign(rng.normal(0.0, 0.5, table.shape))
    item_category = rng.choice(vocabularies["category"], SIZES["item"])
    return Case(model, vocabularies, item_category)


def unknown_ids(rng, known, count):
    ids = rng.integers(10**15, 10**16, count)
    assert not np.isin(ids, known).any()
    return ids


def raw_history(rng, case_or_vocabularies, length, unknown_share=0.05):
    """Items (mostly known, some unknown) and their categories; an item has one category."""
    vocabularies, item_category = _parts(case_or_vocabularies)
    position = rng.integers(0, SIZES["item"], length)
    items = vocabularies["item"][position]
    categories = item_category[position]
    unknown = rng.random(length) < unknown_share
    items[unknown] = unknown_ids(rng, vocabularies["item"], int(unknown.sum()))
    return items, categories


def _parts(case_or_vocabularies):
    if isinstance(case_or_vocabularies, Case):
        return case_or_vocabularies.vocabularies, case_or_vocabularies.item_category
    return case_or_vocabularies, np.resize(case_or_vocabularies["category"], SIZES["item"])


def _pick(rng, vocabularies, name, count, unknown=0):
    ids = rng.choice(vocabularies[TAOBAO_MM.vocabulary[name]], count)
    ids[:unknown] = unknown_ids(rng, vocabularies[TAOBAO_MM.vocabulary[name]], unknown)
    return ids


def rank_request(rng, case_or_vocabularies, length, candidates):
    """One user (scalars), an unpadded history (L,), candidates (C,), the first one unknown."""
    vocabularies, _ = _parts(case_or_vocabularies)
    request = {name: np.int64(_pick(rng, vocabularies, name, 1)[0]) for name in signatures.USER_FEATURES}
    items, categories = raw_history(rng, case_or_vocabularies, length)
    request[features.HISTORY_ITEMS], request[features.HISTORY_CATEGORIES] = items, categories
    for name in signatures.CANDIDATE_FEATURES:
        request[name] = _pick(rng, vocabularies, name, candidates, unknown=1)
    return request


def rows_request(rng, case_or_vocabularies, lengths, width):
    """Independent rows; histories right-padded with random IDs past ``history_length``."""
    vocabularies, _ = _parts(case_or_vocabularies)
    rows = len(lengths)
    request = {
        name: _pick(rng, vocabularies, name, rows, unknown=1) for name in TAOBAO_MM.scalar_features
    }
    items, categories = raw_history(rng, case_or_vocabularies, rows * width)
    request[features.HISTORY_ITEMS] = items.reshape(rows, width)
    request[features.HISTORY_CATEGORIES] = categories.reshape(rows, width)
    request[signatures.VALID_HISTORY_LENGTH] = np.asarray(lengths, np.int64)
    return request


def _left_pad(rows, lengths):
    """NumPy: keep each row's first ``length`` entries, right-aligned, PAD before; >= 1 column."""
    out = np.full((len(rows), max(rows.shape[1], 1)), features.PAD, np.int64)
    for b, length in enumerate(lengths):
        if length:
            out[b, -length:] = rows[b, :length]
    return out


def _index(vocabularies, name, raw):
    return vocabulary.lookup(vocabularies[TAOBAO_MM.vocabulary[name]], raw)


def lookup_rows(vocabularies, request):
    indices = {name: _index(vocabularies, name, request[name]) for name in TAOBAO_MM.scalar_features}
    for name in features.SEQUENCE_FEATURES:
        rows = _index(
            vocabularies,
            name,
            np.asarray(request[name]).reshape(len(request[signatures.VALID_HISTORY_LENGTH]), -1),
        )
        indices[name] = _left_pad(rows, request[signatures.VALID_HISTORY_LENGTH])
    return indices


def keras_rows(case, request):
    """Reference logits of a ``serving_default`` request."""
    return case.model(lookup_rows(case.vocabularies, request), training=False).numpy()


def keras_rank(case, request):
    """Reference logits of a ``rank`` request, scored as C ordinary rows (history copied C times)."""
    candidates = len(request[features.ITEM_ID])
    rows = {name: np.repeat(np.int64(request[name]), candidates) for name in signatures.USER_FEATURES}
    rows.update({name: request[name] for name in signatures.CANDIDATE_FEATURES})
    for name in features.SEQUENCE_FEATURES:
        rows[name] = np.tile(np.asarray(request[name], np.int64), (candidates, 1))
    length = len(request[features.HISTORY_ITEMS])
    rows[signatures.VALID_HISTORY_LENGTH] = np.full(candidates, length, np.int64)
    return keras_rows(case, rows)


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def write_dataset(path, vocabularies):
    """A directory that passes for a converted dataset as far as its manifest, vocabularies and
    (all-zero) multimodal table go."""
    os.makedirs(os.path.join(path, dataset_dir.VOCAB_DIR))
    with open(os.path.join(path, dataset_dir.MANIFEST), "w") as f:
        json.dump({"schema_version": dataset_dir.SCHEMA_VERSION}, f)
    for name, ids in vocabularies.items():
        np.save(dataset_dir.vocab_path(str(path), name), ids)
    rows = dataset_dir.vocab_sizes(str(path))["item"]
    np.save(os.path.join(path, dataset_dir.MULTIMODAL_TABLE), np.zeros((rows, 128), np.int8))
    return str(path)


def write_finished_run(root, case, data_dir, model_config=None):
    """A run directory as training leaves it once trained on ``data_dir``: config, dataset
    record, ``case.model``'s weights as final weights (without the frozen table, which
    ``data_dir`` then holds), and the training record."""
    run = runs.RunDir(str(root))
    experiment = ExperimentConfig(model=model_config or case.model.config)
    np.save(os.path.join(data_dir, dataset_dir.MULTIMODAL_TABLE), case.model.multimodal.get_table())
    run.start(experiment, data_dir)
    with case.model.multimodal.left_out_of_checkpoints():
        case.model.save_weights(run.final_weights)
    run.record_training(experiment, {})
    return run
