"""Compare optimizer pairs (embedding tables, other weights) on the paper's main comparison.

    python docs/optimizer_pairs.py [--seeds 3] [--output docs/optimizer_pairs.json]

Trains DIN, SIM-hard, SIM-soft and MUSE on the embedded synthetic dataset with each pair, exactly as
``python -m muse_tf.experiments`` trains them (same config, fixed input order), and writes the test
GAUC/AUC of every run plus the mean and standard deviation over seeds per method and pair.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import muse_tf  # noqa: F401  (selects the Keras 2 API first)
from muse_tf.config import DEFAULT_WORK_DIR
from muse_tf.data import synthetic_dataset
from muse_tf.jobs import experiments

MAIN = "Main comparison (paper: Taobao-MM 1k)"
# (embedding optimizer, dense optimizer): the official code's, today's dense with the lazy tables,
# and tf-keras Adam for both.
PAIRS = [("sparse_adam", "adamw"), ("sparse_adam", "adam"), ("adam", "adam")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=[name for name, _, _ in experiments.TABLES[MAIN]])
    parser.add_argument("--pairs", nargs="*", default=[f"{e}+{d}" for e, d in PAIRS])
    parser.add_argument("--work-dir", default=os.path.join(DEFAULT_WORK_DIR, "optimizer_pairs"))
    parser.add_argument("--output", default=os.path.join("docs", "optimizer_pairs.json"))
    args = parser.parse_args()
    data_dir = synthetic_dataset.ensure_default_dataset(DEFAULT_WORK_DIR)
    runs, summary = [], {}
    for pair in args.pairs:
        embedding, dense = pair.split("+")
        extra = [f"train.embedding_optimizer={embedding}", f"train.dense_optimizer={dense}"]
        for name, overrides, _ in (row for row in experiments.TABLES[MAIN] if row[0] in args.methods):
            scores = []
            for seed in range(args.seeds):
                work_dir = os.path.join(args.work_dir, pair)
                result = experiments.run_one(overrides, seed, data_dir, work_dir, extra)
                runs.append({"pair": pair, "method": name, "seed": seed, **result})
                scores.append(result["gauc"])
                print(f"{pair} {name} seed {seed}: GAUC {result['gauc']:.4f}", flush=True)
            summary.setdefault(pair, {})[name] = {"gauc_mean": float(np.mean(scores)),
                                                  "gauc_std": float(np.std(scores))}
            with open(args.output, "w") as f:
                json.dump({"summary": summary, "runs": runs}, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
