"""What an item created after training gains from its multimodal vector (README "New items").

    python docs/new_items_study.py [--users 2000] [--held-out 0.2] [--seeds 2]

The planted synthetic world (``muse_tf.data.synthetic``) is written once as a converted dataset
(``full``); a copy of it (``held_out``) then lacks a random share of the items with a vector, as if
they had been created after training: they leave the item vocabulary and the multimodal table (OOV
wherever they occur) and the training samples that target them are dropped. MUSE is trained on
``held_out`` and exported (version 1: the new items are OOV without a vector), then exported again
with ``python -m muse_tf.export --items`` and the held-out items' vectors (version 2: OOV for their
ID, searched by their vector). A run trained on ``full``, where the items were known, is the upper
reference. All three exports score the test split of ``full`` through their serving signature (raw
IDs); the figures are exact GAUC and AUC (``muse_tf.jobs.metrics``) over the test samples whose
target is a held-out item, and over all test samples. Results go to ``docs/new_items_study.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil

import numpy as np

import muse_tf  # noqa: F401  (selects the Keras 2 API first)
from muse_tf import export
from muse_tf.config import DEFAULT_WORK_DIR
from muse_tf.contract import dataset_dir, features, records, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import reader
from muse_tf.data.synthetic import SPLITS, SyntheticConfig
from muse_tf.data.synthetic_dataset import write_dataset
from muse_tf.jobs import experiments, metrics, scoring, training


def held_out_items(data_dir: str, share: float, seed: int) -> np.ndarray:
    """A random ``share`` of the items with a vector, as raw IDs."""
    table = dataset_dir.load_multimodal_table(data_dir)
    items = dataset_dir.load_vocabulary(data_dir, "item")
    with_vector = items[table[vocabulary.RESERVED :].any(axis=1)]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(with_vector, int(share * len(with_vector)), replace=False))


def _read_shard(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A shard's user records, column-wise: name -> (values, row lengths) (scalars: lengths None)."""
    import tensorflow as tf  # after muse_tf, which selects the Keras 2 API

    serialized = list(tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION))
    parsed = tf.io.parse_example(tf.stack(serialized), records.parse_spec(TAOBAO_MM))
    return {name: (value.numpy(), None) if isinstance(value, tf.Tensor)
            else (value.flat_values.numpy(), value.row_lengths().numpy())
            for name, value in parsed.items()}


def write_held_out(full: str, output: str, held_out: np.ndarray) -> None:
    """``full`` without the ``held_out`` items: a converted dataset of its own (see the docstring)."""
    import tensorflow as tf  # after muse_tf, which selects the Keras 2 API

    items = dataset_dir.load_vocabulary(full, "item")
    kept = ~np.isin(items, held_out)
    # Old item index -> new: PAD and OOV stay, a held-out item becomes OOV.
    remap = np.full(vocabulary.table_rows(items), features.OOV, np.int64)
    remap[features.PAD] = features.PAD
    remap[vocabulary.RESERVED + np.flatnonzero(kept)] = vocabulary.RESERVED + np.arange(kept.sum())
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(os.path.join(output, dataset_dir.VOCAB_DIR))
    for name, ids in dataset_dir.load_vocabularies(full).items():
        np.save(dataset_dir.vocab_path(output, name), items[kept] if name == "item" else ids)
    table = dataset_dir.load_multimodal_table(full)
    np.save(os.path.join(output, dataset_dir.MULTIMODAL_TABLE),
            np.concatenate([table[: vocabulary.RESERVED], table[vocabulary.RESERVED :][kept]]))
    manifest = dataset_dir.load_manifest(full)
    splits = {}
    for split in SPLITS:
        shards = []
        for entry in manifest["splits"][split]["shards"]:
            columns = _read_shard(os.path.join(full, entry["file"]))
            target = remap[columns[features.ITEM_ID][0]]
            # Training never saw the new items: their samples go; test keeps them (as OOV).
            keep = target != features.OOV if split == "train" else np.ones(len(target), bool)
            sample_counts = columns[features.ITEM_ID][1]
            user_of_sample = np.repeat(np.arange(len(sample_counts)), sample_counts)
            counts = np.bincount(user_of_sample[keep], minlength=len(sample_counts))
            users = counts > 0
            history_lengths = columns[features.HISTORY_ITEMS][1]
            history_rows = np.repeat(users, history_lengths)
            user = {name: columns[name][0][users] for name in records.user_features(TAOBAO_MM)}
            history = {name: columns[name][0][history_rows] for name in records.HISTORY_FEATURES}
            history[features.HISTORY_ITEMS] = remap[history[features.HISTORY_ITEMS]]
            samples = {name: columns[name][0][keep] for name in records.sample_features(TAOBAO_MM)}
            samples[features.ITEM_ID] = target[keep]
            path = os.path.join(output, entry["file"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
            with tf.io.TFRecordWriter(path, options) as writer:
                for record in records.encode_user_records(
                    user, history, history_lengths[users], samples, counts[users], TAOBAO_MM
                ):
                    writer.write(record)
            shards.append({"file": entry["file"], "samples_in": len(keep),
                           "samples_written": int(keep.sum()), "users_written": int(users.sum()),
                           "bytes": os.path.getsize(path)})
        splits[split] = dataset_dir.split_summary(shards, {**dataset_dir.sum_counts(shards),
                                                           "rejected": {}})
    sizes = {name: vocabulary.table_rows(ids) for name, ids in dataset_dir.load_vocabularies(output).items()}
    with open(os.path.join(output, dataset_dir.MANIFEST), "w") as f:
        json.dump(dataset_dir.build_manifest(source=f"{full} without {len(held_out)} items",
                                             history_cap=manifest["history_cap"],
                                             vocab_sizes=sizes, splits=splits,
                                             feature_spec=TAOBAO_MM), f, indent=1)


def write_items_file(full: str, held_out: np.ndarray, path: str) -> None:
    """The held-out items' IDs and vectors, as ``muse_tf.export --items`` reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = vocabulary.lookup(dataset_dir.load_vocabulary(full, "item"), held_out)
    vectors = np.asarray(dataset_dir.load_multimodal_table(full)[index])
    pq.write_table(pa.table({features.ITEM_ID: held_out,
                             "item_vector": pa.array(list(vectors), pa.list_(pa.int8()))}), path)


def score(export_dir: str, full: str, history_length: int) -> dict[str, np.ndarray]:
    """The test split of ``full`` scored through the export's serving signature."""
    dataset = reader.make_dataset(dataset_dir.split_files(full, "test"), 512,
                                  history_length=history_length)
    scorer = scoring.export_scorer(export_dir, dataset_dir.load_vocabularies(full))
    return scoring.concatenate(scoring.scored_batches(scorer, dataset))


def figures(scored: dict[str, np.ndarray], new: np.ndarray) -> dict[str, dict]:
    """GAUC, AUC and counts over the new-item samples and over all samples."""
    return {"new_items": metrics.summarize({k: v[new] for k, v in scored.items()}),
            "all": metrics.summarize(scored)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--history", type=int, default=500, help="behaviours per user")
    parser.add_argument("--samples-per-user", type=float, default=40.0)
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--held-out", type=float, default=0.2,
                        help="share of the items with a vector created 'after training'")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds")
    parser.add_argument("--work-dir", default=os.path.join(DEFAULT_WORK_DIR, "new_items_study"))
    parser.add_argument("--output", default=os.path.join("docs", "new_items_study.json"))
    args = parser.parse_args()
    world = SyntheticConfig(users=args.users, behaviours_per_user=args.history,
                            samples_per_user=args.samples_per_user, test_fraction=args.test_fraction)
    full, held_out_dir = (os.path.join(args.work_dir, name) for name in ("full", "held_out"))
    shutil.rmtree(args.work_dir, ignore_errors=True)
    write_dataset(world, full)
    held_out = held_out_items(full, args.held_out, seed=0)
    write_held_out(full, held_out_dir, held_out)
    items_file = os.path.join(args.work_dir, "items.parquet")
    write_items_file(full, held_out, items_file)
    item_ids = dataset_dir.load_vocabulary(full, "item")
    results = []
    for seed in range(args.seeds):
        experiment = experiments.experiment_config({"variant": "muse"}, seed,
                                                   [f"train.history_length={args.history}"])
        exports = {}
        for name, data in (("held_out", held_out_dir), ("full", full)):
            model_dir = os.path.join(args.work_dir, f"{name}-seed{seed}")
            result = training.run(experiment, data, model_dir, overwrite=True, verbose=0)
            exports[name] = result["export"]
        export_base = os.path.dirname(os.path.dirname(exports["held_out"]))
        refreshed = export.main(["--model-dir", os.path.join(args.work_dir, f"held_out-seed{seed}"),
                                 "--data", held_out_dir, "--export-dir", export_base,
                                 "--items", items_file])
        row = {"seed": seed}
        for name, path in (("without_vector", exports["held_out"]), ("with_vector", refreshed),
                           ("known_item", exports["full"])):
            scored = score(path, full, experiment.train.history_length)
            new = np.isin(vocabulary.raw_ids(item_ids, scored["item_id"], 0), held_out)
            row[name] = figures(scored, new)
            print(f"seed {seed} {name}: new-item GAUC {row[name]['new_items']['gauc']:.4f} "
                  f"({row[name]['new_items']['gauc_users']} users), all GAUC "
                  f"{row[name]['all']['gauc']:.4f}", flush=True)
        results.append(row)
        with open(args.output, "w") as f:
            json.dump({"world": dataclasses.asdict(world), "held_out_items": len(held_out),
                       "items": len(item_ids), "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
