"""A conversion's claim on its output directory (both engines): one writer at a time, and nothing in
it that another conversion left, so a manifest never lists a shard of another run.

* ``convert.lock`` is the output's lock (``muse_tf.contract.lock``, as a run directory's): while a
  conversion runs it names it (pid, host, command, start time) and a second conversion is refused,
  naming the holder; a lock left by a killed run on this host is taken over, with a message. After
  a normal exit a local lock file stays, empty (free); a remote one (``_remote_hold``) is removed.
* The engine's work directory records the run's parameters (inputs and options). A finished
  dataset, an unfinished conversion of other parameters or of the other engine, or dataset files
  that no record explains are refused, naming which; ``overwrite`` clears them first. An unfinished
  conversion of the same parameters is resumed (local engine) or cleared (Beam cannot resume).

Paths go through ``tf.io.gfile`` (local, ``gs://``, ...) as the dataset's readers do.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator

import tensorflow as tf

from muse_tf.contract import dataset_dir, lock
from pipelines.common.raw_schema import SPLITS

LOCK = "convert.lock"
PARAMS = "params.json"
LOCAL_WORK, BEAM_WORK = "_work", "_beam_work"  # the engines' work directories
WORK_DIRS = (LOCAL_WORK, BEAM_WORK)
# What a conversion writes into its output besides its work directory (a killed or failed manifest
# write leaves the temporary name).
DATASET = (
    *SPLITS,
    dataset_dir.VOCAB_DIR,
    dataset_dir.MANIFEST,
    f"{dataset_dir.MANIFEST}.tmp",
    dataset_dir.MULTIMODAL_TABLE,
)
_OTHERS = "pass --overwrite to clear it or choose another --output"
_BUSY = "wait for it to end, or choose another --output"


@contextlib.contextmanager
def claimed(
    output: str, work_dir: str, params: dict, *, overwrite: bool, resumable: bool
) -> Iterator[str]:
    """Holds ``output``'s lock for the block and yields the work directory ``output/work_dir``,
    which records ``params``; ``resumable`` says whether the engine resumes its unfinished work.

    Raises:
        lock.BusyError: when another conversion is writing ``output``.
        FileExistsError: naming what ``output`` holds that is not this conversion's.
    """
    tf.io.gfile.makedirs(output)
    path = os.path.join(output, LOCK)
    with (_remote_hold if "://" in output else lock.hold)(path, output, _BUSY):
        yield _own(output, work_dir, params, overwrite, resumable)


def _own(output: str, work_dir: str, params: dict, overwrite: bool, resumable: bool) -> str:
    if overwrite:
        _clear(output)
    if tf.io.gfile.exists(os.path.join(output, dataset_dir.MANIFEST)):
        raise FileExistsError(f"{output} already holds a converted dataset; pass --overwrite.")
    work = os.path.join(output, work_dir)
    record = os.path.join(work, PARAMS)
    for other in WORK_DIRS:
        if other != work_dir and tf.io.gfile.exists(os.path.join(output, other)):
            raise FileExistsError(
                f"{output} holds an unfinished conversion of the other engine "
                f"({os.path.join(output, other)}); {_OTHERS}."
            )
    if tf.io.gfile.exists(record):
        with tf.io.gfile.GFile(record) as f:
            if json.load(f) != params:
                raise FileExistsError(
                    f"{output} holds an unfinished conversion of other inputs or options "
                    f"({record}); {_OTHERS}."
                )
        if resumable:
            return work
        print(f"{output}: clearing the unfinished conversion of the same inputs and options "
              "(this engine cannot resume it)", file=sys.stderr)
        _clear(output)
    else:
        stray = _first_file(output, (work_dir, *DATASET))
        if stray:
            raise FileExistsError(
                f"{output} holds {stray}, which no unfinished conversion of this engine "
                f"explains; {_OTHERS}."
            )
    tf.io.gfile.makedirs(work)
    with tf.io.gfile.GFile(record, "w") as f:
        json.dump(params, f, indent=1)
    return work


def _first_file(output: str, names: tuple[str, ...]) -> str | None:
    """The first file under ``output/name`` for ``names`` (empty directories do not count)."""
    for name in names:
        path = os.path.join(output, name)
        if not tf.io.gfile.exists(path):
            continue
        if not tf.io.gfile.isdir(path):
            return path
        for directory, _, files in tf.io.gfile.walk(path):
            if files:
                return os.path.join(directory, files[0])
    return None


def _clear(output: str) -> None:
    """Removes every conversion's names from ``output`` (not the lock)."""
    for name in (*WORK_DIRS, *DATASET):
        path = os.path.join(output, name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


@contextlib.contextmanager
def _remote_hold(path: str, what: str, advice: str) -> Iterator[None]:
    """``lock.hold`` for a remote file system (``gs://``, ...), where ``os.open`` and ``flock``
    cannot reach: the lock file exists while a conversion runs. Not atomic (two conversions starting
    at once may both pass), and a killed run's file is not taken over (its process cannot be
    checked from here): the refusal says to delete it."""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            holder = lock.parse(f.read()) or {}
        raise lock.BusyError(
            f"{what} is in use by {lock.describe(holder)}; {advice}. If that process is gone, "
            f"delete {path}."
        )
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(lock.record()))
    try:
        yield
    finally:
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.remove(path)
