"""The training job behind ``python -m muse_tf.train``: trains a MUSE model (or a baseline) on a
converted dataset, evaluates it and exports it. ``run(experiment, data_dir, model_dir)``.

MirroredStrategy runs on several local GPUs (the default strategy on one GPU or the CPU); with
``TF_CONFIG`` set the run is one worker of a MultiWorkerMirroredStrategy cluster, or the chief of a
parameter-server cluster (the tables sharded over the parameter servers,
``distribute.make_strategy``). A run killed at any point
resumes from its last backup (or, once trained, goes straight to evaluation and export) when
started again with the same ``--model-dir``, config and dataset; a finished run or another
config's directory is refused unless ``overwrite`` is given, and so is a directory another process
works in (``muse_tf.contract.lock``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import tensorflow as tf
import tf_keras

from muse_tf import cli
from muse_tf.config import ExperimentConfig, ModelConfig, TrainConfig
from muse_tf.contract import dataset_dir, signatures
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import iterator_release, reader
from muse_tf.jobs import distribute, runs, seeding, validation
from muse_tf.jobs.backup import EpochBackup, ResumedHistory
from muse_tf.jobs.evaluation import evaluate_run
from muse_tf.jobs.saved_model import export_saved_model
from muse_tf.models import MuseModel, optimizers


def compile_model(model: MuseModel, experiment: ExperimentConfig, total_steps: int) -> None:
    """The config's optimizers, at its rates and schedule over the run's ``total_steps``: one for
    the embedding tables, one for the rest."""
    train = experiment.train

    def rate(peak: float) -> optimizers.LearningRate:
        return optimizers.learning_rate(peak, train.learning_rate_schedule, total_steps,
                                        train.warmup_fraction)

    # The logs Keras shows after each step: the metrics' results, already aggregated over the
    # replicas; "auto" would add them up again over the workers of a multi-worker cluster (the
    # progress bar then read e.g. "loss: 1.4768 - auc: 0.9330" with two workers).
    model.distribute_reduction_method = "first"
    model.compile(
        optimizer=optimizers.dense_optimizer(train.dense_optimizer, rate(train.dense_learning_rate)),
        embedding_optimizer=optimizers.embedding_optimizer(
            train.embedding_optimizer, rate(train.embedding_learning_rate)
        ),
    )


class ProgressRecord(tf_keras.callbacks.Callback):
    """Records where this process started (after any restore), how many steps it ran and when
    training ended (before Keras tears ``fit`` down).

    Both come from the optimizer's step counter, not from batch hooks: ParameterServerStrategy
    allows no batch-level callback, and its steps run asynchronously on the workers.
    """

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Runs after BackupAndRestore has restored, so the optimizer step is the resume point;
        says so when training resumes."""
        self.resumed_from_step = int(self.model.optimizer.iterations.numpy())
        self.steps_run = 0
        self.started = time.time()
        if self.resumed_from_step:
            steps, epochs = self.params["steps"], self.params["epochs"]
            epoch, step = divmod(self.resumed_from_step, steps)
            print(f"Resuming from the backup: epoch {epoch + 1} of {epochs}, after step {step:,} of "
                  f"{steps:,} (optimizer step {self.resumed_from_step:,} of {steps * epochs:,})",
                  flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.steps_run = int(self.model.optimizer.iterations.numpy()) - self.resumed_from_step
        self.ended = time.time()


def make_callbacks(
    run_dir: runs.RunDir, experiment: ExperimentConfig, data_dir: str, epoch_level: bool = False
) -> list[tf_keras.callbacks.Callback]:
    """The backup (resume mid-epoch), a progress record, validation if configured (with early
    stopping: per-epoch weights), TensorBoard and ``history.csv`` (a row per epoch, an epoch
    trained again on resume replacing its row), all in the run directory. The backup
    comes first, so ProgressRecord sees the restored step, and backs each epoch up as finished
    last, once the others have ended it (``muse_tf.jobs.backup``); it keeps its backup when training
    ends, so a failure in evaluation or export does not lose the training (``RunDir.finish``
    drops it). Validation adds its metrics to the logs before they are recorded.

    ``epoch_level`` (ParameterServerStrategy, which allows no batch-level callback): backups and
    TensorBoard scalars once per epoch instead of every so many steps."""
    train = experiment.train
    backup = EpochBackup(run_dir.backup, train.backup_every_seconds, train.backup_every_steps,
                         epoch_level)
    return [
        backup,
        ProgressRecord(),
        *validation.make_callbacks(data_dir, train, run_dir),
        tf_keras.callbacks.TensorBoard(
            run_dir.logs, update_freq="epoch" if epoch_level else train.log_every_steps
        ),
        ResumedHistory(run_dir.worker().history),
        tf_keras.callbacks.CSVLogger(run_dir.worker().history, append=True),
        backup.finished,
    ]


def train_dataset(
    strategy: tf.distribute.Strategy, data_dir: str, experiment: ExperimentConfig
) -> tf.data.Dataset | tf.distribute.DistributedDataset | tf_keras.utils.experimental.DatasetCreator:
    """The training split, repeated, as per-replica batches of the global batch
    (``TrainConfig.global_batch_size``) / replicas (a plain dataset under the default strategy).

    Each input pipeline (one per worker) reads its own subset of the shard files; a partial
    last batch is dropped, so every replica always gets the same batch shape. Under
    ParameterServerStrategy see ``parameter_server_dataset``.
    """
    train = experiment.train
    files = dataset_dir.split_files(data_dir, "train")
    global_batch = train.global_batch_size(strategy.num_replicas_in_sync)
    if distribute.is_parameter_server(strategy):
        return parameter_server_dataset(files, experiment, global_batch)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return reader.make_dataset(
            files,
            context.get_per_replica_batch_size(global_batch),
            history_length=train.history_length,
            shuffle=train.shuffle,
            seed=train.seed,
            deterministic=train.deterministic,
            repeat=True,
            input_context=context,
            drop_remainder=True,
            users=validation.training_users(train),
            feature_spec=experiment.model.features,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def parameter_server_dataset(
    files: list[str], experiment: ExperimentConfig, global_batch: int
) -> tf_keras.utils.experimental.DatasetCreator:
    """The training input of a parameter-server cluster: every worker builds it and takes batches
    of ``global_batch`` (each step is one worker's).

    TensorFlow traces the dataset function once for all workers and gives each the same single
    input pipeline, so the shards cannot be split among them; instead every worker reads the whole
    split shuffled in its own order, whatever ``train.shuffle`` says (else all workers would train
    on the same batches): the trace drops the global seed, so its shuffles draw their seeds on each
    worker when it builds the dataset.
    """
    train = experiment.train

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if not tf.executing_eagerly():  # in the trace: unseeds this graph only, not the process
            tf.random.set_seed(None)
        return reader.make_dataset(
            files,
            context.get_per_replica_batch_size(global_batch),
            history_length=train.history_length,
            shuffle=True,
            repeat=True,
            drop_remainder=True,
            users=validation.training_users(train),
            feature_spec=experiment.model.features,
        )

    return tf_keras.utils.experimental.DatasetCreator(dataset_fn)


def fit_to_dataset(model: ModelConfig, data_dir: str) -> ModelConfig:
    """``model`` for the converted dataset ``data_dir``: its feature spec (None for Taobao-MM's,
    so that a Taobao-MM run's config is what it was before specs), its vocabulary sizes, and its
    vectors' width (and float32 storage for float vectors).

    Raises:
        config.ConfigError: when the config cannot hold the dataset's vectors.
    """
    spec = dataset_dir.load_feature_spec(data_dir)
    vectors = spec.multimodal
    return dataclasses.replace(
        model,
        feature_spec=None if spec == TAOBAO_MM else spec,
        vocab_sizes=dataset_dir.vocab_sizes(data_dir),
        multimodal_dim=vectors.dim,
        multimodal_dtype=model.multimodal_dtype if vectors.dtype == "int8" else vectors.model_dtype,
    )


def training_samples(data_dir: str, train: TrainConfig) -> int:
    """Samples a pass trains on: the manifest's training split less the held-out share
    (``train.validation_fraction``).

    Raises:
        ValueError: when the training split holds no sample (fitting would wait forever).
    """
    samples = dataset_dir.split_samples(dataset_dir.load_manifest(data_dir), "train")
    if samples == 0:
        raise ValueError(f"{data_dir}: the training split holds no sample; nothing to train on.")
    return int(samples * (1.0 - train.validation_fraction))


def steps_per_epoch(train: TrainConfig, samples: int, global_batch: int) -> int:
    """``train.steps_per_epoch``, or one pass over ``samples`` at ``global_batch``."""
    return train.steps_per_epoch or max(1, samples // global_batch)


def too_few_steps(train: TrainConfig, samples: int, global_batch: int) -> str | None:
    """Why a run planned from the data will learn little, or None: a pass makes fewer than
    ``train.warn_below_steps`` optimizer steps, or the split is smaller than one global batch
    (its one step repeats samples). Silent when ``train.steps_per_epoch`` is set by hand."""
    if train.steps_per_epoch or not train.warn_below_steps:
        return None
    steps = steps_per_epoch(train, samples, global_batch)
    fix = ("lower `train.per_replica_batch_size` (or set a smaller global `train.batch_size`), "
           "raise `train.epochs`, or train with the preset `taobao_mm_tuned` (higher rates, measured "
           "better on small data); --set train.warn_below_steps=0 silences this")
    if samples < global_batch:
        return (f"Warning: the training split has {samples:,} samples, fewer than one global batch "
                f"of {global_batch:,}: each step repeats samples; {fix}.")
    if steps * train.epochs < train.warn_below_steps:
        return (f"Warning: {samples:,} training samples at a global batch of {global_batch:,} make "
                f"{steps:,} optimizer step(s) per epoch, {steps * train.epochs:,} in all (fewer than "
                f"`train.warn_below_steps` = {train.warn_below_steps}): the model will learn little; "
                f"{fix}.")
    return None


def untimed_callbacks(
    model: tf_keras.Model, callbacks: list[tf_keras.callbacks.Callback], verbose: int, epochs: int,
    steps: int | None,
) -> tf_keras.callbacks.CallbackList:
    """The CallbackList ``fit`` would make of ``callbacks``, without Keras's timing check.

    With any callback of ours in the list, Keras times the step hooks of the first five steps and
    warns "Callback method `on_train_batch_end` is slow" when they outlast a step. What it times
    there is TensorBoard's one-off work after the first step (the training graph, ~0.5 s; the first
    summary write, 0.1-0.3 s): not a slow callback, but a warning on every run of a small model."""
    callback_list = tf_keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose,
        epochs=epochs, steps=steps,
    )
    callback_list._check_timing = False
    return callback_list


def keras_fit(
    model: tf_keras.Model,
    inputs: tf.data.Dataset | tf.distribute.DistributedDataset | tf_keras.utils.experimental.DatasetCreator,
    **fit_args,
) -> tf_keras.callbacks.History:
    """``model.fit(inputs, **fit_args)``, except that the input iterators ``fit`` makes are deleted
    in the background after it returns, not as it returns: their deletion can block for up to a
    minute (``muse_tf.data.iterator_release``); ``callbacks`` are not timed
    (``untimed_callbacks``)."""
    fit_args["callbacks"] = untimed_callbacks(
        model, fit_args.get("callbacks", []), fit_args.get("verbose", 1), fit_args.get("epochs", 1),
        fit_args.get("steps_per_epoch"),
    )
    if isinstance(inputs, tf_keras.utils.experimental.DatasetCreator):
        return model.fit(inputs, **fit_args)
    kept = iterator_release.KeptIterators(inputs)
    try:
        return model.fit(kept, **fit_args)
    finally:
        kept.release()


def fit(
    strategy: tf.distribute.Strategy,
    experiment: ExperimentConfig,
    data_dir: str,
    run_dir: runs.RunDir,
    steps: int,
    verbose: int,
) -> dict:
    """Builds the model, records the run's start (the chief, ``RunDir.start``), trains ``steps``
    per epoch (resuming from the backup, if any) and saves the final weights of every worker.

    Returns:
        Steps taken and expected, the resume point, training time and replicas.
    """
    with strategy.scope():  # a resume's backup overwrites every ID table
        model = runs.build_model(experiment, dataset_dir.load_multimodal_table(data_dir),
                                 restored=run_dir.has_backup())
        compile_model(model, experiment, steps * experiment.train.epochs)
    if distribute.is_chief():  # after the build, which the table's digest is read beside (run)
        run_dir.start(experiment, data_dir)
    parameter_server = distribute.is_parameter_server(strategy)
    callbacks = make_callbacks(run_dir, experiment, data_dir, epoch_level=parameter_server)
    # The backups, per-epoch and final weights leave out the frozen table (loaded above from the
    # dataset, whose table a resume checks, RunDir.check_multimodal_table, and a load finds by its
    # digest, RunDir.frozen_table_dataset).
    with model.multimodal.left_out_of_checkpoints():
        with dataset_dir.damaged_shards_named(dataset_dir.split_files(data_dir, "train")):
            keras_fit(
                model,
                train_dataset(strategy, data_dir, experiment),
                epochs=experiment.train.epochs,
                steps_per_epoch=steps,
                callbacks=callbacks,
                # A progress bar would fetch every step's metrics from the workers; PS refuses it.
                verbose=2 if parameter_server and verbose else verbose,
            )
        progress = next(c for c in callbacks if isinstance(c, ProgressRecord))
        result = {
            "variant": experiment.model.variant,
            "optimizer_iterations": int(model.optimizer.iterations.numpy()),
            "expected_iterations": steps * experiment.train.epochs,
            "resumed_from_step": progress.resumed_from_step,
            "steps_run": progress.steps_run,
            "train_seconds": round(progress.ended - progress.started, 1),
            # Keras's exit from fit after the last callback.
            "fit_teardown_seconds": round(time.time() - progress.ended, 1),
            "replicas": strategy.num_replicas_in_sync,
        }
        if parameter_server:
            result["sharded_variables"] = distribute.shard_placement(model.variables)
        # Every worker takes part in saving (reading synchronised variables is a collective op);
        # only the chief's copy is kept.
        with cli.writing(run_dir.worker().final_weights):
            model.save_weights(run_dir.worker().final_weights)
    return result


def run(
    experiment: ExperimentConfig,
    data_dir: str,
    model_dir: str,
    *,
    export_dir: str | None = None,
    model_name: str = signatures.DEFAULT_MODEL_NAME,
    export_limits: dict[str, int] | None = None,
    evaluate: bool = True,
    export: bool = True,
    overwrite: bool = False,
    allow_other_runs: bool = False,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains ``experiment`` on a converted dataset, then (chief only) evaluates and exports it.

    Args:
        experiment: the config; its ``model.feature_spec``, ``vocab_sizes`` and multimodal width
            (``fit_to_dataset``) are set from ``data_dir``.
        data_dir: a converted dataset (``muse_tf.contract.dataset_dir``).
        model_dir: the run directory (``muse_tf.jobs.runs.RunDir``). An interrupted run of the same
            config resumes there; a run whose training finished goes straight to evaluation and
            export.
        export_dir: the SavedModel base directory; None = ``MODEL_DIR/export``.
        export_limits: ``export_saved_model``'s request limits (``max_history_length``,
            ``max_candidates``, ``max_history_values``); None = its defaults.
        evaluate, export: run the final evaluation / the export.
        overwrite: delete the run directory first and start over.
        allow_other_runs: export even if ``EXPORT_DIR/MODEL_NAME`` holds another run's versions
            (``saved_model.check_one_run``).
        strategy: the tf.distribute strategy; None = ``distribute.make_strategy(train.ps_min_shard_bytes)``.

    Returns:
        What ``metrics.json`` holds: ``fit``'s figures and unless disabled ``eval``
        (``evaluation.evaluate_run``) and ``export`` (the version directory).

    Raises:
        runs.RunDirectoryError: when ``model_dir`` holds a finished run or the model of another
            config or dataset (and ``overwrite`` is False).
        lock.BusyError: when another process works in ``model_dir``.
        config.ConfigError: when the validation settings leave training or validation without
            a sample.
    """
    if distribute.serves_only():
        raise RuntimeError("This process is a `worker` or `ps` task of a parameter-server cluster "
                           "(TF_CONFIG): it runs distribute.serve(); only the `chief` trains.")
    # Before other TensorFlow work.
    strategy = strategy or distribute.make_strategy(experiment.train.ps_min_shard_bytes)
    dataset_dir.ensure_filesystems([data_dir])
    run_dir = runs.RunDir(model_dir)
    chief = distribute.is_chief()
    if chief or run_dir.has_backup():  # the run's record of its frozen table; a resume's check
        dataset_dir.start_multimodal_table_digest(data_dir)
    experiment = dataclasses.replace(experiment, model=fit_to_dataset(experiment.model, data_dir))
    # An empty split, a hold-out that leaves no sample or a missing validation split fails
    # before the run starts.
    samples = training_samples(data_dir, experiment.train)
    validation.check_samples(data_dir, experiment.train)
    global_batch = experiment.train.global_batch_size(strategy.num_replicas_in_sync)
    with run_dir.worker().hold():  # the chief's is the run directory's, a worker's its own
        result = _train_or_resume(strategy, experiment, data_dir, run_dir, samples, global_batch,
                                  overwrite, verbose)
        if chief:
            _evaluate_and_export(experiment, data_dir, run_dir, result, evaluate, export,
                                 export_dir, model_name, export_limits, allow_other_runs)
    return result


def _train_or_resume(
    strategy: tf.distribute.Strategy,
    experiment: ExperimentConfig,
    data_dir: str,
    run_dir: runs.RunDir,
    samples: int,
    global_batch: int,
    overwrite: bool,
    verbose: int,
) -> dict:
    """Trains (resuming a backup) one pass of ``samples`` per epoch, unless the config sets the
    steps, or returns the record of a training that already finished."""
    chief = distribute.is_chief()
    if overwrite and chief:
        run_dir.clear()
    trained = None if overwrite else run_dir.check_can_start(experiment, data_dir)
    os.makedirs(run_dir.worker().root, exist_ok=True)
    seeding.set_seed(experiment.train.seed)
    if trained is not None:
        print(f"Training already finished in {run_dir.root} ({run_dir.training_record}); "
              "going straight to evaluation and export")
        return {key: value for key, value in trained.items() if key != "config_sha256"}
    if not run_dir.has_backup():
        run_dir.worker().discard_attempt()
    steps = steps_per_epoch(experiment.train, samples, global_batch)
    where = (f"run directory {run_dir.root}" if chief else
             f"as {distribute.task_name()} of the cluster (the chief writes the run directory)")
    print(f"Training {experiment.model.variant} on {data_dir} with {distribute.strategy_name(strategy)} "
          f"({strategy.num_replicas_in_sync} replica(s), global batch {global_batch:,}, "
          f"{steps:,} steps per epoch); {where}")
    warning = too_few_steps(experiment.train, samples, global_batch)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    result = fit(strategy, experiment, data_dir, run_dir, steps, verbose)
    if chief:
        run_dir.record_training(experiment, result)
    return result


def _evaluate_and_export(
    experiment: ExperimentConfig,
    data_dir: str,
    run_dir: runs.RunDir,
    result: dict,
    evaluate: bool,
    export: bool,
    export_dir: str | None,
    model_name: str,
    export_limits: dict[str, int] | None,
    allow_other_runs: bool,
) -> None:
    """The chief's evaluation and export of the trained run, added to ``result``; then the run
    is finished (``metrics.json``). The trained model is loaded only when one of them is asked
    for (~3 s at 10M item rows, most of the embedded default run's training time)."""
    if evaluate or export:
        model, _ = runs.load_trained_model(run_dir.root, data_dir)  # fresh, undistributed
    if evaluate:
        result["eval"] = evaluate_run(model, data_dir, experiment.train, run_dir.root)
        print(f"Test AUC {result['eval']['auc']:.4f}  GAUC {result['eval']['gauc']:.4f} "
              f"over {result['eval']['examples']} samples")
    if export:
        result["export"] = export_saved_model(
            model, dataset_dir.load_vocabularies(data_dir), export_dir or run_dir.export,
            model_name, **(export_limits or {}), source=run_dir.identity(),
            allow_other_runs=allow_other_runs,
        )
    run_dir.finish(result)
