"""The run directory: where one training run keeps everything, and how a run's model comes back.

One run directory holds one model. Its layout, owned here and nowhere else::

    lock                   names the process working here (``muse_tf.contract.lock``): one at a time
    config.yaml            the resolved ExperimentConfig (``model:`` and ``train:``)
    dataset.json           the converted dataset it trains on: its path and the digest of its
                           vocabularies (``dataset_dir.vocabularies_digest``), which decide what the
                           embedding rows mean; scoring with another dataset is refused; and the
                           digest of its multimodal table, which the backup leaves out: a resume
                           reloads it from the dataset and refuses another one
    history.csv            per-epoch losses and metrics
    logs/                  TensorBoard
    checkpoints/epoch-NN   weights after each epoch, with early stopping only (the epoch it keeps;
                           without the frozen multimodal table and the optimizers' moments)
    backup/                BackupAndRestore state (resume mid-epoch; without the frozen
                           multimodal table) and ``config.sha256``, the digest of the config it
                           belongs to; kept until evaluation and export have succeeded
    final/weights          the trained weights, without the frozen multimodal table (loaded from the
                           dataset, checked by digest) and the optimizers' moments
                           (``MuseModel.save_weights``); ``final/training.json`` records that training
                           finished (and the digest of its config), so a restart goes straight to
                           evaluation and export, and a ``config.yaml`` edited since is refused
    metrics.json           the finished run's summary: written last, it marks the run as done
    eval_metrics.json, eval_buckets.png
    export/<name>/<version>/  the SavedModel, unless exported elsewhere
    workers/<type>-<index>/   a non-chief worker's own lock, history.csv and final/ (multi-worker)

A start that failed before its first backup trained nothing: it does not count as a run (the next
start, of any config, begins afresh).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import yaml

from muse_tf import cli
from muse_tf.config import ExperimentConfig, from_dict, load_yaml
from muse_tf.contract import dataset_dir, features, lock, strict_json
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.jobs import distribute
from muse_tf.layers.initializers import tables_to_be_restored
from muse_tf.models import MuseModel

START_OVER_FLAG = "--overwrite"
WORKERS = "workers"


class RunDirectoryError(cli.UsageError, RuntimeError):
    """The run directory holds another model, or a finished run, or weights that do not fit, or
    no trained model at all."""


# Config keys added since runs were first recorded, by section, with the value every run before
# them trained with: a run's config.yaml without the key is read with that value, and the digest
# leaves the key out at that value, so a run recorded before the key still loads, with its digest.
KEYS_ADDED_SINCE = {"model": {"short_term_attention": "din"}}


def config_digest(experiment: ExperimentConfig) -> str:
    """SHA-256 of the resolved config: two runs with the same digest train the same model."""
    values = experiment.to_dict()
    for section, added in KEYS_ADDED_SINCE.items():
        for key, before in added.items():
            if values[section].get(key) == before:
                del values[section][key]
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class RunDir:
    """The paths of one run directory (``root``), and the files that tie it to one config."""

    def __init__(self, root: str) -> None:
        self.root = str(root)

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def lock(self) -> str:
        return self._path("lock")

    @property
    def config(self) -> str:
        return self._path("config.yaml")

    @property
    def dataset_record(self) -> str:
        return self._path("dataset.json")

    @property
    def history(self) -> str:
        return self._path("history.csv")

    @property
    def logs(self) -> str:
        return self._path("logs")

    @property
    def checkpoints(self) -> str:
        """The per-epoch weight checkpoints' name pattern (Keras formats ``epoch``)."""
        return self._path("checkpoints", "epoch-{epoch:02d}")

    @property
    def backup(self) -> str:
        return self._path("backup")

    @property
    def backup_digest(self) -> str:
        return self._path("backup", "config.sha256")

    @property
    def final(self) -> str:
        return self._path("final")

    @property
    def final_weights(self) -> str:
        return self._path("final", "weights")

    @property
    def training_record(self) -> str:
        return self._path("final", "training.json")

    @property
    def metrics(self) -> str:
        return self._path("metrics.json")

    @property
    def eval_metrics(self) -> str:
        return self._path("eval_metrics.json")

    @property
    def eval_plot(self) -> str:
        return self._path("eval_buckets.png")

    @property
    def export(self) -> str:
        return self._path("export")

    def identity(self) -> dict[str, str]:
        """Which trained model this is: the run directory and the digest of its training record,
        which a training started over (``--overwrite``) rewrites. An export records it
        (``saved_model.SOURCE_FILE``)."""
        with open(self.training_record, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return {"run": os.path.abspath(self.root), "training_sha256": digest}

    def worker(self) -> RunDir:
        """This process's own directory: the run directory for the chief, else
        ``workers/<type>-<index>``."""
        if distribute.is_chief():
            return self
        return RunDir(self._path(WORKERS, distribute.task_name()))

    # -- one run directory, one model --------------------------------------------------------
    def has_backup(self) -> bool:
        """Whether BackupAndRestore left a state to resume from (it writes ``backup/chief/``)."""
        return os.path.exists(os.path.join(self.backup, "chief", "checkpoint"))

    def is_finished(self) -> bool:
        return os.path.exists(self.metrics)

    def check_can_start(self, experiment: ExperimentConfig, data_dir: str) -> dict | None:
        """Checks that training ``experiment`` on ``data_dir`` here continues this directory's run,
        not another's. A start that never backed up trained nothing, so it does not count.

        Returns:
            The training record when training already finished for this config (a failure or a
            kill came after it), so the caller goes straight to evaluation and export; else None.

        Raises:
            RunDirectoryError: when the run is finished, or its backup or trained weights belong
                to another config or dataset. The message names ``--overwrite``, which starts over.
        """
        restart = f"pass {START_OVER_FLAG} to delete it and start over, or use another --model-dir"
        if self.is_finished():
            raise RunDirectoryError(
                f"{self.root} holds a finished run ({self.metrics}); {restart}."
            )
        digest = config_digest(experiment)
        if os.path.exists(self.training_record):
            record = _read_json(self.training_record)
            if record.get("config_sha256") != digest:
                raise RunDirectoryError(
                    f"{self.root} holds a model trained with another config (see "
                    f"{self.config}); {restart}."
                )
            self.check_dataset(data_dir)
            return record
        if not self.has_backup():
            return None
        stored = _read_text(self.backup_digest)
        if stored != digest:
            what = "another config" if stored else "an unknown config (no config.sha256)"
            raise RunDirectoryError(
                f"{self.root} holds an unfinished run of {what}, whose backup would be restored "
                f"into this run's model; {restart}."
            )
        self.check_dataset(data_dir)
        self.check_multimodal_table(data_dir)
        return None

    def check_dataset(self, data_dir: str) -> None:
        """Checks that ``data_dir`` is the dataset this run trains on: the same vocabularies, so
        the same IDs select the same embedding rows (``dataset.json``).

        Raises:
            RunDirectoryError: naming both directories, or saying that the run records none.
        """
        if not os.path.exists(self.dataset_record):
            raise RunDirectoryError(
                f"{self.root} does not record the dataset it was trained on (no "
                f"{os.path.basename(self.dataset_record)}: an older muse_tf trained it), so "
                f"--data {data_dir} cannot be checked against it; train it again with `python -m "
                f"muse_tf.train --data DATA --model-dir {self.root} {START_OVER_FLAG}`."
            )
        recorded = _read_json(self.dataset_record)
        if dataset_dir.vocabularies_digest(data_dir) != recorded["vocabularies_sha256"]:
            raise RunDirectoryError(
                f"--data {data_dir} is not the dataset {self.root} was trained on "
                f"({recorded['data']}): their vocabularies differ, so the same IDs would select "
                f"other embedding rows; pass --data {recorded['data']} (or a copy of it)."
            )

    def frozen_table_dataset(self, data_dir: str | None = None) -> str:
        """The dataset whose multimodal table this run's weights go with (they leave it out):
        ``data_dir`` when its table is the one the run trained with (by ``dataset.json``'s
        digest), else the dataset the run records (e.g. ``pipelines.predict``'s conversion of raw
        candidates holds their vectors, not the run's). A run that records no digest (an older
        muse_tf) takes ``data_dir``.

        Raises:
            RunDirectoryError: when neither holds the run's table, naming them.
        """
        record = _read_json(self.dataset_record) if os.path.exists(self.dataset_record) else {}
        candidates = [d for d in (data_dir, record.get("data")) if d]
        for candidate in candidates:
            table = os.path.join(candidate, dataset_dir.MULTIMODAL_TABLE)
            if tf.io.gfile.exists(table) and self._holds_trained_table(candidate):
                return candidate
        raise RunDirectoryError(
            f"{self.root} needs the multimodal table it was trained with (its digest is in "
            f"{self.dataset_record}), which neither "
            f"{' nor '.join(os.path.join(d, dataset_dir.MULTIMODAL_TABLE) for d in candidates)} "
            "holds: its weights leave the frozen table to its dataset. Pass --data with the "
            "dataset it was trained on (or a copy of it)."
        )

    def check_multimodal_table(self, data_dir: str) -> None:
        """Checks that ``data_dir``'s multimodal table is the one this run started with: the
        backups and final weights leave the frozen table out, and a resume or a load reads it
        from the dataset again. A run that records no digest (an older muse_tf, whose weights
        held the table) is not checked.

        Raises:
            RunDirectoryError: naming the table file.
        """
        if not self._holds_trained_table(data_dir):
            path = os.path.join(data_dir, dataset_dir.MULTIMODAL_TABLE)
            raise RunDirectoryError(
                f"{path} is not the multimodal table {self.root} started training with (its "
                f"digest differs from the one in {self.dataset_record}); the backup leaves the "
                "frozen table out, so resuming needs the same file: restore it, or pass "
                f"{START_OVER_FLAG}."
            )

    def _holds_trained_table(self, data_dir: str) -> bool:
        """Whether ``data_dir``'s multimodal table has the digest ``dataset.json`` records (True
        when it records none)."""
        recorded = (_read_json(self.dataset_record) if os.path.exists(self.dataset_record)
                    else {}).get("multimodal_table_sha256")
        return recorded is None or dataset_dir.multimodal_table_digest(data_dir) == recorded

    def write_config(self, experiment: ExperimentConfig) -> None:
        """Writes the resolved config to ``config.yaml``."""
        os.makedirs(self.root, exist_ok=True)
        _write_text(self.config, yaml.safe_dump(experiment.to_dict(), sort_keys=False))

    def start(self, experiment: ExperimentConfig, data_dir: str) -> None:
        """Writes ``config.yaml``, ``dataset.json`` and the backup's config digest (chief only)."""
        self.write_config(experiment)
        _write_json(self.dataset_record, {
            "data": data_dir if "://" in data_dir else os.path.abspath(data_dir),
            "vocabularies_sha256": dataset_dir.vocabularies_digest(data_dir),
            "multimodal_table_sha256": dataset_dir.multimodal_table_digest(data_dir),
        })
        os.makedirs(self.backup, exist_ok=True)
        _write_text(self.backup_digest, config_digest(experiment))

    def discard_attempt(self) -> None:
        """Deletes what an attempt that never backed up wrote: training starts from step 0 again,
        so its ``history.csv`` rows would reappear as a second "epoch 0", and its TensorBoard
        logs and checkpoints (perhaps of another config) would mix with the new ones."""
        if os.path.exists(self.history):
            os.remove(self.history)
        for path in (self.logs, os.path.dirname(self.checkpoints)):
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Holds this directory's ``lock`` for the ``with`` block (``lock.hold``).

        Raises:
            lock.BusyError: naming the process that works here.
        """
        with lock.hold(self.lock, self.root, "wait for it to end, or use another --model-dir"):
            yield

    def record_training(self, experiment: ExperimentConfig, result: dict) -> None:
        """Marks training as finished for ``experiment`` (after ``final_weights`` are saved)."""
        _write_json(self.training_record, {"config_sha256": config_digest(experiment), **result})

    def finish(self, result: dict) -> None:
        """Writes ``metrics.json`` (the run is done) and drops the backup it no longer needs."""
        _write_json(self.metrics, result)
        shutil.rmtree(self.backup, ignore_errors=True)

    def clear(self) -> None:
        """Deletes what a run writes here (and nothing else the directory may hold), to start
        over."""
        files = (self.config, self.dataset_record, self.history, self.metrics, self.eval_metrics,
                 self.eval_plot)
        for path in files:
            if os.path.exists(path):
                os.remove(path)
        for path in (self.logs, os.path.dirname(self.checkpoints), self.backup, self.final,
                     self.export, self._path(WORKERS)):
            shutil.rmtree(path, ignore_errors=True)

    def read_config(self) -> ExperimentConfig:
        """The run's resolved config, from ``config.yaml`` (with ``KEYS_ADDED_SINCE`` where a run
        recorded before them lacks them).

        Raises:
            RunDirectoryError: when there is none (``root`` is not a training run).
        """
        if not os.path.exists(self.config):
            raise RunDirectoryError(
                f"{self.root} is not a training run (no config.yaml): pass the --model-dir of a "
                "`python -m muse_tf.train` run."
            )
        values = load_yaml(self.config)
        for section, added in KEYS_ADDED_SINCE.items():
            if isinstance(values.get(section), dict):
                values[section] = {**added, **values[section]}
        return from_dict(ExperimentConfig, values)


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _read_text(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip()


def _write_text(path: str, text: str) -> None:
    """Writes atomically: a kill, or another worker reading meanwhile, sees the old file or the new
    one, never half of one. A full disk is a ``cli.WriteError`` naming ``path``."""
    tmp = f"{path}.tmp"
    with cli.writing(path):
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def _write_json(path: str, values: dict) -> None:
    _write_text(path, strict_json.dumps(values, indent=2))


def dummy_inputs(spec: FeatureSpec, rows: int = 1, length: int = 1) -> dict[str, tf.Tensor]:
    """An all-PAD batch of ``spec``'s features, to create a model's variables."""
    inputs = {name: tf.zeros([rows], tf.int64) for name in spec.scalar_features}
    inputs.update({name: tf.zeros([rows, length], tf.int64) for name in features.SEQUENCE_FEATURES})
    return inputs


def build_model(
    experiment: ExperimentConfig, table: np.ndarray | None = None, *, restored: bool = False
) -> MuseModel:
    """A MuseModel with its variables created and, when given, the multimodal table loaded.
    ``restored``: every ID table is overwritten next (trained weights, a backup), so none is drawn
    (``tables_to_be_restored``)."""
    model = MuseModel(experiment.model)
    with tables_to_be_restored() if restored else contextlib.nullcontext():
        model(dummy_inputs(experiment.model.features))
    if table is not None:
        model.set_multimodal_table(np.asarray(table))
    return model


def load_weights_covering(model: MuseModel, path: str) -> None:
    """Loads ``path`` (weights without the frozen multimodal table, which ``model`` holds
    already) into ``model``, refusing weights that leave part of the rest unset.

    Raises:
        RunDirectoryError: naming the weights when they cannot be read, or the model's variables
            they do not hold (which would stay randomly initialised).
    """
    frozen = {id(v) for v in model.multimodal.weights}
    floats = [v for v in model.variables if v.dtype.is_floating and id(v) not in frozen]
    for variable in floats:  # NaN marks "not restored": a restored value overwrites it
        variable.assign(tf.fill(tf.shape(variable), tf.constant(np.nan, variable.dtype)))
    with model.multimodal.left_out_of_checkpoints():  # matched against the model without it
        try:
            status = model.load_weights(path)
        except (IndexError, tf.errors.OpError) as err:  # IndexError: a truncated data file
            raise RunDirectoryError(
                f"The weights {path} (.index and .data-* files) are damaged or truncated: "
                f"{getattr(err, 'message', None) or err}. Train the run again or restore them."
            ) from None
        try:
            status.assert_existing_objects_matched()
        except AssertionError as err:
            missing = [v.name for v in floats if bool(tf.reduce_any(tf.math.is_nan(v)))]
            raise RunDirectoryError(
                f"The weights {path} do not cover the model; missing: "
                f"{', '.join(missing) or err}. They were trained with another config than the "
                "one beside them."
            ) from None
        # Optimizer slots, or the table an older run's weights held, are not needed here.
        status.expect_partial()


def load_trained_model(
    model_dir: str, data_dir: str | None = None
) -> tuple[MuseModel, ExperimentConfig]:
    """Rebuilds a finished run's model from its ``config.yaml`` and final weights, after
    ``check_trained_run``, with the frozen multimodal table the final weights leave out
    (``RunDir.frozen_table_dataset``).

    Raises:
        RunDirectoryError: as ``check_trained_run``, or when its weights are damaged or do not
            cover the model, or the dataset's table is not the run's.
    """
    run, experiment = check_trained_run(model_dir, data_dir)
    # A model trained in this process (evaluation after training) is garbage by now, but Keras
    # models hold reference cycles: collected first, its tables make room for this one's.
    gc.collect()
    if data_dir:  # frozen_table_dataset's first candidate, read beside the build
        dataset_dir.start_multimodal_table_digest(data_dir)
    model = build_model(experiment, restored=True)  # load_weights_covering restores every table
    model.set_multimodal_table(dataset_dir.load_multimodal_table(run.frozen_table_dataset(data_dir)))
    load_weights_covering(model, run.final_weights)
    return model, experiment


def check_trained_run(model_dir: str, data_dir: str | None = None) -> tuple[RunDir, ExperimentConfig]:
    """A finished run's directory and config, checked without loading its weights.

    Args:
        data_dir: the dataset the caller pairs the model with (scoring, evaluation, export); it
            must be the run's (``RunDir.check_dataset``). None: the model alone.

    Raises:
        RunDirectoryError: when ``model_dir`` is not a run, its training has not finished, its
            ``config.yaml`` is not the config it was trained with, or ``data_dir`` is another
            dataset.
    """
    run = RunDir(model_dir)
    experiment = run.read_config()
    if not os.path.exists(run.training_record):
        raise RunDirectoryError(
            f"{run.root} holds no trained model (no final/training.json): its training has not "
            "finished; run `python -m muse_tf.train` with the same --model-dir to resume it."
        )
    if _read_json(run.training_record).get("config_sha256") != config_digest(experiment):
        raise RunDirectoryError(
            f"{run.config} is not the config {run.final_weights} were trained with (its digest "
            f"differs from the one in {run.training_record}): it was edited since; restore it, "
            "or train the edited config in another --model-dir."
        )
    if data_dir is not None:
        run.check_dataset(data_dir)
    return run, experiment


@contextlib.contextmanager
def working_in_trained_run(
    model_dir: str, data_dir: str
) -> Iterator[tuple[MuseModel, ExperimentConfig]]:
    """``load_trained_model(model_dir, data_dir)`` for a command that works in the run
    (evaluation, export), holding the run's lock (``RunDir.hold``) for the ``with`` block.

    Raises:
        RunDirectoryError, lock.BusyError: as ``load_trained_model`` and ``RunDir.hold``.
    """
    run = RunDir(model_dir)
    run.read_config()  # a directory that is not a run gets no lock file
    with run.hold():
        yield load_trained_model(model_dir, data_dir)
