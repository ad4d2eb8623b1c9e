"""Synthetic Taobao-MM data with a planted truth, in the release's Parquet schema.

    python -m pipelines.synthetic --output DIR [--users N] [--behaviours-per-user L] [--seed S]
        [--feature-spec FILE]

The output (the six tables, one Parquet file each, as in the demo) goes through
``python -m pipelines.taobao_mm`` like the real data. The same options give the same bytes. The
planted world itself (items, users, clicks, and why MUSE should beat DIN on it) is
``muse_tf.data.synthetic``; ``pipelines.common.synthetic_parquet`` writes it as Parquet, in chunks of
users, so memory is bounded. ``--feature-spec`` writes the tables and columns of another spec (up to
5 profile features and 2 item attributes; vectors of its width and dtype), to be converted with the
same ``--feature-spec``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec
from muse_tf.data.synthetic import SyntheticConfig, check_spec


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipelines.synthetic``: one flag per ``SyntheticConfig`` field."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synthetic",
        description="Write synthetic Taobao-MM Parquet tables with a planted click model "
        "(see the module docstring).",
    )
    parser.add_argument("--output", required=True, help="directory for the Parquet files")
    parser.add_argument("--feature-spec", metavar="FILE",
                        help="write the tables and columns of this feature spec; unset: Taobao-MM's")
    for field in dataclasses.fields(SyntheticConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
            help=f"default {getattr(defaults, field.name)}",
        )
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    spec_file = args.pop("feature_spec")
    try:
        config = SyntheticConfig(**args)
        spec = FeatureSpec.load(spec_file) if spec_file else TAOBAO_MM
        check_spec(spec)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    from pipelines.common import synthetic_parquet

    counts = synthetic_parquet.generate(config, output, spec)
    print(f"wrote {counts} to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
