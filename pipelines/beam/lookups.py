"""Vocabularies in value ranges for the Beam engine: dense indices without a global sort, and
lookups as a join, so no worker holds a whole vocabulary (step 3 of ``pipelines.beam.pipeline``).

A vocabulary's kept IDs are split by the top ``BUCKET_BITS`` of their order-preserving uint64
image, so every ID of range b is below every ID of range b + 1. A range that knows how many kept
IDs lie in lower ranges (its ``offset``) gives each of its IDs the index it has in the whole sorted
vocabulary (position + 2, ``pipelines.common.vocab``'s rule). Raw IDs are looked up by joining
them with their range (``fetch``), never through a side input holding a vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

from muse_tf.contract import features, vocabulary
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.contract.hashing import order_by_partition
from pipelines.common import join

BUCKET_BITS = 8  # 256 ranges per vocabulary: ~140k of the release's 35.4M items per range
_SIGN = np.uint64(1 << 63)


def id_bucket(ids: np.ndarray) -> np.ndarray:
    """The value range of each int64 ID: the top BUCKET_BITS of its order-preserving uint64 image,
    so every ID of range b is smaller than every ID of range b + 1."""
    unsigned = np.asarray(ids, np.int64).view(np.uint64) ^ _SIGN
    return (unsigned >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)


def by_bucket(ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(range, row indices in input order) for each range that ``ids`` touch."""
    order, bounds = order_by_partition(id_bucket(ids), 1 << BUCKET_BITS)
    for bucket in np.flatnonzero(np.diff(bounds)):
        yield int(bucket), order[bounds[bucket] : bounds[bucket + 1]]


def range_offsets(sizes: list[tuple[tuple[str, int], int]]) -> dict[tuple[str, int], int]:
    """The first index (minus the reserved two) of each range: kept IDs in lower ranges."""
    offsets, running = {}, {}
    for (name, bucket), size in sorted(sizes):
        offsets[(name, bucket)] = running.get(name, 0)
        running[name] = running.get(name, 0) + size
    return offsets


@dataclasses.dataclass
class Chunk:
    """One range of a vocabulary: its kept IDs (ascending), the number of kept IDs before it, and
    per-ID payload columns (the item range's attributes and has-a-vector) or none."""

    offset: int
    ids: np.ndarray
    payload: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def empty_chunk(name: str, spec: FeatureSpec) -> Chunk:
    """A range without kept IDs (its payload columns, if any, empty)."""
    if name != spec.vocabulary[features.ITEM_ID]:
        return Chunk(0, np.zeros(0, np.int64))
    width = 1 + len(spec.item_attributes)  # category and attributes
    payload = {"attributes": np.zeros((0, width), np.int64), "has_vector": np.zeros(0, bool)}
    return Chunk(0, np.zeros(0, np.int64), payload)


@dataclasses.dataclass
class Answer:
    """Raw IDs of one vocabulary (ascending), their indices and payload rows (zero when absent)."""

    ids: np.ndarray
    indices: np.ndarray
    payload: dict[str, np.ndarray]


def _split_request(
    element: tuple[object, dict[str, np.ndarray]],
) -> Iterator[tuple[tuple[str, int], tuple[object, np.ndarray]]]:
    key, wanted = element
    for name, ids in wanted.items():
        for bucket, rows in by_bucket(ids):
            yield (name, bucket), (key, ids[rows])


def _answer(
    element: tuple[tuple[str, int], dict[str, Iterable]], spec: FeatureSpec
) -> Iterator[tuple[object, tuple[str, Answer]]]:
    (name, _), groups = element
    chunk = next(iter(groups["chunk"]), None) or empty_chunk(name, spec)
    for key, ids in groups["piece"]:
        local = vocabulary.lookup(chunk.ids, ids, assume_sorted=True)
        found = local != features.OOV
        indices = np.where(found, local + chunk.offset, features.OOV)
        payload = {}
        for column, values in chunk.payload.items():
            rows = np.zeros((len(ids), *values.shape[1:]), values.dtype)
            rows[found] = values[local[found] - vocabulary.RESERVED]
            payload[column] = rows
        yield key, (name, Answer(ids, indices, payload))


def _merge_answers(
    element: tuple[object, Iterable[tuple[str, Answer]]],
) -> tuple[object, dict[str, Answer]]:
    key, pieces = element
    by_name: dict[str, list[Answer]] = {}
    for name, answer in pieces:
        by_name.setdefault(name, []).append(answer)
    merged = {}
    for name, answers in by_name.items():
        ids = np.concatenate([a.ids for a in answers])
        order = np.argsort(ids)
        payload = {
            column: np.concatenate([a.payload[column] for a in answers])[order]
            for column in answers[0].payload
        }
        merged[name] = Answer(
            ids[order], np.concatenate([a.indices for a in answers])[order], payload
        )
    return key, merged


def fetch(
    label: str, requests: beam.PCollection, chunks: beam.PCollection, spec: FeatureSpec
) -> beam.PCollection:
    """Vocabulary lookups as a join by (vocabulary, range).

    Args:
        requests: (key, {vocabulary: distinct raw IDs}).
        chunks: ((vocabulary, range), Chunk).
        spec: the feature spec (the item ranges' payload width).

    Returns:
        (key, {vocabulary: Answer}) for every key that asked for at least one ID.
    """
    pieces = requests | f"{label}: split by range" >> beam.FlatMap(_split_request)
    return (
        {"chunk": chunks, "piece": pieces}
        | f"{label}: join ranges" >> beam.CoGroupByKey()
        | f"{label}: look up" >> beam.FlatMap(_answer, spec)
        | f"{label}: gather" >> beam.GroupByKey()
        | f"{label}: merge" >> beam.Map(_merge_answers)
    )


class FetchedLookups(join.Lookups):
    """``join.Lookups`` over the answers fetched for one batch of users."""

    def __init__(self, answers: dict[str, Answer], spec: FeatureSpec) -> None:
        self.answers = answers
        self.spec = spec
        items = answers.get("item", Answer(np.zeros(0, np.int64), np.zeros(0, np.int64), {}))
        order = np.argsort(items.indices, kind="stable")
        self._item_indices = items.indices[order]
        self._item_payload = {column: values[order] for column, values in items.payload.items()}

    def index(self, feature: str, raw_ids: np.ndarray) -> np.ndarray:
        answer = self.answers.get(self.spec.vocabulary[feature])
        if answer is None:
            return np.full(np.shape(raw_ids), features.OOV, np.int64)
        positions = vocabulary.lookup(answer.ids, raw_ids, assume_sorted=True) - vocabulary.RESERVED
        indices = np.concatenate([answer.indices, [features.OOV]])
        return indices[np.where(positions >= 0, positions, len(answer.indices))]

    def item_info(self, item_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        attributes = np.zeros((len(item_index), 1 + len(self.spec.item_attributes)), np.int64)
        has_vector = np.zeros(len(item_index), bool)
        known = item_index != features.OOV
        if self._item_payload:
            rows = np.searchsorted(self._item_indices, item_index[known])
            attributes[known] = self._item_payload["attributes"][rows]
            has_vector[known] = self._item_payload["has_vector"][rows]
        return attributes, has_vector
