"""Train a MUSE model (or a baseline) on converted TFRecord shards, evaluate it and export it.

    python -m muse_tf.train --data DIR --model VARIANT --export-dir DIR [--config FILE] [--set k=v]

With no arguments it runs the embedded default: it writes (once, then reuses) a small planted
synthetic dataset (``muse_tf.data.synthetic_dataset``), trains MUSE, evaluates AUC/GAUC and exports a
SavedModel. The job itself is ``muse_tf.jobs.training.run``; this module is its command line and loads
TensorFlow only after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.config import (
    DEFAULT_WORK_DIR,
    SYNTHETIC_CONFIG,
    TAOBAO_MM_CONFIG,
    VARIANTS,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    packaged_config_path,
)
from muse_tf.contract import limits, signatures


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.train`` (``--help`` lists every flag)."""
    parser = cli.parser("muse_tf.train", __doc__)
    parser.add_argument("--data", help="converted dataset directory (output of pipelines.taobao_mm); "
                        "default: the embedded synthetic dataset, generated once under --work-dir")
    parser.add_argument("--model", choices=sorted(VARIANTS), help="model variant (overrides config)")
    parser.add_argument("--config", help="YAML file with `model:` and `train:` sections, or a packaged "
                        "preset's name (synthetic, taobao_mm, taobao_mm_tuned); default: "
                        f"muse_tf/configs/{SYNTHETIC_CONFIG} without --data, the paper's settings "
                        f"(muse_tf/configs/{TAOBAO_MM_CONFIG}) with it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 --set model.top_k=20")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help="where the default dataset and default run directories go")
    parser.add_argument("--synthetic-users", type=int,
                        help="users in the embedded synthetic dataset (default: the generator's)")
    parser.add_argument("--model-dir", help="checkpoints, logs, metrics (default: WORK_DIR/VARIANT); "
                        "reusing it resumes an interrupted run")
    parser.add_argument("--export-dir", help="SavedModel base directory (default: MODEL_DIR/export)")
    parser.add_argument("--model-name", default=signatures.DEFAULT_MODEL_NAME,
                        help="model name in the serving layout")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete MODEL_DIR first and start over (a finished run, or one of "
                        "another config, is refused without it)")
    parser.add_argument("--allow-other-runs", action="store_true",
                        help="export even if EXPORT_DIR/MODEL_NAME holds another run's versions")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--cluster-timeout", type=float, metavar="SECONDS",
                        help="on a parameter-server cluster, how long the chief waits for the other "
                        "tasks of TF_CONFIG to start before it names the missing ones and stops; "
                        "unset: muse_tf.jobs.distribute.DEFAULT_CLUSTER_TIMEOUT (5 minutes)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch "
                        "and TensorFlow's start-up logs")
    limits.add_flags(parser)  # the exported model's request limits
    return parser


def build_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """Config file (default: the embedded synthetic run's, or with ``--data`` the paper's settings)
    + ``--model`` + ``--set`` overrides, validated."""
    if args.config:
        values = load_yaml(args.config)
    else:
        values = load_yaml(packaged_config_path(TAOBAO_MM_CONFIG if args.data else SYNTHETIC_CONFIG))
    if args.model:
        values.setdefault("model", {})["variant"] = args.model
    return from_dict(ExperimentConfig, apply_overrides(values, args.overrides))


def train(args: argparse.Namespace) -> dict:
    """``training.run`` with the command line's config and data; returns its result."""
    experiment = build_experiment(args)
    from muse_tf.jobs import distribute

    if distribute.serves_only():  # a parameter-server cluster's worker or ps: never returns
        print(f"Serving as a {distribute.cluster_spec()['task']['type']} task of a parameter-server "
              "cluster; the chief runs the training", flush=True)
        distribute.serve()
    from muse_tf.data.synthetic_dataset import ensure_default_dataset
    from muse_tf.jobs import training

    # Before other TensorFlow work, as multi-worker needs.
    strategy = distribute.make_strategy(experiment.train.ps_min_shard_bytes, args.cluster_timeout)
    data_dir = args.data or ensure_default_dataset(
        args.work_dir, args.synthetic_users, experiment.train.history_length
    )
    model_dir = args.model_dir or os.path.join(args.work_dir, experiment.model.variant)
    result = training.run(
        experiment, data_dir, model_dir, export_dir=args.export_dir,
        model_name=args.model_name, export_limits=limits.from_flags(args),
        evaluate=not args.no_eval, export=not args.no_export, overwrite=args.overwrite,
        allow_other_runs=args.allow_other_runs, verbose=args.verbose, strategy=strategy,
    )
    if not distribute.is_chief():
        print(f"{distribute.task_name()} done; the chief wrote the run directory")
        return result
    print(f"Run directory: {model_dir} (layout: muse_tf/jobs/runs.py)")
    if "export" in result:
        print(f"SavedModel: {result['export']}")
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m muse_tf.train``; returns ``training.run``'s result."""
    return cli.run(train, arguments(), argv, verbose=lambda args: args.verbose == 2)


if __name__ == "__main__":
    main()
