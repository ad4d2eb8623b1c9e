"""Serving latency of the exported ``rank`` signature against its floor, for L behaviours and C
candidates, in-process and through the local server (gRPC and REST).

    python -m benchmarks.serving_latency [--quick] [--output benchmarks/results/serving_latency.json]

The model: paper-sized MUSE (D = 16, K = 50, R = 50, tower 256-128-64), a 250,000-item int8
multimodal table, random weights (latency does not depend on their values), exported with
``muse_tf.export`` (``max_history_length`` 100,000).

**Floor**, measured in the same process, its calls alternating with ``rank``'s (so that both see
the same machine), timed the same way: the work no implementation of the search can avoid, with
plain TensorFlow ops on the same packed table: gather the L x 128 history vectors (and the C
targets'), de-quantise them, one C x L x 128 matmul, top-K.
It leaves out the raw-ID lookups, dropping padding and items without a vector, scaling to unit
length and the ESU/tower, so ``ratio`` = rank p50 / floor p50 measures everything else. Latency
must grow linearly with L: the JSON has the least-squares slope per C, and ``serving_latency.png``
the curve.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from benchmarks import common, fixtures
from muse_tf.contract import features, signatures, vocabulary
from serving.client import GrpcClient, RestClient
from serving.launch import local_server

LENGTHS = (1_000, 10_000, 100_000)
CANDIDATES = (1, 100, 500)
COLUMNS = ["path", "L", "C", "p50_ms", "p99_ms", "floor_p50_ms", "floor_p99_ms", "ratio_p50", "n"]


def floor_function(packed_table: tf.Variable, dim: int, top_k: int) -> tf.types.experimental.GenericFunction:
    """The unavoidable work: gather + de-quantise L x dim, one C x L x dim matmul, top-K."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
    def floor(history: tf.Tensor, candidates: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # A dense read, as the model's: a gather straight from the variable (ResourceGather)
        # would switch it to copy-on-read mode, and every later read by `rank` would copy it.
        table = tf.convert_to_tensor(packed_table)

        def vectors(rows: tf.Tensor) -> tf.Tensor:
            words = tf.gather(table, rows)
            return tf.cast(tf.reshape(tf.bitcast(words, tf.int8), [-1, dim]), tf.float32)

        scores = tf.matmul(vectors(candidates), vectors(history), transpose_b=True)
        return tf.math.top_k(scores, k=tf.minimum(top_k, tf.shape(history)[0]))

    return floor


def indices_of(vocabularies: dict[str, np.ndarray], request: dict[str, np.ndarray]) -> tuple:
    vocab = vocabularies["item"]
    return (tf.constant(vocabulary.lookup(vocab, request[features.HISTORY_ITEMS]), tf.int32),
            tf.constant(vocabulary.lookup(vocab, request[features.ITEM_ID]), tf.int32))


def in_process_rows(base_path: str, lengths: tuple, candidates: tuple, budget_s: float) -> list[dict]:
    loaded = tf.saved_model.load(os.path.join(base_path, "1"))
    rank = loaded.signatures[signatures.RANK]
    table = next(v for v in loaded.model_variables if v.name == "multimodal/table:0")
    floor = floor_function(table, 128, fixtures.serving_config().top_k)
    vocabularies = fixtures.vocabularies()
    rows = []
    for length in lengths:
        for count in candidates:
            request = fixtures.rank_request(length, count)
            tensors = {name: tf.constant(value) for name, value in request.items()}
            history, targets = indices_of(vocabularies, request)
            timings = common.time_interleaved(
                {"rank": lambda t=tensors: rank(**t)[signatures.LOGIT].numpy(),
                 "floor": lambda h=history, c=targets: floor(h, c)[0].numpy()},
                repeats=200, max_seconds=2 * budget_s)
            measured, floor_t = timings["rank"], timings["floor"]
            row = {"table": "latency", "path": "in-process", "L": length, "C": count,
                   **measured, "floor_p50_ms": floor_t["p50_ms"], "floor_p99_ms": floor_t["p99_ms"],
                   "ratio_p50": round(measured["p50_ms"] / floor_t["p50_ms"], 3),
                   "ratio_p99": round(measured["p99_ms"] / floor_t["p99_ms"], 3)}
            print(row, flush=True)
            rows.append(row)
    return rows


def server_rows(base_path: str, lengths: tuple, candidates: tuple, budget_s: float,
                protocols: tuple) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    if not protocols:
        return rows, {}
    with local_server(base_path, rest="rest" in protocols) as server:
        for protocol in protocols:
            client = (GrpcClient("127.0.0.1", server.grpc_port, "muse") if protocol == "grpc"
                      else RestClient("127.0.0.1", server.rest_port, "muse"))
            with client:
                for length in lengths:
                    for count in candidates:
                        request = fixtures.rank_request(length, count)
                        measured = common.time_calls(
                            lambda c=client, r=request: c.predict(r, signatures.RANK),
                            repeats=100, max_seconds=budget_s)
                        row = {"table": "latency", "path": f"server {protocol}", "L": length,
                               "C": count, **measured}
                        print(row, flush=True)
                        rows.append(row)
        memory = {"server_peak_rss_mb": process_peak_rss_mb(server.process.pid)}
    return rows, memory


def process_peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def attach_floors(rows: list[dict]) -> None:
    """Server rows get the in-process floor of the same (L, C) and their ratio to it."""
    floors = {(r["L"], r["C"]): r for r in rows if r["path"] == "in-process"}
    for row in rows:
        floor = floors.get((row["L"], row["C"]))
        if row["path"] != "in-process" and floor:
            row["floor_p50_ms"], row["floor_p99_ms"] = floor["floor_p50_ms"], floor["floor_p99_ms"]
            row["ratio_p50"] = round(row["p50_ms"] / floor["floor_p50_ms"], 3)


def linearity(rows: list[dict]) -> list[dict]:
    """Least-squares fit p50 = a + b * L per (path, C): slope b in ms per 1,000 behaviours, and
    how far the largest L lies from the line fitted to all points."""
    fits = []
    for path in sorted({r["path"] for r in rows}):
        for count in sorted({r["C"] for r in rows}):
            points = sorted((r["L"], r["p50_ms"]) for r in rows if r["path"] == path and r["C"] == count)
            if len(points) < 3:
                continue
            x, y = np.array(points, np.float64).T
            slope, intercept = np.polyfit(x, y, 1)
            predicted = intercept + slope * x
            fits.append({"path": path, "C": count, "ms_per_1k_behaviours": round(1e3 * slope, 4),
                         "intercept_ms": round(intercept, 3),
                         "max_relative_residual": round(float(np.max(np.abs(y - predicted) / y)), 3)})
    return fits


FLOOR_CAPTION = ("floor = the work no implementation of the search can avoid, timed in the same process "
                 "on the same int8 table with plain TensorFlow ops:\ngather + de-quantise the L x 128 "
                 "history vectors, one C x L x 128 matmul, top-K. It leaves out the raw-ID lookups, "
                 "unit scaling, the ESU and the tower.")


def plot(rows: list[dict], path: str, subtitle: str = "") -> None:
    """Left: p50 vs L, log-log (slope 1 = linear), rank in-process / via gRPC and the floor, per C.
    Right: the in-process p50 on linear axes with its least-squares line. Colour = C, line style =
    what is timed; one legend beside the panels and the floor defined under them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    counts = sorted({r["C"] for r in rows})
    colours = {c: f"C{i}" for i, c in enumerate(counts)}
    series = (("rank, in-process", "in-process", "p50_ms", "-o"),
              ("rank, via gRPC (local server)", "server grpc", "p50_ms", "--^"),
              ("floor (defined below)", "in-process", "floor_p50_ms", ":s"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    fits = []
    for count in counts:
        for _, source, key, style in series:
            points = sorted((r["L"], r[key]) for r in rows
                            if r["path"] == source and r["C"] == count and key in r)
            if points:
                left.plot(*zip(*points), style, color=colours[count])
        points = sorted((r["L"], r["p50_ms"]) for r in rows if r["path"] == "in-process" and r["C"] == count)
        if len(points) >= 2:
            x, y = (np.array(v, np.float64) for v in zip(*points))
            slope, intercept = np.polyfit(x, y, 1)
            right.plot(x, y, "o", color=colours[count])
            right.plot(x, intercept + slope * x, "-", color=colours[count], alpha=0.5)
            fits.append((count, f"C={count}: {intercept:.1f} ms + {1e3 * slope:.2f} ms per 1k behaviours"))
    left.set(xscale="log", yscale="log", xlabel="history length L (behaviours, log scale)",
             ylabel="p50 latency (ms, log scale)", title="rank vs its floor (log-log: slope 1 = linear)")
    right.set(xlabel="history length L (behaviours)", ylabel="p50 latency (ms)",
              title="rank in-process, linear axes, least-squares lines")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colours[c], linewidth=6, label=f"C = {c} candidates") for c in counts]
    handles += [Line2D([], [], color="#444444", linestyle=style[:-1], marker=style[-1], label=label)
                for label, _, _, style in series]
    handles += [Line2D([], [], color="none", label="lines on the right, p50 = a + b L:")]
    handles += [Line2D([], [], color=colours[count], alpha=0.5, label=fit) for count, fit in fits]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.735, 0.55), fontsize=8,
               frameon=False)
    fig.text(0.01, 0.01, FLOOR_CAPTION, fontsize=8, color="#333333", ha="left", va="bottom")
    right.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    if subtitle:
        fig.suptitle(subtitle, fontsize=9, color="#333333")
    fig.tight_layout(rect=(0, 0.07, 0.735, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def replot(json_path: str, path: str) -> None:
    """Redraws the PNG from a saved results file, without measuring anything."""
    with open(json_path) as f:
        payload = json.load(f)
    plot([r for r in payload["results"] if r.get("table", "latency") == "latency"], path,
         subtitle=conditions(payload["started"], payload["machine"]))


def conditions(started: str, machine: dict) -> str:
    """The figure's subtitle: when and on what the latencies were measured."""
    return (f"measured {started[:10]} on {machine['nproc']} cores, TensorFlow {machine['tensorflow']}, "
            f"Python {machine['python']}")


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser("benchmarks.serving_latency", __doc__, "serving_latency.json")
    parser.add_argument("--protocols", nargs="*", default=["grpc", "rest"], choices=["grpc", "rest"])
    parser.add_argument("--plot", default=None, help="PNG of latency vs L (default: beside --output)")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the PNG from this results file "
                        "(to --plot, default: beside it); measures nothing")
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.replot, args.plot or os.path.splitext(args.replot)[0] + ".png")
        return {}
    lengths, candidates = ((1_000, 3_000, 10_000), (1, 100)) if args.quick else (LENGTHS, CANDIDATES)
    budget_s = 1.5 if args.quick else 6.0
    run = common.Run("serving_latency", args)
    base_path = fixtures.export_serving_model(os.path.join(args.work_dir, "serving_export"))
    rows = in_process_rows(base_path, lengths, candidates, budget_s)
    server, memory = server_rows(base_path, lengths, candidates, budget_s / 2, tuple(args.protocols))
    rows += server
    attach_floors(rows)
    run.extra["linearity"] = linearity(rows)
    run.extra["memory"] = memory
    target = next((r for r in rows if r["path"] == "in-process" and r["L"] == 100_000 and r["C"] == 100),
                  None)
    if target:
        run.extra["target"] = {"L": 100_000, "C": 100, "ratio_p50": target["ratio_p50"],
                               "ratio_p99": target["ratio_p99"], "met": target["ratio_p50"] <= 1.5}
    plot_path = args.plot or os.path.splitext(args.output)[0] + ".png"
    plot(rows, plot_path, subtitle=conditions(run.started, run.machine))
    run.extra["plot"] = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(args.output)))
    payload = run.finish(rows, {"latency": COLUMNS})
    print("\nlinearity (p50 = a + b L):")
    print(common.format_table(run.extra["linearity"], ["path", "C", "ms_per_1k_behaviours",
                                                       "intercept_ms", "max_relative_residual"]))
    print("memory:", memory, "target:", run.extra.get("target"))
    return payload


if __name__ == "__main__":
    main()
