"""The job of ``python -m muse_tf.predict`` (and of ``pipelines.predict``): a converted split scored
into a Parquet or CSV file, streamed batch by batch, with a run's Keras model or an export (scorers:
``muse_tf.jobs.scoring``). TensorFlow loads inside ``predict``, so a command's ``--help`` does not
load it."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from muse_tf import cli

if TYPE_CHECKING:  # loaded with the work, not for --help
    import numpy as np
    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)


def output_format(path: str) -> str:
    """``parquet`` or ``csv``, from the output file's extension."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise cli.UsageError(
        f"--output {path}: unknown extension {suffix!r}; use .parquet (or .pq) or .csv."
    )


def resolve_export(path: str) -> str:
    """The SavedModel version directory of ``path``: the version directory itself, a model
    directory of numbered versions (the newest), or an export base holding one model name."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise cli.UsageError(f"--export {path} does not exist.")
    versions = [entry for entry in os.listdir(path) if entry.isdigit()]
    if versions:
        return resolve_export(os.path.join(path, max(versions, key=int)))
    models = [e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e))]
    if len(models) == 1:
        return resolve_export(os.path.join(path, models[0]))
    raise cli.UsageError(
        f"--export {path} is not a SavedModel: give its version directory (holding "
        "saved_model.pb, e.g. runs/muse/export/muse/1) or the directory of its versions."
    )


class Progress:
    """A one-line progress report on stderr: samples scored of the total, samples per second."""

    def __init__(self, total: int, enabled: bool = True, interval: float = 1.0) -> None:
        self.total, self.enabled, self.interval, self.stream = total, enabled, interval, sys.stderr
        self.done, self.start, self.shown = 0, time.monotonic(), 0.0

    def add(self, samples: int) -> None:
        self.done += samples
        now = time.monotonic()
        if self.enabled and now - self.shown >= self.interval and self.done < self.total:
            self.shown = now
            self._show(now, end="\r" if self.stream.isatty() else "\n")

    def close(self) -> None:
        if self.enabled:
            self._show(time.monotonic(), end="\n")

    def _show(self, now: float, end: str) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        print(f"scored {self.done:,}/{self.total:,} samples ({rate:,.0f} samples/s)", end=end,
              file=self.stream, flush=True)


def prediction_schema() -> pa.Schema:
    """The columns ``python -m muse_tf.predict`` writes (``scored_table``)."""
    import pyarrow as pa

    return pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("label", pa.int64()),
                      ("probability", pa.float32()), ("logit", pa.float32())])


def scored_table(scored: Mapping[str, np.ndarray], item_vocabulary: np.ndarray) -> pa.Table:
    """One batch of ``scoring.scored_batches``' columns as ``prediction_schema``'s rows: raw IDs,
    ``item_id`` null for an item out of the vocabulary (the records keep only its OOV index)."""
    import numpy as np
    import pyarrow as pa

    from muse_tf.contract import vocabulary

    unknown = scored["item_id"] < vocabulary.RESERVED
    columns = [
        pa.array(scored["groups"], pa.int64()),
        pa.array(vocabulary.raw_ids(item_vocabulary, scored["item_id"], 0), pa.int64(),
                 mask=unknown),
        pa.array(scored["labels"], pa.int64()),
        pa.array(np.asarray(scored["probability"], np.float32).ravel(), pa.float32()),
        pa.array(np.asarray(scored["logits"], np.float32).ravel(), pa.float32()),
    ]
    return pa.Table.from_arrays(columns, schema=prediction_schema())


class PredictionWriter:
    """Writes tables of ``schema`` as Parquet row groups or CSV rows, under a temporary name until
    ``close`` (a failed run leaves no file that looks complete)."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path, self.format, self.schema = path, output_format(path), schema
        self.tmp = f"{path}.tmp"
        with cli.writing(path):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if self.format == "parquet":
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.tmp, schema)
            else:
                import pyarrow.csv as pcsv

                self.writer = pcsv.CSVWriter(self.tmp, schema)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Appends ``table``'s rows (one Parquet row group)."""
        with cli.writing(self.path):
            self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        try:
            with cli.writing(self.path):
                self.writer.close()
                os.replace(self.tmp, self.path)
        except cli.WriteError:
            self.abort()
            raise

    def abort(self) -> None:
        """Removes the partial output; a writer that cannot flush (a full disk) is no matter then."""
        with contextlib.suppress(OSError):
            self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)


def check_run(model_dir: str, data_dir: str) -> None:
    """What ``predict`` checks of a run before scoring (``runs.check_trained_run``), for a caller
    with work to do first (``pipelines.predict`` converts raw Parquet with ``data_dir``'s
    vocabularies, then scores the conversion, which no longer names ``data_dir``).

    Raises:
        cli.UsageError: naming the run, its config or the dataset.
    """
    from muse_tf.jobs import runs

    try:
        runs.check_trained_run(model_dir, data_dir)
    except (FileNotFoundError, ValueError) as err:  # runs.RunDirectoryError is a UsageError
        raise cli.UsageError(str(err)) from None


def scored_split(
    data_dir: str,
    *,
    model_dir: str | None = None,
    export: str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    history_length: int | None = None,
    progress: bool = True,
    target_items: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[Iterator[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``split`` of the converted dataset ``data_dir`` scored batch by batch with the run
    ``model_dir`` or the SavedModel ``export`` (exactly one of them), in the split's order.

    Args:
        batch_size: samples per batch; default the run's ``train.eval_batch_size`` (an export:
            ``TrainConfig``'s default).
        history_length: behaviours fed per sample; default the run's ``train.history_length``
            (an export: the dataset's ``history_cap``).
        target_items: with an export, maps a batch's raw user keys to its raw target item IDs,
            which the export is fed instead of the records' (an item out of the dataset's
            vocabulary is then scored as the export knows it: e.g. refreshed with its vector).

    Returns:
        ``scoring.scored_batches``' batches (the iterator checks at its end that the whole split
        was read), and the dataset's vocabularies.

    Raises:
        cli.UsageError: for a missing, damaged or inconsistent input, naming it (a damaged shard
            or a short split: while iterating).
    """
    if (model_dir is None) == (export is None):
        raise cli.UsageError("give exactly one of --model-dir RUN and --export DIR.")
    from muse_tf.config import TrainConfig
    from muse_tf.contract import dataset_dir
    from muse_tf.data import reader
    from muse_tf.jobs import runs, scoring

    try:
        manifest = dataset_dir.load_manifest(data_dir)
        total = dataset_dir.split_samples(manifest, split)
        files = dataset_dir.split_files(data_dir, split)
        vocabularies = dataset_dir.load_vocabularies(data_dir)
        if model_dir is not None:  # the run's model, if --data is the run's dataset
            model, experiment = runs.load_trained_model(model_dir, data_dir)
            train = experiment.train
            score = scoring.model_scorer(model)
        else:
            train = TrainConfig(history_length=manifest["history_cap"])
            score = scoring.export_scorer(resolve_export(export), vocabularies)
            if target_items is not None:
                score = _with_target_items(score, target_items)
    except (FileNotFoundError, ValueError) as err:  # runs.RunDirectoryError is a UsageError
        raise cli.UsageError(str(err)) from None
    dataset = reader.make_dataset(files, batch_size or train.eval_batch_size,
                                history_length=history_length or train.history_length,
                                deterministic=True,
                                feature_spec=dataset_dir.load_feature_spec(data_dir))

    def batches() -> Iterator[dict[str, np.ndarray]]:
        meter, rows = Progress(total, enabled=progress), 0
        try:
            with dataset_dir.damaged_shards_named(files):
                for scored in scoring.scored_batches(score, dataset):
                    yield scored
                    rows += len(scored["labels"])
                    meter.add(len(scored["labels"]))
            meter.close()
            dataset_dir.check_split_read_whole(data_dir, split, rows)
        except ValueError as err:  # a damaged shard or a split shorter than its manifest
            raise cli.UsageError(str(err)) from None

    return batches(), vocabularies


def _with_target_items(score: Callable, target_items: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """An export scorer fed ``target_items``' raw IDs for each batch."""
    from muse_tf.contract import features

    def scored(batch: Mapping) -> dict[str, np.ndarray]:
        return score(batch, target_items=target_items(batch[features.USER_KEY].numpy()))

    return scored


SCORE_COLUMNS = ("groups", "item_id", "labels", "logits", "probability")


def concatenate_scores(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``scored_split``'s batches as whole ``SCORE_COLUMNS`` (empty ones when there are none),
    for a caller that reorders them (``pipelines.predict``): about 32 bytes per sample."""
    import numpy as np

    from muse_tf.jobs import scoring

    columns = scoring.concatenate({name: batch[name] for name in SCORE_COLUMNS} for batch in batches)
    return {name: columns.get(name, np.zeros(0)) for name in SCORE_COLUMNS}


def predict(data_dir: str, output: str, *, split: str = "test", **options) -> dict:
    """Scores ``split`` of the converted dataset ``data_dir`` into ``output`` (.parquet or .csv),
    one row group per batch; ``options`` are ``scored_split``'s (``model_dir`` or ``export``, ...).

    Returns:
        ``output``, ``rows`` written and ``unknown_items`` (rows whose ``item_id`` is null).

    Raises:
        cli.UsageError: for a missing, damaged or inconsistent input, naming it; no output file
            is left then.
    """
    output_format(output)
    from muse_tf.contract import vocabulary

    batches, vocabularies = scored_split(data_dir, split=split, **options)
    writer, unknown = PredictionWriter(output, prediction_schema()), 0
    try:
        for scored in batches:
            writer.write(scored_table(scored, vocabularies["item"]))
            unknown += int((scored["item_id"] < vocabulary.RESERVED).sum())
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"output": output, "rows": writer.rows, "unknown_items": unknown}


def run(args: argparse.Namespace) -> dict:
    """The job of ``python -m muse_tf.predict``: ``predict`` with the command's flags, reported."""
    result = predict(args.data, args.output, split=args.split, **scoring_options(args))
    report(result)
    return result


def report(result: dict, unknown: str = "item_id null") -> None:
    """The one-line summary the command prints; ``unknown`` says what became of an item the run
    does not know."""
    note = (f"; {result['unknown_items']:,} with an item the run does not know ({unknown})"
            if result["unknown_items"] else "")
    print(f"Wrote {result['rows']:,} rows to {result['output']}{note}")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, output and batching flags, shared with ``pipelines.predict``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="a finished training run's directory")
    source.add_argument("--export", help="a SavedModel version directory (e.g. "
                        "runs/muse/export/muse/1) or the directory of its versions")
    parser.add_argument("--output", required=True, help="predictions file: .parquet or .csv")
    parser.add_argument("--batch-size", type=int, help="samples per batch; unset: the run's "
                        "train.eval_batch_size")
    parser.add_argument("--history-length", type=int, help="behaviours per sample; unset: the "
                        "run's train.history_length, with --export the dataset's history cap")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's start-up logs")


def scoring_options(args: argparse.Namespace) -> dict:
    """``predict``'s keyword arguments from ``add_scoring_arguments``' flags, checked."""
    for name in ("batch_size", "history_length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    return {"model_dir": args.model_dir, "export": args.export, "batch_size": args.batch_size,
            "history_length": args.history_length, "progress": not args.quiet}
