"""Score a converted dataset split into a Parquet or CSV file, with a trained run or an export.

    python -m muse_tf.predict --data DIR (--model-dir RUN | --export DIR) --output FILE.parquet|.csv
        [--split test] [--batch-size N] [--history-length L]

One row per sample, in the split's order: ``user_id`` (raw), ``item_id`` (raw; null when the target
item is out of the run's vocabulary, as the records keep only its OOV index), ``label``,
``probability`` and ``logit``. The split is streamed batch by batch (each batch one Parquet row
group), so memory does not grow with the split. A run scores with its Keras model (as
``muse_tf.evaluate`` does, so AUC/GAUC over the written file equal the evaluation's), and only
with the dataset it was trained on and the config it was trained with (``muse_tf.jobs.runs``); an export
scores through its ``serving_default`` signature, fed the raw IDs the records' indices stand for.
Raw Taobao-MM Parquet is scored by ``pipelines.predict``, which converts it first.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.jobs import prediction


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.predict``."""
    parser = cli.parser("muse_tf.predict", __doc__)
    parser.add_argument("--data", required=True,
                        help="converted dataset directory the run was trained on")
    parser.add_argument("--split", default="test", help="the split of --data to score")
    prediction.add_scoring_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m muse_tf.predict``; returns ``prediction.predict``'s result."""
    return cli.run(prediction.run, arguments(), argv)


if __name__ == "__main__":
    main()
