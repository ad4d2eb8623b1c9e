"""Training step time and peak memory against the item vocabulary size, for tf-keras Adam and the
lazy ``SparseAdam`` on the embedding tables.

    python -m benchmarks.vocabulary_scaling [--quick] [--sizes 20000 1000000 10000000]

Every case trains the paper's MUSE (D = 16, K = 50, L = 1,000, batch 1,000; dense weights with Adam)
on the same in-memory batch, drawn from a 20,000-item vocabulary; only the number of item rows
changes (the item embedding table, its optimizer slots and the frozen int8 multimodal table), as
when a vocabulary is padded with IDs the batch never uses. Each case runs in a fresh process:

* ``first_step_s``: the first ``fit`` step (tracing and graph optimisation included);
* ``step_p50_ms``: the median of the timed steps after it (steady state) and ``examples_per_s``;
* ``whole_run_examples_per_s``: examples / wall time of one ``fit`` call over all steps, first
  included, from ``fit`` being called to it returning;
* ``peak_rss_mb``: the process's peak resident memory (VmHWM), setup included.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks import common

COLUMNS = ["items", "embedding_optimizer", "step_p50_ms", "examples_per_s", "ratio_to_smallest",
           "first_step_s", "whole_run_examples_per_s", "peak_rss_mb", "steps"]
OPTIMIZERS = ("adam", "sparse_adam")
SIZES = (20_000, 1_000_000, 10_000_000)


def child(items: int, optimizer: str, batch: int, length: int, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    import muse_tf  # noqa: F401
    from benchmarks import fixtures
    from benchmarks.train_throughput import StepTimer
    from muse_tf.contract import dataset_dir
    from muse_tf.models import MuseModel, optimizers

    small = {name: len(ids) + dataset_dir.RESERVED
             for name, ids in fixtures.vocabularies(fixtures.TRAIN_VOCABULARY).items()}
    x, y = fixtures.training_batch(small, batch, length)  # IDs of the 20,000-item vocabulary only
    items = max(items, small["item"])  # at least the batch's vocabulary (20,000 + PAD and OOV)
    table = np.zeros((items, 128), np.int8)
    table[: small["item"]] = fixtures.multimodal_table(small["item"])
    model = MuseModel(fixtures.paper_config("muse", {**small, "item": items}))
    model(x)
    model.set_multimodal_table(table)
    del table
    model.compile(optimizer=optimizers.dense_optimizer("adam", 2e-4),
                  embedding_optimizer=optimizers.embedding_optimizer(optimizer, 2e-3))
    timer = StepTimer(max_seconds=1e9)
    started = time.perf_counter()
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=steps + 1, verbose=0,
              callbacks=[timer])
    whole = time.perf_counter() - started
    summary = common.summarize(timer.times[1:])
    return {
        "items": items,
        "embedding_optimizer": optimizer,
        "step_p50_ms": summary["p50_ms"],
        "examples_per_s": round(batch / (summary["p50_ms"] / 1e3), 1),
        "first_step_s": round(timer.times[0], 2),
        "whole_run_examples_per_s": round(batch * (steps + 1) / whole, 1),
        "steps": summary["n"],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        result = child(int(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
        result["peak_rss_mb"] = common.peak_rss_mb()
        print(json.dumps(result))
        return result
    parser = common.base_parser("benchmarks.vocabulary_scaling", __doc__, "vocabulary_scaling.json")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES), help="item rows")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    args = parser.parse_args(argv)
    batch, length = (100, 100) if args.quick else (1000, 1000)
    sizes = [20_000, 200_000] if args.quick else args.sizes
    run = common.Run("vocabulary_scaling", args)
    rows = []
    for optimizer in OPTIMIZERS:
        for items in sizes:
            result = common.run_json_subprocess(
                "benchmarks.vocabulary_scaling",
                ["--child", str(items), optimizer, str(batch), str(length), str(args.steps)], 3600)
            rows.append({"table": "vocabulary", **result})
            print(rows[-1], flush=True)
    for row in rows:
        smallest = next(r for r in rows if r["embedding_optimizer"] == row["embedding_optimizer"])
        row["ratio_to_smallest"] = round(row["step_p50_ms"] / smallest["step_p50_ms"], 2)
    return run.finish(rows, {"vocabulary": COLUMNS})


if __name__ == "__main__":
    main()
