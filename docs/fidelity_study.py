"""The measurements behind docs/fidelity.md: how much each remaining difference from the official
code (alimama-tech/MUSE) moves the results, on the synthetic data of ``muse_tf.experiments``.

    python docs/fidelity_study.py --experiments runs/experiments [--seeds 3] [--parts data ...]

1. Evaluation: the official per-batch GAUC (batches of 1,000 in file order, the last partial batch
   dropped, a tie counted as a miss) against the exact GAUC, for the models the experiments trained.
2. Data: how often the cases in which the two codes differ arise here (OOV behaviours, retrieved
   slots that are padding, recent windows with padding, items without a multimodal vector).
3. Swaps: ``din`` and ``muse`` retrained with one choice swapped, same seeds and settings as the
   experiments: DIN's activation unit as the short-term attention instead of the official one (the
   default), or the official Dice (normalised per sample by a layer norm, alpha starting at -0.25).

Prints Markdown and writes the figures as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from muse_tf.config import DEFAULT_WORK_DIR
from muse_tf.contract import dataset_dir, features
from muse_tf.data import reader, synthetic_dataset
from muse_tf.jobs import experiments, metrics, runs, scoring
from muse_tf.layers import mlp as mlp_module
from muse_tf.ops.item_vectors import inverse_norms

OFFICIAL_BATCH = 1000  # per device in the official configs


def official_batch_gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray,
                        batch: int = OFFICIAL_BATCH) -> float:
    """GAUC as the official trainer reports it: per batch, per user, the share of (click, no-click)
    pairs ranked strictly right, weighted by the user's impressions in that batch, summed over
    batches; the last partial batch is dropped (its DataLoader has ``drop_last=True``)."""
    weighted, impressions = 0.0, 0
    for start in range(0, len(labels) - batch + 1, batch):
        y, s, u = (a[start:start + batch] for a in (labels, scores, users))
        for user in np.unique(u):
            yu, su = y[u == user], s[u == user]
            pos, neg = su[yu == 1], su[yu == 0]
            if len(pos) and len(neg):
                weighted += (pos[:, None] > neg[None, :]).mean() * len(yu)
                impressions += len(yu)
    return weighted / impressions


def evaluation_study(experiments_dir: str, data_dir: str, variants: Sequence[str],
                     seeds: Sequence[int]) -> list[dict]:
    rows = []
    for variant in variants:
        for seed in seeds:
            model_dir = os.path.join(experiments_dir, variant, f"seed{seed}")
            if not os.path.exists(os.path.join(model_dir, "metrics.json")):
                print(f"skipped {model_dir}: no finished run there", flush=True)
                continue
            model, experiment = runs.load_trained_model(model_dir)
            test = reader.make_dataset(dataset_dir.split_files(data_dir, "test"), OFFICIAL_BATCH,
                                     history_length=experiment.train.history_length,
                                     deterministic=True)
            scored = scoring.predict_dataset(model, test)
            labels, logits, users = scored["labels"], scored["logits"], scored["groups"]
            full = len(labels) // OFFICIAL_BATCH * OFFICIAL_BATCH
            # The official grouping (user within batch, full batches only) with ties counted half:
            # what remains between this and the official figure is the tie rule alone.
            batch_user = (np.arange(full) // OFFICIAL_BATCH) * (1 << 32) + np.unique(
                users[:full], return_inverse=True)[1]
            rows.append({
                "variant": variant, "seed": seed,
                "exact_gauc": metrics.group_auc(labels, logits, users),
                "per_batch_gauc_ties_half": metrics.group_auc(labels[:full], logits[:full],
                                                              batch_user),
                "official_batch_gauc": official_batch_gauc(labels, logits, users),
                "tied_pair_share": tied_pair_share(labels, logits, users),
                "examples": int(len(labels)),
                "examples_in_full_batches": int(full),
            })
    return rows


def tied_pair_share(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Share of one user's (click, no-click) pairs whose scores are equal (e.g. the same target
    shown twice): the official AUC counts them as misses, the exact one as one half."""
    tied = pairs = 0
    for user in np.unique(users):
        y, s = labels[users == user], scores[users == user]
        pos, neg = s[y == 1], s[y == 0]
        tied += int((pos[:, None] == neg[None, :]).sum())
        pairs += len(pos) * len(neg)
    return tied / pairs


def data_study(data_dir: str, top_k: int = 50, recent: int = 50, length: int = 1000) -> dict:
    """Shares of the test split's samples and behaviours in each case where the codes differ."""
    has_vector = inverse_norms(dataset_dir.load_multimodal_table(data_dir)) > 0
    totals: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        totals[name] = totals.get(name, 0.0) + float(value)

    for batch, _ in reader.make_dataset(dataset_dir.split_files(data_dir, "test"), 1000,
                                      history_length=length, deterministic=True):
        items = batch[features.HISTORY_ITEMS].numpy()
        categories = batch[features.HISTORY_CATEGORIES].numpy()
        real = items != features.PAD
        add("samples", len(items))
        add("behaviours", real.sum())
        add("oov_behaviours", (items == features.OOV).sum())
        add("oov_categories", ((categories == features.OOV) & real).sum())
        add("behaviours_without_vector", (real & ~has_vector[items]).sum())
        add("targets_without_vector", (~has_vector[batch[features.ITEM_ID].numpy()]).sum())
        add("recent_padding_slots", (~real[:, -recent:]).sum())
        searchable = (real & has_vector[items]).sum(1)
        add("muse_padding_slots", np.maximum(top_k - searchable, 0).sum())
        target_category = batch[features.ITEM_CATEGORY].numpy()[:, None]
        matches = ((categories == target_category) & real).sum(1)
        add("sim_hard_padding_slots", np.maximum(top_k - matches, 0).sum())
        add("sim_hard_samples_with_padding", (matches < top_k).sum())
    n = totals["samples"]
    return {
        "test_samples": int(n),
        "oov_share_of_behaviours": totals["oov_behaviours"] / totals["behaviours"],
        "oov_share_of_categories": totals["oov_categories"] / totals["behaviours"],
        "share_of_behaviours_without_vector": totals["behaviours_without_vector"] / totals["behaviours"],
        "share_of_targets_without_vector": totals["targets_without_vector"] / n,
        "recent_padding_share": totals["recent_padding_slots"] / (n * recent),
        "muse_padding_share_of_k": totals["muse_padding_slots"] / (n * top_k),
        "sim_hard_padding_share_of_k": totals["sim_hard_padding_slots"] / (n * top_k),
        "sim_hard_samples_with_padding": totals["sim_hard_samples_with_padding"] / n,
    }


class OfficialDice(tf_keras.layers.Layer):
    """The official tower's Dice: p = sigmoid(layer_norm(x)) per sample (no affine, eps 1e-12),
    alpha per channel starting at -0.25."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape: tf.TensorShape) -> None:
        self.alpha = self.add_weight(name="alpha", shape=[input_shape[-1]],
                                     initializer=tf_keras.initializers.Constant(-0.25))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
        p = tf.sigmoid((inputs - mean) * tf.math.rsqrt(variance + 1e-12))
        return p * inputs + (1.0 - p) * self.alpha * inputs


# Each swap: `--set` overrides of every run, and a layer of this project replaced by an official
# one (module, attribute, replacement) or None.
SWAPS = {
    "din_short_term_attention": (["model.short_term_attention=din"], None),
    "official_dice": ([], (mlp_module, "Dice", OfficialDice)),
}


def swap_study(data_dir: str, work_dir: str, swaps: Sequence[str], variants: Sequence[str],
               seeds: Sequence[int]) -> dict:
    results: dict[str, list[dict]] = {}
    for name in swaps:
        overrides, patch = SWAPS[name]
        if patch is not None:
            module, attribute, replacement = patch
            original = getattr(module, attribute)
            setattr(module, attribute, replacement)
        try:
            for variant in variants:
                for seed in seeds:
                    print(f"[swap {name}] {variant} seed {seed}", flush=True)
                    run = experiments.run_one({"variant": variant}, seed, data_dir,
                                              os.path.join(work_dir, name), overrides)
                    results.setdefault(f"{name}/{variant}", []).append(run)
                    print(f"    GAUC {run['gauc']:.4f}", flush=True)
        finally:
            if patch is not None:
                setattr(module, attribute, original)
    return results


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", required=True,
                        help="the --work-dir of a finished `python -m muse_tf.experiments` run")
    parser.add_argument("--data", help="converted dataset (default: the embedded synthetic one)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["data", "evaluation", "swaps"],
                        choices=["data", "evaluation", "swaps"])
    parser.add_argument("--swaps", nargs="+", default=list(SWAPS), choices=list(SWAPS))
    parser.add_argument("--swap-variants", nargs="+", default=["din", "muse"])
    parser.add_argument("--output", default="docs/fidelity_study.json",
                        help="JSON file; parts not run keep their figures from an earlier run")
    args = parser.parse_args(argv)
    data_dir = args.data or synthetic_dataset.ensure_default_dataset(DEFAULT_WORK_DIR)
    seeds = list(range(args.seeds))
    report: dict = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            report = json.load(f)
    if "data" in args.parts:
        report["data"] = data_study(data_dir)
        print(json.dumps(report["data"], indent=2), flush=True)
    if "evaluation" in args.parts:
        report["evaluation"] = evaluation_study(args.experiments, data_dir, ["din", "muse"], seeds)
        for row in report["evaluation"]:
            print(f"{row['variant']} seed {row['seed']}: exact {row['exact_gauc']:.4f}, official "
                  f"per-batch {row['official_batch_gauc']:.4f}", flush=True)
    if "swaps" in args.parts:
        report.setdefault("swaps", {}).update(swap_study(
            data_dir, os.path.join(args.experiments, "fidelity_swaps"), args.swaps,
            args.swap_variants, seeds))
        for key, runs in report["swaps"].items():
            print(f"| {key} | {_mean_std([r['gauc'] for r in runs])} |", flush=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
