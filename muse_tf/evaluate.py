"""Evaluation: exact AUC/GAUC, GAUC by history length and by target-item popularity, plots.

``python -m muse_tf.evaluate --data DIR --model-dir DIR`` evaluates a trained run; training calls
``evaluate_run`` at the end. The breakdowns are the paper's long-tail analysis: MUSE's gains should
grow with history length and be larger for less popular items.

The module is also the command, so it imports TensorFlow (through ``data``, ``metrics`` and
``runs``) inside the functions that need it: ``--help`` answers before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from muse_tf import cli, features, strict_json
from muse_tf.config import TrainConfig

if TYPE_CHECKING:
    import tf_keras

HISTORY_LENGTH_EDGES = (0, 1, 51, 201, 501, 1001)
POPULARITY_EDGES = (0, 1, 10, 100, 1000)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Human-readable names of the half-open buckets [e_i, e_{i+1}) plus [e_last, inf)."""
    names = [f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}" for lo, hi in zip(edges[:-1], edges[1:])]
    return [*names, f"{edges[-1]}+"]


def gauc_by_bucket(
    scored: dict[str, np.ndarray], values: np.ndarray, edges: Sequence[int]
) -> list[dict]:
    """Splits the scored rows by ``values`` into buckets and summarises each one.

    Args:
        scored: aligned (N,) columns, as ``metrics.predict_dataset`` returns.
        values: (N,) the quantity to bucket by, e.g. ``scored["history_length"]``.
        edges: ascending bucket starts; row n falls in [e_i, e_{i+1}) or, past the last, [e_last,
            inf). Rows below ``edges[0]`` are in no bucket.

    Returns:
        One dict per bucket (empty ones included): ``bucket`` (its label, ``bucket_labels``) and
        ``metrics.summarize``'s ``auc``, ``gauc``, ``examples``, ``click_rate``.
    """
    from muse_tf import metrics

    bucket = np.searchsorted(np.asarray(edges), values, side="right") - 1
    rows = []
    for index, name in enumerate(bucket_labels(edges)):
        selected = bucket == index
        subset = {key: column[selected] for key, column in scored.items()}
        rows.append({"bucket": name, **metrics.summarize(subset)})
    return rows


def item_popularity(train_files: Sequence[str], num_items: int, batch_size: int = 4096) -> np.ndarray:
    """Training impressions per target-item index: (num_items,) int64.

    Reads the shards with a 1-long history, so it costs a fraction of a training epoch.
    """
    from muse_tf import data

    counts = np.zeros(num_items, np.int64)
    for batch, _ in data.make_dataset(train_files, batch_size, history_length=1):
        counts += np.bincount(batch[features.ITEM_ID].numpy(), minlength=num_items)
    return counts


def plot_buckets(breakdowns: dict[str, list[dict]], path: str) -> None:
    """One bar chart of GAUC per breakdown, side by side, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(breakdowns), figsize=(5 * len(breakdowns), 3.6))
    for axis, (title, rows) in zip(np.atleast_1d(axes), breakdowns.items()):
        names = [row["bucket"] for row in rows]
        gaucs = [row["gauc"] for row in rows]
        axis.bar(names, np.nan_to_num(gaucs, nan=0.0), color="#3b75af")
        for x, (value, row) in enumerate(zip(gaucs, rows)):
            label = "n/a" if np.isnan(value) else f"{value:.3f}"
            axis.text(x, 0.01 if np.isnan(value) else value, f"{label}\nn={row['examples']}",
                      ha="center", va="bottom", fontsize=8)
        axis.set_title(f"GAUC by {title}")
        axis.set_ylim(0.0, 1.05)
        axis.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_run(model: tf_keras.Model, data_dir: str, train: TrainConfig, output_dir: str) -> dict:
    """Scores the test split, writes ``eval_metrics.json`` and ``eval_buckets.png`` (their paths:
    ``runs.RunDir``) to ``output_dir``.

    Raises:
        ValueError: naming a damaged test or training shard, or a test split shorter than its
            manifest.
    """
    from muse_tf import data, metrics, runs

    test_files = data.split_files(data_dir, "test")
    with data.damaged_shards_named(test_files):
        test = data.make_dataset(test_files, train.eval_batch_size, history_length=train.history_length)
        scored = metrics.predict_dataset(model, test)
    data.check_split_read_whole(data_dir, "test", len(scored["labels"]))
    train_files = data.split_files(data_dir, "train")
    with data.damaged_shards_named(train_files):
        popularity = item_popularity(train_files, model.config.vocab_sizes["item"])
    breakdowns = {
        "history length": gauc_by_bucket(scored, scored["history_length"], HISTORY_LENGTH_EDGES),
        "target-item training impressions": gauc_by_bucket(
            scored, popularity[scored["item_id"]], POPULARITY_EDGES
        ),
    }
    result = {**metrics.summarize(scored), "by_history_length": breakdowns["history length"],
              "by_item_popularity": breakdowns["target-item training impressions"]}
    output = runs.RunDir(output_dir)
    os.makedirs(output.root, exist_ok=True)
    with open(output.eval_metrics, "w") as f:
        strict_json.dump(result, f, indent=2)
    plot_buckets(breakdowns, output.eval_plot)
    return result


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.evaluate``."""
    parser = cli.parser("muse_tf.evaluate", __doc__)
    parser.add_argument("--data", required=True,
                        help="converted dataset directory (output of pipelines.taobao_mm)")
    parser.add_argument("--model-dir", required=True,
                        help="a training run's directory (holds config.yaml and final weights)")
    parser.add_argument("--output", help="where to write eval_metrics.json/png (None: the model dir)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
    return parser


def evaluate(args: argparse.Namespace) -> dict:
    """Re-evaluates the run ``args.model_dir`` on ``args.data``; prints AUC, GAUC and examples."""
    from muse_tf import artifacts, runs

    artifacts.require_dataset(args.data)  # before the model is built
    model, experiment = runs.load_trained_model(args.model_dir)
    result = evaluate_run(model, args.data, experiment.train, args.output or args.model_dir)
    print(strict_json.dumps({k: result[k] for k in ("auc", "gauc", "examples")}, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m muse_tf.evaluate``: re-evaluates a finished run; returns ``evaluate_run``'s dict."""
    return cli.run(evaluate, arguments(), argv)


if __name__ == "__main__":
    main()
