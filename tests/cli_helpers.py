"""The one-line usage error every command line gives (``muse_tf.cli``), checked in-process, and a
full disk to give it for."""

import errno
import io
import os
import re

import pytest


def assert_usage_error(capsys, main, module, pattern, argv):
    """``main(argv)`` exits 2 with exactly one stderr line, ``python -m MODULE: error: ...``,
    matching ``pattern``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]


def no_space_left() -> OSError:
    """The error of a write to a full disk: it names no file."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskFile(io.StringIO):
    def write(self, text: str) -> int:
        raise no_space_left()


def full_disk_open(path, mode="r", *args, **kwargs):
    """``open`` on a full disk, for monkeypatching a module's ``open``: files open for reading as
    usual, and every write to a file opened for writing fails."""
    if "r" in mode and "+" not in mode:
        return open(path, mode, *args, **kwargs)
    return _FullDiskFile()
