"""What every command line of the project shares: arguments are parsed before TensorFlow loads
(``--help`` answers at once), TensorFlow's C++ start-up logs stay hidden unless ``--verbose``, and a
user's mistake ends in one line and exit status 2 instead of a traceback.

A command module imports only the standard library and light ``muse_tf`` modules at its top;
TensorFlow comes in with the work, after ``quiet_tensorflow``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# TensorFlow's C++ logging threshold while it is quiet: 3 drops INFO, WARNING and ERROR lines such
# as "Unable to register cuDNN factory", which are harmless on a machine without CUDA.
QUIET_CPP_LOG_LEVEL = "3"
# Native start-up lines that newer TensorFlow (2.17+) writes through absl before its log level
# applies, so TF_CPP_MIN_LOG_LEVEL cannot hide them; all harmless on a machine without a GPU. Also
# Apache Beam's import-time warning that the GCP client (apitools) is absent, which only BigQuery
# needs (pipelines.beam_convert).
HARMLESS_NATIVE_LOGS = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_(fft|dnn|blas)\.cc.*Unable to register"
    r"|failed call to cuInit"
    r"|port\.cc.*oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc|^To enable the following instructions:"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|coordination_service_agent\.cc.*Coordination agent has successfully connected"
    r"|apitools not found, and bigquery client libraries are not available"
)
# Written into the filtered stderr when the filter ends: whatever precedes it has been forwarded.
_END_MARK = b"\0muse_tf.cli: end of the filtered stderr\0\n"


class UsageError(Exception):
    """A mistake in a command line or its inputs. The message names what is wrong and how to fix
    it; ``run`` prints it as one line and exits 2.

    The library's own user-facing errors subclass it together with the built-in exception a library
    caller expects (``config.ConfigError`` is a ``ValueError``, ``dataset_dir.NotADatasetError`` a
    ``FileNotFoundError``, ``runs.RunDirectoryError`` a ``RuntimeError``, ``WriteError`` an
    ``OSError``), so a command needs no
    mapping of its own and any other exception still shows its traceback.
    """


class WriteError(UsageError, OSError):
    """A file that could not be written (a full disk, no permission), named; an ``OSError`` for
    library callers, one line and exit 2 on a command line."""


def _write_errors() -> tuple[type[BaseException], ...]:
    """``OSError``, and once TensorFlow is loaded its errors for a full disk or a refused
    permission (its writes raise no ``OSError``)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return (OSError,)
    return OSError, tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns a failure to write ``path`` (a full disk, no permission) into a ``WriteError`` that
    names the file: a write's own OSError names none (``[Errno 28] No space left on device``)."""
    try:
        yield
    except WriteError:
        raise
    except _write_errors() as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        written = getattr(error, "filename", None) or path
        raise WriteError(f"Could not write {written}: {one_line(reason)}") from error


def parser(module: str, doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose usage line shows the command as typed (``python -m MODULE``),
    described by the first paragraph of the module's docstring."""
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=(doc or "").split("\n\n")[0], **kwargs
    )


def quiet_tensorflow(verbose: bool) -> None:
    """Hides TensorFlow's C++ start-up logs unless ``verbose``; an explicit
    ``TF_CPP_MIN_LOG_LEVEL`` in the environment wins. Only effective before TensorFlow loads."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_CPP_LOG_LEVEL)


def run(
    command: Callable[[argparse.Namespace], Any],
    arguments: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    verbose: Callable[[argparse.Namespace], bool] = lambda args: bool(getattr(args, "verbose", 0)),
    forward_unknown: bool = False,
) -> Any:
    """Parses ``argv``, quiets TensorFlow unless ``verbose(args)`` (default: a ``--verbose`` flag),
    runs ``command(args)`` and returns its result; a ``UsageError`` becomes
    ``PROG: error: MESSAGE`` on stderr and exit status 2. With ``forward_unknown``, options the
    parser does not know are no error but ``args.unknown_options``, for a command that passes them
    on (Beam's pipeline options)."""
    if forward_unknown:
        args, unknown = arguments.parse_known_args(argv)
        args.unknown_options = unknown
    else:
        args = arguments.parse_args(argv)
    quiet = not verbose(args)
    quiet_tensorflow(not quiet)
    with harmless_native_logs_dropped() if quiet else contextlib.nullcontext():
        try:
            return command(args)
        except UsageError as error:
            message = f"{arguments.prog}: error: {one_line(str(error))}\n"
    arguments.exit(2, message)


@contextlib.contextmanager
def harmless_native_logs_dropped() -> Iterator[None]:
    """Forwards this process's stderr (file descriptor 2, where native code writes) line by line,
    dropping only lines that match ``HARMLESS_NATIVE_LOGS``; everything else passes unchanged.

    On exit it waits until what was written so far has passed, not until the pipe closes: a child
    process that inherited stderr (multiprocessing's resource tracker, started by a process pool)
    keeps it open until this process ends; the forwarder goes on serving it meanwhile."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    pipe, out = os.fdopen(read_end, "rb"), os.fdopen(os.dup(original), "wb", 0)
    passed = threading.Event()

    def forward() -> None:
        with pipe, out:
            for line in pipe:
                if line.endswith(_END_MARK):  # after a child's unfinished line, if any
                    line = line[: -len(_END_MARK)]
                    passed.set()
                if line and not HARMLESS_NATIVE_LOGS.search(line.decode(errors="replace")):
                    out.write(line)
        passed.set()

    threading.Thread(target=forward, name="stderr-filter", daemon=True).start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        os.write(write_end, _END_MARK)  # behind everything written to the pipe so far
        os.close(write_end)
        passed.wait(timeout=5)


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(message.split())
