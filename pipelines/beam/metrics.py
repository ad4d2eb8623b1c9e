"""The Beam engine's counts: every number of the manifest is a counter of one Beam namespace,
added by the workers and read back by the launcher once the pipeline has run."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "muse_tf.convert"


def count(name: str, value: int) -> None:
    """Adds ``value`` to the counter ``name`` (nothing for 0)."""
    if value:
        Metrics.counter(NAMESPACE, name).inc(int(value))


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """Every counter of the run (committed values where the runner has them)."""
    values = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value)
    return values
