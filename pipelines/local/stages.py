"""The resumable units of work of the local engine (see ``pipelines.local.driver``).

Each task returns (result, progress message) and leaves its result under the work directory, so a
re-run with the same inputs and options skips it. Tasks run in worker processes: arguments and
results are plain data.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from muse_tf.contract import dataset_dir, vocabulary
from pipelines.common import item_tables, join, vocab
from pipelines.common import parquet_input as pi
from pipelines.common.options import ConversionOptions
from pipelines.common.raw_schema import RawSchema
from pipelines.common.write_errors import naming
from pipelines.local import buckets

ROW_GROUPS_PER_TASK = 4


@dataclasses.dataclass(frozen=True)
class ScanTask:
    """Stage 1 work unit: some row groups of one file of ``table``; ``tag`` names its outputs."""

    table: str
    path: str
    row_groups: list[int]
    tag: str


def write_json(path: str, value: dict) -> None:
    """Writes through a temporary name, so a task's result marker is complete or absent."""
    tmp = f"{path}.tmp"
    with naming(path), open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    """A task's result marker (or any JSON file)."""
    with open(path) as f:
        return json.load(f)


def scan_tasks(tables: dict[str, list[str]], schema: RawSchema) -> list[ScanTask]:
    """Stage 1 tasks: every file of every table in slices of ROW_GROUPS_PER_TASK row groups (this
    opens every file, so a bad schema stops the run before any work)."""
    tasks = []
    for table, paths in tables.items():
        for file_index, path in enumerate(paths):
            groups = list(range(pi.num_row_groups(path, table, schema)))
            for start in range(0, len(groups), ROW_GROUPS_PER_TASK):
                tag = f"{table}-{file_index:05d}-{start:06d}"
                tasks.append(
                    ScanTask(table, path, groups[start : start + ROW_GROUPS_PER_TASK], tag)
                )
    return tasks


def scan_file(work: str, task: ScanTask, options: ConversionOptions) -> tuple[dict, str]:
    """Stage 1 for one slice of one file: ID counts (train tables) and user buckets."""
    marker = os.path.join(work, "scan", f"{task.tag}.json")
    label = f"{os.path.basename(task.path)} row groups {task.row_groups[0]}-{task.row_groups[-1]}"
    if os.path.exists(marker):
        return read_json(marker), f"{label} (done before)"
    schema = options.schema
    counter = vocab.CountSpill(os.path.join(work, "counts"), task.tag, options.partitions)
    spill = None
    for split in options.shards:
        if task.table in (schema.samples_table[split], schema.user_table[split]):
            kind = buckets.SAMPLES if task.table in schema.samples else buckets.USERS
            bucket_dir = os.path.join(work, "buckets")
            spill = buckets.BucketSpill(
                bucket_dir, split, kind, task.tag, options.shards[split], schema.user_id
            )
    rows = 0
    for batch in pi.read_batches(task.path, task.table, schema, task.row_groups):
        rows += batch.num_rows
        for name, raw_ids in vocab.ids_to_count(task.table, batch, schema):
            counter.add(name, raw_ids)
        if spill is not None:
            spill.write(batch)
    counter.flush()
    if spill is not None:
        spill.close()
    result = {"table": task.table, "rows": rows}
    write_json(marker, result)
    return result, f"{label}: {rows} rows"


def reduce_vocab(work: str, name: str, partition: int, min_count: int) -> tuple[dict, str]:
    """Stage 2 for one (vocabulary, partition)."""
    path = os.path.join(work, "vocab_parts", f"{name}-p{partition:05d}.npy")
    marker = f"{path}.json"
    if os.path.exists(marker):
        return read_json(marker), f"{name} partition {partition} (done before)"
    stats = vocab.reduce_partition(os.path.join(work, "counts"), name, partition, min_count, path)
    result = {"path": path, **dataclasses.asdict(stats)}
    write_json(marker, result)
    return result, f"{name} partition {partition}: {stats.kept} kept of {stats.distinct}"


def allocated_memmap(path: str, dtype: type, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` memmap whose disk blocks are reserved up front.

    Without the reservation a full disk surfaces as SIGBUS on some later write into the mapping,
    killing the process without a word; with it, it is an OSError naming ``path``.
    """
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as err:
        os.remove(path)  # the mapping goes with ``array``; nothing was written into it
        raise OSError(err.errno, err.strerror, path) from None
    return array


def build_item_tables(
    output: str, work: str, tables: dict[str, list[str]], schema: RawSchema
) -> dict[str, dict]:
    """Stage 3: the item-aligned tables, once the vocabularies exist."""
    marker = os.path.join(work, "items.json")
    if os.path.exists(marker):
        return read_json(marker)
    vocabs = dataset_dir.load_vocabularies(output, schema.spec)
    rows = len(vocabs["item"]) + vocabulary.RESERVED
    width = 1 + len(schema.attribute_columns)
    attributes = allocated_memmap(os.path.join(work, "item_attributes.npy"), np.int32, (rows, width))
    multimodal = allocated_memmap(
        os.path.join(output, dataset_dir.MULTIMODAL_TABLE), np.dtype(schema.vector_dtype),
        (rows, schema.embedding_dim),
    )
    result = {
        "item_features": item_tables.build_attribute_table(
            tables[schema.item_features], vocabs, attributes, schema
        ),
        "multimodal": item_tables.build_multimodal_table(
            tables[schema.scl_embeddings], vocabs["item"], multimodal, schema
        ),
    }
    attributes.flush()
    multimodal.flush()
    del attributes, multimodal
    write_json(marker, result)
    return result


def load_lookups(output: str, work: str, schema: RawSchema) -> join.TableLookups:
    """The finished vocabularies and item tables, memory-mapped, for the join (stage 4)."""
    vocabs = {
        name: np.load(dataset_dir.vocab_path(output, name), mmap_mode="r")
        for name in schema.spec.vocabularies
    }
    return join.TableLookups(
        vocabs=vocabs,
        item_attributes=np.load(os.path.join(work, "item_attributes.npy"), mmap_mode="r"),
        multimodal=dataset_dir.load_multimodal_table(output),
        spec=schema.spec,
    )


def convert_shard(
    output: str, work: str, split: str, shard: int, options: ConversionOptions
) -> tuple[dict, str]:
    """Stage 4 for one bucket: join, apply the rules, write the shard; its counts."""
    from pipelines.common import tfrecord_writer  # TensorFlow is loaded only by the processes that write

    name = dataset_dir.shard_name(split, shard, options.shards[split])
    marker = os.path.join(work, "shards", f"{split}-{shard:05d}.json")
    if os.path.exists(marker) and os.path.exists(os.path.join(output, name)):
        return read_json(marker), f"{name} (done before)"
    bucket_dir = os.path.join(work, "buckets")
    schema = options.schema
    samples = buckets.read_bucket(
        bucket_dir, split, buckets.SAMPLES, shard, schema.samples_table[split], schema
    )
    joiner = join.ShardJoin(
        join.sample_columns(samples, schema), load_lookups(output, work, schema),
        options.history_cap, schema,
    )
    user_batches = buckets.iter_bucket(bucket_dir, split, buckets.USERS, shard)
    with tfrecord_writer.ShardWriter(os.path.join(output, name), options.feature_spec) as writer:
        for users in user_batches:
            writer.write(joiner.add_users(users))
    stats = joiner.finish()
    size = writer.size
    result = {"file": name, **stats, "bytes": size}
    write_json(marker, result)
    message = f"{name}: {stats['samples_written']} samples, {stats['users_written']} users"
    return result, f"{message}, {size / 1e6:.2f} MB"
