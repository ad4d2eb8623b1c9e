"""Converts Taobao-MM Parquet (the release, its demo heads, or pipelines.synthetic output) into a
dataset directory (layout: ``muse_tf.contract.dataset_dir``; shard format: ``muse_tf.contract.records``).

    python -m pipelines.taobao_mm --input DIR --output DIR [--history-cap 1000]
        [--min-count N] [--min-count item=N ...] [--train-shards N] [--test-shards N] [--workers N]

The local engine (``pipelines.local.driver``): resumable stages (scan, vocab, items, shards, the
manifest) run by worker processes on this machine; re-running the same command after a crash
redoes only the unfinished tasks. The output directory is this conversion's alone while it runs
(``pipelines.common.output_dir``). Train and test are both converted; vocabularies come from train
only. The options are those of ``pipelines.beam_convert`` (``pipelines.common.options``), plus
``--workers``; they are parsed before TensorFlow loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from pipelines.common import command, options


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m pipelines.taobao_mm``."""
    parser = cli.parser("pipelines.taobao_mm", __doc__)
    options.add_arguments(parser)
    parser.add_argument("--workers", type=int, help="processes; unset: all cores")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m pipelines.taobao_mm``; returns the manifest."""
    parser = arguments()

    def convert(args: argparse.Namespace) -> dict:
        from pipelines.local import driver

        return command.run(parser, args, driver.convert, workers=args.workers)

    return cli.run(convert, parser, argv)


if __name__ == "__main__":
    main()
