"""Shared by every benchmark: the machine record, waiting for a quiet machine, timing with
percentiles, peak memory, fresh-subprocess runs, the printed table and the JSON file.

Every result file has the same envelope::

    {"benchmark": NAME, "command": ..., "quick": bool, "machine": {...}, "started": ISO time,
     "seconds": wall time, "results": [...rows...], ...extra}

and ``machine`` holds the core count, CPU model, TensorFlow version and the load average when the
run started and ended, so every figure carries the conditions it was measured in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
# Generated data and exports, reused between runs (outside the repository).
DEFAULT_WORK_DIR = os.environ.get(
    "MUSE_BENCHMARK_WORK_DIR", os.path.join(tempfile.gettempdir(), "muse_tf_benchmarks")
)


# -- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict[str, Any]:
    import tensorflow as tf

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_average_1m": load_average(),
    }


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Waits until the 1-minute load average is below ``max_load`` (at most ``timeout_s``).

    Returns what happened, to be recorded beside the figures; never raises on timeout (the figures
    are then taken on a busy machine, and the record says so).
    """
    start = time.time()
    while load_average() >= max_load and time.time() - start < timeout_s:
        print(f"[wait] load average {load_average():.2f} >= {max_load}; waiting ...", flush=True)
        time.sleep(poll_s)
    quiet = load_average() < max_load
    return {"max_load": max_load, "waited_s": round(time.time() - start, 1), "quiet": quiet,
            "load_average_1m": load_average()}


# -- timing -------------------------------------------------------------------------------------
def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, mean, min, max, and the sample count."""
    ms = np.asarray(seconds, np.float64) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
        "n": int(len(ms)),
    }


def time_calls(
    fn: Callable[[], object], *, warmup: int = 3, repeats: int = 50, max_seconds: float = 20.0,
    min_repeats: int = 5,
) -> dict[str, float]:
    """Times ``fn()`` (which must block until its result exists) after ``warmup`` calls.

    Stops after ``repeats`` calls or once ``max_seconds`` have passed (but not before
    ``min_repeats``), so each measurement is bounded in time.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < repeats and (len(times) < min_repeats or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def time_interleaved(
    functions: dict[str, Callable[[], object]], *, warmup: int = 3, repeats: int = 50,
    max_seconds: float = 20.0, min_repeats: int = 5,
) -> dict[str, dict[str, float]]:
    """``time_calls`` for several functions called in turn (a, b, a, b, ...), so that drifts of the
    machine's speed hit all of them alike: for comparing a measurement with its floor."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    deadline = time.perf_counter() + max_seconds
    done = 0
    while done < repeats and (done < min_repeats or time.perf_counter() < deadline):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        done += 1
    return {name: summarize(values) for name, values in times.items()}


# -- memory -------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# How a result names the malloc of a process that preloaded none.
SYSTEM_MALLOC = "the C library's"


def cpu_seconds() -> tuple[float, float]:
    """This process's CPU time so far, (user, kernel), in seconds."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_times() -> dict[str, float]:
    """This process's CPU time so far as result columns (``user_s``, ``kernel_s``)."""
    user, kernel = cpu_seconds()
    return {"user_s": round(user, 1), "kernel_s": round(kernel, 1)}


def first_touch_mb_per_s(megabytes: int = 256) -> float:
    """How fast this machine hands a process fresh memory: ``megabytes`` allocated and written once.
    A VM that backs guest memory only when it is first touched (and takes freed memory back) is
    tens of times slower here than a machine whose memory is resident."""
    import numpy as np

    started = time.perf_counter()
    np.ones(megabytes << 20, np.uint8)
    return round(megabytes / (time.perf_counter() - started), 1)


def run_json_subprocess(module: str, args: Sequence[str], timeout_s: float,
                        python: str = sys.executable, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``python -m module args`` (``env`` added to the environment) in a fresh process whose
    last stdout line is JSON."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, **(env or {})}
    done = subprocess.run(
        [python, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- output -------------------------------------------------------------------------------------
def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``columns`` (missing values blank, floats to 4 significant digits)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (f"{machine['nproc']} cores ({machine['cpu_model']}), TF {machine['tensorflow']}, "
            f"load average {machine['load_average_1m']}")


def base_parser(module: str, doc: str | None, default_output: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares; the usage line shows ``python -m MODULE``, the description
    is the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run (seconds)")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, default_output),
                        help="JSON results file")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                        help="generated data and exports (reused between runs)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long for the 1-minute load average to drop "
                             "below --max-load")
    parser.add_argument("--max-load", type=float, default=0.7)
    return parser


class Run:
    """One benchmark run: records the machine, collects rows, prints and writes the results."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.start_time = time.time()
        self.wait = (
            wait_for_quiet(args.max_load, args.wait_quiet) if args.wait_quiet > 0 else None
        )
        self.machine = machine_info()
        self.extra: dict[str, Any] = {}

    def finish(self, rows: list[dict[str, Any]], tables: dict[str, Sequence[str]]) -> dict[str, Any]:
        """Prints one table per ``{title: columns}`` and writes the JSON file."""
        end_machine = machine_info()
        self.machine["load_average_1m_end"] = end_machine["load_average_1m"]
        payload = {
            "benchmark": self.name,
            "command": "python -m benchmarks." + self.name + " " + " ".join(sys.argv[1:]),
            "quick": bool(self.args.quick),
            "machine": self.machine,
            "wait_for_quiet": self.wait,
            "started": self.started,
            "seconds": round(time.time() - self.start_time, 1),
            "results": rows,
            **self.extra,
        }
        print(f"\n{self.name}: {machine_line(self.machine)} (end: "
              f"{self.machine['load_average_1m_end']}){' [quick]' if self.args.quick else ''}")
        for title, columns in tables.items():
            selected = [r for r in rows if r.get("table", title) == title]
            print(f"\n{title}\n{format_table(selected, columns)}")
        os.makedirs(os.path.dirname(os.path.abspath(self.args.output)), exist_ok=True)
        with open(self.args.output, "w") as f:
            json.dump(payload, f, indent=1, default=_json_default)
            f.write("\n")
        print(f"\nwrote {self.args.output}")
        return payload


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
