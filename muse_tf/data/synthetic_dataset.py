"""The planted synthetic world written directly as a converted dataset (layout:
``muse_tf.contract.dataset_dir``).

The embedded default of ``python -m muse_tf.train`` (and of ``muse_tf.experiments``): no Parquet, no
conversion pipeline. The world is clean (every ID present, every item described, histories no
longer than L), so of the conversion's rules (``pipelines/README.md``) only the vocabulary and
sharding rules apply, and they are applied here as the conversion applies them:

* vocabularies from the train split, every ID kept (min-count 1) except 0, every item with an SCL
  vector kept, sorted ascending (index = position + 2);
* shard k of a split holds the users whose ``hashing.partition_of(user, shards)`` is k, in the
  order they were generated, each with its samples in order.

So ``pipelines.taobao_mm`` run on the Parquet form (``pipelines.synthetic``) of the same options
writes the same vocabularies, multimodal table and records (``tests/test_synthetic.py`` checks it).
Both take a feature spec (default: Taobao-MM's): its profile features are the world's first ones,
its attributes the world's first ones, its vectors of its width and dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from muse_tf.contract import dataset_dir, features, records, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec
from muse_tf.contract.hashing import partition_of
from muse_tf.data.synthetic import (
    ATTRIBUTES,
    MISSING_ID,
    SPLITS,
    Catalogue,
    SyntheticConfig,
    check_spec,
    user_chunks,
)

SHARDS_PER_SPLIT = 2  # what the conversion writes for inputs under 256 MB


@dataclasses.dataclass
class _Split:
    """One split's users in generation order, column-wise with raw IDs."""

    users: np.ndarray  # (U,) raw user IDs
    profiles: np.ndarray  # (U, 5) raw profile IDs
    history_lengths: np.ndarray  # (U,)
    history: np.ndarray  # (H,) item indices into the catalogue, user after user
    sample_counts: np.ndarray  # (U,)
    targets: np.ndarray  # (S,) raw item IDs, user after user
    clicks: np.ndarray  # (S,) 0/1


def _collect(catalogue: Catalogue, config: SyntheticConfig) -> dict[str, _Split]:
    rows: dict[str, dict[str, list]] = {split: {"samples": [], "users": []} for split in SPLITS}
    for _, _, chunk in user_chunks(catalogue, config):
        for split in SPLITS:
            for kind in ("samples", "users"):
                rows[split][kind] += chunk[split][kind]
    out = {}
    for split in SPLITS:
        samples, users = rows[split]["samples"], rows[split]["users"]
        out[split] = _Split(
            users=np.array([u[0] for u in users], np.int64).reshape(-1),
            profiles=np.array([u[1] for u in users], np.int64).reshape(-1, 5),
            history_lengths=np.array([len(u[2]) for u in users], np.int64),
            history=np.concatenate([u[2] for u in users]) if users else np.zeros(0, np.int64),
            sample_counts=np.array([len(s[1]) for s in samples], np.int64),
            targets=np.concatenate([s[1] for s in samples]) if samples else np.zeros(0, np.int64),
            clicks=np.concatenate([s[2] for s in samples]) if samples else np.zeros(0, np.int8),
        )
    return out


def _vocabulary(*ids: np.ndarray) -> np.ndarray:
    """Sorted distinct raw IDs, the empty-field ID 0 left out."""
    unique = np.unique(np.concatenate([np.asarray(i, np.int64).ravel() for i in ids]))
    return unique[unique != MISSING_ID]


def _vocabularies(catalogue: Catalogue, train: _Split, spec: FeatureSpec) -> dict[str, np.ndarray]:
    history_items = catalogue.ids[train.history]
    vocabs = {
        "user": _vocabulary(train.users),
        "item": _vocabulary(train.targets, history_items, catalogue.ids[catalogue.has_scl]),
        "category": _vocabulary(catalogue.category_ids[train.history], catalogue.category_ids),
    }
    for attribute, feature in zip(ATTRIBUTES, spec.item_attributes):
        vocabs[feature.vocabulary] = _vocabulary(catalogue.attr_ids[attribute])
    for i, feature in enumerate(spec.user_profile):
        vocabs[feature.vocabulary] = _vocabulary(train.profiles[:, i])
    return {name: vocabs[name] for name in spec.vocabularies}


def _item_tables(
    catalogue: Catalogue, vocabs: dict[str, np.ndarray], spec: FeatureSpec
) -> tuple[np.ndarray, ...]:
    """Per item index: (category, attribute 1, ...) indices (V, 1 + A), OOV for PAD/OOV rows, and
    the multimodal table (V, dim) of the vectors' dtype, zero where the item has no vector."""
    position = vocabulary.lookup(catalogue.ids, vocabs["item"]) - vocabulary.RESERVED
    rows = len(vocabs["item"]) + vocabulary.RESERVED
    attributes = np.full((rows, 1 + len(spec.item_attributes)), features.OOV, np.int64)
    attributes[vocabulary.RESERVED :] = np.stack(
        [
            vocabulary.lookup(vocabs["category"], catalogue.category_ids[position]),
            *(
                vocabulary.lookup(vocabs[feature.vocabulary], catalogue.attr_ids[attribute][position])
                for attribute, feature in zip(ATTRIBUTES, spec.item_attributes)
            ),
        ],
        axis=1,
    )
    multimodal = np.zeros((rows, catalogue.scl.shape[1]), catalogue.scl.dtype)
    with_vector = catalogue.has_scl[position]
    multimodal[vocabulary.RESERVED :][with_vector] = catalogue.scl[position[with_vector]]
    return attributes, multimodal


def _write_split(
    output: str,
    split_name: str,
    split: _Split,
    catalogue: Catalogue,
    vocabs: dict[str, np.ndarray],
    attributes: np.ndarray,
    spec: FeatureSpec,
) -> dict:
    """Writes the split's shards; its manifest entry."""
    history_offsets = np.concatenate([[0], np.cumsum(split.history_lengths)])
    sample_offsets = np.concatenate([[0], np.cumsum(split.sample_counts)])
    shard_of_user = partition_of(split.users, SHARDS_PER_SPLIT)
    shards = []
    for shard in range(SHARDS_PER_SPLIT):
        users = np.flatnonzero(shard_of_user == shard)
        history = np.concatenate([np.arange(history_offsets[u], history_offsets[u + 1]) for u in users]
                                 or [np.zeros(0, np.int64)])
        samples = np.concatenate([np.arange(sample_offsets[u], sample_offsets[u + 1]) for u in users]
                                 or [np.zeros(0, np.int64)])
        items = vocabulary.lookup(vocabs["item"], split.targets[samples])
        user_features = {
            features.USER_KEY: split.users[users],
            features.USER_ID: vocabulary.lookup(vocabs["user"], split.users[users]),
        }
        for i, feature in enumerate(spec.user_profile):
            user_features[feature.name] = vocabulary.lookup(
                vocabs[feature.vocabulary], split.profiles[users, i]
            )
        behaviours = split.history[history]
        history_features = {
            features.HISTORY_ITEMS: vocabulary.lookup(vocabs["item"], catalogue.ids[behaviours]),
            features.HISTORY_CATEGORIES: vocabulary.lookup(
                vocabs["category"], catalogue.category_ids[behaviours]
            ),
        }
        sample_features = {
            features.ITEM_ID: items,
            features.ITEM_CATEGORY: attributes[items, 0],
            **{name: attributes[items, 1 + k] for k, name in enumerate(spec.attribute_features)},
            features.LABEL: split.clicks[samples].astype(np.int64),
        }
        name = dataset_dir.shard_name(split_name, shard, SHARDS_PER_SPLIT)
        path = os.path.join(output, name)
        options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
        with tf.io.TFRecordWriter(path, options) as writer:
            for record in records.encode_user_records(
                user_features, history_features, split.history_lengths[users], sample_features,
                split.sample_counts[users], spec,
            ):
                writer.write(record)
        shards.append({"file": name, "samples_in": len(samples), "samples_written": len(samples),
                       "users_written": len(users), "bytes": os.path.getsize(path)})
    return dataset_dir.split_summary(shards, {**dataset_dir.sum_counts(shards), "rejected": {}})


def write_dataset(config: SyntheticConfig, output: str, spec: FeatureSpec = TAOBAO_MM) -> dict:
    """Generates the world of ``config`` and writes it to ``output`` as a converted dataset of
    ``spec``'s features with histories of at most ``config.behaviours_per_user``; returns the
    manifest. ``output`` appears complete or not at all."""
    check_spec(spec)
    if os.path.exists(output):
        raise FileExistsError(f"{output} already exists.")
    staging = f"{output}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for split in SPLITS:
        os.makedirs(os.path.join(staging, split))
    os.makedirs(os.path.join(staging, dataset_dir.VOCAB_DIR))
    catalogue = Catalogue(config, spec.multimodal)
    splits = _collect(catalogue, config)
    vocabs = _vocabularies(catalogue, splits["train"], spec)
    for name, ids in vocabs.items():
        np.save(dataset_dir.vocab_path(staging, name), ids)
    attributes, multimodal = _item_tables(catalogue, vocabs, spec)
    np.save(os.path.join(staging, dataset_dir.MULTIMODAL_TABLE), multimodal)
    manifest = dataset_dir.build_manifest(
        source=f"muse_tf.data.synthetic_dataset {json.dumps(dataclasses.asdict(config))}",
        history_cap=config.behaviours_per_user,
        feature_spec=spec,
        vocab_sizes={name: len(ids) + vocabulary.RESERVED for name, ids in vocabs.items()},
        splits={
            name: _write_split(staging, name, split, catalogue, vocabs, attributes, spec)
            for name, split in splits.items()
        },
    )
    with open(os.path.join(staging, dataset_dir.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    os.rename(staging, output)
    return manifest


def ensure_default_dataset(work_dir: str, users: int | None = None, behaviours_per_user: int = 1000) -> str:
    """The embedded synthetic dataset under ``work_dir/data``, written once; later calls reuse it."""
    sizes = SyntheticConfig(behaviours_per_user=behaviours_per_user)
    if users is not None:
        sizes = dataclasses.replace(sizes, users=users)
    name = f"synthetic-u{sizes.users}-l{sizes.behaviours_per_user}-s{sizes.seed}"
    converted = os.path.join(work_dir, "data", name)
    if os.path.exists(os.path.join(converted, dataset_dir.MANIFEST)):
        print(f"Using the cached synthetic dataset in {converted}")
        return converted
    shutil.rmtree(converted, ignore_errors=True)  # an unfinished earlier attempt
    print(f"Writing the synthetic dataset ({sizes.users} users, histories of "
          f"{sizes.behaviours_per_user}) to {converted} ...")
    write_dataset(sizes, converted)
    return converted
