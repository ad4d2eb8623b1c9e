"""Evaluation of a trained model: exact AUC/GAUC, GAUC by history length and by target-item
popularity (``muse_tf.jobs.metrics``), plots.

Training calls ``evaluate_run`` at the end; ``python -m muse_tf.evaluate`` runs ``evaluate`` on a
finished run. The breakdowns are the paper's long-tail analysis: MUSE's gains should grow with
history length and be larger for less popular items. TensorFlow loads inside the functions, so the
command's ``--help`` does not load it.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from muse_tf import cli
from muse_tf.config import TrainConfig
from muse_tf.contract import features, strict_json
from muse_tf.contract.feature_spec import FeatureSpec
from muse_tf.jobs import metrics

if TYPE_CHECKING:
    import tf_keras


def item_popularity(
    train_files: Sequence[str], num_items: int, spec: FeatureSpec, batch_size: int = 4096
) -> np.ndarray:
    """Training impressions per target-item index: (num_items,) int64.

    Reads the shards with a 1-long history, so it costs a fraction of a training epoch.
    """
    from muse_tf.data import iterator_release, reader

    counts = np.zeros(num_items, np.int64)
    for batch, _ in iterator_release.elements(
        reader.make_dataset(train_files, batch_size, history_length=1, feature_spec=spec)
    ):
        counts += np.bincount(batch[features.ITEM_ID].numpy(), minlength=num_items)
    return counts


# Below this many users with both a click and a non-click, a bucket's GAUC is drawn as n/a: each
# such user adds one AUC of a few pairs (often exactly 0, 0.5 or 1), so 2 users can make "1.000".
MIN_PLOTTED_USERS = 10
PLOT_NOTES = ("n = test samples; users = users with both a click and a non-click (the ones GAUC "
              "averages over) / all users in the bucket.",
              f"n/a = GAUC undefined (no such user) or resting on fewer than {MIN_PLOTTED_USERS} such "
              "users (the metrics keep the exact value, null if undefined). Dotted line: 0.5, a "
              "random order.")


def plotted_gauc(row: dict) -> float:
    """The GAUC a bar shows: NaN (drawn as n/a) when undefined or when fewer than
    ``MIN_PLOTTED_USERS`` users count."""
    value = row["gauc"]
    if value is None or row["gauc_users"] < MIN_PLOTTED_USERS:
        return float("nan")
    return float(value)


def _bucket_counts(models: dict[str, list[dict]]) -> list[str]:
    """Tick labels: bucket, samples and users; the models must have been scored on the same rows."""
    first, *others = models.values()
    keys = ("bucket", "examples", "users", "gauc_users")
    for rows in others:
        if [[row[k] for k in keys] for row in rows] != [[row[k] for k in keys] for row in first]:
            raise ValueError(f"plot_buckets: {list(models)} were not scored on the same samples; "
                             "their buckets' counts differ.")
    return [f"{row['bucket']}\nn={row['examples']:,}\nusers {row['gauc_users']:,}/{row['users']:,}"
            for row in first]


def plot_buckets(breakdowns: dict[str, dict[str, list[dict]]], path: str, title: str = "") -> None:
    """Bar charts of GAUC per bucket, one panel per breakdown, one bar per model, saved as a PNG.

    A bucket whose GAUC is undefined (NaN) or rests on too few users (``plotted_gauc``) gets no
    bar and the label "n/a", never a number: such a value drawn as 0, 0.5 or 1 reads as a result.

    Args:
        breakdowns: ``{panel title: {model name: gauc_by_bucket rows}}``, e.g. ``{"history
            length": {"MUSE": rows, "DIN": din_rows}}``.
        path: the PNG to write.
        title: the figure's title (optional).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widest = max(len(rows) for models in breakdowns.values() for rows in models.values())
    panel_width = max(6.5, 1.1 * widest + 1.5)  # inches: room for the counts under each bucket
    fig, axes = plt.subplots(1, len(breakdowns), figsize=(panel_width * len(breakdowns), 4.6),
                             squeeze=False)
    for axis, (panel, models) in zip(axes[0], breakdowns.items()):
        ticks = _bucket_counts(models)
        width = 0.8 / len(models)
        for m, (name, rows) in enumerate(models.items()):
            x = np.arange(len(rows)) + (m - (len(models) - 1) / 2) * width
            gaucs = np.array([plotted_gauc(row) for row in rows])
            axis.bar(x, np.where(np.isnan(gaucs), 0.0, gaucs), width=width, color=f"C{m}", label=name)
            for xi, value in zip(x, gaucs):
                axis.text(xi, 0.02 if np.isnan(value) else value + 0.01,
                          "n/a" if np.isnan(value) else f"{value:.3f}", ha="center", va="bottom",
                          fontsize=7.5, rotation=90 if len(models) > 2 else 0)
        axis.set_xticks(np.arange(len(ticks)), ticks, fontsize=7.5)
        axis.set(title=f"GAUC by {panel}", xlabel=panel, ylabel="test GAUC", ylim=(0.0, 1.1))
        axis.axhline(0.5, color="#888888", linewidth=0.8, linestyle=":")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                    title="model", title_fontsize=8)
    if title:
        fig.suptitle(title)
    width, height = fig.get_size_inches()
    note = "\n".join(textwrap.fill(line, int(width * 15)) for line in PLOT_NOTES)
    fig.text(0.01, 0.01, note, fontsize=7.5, color="#444444", ha="left", va="bottom")
    fig.tight_layout(rect=(0, (note.count("\n") + 1) * 0.13 / height + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_run(model: tf_keras.Model, data_dir: str, train: TrainConfig, output_dir: str) -> dict:
    """Scores the test split, writes ``eval_metrics.json`` and ``eval_buckets.png`` (their paths:
    ``runs.RunDir``) to ``output_dir``.

    Raises:
        ValueError: naming a damaged test or training shard, or a test split shorter than its
            manifest.
    """
    from muse_tf.contract import dataset_dir
    from muse_tf.data import reader
    from muse_tf.jobs import runs, scoring

    test_files = dataset_dir.split_files(data_dir, "test")
    with dataset_dir.damaged_shards_named(test_files):
        test = reader.make_dataset(test_files, train.eval_batch_size,
                                   history_length=train.history_length, feature_spec=model.config.features)
        scored = scoring.predict_dataset(model, test)
    dataset_dir.check_split_read_whole(data_dir, "test", len(scored["labels"]))
    train_files = dataset_dir.split_files(data_dir, "train")
    with dataset_dir.damaged_shards_named(train_files):
        popularity = item_popularity(train_files, model.config.vocab_sizes["item"], model.config.features)
    by_length = metrics.gauc_by_bucket(scored, scored["history_length"], metrics.HISTORY_LENGTH_EDGES)
    by_popularity = metrics.gauc_by_bucket(
        scored, popularity[scored["item_id"]], metrics.POPULARITY_EDGES
    )
    result = {**metrics.summarize(scored), "by_history_length": by_length,
              "by_item_popularity": by_popularity}
    output = runs.RunDir(output_dir)
    os.makedirs(output.root, exist_ok=True)
    with cli.writing(output.eval_metrics), open(output.eval_metrics, "w") as f:
        strict_json.dump(result, f, indent=2)
    name = model.config.variant
    with cli.writing(output.eval_plot):
        plot_buckets({"history length (behaviours)": {name: by_length},
                      "target-item training impressions": {name: by_popularity}}, output.eval_plot)
    return result


def evaluate(args: argparse.Namespace) -> dict:
    """Re-evaluates the run ``args.model_dir`` on ``args.data``; prints AUC, GAUC and examples.

    Raises:
        runs.RunDirectoryError: when the output already holds ``eval_metrics.json`` and
            ``args.overwrite`` is not set, besides ``working_in_trained_run``'s.
    """
    from muse_tf.contract import dataset_dir
    from muse_tf.jobs import runs

    dataset_dir.require_dataset(args.data)  # before the model is built
    output = args.output or args.model_dir
    with runs.working_in_trained_run(args.model_dir, args.data) as (model, experiment):
        existing = runs.RunDir(output).eval_metrics
        if os.path.exists(existing) and not args.overwrite:
            raise runs.RunDirectoryError(
                f"{existing} already holds an evaluation (the run's own, or an earlier one); pass "
                "--output DIR to write elsewhere, or --overwrite to replace it."
            )
        result = evaluate_run(model, args.data, experiment.train, output)
    print(strict_json.dumps({k: result[k] for k in ("auc", "gauc", "examples")}, indent=2))
    return result
