"""Converts Taobao-MM Parquet (the release, its demo heads, or pipelines.synthetic output) into a
dataset directory (layout: ``muse_tf.contract.dataset_dir``; shard format: ``muse_tf.data.reader``).

    python -m pipelines.taobao_mm --input DIR --output DIR [--history-cap 1000]
        [--min-count N] [--min-count item=N ...] [--train-shards N] [--test-shards N] [--workers N]

Stages, each streaming and each resumable (a finished task leaves its output under
``<output>/_work`` and is skipped when the command is run again with the same inputs and options):

1. scan: every input file, in slices of row groups, in parallel: count the train IDs
   (``vocab.CountSpill``) and route samples and user features to user buckets
   (``buckets.BucketSpill``).
2. vocab: reduce each (vocabulary, partition) in parallel, then write ``vocab/<name>.npy``.
3. items: one pass over item_features and one over the SCL table fill the item-aligned tables.
4. shards: join each bucket (``join.ShardJoin``, which holds the data rules) and write
   ``<split>/part-<k>-of-<n>.tfrecord.gz``, in parallel.
5. ``manifest.json``: per shard and split, ``samples_in == samples_written + sum(rejected)``, the
   adjustments, OOV counts and bytes per sample; vocabulary sizes and statistics.

The output directory is this conversion's alone while it runs (``pipelines.output_dir``: a lock,
and other runs' leftovers refused). Train and test are both converted; vocabularies come from train
only. A conversion that writes no training sample fails (nothing could be trained on it), and a
full disk stops it with the path it was writing (re-running resumes once there is space).

The command parses its arguments and checks ``--input`` before TensorFlow loads: the stages (which
import it through ``muse_tf.contract.vocabulary`` and ``muse_tf.contract.dataset_dir``) are imported
by the functions that run them, so ``convert`` stays importable from here at no cost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import errno
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from muse_tf import cli
from muse_tf.contract import features
from pipelines import parquet_input as pi
from pipelines import taobao_mm_schema as release

if TYPE_CHECKING:
    from pipelines.stages import Options

SHARD_INPUT_BYTES = 256 << 20  # of compressed samples + user features per output shard
PARTITION_INPUT_BYTES = 256 << 20  # of compressed train input per count partition


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


def _input_bytes(
    tables: dict[str, list[str]], names: Sequence[str], size: Callable[[str], int]
) -> int:
    return sum(size(path) for name in names for path in tables[name])


def resolve_options(
    tables: dict[str, list[str]],
    history_cap: int,
    min_count: dict[str, int],
    shards: dict[str, int | None],
    size: Callable[[str], int] = os.path.getsize,
) -> Options:
    """Fills the defaults that depend on the input size (shards per split, count partitions);
    ``size`` gives a file's bytes."""
    if history_cap <= 0:
        raise ValueError(f"`history_cap` must be positive, got {history_cap}.")
    unknown = set(min_count) - set(features.VOCABULARIES)
    if unknown:
        raise ValueError(
            f"Unknown vocabularies {sorted(unknown)} in min-count; known: "
            f"{list(features.VOCABULARIES)}."
        )
    from pipelines import stages, vocab

    resolved_shards = {}
    for split in release.SPLITS:
        split_bytes = _input_bytes(tables, (release.SAMPLES_TABLE[split], release.USER_TABLE[split]), size)
        count = shards.get(split) or max(2, math.ceil(split_bytes / SHARD_INPUT_BYTES))
        if count <= 0:
            raise ValueError(f"Shards for {split!r} must be positive, got {count}.")
        resolved_shards[split] = count
    train_bytes = _input_bytes(tables, tuple(vocab.COUNTED_COLUMNS) + (release.SCL_EMBEDDINGS,), size)
    return stages.Options(
        history_cap=history_cap,
        min_count={name: min_count.get(name, 1) for name in features.VOCABULARIES},
        shards=resolved_shards,
        partitions=max(1, math.ceil(train_bytes / PARTITION_INPUT_BYTES)),
    )


def _prepare_work(output: str, work: str) -> None:
    """The work and output directories the stages write into."""
    from muse_tf.contract import dataset_dir

    for name in ("scan", "vocab_parts", "shards"):
        os.makedirs(os.path.join(work, name), exist_ok=True)
    for name in (*release.SPLITS, dataset_dir.VOCAB_DIR):
        os.makedirs(os.path.join(output, name), exist_ok=True)


def _build_vocabularies(
    executor: concurrent.futures.Executor | None, output: str, work: str, options: Options
) -> dict[str, dict]:
    from muse_tf.contract import dataset_dir
    from pipelines import stages, vocab

    tasks = [
        (work, name, p, options.min_count[name])
        for name in features.VOCABULARIES
        for p in range(options.partitions)
    ]
    results = _run(executor, "vocab", stages.reduce_vocab, tasks)
    summary = {}
    for name in features.VOCABULARIES:
        parts = [r for task, r in zip(tasks, results) if task[1] == name]
        stats = vocab.VocabStats()
        for part in parts:
            stats.add(vocab.VocabStats(**{k: v for k, v in part.items() if k != "path"}))
        size = vocab.assemble([p["path"] for p in parts], dataset_dir.vocab_path(output, name))
        summary[name] = {
            "size": size,
            "min_count": options.min_count[name],
            **dataclasses.asdict(stats),
        }
    return summary


def convert(
    input_dir: str,
    output: str,
    *,
    history_cap: int = 1000,
    min_count: dict[str, int] | None = None,
    shards: dict[str, int | None] | None = None,
    workers: int | None = None,
    keep_work: bool = False,
    overwrite: bool = False,
) -> dict:
    """Converts ``input_dir`` into ``output``; returns the manifest (also written to disk)."""
    tables = pi.discover_tables(input_dir)  # a wrong --input is named before TensorFlow loads
    from pipelines import output_dir, stages

    tasks = stages.scan_tasks(tables)
    options = resolve_options(tables, history_cap, min_count or {}, shards or {})
    inputs = {
        t: [[os.path.relpath(p, input_dir), os.path.getsize(p)] for p in paths]
        for t, paths in tables.items()
    }
    params = {**dataclasses.asdict(options), "inputs": inputs}
    with output_dir.claimed(
        output, output_dir.LOCAL_WORK, params, overwrite=overwrite, resumable=True
    ) as work:
        _prepare_work(output, work)
        manifest = _convert_claimed(input_dir, output, work, tables, tasks, options, workers)
        if not keep_work:
            shutil.rmtree(work)
    print_summary(manifest)
    return manifest


def _convert_claimed(
    input_dir: str,
    output: str,
    work: str,
    tables: dict[str, list[str]],
    tasks: list,
    options: Options,
    workers: int | None,
) -> dict:
    """The stages and the manifest, once ``output`` is this conversion's."""
    from muse_tf.contract import dataset_dir
    from pipelines import manifest as manifest_lib
    from pipelines import stages

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
        item_summary = stages.build_item_tables(output, work, tables)
        _progress("items", 1, 1, "item attribute and multimodal tables")
        shard_tasks = [
            (output, work, split, k, options)
            for split in release.SPLITS
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
        for split in release.SPLITS
    }
    manifest = manifest_lib.build(
        source=os.path.abspath(input_dir),
        history_cap=options.history_cap,
        vocabularies=vocab_summary,
        item_tables=item_summary,
        input_rows=input_rows,
        shards_by_split=shards_by_split,
    )
    check_training_samples(input_dir, manifest, work)
    stages.write_json(os.path.join(output, dataset_dir.MANIFEST), manifest)
    return manifest


def print_summary(manifest: dict) -> None:
    """One line per split on stderr: samples written, rejected by reason, bytes per sample."""
    for split, summary in manifest["splits"].items():
        print(
            f"{split}: {summary['samples_written']} of {summary['samples_in']} samples written "
            f"({summary['rejected']} rejected), {summary['bytes_per_sample']} bytes/sample",
            file=sys.stderr,
        )


class EmptyTrainingSplit(pi.InputError):
    """No training sample survived the conversion; ``manifest`` says where each one went."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def check_training_samples(input_dir: str, manifest: dict, work: str) -> None:
    """Fails a conversion that leaves nothing to train on, before its manifest is written (no
    manifest: not a usable dataset); both engines call it."""
    train = manifest["splits"]["train"]
    if train["samples_written"]:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in train["rejected"].items() if n)
    raise EmptyTrainingSplit(
        f"{input_dir}: no training sample was written ({train['samples_in']} in"
        f"{'; rejected: ' + reasons if reasons else ''}); check that train_samples and "
        f"train_user_features share user IDs (129_1). Work files kept in {work}.",
        manifest,
    )


def parse_min_count(values: list[str]) -> dict[str, int]:
    """``--min-count`` values (``N`` or ``name=N``) -> {vocabulary: N}."""
    counts: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"--min-count {value!r}: expected N or name=N.")
        for vocab_name in [name] if sep else features.VOCABULARIES:
            counts[vocab_name] = int(number)
    return counts


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by this command and ``pipelines.beam_convert``: those that decide the
    output, and ``--verbose``."""
    parser.add_argument("--input", required=True,
                        help="directory holding the Taobao-MM Parquet tables")
    parser.add_argument("--output", required=True, help="dataset directory to write")
    parser.add_argument("--history-cap", type=int, default=1000,
                        help="history behaviours kept per user (the most recent)")
    parser.add_argument("--min-count", action="append", metavar="[NAME=]N",
                        help="keep IDs seen at least N times in train (all vocabularies, or NAME "
                        "only; repeatable; unset: 1). Items with an SCL vector are always kept.")
    parser.add_argument("--train-shards", type=int, help="output shards; unset: by input size")
    parser.add_argument("--test-shards", type=int, help="output shards; unset: by input size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing conversion")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's (and Beam's) start-up logs")


def run_command(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    convert_fn: Callable[..., dict],
    **extra: object,
) -> dict:
    """Calls ``convert_fn`` with the options of ``add_conversion_arguments`` (and ``extra``) and
    returns its manifest. An input error is a ``cli.UsageError`` (one line, exit status 2); an OSError
    (a full disk, a read-only output) exits with status 1, naming the file."""
    try:
        return convert_fn(
            args.input,
            args.output,
            history_cap=args.history_cap,
            min_count=parse_min_count(args.min_count or []),
            shards={"train": args.train_shards, "test": args.test_shards},
            keep_work=args.keep_work,
            overwrite=args.overwrite,
            **extra,
        )
    except (pi.InputError, FileExistsError, ValueError, argparse.ArgumentTypeError) as err:
        raise cli.UsageError(str(err)) from None
    except OSError as err:
        path = err.filename or args.output
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            problem = f"out of disk space writing {path} ({err.strerror}); free some space"
        else:
            problem = f"{path}: {err.strerror or err}; fix that"
        parser.exit(
            1,
            f"{parser.prog}: error: {cli.one_line(problem)} and run the same command again "
            "to resume.\n",
        )


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m pipelines.taobao_mm``."""
    parser = cli.parser("pipelines.taobao_mm", __doc__)
    add_conversion_arguments(parser)
    parser.add_argument("--workers", type=int, help="processes; unset: all cores")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m pipelines.taobao_mm``; returns the manifest."""
    parser = arguments()
    return cli.run(
        lambda args: run_command(parser, args, convert, workers=args.workers), parser, argv
    )


if __name__ == "__main__":
    main()
