"""Choosing the tf.distribute strategy, and which process of a cluster does what.

Without ``TF_CONFIG``: MirroredStrategy over several local GPUs, else the default strategy. With a
``TF_CONFIG`` whose cluster names ``ps`` tasks: a parameter-server cluster, in which the ``chief``
runs the Keras program and every ``worker`` and ``ps`` task only serves (``serve``); variables live
on the parameter servers and the large ones (the embedding tables, the frozen multimodal table) are
split row-wise across them. Any other ``TF_CONFIG``: MultiWorkerMirroredStrategy, every worker
running the program.
"""

from __future__ import annotations

import json
import os
import socket
import time

import tensorflow as tf

from muse_tf import cli
from muse_tf.config import TrainConfig

# The embedding and multimodal tables are hundreds of MB, the dense weights a few hundred KB at
# most: splitting those would only add a concatenation to every step that reads them.
DEFAULT_MIN_SHARD_BYTES = TrainConfig.ps_min_shard_bytes
# How long a parameter-server chief waits for the cluster's other tasks to start listening
# (``wait_for_tasks``); TensorFlow itself would wait forever, without a word.
DEFAULT_CLUSTER_TIMEOUT = 300.0


class ClusterError(cli.UsageError, RuntimeError):
    """A task of the cluster ``TF_CONFIG`` names did not answer in time."""


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


def has_parameter_servers() -> bool:
    """True when ``TF_CONFIG`` describes a parameter-server cluster (it names ``ps`` tasks).

    Raises:
        ValueError: when such a cluster has no ``chief`` task (its coordinator).
    """
    spec = cluster_spec()
    if spec is None or not spec["cluster"].get("ps"):
        return False
    if len(spec["cluster"].get("chief", [])) != 1:
        raise ValueError("TF_CONFIG names `ps` tasks but not exactly one `chief` task: a "
                         "parameter-server cluster needs one chief, which runs the training program.")
    return True


def serves_only() -> bool:
    """True for the ``worker`` and ``ps`` tasks of a parameter-server cluster: they run a server
    (``serve``) and never the training program, nor touch the run directory."""
    return has_parameter_servers() and cluster_spec()["task"].get("type") in ("worker", "ps")


def serve() -> None:
    """Starts this task's ``tf.distribute.Server`` and blocks forever, executing what the chief
    sends; the cluster manager (or the test) stops the process when training is over."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # A worker whose peers restart should retry, not fail its caller's functions at once.
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    server.join()


def table_partitioner(
    parameter_servers: int, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES
) -> tf.distribute.experimental.partitioners.Partitioner:
    """Splits a variable along its rows into at most one shard per parameter server, each of at
    least ``min_shard_bytes``; smaller variables stay whole (on one parameter server)."""
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=parameter_servers
    )


def wait_for_tasks(timeout: float, interval: float = 1.0) -> None:
    """Waits until every other task of ``TF_CONFIG``'s cluster accepts connections on its address.

    Raises:
        ClusterError: naming the tasks still silent after ``timeout`` seconds.
    """
    spec = cluster_spec()
    me = (spec["task"].get("type"), spec["task"].get("index", 0))
    waiting = {f"{kind}:{index}": address for kind, addresses in spec["cluster"].items()
               for index, address in enumerate(addresses) if (kind, index) != me}
    deadline = time.monotonic() + timeout
    while True:
        waiting = {task: address for task, address in waiting.items() if not _answers(address)}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if waiting:
        tasks = ", ".join(f"{task} ({address})" for task, address in waiting.items())
        raise ClusterError(
            f"The parameter-server cluster of TF_CONFIG is incomplete: no answer from {tasks} "
            f"within {timeout:g} s; start it (the same command with its own TF_CONFIG task), "
            "fix TF_CONFIG's addresses, or wait longer with --cluster-timeout."
        )


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def make_strategy(
    min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES, cluster_timeout: float | None = None
) -> tf.distribute.Strategy:
    """ParameterServerStrategy when ``TF_CONFIG`` names ``ps`` tasks (variables over
    ``table_partitioner(min_shard_bytes)``; its chief first waits up to ``cluster_timeout``
    seconds, None = ``DEFAULT_CLUSTER_TIMEOUT``, for the other tasks: ``wait_for_tasks``),
    MultiWorkerMirroredStrategy under any other ``TF_CONFIG``, else MirroredStrategy over the local
    GPUs when there are several, and TensorFlow's default strategy on the one GPU or the CPU.

    One device is not a MirroredStrategy of one replica: a mirrored table is read whole by every
    lookup, and the sparse update that follows then copies it (0.5 s a step at 10M item rows,
    against 0.07 s under the default strategy).
    """
    if has_parameter_servers():
        wait_for_tasks(DEFAULT_CLUSTER_TIMEOUT if cluster_timeout is None else cluster_timeout)
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        partitioner = table_partitioner(resolver.cluster_spec().num_tasks("ps"), min_shard_bytes)
        return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    if cluster_spec() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    # Not OneDeviceStrategy: Keras's BackupAndRestore refuses it.
    return tf.distribute.get_strategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's name for the start line (TensorFlow's default one has a private class)."""
    name = type(strategy).__name__
    return "TensorFlow's default strategy" if name.startswith("_Default") else name


def is_parameter_server(strategy: tf.distribute.Strategy) -> bool:
    """True for ParameterServerStrategy, whose ``fit`` has its own constraints (``training``)."""
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def shard_placement(variables: list[tf.Variable]) -> dict[str, list[dict]]:
    """The sharded variables among ``variables`` (Keras lists each shard as a variable): name ->
    one ``{"device", "rows"}`` per shard, in row order. A run records it (``metrics.json``) so
    that how the tables were split is on file."""
    placement = {}
    for variable in variables:
        container = getattr(variable, "_sharded_container", None)
        if container is None:
            continue
        shards = container().variables
        name = shards[0].name.replace("/part_0", "")  # the shards are named NAME/part_i
        placement[name] = [{"device": shard.device, "rows": int(shard.shape[0])} for shard in shards]
    return placement


def task_name() -> str:
    """This process's task in the cluster, ``<type>-<index>`` (e.g. ``worker-1``)."""
    task = (cluster_spec() or {}).get("task", {})
    return f"{task.get('type')}-{task.get('index', 0)}"


def is_chief() -> bool:
    """True for the worker that writes checkpoints, metrics and the export."""
    spec = cluster_spec()
    if spec is None:
        return True
    task = spec["task"]
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in spec["cluster"]
