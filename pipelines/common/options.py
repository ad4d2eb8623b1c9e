"""The options of a conversion, one object for both engines: what the command lines parse
(``add_arguments``, ``from_args``) and what the engines run with once the defaults that depend on
the input's size are filled (``resolved``).

Parsing loads neither TensorFlow nor Beam, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable

from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec
from pipelines.common.raw_schema import SPLITS, RawSchema

SHARD_INPUT_BYTES = 256 << 20  # of compressed samples + user features per output shard
PARTITION_INPUT_BYTES = 256 << 20  # of compressed train input per count partition


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """A conversion of ``input_dir`` (the Parquet tables of ``feature_spec``) into the dataset
    ``output``.

    Attributes:
        feature_spec: the raw tables and columns and the features they feed (default: Taobao-MM).
        history_cap: history behaviours kept per user (the most recent).
        min_count: vocabulary -> the count an ID needs to be kept (unset: 1).
        shards: split -> output shards (unset or None: by input size).
        partitions: count partitions of the vocabulary reduce (set by ``resolved``).
        keep_work: keep the work directory at the end.
        overwrite: clear an existing conversion in ``output`` first.
    """

    input_dir: str
    output: str
    history_cap: int = 1000
    min_count: dict[str, int] = dataclasses.field(default_factory=dict)
    shards: dict[str, int | None] = dataclasses.field(default_factory=dict)
    partitions: int | None = None
    keep_work: bool = False
    overwrite: bool = False
    feature_spec: FeatureSpec = TAOBAO_MM

    @property
    def schema(self) -> RawSchema:
        """The raw tables and columns of ``feature_spec``."""
        return RawSchema(self.feature_spec)

    def resolved(
        self, tables: dict[str, list[str]], size: Callable[[str], int] = os.path.getsize
    ) -> ConversionOptions:
        """A copy with every default filled: min-counts of all vocabularies, shards per split
        (unset ones) and count partitions from the input's size (``size`` gives a file's bytes).

        Raises:
            ValueError: naming an option that is out of range or an unknown vocabulary.
        """
        if self.history_cap <= 0:
            raise ValueError(f"`history_cap` must be positive, got {self.history_cap}.")
        vocabularies = self.feature_spec.vocabularies
        unknown = set(self.min_count) - set(vocabularies)
        if unknown:
            raise ValueError(
                f"Unknown vocabularies {sorted(unknown)} in min-count; known: {list(vocabularies)}."
            )
        schema = self.schema
        from pipelines.common import vocab  # TensorFlow loads here, after parsing

        shards = {}
        for split in SPLITS:
            names = (schema.samples_table[split], schema.user_table[split])
            count = self.shards.get(split) or max(
                2, math.ceil(_input_bytes(tables, names, size) / SHARD_INPUT_BYTES)
            )
            if count <= 0:
                raise ValueError(f"Shards for {split!r} must be positive, got {count}.")
            shards[split] = count
        train_names = tuple({*vocab.counted_columns(schema), schema.scl_embeddings})
        return dataclasses.replace(
            self,
            min_count={name: self.min_count.get(name, 1) for name in vocabularies},
            shards=shards,
            partitions=max(
                1, math.ceil(_input_bytes(tables, train_names, size) / PARTITION_INPUT_BYTES)
            ),
        )

    def work_params(self) -> dict:
        """The options that decide the output, recorded in the work directory: an unfinished
        conversion is resumed (or cleared) only under the same."""
        return {
            "history_cap": self.history_cap,
            "min_count": self.min_count,
            "shards": self.shards,
            "partitions": self.partitions,
            "feature_spec": self.feature_spec.to_dict(),
        }


def _input_bytes(
    tables: dict[str, list[str]], names: tuple[str, ...], size: Callable[[str], int]
) -> int:
    return sum(size(path) for name in names for path in tables[name])


def parse_min_count(values: list[str], vocabularies: tuple[str, ...]) -> dict[str, int]:
    """``--min-count`` values (``N`` or ``name=N``) -> {vocabulary: N} (``N``: every one of
    ``vocabularies``)."""
    counts: dict[str, int] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"--min-count {value!r}: expected N or name=N.")
        for vocab_name in [name] if sep else vocabularies:
            counts[vocab_name] = int(number)
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of both conversion commands: those of ``ConversionOptions``, and ``--verbose``."""
    parser.add_argument("--input", required=True,
                        help="directory holding the raw Parquet tables (of --feature-spec)")
    parser.add_argument("--feature-spec", metavar="FILE",
                        help="YAML or JSON feature spec naming the raw tables and columns "
                        "(README, 'Your own data'); unset: the Taobao-MM release's")
    parser.add_argument("--output", required=True, help="dataset directory to write")
    parser.add_argument("--history-cap", type=int, default=1000,
                        help="history behaviours kept per user (the most recent)")
    parser.add_argument("--min-count", action="append", metavar="[NAME=]N",
                        help="keep IDs seen at least N times in train (all vocabularies, or NAME "
                        "only; repeatable; unset: 1). Items with an SCL vector are always kept.")
    parser.add_argument("--train-shards", type=int, help="output shards; unset: by input size")
    parser.add_argument("--test-shards", type=int, help="output shards; unset: by input size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing conversion")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's (and Beam's) start-up logs")


def from_args(args: argparse.Namespace) -> ConversionOptions:
    """The options that ``add_arguments``' flags give.

    Raises:
        argparse.ArgumentTypeError: naming a malformed ``--min-count``.
        FeatureSpecError: naming the ``--feature-spec`` file and its bad key.
    """
    spec = FeatureSpec.load(args.feature_spec) if args.feature_spec else TAOBAO_MM
    return ConversionOptions(
        args.input,
        args.output,
        history_cap=args.history_cap,
        min_count=parse_min_count(args.min_count or [], spec.vocabularies),
        shards={"train": args.train_shards, "test": args.test_shards},
        keep_work=args.keep_work,
        overwrite=args.overwrite,
        feature_spec=spec,
    )
