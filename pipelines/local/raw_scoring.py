"""Scores raw Taobao-MM Parquet with a trained run (``python -m pipelines.predict``): the local
engine converts the split with the run's vocabularies, ``muse_tf.jobs.prediction`` scores the
conversion, and ``pipelines.local.candidates`` writes the scores back in the input's row order.

The split's samples (labels optional) and user features, item_features and the SCL table are
converted as ``pipelines.local.driver`` converts them (the same stages and rules:
``pipelines.common.join``), except that the vocabularies are copied from the dataset the run was
trained on: new vocabularies would give the IDs other indices, and so other embedding rows. Every
sample is then scored or rejected for one of the reasons of ``pipelines.common.join``; both counts
are printed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.jobs import prediction as scoring
from pipelines.common.raw_schema import SPLITS, RawSchema


def split_tables(input_dir: str, split: str, schema: RawSchema) -> dict[str, list[str]]:
    """The files of the tables scoring ``split`` reads.

    Raises:
        pi.InputError: naming a table without a file.
    """
    from pipelines.common import parquet_input as pi

    names = (schema.samples_table[split], schema.user_table[split], schema.item_features,
             schema.scl_embeddings)
    return pi.discover_tables(input_dir, schema, names=tuple(dict.fromkeys(names)))


def convert_with_vocabularies(
    input_dir: str,
    tables: dict[str, list[str]],
    schema: RawSchema,
    data_dir: str,
    output: str,
    split: str,
) -> dict:
    """Converts ``split`` of the raw ``tables`` (found in ``input_dir``; ``schema``: ``data_dir``'s
    feature spec) into the dataset directory ``output`` with the vocabularies of the converted
    dataset ``data_dir`` (and its history cap and shard count, so the same raw data gives the same
    records); returns the manifest.

    Raises:
        pi.InputError: naming a malformed table, or the split's tables when they do not join.
        RuntimeError: when the split's counts do not balance (a record was lost).
    """
    from muse_tf.contract import dataset_dir  # TensorFlow loads here, after parsing
    from pipelines.common import join_check
    from pipelines.common import manifest as manifest_lib
    from pipelines.common.options import ConversionOptions
    from pipelines.local import stages

    source = dataset_dir.load_manifest(data_dir)
    shards = len(source["splits"].get(split, {}).get("shards", ())) or 1
    options = ConversionOptions(
        input_dir, output, history_cap=source["history_cap"], shards={split: shards}, partitions=1,
        feature_spec=schema.spec,
    )
    tasks = stages.scan_tasks(tables, schema)  # every file's schema, before the join is checked
    join_check.check_split_joins(input_dir, split, tables, schema)
    work = os.path.join(output, "_work")
    for path in (os.path.join(work, "scan"), os.path.join(work, "shards"),
                 os.path.join(output, split), os.path.join(output, dataset_dir.VOCAB_DIR)):
        os.makedirs(path, exist_ok=True)
    for name in options.feature_spec.vocabularies:
        shutil.copyfile(dataset_dir.vocab_path(data_dir, name), dataset_dir.vocab_path(output, name))

    scanned = [stages.scan_file(work, task, options)[0] for task in tasks]
    item_summary = stages.build_item_tables(output, work, tables, schema)
    results = [stages.convert_shard(output, work, split, k, options)[0] for k in range(shards)]
    input_rows = dict.fromkeys(tables, 0)
    for result in scanned:
        input_rows[result["table"]] += result["rows"]
    manifest = manifest_lib.build(
        source=os.path.abspath(input_dir),
        schema=schema,
        history_cap=options.history_cap,
        vocabularies={name: {"size": size} for name, size in source["vocab_sizes"].items()},
        item_tables=item_summary,
        input_rows=input_rows,
        shards_by_split={split: results},
    )
    stages.write_json(os.path.join(output, dataset_dir.MANIFEST), manifest)
    shutil.rmtree(work)
    return manifest


def predict_parquet(
    parquet_dir: str,
    data_dir: str,
    output: str,
    *,
    split: str = "test",
    work_dir: str | None = None,
    row_key: str | None = None,
    carry: Sequence[str] = (),
    **scoring_options,
) -> dict:
    """Converts ``split`` of ``parquet_dir`` with ``data_dir``'s vocabularies (in a temporary
    directory under ``work_dir``), scores it (``muse_tf.jobs.prediction.scored_split``, which takes
    ``scoring_options``: ``model_dir`` or ``export``, ``batch_size``, ...) and writes the scores
    into ``output`` in the samples' row order, with ``row_key`` first and the ``carry`` columns
    last (``pipelines.local.candidates``).

    Returns:
        ``output``, ``rows`` written, ``unknown_items`` (scored as OOV), ``samples_in`` and
        ``rejected`` (by reason); ``samples_in == rows + sum(rejected)``.
    """
    if split not in SPLITS:
        raise cli.UsageError(f"--split {split!r}: the release's splits are {list(SPLITS)}.")
    scoring.output_format(output)
    if scoring_options.get("model_dir"):  # before converting: the conversion is not --data
        scoring.check_run(scoring_options["model_dir"], data_dir)
    from muse_tf.contract import dataset_dir
    from pipelines.common.parquet_input import InputError
    from pipelines.local import candidates as candidates_lib

    schema = RawSchema(dataset_dir.load_feature_spec(data_dir))
    with tempfile.TemporaryDirectory(prefix="muse-predict-", dir=work_dir) as converted:
        try:
            tables = split_tables(parquet_dir, split, schema)
            samples_table = schema.samples_table[split]
            candidates = candidates_lib.read(tables[samples_table], samples_table, schema, row_key,
                                             carry)
            copy_dir = os.path.join(converted, "candidates")
            os.makedirs(copy_dir)
            tables[samples_table] = candidates_lib.conversion_copy(candidates, copy_dir)
            dataset = os.path.join(converted, "dataset")
            manifest = convert_with_vocabularies(parquet_dir, tables, schema, data_dir, dataset,
                                                 split)
        except (InputError, FileNotFoundError) as err:
            raise cli.UsageError(str(err)) from None
        counts = manifest["splits"][split]
        rejected = {reason: n for reason, n in counts["rejected"].items() if n}
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in rejected.items()) or "none"
        print(f"{split}: {counts['samples_in']:,} samples in, {counts['samples_written']:,} to "
              f"score, {sum(rejected.values()):,} rejected ({reasons}; rules: pipelines/common/join.py)",
              file=sys.stderr)
        feed = candidates_lib.RowMatcher(candidates).items_of  # the raw items, for an export
        batches, vocabularies = scoring.scored_split(dataset, split=split, target_items=feed,
                                                     **scoring_options)
        scored = scoring.concatenate_scores(batches)
    rows = candidates_lib.RowMatcher(candidates).rows(scored["groups"])
    candidates_lib.check_rows(candidates, rows, scored["item_id"], scored["labels"],
                              vocabularies["item"])
    if counts["samples_in"] != len(rows) + sum(rejected.values()):
        raise RuntimeError(f"{parquet_dir}: {counts['samples_in']} samples in, {len(rows)} "
                           f"scored and {sum(rejected.values())} rejected do not add up.")
    writer = scoring.PredictionWriter(output, candidates_lib.output_schema(candidates))
    try:
        for table in candidates_lib.output_tables(candidates, rows, scored["logits"],
                                                  scored["probability"]):
            writer.write(table)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"output": output, "rows": writer.rows,
            "unknown_items": candidates_lib.unknown_items(scored["item_id"]),
            "samples_in": counts["samples_in"], "rejected": counts["rejected"]}
