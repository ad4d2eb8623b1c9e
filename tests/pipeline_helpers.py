"""Shared helpers of the pipeline tests: the demo data, reading converted data back, references."""

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from muse_tf.contract import dataset_dir, features, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import reader

DEMO_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/taobao_mm_demo"
TABLES = (
    "train_samples",
    "test_samples",
    "train_user_features",
    "test_user_features",
    "item_features",
    "scl_embedding_int8_p90",
)


def demo_tables():
    """The demo Parquet heads as DataFrames (skips the test when the demo is absent)."""
    if not DEMO_DIR.is_dir():
        pytest.skip(f"Taobao-MM demo data not found at {DEMO_DIR}.")
    return {name: pd.read_parquet(DEMO_DIR / f"{name}.parquet") for name in TABLES}


def write_tables(directory, tables):
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(directory / f"{name}.parquet", index=False)


def tiny_synthetic(directory):
    """20 synthetic users with 10 behaviours each, as Parquet in ``directory`` (fast to convert)."""
    from muse_tf.data.synthetic import SyntheticConfig
    from pipelines.common import synthetic_parquet

    config = SyntheticConfig(users=20, behaviours_per_user=10, items=50, clusters=2, seed=1)
    synthetic_parquet.generate(config, str(directory))


def read_samples(files, history_length):
    """Every sample of ``files`` as a dict of NumPy arrays (features and ``label``)."""
    dataset = reader.make_dataset(files, 256, history_length=history_length, deterministic=True)
    batches = [(f, y) for f, y in dataset.as_numpy_iterator()]
    if not batches:
        return {}
    out = {name: np.concatenate([f[name] for f, _ in batches]) for name in batches[0][0]}
    out["label"] = np.concatenate([y for _, y in batches])
    return out


def as_rows(samples):
    """Samples as a sorted list of hashable rows, to compare as multisets."""
    names = sorted(samples)
    count = len(samples[names[0]]) if names else 0
    return sorted(
        tuple(
            tuple(samples[n][i].tolist()) if samples[n].ndim > 1 else samples[n][i].item()
            for n in names
        )
        for i in range(count)
    )


def index_maps(data_dir):
    """Each vocabulary as {raw ID: index} by the contract: index = position + 2."""
    return {
        name: {raw: position + vocabulary.RESERVED for position, raw in enumerate(ids.tolist())}
        for name, ids in dataset_dir.load_vocabularies(data_dir).items()
    }


def _index(index_map, raw):
    return index_map.get(raw, features.OOV)


def reference_split(tables, data_dir, split, history_length):
    """What conversion must write for ``split``, applying the documented rules row by row.

    Returns (rows as in ``as_rows`` of the written samples, Counter of rejection reasons).
    """
    vocabs = index_maps(data_dir)
    users = {}
    for row in tables[f"{split}_user_features"].to_dict("records"):
        if row["129_1"] != 0:
            users.setdefault(row["129_1"], row)
    items = {}
    for row in tables["item_features"].to_dict("records"):
        items.setdefault(row["205"], row)
    rejected, rows = Counter(), []
    for sample in tables[f"{split}_samples"].to_dict("records"):
        label = [int(v) for v in sample["label_0"]]
        user = users.get(sample["129_1"])
        if sample["129_1"] == 0 or sample["205"] == 0:
            rejected["missing_id"] += 1
        elif label not in ([1, 0], [0, 1]):
            rejected["malformed_label"] += 1
        elif user is None:
            rejected["user_without_features"] += 1
        elif len(user["150_2_180"]) != len(user["151_2_180"]):
            rejected["malformed_history"] += 1
        else:
            rows.append(
                _reference_sample(user, sample["205"], label[1], items, vocabs, history_length)
            )
    return rows, rejected


def _reference_sample(user, item, click, items, vocabs, history_length):
    pairs = [(i, c) for i, c in zip(user["150_2_180"], user["151_2_180"]) if i != 0]
    pairs = pairs[-history_length:]
    padding = [features.PAD] * (history_length - len(pairs))
    item_index = _index(vocabs["item"], item)
    attributes = [features.OOV] * 3
    if item_index != features.OOV and item in items:
        attributes = [
            _index(vocabs[name], items[item][column])
            for name, column in (("category", "206"), ("attr_213", "213"), ("attr_214", "214"))
        ]
    values = {
        features.USER_KEY: user["129_1"],
        features.USER_ID: _index(vocabs["user"], user["129_1"]),
        **{
            name: _index(vocabs[f"profile_{i}"], user[f"130_{i}"])
            for i, name in enumerate(TAOBAO_MM.profile_features, start=1)
        },
        features.HISTORY_ITEMS: tuple(padding + [_index(vocabs["item"], i) for i, _ in pairs]),
        features.HISTORY_CATEGORIES: tuple(
            padding + [_index(vocabs["category"], c) for _, c in pairs]
        ),
        features.ITEM_ID: item_index,
        features.ITEM_CATEGORY: attributes[0],
        TAOBAO_MM.attribute_features[0]: attributes[1],
        TAOBAO_MM.attribute_features[1]: attributes[2],
        "label": float(click),
    }
    return tuple(values[name] for name in sorted(values))
