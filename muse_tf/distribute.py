"""Choosing the tf.distribute strategy, and which worker speaks for the cluster."""

from __future__ import annotations

import json
import os

import tensorflow as tf


def cluster_spec() -> dict | None:
    """The parsed ``TF_CONFIG``, or None when it is unset (a single-machine run)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
    if "cluster" not in spec or "task" not in spec:
        raise ValueError("TF_CONFIG needs both `cluster` and `task` entries.")
    return spec


def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy under ``TF_CONFIG``, else MirroredStrategy on local devices.

    MirroredStrategy uses every local GPU, or the CPU when there is none.
    """
    if cluster_spec() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def is_chief() -> bool:
    """True for the worker that writes checkpoints, metrics and the export."""
    spec = cluster_spec()
    if spec is None:
        return True
    task = spec["task"]
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in spec["cluster"]

