"""Iterator release: how long deleting a tf.data iterator keeps its caller waiting, with tf.data's
autotuning on and off, and with ``muse_tf.data.iterator_release`` taking the deletion off the caller.

    python -m benchmarks.iterator_release [--quick] [--repeats N] [--seconds S]

Each repeat builds a small autotuned pipeline (a parallel map, a batch, a prefetch), pulls from it
for S seconds at one element per 10 ms (a training loop's pace, so the autotuning model thread
settles into long sleeps), then deletes the iterator and times what the caller waits. This is the
wait behind ``fit``'s intermittent linger after its last step (issue 16): TensorFlow's autotuning
thread can miss its cancellation and sleep out its period (up to 60 s) while the deleting thread
waits. ``background`` also reports how long the release thread took, off the caller's path.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from muse_tf.data import iterator_release

COLUMNS = ["case", "repeats", "caller_p50_s", "caller_max_s", "caller_waits_over_1s",
           "caller_mean_s", "caller_mean_vs_autotune_on", "release_thread_max_s"]
CASES = ("autotune on", "autotune off", "autotune on, released in background")


def pipeline(autotune: bool) -> tf.data.Dataset:
    dataset = tf.data.Dataset.range(2**62).map(
        lambda i: tf.reduce_sum(tf.random.stateless_uniform([128, 128], seed=[i, 0])),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return dataset.batch(16).prefetch(tf.data.AUTOTUNE).with_options(options)


def one_release(case: str, seconds: float) -> tuple[float, float]:
    """(seconds the caller waited for the deletion, seconds the release thread took or 0)."""
    held = [iter(pipeline(autotune=case != "autotune off"))]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        next(held[0])
        time.sleep(0.01)
    start = time.perf_counter()
    if case.endswith("background"):
        thread = iterator_release.release_in_background(held)
        waited = time.perf_counter() - start
        thread.join()
        return waited, time.perf_counter() - start
    held.clear()
    return time.perf_counter() - start, 0.0


def measure(repeats: int, seconds: float) -> list[dict]:
    """Runs the cases interleaved (one repeat of each in turn), so load drifts hit all alike."""
    waits: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
    for repeat in range(repeats):
        for case in CASES:
            waits[case].append(one_release(case, seconds))
        print(f"repeat {repeat + 1}/{repeats}: "
              + ", ".join(f"{case} {waits[case][-1][0]:.2f} s" for case in CASES), flush=True)
    baseline = float(np.mean([caller for caller, _ in waits["autotune on"]]))
    rows = []
    for case in CASES:
        caller = np.array([c for c, _ in waits[case]])
        rows.append({
            "case": case,
            "repeats": repeats,
            "caller_p50_s": round(float(np.median(caller)), 3),
            "caller_max_s": round(float(caller.max()), 3),
            "caller_waits_over_1s": int((caller > 1.0).sum()),
            "caller_mean_s": round(float(caller.mean()), 3),
            "caller_mean_vs_autotune_on": round(float(caller.mean()) / baseline, 3)
            if baseline > 0 else None,
            "release_thread_max_s": round(max(t for _, t in waits[case]), 3),
            "caller_seconds": [round(c, 4) for c in caller],
        })
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("benchmarks.iterator_release", __doc__, "iterator_release.json")
    parser.add_argument("--repeats", type=int, default=None, help="per case (default 20; quick 3)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="iteration before each deletion (default 8; quick 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 20)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    run = common.Run("iterator_release", args)
    rows = measure(repeats, seconds)
    run.extra["setting"] = {"seconds_before_delete": seconds}
    return run.finish(rows, {"caller's wait for an iterator's deletion": COLUMNS})


if __name__ == "__main__":
    main()
