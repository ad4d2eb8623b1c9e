"""Joins one bucket's samples with its users' features and applies the data rules.

The bucket's samples (three small columns) are held in memory; its user feature rows, which carry
the 1,000-long histories, are streamed in batches, so memory is bounded by a batch, not a shard.
Records come out in the order of the users' feature rows.

Every sample is either written or rejected for exactly one reason (the first that applies):

==========================  ===================================================================
rejected reason             rule
==========================  ===================================================================
``missing_id``              the user (Taobao-MM: ``129_1``) or target item (``205``) is null or 0.
``malformed_label``         the label (``label_0``) is not the one-hot pair [1, 0] (no click) /
                            [0, 1] (click).
``user_without_features``   the user has no row in the split's user features.
``malformed_history``       the user's item and category histories differ in length.
==========================  ===================================================================

Written samples are kept with an adjustment, counted per sample (``adjusted``):

* ``history_truncated`` / ``history_short``: the user's history is longer than the configured
  length L (only the most recent L are stored) / shorter (stored as is, left-padded when read).
* ``item_without_features``: the target item is in the vocabulary but item_features has no row
  for it: category and attributes become OOV. (An OOV target item has OOV attributes too.)
* ``item_without_scl``: the target item has no multimodal vector (a zero row).
* ``history_missing_values`` (per behaviour, not per sample): null/0 history items are dropped
  with their category before truncation.

IDs missing from a vocabulary become OOV, counted per feature in ``oov`` (per written sample for
scalar features, per stored behaviour for histories). User feature rows are counted too:
``in = written + unmatched + duplicate + missing_id`` (a repeated user keeps its first row; an
unmatched user has no written sample in the split).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pyarrow as pa

from muse_tf.contract import features, vocabulary
from muse_tf.contract.feature_spec import FeatureSpec
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import MISSING, RawSchema

REJECT_REASONS = ("missing_id", "malformed_label", "user_without_features", "malformed_history")
ADJUSTMENTS = (
    "history_truncated",
    "history_short",
    "history_missing_values",
    "item_without_features",
    "item_without_scl",
)
USER_ROW_COUNTS = ("in", "written", "unmatched", "duplicate", "missing_id")


class Lookups:
    """What the rules look up: vocabulary indices of raw IDs, and the target item's attributes and
    whether it has a multimodal vector. ``TableLookups`` answers from the finished tables (the
    local engine); ``pipelines.beam.lookups`` answers from the IDs it fetched for a batch."""

    def index(self, feature: str, raw_ids: np.ndarray) -> np.ndarray:
        """Raw IDs of ``feature`` -> vocabulary indices of the same shape (OOV when unknown)."""
        raise NotImplementedError

    def item_info(self, item_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1 + A) category and attribute indices (PAD where item_features has no row) and
        (N,) has-a-vector of item indices."""
        raise NotImplementedError


@dataclasses.dataclass
class TableLookups(Lookups):
    """Sorted vocabularies by name, and the item tables aligned with the item vocabulary."""

    vocabs: dict[str, np.ndarray]
    item_attributes: np.ndarray  # (V, 1 + A) category and attribute indices; 0 = no row
    multimodal: np.ndarray  # (V, dim)
    spec: FeatureSpec

    def index(self, feature: str, raw_ids: np.ndarray) -> np.ndarray:
        return vocabulary.lookup(self.vocabs[self.spec.vocabulary[feature]], raw_ids, assume_sorted=True)

    def item_info(self, item_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        attributes = np.asarray(self.item_attributes[item_index], np.int64)
        return attributes, np.any(np.asarray(self.multimodal[item_index]) != 0, axis=1)


@dataclasses.dataclass
class UserRecords:
    """U user records column-wise: user features (U,), histories flat (H,) with their lengths
    (U,), and samples flat (S,) with their counts per user (U,). Values are vocabulary indices,
    except ``user_key`` (raw) and ``label`` (0/1)."""

    user: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    history_lengths: np.ndarray
    samples: dict[str, np.ndarray]
    sample_counts: np.ndarray


def oov_features(spec: FeatureSpec) -> tuple[str, ...]:
    """The features whose OOV values a join counts."""
    return spec.scalar_features + features.SEQUENCE_FEATURES


def parse_labels(samples: pa.Table, schema: RawSchema) -> tuple[np.ndarray, np.ndarray]:
    """(click 0/1, well-formed) per sample from the one-hot label pair."""
    values, lengths = pi.id_lists(samples, schema.labels, fill=-1)
    starts = pi.row_offsets(lengths)[:-1]
    padded = np.concatenate([values, [-1, -1]])
    first, second = padded[starts], padded[starts + 1]
    one_hot = ((first == 1) & (second == 0)) | ((first == 0) & (second == 1))
    return second, (lengths == 2) & one_hot


def _clean_history(
    items: np.ndarray, categories: np.ndarray, lengths: np.ndarray, history_cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Drops missing items, keeps each row's most recent ``history_cap``.

    Returns kept items, kept categories, kept lengths, lengths before truncation, dropped count.
    """
    owner = np.repeat(np.arange(len(lengths)), lengths)
    present = items != MISSING
    clean_lengths = np.bincount(owner[present], minlength=len(lengths))
    items, categories, owner = items[present], categories[present], owner[present]
    position_from_end = pi.row_offsets(clean_lengths)[owner + 1] - np.arange(len(items))
    recent = position_from_end <= history_cap
    kept_lengths = np.minimum(clean_lengths, history_cap)
    dropped = int(np.count_nonzero(~present))
    return items[recent], categories[recent], kept_lengths, clean_lengths, dropped


def _first_new_rows(keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Rows (ascending) holding the first occurrence of each non-missing key not in ``seen``."""
    candidates = np.flatnonzero(keys != MISSING)
    unique, first = np.unique(keys[candidates], return_index=True)
    return np.sort(candidates[first[~np.isin(unique, seen, assume_unique=True)]])


UNDECIDED, _WRITTEN = -2, -1  # reason codes besides the REJECT_REASONS indices


@dataclasses.dataclass
class SampleColumns:
    """Samples as parsed columns: raw user and target item, click (0/1), and the reason index
    (into REJECT_REASONS) of the samples already rejected, ``UNDECIDED`` for the others."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    reason: np.ndarray


def sample_columns(samples: pa.Table | pa.RecordBatch, schema: RawSchema) -> SampleColumns:
    """Parses samples and applies the rules that need no join (``missing_id`` before
    ``malformed_label``)."""
    users = pi.ids(samples, schema.user_id)
    items = pi.ids(samples, schema.item_id)
    labels, label_ok = parse_labels(samples, schema)
    reason = np.full(len(users), UNDECIDED)
    reason[~label_ok] = REJECT_REASONS.index("malformed_label")
    reason[(users == MISSING) | (items == MISSING)] = REJECT_REASONS.index("missing_id")
    return SampleColumns(users, items, labels, reason)


class ShardJoin:
    """Joins one bucket: ``add_users`` per batch of user feature rows, then ``finish``.

    Args:
        samples: every sample of the bucket, parsed (``sample_columns``).
        lookups: vocabularies and item tables.
        history_cap: L, behaviours kept per user (the most recent).
        schema: the raw columns and the features they feed.
    """

    def __init__(
        self, samples: SampleColumns, lookups: Lookups, history_cap: int, schema: RawSchema
    ) -> None:
        self.lookups = lookups
        self.schema = schema
        self.oov_features = oov_features(schema.spec)
        self.history_cap = history_cap
        users, self._items, self._labels = samples.users, samples.items, samples.labels
        self._reason = samples.reason.copy()
        waiting = np.flatnonzero(self._reason == UNDECIDED)
        self._waiting = waiting[np.argsort(users[waiting], kind="stable")]  # by user, input order
        self._waiting_users = users[self._waiting]
        self._seen_users = np.zeros(0, np.int64)
        self.counts: dict[str, Counter] = {
            name: Counter() for name in ("adjusted", "oov", "user_rows")
        }

    def add_users(self, users: pa.Table | pa.RecordBatch) -> UserRecords:
        """The records of the users of this batch that have samples (a user's first row wins)."""
        schema = self.schema
        keys = pi.ids(users, schema.user_id)
        items, item_lengths = pi.id_lists(users, schema.history_items)
        categories, category_lengths = pi.id_lists(users, schema.history_categories)
        rows = _first_new_rows(keys, self._seen_users)
        self._seen_users = np.union1d(self._seen_users, keys[rows])
        present = int(np.count_nonzero(keys != MISSING))
        self.counts["user_rows"].update(
            {"in": len(keys), "duplicate": present - len(rows), "missing_id": len(keys) - present}
        )

        first = np.searchsorted(self._waiting_users, keys[rows], side="left")
        counts = np.searchsorted(self._waiting_users, keys[rows], side="right") - first
        malformed = item_lengths[rows] != category_lengths[rows]
        self._reason[self._take(first[malformed], counts[malformed])] = REJECT_REASONS.index(
            "malformed_history"
        )
        written = (counts > 0) & ~malformed
        rows, first, counts = rows[written], first[written], counts[written]
        samples = self._take(first, counts)
        self._reason[samples] = _WRITTEN
        self.counts["user_rows"].update({"written": len(rows), "unmatched": int(np.sum(~written))})

        # Each list by its own offsets: a malformed row elsewhere in the batch shifts no other row.
        history_items, lengths = pi.take_rows(items, pi.row_offsets(item_lengths), rows)
        history_categories, _ = pi.take_rows(categories, pi.row_offsets(category_lengths), rows)
        history_items, history_categories, kept_lengths, full_lengths, dropped = _clean_history(
            history_items, history_categories, lengths, self.history_cap
        )
        user = {features.USER_KEY: keys[rows]}
        user[features.USER_ID] = self.lookups.index(features.USER_ID, keys[rows])
        for column, name in zip(schema.profile_columns, schema.spec.profile_features):
            user[name] = self.lookups.index(name, pi.ids(users, column)[rows])
        history = {
            features.HISTORY_ITEMS: self.lookups.index(features.HISTORY_ITEMS, history_items),
            features.HISTORY_CATEGORIES: self.lookups.index(
                features.HISTORY_CATEGORIES, history_categories
            ),
        }
        sample_values = self._sample_values(samples)
        per_sample_user = np.repeat(np.arange(len(rows)), counts)
        self._count(user, history, sample_values, per_sample_user, full_lengths[per_sample_user])
        self.counts["adjusted"]["history_missing_values"] += dropped
        return UserRecords(user, history, kept_lengths, sample_values, counts)

    def _take(self, first: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Sample indices of the waiting ranges [first, first + count), range after range."""
        starts = np.repeat(first - pi.row_offsets(counts)[:-1], counts)
        return self._waiting[starts + np.arange(len(starts))]

    def _sample_values(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        item_index = self.lookups.index(features.ITEM_ID, self._items[samples])
        attributes, has_vector = self.lookups.item_info(item_index)
        has_attributes = attributes[:, 0] != features.PAD
        attributes[~has_attributes] = features.OOV
        adjusted = self.counts["adjusted"]
        adjusted["item_without_features"] += int(
            np.count_nonzero(~has_attributes & (item_index != features.OOV))
        )
        adjusted["item_without_scl"] += int(np.count_nonzero(~has_vector))
        return {
            features.ITEM_ID: item_index,
            features.ITEM_CATEGORY: attributes[:, 0],
            **{name: attributes[:, 1 + k] for k, name in enumerate(self.schema.spec.attribute_features)},
            features.LABEL: self._labels[samples],
        }

    def _count(
        self,
        user: dict[str, np.ndarray],
        history: dict[str, np.ndarray],
        sample_values: dict[str, np.ndarray],
        per_sample_user: np.ndarray,
        history_lengths: np.ndarray,
    ) -> None:
        adjusted = self.counts["adjusted"]
        adjusted["history_truncated"] += int(
            np.count_nonzero(history_lengths > self.history_cap)
        )
        adjusted["history_short"] += int(np.count_nonzero(history_lengths < self.history_cap))
        written = {name: values[per_sample_user] for name, values in user.items()}
        written.update(sample_values, **history)
        for name in self.oov_features:
            self.counts["oov"][name] += int(np.count_nonzero(written[name] == features.OOV))

    def finish(self) -> dict:
        """Rejects the samples whose user never came; the shard's counts."""
        self._reason[self._reason == UNDECIDED] = REJECT_REASONS.index("user_without_features")
        counts = {name: dict(counter) for name, counter in self.counts.items()}
        return {
            "samples_in": len(self._reason),
            "samples_written": int(np.count_nonzero(self._reason == _WRITTEN)),
            "users_written": counts["user_rows"].get("written", 0),
            "rejected": {
                name: int(np.count_nonzero(self._reason == i))
                for i, name in enumerate(REJECT_REASONS)
            },
            "adjusted": {name: counts["adjusted"].get(name, 0) for name in ADJUSTMENTS},
            "oov": {name: counts["oov"].get(name, 0) for name in self.oov_features},
            "user_rows": {name: counts["user_rows"].get(name, 0) for name in USER_ROW_COUNTS},
        }
