"""What the benchmarks run on: paper-sized models with random weights, their SavedModel export,
raw-ID requests, in-memory training batches and a converted synthetic dataset.

Latency and throughput do not depend on trained weight values, so the serving and training
benchmarks use freshly initialised models (embeddings drawn at a trained-like scale) instead of
training first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf

from muse_tf.config import ExperimentConfig, ModelConfig, TrainConfig
from muse_tf.contract import features, signatures, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import synthetic_dataset
from muse_tf.jobs import runs, saved_model, seeding
from muse_tf.models import MuseModel

# Vocabulary sizes (raw IDs, without PAD/OOV) of the serving model: enough items for a 100,000-long
# history of mostly distinct behaviours.
SERVING_VOCABULARY = {
    "user": 10_000,
    "profile_1": 2,
    "profile_2": 8,
    "profile_3": 30,
    "profile_4": 300,
    "profile_5": 10,
    "item": 250_000,
    "category": 13_050,
    "attr_213": 543,
    "attr_214": 122,
}
# Sizes of the embedded synthetic dataset's vocabularies (pipelines.synthetic defaults), for
# training batches built in memory.
TRAIN_VOCABULARY = {
    "user": 2_000,
    "profile_1": 2,
    "profile_2": 8,
    "profile_3": 30,
    "profile_4": 300,
    "profile_5": 10,
    "item": 20_000,
    "category": 200,
    "attr_213": 60,
    "attr_214": 12,
}
NO_VECTOR_SHARE = 0.1  # items without a multimodal vector (all-zero rows), as in Taobao-MM


def vocabularies(sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct int64 raw IDs per vocabulary (hashed-looking, never 0)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, size in (sizes or SERVING_VOCABULARY).items():
        ids = np.unique(rng.integers(1, np.iinfo(np.int64).max, 2 * size + 16))
        out[name] = rng.permutation(ids)[:size]
    return out


def train_vocab_sizes() -> dict[str, int]:
    """Table rows (PAD and OOV included) of ``TRAIN_VOCABULARY``'s vocabularies."""
    return {name: vocabulary.table_rows(ids) for name, ids in vocabularies(TRAIN_VOCABULARY).items()}


def multimodal_table(items: int, seed: int = 0, dim: int = 128) -> np.ndarray:
    """(items, dim) int8, rows 0/1 (PAD, OOV) and ``NO_VECTOR_SHARE`` of the rest all zero."""
    rng = np.random.default_rng(seed + 1)
    table = rng.integers(-127, 128, (items, dim)).astype(np.int8)
    table[:2] = 0
    table[rng.random(items) < NO_VECTOR_SHARE] = 0
    return table


def paper_config(variant: str, vocab_sizes: dict[str, int]) -> ModelConfig:
    """The paper's settings (D = 16, K = 50, R = 50, tower 256-128-64 with Dice)."""
    return ModelConfig(variant=variant, vocab_sizes=dict(vocab_sizes))


def random_model(config: ModelConfig, table: np.ndarray, seed: int = 0) -> MuseModel:
    """A built model with ``table`` loaded and embeddings at a trained-like scale."""
    seeding.set_seed(seed)
    model = runs.build_model(ExperimentConfig(model=config, train=TrainConfig()), table)
    rng = np.random.default_rng(seed)
    for table in model.embedding_trainable_variables:
        table.assign(rng.normal(0.0, 0.05, table.shape).astype(np.float32))
    return model


def library_fingerprint() -> str:
    """A short hash of the muse_tf sources: an export made by other code is not reused."""
    import muse_tf

    digest = hashlib.sha1()
    root = os.path.dirname(muse_tf.__file__)
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    return digest.hexdigest()[:10]


def export_serving_model(export_base: str, max_history_length: int = 100_000, seed: int = 0) -> str:
    """Exports a paper-sized random MUSE model; returns its base path (``.../muse``).

    Reuses an export made earlier by the same library code with the same ``seed`` (the export is
    deterministic in both).
    """
    base = os.path.join(export_base, f"{library_fingerprint()}-s{seed}", "muse")
    if os.path.exists(os.path.join(base, "1", "saved_model.pb")):
        return base
    vocab = vocabularies(seed=seed)
    config = serving_config(seed)
    model = random_model(config, multimodal_table(config.vocab_sizes["item"], seed), seed)
    saved_model.export_saved_model(model, vocab, os.path.dirname(base), "muse", 1,
                              max_history_length=max_history_length)
    return base


def serving_config(seed: int = 0) -> ModelConfig:
    """The configuration of ``export_serving_model``'s model: paper-sized MUSE."""
    sizes = {name: vocabulary.table_rows(ids) for name, ids in vocabularies(seed=seed).items()}
    return paper_config("muse", sizes)


def rank_request(length: int, candidates: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``rank`` request of known raw IDs: one user, an L-long history, C candidates."""
    vocab = vocabularies(seed=seed)
    rng = np.random.default_rng(seed + 1000 * length + candidates)

    def pick(name: str, count: int) -> np.ndarray:
        return rng.choice(vocab[TAOBAO_MM.vocabulary[name]], count).astype(np.int64)

    request = {name: np.int64(pick(name, 1)[0]) for name in signatures.USER_FEATURES}
    for name in features.SEQUENCE_FEATURES:
        request[name] = pick(name, length)
    for name in signatures.CANDIDATE_FEATURES:
        request[name] = pick(name, candidates)
    return request


def rows_request(width: int, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A ``serving_default`` request of known raw IDs: ``rows`` rows, each a full W-long history."""
    ranked = rank_request(width * rows, rows, seed=seed)
    request = {name: np.repeat(ranked[name], rows) for name in signatures.USER_FEATURES}
    request.update({name: ranked[name] for name in signatures.CANDIDATE_FEATURES})
    request.update({name: ranked[name].reshape(rows, width) for name in features.SEQUENCE_FEATURES})
    request[signatures.VALID_HISTORY_LENGTH] = np.full(rows, width, np.int64)
    return request


def training_batch(
    vocab_sizes: dict[str, int], batch: int, length: int, seed: int = 0, samples_per_user: int = 8
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """An in-memory batch shaped like the converted data: ``samples_per_user`` samples share a
    history, 5% of the histories are short (left-padded), items of a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    users = -(-batch // samples_per_user)
    items = vocab_sizes["item"]
    popularity = 1.0 / np.arange(1, items - 1) ** 1.1
    popularity /= popularity.sum()
    history = rng.choice(np.arange(2, items), (users, length), p=popularity)
    short = rng.random(users) < 0.05
    history[short, : length // 2] = features.PAD
    owner = np.repeat(np.arange(users), samples_per_user)[:batch]
    x = {name: rng.integers(2, vocab_sizes[TAOBAO_MM.vocabulary[name]], batch) for name in
         TAOBAO_MM.scalar_features}
    x[features.ITEM_ID] = rng.choice(np.arange(2, items), batch, p=popularity)
    x[features.HISTORY_ITEMS] = history[owner]
    categories = (history[owner] % (vocab_sizes["category"] - 2)) + 2
    x[features.HISTORY_CATEGORIES] = np.where(history[owner] > 0, categories, features.PAD)
    for name in (features.USER_ID, *TAOBAO_MM.profile_features):
        x[name] = x[name][owner]
    labels = (rng.random(batch) < 0.137).astype(np.float32)
    return {k: tf.constant(v, tf.int64) for k, v in x.items()}, tf.constant(labels)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    users: int
    history_length: int = 1000


def converted_dataset(work_dir: str, spec: DatasetSpec) -> str:
    """The synthetic dataset of ``spec``, generated and converted once under ``work_dir``."""
    return synthetic_dataset.ensure_default_dataset(work_dir, spec.users, spec.history_length)
