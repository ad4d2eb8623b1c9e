"""``rank_by_user`` (the history read server-side by user ID) against ``rank`` with the history in
the request, end to end, for L behaviours and C candidates.

    python -m benchmarks.rank_by_user [--quick] [--output benchmarks/results/rank_by_user.json]

The model is ``serving_latency``'s (paper-sized MUSE, 250,000-item int8 table, random weights,
``max_history_length`` 100,000). One user per (L, C) is written to a SQLite file and to a
``redis-server`` on loopback (persistence off), then timed, one request at a time:

- ``rank in-process``: ``Servable.predict`` in this process, the history in the request, called
  in turn with every other path (so each ratio compares calls made under the same load);
- ``rank gRPC`` / ``rank REST``: the same request through ``python -m serving.server``;
- ``rank_by_user SQLite`` / ``Redis``: user ID + candidates over gRPC to a server with that store
  and no cache (every request reads the store);
- ``rank_by_user warm cache``: a server with the Redis store and the prefetch cache, after
  ``:prefetch``;
- ``rank_by_user forward``: a sidecar (``--forward_to``, no model, Redis, no cache) in front of the
  model server, as in front of TF Serving.

Per (L, C) also: the request's bytes on the wire (serialized ``PredictRequest``, REST JSON body),
and the parts of a request timed in this process: store read (fetch and decode into arrays),
decoding the request (gRPC TensorProtos, REST JSON), the model (``rank``), and the GSU-independent
part of ``rank``'s work (raw-ID lookup, unit multimodal vectors of the L behaviours): what a
split signature caching it per user could save, against the memory it would cost.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from benchmarks import common, fixtures
from muse_tf.contract import features, signatures, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.ops.item_vectors import ItemVectors
from serving import grpc_service, rest
from serving.client import GrpcClient, RestClient
from serving.history.store import open_store
from serving.launch import local_server
from serving.servable import Servable
from tests.redis_server import RedisServer

LENGTHS = (1_000, 10_000, 100_000)
CANDIDATES = (1, 100)
COLUMNS = ["path", "L", "C", "p50_ms", "p99_ms", "in_process_p50_ms", "ratio_p50", "request_bytes",
           "n"]
PARTS = ["L", "C", "sqlite_read_ms", "redis_read_ms", "grpc_decode_ms", "rest_decode_ms",
         "model_ms", "gsu_independent_ms", "gsu_share", "unit_vectors_mb"]
BASELINE = "rank in-process"


def user_of(length: int, count: int) -> int:
    return 1_000 * length + count


def by_user_request(request: dict[str, np.ndarray], length: int, count: int) -> dict:
    """``rank_by_user``'s inputs for the user stored from ``request``: ID and candidates."""
    inputs = {name: request[name] for name in signatures.CANDIDATE_FEATURES}
    return {features.USER_ID: np.int64(user_of(length, count)), **inputs}


def predict_request(inputs: dict, signature: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="muse", signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


def rest_body(inputs: dict, signature: str) -> bytes:
    return json.dumps({"signature_name": signature,
                       "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}).encode()


def fill_stores(stores: list, cases: dict) -> None:
    for store in stores:
        for (length, count), request in cases.items():
            store.write(user_of(length, count), request[features.HISTORY_ITEMS],
                        request[features.HISTORY_CATEGORIES],
                        {name: int(request[name]) for name in TAOBAO_MM.profile_features})


class _Restored:
    """A loaded export's hash table with the ``lookup`` its restored form lacks."""

    def __init__(self, table: tf.Module):
        self._handle = table.resource_handle

    def lookup(self, keys: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.LookupTableFindV2(table_handle=self._handle, keys=keys,
                                            default_value=tf.constant(-1, tf.int64))


def gsu_independent(loaded: tf.Module) -> tf.types.experimental.GenericFunction:
    """The work on a history alone (no candidate): raw ID -> index, unit multimodal vectors."""
    table, inverse = (next(v for v in loaded.model_variables if v.name == f"multimodal/{n}:0")
                      for n in ("table", "inverse_norms"))
    vectors = ItemVectors(table, inverse, 128)
    items = _Restored(loaded.tables["item"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def unit(raw: tf.Tensor) -> tf.Tensor:
        return vectors.unit(vocabulary.lookup_in_graph(items, raw))[0]

    return unit


def parts_rows(servable: Servable, stores: dict, cases: dict, budget_s: float) -> list[dict]:
    """Each part of a request, timed in this process."""
    loaded = servable._loaded
    unit = gsu_independent(loaded)
    rank_specs = servable.input_specs(signatures.RANK)
    rows = []
    for (length, count), request in cases.items():
        user = user_of(length, count)
        wire = predict_request(request, signatures.RANK).SerializeToString()
        body = rest_body(request, signatures.RANK)

        def grpc_decode(wire: bytes = wire) -> dict:
            parsed = predict_pb2.PredictRequest.FromString(wire)
            return {k: grpc_service.tensor_from_proto(k, v) for k, v in parsed.inputs.items()}

        def rest_decode(body: bytes = body) -> dict:
            columns = json.loads(body)["inputs"]
            return {k: rest.json_to_array(k, v, rank_specs[k]) for k, v in columns.items()}

        history = tf.constant(request[features.HISTORY_ITEMS])
        timed = {
            "sqlite_read": lambda u=user, n=length: stores["sqlite"].read(u, n),
            "redis_read": lambda u=user, n=length: stores["redis"].read(u, n),
            "grpc_decode": grpc_decode,
            "rest_decode": rest_decode,
            "model": lambda r=request: servable.predict(r, signatures.RANK),
            "gsu_independent": lambda h=history: unit(h).numpy(),
        }
        measured = common.time_interleaved(timed, repeats=30, max_seconds=budget_s)
        row = {"table": "parts", "L": length, "C": count,
               **{f"{name}_ms": measured[name]["p50_ms"] for name in timed},
               "unit_vectors_mb": round(length * 128 * 4 / 2**20, 1)}
        row["gsu_share"] = round(row["gsu_independent_ms"] / row["model_ms"], 3)
        print(row, flush=True)
        rows.append(row)
    return rows


def interleaved_rows(servable: Servable, cases: dict, paths: dict, budget_s: float,
                     with_baseline: bool = False) -> list[dict]:
    """For each (L, C), the ``paths`` ({name: (client call, request signature)}) timed in turn with
    in-process ``rank`` (a, b, ..., a, b, ...), so that the shared machine's drifts hit them alike;
    ``ratio_p50`` is each path's p50 over in-process ``rank``'s of the same run (a row of its own
    ``with_baseline``)."""
    rows = []
    for (length, count), request in cases.items():
        by_user = by_user_request(request, length, count)
        calls = {BASELINE: lambda r=request: servable.predict(r, signatures.RANK)}
        sent = {BASELINE: request}
        for name, (call, signature) in paths.items():
            inputs = by_user if signature == signatures.RANK_BY_USER else request
            calls[name] = lambda c=call, i=inputs, s=signature: c(i, s)
            sent[name] = inputs
        measured = common.time_interleaved(calls, repeats=30, max_seconds=budget_s)
        for name, timing in measured.items():
            if name == BASELINE and not with_baseline:
                continue
            signature = paths[name][1] if name in paths else signatures.RANK
            wire = (len(rest_body(sent[name], signature)) if name.endswith("REST")
                    else predict_request(sent[name], signature).ByteSize())
            row = {"table": "latency", "path": name, "L": length, "C": count, **timing,
                   "in_process_p50_ms": measured[BASELINE]["p50_ms"],
                   "ratio_p50": round(timing["p50_ms"] / measured[BASELINE]["p50_ms"], 3),
                   "request_bytes": wire}
            print(row, flush=True)
            rows.append(row)
    return rows


def server_rows(servable: Servable, base_path: str, urls: dict, cases: dict, budget_s: float,
                log_dir: str) -> list:
    """Every server path, each interleaved with in-process ``rank``; one model server at a time
    besides this process's (two cores)."""
    rows = []
    no_cache = ["--history_cache_bytes", "0"]

    def serve(url: str, *flags: str, base: str | None = base_path, name: str = "server") -> object:
        return local_server(base, log_path=os.path.join(log_dir, f"{name}.log"),
                            extra_args=["--history_store", url, *flags])

    by_user = signatures.RANK_BY_USER
    with serve(urls["sqlite"], *no_cache, name="sqlite") as server:
        with GrpcClient(port=server.grpc_port) as grpc_client, \
                RestClient(port=server.rest_port) as rest_client:
            rows += interleaved_rows(servable, cases, {
                "rank gRPC": (grpc_client.predict, signatures.RANK),
                "rank REST": (rest_client.predict, signatures.RANK),
                "rank_by_user SQLite": (grpc_client.predict, by_user),
                "rank_by_user SQLite REST": (rest_client.predict, by_user),
            }, budget_s, with_baseline=True)
        forward = ["--forward_to", f"127.0.0.1:{server.grpc_port}", *no_cache]
        with serve(urls["redis"], *forward, base=None, name="sidecar") as sidecar, \
                GrpcClient(port=sidecar.grpc_port) as client:
            rows += interleaved_rows(servable, cases, {
                "rank_by_user forward (Redis)": (client.predict, by_user)}, budget_s)
    with serve(urls["redis"], *no_cache, name="redis") as cold, \
            GrpcClient(port=cold.grpc_port) as client:
        rows += interleaved_rows(servable, cases, {
            "rank_by_user Redis": (client.predict, by_user)}, budget_s)
    with serve(urls["redis"], name="cached") as warm, GrpcClient(port=warm.grpc_port) as client, \
            RestClient(port=warm.rest_port) as rest_client:
        rest_client.prefetch([user_of(*key) for key in cases])
        rows += interleaved_rows(servable, cases, {
            "rank_by_user warm cache": (client.predict, by_user)}, budget_s)
    return rows


def plot(rows: list[dict], path: str, subtitle: str) -> None:
    """p50 against L, one panel per C, one line per path (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = [r for r in rows if r.get("table") == "latency"]
    counts = sorted({r["C"] for r in latency})
    paths = list(dict.fromkeys(r["path"] for r in latency))
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.6), squeeze=False)
    for ax, count in zip(axes[0], counts):
        for i, name in enumerate(paths):
            points = sorted((r["L"], r["p50_ms"]) for r in latency if r["path"] == name
                            and r["C"] == count)
            style = "-o" if name.startswith("rank_by_user") else "--s"
            ax.plot(*zip(*points), style, color=f"C{i}", label=name)
        ax.set(xscale="log", yscale="log", xlabel="history length L (behaviours)",
               ylabel="p50 latency (ms)", title=f"C = {count} candidates")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(subtitle, fontsize=9, color="#333333")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("benchmarks.rank_by_user", __doc__, "rank_by_user.json")
    args = parser.parse_args(argv)
    lengths, candidates = ((1_000, 10_000), (1, 100)) if args.quick else (LENGTHS, CANDIDATES)
    budget_s = 1.0 if args.quick else 4.0
    run = common.Run("rank_by_user", args)
    base_path = fixtures.export_serving_model(os.path.join(args.work_dir, "serving_export"))
    cases = {(length, count): fixtures.rank_request(length, count)
             for length in lengths for count in candidates}
    log_dir = os.path.join(args.work_dir, "rank_by_user")
    shutil.rmtree(log_dir, ignore_errors=True)
    os.makedirs(log_dir)
    redis = RedisServer(shutil.which("redis-server") or "redis-server")
    redis.start()
    try:
        urls = {"sqlite": f"sqlite:///{os.path.abspath(log_dir)}/histories.db", "redis": redis.url}
        stores = {name: open_store(url, timeout_s=10) for name, url in urls.items()}
        fill_stores(list(stores.values()), cases)
        servable = Servable("muse", base_path)
        parts = parts_rows(servable, stores, cases, budget_s)
        rows = server_rows(servable, base_path, urls, cases, budget_s, log_dir)
        for store in stores.values():
            store.close()
    finally:
        redis.kill()
    rows += parts
    target = {r["path"]: r for r in rows if r.get("L") == max(lengths) and r.get("C") == 100
              and r.get("table") == "latency"}
    if "rank_by_user warm cache" in target:
        run.extra["target"] = {
            "L": max(lengths), "C": 100,
            "warm_cache_ratio": target["rank_by_user warm cache"]["ratio_p50"],
            "redis_ratio": target["rank_by_user Redis"]["ratio_p50"],
            "request_bytes": target["rank_by_user Redis"]["request_bytes"],
            "met": (target["rank_by_user warm cache"]["ratio_p50"] <= 1.0
                    and target["rank_by_user Redis"]["ratio_p50"] <= 1.1
                    and target["rank_by_user Redis"]["request_bytes"] < 4096),
        }
    plot_path = os.path.splitext(args.output)[0] + ".png"
    plot(rows, plot_path, subtitle=f"measured {run.started[:10]} on {run.machine['nproc']} cores, "
         f"TensorFlow {run.machine['tensorflow']}, Python {run.machine['python']}")
    run.extra["plot"] = os.path.basename(plot_path)
    payload = run.finish(rows, {"latency": COLUMNS, "parts": PARTS})
    print("target:", run.extra.get("target"))
    return payload


if __name__ == "__main__":
    main()
