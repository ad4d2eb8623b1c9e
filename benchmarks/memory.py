"""Peak resident memory (VmHWM) of serving at L = 100,000 and of training at batch 1,000, each in a
fresh process so that nothing else measured before inflates it.

    python -m benchmarks.memory [--quick] [--output benchmarks/results/memory.json]

Cases (each ``python -m benchmarks.memory --child CASE`` in its own subprocess):
* ``import``: ``import muse_tf, tensorflow`` only: the floor every other case includes;
* ``serve C=..``: load the exported SavedModel (250,000-item table) and run ``rank`` with
  L = 100,000 and C candidates 5 times (in-process, as the local server and TF Serving would);
* ``serve rows B=10``: the same for ``serving_default`` with 10 rows of width 100,000, the export's
  default rows x width limit (1,000,000);
* ``train <variant>``: MUSE / DIN, batch 1,000, L = 1,000, K = 50: 5 Keras train steps on an
  in-memory batch (in-graph search, and search precomputed by ``muse_tf.data.reader``);
* ``table <initializer>``: one 10,000,000 x 16 float32 ID table (640 MB) created by tf-keras's
  ``RandomNormal`` and by ``InPlaceRandomNormal`` (the model's): what creating it peaks at, over the
  variable itself.
The local server's own peak RSS, after the whole latency grid, is in serving_latency.json.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks import common

COLUMNS = ["case", "peak_rss_mb", "rss_after_setup_mb", "detail"]


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(case: str, args: list[str]) -> dict:
    import tensorflow as tf

    from benchmarks import fixtures
    from muse_tf.contract import signatures

    if case == "import":
        return {"rss_after_setup_mb": current_rss_mb()}
    if case == "serve":
        length, candidates, work_dir = int(args[0]), int(args[1]), args[2]
        base_path = fixtures.export_serving_model(os.path.join(work_dir, "serving_export"))
        rank = tf.saved_model.load(os.path.join(base_path, "1")).signatures[signatures.RANK]
        setup = current_rss_mb()
        request = {k: tf.constant(v) for k, v in fixtures.rank_request(length, candidates).items()}
        for _ in range(5):
            rank(**request)[signatures.LOGIT].numpy()
        return {"rss_after_setup_mb": setup, "detail": f"rank L={length:,} C={candidates}"}
    if case == "serve_rows":
        width, rows, work_dir = int(args[0]), int(args[1]), args[2]
        base_path = fixtures.export_serving_model(os.path.join(work_dir, "serving_export"))
        serving_default = tf.saved_model.load(os.path.join(base_path, "1")).signatures[
            "serving_default"]
        setup = current_rss_mb()
        request = {k: tf.constant(v) for k, v in fixtures.rows_request(width, rows).items()}
        for _ in range(5):
            serving_default(**request)["logit"].numpy()
        return {"rss_after_setup_mb": setup,
                "detail": f"serving_default B={rows} W={width:,} (B x W = {rows * width:,})"}
    if case == "train":
        import tf_keras

        from muse_tf.contract import vocabulary
        from muse_tf.layers import search

        variant, batch, length, how = args[0], int(args[1]), int(args[2]), args[3]
        sizes = {name: vocabulary.table_rows(ids)
                 for name, ids in fixtures.vocabularies(fixtures.TRAIN_VOCABULARY).items()}
        table = fixtures.multimodal_table(sizes["item"])
        x, y = fixtures.training_batch(sizes, batch, length)
        config = fixtures.paper_config(variant, sizes)
        if how == "precomputed":
            x = search.gsu_precompute(table, config.top_k)(x)
        model = fixtures.random_model(config, table)
        model.compile(optimizer=tf_keras.optimizers.Adam(2e-4),
                      embedding_optimizer=tf_keras.optimizers.Adam(2e-3))
        setup = current_rss_mb()
        model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=5, verbose=0)
        return {"rss_after_setup_mb": setup,
                "detail": f"{variant}, search {how}, batch {batch:,}, L={length:,}, 5 steps"}
    if case == "table":
        import tf_keras

        from muse_tf.layers import InPlaceRandomNormal

        initializer, rows = args[0], int(args[1])
        cls = {"RandomNormal": tf_keras.initializers.RandomNormal,
               "InPlaceRandomNormal": InPlaceRandomNormal}[initializer]
        table_mb = rows * 16 * 4 / 2**20
        before = current_rss_mb()
        table = tf_keras.layers.Embedding(rows, 16, embeddings_initializer=cls(stddev=0.001))
        table.build(None)
        return {"rss_after_setup_mb": before,
                "detail": f"{initializer}: a {rows:,} x 16 table, {table_mb:,.0f} MB (peak over the "
                          f"variable {common.peak_rss_mb() - before - table_mb:,.0f} MB)"}
    raise ValueError(f"unknown case {case!r}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        result = child(argv[1], argv[2:])
        result["peak_rss_mb"] = common.peak_rss_mb()
        print(json.dumps(result))
        return result
    parser = common.base_parser("benchmarks.memory", __doc__, "memory.json")
    args = parser.parse_args(argv)
    run = common.Run("memory", args)
    length, batch, train_length = (10_000, 100, 100) if args.quick else (100_000, 1000, 1000)
    cases = [("import", ["import"])]
    cases += [(f"serve C={c}", ["serve", str(length), str(c), args.work_dir]) for c in (100, 500)]
    cases += [("serve rows B=10", ["serve_rows", str(length), "10", args.work_dir])]
    cases += [(f"train {v} ({how})", ["train", v, str(batch), str(train_length), how])
              for v, how in (("muse", "in-graph"), ("muse", "precomputed"), ("din", "in-graph"))]
    cases += [(f"ID table {name}", ["table", name, str(100_000 if args.quick else 10_000_000)])
              for name in ("RandomNormal", "InPlaceRandomNormal")]
    rows = []
    for name, child_args in cases:
        result = common.run_json_subprocess("benchmarks.memory", ["--child", *child_args], 900)
        rows.append({"table": "memory", "case": name, **result})
        print(rows[-1], flush=True)
    return run.finish(rows, {"memory": COLUMNS})


if __name__ == "__main__":
    main()
