"""The planted synthetic world (``muse_tf.data.synthetic``) as Parquet in the release's schema, written
in chunks of users so memory is bounded (the command line is ``python -m pipelines.synthetic``).

The output (the six tables, one Parquet file each, as in the demo) goes through either engine like
the real data. The same config gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muse_tf.data.synthetic import Catalogue, SyntheticConfig, user_chunks
from pipelines.common import parquet_input as pi
from pipelines.common import taobao_mm_schema as release

ITEM_ROW_GROUP = 65_536
_ID = pa.int64()
_ITEM_SCHEMA = pa.schema(
    [(c, _ID) for c in (release.ITEM_ID, release.ITEM_CATEGORY, *release.ATTRIBUTE_COLUMNS)]
)
_SCL_SCHEMA = pa.schema([(release.ITEM_ID, _ID), (release.SCL_VECTOR, pa.list_(pa.int8()))])
_SAMPLE_SCHEMA = pa.schema(
    [(release.LABELS, pa.list_(pa.int8())), (release.USER_ID, _ID), (release.ITEM_ID, _ID)]
)
_USER_SCHEMA = pa.schema(
    [(release.USER_ID, _ID)]
    + [(c, _ID) for c in release.PROFILE_COLUMNS]
    + [(release.HISTORY_ITEMS, pa.list_(_ID)), (release.HISTORY_CATEGORIES, pa.list_(_ID))]
)


def _samples_table(rows: list) -> pa.Table:
    clicks = np.concatenate([r[2] for r in rows])
    pairs = np.stack([1 - clicks, clicks], axis=1).astype(np.int8).ravel()
    offsets = np.arange(0, len(pairs) + 1, 2, dtype=np.int32)
    return pa.table(
        {
            release.LABELS: pa.ListArray.from_arrays(offsets, pairs),
            release.USER_ID: np.concatenate([np.full(len(r[1]), r[0], np.int64) for r in rows]),
            release.ITEM_ID: np.concatenate([r[1] for r in rows]),
        }
    )


def _users_table(rows: list, catalogue: Catalogue) -> pa.Table:
    histories = [r[2] for r in rows]
    offsets = pi.row_offsets(np.array([len(h) for h in histories])).astype(np.int32)
    items = np.concatenate(histories)
    category_ids = catalogue.category_ids[items]
    columns = {release.USER_ID: np.array([r[0] for r in rows], np.int64)}
    for i, column in enumerate(release.PROFILE_COLUMNS):
        columns[column] = np.array([r[1][i] for r in rows], np.int64)
    columns[release.HISTORY_ITEMS] = pa.ListArray.from_arrays(offsets, catalogue.ids[items])
    columns[release.HISTORY_CATEGORIES] = pa.ListArray.from_arrays(offsets, category_ids)
    return pa.table(columns)


def _write_items(catalogue: Catalogue, output: str) -> None:
    with pq.ParquetWriter(os.path.join(output, f"{release.ITEM_FEATURES}.parquet"), _ITEM_SCHEMA) as w:
        for start in range(0, len(catalogue.ids), ITEM_ROW_GROUP):
            rows = slice(start, start + ITEM_ROW_GROUP)
            columns = {
                release.ITEM_ID: catalogue.ids[rows],
                release.ITEM_CATEGORY: catalogue.category_ids[rows],
                **{c: ids[rows] for c, ids in catalogue.attr_ids.items()},
            }
            w.write_table(pa.table(columns, schema=_ITEM_SCHEMA))
    with_scl = np.flatnonzero(catalogue.has_scl)
    with pq.ParquetWriter(os.path.join(output, f"{release.SCL_EMBEDDINGS}.parquet"), _SCL_SCHEMA) as w:
        for start in range(0, len(with_scl), ITEM_ROW_GROUP):
            rows = with_scl[start : start + ITEM_ROW_GROUP]
            offsets = np.arange(len(rows) + 1, dtype=np.int32) * release.EMBEDDING_DIM
            vectors = pa.ListArray.from_arrays(offsets, catalogue.scl[rows].ravel())
            columns = {release.ITEM_ID: catalogue.ids[rows], release.SCL_VECTOR: vectors}
            w.write_table(pa.table(columns, _SCL_SCHEMA))


def generate(config: SyntheticConfig, output: str) -> dict[str, int]:
    """Writes the six tables (and ``synthetic.json`` with the config) to ``output``; row counts."""
    os.makedirs(output, exist_ok=True)
    catalogue = Catalogue(config)
    _write_items(catalogue, output)
    writers = {
        (split, kind): pq.ParquetWriter(os.path.join(output, f"{table[split]}.parquet"), schema)
        for split in release.SPLITS
        for kind, table, schema in (
            ("samples", release.SAMPLES_TABLE, _SAMPLE_SCHEMA),
            ("users", release.USER_TABLE, _USER_SCHEMA),
        )
    }
    counts = dict.fromkeys((f"{s}_{k}" for s, k in writers), 0)
    try:
        for first, count, rows in user_chunks(catalogue, config):
            for split in release.SPLITS:
                if not rows[split]["samples"]:
                    continue
                samples = _samples_table(rows[split]["samples"])
                users = _users_table(rows[split]["users"], catalogue)
                writers[(split, "samples")].write_table(samples.cast(_SAMPLE_SCHEMA))
                writers[(split, "users")].write_table(users.cast(_USER_SCHEMA))
                counts[f"{split}_samples"] += samples.num_rows
                counts[f"{split}_users"] += users.num_rows
            print(f"[synthetic] users {first + count}/{config.users}", file=sys.stderr, flush=True)
    finally:
        for writer in writers.values():
            writer.close()
    with open(os.path.join(output, "synthetic.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(config), "rows": counts}, f, indent=1)
    return counts
