"""manifest.json of a conversion (keys and totals: ``muse_tf.contract.dataset_dir``), its counts
checked to balance.

For every shard and split, ``samples_in == samples_written + sum(rejected.values())``; a split's
``samples_in`` and ``user_rows.in`` must also equal the rows read from its input tables, so a
conversion that lost a record stops instead of writing a manifest.
"""

from __future__ import annotations

from muse_tf.contract import dataset_dir
from pipelines.common.raw_schema import RawSchema


def _split_summary(
    split: str, shards: list[dict], input_rows: dict[str, int], total: dict | None,
    schema: RawSchema,
) -> dict:
    if total is None:
        total = dataset_dir.sum_counts(shards)
    accounted = total["samples_written"] + sum(total["rejected"].values())
    expected = {
        "samples_in": input_rows[schema.samples_table[split]],
        "user_rows": input_rows[schema.user_table[split]],
    }
    if (
        total["samples_in"] != expected["samples_in"]
        or accounted != total["samples_in"]
        or (total["user_rows"]["in"] != expected["user_rows"])
    ):
        raise RuntimeError(f"{split}: counts do not balance ({total}, input rows {expected}).")
    return dataset_dir.split_summary(shards, total)


def build(
    *,
    source: str,
    schema: RawSchema,
    history_cap: int,
    vocabularies: dict[str, dict],
    item_tables: dict[str, dict],
    input_rows: dict[str, int],
    shards_by_split: dict[str, list[dict]],
    totals_by_split: dict[str, dict] | None = None,
) -> dict:
    """The manifest: schema version, the feature spec (``schema.spec``), vocabulary sizes and
    statistics, item-table row counts, input rows per table, and per split its totals, bytes per
    sample and per-shard counts.

    A split's totals are the sum of its shards' counts, or ``totals_by_split[split]`` when given
    (the Beam pipeline counts per split, its shards list only ``file`` and ``bytes``).

    Raises:
        RuntimeError: when a split's counts do not balance.
    """
    return dataset_dir.build_manifest(
        source=source,
        history_cap=history_cap,
        feature_spec=schema.spec,
        vocab_sizes={name: v["size"] for name, v in vocabularies.items()},
        vocabularies=vocabularies,
        **item_tables,
        input_rows=input_rows,
        splits={
            split: _split_summary(
                split, shards, input_rows, (totals_by_split or {}).get(split), schema
            )
            for split, shards in shards_by_split.items()
        },
    )
