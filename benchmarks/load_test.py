"""A bounded load test of the local server on loopback: N concurrent gRPC clients (and one REST
client) for T seconds, then the same with a share of malformed requests mixed in, then the same
while abusers attack both front ends.

    python -m benchmarks.load_test [--quick] [--clients 8] [--seconds 60] [--malformed 0.1]

Each client (a thread with its own channel or HTTP session) sends ``rank`` requests back to back
until the phase ends; each phase stops by itself (deadline, plus a per-request timeout). Good
requests come from a pool of distinct requests whose expected scores were computed beforehand by
the same SavedModel loaded in this process; **every** good response is compared with them (max
|logit difference| <= 1e-5). A malformed request must be refused with an error; one that is
answered counts as an error, and so does a good request that fails or scores differently.

The abusive phase adds one thread per abuse, each repeating it until the phase ends: a gRPC shape
bomb (a 16-byte tensor declaring 50M values), an oversize candidate list (C = 50,000, over the
export's cap), an oversize REST body (Content-Length 1 GiB, refused before it is sent), a chunked
body smuggling a second request, ``--stalls`` stalled REST connections (a body that never
arrives, dropped by the server's per-read timeout) and ``--trickles`` slow-loris REST connections
(headers sent one byte every 2 s, which never trips the per-read timeout: 408 at the server's
per-request deadline). Each must get its refusal. The server's resident memory
is sampled every 20 ms; each phase reports its peak. The target: zero errors.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from benchmarks import common, fixtures
from muse_tf.contract import features, limits, signatures
from muse_tf.contract.feature_spec import TAOBAO_MM
from serving.client import GrpcClient, PredictionError, RestClient
from serving.launch import http_statuses, local_server, raw_http, trickle_http

COLUMNS = ["phase", "clients", "seconds", "requests", "good", "good_rest", "malformed", "abusive",
           "requests_per_s", "good_p50_ms", "good_p99_ms", "errors", "wrong_scores",
           "malformed_accepted", "abuse_not_refused", "server_peak_rss_mb"]
TOLERANCE = 1e-5
REST_TIMEOUT_MS = 5000  # the server's --rest_api_timeout_in_ms here, so stalls cycle in a phase
REST_REQUEST_TIMEOUT_MS = 8000  # its --rest_api_request_timeout_in_ms, so trickles cycle too
TRICKLE_INTERVAL_S = 2.0  # between the bytes of a trickling client, within the per-read timeout


def malformed_requests(good: dict[str, np.ndarray]) -> list[tuple[str, dict]]:
    """Requests the server must refuse, each with why."""
    too_long = np.resize(good[features.HISTORY_ITEMS], 100_001)
    return [
        ("missing input", {k: v for k, v in good.items() if k != TAOBAO_MM.attribute_features[1]}),
        ("float IDs", {**good, features.ITEM_ID: good[features.ITEM_ID].astype(np.float32)}),
        ("mismatched candidates", {**good, features.ITEM_CATEGORY: good[features.ITEM_CATEGORY][:2]}),
        ("mismatched history", {**good, features.HISTORY_CATEGORIES:
                                good[features.HISTORY_CATEGORIES][:5]}),
        ("history over the limit", {**good, features.HISTORY_ITEMS: too_long,
                                    features.HISTORY_CATEGORIES: too_long}),
        ("vector user_id", {**good, features.USER_ID: good[features.ITEM_ID]}),
    ]


class Phase:
    """One timed phase: shared counters, filled by the client threads under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.counts = {"requests": 0, "good": 0, "good_rest": 0, "malformed": 0, "abusive": 0,
                       "errors": 0, "wrong_scores": 0, "malformed_accepted": 0,
                       "abuse_not_refused": 0}
        self.abuse: dict[str, int] = {}
        self.examples: list[str] = []

    def record(self, key: str, latency: float | None = None, example: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if latency is not None:
                self.latencies.append(latency)
            if example and len(self.examples) < 5:
                self.examples.append(example)


class RssSampler:
    """Samples a process's resident memory every ``interval_s``; ``take_peak`` returns the peak
    since the previous call."""

    def __init__(self, pid: int, interval_s: float = 0.02):
        self._path, self._interval = f"/proc/{pid}/status", interval_s
        self._peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        try:
            with open(self._path) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._rss_mb())

    def take_peak(self) -> float:
        peak, self._peak = max(self._peak, self._rss_mb()), 0.0
        return round(peak, 1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def good_loop(make_client: Callable, pool: list, expected: list, bad: list, share: float,
              deadline: float, seed: int, phase: Phase) -> None:
    rng = np.random.default_rng(seed)
    with make_client() as client:
        while time.time() < deadline:
            malformed = rng.random() < share
            with phase.lock:
                phase.counts["requests"] += 1
            if malformed:
                name, request = bad[rng.integers(len(bad))]
                phase.record("malformed")
                try:
                    client.predict(request, signatures.RANK)
                    phase.record("malformed_accepted", example=name)
                except PredictionError:
                    pass
                continue
            index = int(rng.integers(len(pool)))
            start = time.perf_counter()
            try:
                outputs = client.predict(pool[index], signatures.RANK)
            except Exception as error:  # noqa: BLE001  (any failure of a good request is an error)
                phase.record("errors", example=f"{type(error).__name__}: {error}"[:200])
                continue
            latency = time.perf_counter() - start
            phase.record("good", latency)
            if isinstance(client, RestClient):
                phase.record("good_rest")
            logit = outputs[signatures.LOGIT]
            if logit.shape != expected[index].shape or np.abs(logit - expected[index]).max() > TOLERANCE:
                phase.record("wrong_scores", example=f"request {index}")


def _http(port: int, raw: bytes, wait_s: float) -> tuple[list[int], bool]:
    received, closed = raw_http(port, raw, wait_s)
    return (http_statuses(received) if closed else []), closed


def abuses(grpc_port: int, rest_port: int, good: dict, candidates_cap: int,
           channels: list) -> dict[str, Callable]:
    """Each abuse once: returns None if it was refused as it must be, else what happened. The
    gRPC channels it opens are appended to ``channels``, for the caller to close."""
    predict = b"POST /v1/models/muse:predict HTTP/1.1\r\nHost: load\r\n"
    status = b"GET /v1/models/muse HTTP/1.1\r\nHost: load\r\n\r\n"
    bomb = predict_pb2.PredictRequest()
    bomb.model_spec.name, bomb.model_spec.signature_name = "muse", "rank"
    for name, value in good.items():
        bomb.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    bomb.inputs[features.ITEM_ID].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT64, int64_val=[1],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=50_000_000)])))
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    raw_predict = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString)
    oversize = {**good, **{name: np.resize(good[name], 10 * candidates_cap)
                           for name in signatures.CANDIDATE_FEATURES}}
    grpc_client = GrpcClient("127.0.0.1", grpc_port, "muse", timeout=60.0)
    channels += [channel, grpc_client]

    def shape_bomb() -> str | None:
        try:
            raw_predict(bomb, timeout=30)
        except grpc.RpcError as error:
            refused = error.code() == grpc.StatusCode.INVALID_ARGUMENT
            return None if refused else f"{error.code().name}: {error.details()}"[:200]
        return "answered"

    def oversize_candidates() -> str | None:
        try:
            grpc_client.predict(oversize, "rank")
        except PredictionError as error:
            return None if f"max_candidates={candidates_cap}" in str(error) else str(error)[:200]
        return "answered"

    def oversize_body() -> str | None:
        codes, closed = _http(rest_port, predict + b"Content-Length: 1073741824\r\n\r\n", 30)
        return None if (codes, closed) == ([413], True) else f"{codes} closed={closed}"

    def chunked_smuggling() -> str | None:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(status), status)
        codes, closed = _http(rest_port, predict + b"Transfer-Encoding: chunked\r\n\r\n" + body,
                              30)
        return None if (codes, closed) == ([411], True) else f"{codes} closed={closed}"

    def stalled_connection() -> str | None:
        started = time.time()
        codes, closed = _http(rest_port, predict + b"Content-Length: 100\r\n\r\n{",
                              REST_TIMEOUT_MS / 1000 + 30)
        waited = time.time() - started
        ok = codes == [408] and closed and waited < REST_TIMEOUT_MS / 1000 + 5
        return None if ok else f"{codes} closed={closed} after {waited:.1f} s"

    def trickling_connection() -> str | None:
        received, closed_after = trickle_http(rest_port, predict * 20, TRICKLE_INTERVAL_S,
                                              REST_REQUEST_TIMEOUT_MS / 1000 + 30)
        codes = http_statuses(received)
        ok = codes == [408] and closed_after is not None and (
            closed_after < REST_REQUEST_TIMEOUT_MS / 1000 + TRICKLE_INTERVAL_S + 3)
        return None if ok else f"{codes} closed after {closed_after} s"

    return {"grpc shape bomb": shape_bomb, "oversize candidate list": oversize_candidates,
            "oversize REST body": oversize_body, "chunked smuggling": chunked_smuggling,
            "stalled REST connection": stalled_connection,
            "trickling REST connection": trickling_connection}


def abuse_loop(name: str, abuse: Callable, deadline: float, phase: Phase) -> None:
    while time.time() < deadline:
        with phase.lock:
            phase.counts["requests"] += 1
            phase.abuse[name] = phase.abuse.get(name, 0) + 1
        phase.record("abusive")
        try:
            outcome = abuse()
        except Exception as error:  # noqa: BLE001  (e.g. a reset connection: not a refusal)
            outcome = f"{type(error).__name__}: {error}"[:200]
        if outcome is not None:
            phase.record("abuse_not_refused", example=f"{name}: {outcome}")


def run_phase(clients: list[Callable], abusers: dict[str, Callable], pool: list, expected: list,
              bad: list, seconds: float, share: float, name: str, sampler: RssSampler) -> dict:
    phase = Phase()
    deadline = time.time() + seconds
    sampler.take_peak()
    threads = [threading.Thread(target=good_loop, daemon=True,
                                args=(make, pool, expected, bad, share, deadline, seed, phase))
               for seed, make in enumerate(clients)]
    threads += [threading.Thread(target=abuse_loop, daemon=True,
                                 args=(abuse_name, abuse, deadline, phase))
                for abuse_name, abuse in abusers.items()]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + REST_REQUEST_TIMEOUT_MS / 1000 + 90)
    elapsed = time.perf_counter() - start
    timing = common.summarize(phase.latencies) if phase.latencies else {}
    row = {"table": "load", "phase": name, "clients": len(clients), "seconds": round(elapsed, 1),
           **phase.counts, "requests_per_s": round(phase.counts["requests"] / elapsed, 1),
           "good_per_s": round(phase.counts["good"] / elapsed, 1),
           "good_p50_ms": timing.get("p50_ms"), "good_p99_ms": timing.get("p99_ms"),
           "malformed_share": share, "abuse_counts": phase.abuse,
           "server_peak_rss_mb": sampler.take_peak(), "examples": phase.examples,
           "hung_threads": sum(t.is_alive() for t in threads)}
    print({k: v for k, v in row.items() if k != "examples"}, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("benchmarks.load_test", __doc__, "load_test.json")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase")
    parser.add_argument("--malformed", type=float, default=0.1, help="share in the second phase")
    parser.add_argument("--history", type=int, default=1000, help="L of the good requests")
    parser.add_argument("--candidates", type=int, default=100, help="C of the good requests")
    parser.add_argument("--stalls", type=int, default=4,
                        help="stalled REST connections held at once in the abusive phase")
    parser.add_argument("--trickles", type=int, default=6,
                        help="trickling (slow-loris) REST connections held at once in the abusive "
                        "phase; with the stalls, the other abusers and the REST client they stay "
                        "below the server's 16 connection slots, so that every other REST abuse "
                        "gets its own refusal rather than 503")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    run = common.Run("load_test", args)
    base_path = fixtures.export_serving_model(os.path.join(args.work_dir, "serving_export"))
    pool = [fixtures.rank_request(args.history, args.candidates, seed=seed) for seed in range(16)]
    rank = tf.saved_model.load(os.path.join(base_path, "1")).signatures[signatures.RANK]
    expected = [rank(**{k: tf.constant(v) for k, v in r.items()})[signatures.LOGIT].numpy() for r in pool]
    bad = malformed_requests(pool[0])
    server_flags = ["--rest_api_timeout_in_ms", str(REST_TIMEOUT_MS),
                    "--rest_api_request_timeout_in_ms", str(REST_REQUEST_TIMEOUT_MS)]
    rows = []
    with local_server(base_path, rest=True, extra_args=server_flags) as server:
        clients = [lambda: GrpcClient("127.0.0.1", server.grpc_port, "muse", timeout=30.0)
                   ] * args.clients
        clients.append(lambda: RestClient("127.0.0.1", server.rest_port, "muse", timeout=30.0))
        channels: list = []
        every = abuses(server.grpc_port, server.rest_port, pool[0], limits.MAX_CANDIDATES,
                       channels)
        stall = every.pop("stalled REST connection")
        every.update({f"stalled REST connection {i + 1}": stall for i in range(args.stalls)})
        trickle = every.pop("trickling REST connection")
        every.update({f"trickling REST connection {i + 1}": trickle for i in range(args.trickles)})
        sampler = RssSampler(server.process.pid)
        phases = ((0.0, {}, "good only"), (args.malformed, {}, f"{args.malformed:.0%} malformed"),
                  (0.0, every, "good + abusers"))
        for share, abusers, name in phases:
            rows.append(run_phase(clients, abusers, pool, expected, bad, args.seconds, share, name,
                                  sampler))
        sampler.stop()
        for channel in channels:
            channel.close()
        run.extra["server_alive_after"] = server.process.poll() is None
    run.extra["request"] = {"signature": signatures.RANK, "L": args.history, "C": args.candidates,
                            "distinct_good_requests": len(pool), "grpc_clients": args.clients,
                            "rest_clients": 1, "malformed_kinds": [name for name, _ in bad],
                            "abuse_kinds": sorted({k.rstrip(" 0123456789") for k in every}),
                            "stalled_connections": args.stalls,
                            "trickling_connections": args.trickles, "server_flags": server_flags,
                            "tolerance": TOLERANCE}
    run.extra["zero_errors"] = all(
        r["errors"] == 0 and r["wrong_scores"] == 0 and r["malformed_accepted"] == 0
        and r["abuse_not_refused"] == 0 and r["hung_threads"] == 0 for r in rows)
    payload = run.finish(rows, {"load": COLUMNS})
    print("zero errors:", run.extra["zero_errors"], "| server alive after:",
          run.extra["server_alive_after"])
    return payload


if __name__ == "__main__":
    main()
