"""Train a MUSE model (or a baseline) on converted TFRecord shards, evaluate it and export it.

    python -m muse_tf.train --data DIR --model VARIANT --export-dir DIR [--config FILE] [--set k=v]

With no arguments it runs the embedded default: it generates (once, then reuses) a small planted
synthetic dataset, converts it, trains MUSE, evaluates AUC/GAUC and exports a SavedModel.

MirroredStrategy runs on every local GPU (else the CPU); with ``TF_CONFIG`` set the run is one worker
of a MultiWorkerMirroredStrategy cluster. A run killed at any point resumes from its last backup
when started again with the same ``--model-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from importlib import resources

import numpy as np
import tensorflow as tf
import tf_keras
import yaml

from muse_tf import artifacts, data, distribute, evaluate, features, seeding, strict_json
from muse_tf.config import VARIANTS, ExperimentConfig, apply_overrides, from_dict, load_yaml
from muse_tf.models import MuseModel

DEFAULT_CONFIG = "synthetic.yaml"
DEFAULT_WORK_DIR = "runs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``python -m muse_tf.train`` (``--help`` lists every flag)."""
    parser = argparse.ArgumentParser(
        prog="python -m muse_tf.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", help="converted dataset directory (output of pipelines.taobao_mm); "
                        "default: the embedded synthetic dataset, generated once under --work-dir")
    parser.add_argument("--model", choices=sorted(VARIANTS), help="model variant (overrides config)")
    parser.add_argument("--config", help="YAML file with `model:` and `train:` sections; default: "
                        f"muse_tf/configs/{DEFAULT_CONFIG} without --data, the paper's settings with it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 --set model.top_k=20")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help="where the default dataset and default run directories go")
    parser.add_argument("--synthetic-users", type=int,
                        help="users in the embedded synthetic dataset (default: the generator's)")
    parser.add_argument("--model-dir", help="checkpoints, logs, metrics (default: WORK_DIR/VARIANT); "
                        "reusing it resumes an interrupted run")
    parser.add_argument("--export-dir", help="SavedModel base directory (default: MODEL_DIR/export)")
    parser.add_argument("--model-name", default="muse", help="model name in the serving layout")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch")
    from muse_tf.export import add_limit_flags  # export imports this module

    add_limit_flags(parser)  # the exported model's request limits
    return parser.parse_args(argv)


def packaged_config_path(name: str = DEFAULT_CONFIG) -> str:
    """Path of a YAML config shipped in ``muse_tf/configs``."""
    return str(resources.files("muse_tf.configs").joinpath(name))


def build_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """Config file (or default) + ``--model`` + ``--set`` overrides, validated."""
    if args.config:
        values = load_yaml(args.config)
    elif args.data is None:
        values = load_yaml(packaged_config_path())
    else:
        values = {}
    if args.model:
        values.setdefault("model", {})["variant"] = args.model
    return from_dict(ExperimentConfig, apply_overrides(values, args.overrides))


def ensure_default_dataset(work_dir: str, users: int | None = None, history_length: int = 1000) -> str:
    """Generates and converts the embedded synthetic dataset once; later calls reuse it."""
    from pipelines import synthetic, taobao_mm

    sizes = synthetic.SyntheticConfig(behaviours_per_user=history_length)
    if users is not None:
        sizes = dataclasses.replace(sizes, users=users)
    name = f"synthetic-u{sizes.users}-l{sizes.behaviours_per_user}-s{sizes.seed}"
    converted = os.path.join(work_dir, "data", name)
    if os.path.exists(os.path.join(converted, artifacts.MANIFEST)):
        print(f"Using the cached synthetic dataset in {converted}")
        return converted
    parquet = os.path.join(work_dir, "data", f"{name}-parquet")
    print(f"Generating the synthetic dataset ({sizes.users} users, histories of "
          f"{sizes.behaviours_per_user}) in {parquet} ...")
    synthetic.generate(sizes, parquet)
    print(f"Converting it to TFRecord shards in {converted} ...")
    taobao_mm.convert(parquet, converted, history_cap=sizes.behaviours_per_user, overwrite=True)
    return converted


def dummy_inputs(rows: int = 1, length: int = 1) -> dict[str, tf.Tensor]:
    """An all-PAD batch, to create a model's variables."""
    inputs = {name: tf.zeros([rows], tf.int64) for name in features.SCALAR_FEATURES}
    inputs.update({name: tf.zeros([rows, length], tf.int64) for name in features.SEQUENCE_FEATURES})
    return inputs


def build_model(experiment: ExperimentConfig, table: np.ndarray | None = None) -> MuseModel:
    """A MuseModel with its variables created and, when given, the multimodal table loaded."""
    model = MuseModel(experiment.model)
    model(dummy_inputs())
    if table is not None:
        model.set_multimodal_table(np.asarray(table))
    return model


def compile_model(model: MuseModel, experiment: ExperimentConfig) -> None:
    """Adam for the embedding tables and Adam for every other weight, at the config's rates."""
    train = experiment.train
    model.compile(
        optimizer=tf_keras.optimizers.Adam(train.dense_learning_rate),
        embedding_optimizer=tf_keras.optimizers.Adam(train.embedding_learning_rate),
    )


class ProgressRecord(tf_keras.callbacks.Callback):
    """Counts the steps this process ran and where it started (after any restore)."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Runs after BackupAndRestore has restored, so the optimizer step is the resume point."""
        self.resumed_from_step = int(self.model.optimizer.iterations.numpy())
        self.steps_run = 0
        self.started = time.time()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps_run += 1


def make_callbacks(model_dir: str, experiment: ExperimentConfig) -> list[tf_keras.callbacks.Callback]:
    """BackupAndRestore (resume mid-epoch), a progress record, per-epoch weight checkpoints,
    TensorBoard and ``history.csv``, all under ``model_dir``. BackupAndRestore comes first, so
    ProgressRecord sees the restored step."""
    train = experiment.train
    return [
        tf_keras.callbacks.BackupAndRestore(
            os.path.join(model_dir, "backup"), save_freq=train.backup_every_steps
        ),
        ProgressRecord(),
        tf_keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, "checkpoints", "epoch-{epoch:02d}"), save_weights_only=True
        ),
        tf_keras.callbacks.TensorBoard(
            os.path.join(model_dir, "logs"), update_freq=train.log_every_steps
        ),
        tf_keras.callbacks.CSVLogger(
            os.path.join(distribute.worker_dir(model_dir), "history.csv"), append=True
        ),
    ]


def train_dataset(
    strategy: tf.distribute.Strategy, data_dir: str, experiment: ExperimentConfig
) -> tf.distribute.DistributedDataset:
    """The training split, repeated, as per-replica batches of ``batch_size / replicas``.

    Each input pipeline (one per worker) reads its own subset of the shard files; a partial
    last batch is dropped, so every replica always gets the same batch shape.
    """
    train = experiment.train
    files = data.split_files(data_dir, "train")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return data.make_dataset(
            files,
            context.get_per_replica_batch_size(train.batch_size),
            history_length=train.history_length,
            shuffle=train.shuffle,
            seed=train.seed,
            deterministic=train.deterministic,
            repeat=True,
            input_context=context,
            drop_remainder=True,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def steps_per_epoch(data_dir: str, experiment: ExperimentConfig) -> int:
    """``train.steps_per_epoch``, or one pass: training samples in the manifest // batch size.

    Raises:
        ValueError: when the training split holds no sample (fitting would wait forever).
    """
    samples = artifacts.split_samples(artifacts.load_manifest(data_dir), "train")
    if samples == 0:
        raise ValueError(f"{data_dir}: the training split holds no sample; nothing to train on.")
    if experiment.train.steps_per_epoch:
        return experiment.train.steps_per_epoch
    return max(1, samples // experiment.train.batch_size)


def load_trained_model(model_dir: str) -> tuple[MuseModel, ExperimentConfig]:
    """Rebuilds a finished run's model from its ``config.yaml`` and final weights."""
    experiment = from_dict(ExperimentConfig, load_yaml(os.path.join(model_dir, "config.yaml")))
    model = build_model(experiment)
    model.load_weights(os.path.join(model_dir, "final", "weights")).expect_partial()
    return model, experiment


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m muse_tf.train``: train, then (chief only) evaluate and export.

    Returns:
        What ``metrics.json`` holds: steps taken and expected, the resume point, training time,
        replicas, and unless disabled ``eval`` (``evaluate.evaluate_run``) and ``export`` (path).
    """
    args = parse_args(argv)
    experiment = build_experiment(args)
    strategy = distribute.make_strategy()  # before other TensorFlow work, as multi-worker needs
    data_dir = args.data or ensure_default_dataset(
        args.work_dir, args.synthetic_users, experiment.train.history_length
    )
    data.ensure_filesystems([data_dir])
    model_dir = args.model_dir or os.path.join(args.work_dir, experiment.model.variant)
    chief = distribute.is_chief()
    seeding.set_seed(experiment.train.seed)

    experiment.model.vocab_sizes = artifacts.vocab_sizes(data_dir)
    os.makedirs(distribute.worker_dir(model_dir), exist_ok=True)
    if chief:
        with open(os.path.join(model_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(experiment.to_dict(), f, sort_keys=False)

    print(f"Training {experiment.model.variant} on {data_dir} with {type(strategy).__name__} "
          f"({strategy.num_replicas_in_sync} replica(s)); run directory {model_dir}")
    with strategy.scope():
        model = build_model(experiment, artifacts.load_multimodal_table(data_dir))
        compile_model(model, experiment)
    callbacks = make_callbacks(model_dir, experiment)
    steps = steps_per_epoch(data_dir, experiment)
    try:
        model.fit(
            train_dataset(strategy, data_dir, experiment),
            epochs=experiment.train.epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=args.verbose,
        )
    except tf.errors.DataLossError:
        data.verify_shards(data.split_files(data_dir, "train"))  # raises naming the damaged shard
        raise
    progress = next(c for c in callbacks if isinstance(c, ProgressRecord))
    result = {
        "variant": experiment.model.variant,
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "expected_iterations": steps * experiment.train.epochs,
        "resumed_from_step": progress.resumed_from_step,
        "steps_run": progress.steps_run,
        "train_seconds": round(time.time() - progress.started, 1),
        "replicas": strategy.num_replicas_in_sync,
    }
    # Every worker takes part in saving (reading synchronised variables is a collective op);
    # only the chief's copy is kept. Evaluation and export then use a fresh, undistributed model.
    model.save_weights(os.path.join(distribute.worker_dir(model_dir), "final", "weights"))
    if not chief:
        return result
    model, _ = load_trained_model(model_dir)
    if not args.no_eval:
        result["eval"] = evaluate.evaluate_run(model, data_dir, experiment.train, model_dir)
        print(f"Test AUC {result['eval']['auc']:.4f}  GAUC {result['eval']['gauc']:.4f} "
              f"over {result['eval']['examples']} samples")
    if not args.no_export:
        from muse_tf.export import export_saved_model, limits_from_flags

        export_base = args.export_dir or os.path.join(model_dir, "export")
        result["export"] = export_saved_model(
            model, artifacts.load_vocabularies(data_dir), export_base, args.model_name,
            **limits_from_flags(args),
        )
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        strict_json.dump(result, f, indent=2)
    print(f"Run directory: {model_dir} (config.yaml, history.csv, logs/, checkpoints/, final/, "
          f"metrics.json, eval_metrics.json, eval_buckets.png)")
    if "export" in result:
        print(f"SavedModel: {result['export']}")
    return result


if __name__ == "__main__":
    main()
