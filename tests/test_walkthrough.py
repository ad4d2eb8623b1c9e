"""The README's walkthrough (scoring files, then deploying with TF Serving) runs as written.

Every shell block marked ``<!-- walkthrough -->`` in README.md runs, in README order, in ONE bash
process with ``set -euo pipefail``, as a reader pastes them into one shell at the repository root
after the quick start (variables and the background server carry from block to block). A block
added later is picked up by its marker. Any failing command fails the test, which names its block.

What stands in for the quick start, and why that is honest:

* The quick start is ``python -m muse_tf.train`` (README "Quick start"). Its paths depend only on
  ``--work-dir`` (default ``runs``), the variant (``runs/muse``), the model name (the export
  ``runs/muse/export/muse/1``) and, for the dataset, the synthetic user count, the history length
  and the seed (``muse_tf.data.synthetic_dataset.ensure_default_dataset``:
  ``runs/data/synthetic-u2000-l1000-s0``). The fixture runs that same command in a temporary
  directory with overrides that change none of these: two training steps of a smaller tower,
  ``--no-eval``. So the dataset is the quick start's own (same generator, same options, ~7 s of
  CPU), and the run directory and export are a real run of the same variant in the same layout,
  trained for less. The walkthrough reads only the dataset and the export. The test checks that
  this run printed the paths the README's table says the quick start prints.
* The temporary directory stands for the repository root: it holds ``runs/`` and a stub
  ``.venv/bin/activate`` doing what activation does, putting the bin directory of the Python
  running the tests (the venv that CI installs as the README says) first on ``PATH``. So the
  walkthrough's ``source .venv/bin/activate`` runs as written and ``python`` is that venv's; ``PATH``
  starts with it anyway, for blocks before the ``source`` line.
* The walkthrough's ports default to TF Serving's 8500/8501 and honour ``GRPC_PORT`` and
  ``REST_PORT``; the test sets them to free ports so that it never meets another server.

Beyond exit statuses, the test checks what the README promises: a meaningful ``rank`` response,
one score per candidate of the request, not all equal, the same over REST and gRPC.
"""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from muse_tf.contract import features
from serving.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- walkthrough -->"
# The quick start's outputs, as README.md's walkthrough table lists them.
QUICK_START_PATHS = {
    "dataset": "runs/data/synthetic-u2000-l1000-s0",
    "run directory": "runs/muse",
    "SavedModel": "runs/muse/export/muse/1",
}
CHEAP_TRAINING = ["--no-eval", "--verbose", "0", "--set", "train.steps_per_epoch=2",
                  "--set", "train.batch_size=32", "--set", "model.mlp_units=[16]",
                  "--set", "model.embedding_dim=8"]
TIMEOUT_S = 1200  # the whole walkthrough on a loaded machine; about a minute on a quiet one


def walkthrough_blocks(readme: str) -> list[tuple[int, str]]:
    """(README line, text) of every ```bash block right after the marker, in order."""
    pattern = re.compile(f"^{re.escape(MARKER)}\n```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
    return [(readme[: m.start()].count("\n") + 1, m.group(1)) for m in pattern.finditer(readme)]


def test_walkthrough_blocks_are_found():
    readme = (ROOT / "README.md").read_text()
    blocks = walkthrough_blocks(readme)
    markers = re.findall(f"^{re.escape(MARKER)}$", readme, re.MULTILINE)
    assert len(blocks) == len(markers), "a marker not followed by a ```bash block"
    text = "".join(block for _, block in blocks)
    for step in ("muse_tf.predict", "source .venv/bin/activate", "serving.server", "serving.request",
                 "serving.client --protocol rest", "serving.client --protocol grpc", "kill"):
        assert step in text, step
    for path in QUICK_START_PATHS.values():
        assert f"`{path}`" in readme


@pytest.fixture(scope="module")
def after_quick_start(tmp_path_factory):
    """A directory holding what the quick start leaves in ``runs/`` (see the module docstring)."""
    root = tmp_path_factory.mktemp("repository")
    result = subprocess.run(
        [sys.executable, "-m", "muse_tf.train", *CHEAP_TRAINING],
        cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Training muse on {QUICK_START_PATHS['dataset']} " in result.stdout, result.stdout
    assert f"Run directory: {QUICK_START_PATHS['run directory']} " in result.stdout
    assert f"SavedModel: {QUICK_START_PATHS['SavedModel']}\n" in result.stdout
    activate = root / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    bin_dir = os.path.dirname(sys.executable)
    activate.write_text(f'export VIRTUAL_ENV="{os.path.dirname(bin_dir)}"\n'
                        f'export PATH="{bin_dir}:$PATH"\n')
    python = activate.parent / "python"  # for blocks that call .venv/bin/python
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return root


def script(blocks: list[tuple[int, str]]) -> str:
    lines = ["set -euo pipefail"]
    for number, (line, block) in enumerate(blocks, start=1):
        lines += [f"echo '### walkthrough block {number} (README.md line {line})'", block]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_the_walkthrough_runs_verbatim_after_the_quick_start(after_quick_start):
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    path = after_quick_start / "walkthrough.sh"
    path.write_text(script(blocks))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "GRPC_PORT": str(free_port()), "REST_PORT": str(free_port())}
    process = subprocess.Popen(
        ["bash", str(path)], cwd=after_quick_start, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        try:  # whatever the walkthrough left running (its server, if a block failed before "kill")
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    started = re.findall(r"^### (walkthrough block .*)$", output, re.MULTILINE)
    log = after_quick_start / "runs" / "server.log"
    assert process.returncode == 0, (
        f"{started[-1] if started else 'the script'} failed (exit {process.returncode}):\n"
        f"{output[-4000:]}\nserver log:\n{log.read_text()[-2000:] if log.exists() else '-'}"
    )
    assert len(started) == len(blocks)

    # The scored files: one row per test sample (the manifest's count), the same scores either way.
    manifest = json.loads((after_quick_start / QUICK_START_PATHS["dataset"] / "manifest.json").read_text())
    scored = pd.read_parquet(after_quick_start / "runs" / "muse" / "predictions.parquet")
    exported = pd.read_csv(after_quick_start / "runs" / "muse" / "predictions.csv")
    assert len(scored) == len(exported) == manifest["splits"]["test"]["samples_written"]
    np.testing.assert_allclose(scored["probability"], exported["probability"], rtol=1e-4, atol=1e-6)

    request = json.loads((after_quick_start / "runs" / "request.json").read_text())
    candidates = len(request["inputs"][features.ITEM_ID])
    responses = [json.loads(line) for line in output.splitlines() if line.startswith('{"')]
    responses = [r for r in responses if set(r) == {"probability", "logit"}]
    assert len(responses) == 2, output  # REST, then gRPC
    rest, grpc = (np.array(r["probability"]) for r in responses)
    assert rest.shape == (candidates,)
    assert np.unique(rest).size > 1, rest  # known candidates get different scores
    np.testing.assert_allclose(rest, grpc, rtol=1e-5, atol=1e-7)
    ready = (f"ready: gRPC 127.0.0.1:{env['GRPC_PORT']}, REST 127.0.0.1:{env['REST_PORT']}, "
             "model muse version 1\n")
    assert ready in log.read_text()


# The README's "In Keras / Colab" block, run on the quick start's dataset with these substitutions
# (README text -> what runs): the same code on two batches of 64 instead of whole splits of 1,000.
KERAS_BLOCK_SUBSTITUTIONS = {
    'DATA = "data/converted"': f'DATA = "{QUICK_START_PATHS["dataset"]}"',
    '"train"), 1000,': '"train"), 64,',
    '"test"), 1000,': '"test"), 64,',
    "model.fit(train, epochs=1)": "model.fit(train.take(2), epochs=1, verbose=0)",
    "evaluate_auc_gauc(model, test)": "evaluate_auc_gauc(model, test.take(2))",
}


def keras_block(readme: str) -> str:
    """The python block under README's "In Keras / Colab", substitutions applied (each must match)."""
    block = re.search(r"### In Keras / Colab\n\n```python\n(.*?)```", readme, re.DOTALL).group(1)
    for written, run in KERAS_BLOCK_SUBSTITUTIONS.items():
        assert written in block, f"README's Keras block no longer contains {written!r}"
        block = block.replace(written, run)
    return block


@pytest.mark.slow
def test_the_keras_block_runs_on_the_quick_start_dataset(after_quick_start):
    block = keras_block((ROOT / "README.md").read_text())
    result = subprocess.run([sys.executable, "-c", block], cwd=after_quick_start, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    summary = eval(printed, {"nan": float("nan")})  # the dict the block prints
    assert summary["examples"] == 2 * 64
    assert 0.0 <= summary["auc"] <= 1.0
