"""Reproduce the shape of the paper's tables on the planted synthetic dataset.

    python -m muse_tf.experiments [--seeds 3] [--data DIR] [--output experiments.md]

Trains every distinct configuration the tables need once per seed, evaluates exact GAUC/AUC on the
test split and writes a Markdown table (mean and standard deviation over seeds) next to the paper's
figures, plus the raw results as JSON. Runs read their input in a fixed order
(``train.deterministic``), so a configuration and seed give the same figures every time; with a
parallel, unordered input one seed's GAUC moved by up to 0.037 between two identical runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from muse_tf import cli, strict_json, train
from muse_tf.config import (
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    packaged_config_path,
)

# (row name, ModelConfig overrides, paper GAUC). Tables 1-3 are the paper's production-5k figures,
# the main comparison its open-source Taobao-MM-1k figures.
TABLES: dict[str, list[tuple[str, dict, float]]] = {
    "Main comparison (paper: Taobao-MM 1k)": [
        ("DIN", {"variant": "din"}, 0.6082),
        ("DIN, ID features only (no recent SimTier)", {"variant": "din_id_only"}, float("nan")),
        ("SIM-hard", {"variant": "sim_hard"}, 0.6139),
        ("SIM-soft", {"variant": "sim_soft"}, 0.6135),
        ("MUSE", {"variant": "muse"}, 0.6154),
    ],
    "GSU embedding, same ESU (paper Table 1, production)": [
        ("ID", {"variant": "muse", "gsu": "id"}, 0.6356),
        ("Multimodal (SCL)", {"variant": "muse"}, 0.6377),
    ],
    "Retrieval complexity (paper Table 2, production)": [
        ("MM cosine", {"variant": "muse"}, 0.6377),
        ("MM + ID cosine", {"variant": "muse", "gsu": "mm_id"}, 0.6379),
    ],
    "ESU ablation, multimodal GSU (paper Table 3, production)": [
        ("TA", {"variant": "ta"}, 0.6301),
        ("SimTier", {"variant": "simtier"}, 0.6345),
        ("TA + SimTier", {"variant": "ta_simtier"}, 0.6361),
        ("SA-TA", {"variant": "sata"}, 0.6339),
        ("SA-TA + SimTier (MUSE)", {"variant": "muse"}, 0.6377),
    ],
}


def run_key(overrides: dict) -> str:
    """A configuration's directory name (its override values, sorted by key), shared by rows that
    train the same model so it is trained once."""
    return "-".join(f"{value}" for _, value in sorted(overrides.items()))


def experiment_config(
    overrides: dict, seed: int, extra: Sequence[str], config_path: str | None = None
) -> ExperimentConfig:
    """The config file (default: the embedded default's) with a row's model ``overrides``,
    ``seed``, a fixed input order, and the command line's ``--set`` overrides applied last."""
    values = load_yaml(config_path or packaged_config_path())
    values.setdefault("model", {}).update(overrides)
    values.setdefault("train", {}).update(seed=seed, deterministic=True)
    return from_dict(ExperimentConfig, apply_overrides(values, extra))


def run_one(
    overrides: dict, seed: int, data_dir: str, work_dir: str, extra: Sequence[str],
    config_path: str | None = None,
) -> dict:
    """Trains and evaluates one configuration with one seed (``experiment_config``); returns its
    test metrics.

    A finished run of the same configuration is trained again (``overwrite``), so re-running the
    experiments always measures the current code."""
    from muse_tf import training  # TensorFlow, after the command line is parsed

    model_dir = os.path.join(work_dir, run_key(overrides), f"seed{seed}")
    result = training.run(experiment_config(overrides, seed, extra, config_path), data_dir, model_dir,
                       export=False, overwrite=True, verbose=0)
    return {"auc": result["eval"]["auc"], "gauc": result["eval"]["gauc"]}


def markdown(results: dict[str, list[dict]], seeds: Sequence[int]) -> str:
    """One Markdown table per paper table: mean ± std over seeds beside the paper's GAUC."""
    lines = [f"Seeds: {list(seeds)}. GAUC/AUC on the synthetic test split, mean ± std.", ""]
    for title, rows in TABLES.items():
        lines += [f"### {title}", "", "| method | GAUC | AUC | paper GAUC |", "|---|---|---|---|"]
        for name, overrides, paper in rows:
            runs = results[run_key(overrides)]
            gauc = np.array([r["gauc"] for r in runs])
            auc = np.array([r["auc"] for r in runs])
            paper_text = "-" if np.isnan(paper) else f"{paper:.4f}"  # nan: no paper figure
            lines.append(f"| {name} | {gauc.mean():.4f} ± {gauc.std():.4f} | "
                         f"{auc.mean():.4f} ± {auc.std():.4f} | {paper_text} |")
        lines.append("")
    return "\n".join(lines)


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.experiments``."""
    parser = cli.parser("muse_tf.experiments", __doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--data", help="converted dataset (default: the embedded synthetic one)")
    parser.add_argument("--work-dir", default=os.path.join(train.DEFAULT_WORK_DIR, "experiments"))
    parser.add_argument("--output", default="experiments.md", help="Markdown result file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every run, e.g. train.epochs=1")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
    return parser


def experiments(args: argparse.Namespace) -> str:
    """Every configuration x seed; writes and returns the Markdown report."""
    configurations = {run_key(o): o for rows in TABLES.values() for _, o, _ in rows}
    for overrides in configurations.values():  # a bad --set fails before any training
        experiment_config(overrides, 0, args.overrides)
    from muse_tf.synthetic_dataset import ensure_default_dataset

    data_dir = args.data or ensure_default_dataset(train.DEFAULT_WORK_DIR)
    seeds = list(range(args.seeds))
    results: dict[str, list[dict]] = {}
    for index, (key, overrides) in enumerate(configurations.items(), start=1):
        for seed in seeds:
            print(f"[{index}/{len(configurations)}] {key} seed {seed}", flush=True)
            result = run_one(overrides, seed, data_dir, args.work_dir, args.overrides)
            results.setdefault(key, []).append(result)
            print(f"    GAUC {results[key][-1]['gauc']:.4f}", flush=True)
    report = markdown(results, seeds)
    with open(args.output, "w") as f:
        f.write(report + "\n")
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        strict_json.dump(results, f, indent=2)
    print(report)
    return report


def main(argv: Sequence[str] | None = None) -> str:
    """``python -m muse_tf.experiments``: every configuration x seed; returns the Markdown report."""
    return cli.run(experiments, arguments(), argv)


if __name__ == "__main__":
    main()
