"""Export a finished training run again as a SavedModel for TF Serving (e.g. with another
``--max-history-length``); ``muse_tf.train`` already exports at the end of every run.

    python -m muse_tf.export --model-dir runs/muse --data DATA_DIR --export-dir exports

It restores the run's model (``config.yaml`` + ``final/weights``, refused if the config was edited
since training), reads the vocabularies of the converted dataset it was trained on (refused if
``--data`` is another dataset) and writes ``EXPORT_DIR/NAME/VERSION`` (the export itself, its
signatures and limits: ``muse_tf.jobs.saved_model``). Versions of one name come from one run:
exporting into a ``NAME`` that holds another run's versions is refused unless
``--allow-other-runs``. TensorFlow loads after the arguments are parsed.

With ``--items ITEMS.parquet`` the export takes the current item table instead of the training one:
items created after training are scored by their multimodal vectors (learned weights unchanged,
``muse_tf.jobs.item_refresh``). Export into the directory TF Serving watches, and it serves the new
version (newest + 1) without a restart.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from muse_tf import cli
from muse_tf.contract import limits, signatures


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m muse_tf.export``."""
    parser = cli.parser("muse_tf.export", __doc__)
    parser.add_argument("--model-dir", required=True,
                        help="a finished training run (config.yaml and final/weights of "
                        "muse_tf.train)")
    parser.add_argument("--data", required=True, help="the converted dataset it was trained on")
    parser.add_argument("--export-dir", required=True,
                        help="base directory: writes EXPORT_DIR/NAME/VERSION")
    parser.add_argument("--model-name", default=signatures.DEFAULT_MODEL_NAME,
                        help="model name in the serving layout")
    parser.add_argument("--version", type=int, help="version directory (None: newest + 1)")
    parser.add_argument("--items",
                        help="a Parquet items file (item_id, item_vector[, item_category]): export "
                        "with these items' vectors, items new since training included")
    parser.add_argument("--allow-other-runs", action="store_true",
                        help="export even if EXPORT_DIR/NAME holds versions of another run (TF "
                        "Serving then serves whichever version is newest under one name)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
    limits.add_flags(parser)
    return parser


def export(args: argparse.Namespace) -> str:
    """Exports the run ``args.model_dir``; prints and returns the version directory."""
    from muse_tf.contract import dataset_dir
    from muse_tf.jobs import item_refresh, runs, saved_model

    dataset_dir.ensure_filesystems([args.data])
    dataset_dir.require_dataset(args.data)  # before the model is built
    run = runs.RunDir(args.model_dir)
    if args.items:  # checked before the model is built
        items = item_refresh.read_items(args.items, run.read_config().model)
    with runs.working_in_trained_run(args.model_dir, args.data) as (model, _):
        vocabularies = dataset_dir.load_vocabularies(args.data)  # once the run is known good
        if args.items:
            model, vocabularies, counts = item_refresh.refresh(model, vocabularies, *items)
            print(item_refresh.describe(counts, args.items))
        path = saved_model.export_saved_model(
            model, vocabularies, args.export_dir, args.model_name, args.version,
            **limits.from_flags(args),
            source=run.identity(), allow_other_runs=args.allow_other_runs,
        )
    print(f"SavedModel: {path}")
    return path


def main(argv: Sequence[str] | None = None) -> str:
    """``python -m muse_tf.export``: exports a finished run; returns the version directory."""
    return cli.run(export, arguments(), argv)


if __name__ == "__main__":
    main()
