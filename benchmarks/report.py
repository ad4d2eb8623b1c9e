"""Renders the result files as the Markdown figures of benchmarks/README.md.

    python -m benchmarks.report [--results-dir benchmarks/results] [--write]

Without ``--write`` it prints the Markdown; with it, it replaces the block between
``<!-- figures:start -->`` and ``<!-- figures:end -->`` in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks import common

README = os.path.join(common.ROOT, "benchmarks", "README.md")
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _load(results_dir: str, name: str) -> dict | None:
    path = os.path.join(results_dir, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _machine(result: dict) -> str:
    m = result["machine"]
    waited = result.get("wait_for_quiet") or {}
    note = "" if waited.get("quiet", True) else " (did not get below the load threshold)"
    return (f"*Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB, TensorFlow "
            f"{m['tensorflow']}, Python {m['python']}; 1-minute load average {m['load_average_1m']} "
            f"at start, {m.get('load_average_1m_end')} at end{note}; {result['started']}, "
            f"{result['seconds']:.0f} s. Command: `{result['command'].strip()}`.*")


def _rows(result: dict, table: str) -> list[dict]:
    return [r for r in result["results"] if r.get("table") == table]


def train_section(result: dict, before: dict | None) -> list[str]:
    lines = ["### Training throughput (L = 1,000, K = 50, batch 1,000, CPU)", "", _machine(result), ""]
    step = [{**r, "xla": "on" if r["xla"] else "off"} for r in _rows(result, "step")]
    lines += [common.format_table(step, ["variant", "search", "xla", "examples_per_s", "step_p50_ms",
                                         "step_p90_ms", "steps", "error"]), ""]
    e2e = _rows(result, "end-to-end")
    if e2e:
        check = result.get("precomputed_search_output_check", {})
        lines += ["End to end (the training job's `fit`, input pipeline and callbacks, one epoch to "
                  "the end of the converted synthetic data, each case in a fresh process, pipeline "
                  "and step sharing the same cores; `keras_autograph` converted = tracing as before "
                  "`muse_tf.models.tracing`; examples_per_s is the steady state, whole_run from `fit` "
                  "called to returned, post_last_step_s from the last step's end to `fit` "
                  "returning):", "",
                  common.format_table(e2e, ["variant", "search", "keras_autograph", "steps",
                                            "first_step_s", "step_p50_ms", "examples_per_s",
                                            "whole_run_examples_per_s", "post_last_step_s"]), "",
                  f"Model output with the precomputed search vs in-graph, one batch of "
                  f"{check.get('batch')}: max |logit difference| = {check.get('max_abs_logit_diff')}.", ""]
    profile = _rows(result, "profile")
    if profile:
        columns = ["part", "p50_ms", "share_of_step"]
        if before and _rows(before, "profile"):
            old = {r["part"]: r["p50_ms"] for r in _rows(before, "profile")}
            profile = [{**r, "before_ms": old.get(r["part"])} for r in profile]
            columns = ["part", "before_ms", "p50_ms", "share_of_step"]
        lines += ["Profile of the MUSE step (each piece its own `tf.function`; before = the library "
                  "before this change, same machine):", "", common.format_table(profile, columns), ""]
    op_time = _rows(result, "op time")
    if op_time:
        columns = ["op_type", "ms_per_step", "share_of_op_time"]
        if before and _rows(before, "op time"):
            op_time = op_time_beside(op_time, _rows(before, "op time"))
            columns = ["op_type", "before_ms_per_step", "ms_per_step", "share_of_op_time"]
        lines += ["Kernel time of the MUSE step by op type (TensorFlow's profiler, the job's "
                  "optimizers; summed over both threads, so CPU work, not wall time; before = the "
                  "library before this change, same machine):", "",
                  common.format_table(op_time, columns), ""]
    if before:
        old = [{**r, "xla": "on" if r["xla"] else "off"} for r in _rows(before, "step")
               if r["variant"] == "muse"]
        lines += [f"Before (library at the previous commit, {_machine(before)[1:-1]}):", "",
                  common.format_table(old, ["variant", "search", "xla", "examples_per_s",
                                            "step_p50_ms", "steps"]), ""]
    return lines


def op_time_beside(rows: list[dict], before: list[dict]) -> list[dict]:
    """The op-time table with the run before beside it: an op type listed in either run gets a
    row (blank where it fell under the 1% cut or did not run), the summary rows last."""
    now = {r["op_type"]: r for r in rows}
    old = {r["op_type"]: r["ms_per_step"] for r in before}
    types = [r["op_type"] for r in rows if not r.get("summary")]
    types += [r["op_type"] for r in before if not r.get("summary") and r["op_type"] not in now]
    types += [r["op_type"] for r in rows if r.get("summary")]
    return [{"op_type": t, "before_ms_per_step": old.get(t), "ms_per_step": now.get(t, {}).get("ms_per_step"),
             "share_of_op_time": now.get(t, {}).get("share_of_op_time")} for t in types]


def serving_section(result: dict, before: dict | None) -> list[str]:
    lines = ["### Serving latency of `rank` vs its floor", "", _machine(result), ""]
    rows = _rows(result, "latency")
    lines += [common.format_table(rows, ["path", "L", "C", "p50_ms", "p99_ms", "floor_p50_ms",
                                         "floor_p99_ms", "ratio_p50", "n"]), ""]
    target = result.get("target")
    if target:
        lines += [f"**Target** (in-process `rank` within 1.5x of the floor at L = 100,000, C = 100): "
                  f"ratio p50 {target['ratio_p50']}, p99 {target['ratio_p99']} -> "
                  f"{'met' if target['met'] else 'NOT met'}.", ""]
    lines += ["Linearity (least-squares p50 = a + b L over the L grid):", "",
              common.format_table(result["linearity"], ["path", "C", "ms_per_1k_behaviours",
                                                        "intercept_ms", "max_relative_residual"]), "",
              f"![latency vs L](results/{result.get('plot', 'serving_latency.png')})", "",
              "Colour = C candidates, line style = what is timed; the floor (dotted) is the search's "
              "unavoidable work (see Definitions). Redraw the picture from the JSON without measuring: "
              "`python -m benchmarks.serving_latency --replot benchmarks/results/serving_latency.json`.",
              ""]
    if before:
        old = {(r["L"], r["C"]): r for r in _rows(before, "latency") if r["path"] == "in-process"}
        compared = [{"L": r["L"], "C": r["C"], "before_p50_ms": old[(r["L"], r["C"])]["p50_ms"],
                     "before_ratio": old[(r["L"], r["C"])]["ratio_p50"], "p50_ms": r["p50_ms"],
                     "ratio_p50": r["ratio_p50"]}
                    for r in rows if r["path"] == "in-process" and (r["L"], r["C"]) in old]
        lines += [f"In-process before this change ({_machine(before)[1:-1]}):", "",
                  common.format_table(compared, ["L", "C", "before_p50_ms", "before_ratio", "p50_ms",
                                                 "ratio_p50"]), ""]
    return lines


def memory_section(result: dict, serving: dict | None) -> list[str]:
    lines = ["### Peak resident memory (fresh process per case)", "", _machine(result), "",
             common.format_table(_rows(result, "memory"), ["case", "peak_rss_mb",
                                                           "rss_after_setup_mb", "detail"]), ""]
    if serving and serving.get("memory", {}).get("server_peak_rss_mb"):
        lines += [f"Local server process after the whole latency grid (L up to 100,000, C up to 500): "
                  f"peak RSS {serving['memory']['server_peak_rss_mb']} MB.", ""]
    return lines


def data_section(result: dict) -> list[str]:
    return ["### Data throughput", "", _machine(result), "",
            common.format_table(_rows(result, "read"), ["input", "records_per_s", "samples_per_s",
                                                        "MB_per_s", "seconds", "records", "samples"]),
            "", common.format_table(_rows(result, "convert"), [
                "users", "history", "input_rows", "samples", "seconds", "rows_per_s",
                "samples_per_s", "bytes_per_sample_train", "bytes_per_sample_test", "workers"]), ""]


def convert_section(results: list[dict]) -> list[str]:
    lines = ["### Conversion engines: local processes vs Beam's local runner", ""]
    for result in results:
        note = [f"Partial: {result['note']}", ""] if result.get("partial") else []
        lines += [_machine(result), "", *note, common.format_table(result["results"], [
            "users", "engine", "input_rows", "samples", "seconds", "rows_per_s", "samples_per_s",
            "peak_rss_mb", "time_vs_local", "memory_vs_local"]), ""]
    return lines


def load_section(result: dict) -> list[str]:
    request = result.get("request", {})
    abuse = request.get("abuse_kinds")
    abuse_line = (f" Abusive phase: the good clients plus one thread per abuse ({', '.join(abuse)}; "
                  f"{request.get('stalled_connections')} stalled connections"
                  + (f" and {request['trickling_connections']} trickling ones"
                     if "trickling_connections" in request else "")
                  + " at once), each "
                  f"repeated until the phase ends; server flags {' '.join(request['server_flags'])}. "
                  "`server_peak_rss_mb`: the server's resident memory, sampled every 20 ms, peak "
                  "within the phase." if abuse else "")
    return ["### Load test (local server, loopback, gRPC and REST)", "", _machine(result), "",
            f"`rank` requests with L = {request.get('L'):,}, C = {request.get('C')}; "
            f"{request.get('distinct_good_requests')} distinct good requests, every response checked "
            f"against in-process scores (tolerance {request.get('tolerance')}); malformed kinds: "
            f"{', '.join(request.get('malformed_kinds', []))}.{abuse_line}", "",
            common.format_table(_rows(result, "load"), [
                "phase", "clients", "seconds", "requests", "good", "malformed", "abusive",
                "requests_per_s", "good_p50_ms", "good_p99_ms", "errors", "wrong_scores",
                "malformed_accepted", "abuse_not_refused", "server_peak_rss_mb"]), "",
            f"Zero errors: **{result.get('zero_errors')}**; server alive afterwards: "
            f"{result.get('server_alive_after')}.", ""]


def iterator_section(result: dict) -> list[str]:
    from benchmarks.iterator_release import COLUMNS

    seconds = result.get("setting", {}).get("seconds_before_delete")
    return ["### Deleting a tf.data iterator: the caller's wait", "", _machine(result), "",
            f"Each repeat iterates an autotuned pipeline for {seconds} s at one element per 10 ms, "
            "then deletes its iterator (cases interleaved).", "",
            common.format_table(result["results"], COLUMNS), ""]


def versus_section(result: dict) -> list[str]:
    from benchmarks import versus_official

    official = result.get("official", {})
    first = next(r for r in result["results"] if r.get("side") == versus_official.OFFICIAL)
    ratio = result.get("ratio", {})
    malloc = official.get("malloc", common.SYSTEM_MALLOC)
    return ["### MUSE train step: muse-tf vs the official PyTorch code (same CPU, alternated)", "",
            _machine(result), "",
            f"Official code at commit {official.get('commit')}, torch {first.get('torch')} "
            f"({first.get('torch_threads')} threads, malloc: {malloc}); "
            f"the same batch of {first.get('batch'):,} "
            f"samples ({first.get('samples_per_user')} per history), L = {first.get('history'):,}, "
            f"K = {first.get('top_k')}; each round runs "
            "the official step, then muse-tf's, each in a fresh process.", "",
            common.format_table(_rows(result, "rounds"), versus_official.COLUMNS + ["metrics_p50_ms"]),
            "", common.format_table(_rows(result, "summary"), versus_official.SUMMARY_COLUMNS), "",
            f"Ratio of medians, muse-tf / official: **{ratio.get('examples_per_s_ours_over_official')}x** "
            f"examples/s; first step, official / muse-tf: {ratio.get('first_step_official_over_ours')}x.",
            ""]


def render(results_dir: str) -> str:
    lines: list[str] = []
    train = _load(results_dir, "train_throughput")
    serving = _load(results_dir, "serving_latency")
    if train:
        lines += train_section(train, _load(results_dir, "train_throughput_before"))
    if serving:
        lines += serving_section(serving, _load(results_dir, "serving_latency_before"))
    memory = _load(results_dir, "memory")
    if memory:
        lines += memory_section(memory, serving)
    data = _load(results_dir, "data_throughput")
    if data:
        lines += data_section(data)
    convert = [_load(results_dir, name[:-5]) for name in sorted(os.listdir(results_dir))
               if name.startswith("convert_engines") and name.endswith(".json")]
    if convert:
        lines += convert_section(convert)
    load = _load(results_dir, "load_test")
    if load:
        lines += load_section(load)
    releases = _load(results_dir, "iterator_release")
    if releases:
        lines += iterator_section(releases)
    versus = _load(results_dir, "versus_official")
    if versus:
        lines += versus_section(versus)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=common.RESULTS_DIR)
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md in place")
    args = parser.parse_args(argv)
    markdown = render(args.results_dir)
    if not args.write:
        print(markdown)
        return
    with open(README) as f:
        text = f.read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(README, "w") as f:
        f.write(f"{head}{START}\n{markdown}{END}{tail}")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
