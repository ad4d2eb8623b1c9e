"""Build a TF Serving request for one user of a converted dataset: that user's real history and
known candidate items, as the raw IDs a client sends.

    python -m serving.request --data runs/data/synthetic-u2000-l1000-s0 --output request.json

The output is TF Serving's REST body, ``{"signature_name": ..., "inputs": {...}}``:
``python -m serving.client --request request.json`` sends it over gRPC or REST, and so does
``curl -d @request.json http://HOST:8501/v1/models/muse:predict``.

The dataset's records hold vocabulary indices; its vocabularies map them back to raw IDs. An ID
the vocabulary lacked was stored as OOV and cannot be recovered: it is sent as an ID the
vocabulary does not hold (``muse_tf.contract.vocabulary.unknown_id``), which the export maps to OOV again,
so the model sees the input it was evaluated on. The candidates are the user's own samples in the
split (``--split``, default test; their labels are printed), then ``--random-candidates`` other
items drawn with ``--seed`` from the items of the split's samples (which carry the category and
attributes a candidate needs), all of them in the item vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from muse_tf import cli
from muse_tf.contract import features, signatures, strict_json
from muse_tf.contract.feature_spec import FeatureSpec
from serving import protos, tfrecord

DEFAULT_RANDOM_CANDIDATES = 20
# Random candidates come from the split's items; reading stops once the user is found and this many
# times the requested number of distinct items are known (the whole split when it holds fewer).
POOL_FACTOR = 50


@dataclasses.dataclass
class UserRecord:
    """One user's record of a split, as vocabulary indices (``muse_tf.contract.records``)."""

    key: int  # the raw user ID
    user: dict[str, int]  # user_id and the profile features (Taobao-MM: user_profile_1..5)
    history: dict[str, np.ndarray]  # history_items, history_categories, oldest first
    candidates: dict[str, np.ndarray]  # the samples' item_id, item_category and attributes
    labels: np.ndarray
    shard: str


def int64(text: str) -> int:
    """A raw ID: an integer of int64's range, as every ID of the records."""
    value = int(text)
    if not strict_json.INT64_MIN <= value <= strict_json.INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"user IDs are int64, in {strict_json.INT64_RANGE}; got {text}"
        )
    return value


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m serving.request``."""
    parser = cli.parser("serving.request", __doc__)
    parser.add_argument("--data", required=True,
                        help="converted dataset directory (the run's --data, e.g. the quick start's "
                        "runs/data/synthetic-u2000-l1000-s0)")
    parser.add_argument("--user", type=int64,
                        help="raw user ID; default: the first user of the split (printed)")
    parser.add_argument("--split", default="test", help="split whose record and samples are used")
    parser.add_argument("--signature", default="rank",
                        help="rank (one user, C candidates), serving_default (C rows) or "
                        "rank_by_user (rank's user ID and candidates; the server adds the history)")
    parser.add_argument("--random-candidates", type=int, default=DEFAULT_RANDOM_CANDIDATES,
                        metavar="N", help="random known items added after the user's own samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random candidates")
    parser.add_argument("--output", default="-", help="request file; - for stdout")
    parser.add_argument("--verbose", action="store_true",
                        help="TensorFlow's start-up logs (TensorFlow is loaded only to read a "
                        "remote --data, e.g. gs://)")
    return parser


def _records(
    files: Sequence[str], first: int, spec: FeatureSpec
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(shard, {feature: values}) of every record, starting with shard ``first``.

    Raises:
        ValueError: naming a damaged shard (``serving.tfrecord``).
    """
    from muse_tf.contract import records

    names = records.record_features(spec)
    for path in [*files[first:], *files[:first]]:
        for serialized in tfrecord.read_records(path):
            feature = protos.example().Example.FromString(serialized).features.feature
            yield path, {name: np.array(feature[name].int64_list.value, np.int64) for name in names}


def read_user(
    data_dir: str, split: str, user: int | None, pool_size: int
) -> tuple[UserRecord, dict[str, np.ndarray]]:
    """The record of ``user`` (default: the split's first user with samples) and a pool of the
    split's distinct candidate items ({feature: (P,) indices}, at least ``pool_size`` when the
    split has them). The user's shard (``hashing.partition_of``, the conversion's rule) is read
    first, so a given user is usually found in one shard.

    Raises:
        cli.UsageError: the split has no sample of ``user`` (or no sample at all).
    """
    from muse_tf.contract import dataset_dir, hashing

    files = dataset_dir.split_files(data_dir, split)
    spec = dataset_dir.load_feature_spec(data_dir)
    first = 0 if user is None else int(hashing.partition_of(np.array([user]), len(files))[0])
    found, pool = None, {}
    for path, record in _records(files, first, spec):
        items = np.stack([record[name] for name in spec.candidate_features], axis=1)
        pool.update({int(row[0]): row for row in items if row[0] > features.OOV})
        key = int(record[features.USER_KEY][0])
        if found is None and len(record[features.LABEL]) and user in (None, key):
            found = UserRecord(
                key=key,
                user={name: int(record[name][0]) for name in spec.user_features},
                history={name: record[name] for name in features.SEQUENCE_FEATURES},
                candidates={name: record[name] for name in spec.candidate_features},
                labels=record[features.LABEL],
                shard=path,
            )
        if found is not None and len(pool) >= pool_size:
            break
    if found is None:
        who = "any user" if user is None else f"user {user}"
        raise cli.UsageError(f"the {split!r} split of {data_dir} has no sample of {who}; "
                             "pick a user with --user, or another --split.")
    rows = np.array([pool[item] for item in sorted(pool)], np.int64).reshape(
        -1, len(spec.candidate_features)
    )
    return found, {name: rows[:, i] for i, name in enumerate(spec.candidate_features)}


def random_candidates(
    pool: dict[str, np.ndarray], exclude: np.ndarray, count: int, seed: int
) -> dict[str, np.ndarray]:
    """``count`` distinct pool items not in ``exclude`` (item indices), drawn with ``seed``."""
    eligible = np.flatnonzero(~np.isin(pool[features.ITEM_ID], exclude))
    chosen = np.random.default_rng(seed).choice(eligible, min(count, len(eligible)), replace=False)
    return {name: values[np.sort(chosen)] for name, values in pool.items()}


def rank_inputs(
    record: UserRecord, candidates: dict[str, np.ndarray], vocabularies: dict[str, np.ndarray],
    spec: FeatureSpec,
) -> dict[str, int | list[int]]:
    """The ``rank`` signature's inputs as raw IDs: the user's scalars and history, then the
    user's own candidates followed by ``candidates``."""
    from muse_tf.contract import vocabulary

    def raw(name: str, indices: np.ndarray) -> np.ndarray:
        ids = vocabularies[spec.vocabulary[name]]
        return vocabulary.raw_ids(ids, indices, vocabulary.unknown_id(ids))

    inputs: dict[str, int | list[int]] = {features.USER_ID: record.key}
    for name in spec.profile_features:
        inputs[name] = int(raw(name, np.array(record.user[name])))
    for name, indices in record.history.items():
        inputs[name] = raw(name, indices).tolist()
    for name in spec.candidate_features:
        indices = np.concatenate([record.candidates[name], candidates[name]])
        inputs[name] = raw(name, indices).tolist()
    return inputs


def serving_default_inputs(rank: dict[str, int | list[int]]) -> dict[str, list]:
    """The same scoring as ``serving_default`` rows: one row per candidate, each with the user's
    features and history (right-padded rows of width max(L, 1) and their ``history_length``)."""
    rows = len(rank[features.ITEM_ID])
    length = len(rank[features.HISTORY_ITEMS])
    inputs: dict[str, list] = {}
    for name, value in rank.items():
        if name in features.SEQUENCE_FEATURES:
            inputs[name] = [list(value) or [0]] * rows  # width >= 1 (serving/README.md)
        elif isinstance(value, int):  # a user scalar
            inputs[name] = [value] * rows
        else:
            inputs[name] = value
    inputs[signatures.VALID_HISTORY_LENGTH] = [length] * rows
    return inputs


def build_request(args: argparse.Namespace) -> tuple[dict, str]:
    """The request body for the command line's user and a summary of what it holds."""
    from muse_tf.contract import dataset_dir

    choices = (*signatures.SIGNATURES, signatures.RANK_BY_USER)
    if args.signature not in choices:
        raise cli.UsageError(f"--signature {args.signature!r}: use one of {choices}.")
    if args.random_candidates < 0:
        raise cli.UsageError(f"--random-candidates must be >= 0, got {args.random_candidates}.")
    try:
        record, pool = read_user(args.data, args.split, args.user,
                                 POOL_FACTOR * args.random_candidates)
        vocabularies = dataset_dir.load_vocabularies(args.data)
        spec = dataset_dir.load_feature_spec(args.data)
    except (FileNotFoundError, ValueError) as error:
        raise cli.UsageError(f"--data {args.data}: {error}") from None
    extra = random_candidates(pool, record.candidates[features.ITEM_ID], args.random_candidates,
                              args.seed)
    inputs = rank_inputs(record, extra, vocabularies, spec)
    if args.signature == signatures.SERVING_DEFAULT:
        inputs = serving_default_inputs(inputs)
    elif args.signature == signatures.RANK_BY_USER:
        inputs = {name: inputs[name] for name in (features.USER_ID, *spec.candidate_features)}
    own, added = len(record.labels), len(extra[features.ITEM_ID])
    unknown = int(np.count_nonzero(record.history[features.HISTORY_ITEMS] <= features.OOV))
    summary = (
        f"user {record.key} ({record.shard}): {len(record.history[features.HISTORY_ITEMS])} "
        f"behaviours ({unknown} not in the item vocabulary)\n"
        f"candidates 0-{own - 1}: the user's {own} {args.split} items, labels "
        f"{' '.join(map(str, record.labels.tolist()))}"
        + (f"; {own}-{own + added - 1}: {added} random items (seed {args.seed})" if added else "")
    )
    return {"signature_name": args.signature, "inputs": inputs}, summary


def write(args: argparse.Namespace) -> dict:
    """Builds the request, writes it to ``--output`` and the summary to stderr; returns it."""
    body, summary = build_request(args)
    text = json.dumps(body)
    if args.output == "-":
        print(text)
    else:
        with cli.writing(args.output), open(args.output, "w") as f:
            f.write(text + "\n")
    print(summary, file=sys.stderr)
    if args.output != "-":
        print(f"{args.signature} request written to {args.output}", file=sys.stderr)
    return body


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m serving.request``; returns the request body."""
    return cli.run(write, arguments(), argv)


if __name__ == "__main__":
    main()
