"""The request limits an export enforces (``muse_tf.jobs.saved_model``) and the flags that set them, apart
from the export so that command lines can offer them before TensorFlow loads."""

from __future__ import annotations

import argparse

MAX_HISTORY_LENGTH = 100_000
MAX_CANDIDATES = 5_000
MAX_HISTORY_VALUES = 1_000_000


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--max-history-length``, ``--max-candidates`` and ``--max-history-values``."""
    parser.add_argument("--max-history-length", type=int, default=MAX_HISTORY_LENGTH,
                        help="longest history a request may carry")
    parser.add_argument("--max-candidates", type=int, default=MAX_CANDIDATES,
                        help="most candidates one `rank` request may score")
    parser.add_argument("--max-history-values", type=int, default=MAX_HISTORY_VALUES,
                        help="largest rows x width of a `serving_default` request's histories")


def from_flags(args: argparse.Namespace) -> dict[str, int]:
    """The keyword arguments of ``saved_model.export_saved_model`` that ``add_flags`` defines."""
    return {
        "max_history_length": args.max_history_length,
        "max_candidates": args.max_candidates,
        "max_history_values": args.max_history_values,
    }
