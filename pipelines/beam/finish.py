"""Step 6, after the run (on the launcher): the vocabulary and table ranges are concatenated in
range order, and the manifest is built from the pipeline's counters and checked to balance."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from muse_tf.contract import dataset_dir, vocabulary
from muse_tf.contract.feature_spec import FeatureSpec
from pipelines.beam import files
from pipelines.common import item_tables, join, manifest, summary, vocab
from pipelines.common.options import ConversionOptions
from pipelines.common.raw_schema import SPLITS
from pipelines.common.write_errors import naming


def _concat_ranges(
    paths: list[str], out_path: str, dtype: type, row_shape: tuple, reserved: int
) -> int:
    """Writes the range files, in order, as one .npy after ``reserved`` zero rows; its rows."""
    parts = [files.load(p) for p in paths]
    rows = reserved + sum(len(p) for p in parts)
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (rows, *row_shape),
    }
    with naming(out_path), FileSystems.create(
        out_path, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros((reserved, *row_shape), dtype).tobytes())
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype).tobytes())
    return rows


def _split_totals(
    counters: dict[str, int], split: str, shards: list[dict], spec: FeatureSpec
) -> dict:
    def get(name: str) -> int:
        return counters.get(f"{split}/{name}", 0)

    return {
        "samples_in": get("samples_in"),
        "samples_written": get("samples_written"),
        "users_written": get("users_written"),
        "rejected": {r: get(f"rejected/{r}") for r in join.REJECT_REASONS},
        "adjusted": {a: get(f"adjusted/{a}") for a in join.ADJUSTMENTS},
        "oov": {f: get(f"oov/{f}") for f in join.oov_features(spec)},
        "user_rows": {u: get(f"user_rows/{u}") for u in join.USER_ROW_COUNTS},
        "bytes": sum(s["bytes"] for s in shards),
    }


def finish(
    counters: dict[str, int], work: str, tables: dict[str, list[str]], options: ConversionOptions
) -> dict:
    """Assembles the vocabularies and the multimodal table from their ranges and writes the
    manifest from the run's ``counters`` (it refuses counts that do not balance)."""
    input_dir, output = options.input_dir, options.output
    schema = options.schema
    vocabularies = {}
    for name in options.feature_spec.vocabularies:
        size = _concat_ranges(
            files.ranges(work, "vocab", name), dataset_dir.vocab_path(output, name), np.int64, (), 0
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
        files.ranges(work, "multimodal", "item"),
        f"{output}/{dataset_dir.MULTIMODAL_TABLE}",
        np.dtype(schema.vector_dtype),
        (schema.embedding_dim,),
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
            {"file": name, "bytes": files.size(f"{output}/{name}")}
            for name in (dataset_dir.shard_name(split, k, n) for k in range(n))
        ]
        for split, n in options.shards.items()
    }
    result = manifest.build(
        source=input_dir,
        schema=schema,
        history_cap=options.history_cap,
        vocabularies=vocabularies,
        item_tables=item_summary,
        input_rows={t: counters.get(f"input_rows/{t}", 0) for t in tables},
        shards_by_split=shards,
        totals_by_split={
            s: _split_totals(counters, s, shards[s], options.feature_spec) for s in SPLITS
        },
    )
    summary.check_training_samples(input_dir, result, work)
    path = f"{output}/{dataset_dir.MANIFEST}"  # complete or absent, written through a temporary name
    with naming(path), FileSystems.create(
        f"{path}.tmp", compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        f.write(json.dumps(result, indent=1).encode())
    FileSystems.rename([f"{path}.tmp"], [path])
    return result
