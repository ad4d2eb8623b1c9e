"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_after(lines, marker):
    index = next(i for i, line in enumerate(lines) if marker in line)
    return next(line.strip() for line in lines[index + 1:] if line.strip() and not line.startswith("#"))


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    block = readme[readme.index("<!-- test-command -->") + 2]
    assert block == _command_after(ci, "README: test command")


def test_readme_main_command_runs_the_training_module():
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("<!-- main-command -->") + 2]
    assert block.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert block.endswith(".venv/bin/python -m muse_tf.train")
    assert (ROOT / "muse_tf" / "train.py").exists()
