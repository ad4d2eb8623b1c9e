"""The README and the docs pages run as written, block after block, in one shell.

Every fenced ``bash`` or ``python`` block of README.md and the docs pages it lists under "Where to
go next" (in that order) carries a marker right above it: ``<!-- run -->`` or ``<!-- not run:
REASON -->``. The ``run`` blocks run in ONE bash process with ``set -euo pipefail``, in page
order, as a reader pastes them into one shell at the repository root after the quick start
(variables and the background server carry from block to block); any failing command fails the
test, which names its page and line. A block added later must say which it is.

What stands in for the quick start and for training, and why that is honest:

* The quick start is ``python -m muse_tf.train`` (README "Quick start"). Its paths depend only on
  ``--work-dir`` (default ``runs``), the variant (``runs/muse``), the model name (the export
  ``runs/muse/export/muse/1``) and, for the dataset, the synthetic user count, the history length
  and the seed (``muse_tf.data.synthetic_dataset.ensure_default_dataset``:
  ``runs/data/synthetic-u2000-l1000-s0``). The fixture runs that same command in a temporary
  directory with overrides that change none of these: two training steps of a smaller tower,
  ``--no-eval``. So the dataset is the quick start's own (same generator, same options, ~7 s of
  CPU), and the run directory and export are a real run of the same variant in the same layout,
  trained for less. The test checks that this run printed the paths the serving page's table says
  the quick start prints.
* The temporary directory stands for the repository root: it holds ``runs/`` and a
  ``.venv/bin/activate`` doing what activation does, putting ``.venv/bin`` first on ``PATH``. Its
  ``python`` is the Python running the tests (the venv that CI installs as the README says), with
  one difference: ``python -m muse_tf.train`` gets the same small overrides as the quick start's
  stand-in appended (two steps of a smaller tower), so every training block runs its command, its
  data and its directories, trained for less. Everything else runs unchanged.
* The serving blocks' ports default to TF Serving's 8500/8501 and honour ``GRPC_PORT`` and
  ``REST_PORT``; the test sets them to free ports so that it never meets another server.

Beyond exit statuses, the test checks what the pages promise: a meaningful ``rank`` response,
one score per candidate of the request, not all equal, the same over REST and gRPC.
"""

import dataclasses
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
RUN = "<!-- run -->"
NOT_RUN = re.compile(r"^<!-- not run: (\S.*) -->$")
# The quick start's outputs, as docs/serving.md's table lists them.
QUICK_START_PATHS = {
    "dataset": "runs/data/synthetic-u2000-l1000-s0",
    "run directory": "runs/muse",
    "SavedModel": "runs/muse/export/muse/1",
}
LESS_TRAINING = ["--verbose", "0", "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=32",
                 "--set", "model.mlp_units=[16]", "--set", "model.embedding_dim=8"]
CHEAP_TRAINING = ["--no-eval", *LESS_TRAINING]
TIMEOUT_S = 1800  # the whole tour on a loaded machine; a few minutes on a quiet one


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence
    language: str
    markers: tuple[str, ...]  # the HTML comments right above the fence
    text: str


def pages() -> list[str]:
    """README.md, then the docs pages in the order of its "Where to go next" table."""
    table = (ROOT / "README.md").read_text().split("## Where to go next", 1)[1]
    return ["README.md", *dict.fromkeys(re.findall(r"\]\((docs/\w+\.md)\)", table))]


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().split("\n")
    found, index = [], 0
    while index < len(lines):
        opening = re.match(r"^```(\w*)$", lines[index])
        if not opening:
            index += 1
            continue
        close = lines.index("```", index + 1)
        markers, above = [], index - 1
        while above >= 0 and lines[above].startswith("<!--"):
            markers.insert(0, lines[above])
            above -= 1
        found.append(Block(page, index + 1, opening[1], tuple(markers),
                           "\n".join(lines[index + 1:close]) + "\n"))
        index = close + 1
    return found


def runnable_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page) if RUN in block.markers]


def test_every_command_block_is_run_or_says_why():
    unmarked = []
    for page in pages():
        for block in blocks(page):
            if not block.language:
                unmarked.append(f"{page}:{block.line}: a block without a language (bash, python, text, ...)")
            elif block.language in ("bash", "python"):
                run = RUN in block.markers
                reasons = [m for m in block.markers if NOT_RUN.match(m)]
                if run == bool(reasons):
                    unmarked.append(f"{page}:{block.line}: needs one of {RUN} or <!-- not run: WHY -->")
                if run and block.language != "bash":
                    unmarked.append(f"{page}:{block.line}: only bash blocks run in the tour")
    assert not unmarked, "\n".join(unmarked)


def test_the_tour_covers_every_step():
    text = "".join(block.text for block in runnable_blocks())
    for step in ("pipelines.taobao_mm", "muse_tf.train", "muse_tf.evaluate", "muse_tf.predict",
                 "pipelines.predict", "source .venv/bin/activate", "serving.server", "serving.request",
                 "serving.client --protocol rest", "serving.client --protocol grpc", "kill",
                 "serving.history.load", "--history_store", "--signature rank_by_user"):
        assert step in text, step
    serving_page = (ROOT / "docs" / "serving.md").read_text()
    for path in QUICK_START_PATHS.values():
        assert f"`{path}`" in serving_page


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


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
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV="{bin_dir.parent}"\n'
                                      f'export PATH="{bin_dir}:$PATH"\n')
    less = " ".join(f"'{flag}'" for flag in LESS_TRAINING)
    _executable(bin_dir / "python", f"""#!/bin/sh
case " $* " in
  *" -m muse_tf.train "*) exec "{sys.executable}" "$@" {less} ;;
esac
exec "{sys.executable}" "$@"
""")
    return root


def script(runnable: list[Block]) -> str:
    lines = ["set -euo pipefail"]
    for number, block in enumerate(runnable, start=1):
        lines += [f"echo '### block {number} ({block.page} line {block.line})'", block.text]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_the_pages_run_verbatim_after_the_quick_start(after_quick_start):
    runnable = runnable_blocks()
    path = after_quick_start / "tour.sh"
    path.write_text(script(runnable))
    env = {**os.environ, "PATH": str(after_quick_start / ".venv" / "bin") + os.pathsep + os.environ["PATH"],
           "GRPC_PORT": str(free_port()), "REST_PORT": str(free_port())}
    process = subprocess.Popen(
        ["bash", str(path)], cwd=after_quick_start, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        try:  # whatever the tour left running (its server, if a block failed before "kill")
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    started = re.findall(r"^### (block .*)$", output, re.MULTILINE)
    log = after_quick_start / "runs" / "server.log"
    assert process.returncode == 0, (
        f"{started[-1] if started else 'the script'} failed (exit {process.returncode}):\n"
        f"{output[-4000:]}\nserver log:\n{log.read_text()[-2000:] if log.exists() else '-'}"
    )
    assert len(started) == len(runnable)

    # Each served name holds one run's models (TF Serving serves the newest version of a name).
    saved_models = after_quick_start.glob("**/saved_model.pb")
    for model_dir in sorted({saved_model.parent.parent for saved_model in saved_models}):
        sources = {json.loads((version / "assets.extra" / "source_run.json").read_text())["training_sha256"]
                   for version in model_dir.iterdir() if version.name.isdigit()}
        assert len(sources) == 1, f"{model_dir} holds the models of {len(sources)} runs"

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
    assert len(responses) == 4, output  # rank over REST and gRPC, then rank_by_user over gRPC and REST
    rest, grpc, by_user_grpc, by_user_rest = (np.array(r["probability"]) for r in responses)
    assert rest.shape == (candidates,)
    assert np.unique(rest).size > 1, rest  # known candidates get different scores
    np.testing.assert_allclose(rest, grpc, rtol=1e-5, atol=1e-7)
    # The stored history is the one the rank request carried: the same scores, bit for bit.
    np.testing.assert_array_equal(by_user_grpc, grpc)
    np.testing.assert_array_equal(by_user_rest, rest)
    ready = (f"ready: gRPC 127.0.0.1:{env['GRPC_PORT']}, REST 127.0.0.1:{env['REST_PORT']}, "
             "model muse version 1\n")
    assert ready in log.read_text()


# docs/training.md's "In Keras / Colab" block, run on the quick start's dataset with these substitutions
# (README text -> what runs): the same code on two batches of 64 instead of whole splits of 1,000.
KERAS_BLOCK_SUBSTITUTIONS = {
    'DATA = "data/converted"': f'DATA = "{QUICK_START_PATHS["dataset"]}"',
    '"train"), 1000,': '"train"), 64,',
    '"test"), 1000,': '"test"), 64,',
    "model.fit(train, epochs=1)": "model.fit(train.take(2), epochs=1, verbose=0)",
    "evaluate_auc_gauc(model, test)": "evaluate_auc_gauc(model, test.take(2))",
}


def keras_block(readme: str) -> str:
    """The python block under "In Keras / Colab", substitutions applied (each must match)."""
    block = re.search(r"## In Keras / Colab\n\n<!--.*?-->\n```python\n(.*?)```", readme, re.DOTALL).group(1)
    for written, run in KERAS_BLOCK_SUBSTITUTIONS.items():
        assert written in block, f"the Keras block no longer contains {written!r}"
        block = block.replace(written, run)
    return block


@pytest.mark.slow
def test_the_keras_block_runs_on_the_quick_start_dataset(after_quick_start):
    block = keras_block((ROOT / "docs" / "training.md").read_text())
    result = subprocess.run([sys.executable, "-c", block], cwd=after_quick_start, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    summary = eval(printed, {"nan": float("nan")})  # the dict the block prints
    assert summary["examples"] == 2 * 64
    assert 0.0 <= summary["auc"] <= 1.0
