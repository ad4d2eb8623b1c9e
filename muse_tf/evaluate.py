"""Re-evaluates a finished training run on a converted dataset.

    python -m muse_tf.evaluate --data DIR --model-dir RUN [--output DIR]

Writes ``eval_metrics.json`` (AUC, GAUC, and GAUC by history length and by target-item popularity)
and ``eval_buckets.png`` to ``--output`` (or the run); results already there (the run's own, from
training) are kept: refused unless ``--overwrite``. The job: ``muse_tf.jobs.evaluation``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.jobs import evaluation


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.evaluate``."""
    parser = cli.parser("muse_tf.evaluate", __doc__)
    parser.add_argument("--data", required=True,
                        help="converted dataset directory (output of pipelines.taobao_mm)")
    parser.add_argument("--model-dir", required=True,
                        help="a training run's directory (holds config.yaml and final weights)")
    parser.add_argument("--output", help="where to write eval_metrics.json/png (None: the model dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an eval_metrics.json already in the output directory")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m muse_tf.evaluate``: re-evaluates a finished run; returns ``evaluate_run``'s dict."""
    return cli.run(evaluation.evaluate, arguments(), argv)


if __name__ == "__main__":
    main()
