"""The Beam engine's counts: every number of the manifest is a counter of one Beam namespace,
added by the workers and read back by the launcher once the pipeline has run.

While it runs, each process also says how far it has got: every ``PROGRESS_EVERY_S`` seconds at
most, one line on stderr with the input rows it has read and the samples and users it has written.
On the DirectRunner that process is the command's own, so a conversion is never silent; on a
remote runner the lines go to each worker's log.
"""

from __future__ import annotations

import sys
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from pipelines.common.raw_schema import SPLITS

NAMESPACE = "muse_tf.convert"
PROGRESS_EVERY_S = 5.0

_seen: dict[str, int] = {}  # this process's counts so far
_lock = threading.Lock()
_last_line = [time.monotonic()]


def start_progress() -> None:
    """Starts this process's progress lines afresh (a conversion in the launcher's process)."""
    with _lock:
        _seen.clear()
        _last_line[0] = time.monotonic()


def count(name: str, value: int) -> None:
    """Adds ``value`` to the counter ``name`` (nothing for 0)."""
    if value:
        Metrics.counter(NAMESPACE, name).inc(int(value))
        _progress(name, int(value))


def _progress(name: str, value: int) -> None:
    with _lock:
        _seen[name] = _seen.get(name, 0) + value
        now = time.monotonic()
        if now - _last_line[0] < PROGRESS_EVERY_S:
            return
        _last_line[0] = now
        read = sum(v for k, v in _seen.items() if k.startswith("input_rows/"))
        written = "; ".join(
            f"{split}: {_seen.get(f'{split}/samples_written', 0):,} samples of "
            f"{_seen.get(f'{split}/users_written', 0):,} users written"
            for split in SPLITS
        )
        line = f"[beam] so far {read:,} input rows read; {written}"
    print(line, file=sys.stderr, flush=True)


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """Every counter of the run (committed values where the runner has them)."""
    values = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value)
    return values
