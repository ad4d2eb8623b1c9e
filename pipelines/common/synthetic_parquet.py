"""The planted synthetic world (``muse_tf.data.synthetic``) as Parquet in the tables and columns of a
feature spec (default: the Taobao-MM release's), written in chunks of users so memory is bounded
(the command line is ``python -m pipelines.synthetic``).

The output (the six tables, one Parquet file each, as in the demo) goes through either engine like
the real data. The same config and spec give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec
from muse_tf.data.synthetic import ATTRIBUTES, Catalogue, SyntheticConfig, check_spec, user_chunks
from pipelines.common import parquet_input as pi
from pipelines.common.raw_schema import SPLITS, RawSchema

ITEM_ROW_GROUP = 65_536
_ID = pa.int64()


class _Schemas:
    """The Arrow schemas of the four kinds of table."""

    def __init__(self, schema: RawSchema) -> None:
        self.items = pa.schema(
            [(c, _ID) for c in (schema.item_id, schema.item_category, *schema.attribute_columns)]
        )
        vector = pa.from_numpy_dtype(np.dtype(schema.vector_dtype))
        self.vectors = pa.schema([(schema.item_id, _ID), (schema.scl_vector, pa.list_(vector))])
        self.samples = pa.schema(
            [(schema.labels, pa.list_(pa.int8())), (schema.user_id, _ID), (schema.item_id, _ID)]
        )
        self.users = pa.schema(
            [(schema.user_id, _ID)]
            + [(c, _ID) for c in schema.profile_columns]
            + [(schema.history_items, pa.list_(_ID)), (schema.history_categories, pa.list_(_ID))]
        )


def _samples_table(rows: list, schema: RawSchema) -> pa.Table:
    clicks = np.concatenate([r[2] for r in rows])
    pairs = np.stack([1 - clicks, clicks], axis=1).astype(np.int8).ravel()
    offsets = np.arange(0, len(pairs) + 1, 2, dtype=np.int32)
    return pa.table(
        {
            schema.labels: pa.ListArray.from_arrays(offsets, pairs),
            schema.user_id: np.concatenate([np.full(len(r[1]), r[0], np.int64) for r in rows]),
            schema.item_id: np.concatenate([r[1] for r in rows]),
        }
    )


def _users_table(rows: list, catalogue: Catalogue, schema: RawSchema) -> pa.Table:
    histories = [r[2] for r in rows]
    offsets = pi.row_offsets(np.array([len(h) for h in histories])).astype(np.int32)
    items = np.concatenate(histories)
    category_ids = catalogue.category_ids[items]
    columns = {schema.user_id: np.array([r[0] for r in rows], np.int64)}
    for i, column in enumerate(schema.profile_columns):
        columns[column] = np.array([r[1][i] for r in rows], np.int64)
    columns[schema.history_items] = pa.ListArray.from_arrays(offsets, catalogue.ids[items])
    columns[schema.history_categories] = pa.ListArray.from_arrays(offsets, category_ids)
    return pa.table(columns)


def _write_items(catalogue: Catalogue, output: str, schema: RawSchema, arrow: _Schemas) -> None:
    path = os.path.join(output, f"{schema.item_features}.parquet")
    with pq.ParquetWriter(path, arrow.items) as w:
        for start in range(0, len(catalogue.ids), ITEM_ROW_GROUP):
            rows = slice(start, start + ITEM_ROW_GROUP)
            columns = {
                schema.item_id: catalogue.ids[rows],
                schema.item_category: catalogue.category_ids[rows],
                **{c: catalogue.attr_ids[a][rows] for c, a in zip(schema.attribute_columns, ATTRIBUTES)},
            }
            w.write_table(pa.table(columns, schema=arrow.items))
    with_scl = np.flatnonzero(catalogue.has_scl)
    path = os.path.join(output, f"{schema.scl_embeddings}.parquet")
    with pq.ParquetWriter(path, arrow.vectors) as w:
        for start in range(0, len(with_scl), ITEM_ROW_GROUP):
            rows = with_scl[start : start + ITEM_ROW_GROUP]
            offsets = np.arange(len(rows) + 1, dtype=np.int32) * schema.embedding_dim
            vectors = pa.ListArray.from_arrays(offsets, catalogue.scl[rows].ravel())
            columns = {schema.item_id: catalogue.ids[rows], schema.scl_vector: vectors}
            w.write_table(pa.table(columns, arrow.vectors))


def generate(config: SyntheticConfig, output: str, spec: FeatureSpec = TAOBAO_MM) -> dict[str, int]:
    """Writes the six tables of ``spec`` (and ``synthetic.json`` with the config) to ``output``;
    row counts. A spec's profile features are the world's first ones, its attributes the world's
    first ones (``muse_tf.data.synthetic_dataset`` writes the same world converted).

    Raises:
        ValueError: when ``spec`` has more profile or attribute features than the world.
    """
    check_spec(spec)
    schema = RawSchema(spec)
    arrow = _Schemas(schema)
    if schema.item_features == schema.scl_embeddings:
        raise ValueError("The synthetic Parquet writes items and vectors as two tables; give "
                         "the spec's `tables.items` and `tables.vectors` two names.")
    os.makedirs(output, exist_ok=True)
    catalogue = Catalogue(config, spec.multimodal)
    _write_items(catalogue, output, schema, arrow)
    writers = {
        (split, kind): pq.ParquetWriter(os.path.join(output, f"{table[split]}.parquet"), kind_schema)
        for split in SPLITS
        for kind, table, kind_schema in (
            ("samples", schema.samples_table, arrow.samples),
            ("users", schema.user_table, arrow.users),
        )
    }
    counts = dict.fromkeys((f"{s}_{k}" for s, k in writers), 0)
    try:
        for first, count, rows in user_chunks(catalogue, config):
            for split in SPLITS:
                if not rows[split]["samples"]:
                    continue
                samples = _samples_table(rows[split]["samples"], schema)
                users = _users_table(rows[split]["users"], catalogue, schema)
                writers[(split, "samples")].write_table(samples.cast(arrow.samples))
                writers[(split, "users")].write_table(users.cast(arrow.users))
                counts[f"{split}_samples"] += samples.num_rows
                counts[f"{split}_users"] += users.num_rows
            print(f"[synthetic] users {first + count}/{config.users}", file=sys.stderr, flush=True)
    finally:
        for writer in writers.values():
            writer.close()
    with open(os.path.join(output, "synthetic.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(config), "rows": counts}, f, indent=1)
    return counts
