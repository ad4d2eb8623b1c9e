"""Runs every benchmark, one fresh process each, each first waiting for a quiet machine.

    python -m benchmarks.run_all [--quick] [--results-dir benchmarks/results] [--wait-quiet 1800]

Order: training, vocabulary scaling, serving latency, memory, data, load test, iterator release
(about 30 minutes at full size on 2 cores, plus the vocabulary sizes; about 3 minutes with
--quick). Stops at the first benchmark that fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchmarks import common

BENCHMARKS = ("train_throughput", "vocabulary_scaling", "serving_latency", "memory", "data_throughput",
              "load_test", "iterator_release", "rank_by_user")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", default=common.RESULTS_DIR)
    parser.add_argument("--wait-quiet", type=float, default=1800.0,
                        help="seconds each benchmark may wait for load average < --max-load")
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    for name in args.only:
        output = os.path.join(args.results_dir, f"{name}{'_quick' if args.quick else ''}.json")
        command = [sys.executable, "-m", f"benchmarks.{name}", "--output", output,
                   "--wait-quiet", str(args.wait_quiet), "--max-load", str(args.max_load)]
        command += ["--quick"] if args.quick else []
        print(f"\n=== {' '.join(command[1:])}", flush=True)
        subprocess.run(command, cwd=common.ROOT, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


if __name__ == "__main__":
    main()
