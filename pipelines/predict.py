"""Score raw Taobao-MM Parquet with a trained run: the pipeline's join rules, the run's vocabularies.

    python -m pipelines.predict --parquet DIR --data CONVERTED (--model-dir RUN | --export DIR)
        --output FILE.parquet|.csv [--split test] [--row-key COLUMN] [--carry COL1,COL2]
        [--work-dir DIR]

The split's samples (the candidates: ``129_1`` user, ``205`` item, ``label_0`` optional) and user
features, item_features and the SCL table of ``--parquet`` are converted as ``pipelines.taobao_mm``
converts them (the same stages and rules: ``pipelines.common.join``), except that the vocabularies
are copied from ``--data``, the dataset the run was trained on. Every sample is then scored
(``muse_tf.jobs.prediction``) or rejected for one of the reasons of ``pipelines.common.join``; the
command prints both counts. The output keeps the samples' row order: ``--row-key`` (a unique
column, written first), ``user_id`` and ``item_id`` (the input's raw IDs, always), ``label`` (when
the input has labels), ``probability``, ``logit``, then the ``--carry`` columns. An item the run
does not know is counted and scored as OOV; an ``--export`` is given every target item's raw ID,
so an export refreshed with new items scores them with their vectors. Only ``DIR``'s tables of the
scored split are needed (e.g. the demo's test tables). The job is ``pipelines.local.raw_scoring``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.jobs import prediction as scoring
from pipelines.local import raw_scoring


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m pipelines.predict``."""
    parser = cli.parser("pipelines.predict", __doc__)
    parser.add_argument("--parquet", required=True, help="directory of raw Taobao-MM Parquet")
    parser.add_argument("--data", required=True,
                        help="the converted dataset the run was trained on (its vocabularies)")
    parser.add_argument("--split", default="test", help="which tables of --parquet to score")
    parser.add_argument("--row-key", help="a column of the samples naming each row once, "
                        "written as the output's first column")
    parser.add_argument("--carry", default="", help="comma-separated columns of the samples "
                        "copied into the output (after the scores)")
    parser.add_argument("--work-dir", help="where the temporary conversion goes (deleted at "
                        "the end); unset: the system's temporary directory")
    scoring.add_scoring_arguments(parser)
    return parser


def command(args: argparse.Namespace) -> dict:
    carry = [column.strip() for column in args.carry.split(",") if column.strip()]
    result = raw_scoring.predict_parquet(args.parquet, args.data, args.output, split=args.split,
                                         work_dir=args.work_dir, row_key=args.row_key, carry=carry,
                                         **scoring.scoring_options(args))
    scoring.report(result, unknown="given to the export by raw ID: OOV unless it was refreshed "
                   "with them" if args.export else "scored as OOV")
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m pipelines.predict``; returns ``raw_scoring.predict_parquet``'s result."""
    return cli.run(command, arguments(), argv)


if __name__ == "__main__":
    main()
