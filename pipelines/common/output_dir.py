"""A conversion's claim on its output directory (both engines): one writer at a time, and nothing in
it that another conversion left, so a manifest never lists a shard of another run.

* ``convert.lock`` names the writer (pid, host) while it runs; a second conversion is refused,
  naming both. A lock whose pid no longer runs on this host was left by a killed run and is
  replaced (with a message); of a lock from another host the message says how to remove it.
* The engine's work directory records the run's parameters (inputs and options). A finished
  dataset, an unfinished conversion of other parameters or of the other engine, or dataset files
  that no record explains are refused, naming which; ``overwrite`` clears them first. An unfinished
  conversion of the same parameters is resumed (local engine) or cleared (Beam cannot resume).

Paths go through ``tf.io.gfile`` (local, ``gs://``, ...) as the dataset's readers do; only a local
lock is created atomically (on other file systems two launchers starting at once may both pass).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator

import tensorflow as tf

from muse_tf.contract import dataset_dir
from pipelines.common import taobao_mm_schema as release

LOCK = "convert.lock"
PARAMS = "params.json"
LOCAL_WORK, BEAM_WORK = "_work", "_beam_work"  # the engines' work directories
WORK_DIRS = (LOCAL_WORK, BEAM_WORK)
# What a conversion writes into its output besides its work directory (a killed or failed manifest
# write leaves the temporary name).
DATASET = (
    *release.SPLITS,
    dataset_dir.VOCAB_DIR,
    dataset_dir.MANIFEST,
    f"{dataset_dir.MANIFEST}.tmp",
    dataset_dir.MULTIMODAL_TABLE,
)
_OTHERS = "pass --overwrite to clear it or choose another --output"


class OutputLocked(FileExistsError):
    """Another conversion holds the output's lock; the message names the lock and its holder."""


@contextlib.contextmanager
def claimed(
    output: str, work_dir: str, params: dict, *, overwrite: bool, resumable: bool
) -> Iterator[str]:
    """Holds ``output``'s lock for the block and yields the work directory ``output/work_dir``,
    which records ``params``; ``resumable`` says whether the engine resumes its unfinished work.

    Raises:
        OutputLocked: when another conversion is writing ``output``.
        FileExistsError: naming what ``output`` holds that is not this conversion's.
    """
    tf.io.gfile.makedirs(output)
    lock = _lock(output)
    try:
        yield _own(output, work_dir, params, overwrite, resumable)
    finally:
        with contextlib.suppress(tf.errors.NotFoundError):
            tf.io.gfile.remove(lock)


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


def _lock(output: str) -> str:
    """Creates ``output``'s lock naming this process, replacing a stale one; its path."""
    path = os.path.join(output, LOCK)
    holder = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # a stale lock is replaced at most once; a vanished one is retried
        if _create(path, json.dumps(holder)):
            return path
        try:
            with tf.io.gfile.GFile(path) as f:
                found = json.load(f)
        except tf.errors.NotFoundError:
            continue
        except ValueError:  # empty or torn: its writer died at once, or is writing it now
            found = {}
        pid, host = found.get("pid"), found.get("host")
        if host == holder["host"] and isinstance(pid, int) and not _running(pid):
            print(f"{path}: removing the lock of pid {pid}, which no longer runs (a killed "
                  "conversion)", file=sys.stderr)
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.remove(path)
            continue
        raise OutputLocked(
            f"{output} is being written by another conversion ({path} held by pid {pid} on "
            f"host {host}); wait for it to end, or delete {path} if no conversion is running."
        )
    raise OutputLocked(f"{path}: could not take the lock; another conversion keeps replacing it.")


def _create(path: str, content: str) -> bool:
    """Writes ``path`` unless it exists (atomically for a local path); whether it did."""
    if "://" in path:
        if tf.io.gfile.exists(path):
            return False
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(content)
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return True


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
