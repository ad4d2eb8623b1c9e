"""Every command line: ``--help`` answers before TensorFlow loads, with the command as typed; a
user's mistake ends in exit status 2 and one line naming the problem and its fix; TensorFlow's
harmless start-up noise stays hidden at the default verbosity; one default served model name."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from muse_tf import config
from muse_tf.config import ExperimentConfig
from muse_tf.contract import dataset_dir, signatures
from muse_tf.jobs import runs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("muse_tf", "pipelines", "serving", "benchmarks")


def _command_modules() -> list[str]:
    """Every module that runs as ``python -m``: any one of ``PACKAGES`` holding a main guard."""
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    )


COMMANDS = _command_modules()
# What TensorFlow prints on a machine without CUDA or TensorRT, harmless and hidden by default.
NOISE = ("Unable to register", "cuInit", "cuda_dnn", "TensorRT", "oneDNN", "absl::InitializeLog",
         "cpu_feature_guard")

# Runs a command's ``--help`` as ``python -m`` does and reports whether TensorFlow (or Beam, as slow
# to import) was imported.
HELP_PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    code = None
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules,
                  "beam": "apache_beam" in sys.modules}), file=sys.stderr)
"""


def _run(args, **kwargs):
    """``python ARGS`` from the repository root at the default verbosity: the test session's own
    TF_CPP_MIN_LOG_LEVEL (conftest.py) is not passed on."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env, **kwargs)


def test_the_commands_are_discovered():
    assert {"muse_tf.train", "muse_tf.evaluate", "muse_tf.export", "muse_tf.predict",
            "muse_tf.experiments", "pipelines.taobao_mm", "serving.server"} <= set(COMMANDS)


@pytest.mark.parametrize("module", COMMANDS)
def test_help_answers_before_tensorflow_loads(module):
    """Every command's ``--help`` shows ``python -m MODULE``; the library's, the pipelines' and
    serving's answer before TensorFlow (or Beam) loads (the benchmarks measure TensorFlow and may
    load it first)."""
    proc = _run(["-c", HELP_PROBE, module])
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    assert probe["code"] == 0, proc.stderr[-2000:]
    if not module.startswith("benchmarks."):
        assert probe == {"code": 0, "tensorflow": False, "beam": False}, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m {module} "), proc.stdout[:200]


def _assert_one_line_error(proc, module, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"python -m {module}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not [noise for noise in NOISE if noise in proc.stderr]


@pytest.fixture()
def fake_dataset(tmp_path):
    """A directory that passes for a converted dataset until its shards are read."""
    path = tmp_path / "data"
    path.mkdir()
    (path / dataset_dir.MANIFEST).write_text(json.dumps({"schema_version": dataset_dir.SCHEMA_VERSION}))
    return path


def test_a_missing_data_directory_is_named_with_the_conversion_command(tmp_path):
    missing = tmp_path / "converted"
    proc = _run(["-m", "muse_tf.train", "--data", str(missing), "--model-dir", str(tmp_path / "m")])
    _assert_one_line_error(proc, "muse_tf.train", f"{missing} is not a converted dataset",
                           "does not exist", "python -m pipelines.taobao_mm --input")
    assert not (tmp_path / "m").exists()


def test_raw_parquet_passed_as_data_says_to_convert_it(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train_samples.parquet").write_bytes(b"PAR1")
    proc = _run(["-m", "muse_tf.evaluate", "--data", str(raw), "--model-dir", str(tmp_path)])
    _assert_one_line_error(proc, "muse_tf.evaluate", "not a converted dataset", "raw Parquet",
                           f"python -m pipelines.taobao_mm --input {raw} --output")


@pytest.mark.parametrize("argv, words", [
    (["--config", "absent.yaml"], ["Config file absent.yaml not found", "taobao_mm_tuned"]),
    (["--set", "train.batch_size=abc"], ["`train.batch_size` must be an integer", "'abc'"]),
    (["--set", "train.batchsize=64"], ["Unknown TrainConfig key(s) ['batchsize']"]),
    (["--set", "batch_size"], ["'batch_size' is not of the form key=value"]),
])
def test_config_mistakes_end_in_one_line(argv, words):
    _assert_one_line_error(_run(["-m", "muse_tf.train", *argv]), "muse_tf.train", *words)


@pytest.mark.parametrize("module", ["pipelines.taobao_mm", "pipelines.beam_convert"])
def test_a_conversion_names_an_input_that_is_missing_or_not_the_release(module, tmp_path):
    if module == "pipelines.beam_convert":
        pytest.importorskip("apache_beam", reason="apache-beam is not installed (the beam extra)")
    missing, converted = tmp_path / "absent", tmp_path / "converted"
    converted.mkdir()
    (converted / dataset_dir.MANIFEST).write_text("{}")  # a converted dataset passed as --input
    for given, words in [(missing, ["Input directory", "does not exist"]),
                         (converted, ["no Parquet file for table 'train_samples'"])]:
        proc = _run(["-m", module, "--input", str(given), "--output", str(tmp_path / "out")])
        _assert_one_line_error(proc, module, str(given), *words)
    assert not (tmp_path / "out").exists()


def test_evaluate_names_a_directory_that_is_not_a_run(fake_dataset, tmp_path):
    proc = _run(["-m", "muse_tf.evaluate", "--data", str(fake_dataset),
                 "--model-dir", str(tmp_path / "nothing")])
    _assert_one_line_error(proc, "muse_tf.evaluate", "is not a training run", "--model-dir")


def test_export_refuses_a_run_whose_training_has_not_finished(fake_dataset, tmp_path):
    run = runs.RunDir(str(tmp_path / "run"))
    run.write_config(ExperimentConfig())
    proc = _run(["-m", "muse_tf.export", "--data", str(fake_dataset), "--model-dir", run.root,
                 "--export-dir", str(tmp_path / "exports")])
    _assert_one_line_error(proc, "muse_tf.export", "holds no trained model",
                           "python -m muse_tf.train", "--model-dir")
    assert not (tmp_path / "exports").exists()


def test_client_names_a_missing_request_file(tmp_path):
    proc = _run(["-m", "serving.client", "--request", str(tmp_path / "request.json")])
    _assert_one_line_error(proc, "serving.client", f"--request {tmp_path / 'request.json'}",
                           "no such file")


def test_server_names_a_missing_export(tmp_path):
    proc = _run(["-m", "serving.server", "--model_base_path", str(tmp_path / "exports" / "muse")])
    _assert_one_line_error(proc, "serving.server", "No SavedModel version directory",
                           "python -m muse_tf.export")


def test_library_callers_get_the_usual_exceptions(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a converted dataset"):
        dataset_dir.load_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="not found"):
        config.load_yaml(str(tmp_path / "absent.yaml"))
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        config.load_yaml(str(tmp_path / "bad.yaml"))
    with pytest.raises(RuntimeError, match="is not a training run"):
        runs.load_trained_model(str(tmp_path))


def test_serving_default_is_tensorflows_default_signature():
    import tensorflow as tf

    assert signatures.SERVING_DEFAULT == tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def test_one_default_model_name_everywhere():
    from muse_tf import export, train
    from serving import client, launch, server

    def default(function):
        return inspect.signature(function).parameters["model_name"].default

    defaults = {
        "python -m muse_tf.train": train.arguments().get_default("model_name"),
        "python -m muse_tf.export": export.arguments().get_default("model_name"),
        "python -m serving.server": server.arguments().get_default("model_name"),
        "python -m serving.client": client.arguments().get_default("model_name"),
        "training.run": default(training_run()),
        "RestClient": default(client.RestClient),
        "GrpcClient": default(client.GrpcClient),
        "launch.local_server": default(launch.local_server),
    }
    assert defaults == dict.fromkeys(defaults, signatures.DEFAULT_MODEL_NAME)
    served = re.findall(r'name:\s*"([^"]+)"', (ROOT / "serving" / "models.config").read_text())
    assert served == [signatures.DEFAULT_MODEL_NAME]  # docker-compose serves models.config


def training_run():
    from muse_tf.jobs import training

    return training.run


FILTER_PROBE = """
import argparse, os
from muse_tf import cli

def command(args):
    os.write(2, b"W0000 00:00:1.0 1 cuda_dnn.cc:8] Unable to register cuDNN factory: one already is\\n")
    os.write(2, b"our own warning: keep me\\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    if args.fail:
        raise cli.UsageError("a mistake")
    raise RuntimeError("a bug")

parser = cli.parser("probe", None)
parser.add_argument("--fail", action="store_true")
parser.add_argument("--verbose", action="store_true")
cli.run(command, parser)
"""


@pytest.mark.parametrize("flags, expected_code", [(["--fail"], 2), ([], 1), (["--verbose"], 1)])
def test_only_known_harmless_native_lines_are_dropped(flags, expected_code):
    proc = _run(["-c", FILTER_PROBE, *flags])
    assert proc.returncode == expected_code, proc.stderr
    assert "our own warning: keep me" in proc.stderr
    assert ("Unable to register" in proc.stderr) == ("--verbose" in flags)
    assert ("absl::InitializeLog" in proc.stderr) == ("--verbose" in flags)
    if "--fail" in flags:
        assert proc.stderr.strip().splitlines()[-1] == "python -m probe: error: a mistake"
    else:  # a bug in our code keeps its traceback
        assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr



CHILD_PROBE = """
import subprocess, sys
from muse_tf import cli

def command(args):  # the child has our stderr, as a process pool's resource tracker does
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(3); "
                              "print('the child ends', file=sys.stderr)"])
    print("written before the end", file=sys.stderr)
    return child

child = cli.run(command, cli.parser("probe", None), [])
print("the command returned", file=sys.stderr, flush=True)
child.wait()
"""


def test_the_filter_ends_without_waiting_for_children_that_hold_stderr():
    """A process pool's resource tracker keeps stderr open until the command's process ends: the
    filter lets through what was written, then returns instead of waiting for the pipe to close."""
    proc = _run(["-c", CHILD_PROBE])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[:2] == ["written before the end", "the command returned"], lines
