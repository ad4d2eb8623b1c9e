"""Runs the Beam engine (``python -m pipelines.beam_convert``): claims the output, builds the
pipeline on the runner that the Beam pipeline options choose (DirectRunner by default), runs it,
and finishes the dataset. Input and output may be any Beam file system (local, ``gs://``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam import files, finish, metrics
from pipelines.beam.pipeline import build_pipeline
from pipelines.common import join_check, output_dir, summary
from pipelines.common import parquet_input as pi
from pipelines.common.options import ConversionOptions


def refuse_unknown_options(pipeline_args: Sequence[str]) -> None:
    """Refuses an argument that no Beam options class knows: Beam itself only logs and drops it,
    so a mistyped ``--runer DirectRunner`` would run on the default runner.

    Raises:
        ValueError: naming the first unknown option (and the closest known one, if any).
    """
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions(list(pipeline_args)).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(pipeline_args))
    if not unknown:
        return
    name = next((arg for arg in unknown if arg.startswith("-")), unknown[0]).split("=", 1)[0]
    close = difflib.get_close_matches(name, list(parsers[0]._option_string_actions), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"{name}: neither an option of this command nor a Beam pipeline option{hint}.")


def convert(options: ConversionOptions, *, pipeline_args: Sequence[str] = ()) -> dict:
    """Runs the conversion on the runner ``pipeline_args`` choose; returns the manifest."""
    input_dir, output = options.input_dir.rstrip("/"), options.output.rstrip("/")
    pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
    refuse_unknown_options(pipeline_args)  # once the runner's own options classes are loaded
    tables = pi.discover_tables(
        input_dir, options.schema, files.match if "://" in input_dir else None
    )
    join_check.check_split_joins(input_dir, "train", tables, options.schema, files.open_read)
    options = dataclasses.replace(options, input_dir=input_dir, output=output)
    options = options.resolved(tables, size=files.size)
    inputs = {t: [[path, files.size(path)] for path in paths] for t, paths in tables.items()}
    params = {**options.work_params(), "inputs": inputs}
    with output_dir.claimed(
        output, output_dir.BEAM_WORK, params, overwrite=options.overwrite, resumable=False
    ) as work:
        build_pipeline(pipeline, tables, options, work)
        metrics.start_progress()
        result = pipeline.run()
        result.wait_until_finish()
        manifest = finish.finish(metrics.counters(result), work, tables, options)
        if not options.keep_work:
            FileSystems.delete([work])
    summary.print_summary(manifest)
    return manifest
