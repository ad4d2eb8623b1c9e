"""Runs a conversion engine from its command line: the parsed options in, the manifest out, and a
mistake or a failed write as one line naming it."""

from __future__ import annotations

import argparse
import errno
from collections.abc import Callable

from muse_tf import cli
from pipelines.common import options as options_lib
from pipelines.common import parquet_input as pi


def run(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    convert: Callable[..., dict],
    **extra: object,
) -> dict:
    """Calls ``convert(options, **extra)`` with the options of ``options.add_arguments``' flags
    and returns its manifest. An input error is a ``cli.UsageError`` (one line, exit status 2); an
    OSError (a full disk, a read-only output) exits with status 1, naming the file."""
    try:
        return convert(options_lib.from_args(args), **extra)
    except (pi.InputError, FileExistsError, ValueError, argparse.ArgumentTypeError) as err:
        raise cli.UsageError(str(err)) from None
    except OSError as err:
        path = err.filename or args.output
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            problem = f"out of disk space writing {path} ({err.strerror}); free some space"
        else:
            problem = f"{path}: {err.strerror or err}; fix that"
        parser.exit(
            1,
            f"{parser.prog}: error: {cli.one_line(problem)} and run the same command again "
            "to resume.\n",
        )
