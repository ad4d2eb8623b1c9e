"""The local engine's driver: a Taobao-MM conversion as resumable tasks run by worker processes
on one machine (the command line is ``python -m pipelines.taobao_mm``).

Stages, each streaming and each resumable (a finished task leaves its output under
``<output>/_work`` and is skipped when the conversion is run again with the same inputs and
options):

1. scan: every input file, in slices of row groups, in parallel: count the train IDs
   (``vocab.CountSpill``) and route samples and user features to user buckets
   (``buckets.BucketSpill``).
2. vocab: reduce each (vocabulary, partition) in parallel, then write ``vocab/<name>.npy``.
3. items: one pass over item_features and one over the SCL table fill the item-aligned tables.
4. shards: join each bucket (``join.ShardJoin``, which holds the data rules) and write
   ``<split>/part-<k>-of-<n>.tfrecord.gz``, in parallel.
5. ``manifest.json``: per shard and split, ``samples_in == samples_written + sum(rejected)``, the
   adjustments, OOV counts and bytes per sample; vocabulary sizes and statistics.

The output directory is this conversion's alone while it runs (``pipelines.common.output_dir``: a
lock, and other runs' leftovers refused). Training samples and user features that share no user
ID are refused before the output is touched (``pipelines.common.join_check``); a conversion that
writes no training sample fails (``pipelines.common.summary``), and a full disk stops it with the
path it was writing (running it again resumes once there is space).

``convert`` checks the input before TensorFlow loads: the stages (which import it through
``muse_tf.contract.vocabulary`` and ``muse_tf.contract.dataset_dir``) are imported by the
functions that run them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Sequence

from pipelines.common import join_check, summary
from pipelines.common import parquet_input as pi
from pipelines.common.options import ConversionOptions
from pipelines.common.raw_schema import SPLITS


def _progress(stage: str, done: int, total: int, message: str) -> None:
    print(f"[{stage} {done}/{total}] {message}", file=sys.stderr, flush=True)


def _run(
    executor: concurrent.futures.Executor | None,
    stage: str,
    fn: Callable[..., tuple[dict, str]],
    tasks: Sequence[tuple],
) -> list[dict]:
    """Runs ``fn(*task)`` for every task, in parallel when an executor is given; results in task
    order. Each task returns (result, progress message)."""
    results: list[dict] = [{}] * len(tasks)
    if executor is None:
        for i, task in enumerate(tasks):
            results[i], message = fn(*task)
            _progress(stage, i + 1, len(tasks), message)
        return results
    futures = {executor.submit(fn, *task): i for i, task in enumerate(tasks)}
    for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        results[futures[future]], message = future.result()
        _progress(stage, done, len(tasks), message)
    return results


def _prepare_work(output: str, work: str) -> None:
    """The work and output directories the stages write into."""
    from muse_tf.contract import dataset_dir

    for name in ("scan", "vocab_parts", "shards"):
        os.makedirs(os.path.join(work, name), exist_ok=True)
    for name in (*SPLITS, dataset_dir.VOCAB_DIR):
        os.makedirs(os.path.join(output, name), exist_ok=True)


def _build_vocabularies(
    executor: concurrent.futures.Executor | None,
    output: str,
    work: str,
    options: ConversionOptions,
) -> dict[str, dict]:
    from muse_tf.contract import dataset_dir
    from pipelines.common import vocab
    from pipelines.local import stages

    tasks = [
        (work, name, p, options.min_count[name])
        for name in options.feature_spec.vocabularies
        for p in range(options.partitions)
    ]
    results = _run(executor, "vocab", stages.reduce_vocab, tasks)
    vocabularies = {}
    for name in options.feature_spec.vocabularies:
        parts = [r for task, r in zip(tasks, results) if task[1] == name]
        stats = vocab.VocabStats()
        for part in parts:
            stats.add(vocab.VocabStats(**{k: v for k, v in part.items() if k != "path"}))
        size = vocab.assemble([p["path"] for p in parts], dataset_dir.vocab_path(output, name))
        vocabularies[name] = {
            "size": size,
            "min_count": options.min_count[name],
            **dataclasses.asdict(stats),
        }
    return vocabularies


def convert(options: ConversionOptions, *, workers: int | None = None) -> dict:
    """Converts ``options.input_dir`` into ``options.output`` with ``workers`` processes (unset:
    all cores); returns the manifest (also written to disk)."""
    input_dir, output = options.input_dir, options.output
    # A wrong --input (and tables that do not join) are named before TensorFlow loads.
    tables = pi.discover_tables(input_dir, options.schema)
    join_check.check_split_joins(input_dir, "train", tables, options.schema)
    from pipelines.common import output_dir
    from pipelines.local import stages

    tasks = stages.scan_tasks(tables, options.schema)
    options = options.resolved(tables)
    inputs = {
        t: [[os.path.relpath(p, input_dir), os.path.getsize(p)] for p in paths]
        for t, paths in tables.items()
    }
    params = {**options.work_params(), "inputs": inputs}
    with output_dir.claimed(
        output, output_dir.LOCAL_WORK, params, overwrite=options.overwrite, resumable=True
    ) as work:
        _prepare_work(output, work)
        manifest = _convert_claimed(input_dir, output, work, tables, tasks, options, workers)
        if not options.keep_work:
            shutil.rmtree(work)
    summary.print_summary(manifest)
    return manifest


def _convert_claimed(
    input_dir: str,
    output: str,
    work: str,
    tables: dict[str, list[str]],
    tasks: list,
    options: ConversionOptions,
    workers: int | None,
) -> dict:
    """The stages and the manifest, once ``output`` is this conversion's."""
    from muse_tf.contract import dataset_dir
    from pipelines.common import manifest as manifest_lib
    from pipelines.local import stages

    workers = workers or os.cpu_count() or 1
    executor = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        scanned = _run(
            executor, "scan", stages.scan_file, [(work, task, options) for task in tasks]
        )
        vocab_summary = _build_vocabularies(executor, output, work, options)
        item_summary = stages.build_item_tables(output, work, tables, options.schema)
        _progress("items", 1, 1, "item attribute and multimodal tables")
        shard_tasks = [
            (output, work, split, k, options)
            for split in SPLITS
            for k in range(options.shards[split])
        ]
        shard_results = _run(executor, "shards", stages.convert_shard, shard_tasks)
    finally:
        if executor is not None:
            executor.shutdown()
    input_rows = dict.fromkeys(tables, 0)
    for result in scanned:
        input_rows[result["table"]] += result["rows"]
    shards_by_split = {
        split: [r for t, r in zip(shard_tasks, shard_results) if t[2] == split]
        for split in SPLITS
    }
    manifest = manifest_lib.build(
        source=os.path.abspath(input_dir),
        schema=options.schema,
        history_cap=options.history_cap,
        vocabularies=vocab_summary,
        item_tables=item_summary,
        input_rows=input_rows,
        shards_by_split=shards_by_split,
    )
    summary.check_training_samples(input_dir, manifest, work)
    stages.write_json(os.path.join(output, dataset_dir.MANIFEST), manifest)
    return manifest
