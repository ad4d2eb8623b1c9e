"""Bulk-load a converted dataset's user histories and profiles into a history store.

    python -m serving.history.load --data runs/data/synthetic-u2000-l1000-s0 --store sqlite:///runs/history.db

A record holds one user's history as of that user's samples in its split
(``muse_tf.contract.records``); a user found in several splits keeps the longest history and that
record's profile, and the later split wins a tie (splits are read from the manifest's last, test,
to its first, train; a record replaces a user's history only when longer). Records hold
vocabulary indices; they are stored as the raw IDs ``python -m serving.request`` sends to
``rank``, an ID the vocabulary lacked becoming one it does not hold
(``muse_tf.contract.vocabulary.raw_ids``), so ``rank_by_user`` scores what ``rank`` scores. Writes
replace whole users: re-running after a failure is safe. Progress goes to stderr, the counts to
stdout.

New behaviours later go through the store's ``append`` (serving/README.md, "History store").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from muse_tf import cli
from muse_tf.contract import features
from serving.history.store import DEFAULT_CAP, HistoryStore, StoreError, open_store

if TYPE_CHECKING:
    from muse_tf.contract.feature_spec import FeatureSpec

BATCH_RECORDS = 256
# Rejected records named one by one on stderr before only their count is reported.
NAMED_REJECTIONS = 10


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m serving.history.load``."""
    parser = cli.parser("serving.history.load", __doc__)
    parser.add_argument("--data", required=True, help="converted dataset directory")
    parser.add_argument("--store", required=True,
                        help="history store URL: sqlite:///PATH or redis://HOST:PORT/DB")
    parser.add_argument("--split", action="append",
                        help="split to read (repeatable; a later one wins a tie); default: every split")
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP,
                        help="most behaviours kept per user (the newest)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a store round trip may take")
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's start-up logs")
    return parser


class Counts:
    """What a load read, wrote and rejected: records read = written + not longer (than the user's
    history already written from a later split) + rejected."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.records = self.written = self.not_longer = 0
        self.rejected: dict[str, int] = {}
        self.longest: dict[int, int] = {}  # user -> length of the history written

    def reject(self, path: str, user: int, reason: str) -> None:
        if sum(self.rejected.values()) < NAMED_REJECTIONS:
            print(f"load: {path}: user {user} rejected: {reason}", file=sys.stderr)
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def summary(self) -> dict:
        behaviours = sum(min(length, self.cap) for length in self.longest.values())
        return {"users_written": len(self.longest), "behaviours_written": behaviours,
                "records_read": self.records, "records_written": self.written,
                "records_not_longer": self.not_longer, "rejected": dict(self.rejected)}


def _batches(path: str, feature_spec: FeatureSpec) -> Iterator[dict[str, np.ndarray]]:
    """User keys, profiles (N, P) and the histories' flat values and row splits of the records of
    one shard, ``BATCH_RECORDS`` at a time."""
    import tensorflow as tf

    from muse_tf.contract import dataset_dir, records

    spec = records.parse_spec(feature_spec)
    profile = feature_spec.profile_features
    names = (features.USER_KEY, *profile, *records.HISTORY_FEATURES)
    dataset = tf.data.TFRecordDataset(path, compression_type=records.COMPRESSION)
    with dataset_dir.damaged_shards_named([path]):
        for serialized in dataset.batch(BATCH_RECORDS):
            try:
                parsed = tf.io.parse_example(serialized, {name: spec[name] for name in names})
            except tf.errors.InvalidArgumentError as error:
                raise ValueError(f"Shard {path} holds no user records: {error.message}") from None
            batch = {
                "keys": parsed[features.USER_KEY].numpy(),
                "profiles": np.stack([parsed[name].numpy() for name in profile], 1).reshape(
                    len(parsed[features.USER_KEY]), len(profile)),
            }
            for name in records.HISTORY_FEATURES:
                batch[name] = parsed[name].flat_values.numpy()
                batch[name + "/splits"] = parsed[name].row_splits.numpy()
            yield batch


class RawIds:
    """Each feature's vocabulary and the ID that stands for PAD and OOV, computed once."""

    def __init__(self, vocabularies: dict[str, np.ndarray], spec: FeatureSpec):
        from muse_tf.contract import vocabulary

        self.spec = spec
        self._rule = vocabulary
        self._vocabularies = vocabularies
        self._unknown = {name: vocabulary.unknown_id(ids) for name, ids in vocabularies.items()}

    def outside(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Which of feature ``name``'s ``indices`` no vocabulary index can be."""
        rows = self._rule.table_rows(self._vocabularies[self.spec.vocabulary[name]])
        return (indices < 0) | (indices >= rows)

    def __call__(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Raw IDs of feature ``name``'s ``indices`` (those ``outside`` become the unknown ID)."""
        vocabulary = self.spec.vocabulary[name]
        indices = np.where(self.outside(name, indices), features.PAD, indices)
        return self._rule.raw_ids(self._vocabularies[vocabulary], indices, self._unknown[vocabulary])


def load_shard(path: str, store: HistoryStore, raw_ids: RawIds, counts: Counts) -> None:
    """Writes the users of one shard whose history is longer than any written so far."""
    items_name, categories_name = features.HISTORY_ITEMS, features.HISTORY_CATEGORIES
    profile_names = raw_ids.spec.profile_features
    for batch in _batches(path, raw_ids.spec):
        keys, profiles = batch["keys"], batch["profiles"]
        counts.records += len(keys)
        item_splits, category_splits = batch[items_name + "/splits"], batch[categories_name + "/splits"]
        lengths = np.diff(item_splits)
        reasons = np.full(len(keys), "", object)
        reasons[lengths != np.diff(category_splits)] = "history items and categories differ in length"
        for column, name in enumerate(profile_names):
            reasons[(reasons == "") & raw_ids.outside(name, profiles[:, column])] = (
                "profile index outside its vocabulary")
        for name, splits in ((items_name, item_splits), (categories_name, category_splits)):
            rows = np.repeat(np.arange(len(keys)), np.diff(splits))
            bad = np.bincount(rows[raw_ids.outside(name, batch[name])], minlength=len(keys))
            reasons[(reasons == "") & (bad > 0)] = f"{name} index outside its vocabulary"
        raw_profiles = np.stack([raw_ids(name, profiles[:, column])
                                 for column, name in enumerate(profile_names)], 1).reshape(
            len(keys), len(profile_names))
        raw = {name: raw_ids(name, batch[name]) for name in (items_name, categories_name)}
        for row, user in enumerate(keys.tolist()):
            if reasons[row]:
                counts.reject(path, user, reasons[row])
                continue
            if counts.longest.get(user, -1) >= lengths[row]:
                counts.not_longer += 1
                continue
            items = raw[items_name][item_splits[row]:item_splits[row + 1]]
            categories = raw[categories_name][category_splits[row]:category_splits[row + 1]]
            profile = dict(zip(profile_names, raw_profiles[row].tolist()))
            store.write(user, items, categories, profile)
            counts.written += 1
            counts.longest[user] = int(lengths[row])


def load(args: argparse.Namespace) -> dict:
    """Loads ``--data``'s splits into ``--store``; returns ``Counts.summary``."""
    from muse_tf.contract import dataset_dir

    if args.cap < 1:
        raise cli.UsageError(f"--cap must be at least 1, got {args.cap}.")
    try:
        splits = args.split or list(dataset_dir.load_manifest(args.data)["splits"])
        files = [path for split in reversed(splits)
                 for path in dataset_dir.split_files(args.data, split)]
        spec = dataset_dir.load_feature_spec(args.data)
        raw_ids = RawIds(dataset_dir.load_vocabularies(args.data, spec), spec)
    except (FileNotFoundError, ValueError) as error:
        raise cli.UsageError(f"--data {args.data}: {error}") from None
    try:
        store = open_store(args.store, cap=args.cap, timeout_s=args.timeout)
    except (ValueError, StoreError) as error:
        raise cli.UsageError(f"--store: {error}") from None
    counts = Counts(args.cap)
    try:
        for number, path in enumerate(files, start=1):
            load_shard(path, store, raw_ids, counts)
            print(f"load: [{number}/{len(files)}] {path}: {counts.records} records read, "
                  f"{len(counts.longest)} users written", file=sys.stderr)
    except ValueError as error:  # a damaged shard, named
        raise cli.UsageError(f"--data {args.data}: {error}") from None
    except StoreError as error:
        raise cli.UsageError(f"--store: {error} (after {len(counts.longest)} users; "
                             "re-running the load is safe)") from None
    finally:
        store.close()
    summary = counts.summary()
    rejected = sum(summary["rejected"].values())
    print(f"users written {summary['users_written']}, behaviours written "
          f"{summary['behaviours_written']}, records read {summary['records_read']} "
          f"(= {summary['records_written']} written + {summary['records_not_longer']} not longer "
          f"than the user's history in a later split + {rejected} rejected"
          + "".join(f"; {count} {reason}" for reason, count in summary["rejected"].items()) + ")")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m serving.history.load``; returns the counts."""
    return cli.run(load, arguments(), argv)


if __name__ == "__main__":
    main()
