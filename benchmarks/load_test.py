"""A bounded load test of the local server on loopback: N concurrent gRPC clients for T seconds,
then the same with a share of malformed requests mixed in.

    python -m benchmarks.load_test [--quick] [--clients 8] [--seconds 60] [--malformed 0.1]

Each client (a thread with its own channel) sends ``rank`` requests back to back until the phase
ends; each phase stops by itself (deadline, plus a per-request timeout). Good requests come from a
pool of distinct requests whose expected scores were computed beforehand by the same SavedModel
loaded in this process; **every** good response is compared with them (max |logit difference| <=
1e-5). A malformed request must be refused with an error; one that is answered counts as an error,
and so does a good request that fails or scores differently. The target: zero errors.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import tensorflow as tf

from benchmarks import common, fixtures
from muse_tf import features, signatures
from serving.client import GrpcClient, PredictionError
from serving.launch import local_server

COLUMNS = ["phase", "clients", "seconds", "requests", "good", "malformed", "requests_per_s",
           "good_p50_ms", "good_p99_ms", "errors", "wrong_scores", "malformed_accepted"]
TOLERANCE = 1e-5


def malformed_requests(good: dict[str, np.ndarray]) -> list[tuple[str, dict]]:
    """Requests the server must refuse, each with why."""
    too_long = np.resize(good[features.HISTORY_ITEMS], 100_001)
    return [
        ("missing input", {k: v for k, v in good.items() if k != features.ITEM_ATTRS[1]}),
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
        self.counts = {"requests": 0, "good": 0, "malformed": 0, "errors": 0, "wrong_scores": 0,
                       "malformed_accepted": 0}
        self.examples: list[str] = []

    def record(self, key: str, latency: float | None = None, example: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if latency is not None:
                self.latencies.append(latency)
            if example and len(self.examples) < 5:
                self.examples.append(example)


def client_loop(port: int, pool: list, expected: list, bad: list, share: float, deadline: float,
                seed: int, phase: Phase) -> None:
    rng = np.random.default_rng(seed)
    with GrpcClient("127.0.0.1", port, "muse", timeout=30.0) as client:
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
            logit = outputs[signatures.LOGIT]
            if logit.shape != expected[index].shape or np.abs(logit - expected[index]).max() > TOLERANCE:
                phase.record("wrong_scores", example=f"request {index}")


def run_phase(port: int, pool: list, expected: list, bad: list, clients: int, seconds: float,
              share: float, name: str) -> dict:
    phase = Phase()
    deadline = time.time() + seconds
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(port, pool, expected, bad, share, deadline, seed, phase))
               for seed in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - start
    timing = common.summarize(phase.latencies) if phase.latencies else {}
    row = {"table": "load", "phase": name, "clients": clients, "seconds": round(elapsed, 1),
           **phase.counts, "requests_per_s": round(phase.counts["requests"] / elapsed, 1),
           "good_per_s": round(phase.counts["good"] / elapsed, 1),
           "good_p50_ms": timing.get("p50_ms"), "good_p99_ms": timing.get("p99_ms"),
           "malformed_share": share, "examples": phase.examples,
           "hung_threads": sum(t.is_alive() for t in threads)}
    print({k: v for k, v in row.items() if k != "examples"}, flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser(__doc__.split("\n\n")[0], "load_test.json")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase")
    parser.add_argument("--malformed", type=float, default=0.1, help="share in the second phase")
    parser.add_argument("--history", type=int, default=1000, help="L of the good requests")
    parser.add_argument("--candidates", type=int, default=100, help="C of the good requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    run = common.Run("load_test", args)
    base_path = fixtures.export_serving_model(os.path.join(args.work_dir, "serving_export"))
    pool = [fixtures.rank_request(args.history, args.candidates, seed=seed) for seed in range(16)]
    rank = tf.saved_model.load(os.path.join(base_path, "1")).signatures[signatures.RANK]
    expected = [rank(**{k: tf.constant(v) for k, v in r.items()})[signatures.LOGIT].numpy() for r in pool]
    bad = malformed_requests(pool[0])
    run.extra["request"] = {"signature": signatures.RANK, "L": args.history, "C": args.candidates,
                            "distinct_good_requests": len(pool),
                            "malformed_kinds": [name for name, _ in bad], "tolerance": TOLERANCE}
    rows = []
    with local_server(base_path, rest=False) as server:
        for share, name in ((0.0, "good only"), (args.malformed, f"{args.malformed:.0%} malformed")):
            rows.append(run_phase(server.grpc_port, pool, expected, bad, args.clients,
                                  args.seconds, share, name))
        run.extra["server_alive_after"] = server.process.poll() is None
    run.extra["zero_errors"] = all(
        r["errors"] == 0 and r["wrong_scores"] == 0 and r["malformed_accepted"] == 0
        and r["hung_threads"] == 0 for r in rows)
    payload = run.finish(rows, {"load": COLUMNS})
    print("zero errors:", run.extra["zero_errors"], "| server alive after:",
          run.extra["server_alive_after"])
    return payload


if __name__ == "__main__":
    main()
