"""Joins one bucket's samples with its users' features and applies the data rules.

Every sample is either written or rejected for exactly one reason (the first that applies):

==========================  ===================================================================
rejected reason             rule
==========================  ===================================================================
``missing_id``              user ``129_1`` or target item ``205`` is null or 0.
``malformed_label``         ``label_0`` is not the one-hot pair [1, 0] (no click) / [0, 1] (click).
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

import numpy as np
import pyarrow as pa

from muse_tf import features
from pipelines import parquet_input as pi
from pipelines.vocab import lookup_sorted

REJECT_REASONS = ("missing_id", "malformed_label", "user_without_features", "malformed_history")
ADJUSTMENTS = (
    "history_truncated",
    "history_short",
    "history_missing_values",
    "item_without_features",
    "item_without_scl",
)
OOV_FEATURES = features.SCALAR_FEATURES + features.SEQUENCE_FEATURES


@dataclasses.dataclass
class Lookups:
    """Sorted vocabularies by name, and the item tables aligned with the item vocabulary."""

    vocabs: dict[str, np.ndarray]
    item_attributes: np.ndarray  # (V, 3) category, attr_213, attr_214 indices; 0 = no row
    multimodal: np.ndarray  # (V, 128) int8

    def index(self, feature: str, raw_ids: np.ndarray) -> np.ndarray:
        return lookup_sorted(self.vocabs[features.VOCABULARY[feature]], raw_ids)


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


def parse_labels(samples: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(click 0/1, well-formed) per sample from the one-hot ``label_0`` pair."""
    values, lengths = pi.id_lists(samples, "label_0", fill=-1)
    starts = pi.row_offsets(lengths)[:-1]
    padded = np.concatenate([values, [-1, -1]])
    first, second = padded[starts], padded[starts + 1]
    one_hot = ((first == 1) & (second == 0)) | ((first == 0) & (second == 1))
    return second, (lengths == 2) & one_hot


def _first_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct non-missing keys and the row where each first appears."""
    candidates = np.flatnonzero(keys != pi.MISSING)
    unique, first = np.unique(keys[candidates], return_index=True)
    return unique, candidates[first]


def _group_by_first_appearance(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``rows`` in order of first appearance, a stable order of the input grouping equal
    rows in that order, and the group sizes."""
    unique, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    rank = np.empty(len(unique), np.int64)
    rank[by_appearance] = np.arange(len(unique))
    sample_rank = rank[inverse]
    order = np.argsort(sample_rank, kind="stable")
    return unique[by_appearance], order, np.bincount(sample_rank, minlength=len(unique))


def _clean_history(
    items: np.ndarray, categories: np.ndarray, lengths: np.ndarray, history_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Drops missing items, keeps each row's most recent ``history_length``.

    Returns kept items, kept categories, kept lengths, lengths before truncation, dropped count.
    """
    owner = np.repeat(np.arange(len(lengths)), lengths)
    present = items != pi.MISSING
    clean_lengths = np.bincount(owner[present], minlength=len(lengths))
    items, categories, owner = items[present], categories[present], owner[present]
    position_from_end = pi.row_offsets(clean_lengths)[owner + 1] - np.arange(len(items))
    recent = position_from_end <= history_length
    kept_lengths = np.minimum(clean_lengths, history_length)
    dropped = int(np.count_nonzero(~present))
    return items[recent], categories[recent], kept_lengths, clean_lengths, dropped


def join_shard(
    samples: pa.Table, users: pa.Table, lookups: Lookups, history_length: int
) -> tuple[UserRecords, dict]:
    """One shard's user records and its counts (see the module docstring for the rules)."""
    sample_users = pi.ids(samples, "129_1")
    target_items = pi.ids(samples, "205")
    labels, label_ok = parse_labels(samples)

    user_keys = pi.ids(users, "129_1")
    history_items, item_lengths = pi.id_lists(users, pi.HISTORY_ITEMS)
    history_categories, category_lengths = pi.id_lists(users, pi.HISTORY_CATEGORIES)
    known_users, known_rows = _first_rows(user_keys)

    position = np.minimum(np.searchsorted(known_users, sample_users), max(len(known_users) - 1, 0))
    has_user = (known_users[position] == sample_users) if len(known_users) else np.zeros(
        len(sample_users), bool
    )
    user_row = np.where(has_user, known_rows[position] if len(known_rows) else 0, -1)
    history_ok = np.ones(len(sample_users), bool)
    history_ok[has_user] = (item_lengths == category_lengths)[user_row[has_user]]
    missing_id = (sample_users == pi.MISSING) | (target_items == pi.MISSING)
    reason = np.select(
        [missing_id, ~label_ok, ~has_user, ~history_ok], range(len(REJECT_REASONS)), default=-1
    )

    kept = np.flatnonzero(reason == -1)
    rows, order, sample_counts = _group_by_first_appearance(user_row[kept])
    kept = kept[order]

    item_offsets = pi.row_offsets(item_lengths)
    items, lengths = pi.take_rows(history_items, item_offsets, rows)
    categories, _ = pi.take_rows(history_categories, item_offsets, rows)
    items, categories, kept_lengths, full_lengths, dropped = _clean_history(
        items, categories, lengths, history_length
    )

    user = {features.USER_KEY: user_keys[rows], features.USER_ID: lookups.index(
        features.USER_ID, user_keys[rows]
    )}
    for column, name in zip(pi.PROFILE_COLUMNS, features.USER_PROFILE):
        user[name] = lookups.index(name, pi.ids(users, column)[rows])
    history = {
        features.HISTORY_ITEMS: lookups.index(features.HISTORY_ITEMS, items),
        features.HISTORY_CATEGORIES: lookups.index(features.HISTORY_CATEGORIES, categories),
    }
    item_index = lookups.index(features.ITEM_ID, target_items[kept])
    attributes = np.asarray(lookups.item_attributes[item_index], np.int64)
    has_attributes = attributes[:, 0] != features.PAD
    attributes[~has_attributes] = features.OOV
    sample_values = {
        features.ITEM_ID: item_index,
        **{name: attributes[:, i] for i, name in enumerate((features.ITEM_CATEGORY, *features.ITEM_ATTRS))},
        features.LABEL: labels[kept],
    }
    records = UserRecords(user, history, kept_lengths, sample_values, sample_counts)

    per_sample_user = np.repeat(np.arange(len(rows)), sample_counts)
    per_sample = {**{name: user[name][per_sample_user] for name in user}, **sample_values}
    oov = {
        name: int(np.count_nonzero({**per_sample, **history}[name] == features.OOV))
        for name in OOV_FEATURES
    }
    history_lengths = full_lengths[per_sample_user]
    has_vector = np.any(np.asarray(lookups.multimodal[item_index]) != 0, axis=1)
    adjusted = {
        "history_truncated": int(np.count_nonzero(history_lengths > history_length)),
        "history_short": int(np.count_nonzero(history_lengths < history_length)),
        "history_missing_values": dropped,
        "item_without_features": int(
            np.count_nonzero(~has_attributes & (item_index != features.OOV))
        ),
        "item_without_scl": int(np.count_nonzero(~has_vector)),
    }
    present_users = int(np.count_nonzero(user_keys != pi.MISSING))
    stats = {
        "samples_in": len(sample_users),
        "samples_written": len(kept),
        "users_written": len(rows),
        "rejected": {name: int(np.count_nonzero(reason == i)) for i, name in enumerate(REJECT_REASONS)},
        "adjusted": adjusted,
        "oov": oov,
        "user_rows": {
            "in": len(user_keys),
            "written": len(rows),
            "unmatched": len(known_users) - len(rows),
            "duplicate": present_users - len(known_users),
            "missing_id": len(user_keys) - present_users,
        },
    }
    return records, stats
