"""The two conversion engines side by side: ``pipelines.taobao_mm`` (local processes) and
``pipelines.beam_convert`` on Beam's local runner, on the same synthetic Parquet.

    python -m benchmarks.convert_engines [--quick] [--users 2000 20000]
        [--output benchmarks/results/convert_engines.json]

Each conversion runs in a fresh process (``--child``); the parent samples the resident memory of
that process and all its descendants every 0.2 s (the local engine and Beam's multi-process mode
run workers), so ``peak_rss_mb`` is the whole tree's peak. Rows/s counts the input rows of all six
tables; ``samples_per_s`` the samples written. Engines (all on every core of this machine):

* ``local``: ``python -m pipelines.taobao_mm`` with one worker process per core;
* ``beam in_memory``: DirectRunner, one process (``--direct_running_mode in_memory``);
* ``beam multi_processing``: DirectRunner, one worker process per core.

Ratios are against ``local`` on the same data, measured back to back.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq

from benchmarks import common
from muse_tf.data.synthetic import SyntheticConfig
from pipelines.common import synthetic_parquet

COLUMNS = ["users", "engine", "input_rows", "samples", "seconds", "rows_per_s", "samples_per_s",
           "peak_rss_mb", "time_vs_local", "memory_vs_local"]
HISTORY = 1000


def _engines(cores: int) -> dict[str, list[str]]:
    return {
        "local": ["local", "--workers", str(cores)],
        "beam in_memory": ["beam", "--runner", "DirectRunner", "--direct_running_mode",
                           "in_memory", "--direct_num_workers", "1"],
        "beam multi_processing": ["beam", "--runner", "DirectRunner", "--direct_running_mode",
                                  "multi_processing", "--direct_num_workers", str(cores)],
    }


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for children in glob.glob(f"/proc/{current}/task/*/children"):
                with open(children) as f:
                    pending += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def child(engine: str, parquet: str, output: str, options: list[str]) -> dict:
    """One conversion in this process; prints its manifest's totals as JSON."""
    common_args = ["--input", parquet, "--output", output, "--history-cap", str(HISTORY),
                   "--overwrite"]
    if engine == "local":
        from pipelines import taobao_mm

        taobao_mm.main(common_args + options)
    else:
        from pipelines import beam_convert

        beam_convert.main(common_args + options)
    with open(os.path.join(output, "manifest.json")) as f:
        manifest = json.load(f)
    return {"samples": sum(s["samples_written"] for s in manifest["splits"].values()),
            "input_rows": sum(manifest["input_rows"].values())}


def measure(engine_args: list[str], parquet: str, output: str) -> dict:
    """Runs one conversion in a fresh process; wall time, peak tree RSS and its totals."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": common.ROOT}
    command = [sys.executable, "-m", "benchmarks.convert_engines", "--child", engine_args[0],
               parquet, output, *engine_args[1:]]
    shutil.rmtree(output, ignore_errors=True)
    # Files, not pipes: nobody reads a pipe while polling, and a full one would stall the child.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=common.ROOT, env=env, stdout=stdout,
                                   stderr=stderr, text=True)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _tree_rss_mb(process.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()[-3000:]}")
        totals = json.loads(stdout.read().strip().splitlines()[-1])
    shutil.rmtree(output, ignore_errors=True)
    return {**totals, "seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], argv[3], argv[4:])))
        return {}
    parser = common.base_parser("benchmarks.convert_engines", __doc__, "convert_engines.json")
    parser.add_argument("--users", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args(argv)
    users_list = [200] if args.quick else args.users
    cores = os.cpu_count() or 1
    run = common.Run("convert_engines", args)
    rows = []
    for users in users_list:
        parquet = os.path.join(args.work_dir, f"convert-u{users}-l{HISTORY}-parquet")
        if not os.path.exists(os.path.join(parquet, "synthetic.json")):
            synthetic_parquet.generate(SyntheticConfig(users=users, behaviours_per_user=HISTORY),
                                       parquet)
        input_rows = sum(pq.ParquetFile(p).metadata.num_rows
                         for p in glob.glob(os.path.join(parquet, "*.parquet")))
        local = None
        for engine, engine_args in _engines(cores).items():
            result = measure(engine_args, parquet, os.path.join(args.work_dir, "convert-out"))
            assert result["input_rows"] == input_rows, (engine, result, input_rows)
            row = {"table": "convert engines", "users": users, "engine": engine, **result,
                   "rows_per_s": round(input_rows / result["seconds"], 1),
                   "samples_per_s": round(result["samples"] / result["seconds"], 1)}
            local = local or row
            row["time_vs_local"] = round(row["seconds"] / local["seconds"], 2)
            row["memory_vs_local"] = round(row["peak_rss_mb"] / local["peak_rss_mb"], 2)
            print(row, flush=True)
            rows.append(row)
    run.extra["history_cap"] = HISTORY
    return run.finish(rows, {"convert engines": COLUMNS})


if __name__ == "__main__":
    main()
