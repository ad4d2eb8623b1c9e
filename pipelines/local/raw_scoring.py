"""Scores raw Taobao-MM Parquet with a trained run (``python -m pipelines.predict``): the local
engine converts the split with the run's vocabularies, then ``muse_tf.predict`` scores it.

The split's samples and user features, item_features and the SCL table are converted as
``pipelines.local.driver`` converts them (the same stages and rules: ``pipelines.common.join``),
except that the vocabularies are copied from the dataset the run was trained on: new vocabularies
would give the IDs other indices, and so other embedding rows. Every sample is then scored or
rejected for one of the reasons of ``pipelines.common.join``; both counts are printed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from muse_tf import cli
from muse_tf.jobs import prediction as scoring
from pipelines.common.raw_schema import SPLITS


def convert_with_vocabularies(input_dir: str, data_dir: str, output: str, split: str) -> dict:
    """Converts ``split`` of the raw tables in ``input_dir`` into the dataset directory ``output``
    with the vocabularies of the converted dataset ``data_dir`` (and its history cap and shard
    count, so the same raw data gives the same records); returns the manifest.

    Raises:
        pi.InputError: naming a missing or malformed table.
        RuntimeError: when the split's counts do not balance (a record was lost).
    """
    from muse_tf.contract import dataset_dir  # TensorFlow loads here, after parsing
    from pipelines.common import manifest as manifest_lib
    from pipelines.common import parquet_input as pi
    from pipelines.common.options import ConversionOptions
    from pipelines.local import stages

    source = dataset_dir.load_manifest(data_dir)
    shards = len(source["splits"].get(split, {}).get("shards", ())) or 1
    options = ConversionOptions(
        input_dir, output, history_cap=source["history_cap"], shards={split: shards}, partitions=1,
        feature_spec=dataset_dir.load_feature_spec(data_dir),
    )
    schema = options.schema
    names = (schema.samples_table[split], schema.user_table[split], schema.item_features,
             schema.scl_embeddings)
    tables = pi.discover_tables(input_dir, schema, names=tuple(dict.fromkeys(names)))
    work = os.path.join(output, "_work")
    for path in (os.path.join(work, "scan"), os.path.join(work, "shards"),
                 os.path.join(output, split), os.path.join(output, dataset_dir.VOCAB_DIR)):
        os.makedirs(path, exist_ok=True)
    for name in options.feature_spec.vocabularies:
        shutil.copyfile(dataset_dir.vocab_path(data_dir, name), dataset_dir.vocab_path(output, name))

    scanned = [stages.scan_file(work, task, options)[0]
               for task in stages.scan_tasks(tables, schema)]
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
    **scoring_options,
) -> dict:
    """Converts ``split`` of ``parquet_dir`` with ``data_dir``'s vocabularies (in a temporary
    directory under ``work_dir``) and scores it into ``output`` (``muse_tf.predict.predict``,
    which takes ``scoring_options``: ``model_dir`` or ``export``, ``batch_size``, ...).

    Returns:
        ``muse_tf.predict.predict``'s result plus ``samples_in`` and ``rejected`` (by reason);
        ``samples_in == rows + sum(rejected)``.
    """
    if split not in SPLITS:
        raise cli.UsageError(f"--split {split!r}: the release's splits are {list(SPLITS)}.")
    scoring.output_format(output)
    if scoring_options.get("model_dir"):  # before converting: the conversion is not --data
        scoring.check_run(scoring_options["model_dir"], data_dir)
    from pipelines.common.parquet_input import InputError

    with tempfile.TemporaryDirectory(prefix="muse-predict-", dir=work_dir) as converted:
        try:
            manifest = convert_with_vocabularies(parquet_dir, data_dir, converted, split)
        except (InputError, FileNotFoundError) as err:
            raise cli.UsageError(str(err)) from None
        counts = manifest["splits"][split]
        rejected = {reason: n for reason, n in counts["rejected"].items() if n}
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in rejected.items()) or "none"
        print(f"{split}: {counts['samples_in']:,} samples in, {counts['samples_written']:,} to "
              f"score, {sum(rejected.values()):,} rejected ({reasons}; rules: pipelines/common/join.py)",
              file=sys.stderr)
        result = scoring.predict(converted, output, split=split, **scoring_options)
    if counts["samples_in"] != result["rows"] + sum(rejected.values()):
        raise RuntimeError(f"{parquet_dir}: {counts['samples_in']} samples in, {result['rows']} "
                           f"scored and {sum(rejected.values())} rejected do not add up.")
    return {**result, "samples_in": counts["samples_in"], "rejected": counts["rejected"]}
