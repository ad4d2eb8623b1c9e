"""Training throughput: examples/second of DIN, SIM-soft and MUSE at history L = 1,000, K = 50,
batch 1,000 on CPU, with and without XLA, and MUSE with its search precomputed by the input pipeline.

    python -m benchmarks.train_throughput [--quick] [--output benchmarks/results/train_throughput.json]

Four parts:
* **step**: the Keras train step (two Adam optimizers, as ``muse_tf.train``) on one in-memory batch
  shaped like the converted data (8 samples per user share a history), so the input pipeline is
  out of the picture. Examples/s = batch / median step time.
* **end-to-end**: the training job's ``fit`` (its strategy, input pipeline, optimizers and
  callbacks: ``muse_tf.jobs.training``) for one epoch to the end of the converted synthetic data, each
  case in a fresh process: MUSE with its search in-graph, with tf-keras converted by AutoGraph (as
  before ``muse_tf.models.tracing``) and not, and with its search precomputed in the pipeline. Reported:
  the first step (tracing included), steady-state examples/s (median step after it), whole-run
  examples/s (``fit`` called to returned) and the seconds from the last step's end to ``fit``
  returning. The model's outputs on one batch, search in-graph and precomputed, are compared.
* **profile**: the MUSE step taken apart (forward pieces timed as separate functions; the
  ``ref:`` rows time the per-position way the search worked before, for comparison).
* **op time**: the MUSE step as the training job compiles it, under TensorFlow's profiler: the
  kernels' time per step by op type, summed over the threads (work, not wall time), the largest
  first: where the step's CPU goes, and what a change to it moved.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import common, fixtures
from muse_tf.contract import dataset_dir, features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data import reader
from muse_tf.layers import search
from muse_tf.models import tracing

VARIANTS = ("din", "sim_soft", "muse")
STEP_COLUMNS = ["variant", "search", "xla", "batch", "history", "examples_per_s", "step_p50_ms",
                "step_p90_ms", "steps"]
E2E_COLUMNS = ["variant", "search", "keras_autograph", "batch", "history", "steps", "first_step_s",
               "step_p50_ms", "examples_per_s", "whole_run_examples_per_s", "post_last_step_s"]
E2E_CASES = (("in-graph", "converted"), ("in-graph", "unconverted"), ("precomputed", "unconverted"))
PROFILE_COLUMNS = ["part", "p50_ms", "share_of_step"]
OP_TIME_COLUMNS = ["op_type", "ms_per_step", "share_of_op_time"]
OP_TIME_MIN_SHARE = 0.01  # op types below 1% of the op time are summed into one row


class StepTimer(tf_keras.callbacks.Callback):
    """Times each train step; stops training once ``max_seconds`` have passed."""

    def __init__(self, max_seconds: float):
        super().__init__()
        self.max_seconds = max_seconds
        self.times: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter() - self.step_start)
        if time.perf_counter() - self.started > self.max_seconds:
            self.model.stop_training = True


def compiled_model(variant: str, sizes: dict[str, int], table: np.ndarray, xla: bool) -> tf_keras.Model:
    model = fixtures.random_model(fixtures.paper_config(variant, sizes), table)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(2e-4),
        embedding_optimizer=tf_keras.optimizers.Adam(2e-3),
        jit_compile=xla,
    )
    return model


def job_compiled_model(variant: str, sizes: dict[str, int], table: np.ndarray) -> tf_keras.Model:
    """``variant`` compiled as the training job compiles it: its default optimizers and rates
    (SparseAdam on the embedding tables, AdamW on the rest) and its metrics."""
    from muse_tf.config import ExperimentConfig, TrainConfig
    from muse_tf.jobs import training

    model = fixtures.random_model(fixtures.paper_config(variant, sizes), table)
    training.compile_model(model, ExperimentConfig(model=model.config, train=TrainConfig()), 1)
    return model


def first_and_steady(model: tf_keras.Model, x: dict[str, tf.Tensor], y: tf.Tensor, steps: int,
                     warmup: int = 2) -> dict:
    """One ``fit`` over the in-memory batch repeated: the first step (tracing included), then
    ``warmup`` steps not counted, then the steady state over ``steps`` steps."""
    timer = StepTimer(max_seconds=float("inf"))
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1,
              steps_per_epoch=1 + warmup + steps, verbose=0, callbacks=[timer])
    steady = common.summarize(timer.times[1 + warmup:])
    return {
        "first_step_s": round(timer.times[0], 3),
        "step_p50_ms": steady["p50_ms"],
        "step_p90_ms": steady["p90_ms"],
        "examples_per_s": round(len(y) / (steady["p50_ms"] / 1e3), 1),
        "steps": steady["n"],
    }


def fit_throughput(
    model: tf_keras.Model, dataset: tf.data.Dataset, batch: int, steps: int, max_seconds: float
) -> dict:
    """Warm-up steps (tracing, XLA compilation), then ``steps`` timed steps (bounded in time)."""
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    timer = StepTimer(max_seconds)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    summary = common.summarize(timer.times)
    return {
        "examples_per_s": round(batch / (summary["p50_ms"] / 1e3), 1),
        "step_p50_ms": summary["p50_ms"],
        "step_p90_ms": summary["p90_ms"],
        "steps": summary["n"],
    }


def step_rows(sizes: dict, table: np.ndarray, batch: int, length: int, steps: int,
              max_seconds: float, variants: tuple[str, ...] = VARIANTS,
              xla_modes: tuple[bool, ...] = (False, True)) -> list[dict]:
    x, y = fixtures.training_batch(sizes, batch, length)
    rows = []
    cases = [(v, "in-graph", xla) for v in variants for xla in xla_modes]
    if "muse" in variants:
        precomputed = search.gsu_precompute(table, fixtures.paper_config("muse", sizes).top_k)(x)
        cases += [("muse", "precomputed", xla) for xla in xla_modes]
    for variant, how, xla in cases:
        inputs = precomputed if how == "precomputed" else x
        dataset = tf.data.Dataset.from_tensors((inputs, y)).repeat()
        row = {"table": "step", "variant": variant, "search": how if variant != "din" else "-",
               "xla": xla, "batch": batch, "history": length}
        try:
            model = compiled_model(variant, sizes, table, xla)
            row.update(fit_throughput(model, dataset, batch, steps, max_seconds))
        except Exception as error:  # e.g. an op XLA cannot compile: record it, go on
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        print(row, flush=True)
        rows.append(row)
    return rows


class PhaseTimer(tf_keras.callbacks.Callback):
    """Each step's seconds and when the last one ended (``perf_counter``)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.last_step_end = time.perf_counter()
        self.times.append(self.last_step_end - self.step_start)


def convert_keras_again() -> None:
    """Drops ``muse_tf.models.tracing``'s rules: tracing as it was before them, for comparison."""
    from tensorflow.python.autograph.core import config

    ours = (tracing.KERAS_PACKAGE, *tracing.MODEL_PACKAGES)
    config.CONVERSION_RULES = tuple(rule for rule in config.CONVERSION_RULES
                                    if not any(rule.matches(package) for package in ours))


def end_to_end_child(data_dir: str, how: str, keras_autograph: str, batch: int, length: int) -> dict:
    """One epoch to the end of the training split, as ``muse_tf.jobs.training.fit`` runs it."""
    from muse_tf.config import ExperimentConfig, TrainConfig
    from muse_tf.jobs import distribute, runs, training

    if keras_autograph == "converted":
        convert_keras_again()
    sizes = dataset_dir.vocab_sizes(data_dir)
    table = dataset_dir.load_multimodal_table(data_dir)
    experiment = ExperimentConfig(model=fixtures.paper_config("muse", sizes),
                                  train=TrainConfig(batch_size=batch, history_length=length,
                                                    shuffle=True, seed=0))
    strategy = distribute.make_strategy()
    steps = training.steps_per_epoch(experiment.train, training.training_samples(data_dir, experiment.train),
                                     experiment.train.global_batch_size(strategy.num_replicas_in_sync))
    with strategy.scope():
        model = fixtures.random_model(experiment.model, table)
        training.compile_model(model, experiment, steps)
    if how == "precomputed":
        files = dataset_dir.split_files(data_dir, "train")
        dataset = strategy.distribute_datasets_from_function(lambda context: reader.make_dataset(
            files, context.get_per_replica_batch_size(batch), history_length=length,
            shuffle=True, seed=0, repeat=True, input_context=context, drop_remainder=True,
            precompute_gsu=table, top_k=experiment.model.top_k))
    else:
        dataset = training.train_dataset(strategy, data_dir, experiment)
    timer = PhaseTimer()
    with tempfile.TemporaryDirectory() as model_dir:
        run_dir = runs.RunDir(model_dir)
        os.makedirs(run_dir.worker().root, exist_ok=True)
        started = time.perf_counter()
        training.keras_fit(model, dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                           callbacks=[*training.make_callbacks(run_dir, experiment, data_dir), timer])
        returned = time.perf_counter()
    steady = common.summarize(timer.times[1:])
    return {
        "table": "end-to-end", "variant": "muse", "search": how,
        "keras_autograph": keras_autograph, "batch": batch, "history": length, "steps": steps,
        "first_step_s": round(timer.times[0], 2),
        "step_p50_ms": steady["p50_ms"],
        "examples_per_s": round(batch / (steady["p50_ms"] / 1e3), 1),
        "whole_run_examples_per_s": round(batch * steps / (returned - started), 1),
        "post_last_step_s": round(returned - timer.last_step_end, 2),
    }


def end_to_end_rows(work_dir: str, users: int, batch: int, length: int) -> tuple[list[dict], dict]:
    data_dir = fixtures.converted_dataset(work_dir, fixtures.DatasetSpec(users, length))
    rows = []
    for how, keras_autograph in E2E_CASES:
        rows.append(common.run_json_subprocess(
            "benchmarks.train_throughput",
            ["--child", os.path.abspath(data_dir), how, keras_autograph, str(batch), str(length)],
            3600))
        print(rows[-1], flush=True)
    # Output unchanged: the same model scores one batch with its search in-graph and precomputed.
    sizes = dataset_dir.vocab_sizes(data_dir)
    table = dataset_dir.load_multimodal_table(data_dir)
    files = dataset_dir.split_files(data_dir, "train")
    x, _ = next(iter(reader.make_dataset(files, batch, history_length=length)))
    model = fixtures.random_model(fixtures.paper_config("muse", sizes), table)
    plain = model(x, training=False).numpy()
    with_search = model(search.gsu_precompute(table, model.config.top_k)(x), training=False).numpy()
    equality = {"batch": int(len(plain)), "max_abs_logit_diff": float(np.abs(plain - with_search).max())}
    return rows, equality


def profile_rows(sizes: dict, table: np.ndarray, batch: int, length: int, max_seconds: float) -> list[dict]:
    """Forward pieces of the MUSE step, each its own tf.function on the same batch."""
    x, y = fixtures.training_batch(sizes, batch, length)
    model = compiled_model("muse", sizes, table, False)
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=1, verbose=0)
    xi = {name: tf.cast(x[name], tf.int32) for name in TAOBAO_MM.model_features}
    items = xi[features.HISTORY_ITEMS]
    mask = tf.not_equal(items, features.PAD)
    vectors = model.multimodal_vectors
    target_mm, _ = vectors.unit(xi[features.ITEM_ID])
    recent = items[:, -model.config.recent_length:]
    top_k = model.config.top_k
    recent_emb = model.embeddings.behaviour(recent, xi[features.HISTORY_CATEGORIES][:, -50:])
    target = model.embeddings.behaviour(xi[features.ITEM_ID], xi[features.ITEM_CATEGORY])
    history = search.SearchInputs(target_items=xi[features.ITEM_ID], history_items=items,
                                  history_mask=mask, multimodal=vectors)
    parts = {
        "train step (forward + backward + 2 Adam)": lambda: model.train_function(iter([(x, y)])),
        "forward (training=True)": lambda: model(x, training=True),
        "GSU: search over L (in-graph)": lambda: model.lifelong.search_unit.search(history),
        "  ref: per-position lookup of (B, L, 128)": lambda: vectors.unit(items),
        "  ref: cosine of a given (B, L, 128)": lambda: search.unit_dot(
            target_mm, vectors.unit(items)[0]),
        "  top-K of (B, L) scores": lambda: search.top_k_valid(
            tf.random.uniform(tf.shape(items)), mask, top_k),
        f"short-term attention over R = 50 ({type(model.short_term.attention).__name__})":
            lambda: model.short_term.attention(target, recent_emb, recent > 0, training=True),
        "recent multimodal cosine (a distinct history at a time)": lambda: search.item_cosines(
            xi[features.ITEM_ID], recent, vectors),
        "  ref: per-position lookup + cosine": lambda: search.unit_dot(
            target_mm, vectors.unit(recent)[0]),
    }
    functions = {name: tf.function(fn) for name, fn in parts.items()}
    rows = []
    for name, fn in functions.items():
        timing = common.time_calls(lambda fn=fn: tf.nest.map_structure(
            lambda t: t.numpy() if hasattr(t, "numpy") else t, fn()),
            warmup=2, repeats=10, max_seconds=max_seconds)
        rows.append({"table": "profile", "part": name, "p50_ms": timing["p50_ms"]})
        print(rows[-1], flush=True)
    step = rows[0]["p50_ms"]
    for row in rows:
        row["share_of_step"] = f"{100 * row['p50_ms'] / step:.0f}%"
    return rows


def op_time_rows(sizes: dict, table: np.ndarray, batch: int, length: int, steps: int) -> list[dict]:
    """Kernel time per MUSE train step by op type, from TensorFlow's profiler over ``steps`` steps."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    x, y = fixtures.training_batch(sizes, batch, length)
    model = job_compiled_model("muse", sizes, table)
    batches = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    train_step = model.make_train_function()
    for _ in range(5):  # tracing, graph optimisation and the optimizers' slots
        train_step(batches)["loss"].numpy()
    with tempfile.TemporaryDirectory() as log_dir:
        tf.profiler.experimental.start(log_dir)
        for _ in range(steps):
            train_step(batches)["loss"].numpy()
        tf.profiler.experimental.stop()
        [trace] = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        with open(trace, "rb") as f:
            space = xplane_pb2.XSpace.FromString(f.read())
    by_type: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: event.name for key, event in plane.event_metadata.items()}
        for line in plane.lines:
            if not (line.name.startswith("tf_Compute") or "Inter" in line.name):
                continue  # the executor's threads only
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Kernels are named "op_name:OpType"; the executor's own spans hold them.
                if ":" in name and not name.startswith("ExecutorState"):
                    by_type[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
    total = sum(by_type.values())
    largest = [(op_type, ms) for op_type, ms in by_type.most_common() if ms >= OP_TIME_MIN_SHARE * total]
    rest = total - sum(ms for _, ms in largest)
    rows = [{"table": "op time", "op_type": op_type, "ms_per_step": round(ms, 2)} for op_type, ms in largest]
    rows += [{"table": "op time", "op_type": op_type, "ms_per_step": round(ms, 2), "summary": True}
             for op_type, ms in (("the other types", rest), ("all ops", total))]
    for row in rows:
        row["share_of_op_time"] = f"{100 * row['ms_per_step'] / total:.0f}%"
    return rows


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        result = end_to_end_child(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]))
        print(json.dumps(result))
        return result
    parser = common.base_parser("benchmarks.train_throughput", __doc__, "train_throughput.json")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "end-to-end", "profile", "op-time"])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--xla", nargs="*", default=["off", "on"], choices=["off", "on"])
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.history, args.steps = 100, 100, 3
    run = common.Run("train_throughput", args)
    users = 300 if args.quick else 2000
    max_seconds = 10.0 if args.quick else 40.0
    sizes = fixtures.train_vocab_sizes()
    table = fixtures.multimodal_table(sizes["item"])
    rows: list[dict] = []
    if "profile" not in args.skip:
        rows += profile_rows(sizes, table, args.batch, args.history, max_seconds / 4)
    if "op-time" not in args.skip:
        rows += op_time_rows(sizes, table, args.batch, args.history, args.steps)
    if "step" not in args.skip:
        rows += step_rows(sizes, table, args.batch, args.history, args.steps, max_seconds,
                          tuple(args.variants), tuple(mode == "on" for mode in args.xla))
    if "end-to-end" not in args.skip:
        e2e, equality = end_to_end_rows(args.work_dir, users, args.batch, args.history)
        rows += e2e
        run.extra["precomputed_search_output_check"] = equality
        print("precomputed vs in-graph search, model outputs:", equality)
    return run.finish(rows, {"step": STEP_COLUMNS, "end-to-end": E2E_COLUMNS,
                             "profile": PROFILE_COLUMNS, "op time": OP_TIME_COLUMNS})


if __name__ == "__main__":
    main()
