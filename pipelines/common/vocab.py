"""Vocabularies: raw int64 ID -> contiguous index, built from the TRAIN split with bounded memory.

Counting is a partitioned map-reduce: each scan task reduces its IDs to (id, count) pairs, hashes
them into ``P`` partitions and spills them to disk when its buffer is full; each partition is then
summed on its own, in parallel. Memory is bounded by the buffer and by one partition (about 1/P
of the distinct IDs), never by the 243M distinct history items of the full release. Only the kept
vocabulary (the artefact itself, which training holds anyway) is ever in memory whole.

Rules:
* Sources (train only; the feature spec's tables and columns, Taobao-MM's named here): ``user`` <-
  train_samples ``129_1``; ``profile_i`` <- train_user_features ``130_i``; ``item`` <- train_samples
  ``205`` + histories ``150_2_180``; ``category`` <- histories ``151_2_180`` + item_features
  ``206``; ``attr_213``/``attr_214`` <- item_features. Raw input is counted before the join rules
  (a sample rejected later still counted).
* An ID is kept when its count reaches the vocabulary's min-count. Every item with an SCL vector is
  kept in ``item`` whatever its count, so rare items keep their multimodal vector.
* 0 (the release's "empty field") is never kept. Kept IDs are sorted ascending, so the ID at
  position p has index p + 2 (PAD = 0, OOV = 1; ``muse_tf.contract.vocabulary``) and lookups are
  binary searches.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from muse_tf.contract import vocabulary
from muse_tf.contract.hashing import order_by_partition, partition_of
from pipelines.common import parquet_input as pi
from pipelines.common import raw_schema
from pipelines.common.raw_schema import MISSING, RawSchema


def counted_columns(schema: RawSchema) -> dict[str, tuple[str, ...]]:
    """Train-split columns counted into each vocabulary (table -> columns)."""
    return {
        schema.samples_table["train"]: (schema.user_id, schema.item_id),
        schema.user_table["train"]: (
            *schema.profile_columns,
            schema.history_items,
            schema.history_categories,
        ),
        schema.item_features: (schema.item_category, *schema.attribute_columns),
    }


# Pseudo-vocabulary of the items that have an SCL vector (always kept in ``item``).
SCL_ITEMS = "scl_items"
FORCED = {"item": SCL_ITEMS}
# (id, count) pairs buffered per scan task before spilling (16 bytes each: 128 MiB).
SPILL_BUFFER_PAIRS = 8_000_000


def vocabulary_of(column: str, schema: RawSchema) -> str:
    """The vocabulary a raw column's IDs belong to, e.g. Taobao-MM's ``150_2_180`` -> ``item``."""
    return schema.spec.vocabulary[schema.column_feature[column]]


def ids_to_count(
    table: str, batch: pa.RecordBatch, schema: RawSchema
) -> Iterator[tuple[str, np.ndarray]]:
    """(vocabulary, raw IDs) pairs that a record batch of ``table`` adds to the counts; the items
    of well-formed vector rows go to ``SCL_ITEMS``. MISSING values are left for the counter to
    drop."""
    for column in counted_columns(schema).get(table, ()):
        if schema.table_columns[table][column] == raw_schema.ID:
            yield vocabulary_of(column, schema), pi.ids(batch, column)
        else:
            yield vocabulary_of(column, schema), pi.id_lists(batch, column)[0]
    if table == schema.scl_embeddings:
        well_formed = pi.list_lengths(batch, schema.scl_vector) == schema.embedding_dim
        yield SCL_ITEMS, pi.ids(batch, schema.item_id)[well_formed]


def sum_counts(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct IDs and their summed counts."""
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


class CountSpill:
    """(id, count) pairs of one scan task, spilled under ``spill_dir`` when the buffer is full.

    Each spill is ``<spill_dir>/<vocab>/<tag>-<flush>.npy``, a (2, n) int64 array of pairs ordered
    by partition, with ``...bounds.npy`` giving each partition's slice: a partition's reduce reads
    only its slices (memory-mapped), and a task writes two files per vocabulary and spill however
    many partitions there are. Names are deterministic, so a re-run task overwrites its output.
    """

    def __init__(self, spill_dir: str, tag: str, num_partitions: int) -> None:
        self.spill_dir = spill_dir
        self.tag = tag
        self.num_partitions = num_partitions
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._buffered = 0
        self._flushes = 0

    def add(self, vocab: str, raw_ids: np.ndarray) -> None:
        """Counts (N,) raw IDs of ``vocab`` (MISSING ignored); spills when the buffer is full."""
        raw_ids = raw_ids[raw_ids != MISSING]
        unique, counts = np.unique(raw_ids, return_counts=True)
        self._chunks.setdefault(vocab, []).append((unique, counts.astype(np.int64)))
        self._buffered += len(unique)
        if self._buffered > SPILL_BUFFER_PAIRS:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered pairs of every vocabulary as one spill and empties the buffer."""
        for vocab, chunks in self._chunks.items():
            ids, counts = sum_counts(
                np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
            )
            partitions = partition_of(ids, self.num_partitions)
            order, bounds = order_by_partition(partitions, self.num_partitions)
            directory = os.path.join(self.spill_dir, vocab)
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{self.tag}-{self._flushes:04d}")
            save_atomic(f"{path}.npy", np.stack([ids[order], counts[order]]))
            save_atomic(f"{path}.bounds.npy", bounds)  # written last: marks the spill complete
        self._chunks = {}
        self._buffered = 0
        self._flushes += 1


def save_atomic(path: str, array: np.ndarray) -> None:
    """np.save through a temporary name, so a crash never leaves a truncated file behind."""
    tmp = f"{path}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _load_partition(spill_dir: str, vocab: str, partition: int) -> tuple[np.ndarray, np.ndarray]:
    bounds_files = sorted(glob.glob(os.path.join(spill_dir, vocab, "*.bounds.npy")))
    slices = [np.zeros((2, 0), np.int64)]
    for bounds_file in bounds_files:
        start, stop = np.load(bounds_file)[partition : partition + 2]
        pairs = np.load(bounds_file.replace(".bounds.npy", ".npy"), mmap_mode="r")
        slices.append(np.asarray(pairs[:, start:stop]))
    pairs = np.concatenate(slices, axis=1)
    return sum_counts(pairs[0], pairs[1])


@dataclasses.dataclass
class VocabStats:
    """Distinct train IDs seen, kept, dropped below min-count, and kept only because forced."""

    distinct: int = 0
    kept: int = 0
    below_min_count: int = 0
    kept_by_scl: int = 0
    duplicate_scl_rows: int = 0

    def add(self, other: VocabStats) -> None:
        """Adds ``other``'s counts into this one (partitions -> vocabulary)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def keep_ids(
    ids: np.ndarray, counts: np.ndarray, forced_counts: np.ndarray, min_count: int
) -> tuple[np.ndarray, VocabStats]:
    """The vocabulary rule for distinct IDs (ascending) with their train counts and their forced
    (SCL) rows, either possibly 0: an ID is kept when counted ``min_count`` times or more, or when
    forced. Returns the kept IDs (ascending) and their statistics."""
    counted, forced = counts > 0, forced_counts > 0
    by_count = counted & (counts >= min_count)
    keep = by_count | forced
    stats = VocabStats(
        distinct=int(np.count_nonzero(counted)),
        kept=int(np.count_nonzero(keep)),
        below_min_count=int(np.count_nonzero(counted & ~keep)),
        kept_by_scl=int(np.count_nonzero(forced & ~by_count)),
        duplicate_scl_rows=int(forced_counts.sum() - np.count_nonzero(forced)),
    )
    return ids[keep], stats


def reduce_partition(
    spill_dir: str, vocab: str, partition: int, min_count: int, out_path: str
) -> VocabStats:
    """Sums one partition, keeps IDs meeting ``min_count`` (or forced) and saves them."""
    ids, counts = _load_partition(spill_dir, vocab, partition)
    forced = np.zeros(0, np.int64)
    forced_counts = np.zeros(0, np.int64)
    if vocab in FORCED:
        forced, forced_counts = _load_partition(spill_dir, FORCED[vocab], partition)
    union = np.union1d(ids, forced)
    counts_all = np.zeros(len(union), np.int64)
    counts_all[np.searchsorted(union, ids)] = counts
    forced_all = np.zeros(len(union), np.int64)
    forced_all[np.searchsorted(union, forced)] = forced_counts
    kept, stats = keep_ids(union, counts_all, forced_all, min_count)
    save_atomic(out_path, kept)
    return stats


def assemble(partition_paths: list[str], out_path: str) -> int:
    """Concatenates a vocabulary's partitions into the sorted ``vocab/<name>.npy``; its size."""
    ids = np.sort(np.concatenate([np.load(p) for p in partition_paths]))
    save_atomic(out_path, ids)
    return vocabulary.table_rows(ids)
