"""The Taobao-MM conversion as an Apache Beam pipeline: its steps, assembled. The launcher
(``pipelines.beam.launcher``) runs it and then finishes the dataset.

Shape (each step scales with the data, nothing whole is held by one worker; "join" = CoGroupByKey):

1. read (``read``): every row group of every file is a task; its record batches carry each row's
   input position (file, row), which "first row wins" and sample order need.
2. vocabularies (``vocabularies``): IDs counted by a combiner, grouped into order-preserving value
   ranges; each range keeps its IDs and knows its first index.
3. lookups (``lookups``): raw IDs meet their range of the vocabulary in a join by (vocabulary,
   range), never as a side input holding a vocabulary.
4. items (``items``): item_features and SCL rows join their item range and write its rows of the
   multimodal table; samples see an item's attributes and whether it has a vector.
5. users (``users``): samples and user feature rows grouped by user, batched, looked up, joined by
   ``join.ShardJoin`` and written as TFRecord shards.
6. after the run (``finish``): ranges concatenated, the manifest built from the counters.
"""

from __future__ import annotations

import apache_beam as beam

from pipelines.beam import items, read, users, vocabularies
from pipelines.common.options import ConversionOptions
from pipelines.common.raw_schema import SPLITS


def build_pipeline(
    pipeline: beam.Pipeline,
    tables: dict[str, list[str]],
    options: ConversionOptions,
    work: str,
) -> None:
    """Adds steps 1-5 to ``pipeline`` for the resolved ``options``; ranges go under ``work``."""
    schema = options.schema
    tasks = read.row_groups(tables, schema)
    reads = {table: read.read_table(pipeline, table, tasks, schema) for table in tables}
    chunks = vocabularies.kept_ranges(reads, options.min_count, work, schema)
    lookup_chunks = items.lookup_ranges(reads, chunks, work, schema)
    for split in SPLITS:
        users.convert_split(
            split,
            reads,
            lookup_chunks,
            options.output,
            options.history_cap,
            options.shards[split],
            schema,
        )
