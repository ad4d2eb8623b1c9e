"""The one-line usage error every command line gives (``muse_tf.cli``), checked in-process."""

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
