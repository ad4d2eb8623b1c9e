"""muse-tf's MUSE train step against the official PyTorch code (alimama-tech/MUSE) on the same CPU,
in one sitting, alternated: examples/s of each and their ratio.

    python -m benchmarks.versus_official --official-dir DIR --torch-python PATH \\
        [--rounds 3] [--steps 60] [--batch 1000] [--history 1000]

``--official-dir`` is a checkout of the official code (nothing of it is copied here; it is
imported from there), ``--torch-python`` a Python with torch (CPU) and what the official model
imports (numpy, pandas, pyarrow), kept apart from muse-tf's environment, e.g.::

    git clone <alimama-tech/MUSE> /opt/MUSE && python3.11 -m venv /opt/torch-venv
    /opt/torch-venv/bin/pip install TORCH_CPU_WHEEL numpy pandas pyarrow
    # a CPU-only torch wheel: the default one brings CUDA, several GB

Each round runs the official step (``benchmarks.official_driver`` under ``--torch-python``), then
muse-tf's, each in a fresh process (official, muse-tf, official, muse-tf, ...), so that drifts of
the machine's speed hit both alike. Both train the paper's MUSE (D = 16, K = 50, batch 1,000,
L = 1,000) on the very same in-memory batch (``benchmarks.fixtures``: the embedded synthetic
dataset's vocabularies, ``--samples-per-user`` 8 samples share a history as in the converted
data, Zipf item popularity, an int8 128-d multimodal table with 10% of items without a vector),
with their own optimizers: the official SparseAdam on the tables and fused AdamW on the rest
(``config/muse.json``: 2e-3 / 2e-4), muse-tf the training job's defaults (SparseAdam + AdamW, the
same rates). Per side and round:

* ``first_step_s``: the first step (muse-tf: tracing included; official: eager, optimizer state
  created);
* ``step_p50_ms`` / ``examples_per_s``: the median of ``--steps`` steps after 2 more warm-up steps;
* ``load_average_1m``: the machine's load when the side's process started. torch's OpenMP threads
  can slow down many times over while another process holds a core (the same official step at
  batch 100, L = 100 took 43 ms and 755 ms a minute apart on a busy 2-core machine), so take the
  figures on a quiet machine (``--wait-quiet``) and check the p90s;
* official only: ``metrics_p50_ms``, the part of its step spent in its per-batch AUC, GAUC and
  confusion-matrix metrics (muse-tf's step updates its loss mean and AUC);
* ``user_s``, ``kernel_s``: the side's process CPU time in user code and in the kernel, setup
  included. With glibc's malloc, torch hands a step's large tensors back to the OS and asks for
  them again at the next step: the kernel's share is that memory, fresh every step.
  ``--official-malloc`` preloads a malloc library (jemalloc, e.g.
  ``/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`` from Debian's ``libjemalloc2``) with its decay
  off (``KEEP_FREED``), so freed memory stays with the process, as PyTorch's CPU tuning guide
  advises; muse-tf's TensorFlow keeps its memory already.

``ratio``: muse-tf's median examples/s over the rounds divided by the official's.
``--official-ddp`` wraps the official modules in DistributedDataParallel (one process, gloo), as
its launch script always does; by default they run unwrapped, as muse-tf's step runs without a
distribution strategy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from benchmarks import common
from muse_tf import cli

COLUMNS = ["round", "side", "first_step_s", "step_p50_ms", "step_p90_ms", "examples_per_s", "steps",
           "user_s", "kernel_s", "load_average_1m"]
SUMMARY_COLUMNS = ["side", "rounds", "first_step_s", "step_p50_ms", "examples_per_s"]
OFFICIAL, OURS = "official", "muse-tf"
KEEP_FREED = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # jemalloc: never return freed pages to the OS
WARMUP = 2
CHILD_TIMEOUT_S = 3600


def write_inputs(path: str, batch: int, length: int, samples_per_user: int = 8) -> None:
    """The benchmark batch, vocabulary sizes and multimodal table in the official formats.

    Raw IDs are muse-tf's row indices (the official vocabularies are then 1..rows-1, sorted, and
    map ID i to row i), so both sides look up the same rows; the multimodal keys are the items
    with a vector, their values the int8 rows (the official code adds the zero row itself)."""
    import numpy as np

    from benchmarks import fixtures
    from muse_tf.contract.feature_spec import TAOBAO_MM

    sizes = fixtures.train_vocab_sizes()
    x, y = fixtures.training_batch(sizes, batch, length, samples_per_user=samples_per_user)
    table = fixtures.multimodal_table(sizes["item"])
    columns = TAOBAO_MM.column_feature
    arrays = {f"batch/{column}": x[feature].numpy() for column, feature in columns.items()}
    label = y.numpy().astype(np.int64)
    arrays["batch/label"] = np.stack([1 - label, label], axis=1)  # the official (B, 2) one-hot
    arrays.update({f"rows/{column}": np.int64(sizes[TAOBAO_MM.vocabulary[feature]])
                   for column, feature in columns.items()})
    with_vector = np.flatnonzero(table.any(axis=1))
    arrays["scl_keys"] = with_vector.astype(np.int64)
    arrays["scl_values"] = table[with_vector]
    np.savez(path, **arrays)


def ours_child(batch: int, length: int, steps: int, warmup: int, samples_per_user: int) -> dict:
    """muse-tf's step: the training job's model and optimizers on the benchmark batch."""
    import tensorflow as tf

    from benchmarks import fixtures, train_throughput

    sizes = fixtures.train_vocab_sizes()
    x, y = fixtures.training_batch(sizes, batch, length, samples_per_user=samples_per_user)
    model = train_throughput.job_compiled_model("muse", sizes, fixtures.multimodal_table(sizes["item"]))
    result = train_throughput.first_and_steady(model, x, y, steps, warmup)
    return {
        "side": OURS, "batch": batch, "history": length, "top_k": model.config.top_k, **result,
        "tensorflow": tf.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "optimizers": {"dense": type(model.optimizer).__name__,
                       "embeddings": type(model.embedding_optimizer).__name__},
        **common.cpu_times(),
    }


def check_flags(args) -> None:
    """One line naming the flag when the official code or the torch Python is missing."""
    if not args.official_dir:
        raise cli.UsageError("--official-dir is required: a checkout of the official MUSE code "
                             "(alimama-tech/MUSE)")
    if not os.path.isfile(os.path.join(args.official_dir, "model", "muse.py")):
        raise cli.UsageError(f"--official-dir {args.official_dir} holds no model/muse.py: not a "
                             "checkout of the official MUSE code (alimama-tech/MUSE)")
    if not args.torch_python:
        raise cli.UsageError("--torch-python is required: a Python with torch, numpy, pandas and "
                             "pyarrow installed")
    if args.official_malloc and not os.path.isfile(args.official_malloc):
        raise cli.UsageError(f"--official-malloc {args.official_malloc} does not exist: give the "
                             "path of a malloc library such as libjemalloc.so.2")
    try:
        probe = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True,
                               text=True, timeout=300)
    except OSError as error:
        raise cli.UsageError(f"--torch-python {args.torch_python} cannot be run: {error}") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise cli.UsageError(f"--torch-python {args.torch_python} cannot import torch: {last}")


def official_commit(official_dir: str) -> str | None:
    done = subprocess.run(["git", "-C", official_dir, "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def summary(rows: list[dict]) -> list[dict]:
    """Per side, the medians over the rounds."""
    out = []
    for side in (OFFICIAL, OURS):
        mine = [r for r in rows if r["side"] == side]
        out.append({"table": "summary", "side": side, "rounds": len(mine), **{
            key: round(statistics.median(r[key] for r in mine), 3)
            for key in ("first_step_s", "step_p50_ms", "examples_per_s")}})
    return out


def measure(args) -> dict:
    check_flags(args)
    if args.quick:
        args.rounds, args.steps, args.batch, args.history = 1, 3, 100, 100
    run = common.Run("versus_official", args)
    os.makedirs(args.work_dir, exist_ok=True)
    inputs = os.path.join(args.work_dir, f"versus_official_b{args.batch}_l{args.history}"
                                         f"_s{args.samples_per_user}.npz")
    write_inputs(inputs, args.batch, args.history, args.samples_per_user)
    official_args = ["--official-dir", os.path.abspath(args.official_dir), "--inputs", inputs,
                     "--steps", str(args.steps), "--warmup", str(WARMUP),
                     *(["--ddp"] if args.official_ddp else [])]
    ours_args = ["--child", str(args.batch), str(args.history), str(args.steps), str(WARMUP),
                 str(args.samples_per_user)]
    official_env = ({"LD_PRELOAD": args.official_malloc, "MALLOC_CONF": KEEP_FREED}
                    if args.official_malloc else None)
    rows = []
    for number in range(1, args.rounds + 1):
        for side in (OFFICIAL, OURS):
            load = common.load_average()
            if side == OFFICIAL:
                result = common.run_json_subprocess("benchmarks.official_driver", official_args,
                                                    CHILD_TIMEOUT_S, python=args.torch_python,
                                                    env=official_env)
            else:
                result = common.run_json_subprocess("benchmarks.versus_official", ours_args,
                                                    CHILD_TIMEOUT_S)
            rows.append({"table": "rounds", "round": number, **result, "load_average_1m": load,
                         "samples_per_user": args.samples_per_user})
            print(rows[-1], flush=True)
    medians = summary(rows)
    ratio = round(medians[1]["examples_per_s"] / medians[0]["examples_per_s"], 2)
    run.extra["ratio"] = {"examples_per_s_ours_over_official": ratio,
                          "first_step_official_over_ours": round(
                              medians[0]["first_step_s"] / medians[1]["first_step_s"], 2)}
    run.extra["official"] = {"dir": os.path.abspath(args.official_dir),
                             "commit": official_commit(args.official_dir),
                             "torch_python": args.torch_python,
                             "malloc": args.official_malloc or common.SYSTEM_MALLOC}
    payload = run.finish(rows + medians, {"rounds": COLUMNS, "summary": SUMMARY_COLUMNS})
    print(f"\nratio of medians (muse-tf / official): {ratio}x examples/s")
    return payload


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        result = ours_child(*(int(value) for value in argv[1:6]))
        print(json.dumps(result))
        return result
    parser = common.base_parser("benchmarks.versus_official", __doc__, "versus_official.json")
    parser.add_argument("--official-dir", help="checkout of the official MUSE code (alimama-tech/MUSE)")
    parser.add_argument("--torch-python", help="a Python with torch, numpy, pandas and pyarrow")
    parser.add_argument("--rounds", type=int, default=3, help="official, muse-tf pairs")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side and round")
    parser.add_argument("--official-ddp", action="store_true",
                        help="wrap the official modules in DistributedDataParallel (one process), "
                             "as its launch script does")
    parser.add_argument("--official-malloc",
                        help="a malloc library to preload into the official's process, kept from "
                             "returning freed memory (e.g. libjemalloc.so.2)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--samples-per-user", type=int, default=8,
                        help="samples of a batch that share one history (1: every history distinct)")
    return cli.run(measure, parser, argv)


if __name__ == "__main__":
    main()
