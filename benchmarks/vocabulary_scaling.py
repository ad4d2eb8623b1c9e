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

The ``run`` table times the training job itself (``muse_tf.jobs.training.run``, default backups:
the embedded default run's config, ``muse_tf/configs/synthetic.yaml``, one epoch of its synthetic
dataset) on copies of that dataset whose item vocabulary is padded to each size with IDs that never
occur (a larger item table and multimodal table, the same samples), in a fresh process each:

* ``train_s``: the job's ``train_seconds`` (``fit`` from its first callback to its last, backups
  included); ``run_s``: the whole ``training.run`` call without evaluation and export (dataset and
  table digests, model creation, table load, ``fit``, final weights);
* ``setup_s``: model creation and table load (``runs.build_model``); ``load_s``: loading the
  trained model afterwards as evaluation and export do (``runs.load_trained_model``, same
  process: the table's digest already read); ``written_mb``: what the run directory holds once
  training ends (final weights, any backup, logs); ``ratio_to_smallest``: ``run_s`` over the
  smallest size's;
* ``user_s``, ``kernel_s``: the CPU time of the ``training.run`` call in user code and in the kernel
  (all threads); the kernel's share is mostly handing out fresh memory (every table, moment and
  file written is memory touched for the first time), which ``first_touch_mb_s``, measured just
  before the call (``common.first_touch_mb_per_s``), prices on the machine at hand.

The ``resume`` table times the same job resumed from a backup: a first process trains with a backup
every ``RESUME_BACKUP_STEPS`` steps and stops after step ``RESUME_STOP_STEP``, as a kill would;
a fresh one then runs the job again in the same run directory (``setup_s``: its model creation,
its ID tables made as zeros for the backup to overwrite; ``run_s``: the whole ``training.run``
call, restore and the remaining steps included).
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks import common

COLUMNS = ["items", "embedding_optimizer", "step_p50_ms", "examples_per_s", "ratio_to_smallest",
           "first_step_s", "whole_run_examples_per_s", "peak_rss_mb", "steps"]
RUN_COLUMNS = ["items", "train_s", "run_s", "ratio_to_smallest", "setup_s", "load_s", "user_s",
               "kernel_s", "first_touch_mb_s", "steps", "written_mb", "peak_rss_mb"]
RESUME_COLUMNS = ["items", "setup_s", "run_s", "resumed_from_step", "steps"]
RESUME_BACKUP_STEPS, RESUME_STOP_STEP = 20, 30
OPTIMIZERS = ("adam", "sparse_adam")
SIZES = (20_000, 1_000_000, 10_000_000)


def child(items: int, optimizer: str, batch: int, length: int, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    import muse_tf  # noqa: F401
    from benchmarks import fixtures
    from benchmarks.train_throughput import StepTimer
    from muse_tf.models import MuseModel, optimizers

    small = fixtures.train_vocab_sizes()
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


def padded_dataset(data_dir: str, items: int, work_dir: str) -> str:
    """A copy of ``data_dir`` (its files linked, not copied) whose item vocabulary and multimodal
    table are padded to ``items`` rows with IDs no sample holds."""
    import os

    import numpy as np

    from muse_tf.contract import dataset_dir, vocabulary

    ids = dataset_dir.load_vocabulary(data_dir, "item")
    padding = max(0, items - vocabulary.table_rows(ids))
    target = os.path.join(work_dir, f"padded-{items}")
    if os.path.exists(target):
        return target
    for root, _, names in os.walk(data_dir):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), data_dir)
            os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(root, name)), os.path.join(target, relative))
    item_path = dataset_dir.vocab_path(target, "item")
    os.remove(item_path)
    np.save(item_path, np.concatenate([ids, np.arange(padding, dtype=ids.dtype) + ids.max() + 1]))
    table_path = os.path.join(target, dataset_dir.MULTIMODAL_TABLE)
    table = dataset_dir.load_multimodal_table(data_dir)
    os.remove(table_path)
    padded = np.lib.format.open_memmap(table_path, "w+", table.dtype, (len(table) + padding, table.shape[1]))
    padded[: len(table)] = table
    padded.flush()
    return target


def default_job(items: int, work_dir: str) -> tuple:
    """The embedded default run's config and its dataset padded to ``items`` rows."""
    from muse_tf.config import ExperimentConfig, from_dict, load_yaml, packaged_config_path
    from muse_tf.data.synthetic_dataset import ensure_default_dataset

    experiment = from_dict(ExperimentConfig, load_yaml(packaged_config_path()))
    data_dir = ensure_default_dataset(work_dir, None, experiment.train.history_length)
    return experiment, padded_dataset(data_dir, items, work_dir)


def time_model_builds() -> dict:
    """From now on, ``setup["seconds"]`` of the returned dict holds the last ``runs.build_model``
    call's time."""
    from muse_tf.jobs import runs

    build_model = runs.build_model
    setup = {}

    def timed_build(*args, **kwargs):
        started = time.perf_counter()
        model = build_model(*args, **kwargs)
        setup["seconds"] = time.perf_counter() - started
        return model

    runs.build_model = timed_build
    return setup


def run_child(items: int, work_dir: str) -> dict:
    """The training job (default backups) on the default run's dataset padded to ``items`` rows."""
    import os
    import tempfile

    from muse_tf.jobs import runs, training

    experiment, data_dir = default_job(items, work_dir)
    setup = time_model_builds()
    written = []
    finish = runs.RunDir.finish

    def measured_finish(self, result):  # what the run wrote, before it drops the backup
        written.append(sum(os.path.getsize(os.path.join(root, name))
                           for root, _, names in os.walk(self.root) for name in names))
        finish(self, result)

    runs.RunDir.finish = measured_finish
    first_touch = common.first_touch_mb_per_s()
    with tempfile.TemporaryDirectory(dir=work_dir) as model_dir:
        user, kernel = common.cpu_seconds()
        started = time.perf_counter()
        result = training.run(experiment, data_dir, model_dir, evaluate=False, export=False, verbose=0)
        whole = time.perf_counter() - started
        user_after, kernel_after = common.cpu_seconds()
        setup_s = setup["seconds"]  # before the load's own build_model replaces it
        started = time.perf_counter()
        runs.load_trained_model(model_dir, data_dir)
        load_s = time.perf_counter() - started
    return {
        "items": items, "train_s": result["train_seconds"], "run_s": round(whole, 1),
        "setup_s": round(setup_s, 1), "load_s": round(load_s, 1), "steps": result["steps_run"],
        "written_mb": round(written[0] / 2**20, 1), "user_s": round(user_after - user, 1),
        "kernel_s": round(kernel_after - kernel, 1), "first_touch_mb_s": first_touch,
    }


def resume_child(items: int, work_dir: str, stage: str) -> dict:
    """``stage`` "stop": the job with a backup every ``RESUME_BACKUP_STEPS`` steps, stopped after
    step ``RESUME_STOP_STEP`` once its backups are written; "resume": the same job again, in the
    same run directory."""
    import dataclasses
    import os
    import shutil

    import tf_keras

    from muse_tf.jobs import backup, training

    experiment, data_dir = default_job(items, work_dir)
    experiment = dataclasses.replace(experiment, train=dataclasses.replace(
        experiment.train, backup_every_steps=RESUME_BACKUP_STEPS))
    model_dir = os.path.join(work_dir, f"resume-{items}")
    if stage == "resume":
        setup = time_model_builds()
        started = time.perf_counter()
        result = training.run(experiment, data_dir, model_dir, evaluate=False, export=False, verbose=0)
        whole = time.perf_counter() - started
        shutil.rmtree(model_dir)
        return {"items": items, "setup_s": round(setup["seconds"], 1), "run_s": round(whole, 1),
                "resumed_from_step": result["resumed_from_step"], "steps": result["steps_run"]}

    class Stopped(Exception):
        pass

    class Stop(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == RESUME_STOP_STEP:
                raise Stopped()

    make_callbacks = training.make_callbacks
    training.make_callbacks = lambda *args, **kwargs: [*make_callbacks(*args, **kwargs), Stop()]
    shutil.rmtree(model_dir, ignore_errors=True)
    try:
        training.run(experiment, data_dir, model_dir, evaluate=False, export=False, verbose=0)
    except Stopped:
        backup.wait_for_backups()
    return {"items": items}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--run-child"], ["--resume-child"]):
        if argv[0] == "--child":
            result = child(int(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
        elif argv[0] == "--run-child":
            result = run_child(int(argv[1]), argv[2])
        else:
            result = resume_child(int(argv[1]), argv[2], argv[3])
        result["peak_rss_mb"] = common.peak_rss_mb()
        print(json.dumps(result))
        return result
    parser = common.base_parser("benchmarks.vocabulary_scaling", __doc__, "vocabulary_scaling.json")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES), help="item rows")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "run", "resume"],
                        help="tables not to measure")
    args = parser.parse_args(argv)
    batch, length = (100, 100) if args.quick else (1000, 1000)
    sizes = [20_000, 200_000] if args.quick else args.sizes
    run = common.Run("vocabulary_scaling", args)
    rows = []
    for optimizer in OPTIMIZERS if "step" not in args.skip else ():
        for items in sizes:
            result = common.run_json_subprocess(
                "benchmarks.vocabulary_scaling",
                ["--child", str(items), optimizer, str(batch), str(length), str(args.steps)], 3600)
            rows.append({"table": "vocabulary", **result})
            print(rows[-1], flush=True)
    for row in rows:
        smallest = next(r for r in rows if r["embedding_optimizer"] == row["embedding_optimizer"])
        row["ratio_to_smallest"] = round(row["step_p50_ms"] / smallest["step_p50_ms"], 2)
    runs_ = []
    for items in sizes if "run" not in args.skip else ():
        result = common.run_json_subprocess(
            "benchmarks.vocabulary_scaling", ["--run-child", str(items), args.work_dir], 3600)
        runs_.append({"table": "run", **result})
        runs_[-1]["ratio_to_smallest"] = round(result["run_s"] / runs_[0]["run_s"], 2)
        print(runs_[-1], flush=True)
    resumes = []
    for items in sizes if "resume" not in args.skip else ():
        for stage in ("stop", "resume"):
            result = common.run_json_subprocess(
                "benchmarks.vocabulary_scaling", ["--resume-child", str(items), args.work_dir, stage], 3600)
        resumes.append({"table": "resume", **result})
        print(resumes[-1], flush=True)
    return run.finish(rows + runs_ + resumes,
                      {"vocabulary": COLUMNS, "run": RUN_COLUMNS, "resume": RESUME_COLUMNS})


if __name__ == "__main__":
    main()
