"""The official preset against training options beyond it, paired by seed (docs/experiments.md).

    python docs/presets_study.py --data DIR [--seeds 3] [--methods MUSE DIN ...] [--options ...]

Each option is a preset file of ``muse_tf/configs`` plus ``--set`` overrides; ``official`` is
``taobao_mm.yaml`` as it stands (the official code's settings, 1,000 samples per replica). Every run
reads its input in a fixed order (``train.deterministic``) and is evaluated on the test split with
exact GAUC. An option's gain is reported per seed against the official run of the same seed and
method (a paired gap: both share the seed's initial weights and input order), so seed-to-seed spread
that both share cancels out. Results are appended to the JSON file as they come (``--output``), and
a run already recorded there is not trained again.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import muse_tf  # noqa: F401  (selects the Keras 2 API first)
from muse_tf.config import (
    DEFAULT_WORK_DIR,
    TAOBAO_MM_CONFIG,
    TAOBAO_MM_TUNED_CONFIG,
    TrainConfig,
    packaged_config_path,
)
from muse_tf.jobs import experiments

MAIN = "Main comparison (paper: Taobao-MM 1k)"


def scaled_rates(factor: int) -> list[str]:
    """Overrides of both learning rates: ``factor`` times the official ones (the defaults)."""
    official = TrainConfig()
    return [f"train.{name}={factor * getattr(official, name):g}"
            for name in ("embedding_learning_rate", "dense_learning_rate")]


LR_X5 = scaled_rates(5)
EARLY_STOPPING = ["train.epochs=4", "train.validation_fraction=0.1", "train.early_stopping_patience=1"]
# name: (preset file, overrides). The candidates the issue names: schedules, epochs with early
# stopping, the input order, the batch, the rates.
OPTIONS: dict[str, tuple[str, list[str]]] = {
    "official": (TAOBAO_MM_CONFIG, []),
    "tuned": (TAOBAO_MM_TUNED_CONFIG, []),
    "global_batch_8000": (TAOBAO_MM_CONFIG, ["train.batch_size=8000"]),  # the default before issue 22
    "lr_x3": (TAOBAO_MM_CONFIG, scaled_rates(3)),
    "lr_x5": (TAOBAO_MM_CONFIG, LR_X5),
    "lr_x10": (TAOBAO_MM_CONFIG, scaled_rates(10)),
    "lr_x20": (TAOBAO_MM_CONFIG, scaled_rates(20)),
    "warmup_cosine": (TAOBAO_MM_CONFIG, ["train.learning_rate_schedule=warmup_cosine"]),
    "warmup_cosine_lr_x5": (TAOBAO_MM_CONFIG, ["train.learning_rate_schedule=warmup_cosine", *LR_X5]),
    "shuffle": (TAOBAO_MM_CONFIG, ["train.shuffle=true"]),
    "batch_256": (TAOBAO_MM_CONFIG, ["train.per_replica_batch_size=256"]),
    "early_stopping": (TAOBAO_MM_CONFIG, EARLY_STOPPING),
    "early_stopping_lr_x5": (TAOBAO_MM_CONFIG, [*EARLY_STOPPING, *LR_X5]),
}


def paired_gaps(runs: list[dict], method: str, option: str, baseline: str = "official") -> list[float]:
    """``option``'s GAUC minus ``baseline``'s, seed by seed, over the seeds both have."""
    scores = {(r["option"], r["seed"]): r["gauc"] for r in runs if r["method"] == method}
    seeds = sorted(s for o, s in scores if o == option and (baseline, s) in scores)
    return [scores[(option, s)] - scores[(baseline, s)] for s in seeds]


def markdown(runs: list[dict], methods: list[str], options: list[str]) -> str:
    """One row per method and option: GAUC mean ± std, and the paired gap to the official preset
    (mean ± std over seeds, and each seed's)."""
    lines = ["| method | option | GAUC | AUC | gap to official, paired | per seed |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        for option in options:
            mine = [r for r in runs if r["method"] == method and r["option"] == option]
            if not mine:
                continue
            gauc = np.array([r["gauc"] for r in mine])
            auc = np.array([r["auc"] for r in mine])
            gaps = np.array(paired_gaps(runs, method, option))
            gap = "-" if option == "official" or not len(gaps) else f"{gaps.mean():+.4f} ± {gaps.std():.4f}"
            seeds = "-" if option == "official" else ", ".join(f"{g:+.4f}" for g in gaps)
            lines.append(f"| {method} | {option} | {gauc.mean():.4f} ± {gauc.std():.4f} | "
                         f"{auc.mean():.4f} ± {auc.std():.4f} | {gap} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="converted dataset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=["DIN", "SIM-hard", "SIM-soft", "MUSE"])
    parser.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--work-dir", default=os.path.join(DEFAULT_WORK_DIR, "presets_study"))
    parser.add_argument("--output", default=os.path.join("docs", "presets_study.json"))
    args = parser.parse_args()
    rows = {name: overrides for name, overrides, _ in experiments.TABLES[MAIN]}
    runs = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            runs = json.load(f)["runs"]
    done = {(r["option"], r["method"], r["seed"]) for r in runs}
    for option in args.options:
        preset, extra = OPTIONS[option]
        for method in args.methods:
            for seed in range(args.seeds):
                if (option, method, seed) in done:
                    continue
                result = experiments.run_one(rows[method], seed, args.data,
                                             os.path.join(args.work_dir, option), extra,
                                             packaged_config_path(preset))
                runs.append({"option": option, "method": method, "seed": seed, **result})
                print(f"{option} {method} seed {seed}: GAUC {result['gauc']:.4f}", flush=True)
                with open(args.output, "w") as f:
                    json.dump({"data": args.data, "options": OPTIONS, "runs": runs}, f, indent=2)
    print(markdown(runs, args.methods, list(OPTIONS)))


if __name__ == "__main__":
    main()
