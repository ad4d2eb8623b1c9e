"""Converts Taobao-MM Parquet on Apache Beam: the output of ``pipelines.taobao_mm`` (same
vocabularies, multimodal table, user records and manifest counts), on any Beam runner.

    python -m pipelines.beam_convert --input DIR --output DIR [--history-cap 1000]
        [--min-count N] [--min-count item=N ...] [--train-shards N] [--test-shards N]
        [Beam pipeline options: --runner, --direct_num_workers, --temp_location, --project, ...]

Options this command does not know are Beam pipeline options (DirectRunner by default); one that
Beam does not know either is refused. The output directory is claimed as
``pipelines.common.output_dir`` says. Input and output may be any Beam file system (local,
``gs://``, ...). This module is the command line: it parses the arguments before Beam and
TensorFlow load; the engine is ``pipelines.beam`` (run by ``pipelines.beam.launcher``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from pipelines.common import command, options


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m pipelines.beam_convert`` (without Beam's own options)."""
    parser = cli.parser("pipelines.beam_convert", __doc__)
    options.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m pipelines.beam_convert``; unknown options go to Beam. Returns the manifest."""
    parser = arguments()

    def convert(args: argparse.Namespace) -> dict:
        from pipelines.beam import launcher  # Beam and TensorFlow load here, after parsing

        return command.run(parser, args, launcher.convert, pipeline_args=args.unknown_options)

    return cli.run(convert, parser, argv, forward_unknown=True)


if __name__ == "__main__":
    main()
