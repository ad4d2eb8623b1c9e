"""The Taobao-MM conversion as an Apache Beam pipeline: the output of ``pipelines.taobao_mm``
(same vocabularies, multimodal table, user records and manifest counts), on any Beam runner. Its
command line is ``python -m pipelines.beam_convert``, which parses its arguments before this module
(and with it Beam and TensorFlow) is imported.

``convert``'s ``pipeline_args`` are Beam pipeline options (DirectRunner by default). Input and
output may be any Beam file system (local, ``gs://``, ...).

Shape (each step scales with the data, nothing whole is held by one worker; "join" = CoGroupByKey):

1. read: every row group of every file is a task (spread by a Reshuffle); its record batches
   carry each row's input position (file, row), which "first row wins" and sample order need.
2. vocabularies: (vocabulary, ID) -> (train count, SCL rows) by a combiner; the IDs are grouped
   into order-preserving ranges of their value (``BUCKET_BITS``) and each range applies
   ``vocab.keep_ids``. A range's first index is the number of kept IDs in lower ranges (a side
   input of one number per range), so index = position in the sorted vocabulary + 2, as
   ``pipelines.vocab`` assigns it.
3. lookups: raw IDs meet their range of the vocabulary in a join by (vocabulary, range), never as
   a side input holding a vocabulary.
4. items: item_features and SCL rows join their item range, apply ``item_tables``' rules and
   write the range's rows of the multimodal table; samples see an item's attributes and whether
   it has a vector, never the vector.
5. users: samples (after ``join.sample_columns``' rules) and user feature rows are grouped by
   user, batched, their IDs looked up (3), and ``join.ShardJoin`` applies the remaining rules.
   ``WriteToTFRecord`` writes the records with the requested shard count.
6. After the run: the vocabulary and table ranges are concatenated in range order, and the manifest
   is built from the pipeline's metrics (counters) and checked to balance.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import io
import json
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from muse_tf.contract import dataset_dir, features, vocabulary
from pipelines import (
    beam_lookups,
    item_tables,
    join,
    manifest,
    output_dir,
    stages,
    taobao_mm,
    vocab,
)
from pipelines import parquet_input as pi
from pipelines import taobao_mm_schema as release

NAMESPACE = "muse_tf.convert"
USERS_PER_BATCH = 256
POSITION_BITS = 40  # input position = file index << 40 | row in file
_FORCED_SOURCE = {source: target for target, source in vocab.FORCED.items()}


def _count(name: str, value: int) -> None:
    if value:
        Metrics.counter(NAMESPACE, name).inc(int(value))


def _concat_by_position(pieces: Iterable[tuple[np.ndarray, pa.RecordBatch]]) -> pa.Table | None:
    """Record batch pieces as one table in input order (None when there are none)."""
    pieces = list(pieces)
    if not pieces:
        return None
    order = np.argsort(np.concatenate([p for p, _ in pieces]), kind="stable")
    table = pa.Table.from_batches([b for _, b in pieces]).combine_chunks()
    return table.take(pa.array(order))


def _save(path: str, array: np.ndarray) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        np.save(f, array)


def _load(path: str) -> np.ndarray:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return np.load(io.BytesIO(f.read()))


# 1. read ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """One read task: a row group of one file of ``table`` and the file row it starts at."""

    table: str
    path: str
    file_index: int
    row_group: int
    first_row: int


def row_groups(tables: dict[str, list[str]]) -> list[RowGroup]:
    """Every row group of every file (opening each file checks its schema before the run)."""
    tasks = []
    for table, paths in tables.items():
        for file_index, path in enumerate(paths):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                meta = pi.open_checked(path, table, f).metadata
            first = 0
            for group in range(meta.num_row_groups):
                tasks.append(RowGroup(table, path, file_index, group, first))
                first += meta.row_group(group).num_rows
    return tasks


class ReadRowGroup(beam.DoFn):
    """A row group as record batches of bounded size, each with its rows' input positions."""

    def process(self, task: RowGroup) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        first = (task.file_index << POSITION_BITS) + task.first_row
        with FileSystems.open(task.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for batch in pi.read_batches(task.path, task.table, [task.row_group], f):
                _count(f"input_rows/{task.table}", batch.num_rows)
                yield first + np.arange(batch.num_rows, dtype=np.int64), batch
                first += batch.num_rows


def _read(pipeline: beam.Pipeline, table: str, tasks: list[RowGroup]) -> beam.PCollection:
    return (
        pipeline
        | f"row groups {table}" >> beam.Create([t for t in tasks if t.table == table])
        | f"spread {table}" >> beam.Reshuffle()
        | f"read {table}" >> beam.ParDo(ReadRowGroup())
    )


# 2. vocabularies ----------------------------------------------------------------------------


def _ids_to_count(
    element: tuple[np.ndarray, pa.RecordBatch], table: str
) -> Iterator[tuple[tuple[str, int], tuple[int, int]]]:
    """((vocabulary, ID), (train count, SCL rows)) of a batch, one pair per distinct ID."""
    _, batch = element
    for name, raw_ids in vocab.ids_to_count(table, batch):
        unique, counts = np.unique(raw_ids[raw_ids != release.MISSING], return_counts=True)
        target = _FORCED_SOURCE.get(name, name)
        forced = name in _FORCED_SOURCE
        for raw, count in zip(unique.tolist(), counts.tolist()):
            yield (target, raw), ((0, count) if forced else (count, 0))


def _add_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    counts = forced = 0
    for count, scl in pairs:
        counts += count
        forced += scl
    return counts, forced


def _keep_range(
    element: tuple[tuple[str, int], Iterable[tuple[int, int, int]]], min_count: dict[str, int]
) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """One range of one vocabulary: its kept IDs (ascending), statistics as metrics."""
    (name, bucket), rows = element
    ids, counts, forced = (np.asarray(c, np.int64) for c in zip(*rows))
    order = np.argsort(ids)
    kept, stats = vocab.keep_ids(ids[order], counts[order], forced[order], min_count[name])
    for field, value in dataclasses.asdict(stats).items():
        _count(f"vocab/{name}/{field}", value)
    if len(kept):
        yield (name, bucket), kept


def _chunk(
    element: tuple[tuple[str, int], np.ndarray], offsets: dict, work: str
) -> tuple[tuple[str, int], beam_lookups.Chunk]:
    (name, bucket), ids = element
    _save(_range_path(work, "vocab", name, bucket), ids)
    return (name, bucket), beam_lookups.Chunk(offsets[(name, bucket)], ids)


def _range_path(work: str, kind: str, name: str, bucket: int) -> str:
    return f"{work}/{kind}/{name}/r{bucket:05d}.npy"


# 3. lookups: pipelines.beam_lookups ---------------------------------------------------------


# 4. items -----------------------------------------------------------------------------------


def _route_items(
    element: tuple[np.ndarray, pa.RecordBatch],
) -> Iterator[tuple[tuple[str, int], tuple[np.ndarray, pa.RecordBatch]]]:
    """Item rows (item_features or SCL) to the item range of their item."""
    positions, batch = element
    for bucket, rows in beam_lookups.by_bucket(pi.ids(batch, release.ITEM_ID)):
        yield ("item", bucket), (positions[rows], batch.take(pa.array(rows)))


def _item_range(
    element: tuple[tuple[str, int], dict[str, Iterable]], work: str
) -> Iterator[tuple[tuple[str, int], tuple[beam_lookups.Chunk, np.ndarray, np.ndarray]]]:
    """One item range: first rows of item_features and SCL, the range's multimodal rows written;
    yields (range, (chunk with has_vector, raw attributes, has-a-row)) when the range is kept."""
    (_, bucket), groups = element
    chunk = next(iter(groups["chunk"]), None) or beam_lookups.Chunk(0, np.zeros(0, np.int64))
    size = len(chunk.ids) + vocabulary.RESERVED
    raw_attributes = np.zeros((size, 3), np.int64)
    has_row = np.zeros(size, bool)
    counts = item_tables.attribute_counts()
    attribute_rows = _concat_by_position(groups["features"])
    if attribute_rows is not None:
        new, index = item_tables.attribute_rows(
            attribute_rows, chunk.ids, lambda i: has_row[i], counts
        )
        has_row[index] = True
        raw_attributes[index] = np.stack(
            [pi.ids(attribute_rows, c)[new] for c in item_tables.ATTRIBUTE_COLUMNS], axis=1
        )
    for name, value in counts.items():
        _count(f"item_features/{name}", value)
    vectors = np.zeros((size, release.EMBEDDING_DIM), np.int8)
    counts = item_tables.multimodal_counts()
    scl_rows = _concat_by_position(groups["scl"])
    if scl_rows is not None:
        new_vectors, index = item_tables.multimodal_rows(
            scl_rows, chunk.ids, lambda i: np.any(vectors[i] != 0, axis=1), counts
        )
        vectors[index] = new_vectors
    for name, value in counts.items():
        _count(f"multimodal/{name}", value)
    if len(chunk.ids):
        _save(_range_path(work, "multimodal", "item", bucket), vectors[vocabulary.RESERVED :])
        chunk.payload["has_vector"] = np.any(vectors[vocabulary.RESERVED :] != 0, axis=1)
        yield (
            ("item", bucket),
            (
                chunk,
                raw_attributes[vocabulary.RESERVED :],
                has_row[vocabulary.RESERVED :],
            ),
        )


def _attribute_request(element: tuple) -> tuple[tuple[str, int], dict[str, np.ndarray]]:
    key, (_, raw_attributes, has_row) = element
    return key, {
        features.VOCABULARY[name]: np.unique(raw_attributes[has_row, i])
        for i, name in enumerate(item_tables.ATTRIBUTE_FEATURES)
    }


def _item_chunk(element: tuple) -> tuple[tuple[str, int], beam_lookups.Chunk]:
    """An item range with its attributes as indices (PAD where item_features has no row)."""
    key, groups = element
    chunk, raw_attributes, has_row = next(iter(groups["item"]))
    answers = next(iter(groups["answers"]), {})
    lookups = beam_lookups.FetchedLookups(answers)
    attributes = np.zeros(raw_attributes.shape, np.int64)
    for i, name in enumerate(item_tables.ATTRIBUTE_FEATURES):
        attributes[has_row, i] = lookups.index(name, raw_attributes[has_row, i])
    chunk.payload["attributes"] = attributes
    return key, chunk


# 5. users -----------------------------------------------------------------------------------


def _valid_samples(
    element: tuple[np.ndarray, pa.RecordBatch], split: str
) -> Iterator[tuple[int, tuple[int, int, int]]]:
    """(user, (position, item, click)) of the samples that pass the rules needing no join; the
    others are counted as rejected."""
    positions, batch = element
    columns = join.sample_columns(batch)
    _count(f"{split}/samples_in", len(positions))
    for i, reason in enumerate(join.REJECT_REASONS):
        _count(f"{split}/rejected/{reason}", np.count_nonzero(columns.reason == i))
    rows = np.flatnonzero(columns.reason == join.UNDECIDED)
    yield from zip(
        columns.users[rows].tolist(),
        zip(positions[rows].tolist(), columns.items[rows].tolist(), columns.labels[rows].tolist()),
    )


def _user_rows(element: tuple[np.ndarray, pa.RecordBatch], split: str) -> Iterator[tuple]:
    """(user, (position, profile IDs, history items, history categories)) of each user feature
    row with a user ID; rows without one are counted."""
    positions, batch = element
    keys = pi.ids(batch, release.USER_ID)
    present = keys != release.MISSING
    _count(f"{split}/user_rows/in", np.count_nonzero(~present))
    _count(f"{split}/user_rows/missing_id", np.count_nonzero(~present))
    profiles = np.stack([pi.ids(batch, c) for c in release.PROFILE_COLUMNS], axis=1)
    items, item_lengths = pi.id_lists(batch, release.HISTORY_ITEMS)
    categories, category_lengths = pi.id_lists(batch, release.HISTORY_CATEGORIES)
    item_offsets, category_offsets = pi.row_offsets(item_lengths), pi.row_offsets(category_lengths)
    for r in np.flatnonzero(present):
        yield (
            int(keys[r]),
            (
                int(positions[r]),
                profiles[r],
                items[item_offsets[r] : item_offsets[r + 1]],
                categories[category_offsets[r] : category_offsets[r + 1]],
            ),
        )


@dataclasses.dataclass
class UserBatch:
    """A batch of users: their samples and feature rows, each in input order."""

    samples: join.SampleColumns
    users: pa.RecordBatch

    def wanted(self) -> dict[str, np.ndarray]:
        """The raw IDs the batch looks up, by vocabulary."""
        ids = {
            features.VOCABULARY[features.USER_ID]: [pi.ids(self.users, release.USER_ID)],
            features.VOCABULARY[features.ITEM_ID]: [
                self.samples.items,
                pi.id_lists(self.users, release.HISTORY_ITEMS)[0],
            ],
            features.VOCABULARY[features.HISTORY_CATEGORIES]: [
                pi.id_lists(self.users, release.HISTORY_CATEGORIES)[0]
            ],
        }
        for column, name in zip(release.PROFILE_COLUMNS, features.USER_PROFILE):
            ids[features.VOCABULARY[name]] = [pi.ids(self.users, column)]
        return {name: np.unique(np.concatenate(parts)) for name, parts in ids.items()}


_LIST = pa.list_(pa.int64())


def _user_batch(groups: list[tuple[int, dict[str, Iterable]]]) -> tuple[int, UserBatch]:
    """A batch of grouped users -> (its smallest user ID, the batch)."""
    samples = sorted((sample, user) for user, g in groups for sample in g["samples"])
    rows = sorted(((row, user) for user, g in groups for row in g["users"]), key=lambda r: r[0][0])
    columns = {
        release.USER_ID: pa.array([user for _, user in rows], pa.int64()),
        **{
            column: pa.array([int(row[1][i]) for row, _ in rows], pa.int64())
            for i, column in enumerate(release.PROFILE_COLUMNS)
        },
        release.HISTORY_ITEMS: pa.array([row[2] for row, _ in rows], _LIST),
        release.HISTORY_CATEGORIES: pa.array([row[3] for row, _ in rows], _LIST),
    }
    sample_columns = join.SampleColumns(
        users=np.asarray([user for _, user in samples], np.int64),
        items=np.asarray([sample[1] for sample, _ in samples], np.int64),
        labels=np.asarray([sample[2] for sample, _ in samples], np.int64),
        reason=np.full(len(samples), join.UNDECIDED),
    )
    batch = UserBatch(sample_columns, pa.RecordBatch.from_pydict(columns))
    return min(user for user, _ in groups), batch


class JoinUsers(beam.DoFn):
    """Applies ``join.ShardJoin`` to a batch of users; their serialized records."""

    def __init__(self, split: str, history_cap: int) -> None:
        self.split = split
        self.history_cap = history_cap

    def process(self, element: tuple[int, dict[str, Iterable]]) -> Iterator[bytes]:
        from pipelines import tfrecord_writer  # TensorFlow is loaded by the workers that write

        _, groups = element
        batch = next(iter(groups["batch"]))
        answers = next(iter(groups["answers"]), {})
        joiner = join.ShardJoin(
            batch.samples, beam_lookups.FetchedLookups(answers), self.history_cap
        )
        records = joiner.add_users(batch.users)
        stats = joiner.finish()
        for name in ("samples_written", "users_written"):
            _count(f"{self.split}/{name}", stats[name])
        for section in ("rejected", "adjusted", "oov", "user_rows"):
            for name, value in stats[section].items():
                _count(f"{self.split}/{section}/{name}", value)
        yield from tfrecord_writer.encode(records)


def _convert_split(
    split: str,
    reads: dict[str, beam.PCollection],
    chunks: beam.PCollection,
    output: str,
    history_cap: int,
    shards: int,
) -> None:
    samples = reads[release.SAMPLES_TABLE[split]] | f"{split}: sample rules" >> beam.FlatMap(
        _valid_samples, split
    )
    users = reads[release.USER_TABLE[split]] | f"{split}: user rows" >> beam.FlatMap(
        _user_rows, split
    )
    batches = (
        {"samples": samples, "users": users}
        | f"{split}: group by user" >> beam.CoGroupByKey()
        | f"{split}: batch users" >> beam.BatchElements(max_batch_size=USERS_PER_BATCH)
        | f"{split}: user batches" >> beam.Map(_user_batch)
    )
    requests = batches | f"{split}: wanted IDs" >> beam.Map(lambda kv: (kv[0], kv[1].wanted()))
    answers = beam_lookups.fetch(f"{split} lookups", requests, chunks)
    (
        {"batch": batches, "answers": answers}
        | f"{split}: batch with lookups" >> beam.CoGroupByKey()
        | f"{split}: join" >> beam.ParDo(JoinUsers(split, history_cap))
        | f"{split}: write"
        >> beam.io.WriteToTFRecord(
            f"{output}/{split}/part",
            file_name_suffix=".tfrecord.gz",
            num_shards=shards,
            shard_name_template="-SSSSS-of-NNNNN",
            compression_type=CompressionTypes.GZIP,
        )
    )


# the pipeline -------------------------------------------------------------------------------


def build_pipeline(
    pipeline: beam.Pipeline,
    tables: dict[str, list[str]],
    options: stages.Options,
    output: str,
    work: str,
) -> None:
    """Adds the conversion to ``pipeline`` (steps 1-5 of the module docstring)."""
    tasks = row_groups(tables)
    reads = {table: _read(pipeline, table, tasks) for table in tables}
    counted = [
        reads[table] | f"count {table}" >> beam.FlatMap(_ids_to_count, table)
        for table in (*vocab.COUNTED_COLUMNS, release.SCL_EMBEDDINGS)
    ]
    kept = (
        counted
        | "all counts" >> beam.Flatten()
        | "sum counts" >> beam.CombinePerKey(_add_pairs)
        | "by range"
        >> beam.Map(
            lambda kv: ((kv[0][0], int(beam_lookups.id_bucket(kv[0][1]))), (kv[0][1], *kv[1]))
        )
        | "group ranges" >> beam.GroupByKey()
        | "keep" >> beam.FlatMap(_keep_range, options.min_count)
    )
    offsets = (
        kept
        | "range sizes" >> beam.Map(lambda kv: (kv[0], len(kv[1])))
        | "all sizes" >> beam.combiners.ToList()
        | "offsets" >> beam.Map(beam_lookups.range_offsets)
    )
    chunks = kept | "chunks" >> beam.Map(_chunk, beam.pvalue.AsSingleton(offsets), work)
    item_rows = {
        name: reads[table] | f"route {table}" >> beam.FlatMap(_route_items)
        for name, table in (("features", release.ITEM_FEATURES), ("scl", release.SCL_EMBEDDINGS))
    }
    item_ranges = (
        {"chunk": chunks | "item ranges" >> beam.Filter(lambda kv: kv[0][0] == "item"), **item_rows}
        | "join items" >> beam.CoGroupByKey()
        | "item tables" >> beam.FlatMap(_item_range, work)
    )
    attribute_answers = beam_lookups.fetch(
        "attributes", item_ranges | "attribute IDs" >> beam.Map(_attribute_request), chunks
    )
    item_chunks = (
        {"item": item_ranges, "answers": attribute_answers}
        | "items with attributes" >> beam.CoGroupByKey()
        | "item chunks" >> beam.Map(_item_chunk)
    )
    lookup_chunks = (
        chunks | "other ranges" >> beam.Filter(lambda kv: kv[0][0] != "item"),
        item_chunks,
    ) | "lookup ranges" >> beam.Flatten()
    for split in release.SPLITS:
        _convert_split(
            split,
            reads,
            lookup_chunks,
            output,
            options.history_cap,
            options.shards[split],
        )


# after the run ------------------------------------------------------------------------------


def _concat_ranges(
    paths: list[str], out_path: str, dtype: type, row_shape: tuple, reserved: int
) -> int:
    """Writes the range files, in order, as one .npy after ``reserved`` zero rows; its rows."""
    parts = [_load(p) for p in paths]
    rows = reserved + sum(len(p) for p in parts)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (rows, *row_shape),
    }
    with stages.naming(out_path), FileSystems.create(
        out_path, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros((reserved, *row_shape), dtype).tobytes())
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype).tobytes())
    return rows


def _ranges(work: str, kind: str, name: str) -> list[str]:
    matched = FileSystems.match([f"{work}/{kind}/{name}/r*.npy"])[0].metadata_list
    return sorted(m.path for m in matched)


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    values = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value)
    return values


def _split_totals(counters: dict[str, int], split: str, shards: list[dict]) -> dict:
    def get(name: str) -> int:
        return counters.get(f"{split}/{name}", 0)

    return {
        "samples_in": get("samples_in"),
        "samples_written": get("samples_written"),
        "users_written": get("users_written"),
        "rejected": {r: get(f"rejected/{r}") for r in join.REJECT_REASONS},
        "adjusted": {a: get(f"adjusted/{a}") for a in join.ADJUSTMENTS},
        "oov": {f: get(f"oov/{f}") for f in join.OOV_FEATURES},
        "user_rows": {u: get(f"user_rows/{u}") for u in join.USER_ROW_COUNTS},
        "bytes": sum(s["bytes"] for s in shards),
    }


def finish(
    counters: dict[str, int],
    input_dir: str,
    output: str,
    work: str,
    tables: dict[str, list[str]],
    options: stages.Options,
) -> dict:
    """Assembles the vocabularies and the multimodal table from their ranges and writes the
    manifest from the counters (it refuses counts that do not balance)."""
    vocabularies = {}
    for name in features.VOCABULARIES:
        size = _concat_ranges(
            _ranges(work, "vocab", name), dataset_dir.vocab_path(output, name), np.int64, (), 0
        )
        stats = {
            field.name: counters.get(f"vocab/{name}/{field.name}", 0)
            for field in dataclasses.fields(vocab.VocabStats)
        }
        vocabularies[name] = {
            "size": size + vocabulary.RESERVED,
            "min_count": options.min_count[name],
            **stats,
        }
    _concat_ranges(
        _ranges(work, "multimodal", "item"),
        f"{output}/{dataset_dir.MULTIMODAL_TABLE}",
        np.int8,
        (release.EMBEDDING_DIM,),
        vocabulary.RESERVED,
    )
    item_summary = {
        "item_features": {
            k: counters.get(f"item_features/{k}", 0) for k in item_tables.attribute_counts()
        },
        "multimodal": {
            k: counters.get(f"multimodal/{k}", 0) for k in item_tables.multimodal_counts()
        },
    }
    shards = {
        split: [
            {"file": name, "bytes": _size(f"{output}/{name}")}
            for name in (dataset_dir.shard_name(split, k, n) for k in range(n))
        ]
        for split, n in options.shards.items()
    }
    result = manifest.build(
        source=input_dir,
        history_cap=options.history_cap,
        vocabularies=vocabularies,
        item_tables=item_summary,
        input_rows={t: counters.get(f"input_rows/{t}", 0) for t in tables},
        shards_by_split=shards,
        totals_by_split={s: _split_totals(counters, s, shards[s]) for s in release.SPLITS},
    )
    taobao_mm.check_training_samples(input_dir, result, work)
    path = f"{output}/{dataset_dir.MANIFEST}"  # complete or absent, as stages.write_json writes
    with stages.naming(path), FileSystems.create(
        f"{path}.tmp", compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(json.dumps(result, indent=1).encode())
    FileSystems.rename([f"{path}.tmp"], [path])
    return result


def _match(pattern: str) -> list[str]:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _size(path: str) -> int:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def refuse_unknown_options(pipeline_args: Sequence[str]) -> None:
    """Refuses an argument that no Beam options class knows: Beam itself only logs and drops it,
    so a mistyped ``--runer DirectRunner`` would run on the default runner.

    Raises:
        ValueError: naming the first unknown option (and the closest known one, if any).
    """
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions(list(pipeline_args)).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(pipeline_args))
    if not unknown:
        return
    name = next((arg for arg in unknown if arg.startswith("-")), unknown[0]).split("=", 1)[0]
    close = difflib.get_close_matches(name, list(parsers[0]._option_string_actions), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"{name}: neither an option of this command nor a Beam pipeline option{hint}.")


def convert(
    input_dir: str,
    output: str,
    *,
    history_cap: int = 1000,
    min_count: dict[str, int] | None = None,
    shards: dict[str, int | None] | None = None,
    pipeline_args: Sequence[str] = (),
    keep_work: bool = False,
    overwrite: bool = False,
) -> dict:
    """Runs the conversion on the runner ``pipeline_args`` choose; returns the manifest."""
    input_dir, output = input_dir.rstrip("/"), output.rstrip("/")
    pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
    refuse_unknown_options(pipeline_args)  # once the runner's own options classes are loaded
    tables = pi.discover_tables(input_dir, _match if "://" in input_dir else None)
    options = taobao_mm.resolve_options(
        tables, history_cap, min_count or {}, shards or {}, size=_size
    )
    inputs = {t: [[path, _size(path)] for path in paths] for t, paths in tables.items()}
    params = {**dataclasses.asdict(options), "inputs": inputs}
    with output_dir.claimed(
        output, output_dir.BEAM_WORK, params, overwrite=overwrite, resumable=False
    ) as work:
        build_pipeline(pipeline, tables, options, output, work)
        result = pipeline.run()
        result.wait_until_finish()
        summary = finish(_counters(result), input_dir, output, work, tables, options)
        if not keep_work:
            FileSystems.delete([work])
    taobao_mm.print_summary(summary)
    return summary
