"""The paper's tables reproduced in shape (the job of ``python -m muse_tf.experiments``): every
configuration a table needs, trained once per seed and evaluated, reported as Markdown."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from muse_tf.config import (
    DEFAULT_WORK_DIR,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    packaged_config_path,
)
from muse_tf.contract import strict_json

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
    from muse_tf.jobs import training  # TensorFlow, after the command line is parsed

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


def experiments(args: argparse.Namespace) -> str:
    """Every configuration x seed; writes and returns the Markdown report."""
    configurations = {run_key(o): o for rows in TABLES.values() for _, o, _ in rows}
    for overrides in configurations.values():  # a bad --set fails before any training
        experiment_config(overrides, 0, args.overrides)
    from muse_tf.data.synthetic_dataset import ensure_default_dataset

    data_dir = args.data or ensure_default_dataset(DEFAULT_WORK_DIR)
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
